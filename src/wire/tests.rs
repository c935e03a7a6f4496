use super::*;
use proptest::prelude::*;

fn header(dest: &str) -> FlowHeader {
    FlowHeader {
        flow_id: 0x0102_0304_0506_0708,
        segment: "payroll".into(),
        dest: Dest::parse(dest).unwrap(),
        client: "spiffe://dr.example.com/client/alice".into(),
    }
}

fn encode(h: &FlowHeader) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_flow_header(h, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn header_round_trips_with_all_prefixes() {
    for d in [
        "payroll.corp.example:443",
        "10.20.0.5:8080",
        "[fd00:20::5]:1",
    ] {
        let h = header(d);
        let mut wire = encode(&h);
        let n = wire.len();
        for i in 0..n {
            assert_eq!(parse_flow_header(&wire[..i]), Ok(None), "prefix {i}");
        }
        wire.extend_from_slice(b"flow data");
        assert_eq!(parse_flow_header(&wire), Ok(Some((h, n))));
    }
}

#[test]
fn exact_header_bytes() {
    let h = FlowHeader {
        flow_id: 7,
        segment: "s".into(),
        dest: Dest::parse("1.2.3.4:258").unwrap(),
        client: "c".into(),
    };
    assert_eq!(
        encode(&h),
        [1, 0, 20, 0, 0, 0, 0, 0, 0, 0, 7, 1, b's', 4, 1, 2, 3, 4, 1, 2, 0, 1, b'c']
    );
}

#[test]
fn header_limits() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let mut h = header("a.b:1");
    h.segment = "s".repeat(256);
    assert_eq!(encode_flow_header(&h, &mut out), Err(WireError::TooLarge));
    h.segment = "s".repeat(255);
    h.client = "c".repeat(MAX_HEADER);
    assert_eq!(encode_flow_header(&h, &mut out), Err(WireError::TooLarge));
    h.client = "c\nforged log line".into();
    assert!(matches!(
        encode_flow_header(&h, &mut out),
        Err(WireError::Malformed(_))
    ));
    h.client = "c".into();
    h.segment = String::new();
    assert!(matches!(
        encode_flow_header(&h, &mut out),
        Err(WireError::Malformed(_))
    ));
    h.segment = "s".into();
    h.dest.host = Host::Name("Upper.case".into());
    assert!(matches!(
        encode_flow_header(&h, &mut out),
        Err(WireError::Malformed(_))
    ));
    h.dest.host = Host::Name("bad name".into());
    assert!(matches!(
        encode_flow_header(&h, &mut out),
        Err(WireError::Malformed(_))
    ));
    h.dest.host = Host::Name("ok.name".into());
    h.dest.port = 0;
    assert!(matches!(
        encode_flow_header(&h, &mut out),
        Err(WireError::Malformed(_))
    ));
    assert_eq!(&out[..], b"keep", "untouched on error");
    // The largest message that fits is accepted and parses back.
    h.dest.port = 1;
    let fixed = PREFIX + 8 + 1 + 1 + 1 + 1 + 7 + 2 + 2;
    h.client = "c".repeat(MAX_HEADER - fixed);
    let wire = encode(&h);
    assert_eq!(wire.len(), MAX_HEADER);
    assert_eq!(parse_flow_header(&wire), Ok(Some((h, MAX_HEADER))));
}

#[test]
fn header_garbage() {
    let good = encode(&header("a.b:1"));
    assert_eq!(parse_flow_header(&[2]), Err(WireError::BadVersion(2)));
    assert_eq!(parse_flow_header(&[1, 0x10, 0]), Err(WireError::TooLarge));
    let mut bad_kind = good.clone();
    bad_kind[PREFIX + 8 + 1 + 7] = 9;
    assert!(matches!(
        parse_flow_header(&bad_kind),
        Err(WireError::Malformed(_))
    ));
    let mut trailing = good.clone();
    trailing[2] += 1;
    trailing.push(0);
    assert!(matches!(
        parse_flow_header(&trailing),
        Err(WireError::Malformed(_))
    ));
    let mut short = good.clone();
    short[2] -= 1;
    short.pop();
    assert!(matches!(
        parse_flow_header(&short),
        Err(WireError::Malformed(_))
    ));
    let mut bad_name = good.clone();
    let at = good.len() - 2 - 2 - h_len_of_client() - 3;
    bad_name[at] = b'*';
    assert!(matches!(
        parse_flow_header(&bad_name),
        Err(WireError::Malformed(_))
    ));
    // Uppercase on the wire is normalised, never trusted as-is.
    let mut upper = good;
    upper[at] = b'A';
    let (h, _) = parse_flow_header(&upper).unwrap().unwrap();
    assert_eq!(h.dest.host, Host::Name("a.b".into()));
}

fn h_len_of_client() -> usize {
    header("a.b:1").client.len()
}

#[test]
fn replies() {
    let cases = [
        FlowReply::Connected,
        FlowReply::Failed {
            kind: FailKind::Refused,
            message: "connection refused (os error 111)".into(),
        },
        FlowReply::Failed {
            kind: FailKind::Timeout,
            message: String::new(),
        },
    ];
    for r in cases {
        let mut out = BytesMut::new();
        encode_flow_reply(&r, &mut out);
        for i in 0..out.len() {
            assert_eq!(parse_flow_reply(&out[..i]), Ok(None));
        }
        out.extend_from_slice(b"data");
        assert_eq!(parse_flow_reply(&out), Ok(Some((r, out.len() - 4))));
    }
    for k in FailKind::ALL {
        assert_eq!(FailKind::from_code(k.code()), Some(k));
    }
    assert_eq!(FailKind::Timeout.refusal(), Refusal::UpstreamTimeout);
    assert_eq!(FailKind::Resolve.refusal(), Refusal::UpstreamFailed);
}

#[test]
fn reply_message_is_sanitised_and_truncated() {
    let long = format!("line1\r\nline2 {}", "\u{e9}".repeat(400));
    let mut out = BytesMut::new();
    encode_flow_reply(
        &FlowReply::Failed {
            kind: FailKind::Other,
            message: long,
        },
        &mut out,
    );
    let (r, _) = parse_flow_reply(&out).unwrap().unwrap();
    let FlowReply::Failed { kind, message } = r else {
        panic!("not failed")
    };
    assert_eq!(kind, FailKind::Other);
    assert!(message.starts_with("line1  line2 \u{e9}"));
    assert!(message.len() <= MAX_MESSAGE && message.len() > MAX_MESSAGE - 2);
    assert_eq!(
        parse_flow_reply(&[1, 0, 1, 9]),
        Err(WireError::Malformed("unknown failure kind"))
    );
    assert!(parse_flow_reply(&[1, 0, 3, 1, 0xff, 0xff]).is_err());
    assert!(
        parse_flow_reply(&[1, 0, 4, 1, 0, 1, 0xff]).is_err(),
        "not UTF-8"
    );
    assert!(
        parse_flow_reply(&[1, 0, 4, 1, 0, 1, b'\n']).is_err(),
        "control"
    );
    assert!(parse_flow_reply(&[1, 0, 0]).is_err(), "empty body");
}

fn arb_dest() -> impl Strategy<Value = Dest> {
    let host = prop_oneof![
        "[a-z_][a-z0-9_]{0,19}(\\.[a-z][a-z0-9-]{0,10}[a-z]){0,4}".prop_map(Host::Name),
        any::<[u8; 4]>().prop_map(|o| Host::Ip(IpAddr::from(o))),
        any::<[u8; 16]>().prop_map(|o| Host::Ip(IpAddr::from(o))),
    ];
    (host, 1u16..).prop_map(|(host, port)| Dest { host, port })
}

proptest! {
    #[test]
    fn header_round_trip(flow_id: u64, segment in "[^\\p{Cc}]{1,40}", dest in arb_dest(), client in "[^\\p{Cc}]{0,80}") {
        let h = FlowHeader { flow_id, segment, dest, client };
        let wire = encode(&h);
        prop_assert_eq!(parse_flow_header(&wire), Ok(Some((h, wire.len()))));
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), fix_prefix: bool) {
        if fix_prefix && bytes.len() >= PREFIX {
            bytes[0] = VERSION;
            let len = (bytes.len() - PREFIX) as u16;
            bytes[1..PREFIX].copy_from_slice(&len.to_be_bytes());
        }
        if let Ok(Some((_, n))) = parse_flow_header(&bytes) {
            prop_assert!(n <= bytes.len());
        }
        if let Ok(Some((_, n))) = parse_flow_reply(&bytes) {
            prop_assert!(n <= bytes.len());
        }
    }

    #[test]
    fn reply_round_trip(code in 1u8..=5, message in "[^\\p{Cc}]{0,200}") {
        let kind = FailKind::from_code(code).unwrap();
        let r = FlowReply::Failed { kind, message };
        let mut out = BytesMut::new();
        encode_flow_reply(&r, &mut out);
        let (got, n) = parse_flow_reply(&out).unwrap().unwrap();
        prop_assert_eq!(n, out.len());
        if let (FlowReply::Failed { message: m, .. }, FlowReply::Failed { message: orig, .. }) = (&got, &r) {
            prop_assert!(orig.starts_with(m.as_str()));
        }
    }
}
