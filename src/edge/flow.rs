//! One client flow at the edge: preamble, DR mode and segment checks,
//! connector choice (with one retry on another connector), the answer, then
//! the splice. Every refusal is answered with its status and word.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Span};

use super::quota::{Kind, QuotaGuard};
use super::registry::{share_of, ActiveGuard, ConnectorTunnel, Link};
use super::EdgeState;
use crate::head::{self, HeadError};
use crate::preamble::{self, ConnectRequest};
use crate::refusal::Refusal;
use crate::segments::Lookup;
use crate::splice::{self, Counters, RecvHalf, Side};
use crate::stall::{FlowStalls, Stalls};
use crate::transport::stream_code;
use crate::trust::SpiffeId;
use crate::wire::{self, FlowHeader, FlowReply};

/// Extra time the edge gives a connector beyond its own connect timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(2);

/// Serve one client stream.
/// What a flow shares with the client tunnel it came on.
pub(super) struct FromTunnel {
    /// Cancelled when the client's certificate is no longer accepted.
    pub cert_refused: CancellationToken,
    /// The tunnel's stalled flows (QUIC; a TLS flow is its own connection).
    pub stalls: Option<Arc<Stalls>>,
}

pub(super) async fn serve(
    state: Arc<EdgeState>,
    peer: Arc<SpiffeId>,
    id: u64,
    mut client: Side,
    slot: (OwnedSemaphorePermit, QuotaGuard),
    from: FromTunnel,
) {
    let FromTunnel {
        cert_refused,
        stalls: client_stalls,
    } = from;
    let m = &state.metrics;
    let flow = m.flow();
    let started = Instant::now();
    let policy = state.policy.load_full();
    let limits = &policy.limits;

    let head = tokio::time::timeout(
        limits.preamble_timeout,
        read_preamble(&mut client.recv, limits.preamble_bytes),
    )
    .await;
    let (req, early) = match head {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            // The stream ended or was reset before a whole preamble: nobody to answer.
            return;
        }
        Ok(Err(refusal)) => {
            refuse(&state, &mut client, refusal, None, started).await;
            return;
        }
        Err(_) => {
            debug!("no complete preamble within {:?}", limits.preamble_timeout);
            refuse(
                &state,
                &mut client,
                Refusal::BadRequest,
                Some("no complete CONNECT preamble in time"),
                started,
            )
            .await;
            return;
        }
    };
    let dest = req.dest;
    Span::current().record("dest", tracing::field::display(&dest));

    let is_test_user = policy.test_users.contains(&peer.name);
    let lookup = policy.matcher.lookup(&dest);
    // The mode's word comes first; a flow to a known segment is counted
    // under that segment.
    let refused = state.mode.borrow().refusal(is_test_user);
    if let Some(r) = refused {
        match lookup {
            Lookup::Hit(s) => {
                policy.segment_metrics[s.index].refusal(r).inc();
                answer_refusal(&state, &mut client, r, None, started).await;
            }
            _ => refuse(&state, &mut client, r, None, started).await,
        }
        return;
    }
    let segment = match lookup {
        Lookup::Hit(s) => s,
        Lookup::WrongPort(_) => {
            refuse(
                &state,
                &mut client,
                Refusal::NotDrSegment,
                Some("port is outside the DR segment's ports"),
                started,
            )
            .await;
            return;
        }
        Lookup::Miss => {
            refuse(&state, &mut client, Refusal::NotDrSegment, None, started).await;
            return;
        }
    };
    let seg_m = &policy.segment_metrics[segment.index];

    let header = FlowHeader {
        flow_id: id,
        segment: segment.name.clone(),
        dest: dest.clone(),
        client: peer.uri(),
    };
    let reply_timeout = limits.connect_timeout + REPLY_MARGIN;
    let mut tried: Vec<u64> = Vec::with_capacity(2);
    let mut last = Refusal::NoConnector;
    let mut upstream = None;
    let capacity = limits.max_flows_per_connector_tunnel;
    let client_id = slot.1.id();
    while tried.len() < 2 {
        let Some(tunnel) = state
            .registry
            .pick(&segment.connector_groups, &tried, capacity)
        else {
            break;
        };
        tried.push(tunnel.id);
        let Some(share) = tunnel
            .shares
            .take(client_id, Kind::Flow, share_of(capacity))
        else {
            debug!(connector = %tunnel.peer, "client holds its share of the connector's flows");
            last = Refusal::Quota;
            continue;
        };
        // Counted from the pick, so concurrent flows spread over connectors
        // before any of them answered.
        let guard = ActiveGuard::new(Arc::clone(&tunnel));
        let another = || {
            state
                .registry
                .pick(&segment.connector_groups, &tried, capacity)
                .is_some()
        };
        match open_upstream(&tunnel, &header, reply_timeout, another).await {
            Ok(sides) => {
                upstream = Some((sides, (guard, share), tunnel));
                break;
            }
            Err(r) => {
                debug!(connector = %tunnel.peer, "connector could not reach {dest}: {}", r.word());
                last = r;
            }
        }
    }
    let Some((mut app_side, _guard, tunnel)) = upstream else {
        seg_m.refusal(last).inc();
        answer_refusal(&state, &mut client, last, None, started).await;
        return;
    };

    if client
        .send
        .write(Bytes::from_static(preamble::ESTABLISHED))
        .await
        .is_err()
    {
        app_side.send.abort(stream_code::ABORTED);
        app_side.recv.abort(stream_code::ABORTED);
        return;
    }
    m.flow_setup.observe(started.elapsed().as_secs_f64());
    seg_m.ok.inc();
    let mut early_up = 0u64;
    if !early.is_empty() {
        early_up = early.len() as u64;
        seg_m.bytes_up.inc_by(early_up);
        if app_side.send.write(early).await.is_err() {
            app_side.send.abort(stream_code::ABORTED);
        }
    }

    // A stalled flow counts on both tunnels it crosses, and against the
    // edge's `memory_budget`.
    let stalls = FlowStalls::new(
        Arc::clone(client_id),
        [
            client_stalls,
            Some(Arc::clone(&tunnel.stalls)),
            Some(Arc::clone(&state.stalls)),
        ],
    );
    let stalled = stalls.stop.clone();
    let mut mode_rx = state.mode.clone();
    let abort = state.abort.clone();
    let stop = async move {
        loop {
            tokio::select! {
                changed = mode_rx.changed() => {
                    if changed.is_err() { std::future::pending::<()>().await; }
                    if !mode_rx.borrow_and_update().allows(is_test_user) {
                        return stream_code::DR_NARROWED;
                    }
                }
                _ = abort.cancelled() => return stream_code::SHUTDOWN,
                _ = cert_refused.cancelled() => return stream_code::CERT_REFUSED,
                _ = stalled.cancelled() => return stream_code::STALLED,
            }
        }
    };
    let outcome = splice::splice(
        &mut client,
        &mut app_side,
        Counters {
            up: &seg_m.bytes_up,
            down: &seg_m.bytes_down,
        },
        stop,
        Some(limits.flow_idle_timeout).filter(|d| !d.is_zero()),
        Some(&stalls),
    )
    .await;
    let reason = outcome.end.reason();
    if outcome.end == splice::End::Stopped(stream_code::DR_NARROWED) {
        if let Some(held_back) = NARROWED_LOG.allow(Instant::now()) {
            warn!(
                client = %peer, segment = %segment.name, %dest, result = reason, held_back,
                "flow closed: the DR mode no longer serves it"
            );
        }
    }
    flow.close(reason);
    if policy.access_log {
        info!(
            client = %peer, segment = %segment.name, %dest, connector = %tunnel.peer,
            up = outcome.up + early_up, down = outcome.down,
            duration_ms = started.elapsed().as_millis() as u64, result = reason,
            "flow"
        );
    } else {
        debug!(
            up = outcome.up + early_up,
            down = outcome.down,
            result = reason,
            "flow ended"
        );
    }
}

/// Flows closed by a narrowing DR mode, logged at warn: a few per 10 s (a
/// mode change can close thousands); all are counted in
/// `lifeboat_flows_closed_total{reason="dr-narrowed"}`.
static NARROWED_LOG: crate::metrics::LogGate =
    crate::metrics::LogGate::new(10, Duration::from_secs(10));

/// Read until a whole preamble is in; returns the request and any bytes after it.
/// `Ok(None)` when the stream ends first.
async fn read_preamble(
    recv: &mut RecvHalf,
    limit: usize,
) -> Result<Option<(ConnectRequest, Bytes)>, Refusal> {
    match head::read_head(recv, limit, |buf| preamble::parse_request(buf, limit)).await {
        Ok((req, rest)) => Ok(Some((req, rest.freeze()))),
        Err(HeadError::Cut { buffered: 0, .. }) => Ok(None),
        Err(HeadError::Cut { .. }) => Err(Refusal::BadRequest),
        Err(HeadError::Parse(e)) => Err(e.into()),
        Err(HeadError::TooLarge) => Err(Refusal::TooLarge),
    }
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
) -> Result<Side, Refusal> {
    let mut out = BytesMut::with_capacity(256);
    wire::encode_flow_header(header, &mut out).map_err(|_| Refusal::BadRequest)?;
    let deadline = tokio::time::Instant::now() + reply_timeout;
    let rx_before = match &tunnel.link {
        Link::Quic(c) => Some(c.stats().udp_rx.datagrams),
        Link::Mux(_) => None,
    };
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
        match (&tunnel.link, rx_before) {
            (Link::Quic(c), Some(before)) => {
                let wait = (c.rtt() * 3 + ACK_GRACE).clamp(ACK_GRACE, Duration::from_secs(2));
                tokio::time::sleep(wait).await;
                if c.stats().udp_rx.datagrams > before || !another() {
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
        Ok(Ok(FlowReply::Connected)) => {
            tunnel.clear_suspect();
            Ok(side)
        }
        Ok(Ok(FlowReply::Failed { kind, .. })) => {
            tunnel.clear_suspect();
            Err(kind.refusal())
        }
        Ok(Err(())) => Err(Refusal::UpstreamFailed),
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

async fn read_reply(recv: &mut RecvHalf) -> Result<FlowReply, ()> {
    // The connector sends nothing after its reply until we send data.
    match head::read_head(recv, wire::MAX_HEADER, wire::parse_flow_reply).await {
        Ok((reply, _)) => Ok(reply),
        Err(_) => Err(()),
    }
}

/// Refuse a flow that matched no segment.
async fn refuse(
    state: &EdgeState,
    client: &mut Side,
    r: Refusal,
    reason: Option<&str>,
    started: Instant,
) {
    state.metrics.refused_unmatched(r).inc();
    answer_refusal(state, client, r, reason, started).await;
}

async fn answer_refusal(
    state: &EdgeState,
    client: &mut Side,
    r: Refusal,
    reason: Option<&str>,
    started: Instant,
) {
    debug!(word = r.word(), "refused");
    let body = r.encode_response(reason.unwrap_or_else(|| r.default_reason()));
    if client.send.write(body).await.is_ok() {
        let _ = client.send.finish().await;
    }
    client.recv.abort(stream_code::ABORTED);
    state
        .metrics
        .flow_setup
        .observe(started.elapsed().as_secs_f64());
}
