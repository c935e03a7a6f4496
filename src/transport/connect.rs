//! A client's flow opened on its tunnel to an edge, whatever carries it:
//! over QUIC a stream that starts with the CONNECT preamble, over HTTP/2 a
//! CONNECT request; then the edge's answer. What the tunnel is called from
//! (`Link::connect`) and which tunnel to try next are the client's.

use std::time::Duration;

use bytes::Bytes;

use super::half::{RecvHalf, SendHalf, Side};
use super::head::{self, HeadError};
use super::mux::MuxLink;
use super::stream_code;
use crate::preamble::{self, Dest, PreambleError};
use crate::refusal::Refusal;

/// Why a flow could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no tunnel to an edge: {0}")]
    NoTunnel(String),
    #[error("edge refused: {status} {}", .refusal.map_or("", |r| r.word()))]
    Refused {
        status: u16,
        refusal: Option<Refusal>,
        reason: String,
    },
    #[error("tunnel failed while opening the flow: {0}")]
    Broken(#[from] Broken),
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
/// answer in time is reset.
pub async fn quic(
    conn: &quinn::Connection,
    dest: &Dest,
    limit: usize,
    answer_timeout: Duration,
) -> Result<(Side, Bytes), OpenError> {
    let (send, recv) = conn.open_bi().await.map_err(Broken::from)?;
    let mut side = Side {
        recv: RecvHalf::Quic(recv),
        send: SendHalf::Quic(send),
    };
    side.send
        .write(preamble::encode_request(dest))
        .await
        .map_err(Broken::from)?;
    let answer =
        tokio::time::timeout(answer_timeout, head::read_answer(&mut side.recv, limit)).await;
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
) -> Result<(Side, Bytes), OpenError> {
    match tokio::time::timeout(answer_timeout, connect_h2(link, dest, limit)).await {
        Ok(r) => r.map(|side| (side, Bytes::new())),
        Err(_) => Err(no_answer_in_time()),
    }
}

/// Open a CONNECT stream to `dest` on an HTTP/2 tunnel and wait for the
/// edge's answer: the flow's halves on 200, else the refusal with its word
/// and reason line (at most `limit` bytes of it). A stream the tunnel no
/// longer takes (the edge's GOAWAY came) or that the edge refused
/// unprocessed is refused `going-away`: it never reached the edge, and is
/// opened on the next tunnel.
async fn connect_h2(link: &MuxLink, dest: &Dest, limit: usize) -> Result<Side, OpenError> {
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
    let answer = answer.await.map_err(|e| {
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
            send: SendHalf::H2(send),
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
