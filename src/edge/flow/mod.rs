//! One client flow at the edge: preamble, DR mode and segment checks,
//! connector choice (with one retry on another connector), the answer, then
//! the splice. Every refusal is answered with its status and word.

mod admit;
mod answer;
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::quota::QuotaGuard;
use super::{EdgeState, Policy};
use crate::metrics::FlowGuard;
use crate::preamble::Dest;
use crate::refusal::Refusal;
use crate::segments::Segment;
use crate::splice::{self, Counters, Side};
use crate::stall::{FlowStalls, Stalls};
use crate::transport::stream_code;
use crate::trust::SpiffeId;
use admit::admit;
use answer::{refuse, Answer};
pub(super) use answer::{refuse_h2, Ask};
use upstream::{connect_upstream, Upstream};

/// What a flow shares with the client tunnel it came on.
pub(super) struct FromTunnel {
    /// Cancelled when the client's certificate is no longer accepted.
    pub cert_refused: CancellationToken,
    /// The tunnel's stalled flows (QUIC; a TLS flow is its own connection).
    pub stalls: Option<Arc<Stalls>>,
}

/// Serve one client stream: admit it, connect it upstream, carry it. A flow
/// turned away on the way gets its refusal.
pub(super) async fn serve(
    state: Arc<EdgeState>,
    peer: Arc<SpiffeId>,
    id: u64,
    (mut client, ask): (Side, Ask),
    slot: (OwnedSemaphorePermit, QuotaGuard),
    from: FromTunnel,
) {
    let flow = state.metrics.flow();
    let policy = state.policy.load_full();
    let cx = Cx {
        state: &state,
        policy: &policy,
        peer: &peer,
        client_id: slot.1.id(),
        started: Instant::now(),
    };
    let Ask { named, answer } = ask;
    let admitted = match admit(&cx, &mut client, named).await {
        Ok(a) => a,
        Err(refused) => return refuse(&cx, (&mut client, answer), refused).await,
    };
    let upstream = match connect_upstream(&cx, id, &admitted).await {
        Ok(u) => u,
        Err(r) => {
            let refused = Refused::answer(r, None, Some(admitted.segment));
            return refuse(&cx, (&mut client, answer), refused).await;
        }
    };
    carry(&cx, (client, answer), admitted, upstream, from, flow).await;
}

/// What every step of one flow reads.
struct Cx<'a> {
    state: &'a EdgeState,
    policy: &'a Policy,
    peer: &'a SpiffeId,
    /// The client's quota identity.
    client_id: &'a Arc<str>,
    started: Instant,
}

/// A flow `admit` let through.
struct Admitted<'p> {
    segment: &'p Segment,
    dest: Dest,
    /// Flow bytes that came with the preamble.
    early: Bytes,
    is_test_user: bool,
}

/// A flow turned away before it was carried.
enum Refused<'p> {
    /// The stream ended before a whole preamble: nobody to answer.
    Gone,
    /// Answer `refusal` with `reason` (its default line when `None`), counted
    /// under `segment`, or as unmatched when none matched yet.
    Answer {
        refusal: Refusal,
        reason: Option<&'static str>,
        segment: Option<&'p Segment>,
    },
}

impl<'p> Refused<'p> {
    fn answer(
        refusal: Refusal,
        reason: Option<&'static str>,
        segment: Option<&'p Segment>,
    ) -> Self {
        Self::Answer {
            refusal,
            reason,
            segment,
        }
    }
}

/// Answer the client, then splice until either side ends or the flow must
/// stop (DR mode narrowed, certificate refused, stalled, shutdown); count
/// the bytes, close `flow` with its reason, log it.
async fn carry(
    cx: &Cx<'_>,
    (mut client, answer): (Side, Answer),
    admitted: Admitted<'_>,
    mut upstream: Upstream,
    from: FromTunnel,
    flow: FlowGuard<'_>,
) {
    let app_side = &mut upstream.side;
    let m = &cx.state.metrics;
    let seg_m = &cx.policy.segment_metrics[admitted.segment.index];
    // Counted before the client hears of it: the count never lags what
    // the client saw.
    m.flow_setup.observe(cx.started.elapsed().as_secs_f64());
    seg_m.ok.inc();
    // The answer, then the app's first bytes if they came with the reply.
    let early_down = std::mem::take(&mut upstream.early);
    let early_down_len = early_down.len() as u64;
    seg_m.bytes_down.inc_by(early_down_len);
    let mut told = answer.established(&mut client).await.is_ok();
    if told && !early_down.is_empty() {
        told = client.send.write(early_down).await.is_ok();
    }
    if !told {
        app_side.send.abort(stream_code::ABORTED);
        app_side.recv.abort(stream_code::ABORTED);
        flow.close("reset");
        return;
    }
    let early_up = admitted.early.len() as u64;
    if early_up > 0 {
        seg_m.bytes_up.inc_by(early_up);
        if app_side.send.write(admitted.early).await.is_err() {
            app_side.send.abort(stream_code::ABORTED);
        }
    }
    // A stalled flow counts on both tunnels it crosses, and against the
    // edge's `memory_budget`.
    let stalls = FlowStalls::new(
        Arc::clone(cx.client_id),
        [
            from.stalls,
            Some(Arc::clone(&upstream.tunnel.stalls)),
            Some(Arc::clone(&cx.state.stalls)),
        ],
    );
    let stop = must_stop(cx.state, admitted.is_test_user, from.cert_refused, &stalls);
    let outcome = splice::splice(
        &mut client,
        app_side,
        Counters {
            up: &seg_m.bytes_up,
            down: &seg_m.bytes_down,
        },
        stop,
        Some(cx.policy.limits.flow_idle_timeout).filter(|d| !d.is_zero()),
        Some(&stalls),
    )
    .await;
    let reason = outcome.end.reason();
    let (segment, dest) = (&admitted.segment.name, &admitted.dest);
    if outcome.end == splice::End::Stopped(stream_code::DR_NARROWED) {
        if let Some(held_back) = NARROWED_LOG.allow(Instant::now()) {
            warn!(
                client = %cx.peer, %segment, %dest, result = reason, held_back,
                "flow closed: the DR mode no longer serves it"
            );
        }
    }
    flow.close(reason);
    let (up, down) = (outcome.up + early_up, outcome.down + early_down_len);
    if cx.policy.access_log {
        info!(
            client = %cx.peer, %segment, %dest, connector = %upstream.tunnel.peer,
            up, down,
            duration_ms = cx.started.elapsed().as_millis() as u64, result = reason,
            "flow"
        );
    } else {
        debug!(up, down, result = reason, "flow ended");
    }
}

/// Resolves, with the stream code to close with, when a carried flow must
/// stop: the DR mode no longer serves the user, the edge shuts down, the
/// client's certificate is refused, or the flow stalled.
fn must_stop(
    state: &EdgeState,
    is_test_user: bool,
    cert_refused: CancellationToken,
    stalls: &FlowStalls,
) -> impl std::future::Future<Output = u32> {
    let stalled = stalls.stop.clone();
    let mut mode_rx = state.mode.clone();
    let abort = state.abort.clone();
    async move {
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
    }
}

/// Flows closed by a narrowing DR mode, logged at warn: a few per 10 s (a
/// mode change can close thousands); all are counted in
/// `lifeboat_flows_closed_total{reason="dr-narrowed"}`.
static NARROWED_LOG: crate::metrics::LogGate =
    crate::metrics::LogGate::new(10, Duration::from_secs(10));
