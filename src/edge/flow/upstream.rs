//! Step two of a flow: a connector tunnel of a group serving the segment,
//! the client's share of it, the flow header and the connector's answer,
//! once more on another tunnel after a failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use super::{Admitted, Cx};
use crate::edge::quota::{Kind, QuotaGuard};
use crate::edge::registry::{share_of, ActiveGuard, ConnectorTunnel};
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, Side};
use crate::transport::head::{self, HeadError};
use crate::transport::stream_code;
use crate::wire::{self, FlowHeader, FlowReply};

/// Extra time the edge gives a connector beyond its own connect timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(2);

/// A connector's flow, answered `Connected`, with what holds its place.
pub(super) struct Upstream {
    pub(super) side: Side,
    /// App bytes that came with the connector's reply (an app that speaks
    /// first: SSH, SMTP, MySQL).
    pub(super) early: Bytes,
    pub(super) tunnel: Arc<ConnectorTunnel>,
    /// The tunnel's active count and the client's share of its flows.
    _held: (ActiveGuard, QuotaGuard),
}

/// Pick a connector tunnel of a group serving the segment, take the client's
/// share of it, open the flow, send the header, wait for the answer; on a
/// failure, once more on another tunnel. The last failure's word otherwise.
pub(super) async fn connect_upstream(
    cx: &Cx<'_>,
    id: u64,
    admitted: &Admitted<'_>,
) -> Result<Upstream, Refusal> {
    let limits = &cx.policy.limits;
    let groups = &admitted.segment.connector_groups;
    let header = FlowHeader {
        flow_id: id,
        segment: admitted.segment.name.clone(),
        dest: admitted.dest.clone(),
        client: cx.client_id.to_string(),
    };
    let reply_timeout = limits.connect_timeout + REPLY_MARGIN;
    let capacity = limits.max_flows_per_connector_tunnel;
    let registry = &cx.state.registry;
    let mut tried: Vec<u64> = Vec::with_capacity(2);
    let mut last = Refusal::NoConnector;
    while tried.len() < 2 {
        let Some(tunnel) = registry.pick(groups, &tried, capacity) else {
            break;
        };
        tried.push(tunnel.id);
        let Some(share) = tunnel
            .shares
            .take(cx.client_id, Kind::Flow, share_of(capacity))
        else {
            debug!(connector = %tunnel.peer, "client holds its share of the connector's flows");
            last = Refusal::Quota;
            continue;
        };
        // Counted from the pick, so concurrent flows spread over connectors
        // before any of them answered.
        let guard = ActiveGuard::new(Arc::clone(&tunnel));
        let another = || registry.pick(groups, &tried, capacity).is_some();
        match open_upstream(&tunnel, &header, reply_timeout, another).await {
            Ok((side, early)) => {
                return Ok(Upstream {
                    side,
                    early,
                    tunnel,
                    _held: (guard, share),
                })
            }
            Err(r) => {
                let dest = &admitted.dest;
                debug!(connector = %tunnel.peer, "connector could not reach {dest}: {}", r.word());
                last = r;
            }
        }
    }
    Err(last)
}

/// Open a flow on a connector tunnel and wait for its answer, all within
/// `reply_timeout`. Over QUIC, a connector that acknowledges nothing of the
/// flow's header within a few round trips is taken for frozen: the flow
/// moves to another connector and this one ranks last for a while.
async fn open_upstream(
    tunnel: &ConnectorTunnel,
    header: &FlowHeader,
    reply_timeout: Duration,
    another: impl Fn() -> bool,
) -> Result<(Side, Bytes), Refusal> {
    let mut out = BytesMut::with_capacity(256);
    wire::encode_flow_header(header, &mut out).map_err(|_| Refusal::BadRequest)?;
    let deadline = tokio::time::Instant::now() + reply_timeout;
    let rx_before = tunnel.link.datagrams_in();
    let opened = tokio::time::timeout_at(deadline, async {
        let mut side = tunnel
            .link
            .open()
            .await
            .map_err(|_| Refusal::UpstreamFailed)?;
        if side.send.write(out.freeze()).await.is_err() {
            return Err(Refusal::UpstreamFailed);
        }
        Ok(side)
    })
    .await;
    let mut side = match opened {
        Ok(r) => r?,
        Err(_) => {
            tunnel.suspect();
            return Err(Refusal::UpstreamTimeout);
        }
    };
    // Only worth asking when another connector could take the flow; alone,
    // a slow connector is still the best there is.
    let alive = async {
        match (tunnel.link.rtt(), rx_before) {
            (Some(rtt), Some(before)) => {
                let wait = (rtt * 3 + ACK_GRACE).clamp(ACK_GRACE, Duration::from_secs(2));
                tokio::time::sleep(wait).await;
                let heard = tunnel.link.datagrams_in().is_some_and(|n| n > before);
                if heard || !another() {
                    std::future::pending::<()>().await;
                }
            }
            _ => std::future::pending().await,
        }
    };
    let reply = tokio::select! {
        r = tokio::time::timeout_at(deadline, read_reply(&mut side.recv)) => r,
        () = alive => {
            debug!(connector = %tunnel.peer, "connector acknowledged nothing of the flow; trying another");
            tunnel.suspect();
            side.send.abort(stream_code::ABORTED);
            side.recv.abort(stream_code::ABORTED);
            return Err(Refusal::UpstreamTimeout);
        }
    };
    match reply {
        Ok(Ok((FlowReply::Connected, early))) => {
            tunnel.clear_suspect();
            Ok((side, early))
        }
        Ok(Ok((FlowReply::Failed { kind, .. }, _))) => {
            tunnel.clear_suspect();
            Err(kind.refusal())
        }
        Ok(Err(e)) => {
            debug!(connector = %tunnel.peer, "no reply from the connector: {e}");
            Err(Refusal::UpstreamFailed)
        }
        Err(_) => {
            side.send.abort(stream_code::ABORTED);
            side.recv.abort(stream_code::ABORTED);
            Err(Refusal::UpstreamTimeout)
        }
    }
}

/// A live QUIC peer acknowledges an ack-eliciting packet within its
/// max_ack_delay (25 ms by default) plus a round trip; this is the margin
/// above three round trips before a silent connector is taken for frozen
/// (generous: a busy edge may read its socket late).
const ACK_GRACE: Duration = Duration::from_millis(500);

/// The connector's reply, and the app's first bytes when they came in the
/// same read (the connector forwards the app's bytes right after it).
async fn read_reply(recv: &mut RecvHalf) -> Result<(FlowReply, Bytes), HeadError<wire::WireError>> {
    let (reply, rest) = head::read_head(recv, wire::MAX_HEADER, wire::parse_flow_reply).await?;
    Ok((reply, rest.freeze()))
}
