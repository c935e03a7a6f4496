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
mod tests;
