//! One tunnel keeper for the client and the connector: dial -> the edge's
//! verdict on our certificate -> up -> serve -> down -> fall back or move
//! back to QUIC -> back off, whatever the order in which edges come and go.
//! What a role does with a tunnel that is up (serve flows for the client,
//! take flows for the connector) is passed in as a [`TunnelRole`].
//!
//! Recovery follows demand: a flow waiting for a tunnel wakes the keeper
//! (one dial in flight, no more than one per [`DEMAND_GAP`]); background
//! retries back off with jitter up to the role's ceiling, counted from the
//! start of the failed attempt, so an attempt that timed out is followed at
//! once. An edge going away (close code `GOING_AWAY`, a going-away notice,
//! HTTP/2 GOAWAY) is left at once, for another address without backoff.
//! An edge that shed our handshake (a DR stampede) is not asked again
//! before the (jittered) time it said, or [`super::shed::DEFAULT`]: not by
//! the backoff, nor by a waiting flow.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dial::{Dialed, Dialer};
use super::{EdgeAddr, TransportKind};
use crate::backoff::Backoff;
use crate::config::TransportChoice;
use crate::metrics::Metrics;

/// A flow waiting for a tunnel dials no more often than this.
pub const DEMAND_GAP: Duration = Duration::from_secs(1);

/// One dial attempt's bound: long enough for a few QUIC Initial and TCP SYN
/// retransmissions, short enough that an edge which starts during an
/// attempt is reached within about a second (attempts follow each other).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// A tunnel that lived at least this long starts the backoff over.
const LIVED: Duration = Duration::from_secs(1);

/// Why a served tunnel ended.
#[derive(Debug)]
pub struct Ended {
    pub why: String,
    /// The edge said it is leaving (draining for a restart): move on at once.
    pub going_away: bool,
}

impl Ended {
    pub fn new(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            going_away: false,
        }
    }

    pub fn going_away(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            going_away: true,
        }
    }
}

/// What the client and the connector do differently.
pub trait TunnelRole: Send {
    /// The role's name in metric labels: `client` or `connector`.
    const NAME: &'static str;
    /// The log line when no edge could be reached (the runbook quotes it).
    const UNREACHABLE: &'static str;

    /// Addresses to dial, in order; `lost` is the one last lost or failed.
    fn targets(&mut self, lost: Option<SocketAddr>) -> Vec<EdgeAddr>;

    /// Resolves when the addresses may have changed: the keeper dials at once.
    fn targets_changed(&mut self) -> impl Future<Output = ()> + Send;

    /// Ask for the addresses again (after a failure).
    fn refresh(&mut self) {}

    /// A dial is starting.
    fn connecting(&mut self) {}

    /// No edge could be reached: `why`, and the last attempt's result word.
    fn down(&mut self, why: &str, word: &'static str);

    /// Serve a tunnel that is up until it ends, or until `moving` is
    /// cancelled (the keeper moves to QUIC or the role stops): then new
    /// flows stop and running ones finish on their own.
    fn serve(
        &mut self,
        tunnel: Dialed,
        edge: &EdgeAddr,
        moving: CancellationToken,
    ) -> impl Future<Output = Ended> + Send;
}

/// The keeper's settings.
pub struct Keeper {
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
    /// Background retries: jittered, growing to the role's ceiling.
    pub backoff: Backoff,
    /// Notified by a flow waiting for a tunnel.
    pub demand: Option<Arc<Notify>>,
    pub stop: CancellationToken,
}

impl Keeper {
    /// Keep a tunnel up until `stop`.
    pub async fn run<R: TunnelRole>(mut self, mut role: R) {
        let mut lost: Option<SocketAddr> = None;
        let mut quic_bad: HashSet<SocketAddr> = HashSet::new();
        let mut ready_quic: Option<(quinn::Connection, EdgeAddr)> = None;
        let mut last_error: Option<String> = None;
        let timeout = self.dialer.timeout.min(ATTEMPT_TIMEOUT);
        while !self.stop.is_cancelled() {
            let attempt = Instant::now();
            // Set when every address shed us: not before then.
            let mut not_before = None;
            let up = match ready_quic.take() {
                Some((c, e)) => Some((Dialed::Quic(c), e)),
                None => {
                    role.connecting();
                    match self
                        .dial_any(&mut role, &mut lost, &quic_bad, timeout)
                        .await
                    {
                        Ok(up) => Some(up),
                        Err(None) => break,
                        Err(Some(failed)) => {
                            // At most 3/2 of shed::MAX (45 s) ahead: no overflow.
                            not_before = failed
                                .shed
                                .map(|h| Instant::now() + super::shed::jittered(h));
                            no_edge(&mut role, &failed, &mut last_error);
                            None
                        }
                    }
                }
            };
            let Some((dialed, edge)) = up else {
                if !self.wait_to_retry(&mut role, attempt, not_before).await {
                    break;
                }
                continue;
            };
            last_error = None;
            let kind = dialed.kind();
            self.handshake_ok::<R>(kind, &edge, &mut quic_bad);
            let auto = self.dialer.choice == TransportChoice::Auto;
            let since = Instant::now();
            let tunnels = self
                .metrics
                .tunnels_active
                .with_label_values(&["edge", kind.as_str()]);
            tunnels.inc();
            info!(edge = %edge.addr, transport = kind.as_str(), "edge tunnel up");
            let moving = self.stop.child_token();
            let probe = async {
                if auto && kind == TransportKind::Tls {
                    reprobe_quic(&self.dialer, &edge).await
                } else {
                    std::future::pending().await
                }
            };
            let ended = {
                let serve = role.serve(dialed, &edge, moving.clone());
                tokio::select! {
                    ended = serve => ended,
                    conn = probe => {
                        info!(edge = %edge.addr, "QUIC works again; moving to QUIC, the TLS tunnel drains");
                        moving.cancel();
                        ready_quic = Some((conn, edge.clone()));
                        Ended::new("moving to QUIC")
                    }
                }
            };
            tunnels.dec();
            info!(edge = %edge.addr, transport = kind.as_str(), "edge tunnel down: {}", ended.why);
            if ready_quic.is_some() || self.stop.is_cancelled() {
                continue;
            }
            // The address just lost is tried last (another one first).
            lost = Some(edge.addr);
            if ended.going_away {
                // The edge is draining: another address at once; the same
                // one (a restart) after the first step of the backoff.
                self.backoff.reset();
                let others = role.targets(lost).iter().any(|e| e.addr != edge.addr);
                if others {
                    continue;
                }
            } else if since.elapsed() >= LIVED {
                self.backoff.reset();
                continue;
            }
            // A tunnel that dies at once (refused identity, edge restarting)
            // or an edge going away with nowhere else to go: back off.
            if !self
                .wait_to_retry(&mut role, attempt.max(since), None)
                .await
            {
                break;
            }
        }
    }

    /// A tunnel came up on `kind`: counted; with `auto`, QUIC to the edge is
    /// remembered as working, or as failing when TLS won (a fallback,
    /// counted and warned once).
    fn handshake_ok<R: TunnelRole>(
        &self,
        kind: TransportKind,
        edge: &EdgeAddr,
        quic_bad: &mut HashSet<SocketAddr>,
    ) {
        self.metrics
            .handshakes
            .with_label_values(&["edge", kind.as_str(), "ok"])
            .inc();
        let auto = self.dialer.choice == TransportChoice::Auto;
        match kind {
            TransportKind::Quic => {
                quic_bad.remove(&edge.addr);
            }
            TransportKind::Tls if auto && quic_bad.insert(edge.addr) => {
                self.metrics
                    .transport_fallbacks
                    .with_label_values(&[R::NAME])
                    .inc();
                warn!(edge = %edge.addr, "QUIC did not come up within {:?}; using TLS and re-probing QUIC", self.dialer.head_start);
            }
            TransportKind::Tls => {}
        }
    }

    /// Try each address in turn; the first tunnel the edge accepted.
    /// `Err(None)` when stopping, else the last failure.
    async fn dial_any<R: TunnelRole>(
        &self,
        role: &mut R,
        lost: &mut Option<SocketAddr>,
        quic_bad: &HashSet<SocketAddr>,
        timeout: Duration,
    ) -> Result<(Dialed, EdgeAddr), Option<NoEdge>> {
        let mut err = String::from("no edge address resolved");
        let mut word = "unreachable";
        // The longest hint, while every address tried so far shed us.
        let (mut hint, mut all_shed, mut tried) = (Duration::ZERO, true, false);
        for edge in role.targets(*lost) {
            let bad = quic_bad.contains(&edge.addr);
            let attempt = tokio::select! {
                r = self.dialer.connect(&edge, bad, timeout) => r,
                () = self.stop.cancelled() => return Err(None),
            };
            match attempt {
                Ok(d) => return Ok((d, edge)),
                Err(e) => {
                    tried = true;
                    match e.retry_after() {
                        Some(h) => hint = hint.max(h),
                        None => all_shed = false,
                    }
                    let kind = self.dialer.failed_kind(bad, &e);
                    word = e.reason();
                    self.metrics
                        .handshakes
                        .with_label_values(&["edge", kind.as_str(), word])
                        .inc();
                    debug!(edge = %edge.addr, "dial failed: {e}");
                    err = format!("{}: {e}", edge.addr);
                    *lost = Some(edge.addr);
                }
            }
        }
        Err(Some(NoEdge {
            why: err,
            word,
            shed: (tried && all_shed).then_some(hint),
        }))
    }

    /// Wait until the next attempt may start: the backoff's delay after
    /// `attempt` began, sooner when the addresses change, or (at most one
    /// per [`DEMAND_GAP`]) when a flow is waiting; never before
    /// `not_before` (the edge shed us) but for new addresses. `false` when
    /// stopping.
    async fn wait_to_retry<R: TunnelRole>(
        &mut self,
        role: &mut R,
        attempt: Instant,
        not_before: Option<Instant>,
    ) -> bool {
        let floor = not_before.unwrap_or(attempt);
        let backoff = tokio::time::sleep_until((attempt + self.backoff.next_delay()).max(floor));
        let demand = async {
            match &self.demand {
                Some(d) => {
                    d.notified().await;
                    tokio::time::sleep_until((attempt + DEMAND_GAP).max(floor)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = backoff => true,
            () = role.targets_changed() => true,
            () = demand => true,
            () = self.stop.cancelled() => false,
        }
    }
}

/// Why no edge took our handshake.
struct NoEdge {
    /// The last failure, with its address.
    why: String,
    /// Its result word.
    word: &'static str,
    /// When every address shed us: the longest of their hints.
    shed: Option<Duration>,
}

/// No edge took our handshake: warned once per distinct error, or only
/// logged at debug when every address shed us (the edge is up and busy, a
/// stampede: counted in `handshakes_total{result="shed"}`); the role hears
/// of it and asks for the addresses again.
fn no_edge<R: TunnelRole>(role: &mut R, failed: &NoEdge, last_error: &mut Option<String>) {
    let err = &failed.why;
    if failed.shed.is_some() {
        debug!("the edge shed our handshake: {err}; back after its hint");
    } else if last_error.as_ref() != Some(err) {
        warn!("{}: {err}; retrying with backoff", R::UNREACHABLE);
        *last_error = Some(err.clone());
    }
    role.down(err, failed.word);
    role.refresh();
}

/// Try QUIC now and then (jittered, growing to a minute) until it works.
async fn reprobe_quic(dialer: &Dialer, edge: &EdgeAddr) -> quinn::Connection {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        if let Ok(c) = dialer.dial_quic(edge).await {
            return c;
        }
    }
}

/// Whether a QUIC tunnel ended because the edge is going away (draining
/// for a restart or shutdown).
pub fn quic_going_away(e: &quinn::ConnectionError) -> bool {
    use super::close_code::{DRAINING, GOING_AWAY};
    matches!(e, quinn::ConnectionError::ApplicationClosed(c)
        if c.error_code == GOING_AWAY.into() || c.error_code == DRAINING.into())
}

/// Why a QUIC tunnel ended, going away or not.
pub fn quic_ended(e: &quinn::ConnectionError) -> Ended {
    if quic_going_away(e) {
        Ended::going_away(e.to_string())
    } else {
        Ended::new(e.to_string())
    }
}

/// Resolves when the edge sends its going-away notice on `conn` (a
/// unidirectional stream, see `quic::send_going_away`); never otherwise.
pub async fn quic_notice(conn: &quinn::Connection) {
    loop {
        let Ok(mut s) = conn.accept_uni().await else {
            return std::future::pending().await;
        };
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() && b[0] == super::quic::GOING_AWAY_NOTICE {
            return;
        }
    }
}
