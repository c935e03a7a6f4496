//! Edge↔connector per-flow framing (internal protocol, version 1).
//!
//! One stream per flow, opened by the edge towards the connector. The edge
//! writes a [`FlowHeader`], the connector answers a [`FlowReply`], then raw
//! bytes flow both ways. Pure and sans-IO: encoders append to a `BytesMut`,
//! parsers take the bytes read so far and return `Ok(None)` for "need more".
//!
//! Every message is `version: u8 = 1`, `len: u16 BE` (bytes after these
//! three), then the body. The whole message is at most [`MAX_HEADER`] bytes.
//!
//! ```text
//! FlowHeader body:
//!   flow_id  u64 BE
//!   segment  u8 len, UTF-8 (1..=255 bytes, no control characters)
//!   host     u8 kind: 0 = name (u8 len + normalised name), 4 = IPv4 (4 bytes),
//!            6 = IPv6 (16 bytes)
//!   port     u16 BE (1..=65535)
//!   client   u16 len, UTF-8 (no control characters)
//! FlowReply body:
//!   0                      Connected
//!   kind u8 (1..=5), u16 len, UTF-8 message (<= 512 bytes)   Failed
//! ```
//!
//! Parsing is strict: trailing bytes, unknown kinds, bad UTF-8 and names that
//! the preamble would refuse are all errors (a new field means a new
//! version). Nothing here panics on peer input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

use crate::preamble::{check_name, Dest, Host};
use crate::refusal::Refusal;

/// The only version this build speaks.
pub const VERSION: u8 = 1;
/// Largest message, prefix included.
pub const MAX_HEADER: usize = 4096;
/// Longest failure message in a [`FlowReply`], in bytes.
pub const MAX_MESSAGE: usize = 512;

const PREFIX: usize = 3;
const HOST_NAME: u8 = 0;
const HOST_V4: u8 = 4;
const HOST_V6: u8 = 6;
const REPLY_CONNECTED: u8 = 0;

/// What the edge tells the connector about a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowHeader {
    pub flow_id: u64,
    pub segment: String,
    pub dest: Dest,
    /// The client's SPIFFE id URI, for the connector's log.
    pub client: String,
}

/// Why the connector could not reach the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailKind {
    Resolve,
    Refused,
    Unreachable,
    Timeout,
    Other,
}

impl FailKind {
    pub const ALL: [Self; 5] = [
        Self::Resolve,
        Self::Refused,
        Self::Unreachable,
        Self::Timeout,
        Self::Other,
    ];

    /// Stable lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// The refusal the edge answers the client with when this was the last
    /// failure: a timeout is 504 `upstream-timeout`, anything else 502.
    pub fn refusal(self) -> Refusal {
        match self {
            Self::Timeout => Refusal::UpstreamTimeout,
            _ => Refusal::UpstreamFailed,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Resolve => 1,
            Self::Refused => 2,
            Self::Unreachable => 3,
            Self::Timeout => 4,
            Self::Other => 5,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == c)
    }
}

/// The connector's answer to a [`FlowHeader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowReply {
    Connected,
    /// `message` is at most [`MAX_MESSAGE`] bytes, one line, no control
    /// characters (the encoder enforces this; the parser checks it).
    Failed {
        kind: FailKind,
        message: String,
    },
}

/// Why a message could not be encoded or parsed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("unsupported wire version {0}")]
    BadVersion(u8),
    #[error("message over {MAX_HEADER} bytes")]
    TooLarge,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Appends `h` to `out`. `out` is untouched on error: `TooLarge` when the
/// message would exceed [`MAX_HEADER`] or the segment 255 bytes, `Malformed`
/// for anything [`parse_flow_header`] would refuse.
pub fn encode_flow_header(h: &FlowHeader, out: &mut BytesMut) -> Result<(), WireError> {
    if h.segment.len() > usize::from(u8::MAX) {
        return Err(WireError::TooLarge);
    }
    check_text(&h.segment)?;
    if h.segment.is_empty() {
        return Err(WireError::Malformed("empty segment"));
    }
    check_text(&h.client)?;
    if h.dest.port == 0 {
        return Err(WireError::Malformed("port 0"));
    }
    let host_len = match &h.dest.host {
        Host::Name(n) => {
            check_name(n.as_bytes()).map_err(WireError::Malformed)?;
            if n.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(WireError::Malformed("host name not normalised"));
            }
            1 + n.len()
        }
        Host::Ip(IpAddr::V4(_)) => 4,
        Host::Ip(IpAddr::V6(_)) => 16,
    };
    let body = 8 + 1 + h.segment.len() + 1 + host_len + 2 + 2 + h.client.len();
    if PREFIX + body > MAX_HEADER {
        return Err(WireError::TooLarge);
    }
    out.reserve(PREFIX + body);
    out.put_u8(VERSION);
    out.put_u16(body as u16);
    out.put_u64(h.flow_id);
    out.put_u8(h.segment.len() as u8);
    out.put_slice(h.segment.as_bytes());
    match &h.dest.host {
        Host::Name(n) => {
            out.put_u8(HOST_NAME);
            out.put_u8(n.len() as u8);
            out.put_slice(n.as_bytes());
        }
        Host::Ip(IpAddr::V4(a)) => {
            out.put_u8(HOST_V4);
            out.put_slice(&a.octets());
        }
        Host::Ip(IpAddr::V6(a)) => {
            out.put_u8(HOST_V6);
            out.put_slice(&a.octets());
        }
    }
    out.put_u16(h.dest.port);
    out.put_u16(h.client.len() as u16);
    out.put_slice(h.client.as_bytes());
    Ok(())
}

/// Parses a [`FlowHeader`] from the start of `buf`: `Ok(None)` = need more,
/// `Ok(Some((h, consumed)))`, the rest of `buf` being flow data.
pub fn parse_flow_header(buf: &[u8]) -> Result<Option<(FlowHeader, usize)>, WireError> {
    let Some((body, consumed)) = frame(buf)? else {
        return Ok(None);
    };
    let mut r = Reader(body);
    let flow_id = r.u64()?;
    let seg_len = r.u8()?;
    let segment = r.text(usize::from(seg_len))?;
    if segment.is_empty() {
        return Err(WireError::Malformed("empty segment"));
    }
    let host = match r.u8()? {
        HOST_NAME => {
            let len = r.u8()?;
            let name = r.take(usize::from(len))?;
            check_name(name).map_err(WireError::Malformed)?;
            // check_name admits ASCII only, so this cannot fail.
            let name = std::str::from_utf8(name)
                .map_err(|_| WireError::Malformed("host name not UTF-8"))?;
            Host::Name(name.to_ascii_lowercase())
        }
        HOST_V4 => Host::Ip(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
        HOST_V6 => Host::Ip(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
        _ => return Err(WireError::Malformed("unknown host kind")),
    };
    let port = r.u16()?;
    if port == 0 {
        return Err(WireError::Malformed("port 0"));
    }
    let client_len = r.u16()?;
    let client = r.text(usize::from(client_len))?;
    r.end()?;
    Ok(Some((
        FlowHeader {
            flow_id,
            segment,
            dest: Dest { host, port },
            client,
        },
        consumed,
    )))
}

/// Appends `r` to `out`. A failure message is made to fit: control
/// characters become spaces and it is cut to [`MAX_MESSAGE`] bytes on a
/// character boundary.
pub fn encode_flow_reply(r: &FlowReply, out: &mut BytesMut) {
    match r {
        FlowReply::Connected => {
            out.put_slice(&[VERSION, 0, 1, REPLY_CONNECTED]);
        }
        FlowReply::Failed { kind, message } => {
            let mut msg = [0u8; MAX_MESSAGE];
            let mut n = 0;
            for c in message.chars() {
                let c = if c.is_control() { ' ' } else { c };
                let w = c.len_utf8();
                let Some(dst) = msg.get_mut(n..n + w) else {
                    break;
                };
                c.encode_utf8(dst);
                n += w;
            }
            let body = 1 + 2 + n;
            out.reserve(PREFIX + body);
            out.put_u8(VERSION);
            out.put_u16(body as u16);
            out.put_u8(kind.code());
            out.put_u16(n as u16);
            out.put_slice(&msg[..n]);
        }
    }
}

/// Parses a [`FlowReply`]; same contract as [`parse_flow_header`].
pub fn parse_flow_reply(buf: &[u8]) -> Result<Option<(FlowReply, usize)>, WireError> {
    let Some((body, consumed)) = frame(buf)? else {
        return Ok(None);
    };
    let mut r = Reader(body);
    let reply = match r.u8()? {
        REPLY_CONNECTED => FlowReply::Connected,
        code => {
            let kind =
                FailKind::from_code(code).ok_or(WireError::Malformed("unknown failure kind"))?;
            let len = usize::from(r.u16()?);
            if len > MAX_MESSAGE {
                return Err(WireError::Malformed("failure message too long"));
            }
            FlowReply::Failed {
                kind,
                message: r.text(len)?,
            }
        }
    };
    r.end()?;
    Ok(Some((reply, consumed)))
}

/// Splits off one message: checks version and length, returns the body and
/// the bytes consumed, or `None` when incomplete.
fn frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let Some(&[hi, lo]) = buf.get(1..PREFIX) else {
        return Ok(None);
    };
    let total = PREFIX + usize::from(u16::from_be_bytes([hi, lo]));
    if total > MAX_HEADER {
        return Err(WireError::TooLarge);
    }
    Ok(buf.get(PREFIX..total).map(|body| (body, total)))
}

/// Peer-supplied text: UTF-8 without control characters (it ends up in logs).
fn check_text(s: &str) -> Result<(), WireError> {
    if s.chars().any(char::is_control) {
        return Err(WireError::Malformed("control character in text"));
    }
    Ok(())
}

/// A bounds-checked reader over a message body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError::Malformed("field overruns message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn text(&mut self, n: usize) -> Result<String, WireError> {
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| WireError::Malformed("text not UTF-8"))?;
        check_text(s)?;
        Ok(s.to_owned())
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes in message"))
        }
    }
}

#[cfg(test)]
mod tests {
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
}
