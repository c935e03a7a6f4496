use super::*;

const LIMIT: usize = 8192;

fn dest(s: &str) -> Dest {
    Dest::parse(s).unwrap()
}

fn req(s: &str) -> Result<Option<(ConnectRequest, usize)>, PreambleError> {
    parse_request(s.as_bytes(), LIMIT)
}

fn malformed(s: &str) -> bool {
    matches!(req(s), Err(PreambleError::Malformed(_)))
}

/// Every strict prefix says "need more"; the whole input parses.
fn check_all_prefixes(input: &[u8]) -> (ConnectRequest, usize) {
    for i in 0..input.len() {
        assert_eq!(
            parse_request(&input[..i], LIMIT),
            Ok(None),
            "prefix {:?}",
            String::from_utf8_lossy(&input[..i])
        );
    }
    parse_request(input, LIMIT).unwrap().unwrap()
}

#[test]
fn all_prefixes_then_answer() {
    for input in [
        &b"CONNECT payroll.corp.example:443 HTTP/1.1\r\nHost: payroll.corp.example:443\r\n\r\n"[..],
        b"CONNECT [fd00:20::5]:8443 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.20.0.5:22 HTTP/1.0\r\nUser-Agent: curl/8\r\nProxy-Connection: Keep-Alive\r\n\r\n",
    ] {
        let (_, n) = check_all_prefixes(input);
        assert_eq!(n, input.len());
    }
}

#[test]
fn byte_at_a_time_with_trailing_flow_data() {
    let d = dest("App.Example.:8080");
    let mut wire = encode_request(&d).to_vec();
    let head = wire.len();
    wire.extend_from_slice(b"\x16\x03\x01 client hello");
    let mut buf = Vec::new();
    let mut got = None;
    for &b in &wire {
        buf.push(b);
        match parse_request(&buf, LIMIT).unwrap() {
            None => continue,
            Some(r) => {
                got = Some(r);
                break;
            }
        }
    }
    let (r, n) = got.unwrap();
    assert_eq!(n, head);
    assert_eq!(buf.len(), head);
    assert_eq!(r.dest.host, Host::Name("app.example".into()));
    assert_eq!(r.dest.port, 8080);
    // With the flow data already buffered, consumed still stops at the head.
    let (_, n) = parse_request(&wire, LIMIT).unwrap().unwrap();
    assert_eq!(&wire[n..], b"\x16\x03\x01 client hello");
}

#[test]
fn encode_round_trips() {
    for s in [
        "a.b:1",
        "1.2.3.4:65535",
        "[::1]:443",
        "[::ffff:10.0.0.1]:80",
        "x_y.corp:22",
    ] {
        let d = dest(s);
        assert_eq!(d.to_string(), s);
        let wire = encode_request(&d);
        let (r, n) = parse_request(&wire, LIMIT).unwrap().unwrap();
        assert_eq!((r.dest, n), (d, wire.len()));
    }
    assert_eq!(
        &encode_request(&dest("h.example:443"))[..],
        b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n\r\n"
    );
}

#[test]
fn method_refused_early() {
    assert_eq!(req("GET "), Err(PreambleError::Method));
    assert_eq!(req("GET / HTTP/1.1\r\n\r\n"), Err(PreambleError::Method));
    assert_eq!(
        req("connect a:1 HTTP/1.1\r\n\r\n"),
        Err(PreambleError::Method)
    );
    assert_eq!(
        req("POST http://a:1/ HTTP/1.1\r\n"),
        Err(PreambleError::Method)
    );
    assert_eq!(req("CONNEC"), Ok(None));
    assert_eq!(Refusal::from(PreambleError::Method), Refusal::Method);
}

#[test]
fn too_large() {
    let big = format!("CONNECT a.b:1 HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(100));
    assert_eq!(
        parse_request(big.as_bytes(), 64),
        Err(PreambleError::TooLarge)
    );
    assert_eq!(parse_request(&big.as_bytes()[..63], 64), Ok(None));
    assert_eq!(
        parse_request(&big.as_bytes()[..64], 64),
        Err(PreambleError::TooLarge)
    );
    // Exactly at the limit is fine.
    assert!(parse_request(big.as_bytes(), big.len()).unwrap().is_some());
    assert_eq!(parse_request(b"", 0), Err(PreambleError::TooLarge));
    let mut many = String::from("CONNECT a.b:1 HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(req(&many), Err(PreambleError::TooLarge));
    assert_eq!(Refusal::from(PreambleError::TooLarge), Refusal::TooLarge);
}

#[test]
fn bad_requests() {
    for s in [
        "CONNECT a.b HTTP/1.1\r\n\r\n",
        "CONNECT a.b: HTTP/1.1\r\n\r\n",
        "CONNECT a.b:0 HTTP/1.1\r\n\r\n",
        "CONNECT a.b:65536 HTTP/1.1\r\n\r\n",
        "CONNECT a.b:-1 HTTP/1.1\r\n\r\n",
        "CONNECT a.b:+80 HTTP/1.1\r\n\r\n",
        "CONNECT a.b:000080 HTTP/1.1\r\n\r\n",
        "CONNECT :80 HTTP/1.1\r\n\r\n",
        "CONNECT /a.b:80 HTTP/1.1\r\n\r\n",
        "CONNECT http://a.b:80/ HTTP/1.1\r\n\r\n",
        "CONNECT user@a.b:80 HTTP/1.1\r\n\r\n",
        "CONNECT ::1:80 HTTP/1.1\r\n\r\n",
        "CONNECT [::1 HTTP/1.1\r\n\r\n",
        "CONNECT [::1]x:80 HTTP/1.1\r\n\r\n",
        "CONNECT [::1] HTTP/1.1\r\n\r\n",
        "CONNECT [fe80::1%25eth0]:80 HTTP/1.1\r\n\r\n",
        "CONNECT [1.2.3.4]:80 HTTP/1.1\r\n\r\n",
        "CONNECT a..b:80 HTTP/1.1\r\n\r\n",
        "CONNECT .:80 HTTP/1.1\r\n\r\n",
        "CONNECT -a.b:80 HTTP/1.1\r\n\r\n",
        "CONNECT a-.b:80 HTTP/1.1\r\n\r\n",
        "CONNECT a*b.c:80 HTTP/1.1\r\n\r\n",
        "CONNECT 1.2.3:80 HTTP/1.1\r\n\r\n",
        "CONNECT 010.0.0.1:80 HTTP/1.1\r\n\r\n",
        "CONNECT a.0x7f:80 HTTP/1.1\r\n\r\n",
        "CONNECT a.b:80 HTTP/2.0\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nHost: a.b:80\r\nHost: a.b:80\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nHost: a b\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nHost: a.b:0\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "CONNECT a.b:80 HTTP/1.1\r\nHost: a.b\rX\r\n\r\n",
    ] {
        assert!(malformed(s), "{s:?} -> {:?}", req(s));
    }
    let long = format!("CONNECT {}.b:80 HTTP/1.1\r\n\r\n", "a".repeat(64));
    assert!(malformed(&long));
    let long = format!("CONNECT {}b:80 HTTP/1.1\r\n\r\n", "a.".repeat(127));
    assert!(malformed(&long), "254 bytes");
    let ok = format!("CONNECT {}b:80 HTTP/1.1\r\n\r\n", "a.".repeat(126));
    assert!(req(&ok).unwrap().is_some(), "253 bytes");
    assert_eq!(
        Refusal::from(PreambleError::Malformed("x")),
        Refusal::BadRequest
    );
}

#[test]
fn lenient_where_harmless() {
    let cases = [
        (
            "CONNECT a.b:80 HTTP/1.1\r\nHost: other.example\r\n\r\n",
            "a.b:80",
        ),
        (
            "CONNECT a.b:80 HTTP/1.1\r\nhost: [::1]:9\r\ncontent-length: 0\r\n\r\n",
            "a.b:80",
        ),
        ("CONNECT A.B.:80 HTTP/1.1\r\n\r\n", "a.b:80"),
        (
            "CONNECT _sip._tcp.Example.COM:5060 HTTP/1.1\r\n\r\n",
            "_sip._tcp.example.com:5060",
        ),
        ("CONNECT 1a.b2:80 HTTP/1.1\r\n\r\n", "1a.b2:80"),
        (
            "CONNECT localhost:65535 HTTP/1.1\r\n\r\n",
            "localhost:65535",
        ),
        (
            "CONNECT [::FFFF:1.2.3.4]:1 HTTP/1.1\r\n\r\n",
            "[::ffff:1.2.3.4]:1",
        ),
        ("\r\nCONNECT a.b:80 HTTP/1.1\r\n\r\n", "a.b:80"),
        // RFC 9112 §2.2: a recipient MAY accept a bare LF.
        ("CONNECT a.b:80 HTTP/1.1\nHost: a.b\n\n", "a.b:80"),
    ];
    for (s, want) in cases {
        let (r, n) = req(s).unwrap().unwrap();
        assert_eq!(r.dest.to_string(), want);
        assert_eq!(n, s.len());
    }
    let d = dest("[::ffff:1.2.3.4]:1");
    assert_eq!(d.host, Host::Ip("::ffff:1.2.3.4".parse().unwrap()));
}

#[test]
fn responses() {
    let (r, n) = parse_response(ESTABLISHED, LIMIT).unwrap().unwrap();
    assert_eq!(n, ESTABLISHED.len());
    assert_eq!(
        r,
        ConnectResponse {
            status: 200,
            error: None,
            content_length: 0
        }
    );
    for i in 0..ESTABLISHED.len() {
        assert_eq!(parse_response(&ESTABLISHED[..i], LIMIT), Ok(None));
    }
    let wire = Refusal::NotDrSegment.encode_response("nope");
    let (r, n) = parse_response(&wire, LIMIT).unwrap().unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.error, Some(Refusal::NotDrSegment));
    assert_eq!(&wire[n..n + r.content_length], b"nope\n");
    for i in 0..n {
        assert_eq!(parse_response(&wire[..i], LIMIT), Ok(None));
    }
    let other = b"HTTP/1.1 407 Proxy Auth\r\nLifeboat-Error: from-the-future\r\n\r\n";
    let (r, _) = parse_response(other, LIMIT).unwrap().unwrap();
    assert_eq!((r.status, r.error, r.content_length), (407, None, 0));
    // 2xx ignores a Content-Length: the tunnel starts after the head.
    let ok = b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nabc";
    let (r, n) = parse_response(ok, LIMIT).unwrap().unwrap();
    assert_eq!(
        (r.status, r.content_length, &ok[n..]),
        (200, 0, &b"abc"[..])
    );
    for bad in [
        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
        b"HTTP/1.1 403 F\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 403 F\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 403 F\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 4x3 F\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ] {
        assert!(
            matches!(parse_response(bad, LIMIT), Err(PreambleError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        parse_response(ESTABLISHED, 10),
        Err(PreambleError::TooLarge)
    );
}

#[test]
fn names() {
    assert_eq!(normalize_name("Foo.Example."), Ok("foo.example".into()));
    assert!(normalize_name("foo.example..").is_err());
    assert!(normalize_name("").is_err());
    assert!(normalize_name("caf\u{e9}.example").is_err());
    assert!(normalize_name("a.123").is_err());
    assert!(normalize_name("a.0x").is_ok());
    assert!(normalize_name(&"a".repeat(63)).is_ok());
    assert!(normalize_name(&"a".repeat(64)).is_err());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300), limit in 0usize..400) {
        if let Ok(Some((_, n))) = parse_request(&bytes, limit) {
            proptest::prop_assert!(n <= bytes.len() && n <= limit);
        }
        if let Ok(Some((_, n))) = parse_response(&bytes, limit) {
            proptest::prop_assert!(n <= bytes.len() && n <= limit);
        }
    }

    #[test]
    fn authority_never_panics(s in "\\PC{0,40}") {
        if let Ok(d) = Dest::parse(&s) {
            proptest::prop_assert_eq!(Dest::parse(&d.to_string()), Ok(d));
        }
    }
}
