//! The HTTP/1.1 CONNECT preamble (RFC 9110 §9.3.6) that begins every client
//! flow, and the edge's answer to it.
//!
//! Pure and sans-IO: [`parse_request`] and [`parse_response`] take the bytes
//! read so far and say "need more", "here it is, N bytes consumed" or why not;
//! the async shells own sockets and `preamble_timeout`. Anything after the
//! consumed head is flow data and belongs to the caller.
//!
//! Host names are validated and normalised here ([`normalize_name`]) so that
//! the segment matcher and the edge↔connector wire agree on one form:
//! ASCII-lowercase, no trailing dot, at most 253 bytes, labels of 1..=63
//! letters, digits, `-` (not first or last) and `_`. The underscore is
//! accepted because internal names in data centres (older Active Directory
//! hosts, service names) carry it and it is harmless here: we never interpret
//! it. A name whose last label is numeric (`1.2.3`, `host.0x10`) is refused:
//! resolvers may read it as an IPv4 address, which would bypass CIDR matching.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::refusal::Refusal;

/// The fixed reply that opens a tunnel.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Headers accepted in one preamble; more is answered 431 `too-large`.
pub const MAX_HEADERS: usize = 32;

/// Longest host name in bytes, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 253;

/// Longest label in bytes.
pub const MAX_LABEL: usize = 63;

/// A destination host: a normalised name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// ASCII-lowercased, trailing dot removed, validated by [`normalize_name`].
    Name(String),
    /// An IP literal, kept as the client wrote it (an IPv4-mapped IPv6
    /// address stays IPv6 here; the segment matcher treats it as IPv4).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Self::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// A flow destination, `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dest {
    pub host: Host,
    pub port: u16,
}

impl Dest {
    /// Parses an authority: `name:port`, `1.2.3.4:port` or `[v6]:port`.
    /// The port is required and must be 1..=65535; IPv6 must be bracketed and
    /// carry no zone; userinfo, paths and schemes are refused.
    pub fn parse(authority: &str) -> Result<Self, PreambleError> {
        let (host, port) = split_host_port(authority)?;
        let port = port.ok_or(PreambleError::Malformed("missing port"))?;
        Ok(Self {
            host: parse_host(host)?,
            port: parse_port(port)?,
        })
    }
}

impl FromStr for Dest {
    type Err = PreambleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A parsed CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub dest: Dest,
}

/// Why a preamble was refused. Small and closed: no strings are built.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PreambleError {
    /// No complete head within the limit, or more than [`MAX_HEADERS`].
    #[error("preamble is over the size limit")]
    TooLarge,
    /// A method other than CONNECT.
    #[error("method is not CONNECT")]
    Method,
    /// Anything else; the text says what (for logs, never for matching).
    #[error("malformed preamble: {0}")]
    Malformed(&'static str),
}

impl From<PreambleError> for Refusal {
    fn from(e: PreambleError) -> Self {
        match e {
            PreambleError::TooLarge => Self::TooLarge,
            PreambleError::Method => Self::Method,
            PreambleError::Malformed(_) => Self::BadRequest,
        }
    }
}

/// Parses a CONNECT request head from the start of `buf`.
///
/// - `Ok(None)`: need more bytes (and `buf.len() < limit`).
/// - `Ok(Some((req, consumed)))`: `consumed` counts the head including the
///   final CRLFCRLF; `buf[consumed..]` is flow data.
/// - `Err(TooLarge)`: no complete head within `limit` bytes, or more than
///   [`MAX_HEADERS`] header fields.
/// - `Err(Method)`: the method is not `CONNECT` (case-sensitive), reported as
///   soon as the method token is complete.
/// - `Err(Malformed)`: anything else, including a target that is not
///   authority-form, a `Transfer-Encoding` or non-zero `Content-Length` (a
///   CONNECT request has no content; refusing it rules out smuggling), and a
///   repeated or malformed `Host`.
///
/// `Host` is optional (HTTP/1.0 clients omit it); when present it must be a
/// well-formed host with optional port, but it need not match the target:
/// the target alone decides where the flow goes, as RFC 9110 says for CONNECT.
pub fn parse_request(
    buf: &[u8],
    limit: usize,
) -> Result<Option<(ConnectRequest, usize)>, PreambleError> {
    let window = buf.get(..limit).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(window);
    if let Some(method) = req.method {
        if method != "CONNECT" {
            return Err(PreambleError::Method);
        }
    }
    let consumed = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= limit => {
            return Err(PreambleError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_httparse(e)),
    };
    let target = req
        .path
        .ok_or(PreambleError::Malformed("no request target"))?;
    let dest = Dest::parse(target)?;
    let mut seen_host = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            if seen_host {
                return Err(PreambleError::Malformed("repeated Host header"));
            }
            seen_host = true;
            let value = std::str::from_utf8(h.value)
                .map_err(|_| PreambleError::Malformed("invalid Host header"))?;
            let (host, port) = split_host_port(value.trim())?;
            parse_host(host)?;
            if let Some(port) = port {
                parse_port(port)?;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        {
            return Err(PreambleError::Malformed("CONNECT with content"));
        }
    }
    Ok(Some((ConnectRequest { dest }, consumed)))
}

/// `CONNECT d HTTP/1.1\r\nHost: d\r\n\r\n`.
pub fn encode_request(dest: &Dest) -> Bytes {
    let d = dest.to_string();
    let mut out = BytesMut::with_capacity(2 * d.len() + 32);
    out.put_slice(b"CONNECT ");
    out.put_slice(d.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    out.put_slice(d.as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.freeze()
}

/// The edge's answer, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    pub status: u16,
    /// From the `Lifeboat-Error` header; `None` when absent or a word this
    /// version does not know (newer edges may add words).
    pub error: Option<Refusal>,
    /// Body length to read after the head for a non-2xx answer. Always 0 for
    /// 2xx (the tunnel starts right after the head, RFC 9112 §6.3) and when
    /// the header is absent. Not bounded here: callers cap what they read.
    pub content_length: usize,
}

/// Parses the edge's response head. Same contract as [`parse_request`]:
/// `Ok(None)` = need more; `consumed` = head bytes. A 1xx interim response
/// and a `Transfer-Encoding` are refused as malformed (the edge sends
/// neither).
pub fn parse_response(
    buf: &[u8],
    limit: usize,
) -> Result<Option<(ConnectResponse, usize)>, PreambleError> {
    let window = buf.get(..limit).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= limit => {
            return Err(PreambleError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_httparse(e)),
    };
    let status = resp
        .code
        .ok_or(PreambleError::Malformed("no status code"))?;
    if status < 200 {
        return Err(PreambleError::Malformed("unexpected interim response"));
    }
    let mut error = None;
    let mut content_length: Option<usize> = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("lifeboat-error") {
            if error.is_none() {
                error = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|w| Refusal::from_word(w.trim()));
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(PreambleError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(PreambleError::Malformed("Transfer-Encoding in response"));
        }
    }
    let content_length = if (200..300).contains(&status) {
        0
    } else {
        content_length.unwrap_or(0)
    };
    Ok(Some((
        ConnectResponse {
            status,
            error,
            content_length,
        },
        consumed,
    )))
}

/// Validates and normalises a host name: strips one trailing dot,
/// ASCII-lowercases, and checks the rules in the module docs. The error says
/// which rule failed. Shared by the preamble, the wire and the segment
/// compiler so that all three agree.
pub fn normalize_name(name: &str) -> Result<String, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    check_name(name.as_bytes())?;
    Ok(name.to_ascii_lowercase())
}

/// Checks a name already stripped of its trailing dot (either case).
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty host name");
    }
    if name.len() > MAX_NAME {
        return Err("host name longer than 253 bytes");
    }
    let mut last: &[u8] = &[];
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err("empty label in host name");
        }
        if label.len() > MAX_LABEL {
            return Err("host name label longer than 63 bytes");
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("invalid character in host name");
        }
        if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return Err("host name label starts or ends with '-'");
        }
        last = label;
    }
    let numeric = last.iter().all(u8::is_ascii_digit)
        || (last.len() > 2
            && last[..2].eq_ignore_ascii_case(b"0x")
            && last[2..].iter().all(u8::is_ascii_hexdigit));
    if numeric {
        return Err("host name ends in a numeric label");
    }
    Ok(())
}

/// Splits `host[:port]`; the host keeps its brackets if it had them.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), PreambleError> {
    if s.starts_with('[') {
        let close = s
            .find(']')
            .ok_or(PreambleError::Malformed("unclosed '[' in authority"))?;
        let (host, rest) = s.split_at(close + 1);
        if rest.is_empty() {
            return Ok((host, None));
        }
        let port = rest
            .strip_prefix(':')
            .ok_or(PreambleError::Malformed("junk after IPv6 literal"))?;
        return Ok((host, Some(port)));
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err(PreambleError::Malformed("IPv6 literal must be bracketed"))
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Parses a host: `[v6]`, a dotted-quad IPv4 address, or a name.
fn parse_host(s: &str) -> Result<Host, PreambleError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(PreambleError::Malformed("unclosed '[' in authority"))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|a| Host::Ip(IpAddr::V6(a)))
            .map_err(|_| PreambleError::Malformed("invalid IPv6 literal"));
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(a)));
    }
    normalize_name(s)
        .map(Host::Name)
        .map_err(PreambleError::Malformed)
}

/// 1..=5 ASCII digits, value 1..=65535.
fn parse_port(s: &str) -> Result<u16, PreambleError> {
    if s.is_empty() {
        return Err(PreambleError::Malformed("missing port"));
    }
    if s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PreambleError::Malformed("invalid port"));
    }
    match s.parse::<u16>() {
        Ok(0) => Err(PreambleError::Malformed("port 0")),
        Ok(p) => Ok(p),
        Err(_) => Err(PreambleError::Malformed("port out of range")),
    }
}

fn parse_content_length(v: &[u8]) -> Result<usize, PreambleError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(PreambleError::Malformed("invalid Content-Length"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(PreambleError::Malformed("invalid Content-Length"))
}

fn map_httparse(e: httparse::Error) -> PreambleError {
    match e {
        httparse::Error::TooManyHeaders => PreambleError::TooLarge,
        httparse::Error::HeaderName => PreambleError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => PreambleError::Malformed("invalid header value"),
        httparse::Error::NewLine => PreambleError::Malformed("invalid line ending"),
        httparse::Error::Status => PreambleError::Malformed("invalid status"),
        httparse::Error::Token => PreambleError::Malformed("invalid token in request line"),
        httparse::Error::Version => PreambleError::Malformed("unsupported HTTP version"),
    }
}

#[cfg(test)]
mod tests;
