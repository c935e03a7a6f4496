//! The local HTTP CONNECT listener: the same preamble as the edge speaks;
//! the edge's answer (status, `Lifeboat-Error` word and reason) is passed on.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::tunnel::OpenError;
use super::ClientState;
use crate::preamble;
use crate::refusal::Refusal;

pub(super) async fn flow(state: &ClientState, mut sock: TcpStream) {
    let limit = state.limits.preamble_bytes;
    let head = tokio::time::timeout(state.limits.preamble_timeout, async {
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            match preamble::parse_request(&buf, limit) {
                Ok(Some((req, used))) => return Ok(Some(Ok((req, buf.split_off(used))))),
                Ok(None) => continue,
                Err(e) => return Ok(Some(Err(Refusal::from(e)))),
            }
        }
    })
    .await;
    let (req, early) = match head {
        Ok(Ok(Some(Ok(x)))) => x,
        Ok(Ok(Some(Err(r)))) => {
            let _ = sock.write_all(&r.encode_response(r.default_reason())).await;
            return;
        }
        Err(_) => {
            let r = Refusal::BadRequest;
            let _ = sock
                .write_all(&r.encode_response("no complete CONNECT preamble in time"))
                .await;
            return;
        }
        _ => return,
    };
    match super::open(state, &req.dest).await {
        Ok((mut edge, from_edge)) => {
            if sock.write_all(preamble::ESTABLISHED).await.is_err() {
                return;
            }
            if !early.is_empty() && edge.send.write(early.freeze()).await.is_err() {
                return;
            }
            super::carry(state, sock, edge, from_edge).await;
        }
        Err(e) => {
            debug!(dest = %req.dest, "flow refused: {e}");
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
                OpenError::NoTunnel(why) | OpenError::Broken(why) => {
                    (Refusal::NoConnector, format!("no tunnel to an edge: {why}"))
                }
            };
            let _ = sock.write_all(&r.encode_response(&reason)).await;
        }
    }
}
