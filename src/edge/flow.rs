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
use super::registry::{share_of, ActiveGuard, ConnectorTunnel};
use super::{EdgeState, Policy};
use crate::metrics::FlowGuard;
use crate::preamble::{self, ConnectRequest, Dest};
use crate::refusal::Refusal;
use crate::segments::{Lookup, Segment};
use crate::splice::{self, Counters, RecvHalf, SendHalf, Side};
use crate::stall::{FlowStalls, Stalls};
use crate::transport::head::{self, HeadError};
use crate::transport::stream_code;
use crate::trust::SpiffeId;
use crate::wire::{self, FlowHeader, FlowReply};

/// Extra time the edge gives a connector beyond its own connect timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(2);

/// What a flow shares with the client tunnel it came on.
pub(super) struct FromTunnel {
    /// Cancelled when the client's certificate is no longer accepted.
    pub cert_refused: CancellationToken,
    /// The tunnel's stalled flows (QUIC; a TLS flow is its own connection).
    pub stalls: Option<Arc<Stalls>>,
}

/// How a flow names its destination, and how it is answered.
pub(super) struct Ask {
    /// Already named by the request (or refused for what it is); `None`:
    /// the preamble comes first on the stream.
    named: Option<Result<Dest, Refusal>>,
    answer: Answer,
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
enum Answer {
    OnStream,
    H2(h2::server::SendResponse<Bytes>),
}

impl Answer {
    /// Tell the client its flow is connected: the status line on the
    /// stream, or the response that opens the HTTP/2 stream's sending half.
    async fn established(self, client: &mut Side) -> std::io::Result<()> {
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
pub(super) fn refuse_h2(mut respond: h2::server::SendResponse<Bytes>, r: Refusal, reason: &str) {
    let body = r.reason_line(reason);
    if let Ok(mut send) = respond.send_response(r.h2_head(&body), false) {
        let _ = send.send_data(body, true);
    }
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

/// The destination (the preamble within `preamble_timeout`, unless the
/// request already `named` it), the DR mode's word for this user (first: a
/// flow to a known segment is counted under it), then the segment.
async fn admit<'p>(
    cx: &Cx<'p>,
    client: &mut Side,
    named: Option<Result<Dest, Refusal>>,
) -> Result<Admitted<'p>, Refused<'p>> {
    let (dest, early) = match named {
        Some(Ok(dest)) => (dest, Bytes::new()),
        Some(Err(refusal)) => return Err(Refused::answer(refusal, None, None)),
        None => read_destination(cx, client).await?,
    };
    Span::current().record("dest", tracing::field::display(&dest));

    let is_test_user = cx.policy.test_users.contains(&cx.peer.name);
    let lookup = cx.policy.matcher.lookup(&dest);
    let refused = cx.state.mode.borrow().refusal(is_test_user);
    if let Some(r) = refused {
        let segment = match lookup {
            Lookup::Hit(s) => Some(s),
            _ => None,
        };
        return Err(Refused::answer(r, None, segment));
    }
    let segment = match lookup {
        Lookup::Hit(s) => s,
        Lookup::WrongPort(_) => {
            let why = Some("port is outside the DR segment's ports");
            return Err(Refused::answer(Refusal::NotDrSegment, why, None));
        }
        Lookup::Miss => return Err(Refused::answer(Refusal::NotDrSegment, None, None)),
    };
    Ok(Admitted {
        segment,
        dest,
        early,
        is_test_user,
    })
}

/// The preamble within `preamble_timeout`: the destination and any flow
/// bytes that came with it.
async fn read_destination<'p>(
    cx: &Cx<'p>,
    client: &mut Side,
) -> Result<(Dest, Bytes), Refused<'p>> {
    let limits = &cx.policy.limits;
    let head = tokio::time::timeout(
        limits.preamble_timeout,
        read_preamble(&mut client.recv, limits.preamble_bytes),
    )
    .await;
    match head {
        Ok(Ok(Some((req, early)))) => Ok((req.dest, early)),
        Ok(Ok(None)) => Err(Refused::Gone),
        Ok(Err(refusal)) => Err(Refused::answer(refusal, None, None)),
        Err(_) => {
            debug!("no complete preamble within {:?}", limits.preamble_timeout);
            let why = Some("no complete CONNECT preamble in time");
            Err(Refused::answer(Refusal::BadRequest, why, None))
        }
    }
}

/// A connector's flow, answered `Connected`, with what holds its place.
struct Upstream {
    side: Side,
    /// App bytes that came with the connector's reply (an app that speaks
    /// first: SSH, SMTP, MySQL).
    early: Bytes,
    tunnel: Arc<ConnectorTunnel>,
    /// The tunnel's active count and the client's share of its flows.
    _held: (ActiveGuard, QuotaGuard),
}

/// Pick a connector tunnel of a group serving the segment, take the client's
/// share of it, open the flow, send the header, wait for the answer; on a
/// failure, once more on another tunnel. The last failure's word otherwise.
async fn connect_upstream(
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

/// Answer a refusal (nothing for a stream that ended first): counted under
/// its segment or as unmatched, its status, word and reason line sent, the
/// client's side closed, the setup time observed.
async fn refuse(cx: &Cx<'_>, (client, answer): (&mut Side, Answer), refused: Refused<'_>) {
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
