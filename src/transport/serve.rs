//! What a role does with a tunnel the keeper dialled, whatever carries it,
//! so the roles need not match on the transport: the client makes it the
//! [`Link`] its flows are opened on (over TLS after the HTTP/2 handshake)
//! and learns when it ends; the connector takes the flows the edge opens on
//! it until it ends or drains.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::dial::Dialed;
use super::half::{RecvHalf, SendHalf, Side};
use super::keeper::{self, Ended};
use super::link::Link;
use super::{close_code, mux, quic, stream_code};
use crate::config::Limits;

/// What ends a client's tunnel (see [`Dialed::into_client_link`]).
pub enum Ending {
    /// The connection closes, or the edge sends its going-away notice.
    Quic(quinn::Connection),
    /// The HTTP/2 connection ends; its driver says why.
    H2 {
        link: mux::MuxLink,
        driver: JoinHandle<String>,
    },
}

impl Ending {
    /// Resolves when the tunnel has ended, with why.
    pub async fn wait(self) -> Ended {
        match self {
            Self::Quic(conn) => tokio::select! {
                e = conn.closed() => keeper::quic_ended(&e),
                () = keeper::quic_notice(&conn) => Ended::going_away("the edge is going away"),
            },
            Self::H2 { link, driver } => {
                link.closed().await;
                Ended::new(driver.await.unwrap_or_else(|e| e.to_string()))
            }
        }
    }
}

impl Dialed {
    /// The client's tunnel to an edge: a QUIC connection as it is, a TLS
    /// stream once its HTTP/2 handshake is done (the connection's driver
    /// spawned). Running flows keep the tunnel open through their streams.
    pub async fn into_client_link(self, limits: &Limits) -> Result<(Link, Ending), h2::Error> {
        match self {
            Self::Quic(conn) => Ok((Link::Quic(conn.clone()), Ending::Quic(conn))),
            Self::Tls(stream) => {
                let (link, driver) = mux::client_side(*stream, limits).await?;
                let driver = tokio::spawn(driver);
                Ok((Link::H2(link.clone()), Ending::H2 { link, driver }))
            }
        }
    }

    /// The connector's side: take the flows the edge opens, each as the
    /// future `flow` makes of its halves (spawned on `tracker`), until the
    /// tunnel ends or `stop` (then new flows are refused, running ones
    /// finish). A TLS tunnel is served in its own task on `tracker`: when
    /// the keeper moves back to QUIC (`stop`), it drains its running flows
    /// in the background.
    pub async fn serve_flows<F, Fut>(
        self,
        limits: &Limits,
        tracker: &TaskTracker,
        stop: CancellationToken,
        flow: F,
    ) -> Ended
    where
        F: Fn(Side) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self {
            Self::Quic(conn) => quic_flows(&conn, limits, tracker, &stop, flow).await,
            Self::Tls(stream) => {
                let (limits, flows) = (limits.clone(), tracker.clone());
                let serve = async move {
                    mux::connector_side(*stream, &limits, stop, move |side| {
                        flows.spawn(flow(side));
                    })
                    .await
                };
                let task = tracker.spawn(serve);
                task.await
                    .unwrap_or_else(|e| Ended::new(format!("TLS tunnel task failed: {e}")))
            }
        }
    }
}

/// Accept flows on a QUIC tunnel until it closes or `stop` (its address
/// left the record, or shutdown). A stopped tunnel takes no new flow: each
/// stream the edge still opens is refused at once, so the edge tries
/// another connector instead of waiting; running flows finish (bounded by
/// the role's shutdown deadline), then the tunnel closes.
async fn quic_flows<F, Fut>(
    conn: &quinn::Connection,
    limits: &Limits,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    flow: F,
) -> Ended
where
    F: Fn(Side) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let flows = TaskTracker::new();
    let mut credit = quic::StreamCredit::new(limits.max_flows_per_connector_tunnel);
    loop {
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((send, recv)) => {
                    let side = Side { recv: RecvHalf::Quic(recv), send: SendHalf::Quic(send) };
                    tracker.spawn(flows.track_future(flow(side)));
                    credit.grow_on(conn, flows.len());
                }
                Err(e) => return keeper::quic_ended(&e),
            },
            _ = stop.cancelled() => break,
        }
    }
    flows.close();
    info!(flows = flows.len(), "edge tunnel draining");
    loop {
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((mut send, mut recv)) => {
                    let _ = send.reset(stream_code::ABORTED.into());
                    let _ = recv.stop(stream_code::ABORTED.into());
                }
                Err(e) => return keeper::quic_ended(&e),
            },
            _ = flows.wait() => break,
        }
    }
    conn.close(close_code::DRAINING.into(), b"draining");
    Ended::new("draining")
}
