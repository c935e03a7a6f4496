//! A client tunnel at the edge, whatever carries it: its flows within the
//! identity's flow quota and the edge's `max_flows`, its certificate watched
//! for the tunnel's whole life, and going away when the edge drains (the
//! client is told, streams that crossed the notice are refused
//! `going-away`, the running flows finish). One loop for every transport;
//! a [`Carrier`] is what differs: QUIC streams here, HTTP/2 CONNECT streams
//! in `h2_tunnel`.

use std::future::Future;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use super::certs::{cert_watch, CertEnd};
use super::flow::{self, Ask};
use super::quota::Kind;
use super::EdgeState;
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::stall::Stalls;
use crate::transport::{close_code, quic, stream_code, TransportKind};
use crate::trust::SpiffeId;

/// What a client tunnel's transport does for the shared loop.
pub(super) trait Carrier: Send {
    /// One flow stream as accepted, before it holds any quota.
    type Stream: Send + 'static;
    /// The transport label of the tunnel's metrics and logs.
    const KIND: TransportKind;

    /// The next flow stream; `Err(why)` once the tunnel has ended.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Stream, String>> + Send;
    /// The flow's side and how it names its destination.
    fn flow(stream: Self::Stream) -> (Side, Ask);
    /// Answer `r` (`quota`, `going-away`) without forwarding anything.
    fn refuse(stream: Self::Stream, r: Refusal) -> impl Future<Output = ()> + Send + 'static;
    /// Over the edge's `max_flows`: reset the stream unprocessed.
    fn reject(stream: Self::Stream);
    /// A flow started; `running` flows are carried now.
    fn started(&mut self, _running: usize) {}
    /// Tell the client to open new flows elsewhere; the running ones go on.
    fn go_away(&mut self);
    /// End the tunnel with `code` and `reason`, and see the close out
    /// (`GOING_AWAY`: once its flows are done, what they wrote delivered).
    fn close(&mut self, code: u32, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Serve one client tunnel of `peer` until it ends.
pub(super) async fn run<C: Carrier>(
    state: Arc<EdgeState>,
    mut carrier: C,
    peer: SpiffeId,
    certs: Vec<CertificateDer<'static>>,
    (tracker, drain): (TaskTracker, CancellationToken),
) {
    let kind = C::KIND.as_str();
    let tunnels = state
        .metrics
        .tunnels_active
        .with_label_values(&["client", kind]);
    tunnels.inc();
    info!(peer = %peer, transport = kind, "client tunnel up");
    let peer = Arc::new(peer);
    // The certificate is watched for the tunnel's whole life: a trust reload
    // that refuses it, its expiry, `cert_grace` ending with DR `on`.
    let cert_end = cert_watch(Arc::clone(&state), certs);
    tokio::pin!(cert_end);
    let tunnel = Tunnel {
        peer_uri: peer.uri().into(),
        peer: Arc::clone(&peer),
        cert_refused: CancellationToken::new(),
        stalls: {
            let l = &state.policy.load().limits;
            Arc::new(Stalls::new(l.effective_tunnel_window(), l.flow_window))
        },
        state,
    };
    // This tunnel's own flows: a going-away tunnel closes when they are done.
    let mine = TaskTracker::new();
    let mut going_away = false;
    let why = loop {
        tokio::select! {
            end = &mut cert_end => {
                // Running flows end with a reset counted as cert-refused.
                tunnel.cert_refused.cancel();
                break match end {
                    CertEnd::Refused(reason) => {
                        carrier.close(close_code::CERT_REFUSED, reason).await;
                        format!("certificate no longer accepted: {reason}")
                    }
                    CertEnd::GraceOver => {
                        let why = "certificate expired; DR cert_grace applies only while DR is on";
                        carrier.close(close_code::GRACE_OVER, why).await;
                        "certificate expired and DR is no longer on".to_string()
                    }
                };
            }
            next = carrier.accept() => match next {
                Ok(stream) => {
                    if let Some(flow) = tunnel.admit::<C>(stream, going_away) {
                        tracker.spawn(mine.track_future(flow));
                        carrier.started(mine.len());
                    }
                }
                Err(why) => break why,
            },
            // Going away: a tunnel without flows closes now; one with flows
            // is told (new flows go elsewhere) and closes when they are done
            // (or the drain deadline aborts them). Streams that crossed the
            // notice are refused `going-away`, so the client retries them
            // through another edge.
            _ = drain.cancelled(), if !going_away => {
                going_away = true;
                mine.close();
                if mine.is_empty() {
                    carrier.close(close_code::GOING_AWAY, "edge going away").await;
                    break "edge going away".to_string();
                }
                carrier.go_away();
            }
            () = mine.wait(), if going_away => {
                carrier.close(close_code::GOING_AWAY, "edge going away").await;
                break "edge going away; its flows finished".to_string();
            }
        }
    };
    tunnels.dec();
    info!(peer = %peer, transport = kind, "client tunnel down: {why}");
}

/// What every flow of one tunnel shares.
struct Tunnel {
    state: Arc<EdgeState>,
    peer: Arc<SpiffeId>,
    /// The client's quota identity.
    peer_uri: Arc<str>,
    /// Cancelled when the client's certificate is no longer accepted.
    cert_refused: CancellationToken,
    /// The tunnel's stalled flows.
    stalls: Arc<Stalls>,
}

impl Tunnel {
    /// Take one flow stream: the flow to run, or `None` when it was refused
    /// at once (the edge is going away, the identity's flow quota or the
    /// edge's `max_flows` is used up).
    fn admit<C: Carrier>(
        &self,
        stream: C::Stream,
        going_away: bool,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let state = &self.state;
        let refused = |r: Refusal, stream: C::Stream| {
            state.metrics.refused_unmatched(r).inc();
            tokio::spawn(C::refuse(stream, r));
        };
        if going_away {
            // Crossed the notice: not forwarded; the client opens it elsewhere.
            refused(Refusal::GoingAway, stream);
            return None;
        }
        let max = state.policy.load().limits.max_flows_per_identity;
        let Some(quota) = state.quotas.take(&self.peer_uri, Kind::Flow, max) else {
            refused(Refusal::Quota, stream);
            return None;
        };
        let Ok(permit) = Arc::clone(&state.flows).try_acquire_owned() else {
            C::reject(stream);
            return None;
        };
        let id = state.next_id();
        let span = tracing::debug_span!("flow", id, dest = tracing::field::Empty);
        let from = flow::FromTunnel {
            cert_refused: self.cert_refused.clone(),
            stalls: Some(Arc::clone(&self.stalls)),
        };
        let flow = flow::serve(
            Arc::clone(state),
            Arc::clone(&self.peer),
            id,
            C::flow(stream),
            (permit, quota),
            from,
        );
        Some(flow.instrument(span))
    }
}

/// A client tunnel over QUIC: a bidirectional stream per flow, the CONNECT
/// preamble first on it; stream credit grows with the flows.
pub(super) struct QuicCarrier {
    conn: quinn::Connection,
    credit: quic::StreamCredit,
}

impl QuicCarrier {
    pub fn new(conn: quinn::Connection, max_flows: u32) -> Self {
        Self {
            conn,
            credit: quic::StreamCredit::new(max_flows),
        }
    }
}

impl Carrier for QuicCarrier {
    type Stream = (quinn::SendStream, quinn::RecvStream);
    const KIND: TransportKind = TransportKind::Quic;

    async fn accept(&mut self) -> Result<Self::Stream, String> {
        self.conn.accept_bi().await.map_err(|e| e.to_string())
    }

    fn flow((send, recv): Self::Stream) -> (Side, Ask) {
        let side = Side {
            recv: RecvHalf::Quic(recv),
            send: SendHalf::Quic(send),
        };
        (side, Ask::preamble())
    }

    /// Bounded: a peer that reads nothing is cut after a second.
    async fn refuse((mut send, mut recv): Self::Stream, r: Refusal) {
        let _ = recv.stop(stream_code::ABORTED.into());
        let body = r.encode_response("");
        let answer = async {
            send.write_all(&body).await.ok()?;
            send.finish().ok()?;
            send.stopped().await.ok()
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), answer).await;
    }

    /// The client sees a reset.
    fn reject((mut send, mut recv): Self::Stream) {
        let _ = send.reset(stream_code::ABORTED.into());
        let _ = recv.stop(stream_code::ABORTED.into());
    }

    fn started(&mut self, running: usize) {
        self.credit.grow_on(&self.conn, running);
    }

    fn go_away(&mut self) {
        let c = self.conn.clone();
        tokio::spawn(async move { quic::send_going_away(&c).await });
    }

    /// The endpoint's driver sends the close, after what the flows wrote.
    async fn close(&mut self, code: u32, reason: &str) {
        self.conn.close(code.into(), reason.as_bytes());
    }
}
