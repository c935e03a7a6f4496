//! The local HTTP proxy listener. `CONNECT host:port` (the same preamble
//! as the edge speaks) opens a flow and answers 200; a plain proxy request
//! in absolute form (`GET http://host[:port]/path HTTP/1.1`, what
//! `http_proxy=` makes tools send) opens a flow to `host:port` (80 by
//! default) and sends the request on in origin form, with
//! `Connection: close` (one request per flow: the next request may be for
//! another host). The edge's refusals (status, `Lifeboat-Error` word and
//! reason) are passed on either way.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tunnel::{Early, OpenError};
use super::ClientState;
use crate::preamble::{self, Dest, PreambleError, MAX_HEADERS};
use crate::refusal::Refusal;

/// A complete request head.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// `CONNECT`: answer 200, then the flow carries raw bytes.
    Connect(Dest),
    /// A plain request: the flow starts with this rewritten head; `safe`
    /// for a method that asks nothing to be done (GET, HEAD, OPTIONS: RFC
    /// 9110 9.2.1), which may be sent twice.
    Plain {
        dest: Dest,
        head: BytesMut,
        safe: bool,
    },
}

/// Hop-by-hop headers of the client's request that the origin must not
/// see (RFC 9110 7.6.1); `Connection: close` replaces them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "upgrade",
];

/// Parses the head at the start of `buf`: `Ok(None)` = read more;
/// otherwise the head and the bytes it used (the rest is flow data).
pub(super) fn parse_head(
    buf: &[u8],
    limit: usize,
) -> Result<Option<(Head, usize)>, (Refusal, &'static str)> {
    match preamble::parse_request(buf, limit) {
        Ok(Some((req, used))) => Ok(Some((Head::Connect(req.dest), used))),
        Ok(None) => Ok(None),
        Err(PreambleError::Method) => parse_plain(buf, limit),
        Err(e) => Err((Refusal::from(e), "malformed CONNECT request")),
    }
}

/// An absolute-form request (`http://` only) rewritten to origin form.
fn parse_plain(buf: &[u8], limit: usize) -> Result<Option<(Head, usize)>, (Refusal, &'static str)> {
    let bad = |why| Err((Refusal::BadRequest, why));
    let window = buf.get(..limit).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= limit => {
            return Err((Refusal::TooLarge, "request head over the size limit"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((Refusal::TooLarge, "too many header fields"))
        }
        Err(_) => return bad("malformed request head"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return bad("malformed request head");
    };
    let Some(rest) = target
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])
    else {
        return Err((
            Refusal::Method,
            "only CONNECT and absolute-form http:// requests are proxied",
        ));
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return bad("the request target needs a host (and no user info)");
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    let Ok(dest) = Dest::parse(&with_port) else {
        return bad("the request target's host or port is not valid");
    };
    let path = path.split('#').next().unwrap_or_default();
    let path = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    Ok(Some((
        plain(method, &path, version, req.headers, authority, dest),
        used,
    )))
}

/// The origin-form head: request line, the end-to-end headers, `Host` if
/// the client sent none, `Connection: close`.
fn plain(
    method: &str,
    path: &str,
    version: u8,
    headers: &[httparse::Header<'_>],
    authority: &str,
    dest: Dest,
) -> Head {
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    let mut has_host = false;
    for h in headers {
        if HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        has_host |= h.name.eq_ignore_ascii_case("host");
        head.put_slice(h.name.as_bytes());
        head.put_slice(b": ");
        head.put_slice(h.value);
        head.put_slice(b"\r\n");
    }
    if !has_host {
        head.put_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    head.put_slice(b"Connection: close\r\n\r\n");
    Head::Plain {
        dest,
        head,
        safe: matches!(method, "GET" | "HEAD" | "OPTIONS"),
    }
}

pub(super) async fn flow(state: &ClientState, mut sock: TcpStream) {
    let limit = state.limits.preamble_bytes;
    let head = tokio::time::timeout(state.limits.preamble_timeout, async {
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            match parse_head(&buf, limit) {
                Ok(Some((head, used))) => return Ok(Some(Ok((head, buf.split_off(used))))),
                Ok(None) => continue,
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    })
    .await;
    let (head, early) = match head {
        Ok(Ok(Some(Ok(x)))) => x,
        Ok(Ok(Some(Err((r, why))))) => {
            let _ = sock.write_all(&r.encode_response(why)).await;
            return;
        }
        Err(_) => {
            let r = Refusal::BadRequest;
            let _ = sock
                .write_all(&r.encode_response("no complete request head in time"))
                .await;
            return;
        }
        _ => return,
    };
    // What the app sent past a CONNECT head, or a plain request's head
    // (rewritten) and what followed it: sent with the preamble. A safe
    // request with nothing after it may be sent again on the next tunnel.
    let (dest, mut first, connect) = match head {
        Head::Connect(dest) => (dest, Early::known(early.freeze()), true),
        Head::Plain {
            dest,
            mut head,
            safe,
        } => {
            let replayable = safe && early.is_empty();
            head.extend_from_slice(&early);
            let first = Early::known(head.freeze()).replayable(replayable);
            (dest, first, false)
        }
    };
    match super::open(state, &dest, &mut first).await {
        Ok((edge, from_edge)) => {
            if connect && sock.write_all(preamble::ESTABLISHED).await.is_err() {
                return;
            }
            let sent_up = first.sent().len();
            // The bytes are the stream's now: not held for the flow's life.
            drop(first);
            super::carry(state, sock, edge, from_edge, sent_up).await;
        }
        Err(e) => {
            super::log_refused("http", &dest, &e);
            let (r, reason) = match e {
                OpenError::Refused {
                    refusal: Some(r),
                    reason,
                    ..
                } => (r, reason),
                OpenError::Refused {
                    refusal: None,
                    reason,
                    ..
                } => (Refusal::UpstreamFailed, reason),
                OpenError::NoTunnel { why, .. } => {
                    (Refusal::NoConnector, format!("no tunnel to an edge: {why}"))
                }
                OpenError::Broken(why) => {
                    (Refusal::NoConnector, format!("no tunnel to an edge: {why}"))
                }
            };
            let _ = sock.write_all(&r.encode_response(&reason)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_head, Head};
    use crate::preamble::Dest;
    use crate::refusal::Refusal;

    fn plain(req: &str) -> (Dest, String, usize) {
        match parse_head(req.as_bytes(), 8192) {
            Ok(Some((Head::Plain { dest, head, .. }, used))) => {
                (dest, String::from_utf8(head.to_vec()).unwrap(), used)
            }
            other => panic!("{req:?}: {other:?}"),
        }
    }

    #[test]
    fn safe_methods_may_be_sent_twice_others_not() {
        for (method, want) in [
            ("GET", true),
            ("HEAD", true),
            ("OPTIONS", true),
            ("POST", false),
            ("PUT", false),
            ("DELETE", false),
            ("PATCH", false),
        ] {
            let req = format!("{method} http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n");
            match parse_head(req.as_bytes(), 8192) {
                Ok(Some((Head::Plain { safe, .. }, _))) => assert_eq!(safe, want, "{method}"),
                other => panic!("{req:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn absolute_form_is_rewritten_to_origin_form() {
        let req = "GET http://payroll.corp.example:8080/a/b?q=1 HTTP/1.1\r\nHost: payroll.corp.example:8080\r\nProxy-Connection: keep-alive\r\nUser-Agent: t\r\n\r\nrest";
        let (dest, head, used) = plain(req);
        assert_eq!(dest, Dest::parse("payroll.corp.example:8080").unwrap());
        assert_eq!(
            head,
            "GET /a/b?q=1 HTTP/1.1\r\nHost: payroll.corp.example:8080\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(&req[used..], "rest");
        // No path, no port, no Host: `/`, port 80, Host from the target.
        let (dest, head, _) = plain("HEAD HTTP://[fd00::5] HTTP/1.0\r\n\r\n");
        assert_eq!(dest, Dest::parse("[fd00::5]:80").unwrap());
        assert_eq!(
            head,
            "HEAD / HTTP/1.0\r\nHost: [fd00::5]\r\nConnection: close\r\n\r\n"
        );
        let (_, head, _) = plain("GET http://a.example?x HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert!(head.starts_with("GET /?x HTTP/1.1\r\n"), "{head}");
    }

    #[test]
    fn every_prefix_needs_more_and_bad_targets_are_refused() {
        let req =
            b"POST http://a.example/x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n\r\n";
        for n in 0..req.len() {
            assert_eq!(parse_head(&req[..n], 8192), Ok(None), "prefix {n}");
        }
        let refused = |r: &str| parse_head(r.as_bytes(), 8192).map(|_| ()).unwrap_err().0;
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), Refusal::Method);
        assert_eq!(
            refused("GET https://a.example/ HTTP/1.1\r\n\r\n"),
            Refusal::Method
        );
        assert_eq!(
            refused("GET http://u@a.example/ HTTP/1.1\r\n\r\n"),
            Refusal::BadRequest
        );
        assert_eq!(
            refused("GET http:///x HTTP/1.1\r\n\r\n"),
            Refusal::BadRequest
        );
        assert_eq!(
            refused("GET http://a.example:0/ HTTP/1.1\r\n\r\n"),
            Refusal::BadRequest
        );
        let big = format!("GET http://a.example/{} HTTP/1.1\r\n\r\n", "x".repeat(9000));
        assert_eq!(refused(&big), Refusal::TooLarge);
        // CONNECT still works.
        assert!(matches!(
            parse_head(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n", 8192),
            Ok(Some((Head::Connect(_), _)))
        ));
    }
}
