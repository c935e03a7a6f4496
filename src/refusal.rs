//! The closed set of flow refusals (DESIGN.md "Wire" table).
//!
//! Each [`Refusal`] carries its HTTP status, its stable `Lifeboat-Error` word
//! (also used as the metrics label value) and a default one-line reason, and
//! encodes the complete HTTP/1.1 response the edge sends before closing the
//! flow. Pure: no I/O, no allocation beyond the encoded response.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a flow was refused. Closed on purpose: a `match` proves every word,
/// status and metric label is covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 400 `bad-request`: malformed preamble.
    BadRequest,
    /// 405 `method`: a method other than CONNECT.
    Method,
    /// 431 `too-large`: preamble over the limit.
    TooLarge,
    /// 403 `not-dr-segment`: destination in no DR segment (or wrong port).
    NotDrSegment,
    /// 403 `not-allowed`: DR test mode and the user is not a test user.
    NotAllowed,
    /// 503 `dr-inactive`: DR mode is off.
    DrInactive,
    /// 503 `no-connector`: no connector of a serving group is connected.
    NoConnector,
    /// 502 `upstream-failed`: every tried connector failed to reach the app.
    UpstreamFailed,
    /// 504 `upstream-timeout`: the app did not answer in time.
    UpstreamTimeout,
    /// 503 `going-away`: the edge is draining (a restart or shutdown); the
    /// flow was not forwarded and may be opened through another edge.
    GoingAway,
    /// 429 `quota`: this identity has `max_flows_per_identity` flows open.
    Quota,
    /// 403 `wrong-role`: a certificate of another role (a connector's) on a
    /// client connection.
    WrongRole,
}

impl Refusal {
    /// Every refusal, in table order (for metrics pre-registration and tests).
    pub const ALL: [Self; 12] = [
        Self::BadRequest,
        Self::Method,
        Self::TooLarge,
        Self::NotDrSegment,
        Self::NotAllowed,
        Self::DrInactive,
        Self::NoConnector,
        Self::UpstreamFailed,
        Self::UpstreamTimeout,
        Self::GoingAway,
        Self::Quota,
        Self::WrongRole,
    ];

    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Method => 405,
            Self::TooLarge => 431,
            Self::NotDrSegment | Self::NotAllowed | Self::WrongRole => 403,
            Self::DrInactive | Self::NoConnector | Self::GoingAway => 503,
            Self::UpstreamFailed => 502,
            Self::UpstreamTimeout => 504,
            Self::Quota => 429,
        }
    }

    /// The stable `Lifeboat-Error` word; also the metrics label value.
    pub fn word(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Method => "method",
            Self::TooLarge => "too-large",
            Self::NotDrSegment => "not-dr-segment",
            Self::NotAllowed => "not-allowed",
            Self::DrInactive => "dr-inactive",
            Self::NoConnector => "no-connector",
            Self::UpstreamFailed => "upstream-failed",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::GoingAway => "going-away",
            Self::Quota => "quota",
            Self::WrongRole => "wrong-role",
        }
    }

    /// Inverse of [`Refusal::word`]; exact, case-sensitive match.
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.word() == word)
    }

    /// The standard HTTP reason phrase for [`Refusal::status`].
    pub fn reason_phrase(self) -> &'static str {
        match self.status() {
            400 => "Bad Request",
            403 => "Forbidden",
            405 => "Method Not Allowed",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Error",
        }
    }

    /// One human-readable line explaining the refusal.
    pub fn default_reason(self) -> &'static str {
        match self {
            Self::BadRequest => "malformed CONNECT preamble",
            Self::Method => "only the CONNECT method is supported",
            Self::TooLarge => "CONNECT preamble is over the size limit",
            Self::NotDrSegment => "destination is in no DR application segment",
            Self::NotAllowed => "DR test mode is on and this user is not a test user",
            Self::DrInactive => "DR mode is off",
            Self::NoConnector => "no connector of a group serving the segment is connected",
            Self::UpstreamFailed => "every tried connector failed to reach the application",
            Self::UpstreamTimeout => "the application did not answer in time",
            Self::GoingAway => "the edge is going away; open the flow through another edge",
            Self::Quota => "this identity has as many flows open as the edge allows one identity",
            Self::WrongRole => "this certificate is not a client certificate",
        }
    }

    /// The full HTTP/1.1 response: status line, `Lifeboat-Error: <word>`,
    /// (`Allow: CONNECT` for 405), `Content-Type: text/plain`,
    /// `Content-Length`, `Connection: close`, a blank line, then `reason` and
    /// `"\n"` as the body.
    ///
    /// `reason` is made a single line: CR, LF and other control characters
    /// become spaces and surrounding whitespace is trimmed; an empty result is
    /// replaced by [`Refusal::default_reason`].
    pub fn encode_response(self, reason: &str) -> Bytes {
        let body = self.reason_line(reason);
        let mut out = BytesMut::with_capacity(160 + body.len());
        out.put_slice(b"HTTP/1.1 ");
        put_decimal(&mut out, u64::from(self.status()));
        out.put_u8(b' ');
        out.put_slice(self.reason_phrase().as_bytes());
        out.put_slice(b"\r\nLifeboat-Error: ");
        out.put_slice(self.word().as_bytes());
        if self == Self::Method {
            out.put_slice(b"\r\nAllow: CONNECT");
        }
        out.put_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
        put_decimal(&mut out, body.len() as u64);
        out.put_slice(b"\r\nConnection: close\r\n\r\n");
        out.put_slice(&body);
        out.freeze()
    }

    /// The response head of a refused HTTP/2 CONNECT stream: `:status`,
    /// `lifeboat-error: <word>` (`allow: CONNECT` for 405), `content-type:
    /// text/plain` and the length of `body`, the [`Refusal::reason_line`]
    /// that follows as the stream's data.
    pub fn h2_head(self, body: &Bytes) -> http::Response<()> {
        let mut b = http::Response::builder()
            .status(self.status())
            .header("lifeboat-error", self.word())
            .header(http::header::CONTENT_TYPE, "text/plain")
            .header(http::header::CONTENT_LENGTH, body.len());
        if self == Self::Method {
            b = b.header(http::header::ALLOW, "CONNECT");
        }
        b.body(())
            .expect("statuses and words are valid header values")
    }

    /// The one-line body of a refusal: `reason` made a single line (CR, LF
    /// and other control characters become spaces, surrounding whitespace
    /// trimmed; empty is [`Refusal::default_reason`]), then `"\n"`.
    pub fn reason_line(self, reason: &str) -> Bytes {
        let reason = reason.trim();
        let reason = if reason.is_empty() {
            self.default_reason()
        } else {
            reason
        };
        let mut out = BytesMut::with_capacity(reason.len() + 1);
        for c in reason.chars() {
            let c = if c.is_control() { ' ' } else { c };
            let mut tmp = [0u8; 4];
            out.put_slice(c.encode_utf8(&mut tmp).as_bytes());
        }
        out.put_u8(b'\n');
        out.freeze()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// Writes `n` in decimal without going through `format!`.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preamble::parse_response;

    #[test]
    fn words_are_unique_and_round_trip() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_word(r.word()), Some(r));
            assert_eq!(r.to_string(), r.word());
            assert_eq!(
                Refusal::ALL.iter().filter(|o| o.word() == r.word()).count(),
                1
            );
        }
        assert_eq!(Refusal::from_word("Bad-Request"), None);
        assert_eq!(Refusal::from_word(""), None);
    }

    #[test]
    fn statuses_match_design_table() {
        let got: Vec<u16> = Refusal::ALL.iter().map(|r| r.status()).collect();
        assert_eq!(
            got,
            [400, 405, 431, 403, 403, 503, 503, 502, 504, 503, 429, 403]
        );
    }

    #[test]
    fn every_refusal_parses_back() {
        for r in Refusal::ALL {
            let wire = r.encode_response("");
            let (resp, head) = parse_response(&wire, 8192).unwrap().unwrap();
            assert_eq!(resp.status, r.status());
            assert_eq!(resp.error, Some(r));
            assert_eq!(head + resp.content_length, wire.len());
            let body = &wire[head..];
            assert_eq!(body, format!("{}\n", r.default_reason()).as_bytes());
        }
    }

    #[test]
    fn exact_bytes() {
        let wire = Refusal::NotDrSegment.encode_response("no segment for x:1");
        assert_eq!(
            &wire[..],
            &b"HTTP/1.1 403 Forbidden\r\nLifeboat-Error: not-dr-segment\r\n\
               Content-Type: text/plain\r\nContent-Length: 19\r\n\
               Connection: close\r\n\r\nno segment for x:1\n"[..]
        );
        let wire = Refusal::Method.encode_response("x");
        assert!(wire.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(wire.windows(15).any(|w| w == b"Allow: CONNECT\r"));
    }

    #[test]
    fn reason_is_one_line() {
        let wire = Refusal::UpstreamFailed.encode_response("a\r\nb\nc\u{7f}d\u{e9}");
        let (resp, head) = parse_response(&wire, 8192).unwrap().unwrap();
        let body = &wire[head..];
        assert_eq!(body.len(), resp.content_length);
        assert_eq!(body, "a  b c d\u{e9}\n".as_bytes());
        // Header injection through the reason is impossible.
        let wire = Refusal::NoConnector.encode_response("\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        let (resp, head) = parse_response(&wire, 8192).unwrap().unwrap();
        assert_eq!(resp.status, 503);
        assert_eq!(wire.len(), head + resp.content_length);
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 7);
    }
}
