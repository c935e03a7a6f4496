//! A client's flow opened on its tunnel to an edge, whatever carries it:
//! over QUIC a stream that starts with the CONNECT preamble, over HTTP/2 a
//! CONNECT request; then the edge's answer. What the tunnel is called from
//! (`Link::connect`) and which tunnel to try next are the client's.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::half::{RecvHalf, SendHalf, Side};
use super::head::{self, HeadError};
use super::mux::MuxLink;
use super::stream_code;
use crate::preamble::{self, Dest, PreambleError};
use crate::refusal::Refusal;

/// Why a flow could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No tunnel came up: `why`, and the result word of the last attempt
    /// (`unreachable`, `revoked`, `shed`...).
    #[error("no tunnel to an edge: {why}")]
    NoTunnel { why: String, word: &'static str },
    #[error("edge refused: {status} {}", .refusal.map_or("", |r| r.word()))]
    Refused {
        status: u16,
        refusal: Option<Refusal>,
        reason: String,
    },
    #[error("tunnel failed while opening the flow: {0}")]
    Broken(#[from] Broken),
}

impl OpenError {
    /// No tunnel, for a reason with no handshake behind it.
    pub fn no_tunnel(why: impl Into<String>) -> Self {
        Self::NoTunnel {
            why: why.into(),
            word: "unreachable",
        }
    }

    /// The result word of a flow that did not open (DESIGN's vocabulary):
    /// the refusal's, the failed handshake's, the edge's own close code when
    /// it closed the tunnel with one (a revoked certificate), else
    /// `unreachable`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Refused {
                refusal: Some(r), ..
            } => r.word(),
            Self::Refused { refusal: None, .. } => "upstream-failed",
            Self::NoTunnel { word, .. } => word,
            Self::Broken(Broken::Quic(e @ quinn::ConnectionError::ApplicationClosed(_))) => {
                match super::quic_end_word(e) {
                    "other" => "unreachable",
                    w => w,
                }
            }
            Self::Broken(_) => "unreachable",
        }
    }
}

/// What broke while a flow was being opened, before the edge answered.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// The QUIC tunnel would not open a stream.
    #[error("{0}")]
    Quic(#[from] quinn::ConnectionError),
    /// The HTTP/2 tunnel failed the CONNECT stream.
    #[error("{0}")]
    H2(#[from] h2::Error),
    /// The CONNECT preamble could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The edge's answer did not come whole, or could not be read.
    #[error("{}", answer_problem(.0))]
    Answer(HeadError<PreambleError>),
}

/// The user's words for an unreadable answer.
fn answer_problem(e: &HeadError<PreambleError>) -> String {
    match e {
        HeadError::Cut { reset: None, .. } => "edge closed the flow without an answer".into(),
        HeadError::Cut { reset: Some(e), .. } => format!("edge reset the flow: {e}"),
        e @ (HeadError::Parse(_) | HeadError::TooLarge) => format!("bad answer from edge: {e}"),
    }
}

/// At most this many of the app's first bytes ride behind the preamble.
pub const EARLY_MAX: usize = 16 * 1024;

/// The app's first bytes on a forwarded flow, sent behind the CONNECT
/// preamble instead of after the edge's answer: a request-first app (HTTP,
/// a TLS ClientHello) saves the round trip to the edge. The edge holds them
/// until the connector has reached the app and passes them on with the
/// flow; a refusal drops them. One read, at most [`EARLY_MAX`] bytes; an
/// app that speaks second (SSH banners, SMTP) sends nothing early.
///
/// Once bytes went out, a tunnel that breaks before the answer does not get
/// the flow again on the next tunnel: the edge may have passed them to the
/// app, and sending them twice could do a request twice (the replay
/// problem of TLS early data). Only an answer that says the flow was not
/// carried (`going-away`) sends them again, or bytes that may go twice
/// ([`Early::replayable`]).
pub struct Early<'a> {
    app: Option<&'a TcpStream>,
    sent: Bytes,
    replayable: bool,
}

impl<'a> Early<'a> {
    /// No early bytes: the app waits for our answer (SOCKS5, HTTP CONNECT).
    pub fn none() -> Self {
        Self::known(Bytes::new())
    }

    /// Bytes the app sent already, with the head it asked us for the flow
    /// with (a proxy request).
    pub fn known(bytes: Bytes) -> Self {
        Self {
            app: None,
            sent: bytes,
            replayable: false,
        }
    }

    /// Whether the bytes `may` be sent twice: a safe request (GET, HEAD,
    /// OPTIONS) with nothing after it, which the client opens again on the
    /// next tunnel like a flow that sent nothing.
    pub fn replayable(mut self, may: bool) -> Self {
        self.replayable = may;
        self
    }

    /// Whether a flow whose tunnel broke before the answer may be opened
    /// again: nothing went out, or what went out may go twice.
    pub fn may_open_again(&self) -> bool {
        self.sent.is_empty() || self.replayable
    }

    /// Take the first bytes `app` sends before the edge answers.
    pub fn from_app(app: &'a TcpStream) -> Self {
        Self {
            app: Some(app),
            ..Self::none()
        }
    }

    /// The app's bytes sent on the flow before its answer.
    pub fn sent(&self) -> &Bytes {
        &self.sent
    }

    /// What goes out with the preamble: the bytes sent on an earlier
    /// attempt, else what the app has sent already (without waiting).
    fn with_preamble(&mut self) -> Bytes {
        if self.sent.is_empty() {
            if let Some(app) = self.app {
                if let Some(b) = self.take(app) {
                    return b;
                }
            }
        }
        self.sent.clone()
    }

    /// The app's first bytes once they come; pending forever once taken, or
    /// with no app, or when the app ended or failed first (the splice meets
    /// that again).
    async fn next(&mut self) -> Bytes {
        while let Some(app) = self.app {
            if app.readable().await.is_err() {
                self.app = None;
            } else if let Some(b) = self.take(app) {
                return b;
            }
        }
        std::future::pending().await
    }

    /// One read without waiting: `Some` with bytes (and no more reads after
    /// them), `None` when nothing is there yet; the end of the app's stream
    /// or an error stops further reads.
    fn take(&mut self, app: &TcpStream) -> Option<Bytes> {
        let mut buf = [0u8; EARLY_MAX];
        match app.try_read(&mut buf) {
            Ok(0) => self.app = None,
            Ok(n) => {
                self.app = None;
                self.sent = Bytes::copy_from_slice(&buf[..n]);
                return Some(self.sent.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.app = None,
        }
        None
    }
}

/// Wait for `answer`, sending the app's first bytes on `send` when they come.
async fn answer_sending_early<T>(
    answer: impl Future<Output = T>,
    send: &mut SendHalf,
    early: &mut Early<'_>,
) -> T {
    tokio::pin!(answer);
    loop {
        tokio::select! {
            biased;
            r = &mut answer => return r,
            // A failed write: the stream is gone, which the answer says.
            bytes = early.next() => drop(send.write(bytes).await),
        }
    }
}

fn no_answer_in_time() -> OpenError {
    OpenError::Refused {
        status: 504,
        refusal: Some(Refusal::UpstreamTimeout),
        reason: "the edge did not answer in time".into(),
    }
}

/// Open a stream on a QUIC tunnel, send the CONNECT preamble for `dest` and
/// wait up to `answer_timeout` for the edge's answer (at most `limit` bytes
/// of head): the flow's halves and the bytes after the answer on 200, else
/// the refusal with its word and reason line. A stream left without an
/// answer in time is reset. The app's first bytes (`early`) follow the
/// preamble, in its frame when they are there already.
pub async fn quic(
    conn: &quinn::Connection,
    dest: &Dest,
    limit: usize,
    answer_timeout: Duration,
    early: &mut Early<'_>,
) -> Result<(Side, Bytes), OpenError> {
    let (send, recv) = conn.open_bi().await.map_err(Broken::from)?;
    let mut side = Side {
        recv: RecvHalf::Quic(recv),
        send: SendHalf::Quic(send),
    };
    let mut head = [preamble::encode_request(dest), early.with_preamble()];
    side.send
        .write_batch(&mut head)
        .await
        .map_err(Broken::from)?;
    let read = head::read_answer(&mut side.recv, limit);
    let answer = answer_sending_early(
        tokio::time::timeout(answer_timeout, read),
        &mut side.send,
        early,
    )
    .await;
    match answer {
        Ok(Ok((resp, rest))) if resp.status == 200 => Ok((side, rest)),
        Ok(Ok((resp, rest))) => Err(OpenError::Refused {
            status: resp.status,
            refusal: resp.error,
            reason: String::from_utf8_lossy(&rest).trim().to_string(),
        }),
        Ok(Err(e)) => Err(Broken::Answer(e).into()),
        Err(_) => {
            side.send.abort(stream_code::ABORTED);
            Err(no_answer_in_time())
        }
    }
}

/// `connect_h2` within `answer_timeout`; no bytes follow an HTTP/2 answer.
pub async fn h2(
    link: &MuxLink,
    dest: &Dest,
    limit: usize,
    answer_timeout: Duration,
    early: &mut Early<'_>,
) -> Result<(Side, Bytes), OpenError> {
    match tokio::time::timeout(answer_timeout, connect_h2(link, dest, limit, early)).await {
        Ok(r) => r.map(|side| (side, Bytes::new())),
        Err(_) => Err(no_answer_in_time()),
    }
}

/// Open a CONNECT stream to `dest` on an HTTP/2 tunnel and wait for the
/// edge's answer: the flow's halves on 200, else the refusal with its word
/// and reason line (at most `limit` bytes of it). A stream the tunnel no
/// longer takes (the edge's GOAWAY came) or that the edge refused
/// unprocessed is refused `going-away`: it never reached the edge, and is
/// opened on the next tunnel. The app's first bytes (`early`) go out as DATA
/// before the answer.
async fn connect_h2(
    link: &MuxLink,
    dest: &Dest,
    limit: usize,
    early: &mut Early<'_>,
) -> Result<Side, OpenError> {
    let going_away = |e: h2::Error| OpenError::Refused {
        status: 503,
        refusal: Some(Refusal::GoingAway),
        reason: format!("the edge's tunnel takes no new flows: {e}"),
    };
    // A destination the HTTP/2 layer cannot carry never leaves here.
    let authority = http::Uri::try_from(dest.to_string()).map_err(|e| OpenError::Refused {
        status: Refusal::BadRequest.status(),
        refusal: Some(Refusal::BadRequest),
        reason: format!("not a CONNECT authority: {e}"),
    })?;
    let (answer, send) = link.connect(authority).await.map_err(going_away)?;
    let mut send = SendHalf::H2(send);
    let first = early.with_preamble();
    if !first.is_empty() {
        // A failed write: the stream is gone, which the answer says.
        let _ = send.write(first).await;
    }
    let answer = answer_sending_early(answer, &mut send, early).await;
    let answer = answer.map_err(|e| {
        if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            going_away(e)
        } else {
            Broken::H2(e).into()
        }
    });
    let (head, mut body) = answer?.into_parts();
    if head.status == http::StatusCode::OK {
        return Ok(Side {
            recv: RecvHalf::H2(body),
            send,
        });
    }
    let refusal = head
        .headers
        .get("lifeboat-error")
        .and_then(|w| w.to_str().ok())
        .and_then(|w| Refusal::from_word(w.trim()));
    // The reason line, as far as it comes within `limit`.
    let mut reason = Vec::new();
    while reason.len() < limit {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                reason.extend_from_slice(&chunk);
            }
            _ => break,
        }
    }
    reason.truncate(limit);
    Err(OpenError::Refused {
        status: head.status.as_u16(),
        refusal,
        reason: String::from_utf8_lossy(&reason).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{close_code, TunnelError};

    fn closed(code: u32) -> OpenError {
        let close = quinn::ApplicationClose {
            error_code: code.into(),
            reason: Bytes::new(),
        };
        Broken::Quic(quinn::ConnectionError::ApplicationClosed(close)).into()
    }

    #[test]
    fn a_flow_that_did_not_open_has_the_word_of_why() {
        // The edge closed the tunnel with its own code while the flow opened.
        assert_eq!(closed(close_code::CERT_REFUSED).word(), "cert-refused");
        assert_eq!(closed(close_code::WRONG_ROLE).word(), "wrong-role");
        assert_eq!(closed(close_code::GOING_AWAY).word(), "going-away");
        // Any other end of the tunnel: it is gone.
        assert_eq!(closed(0x77).word(), "unreachable");
        let lost = Broken::Quic(quinn::ConnectionError::TimedOut);
        assert_eq!(OpenError::from(lost).word(), "unreachable");
        // No tunnel: the last handshake's word.
        let revoked = OpenError::NoTunnel {
            why: "127.0.0.1:4433: the edge refused our certificate".into(),
            word: "revoked",
        };
        assert_eq!(revoked.word(), "revoked");
        assert_eq!(
            OpenError::no_tunnel("client stopping").word(),
            "unreachable"
        );
    }

    #[test]
    fn a_dial_out_of_descriptors_is_fd_limit_not_unreachable() {
        for errno in [23, 24] {
            let e = TunnelError::Io(std::io::Error::from_raw_os_error(errno));
            assert_eq!(e.reason(), "fd-limit", "errno {errno}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(TunnelError::Io(refused).reason(), "unreachable");
    }
}
