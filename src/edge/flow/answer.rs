//! How a flow is asked for and answered: on its own stream (a CONNECT
//! preamble, then the status line) or as an HTTP/2 CONNECT stream (its
//! request, then its response); and the one place a refusal is answered
//! and counted.

use bytes::Bytes;
use tracing::debug;

use super::{Cx, Refused};
use crate::preamble::{self, Dest};
use crate::refusal::Refusal;
use crate::splice::{SendHalf, Side};
use crate::transport::stream_code;

/// How a flow names its destination, and how it is answered.
pub(crate) struct Ask {
    /// Already named by the request (or refused for what it is); `None`:
    /// the preamble comes first on the stream.
    pub(super) named: Option<Result<Dest, Refusal>>,
    pub(super) answer: Answer,
}

impl Ask {
    /// A CONNECT preamble comes first on the stream (a QUIC stream, a TLS
    /// connection); the answer is written on the stream.
    pub fn preamble() -> Self {
        Self {
            named: None,
            answer: Answer::OnStream,
        }
    }

    /// An HTTP/2 CONNECT stream: its request named `dest`; the answer is
    /// its response.
    pub fn h2(dest: Result<Dest, Refusal>, respond: h2::server::SendResponse<Bytes>) -> Self {
        Self {
            named: Some(dest),
            answer: Answer::H2(respond),
        }
    }
}

/// Where the answer to a flow goes.
pub(super) enum Answer {
    OnStream,
    H2(h2::server::SendResponse<Bytes>),
}

impl Answer {
    /// Tell the client its flow is connected: the status line on the
    /// stream, or the response that opens the HTTP/2 stream's sending half.
    pub(super) async fn established(self, client: &mut Side) -> std::io::Result<()> {
        match self {
            Self::OnStream => {
                let established = Bytes::from_static(preamble::ESTABLISHED);
                client.send.write(established).await
            }
            Self::H2(mut respond) => {
                let ok = http::Response::builder()
                    .status(200)
                    .body(())
                    .expect("static response parts are valid");
                let send = respond
                    .send_response(ok, false)
                    .map_err(std::io::Error::other)?;
                client.send = SendHalf::H2(send);
                Ok(())
            }
        }
    }

    /// Tell the client why not (status, word, reason line) and close its side.
    async fn refused(self, client: &mut Side, r: Refusal, reason: &str) {
        match self {
            Self::OnStream => {
                if client.send.write(r.encode_response(reason)).await.is_ok() {
                    let _ = client.send.finish().await;
                }
            }
            Self::H2(respond) => refuse_h2(respond, r, reason),
        }
        client.recv.abort(stream_code::ABORTED);
    }
}

/// Answer an HTTP/2 CONNECT stream with refusal `r`: its head, then the
/// reason line as the stream's data.
pub(crate) fn refuse_h2(mut respond: h2::server::SendResponse<Bytes>, r: Refusal, reason: &str) {
    let body = r.reason_line(reason);
    if let Ok(mut send) = respond.send_response(r.h2_head(&body), false) {
        let _ = send.send_data(body, true);
    }
}

/// Answer a refusal (nothing for a stream that ended first): counted under
/// its segment or as unmatched, its status, word and reason line sent, the
/// client's side closed, the setup time observed.
pub(super) async fn refuse(
    cx: &Cx<'_>,
    (client, answer): (&mut Side, Answer),
    refused: Refused<'_>,
) {
    let Refused::Answer {
        refusal: r,
        reason,
        segment,
    } = refused
    else {
        return;
    };
    match segment {
        Some(s) => cx.policy.segment_metrics[s.index].refusal(r).inc(),
        None => cx.state.metrics.refused_unmatched(r).inc(),
    }
    debug!(word = r.word(), "refused");
    let reason = reason.unwrap_or_else(|| r.default_reason());
    answer.refused(client, r, reason).await;
    let setup = cx.started.elapsed().as_secs_f64();
    cx.state.metrics.flow_setup.observe(setup);
}
