//! The DR App Connector: dials out to every edge address and keeps those
//! tunnels up (jittered exponential backoff, never gives up); for each flow
//! an edge opens, resolves and connects to the application and splices.

mod flow;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::{ConnectorConfig, DnsSection, Limits, TransportChoice};
use crate::metrics::Metrics;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::dial::{Dialed, Dialer, HEAD_START};
use crate::transport::resolve::EdgeWatch;
use crate::transport::{close_code, mux, quic, stream_code, tls, EdgeAddr, ALPN_CONNECTOR};
use crate::trust::Trust;

/// State shared by the connector's tasks.
pub struct ConnectorState {
    pub trust: Arc<Trust>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub hosts: HashMap<String, IpAddr>,
    pub access_log: bool,
    pub abort: CancellationToken,
}

/// A configured connector, ready to run.
pub struct Connector {
    state: Arc<ConnectorState>,
    edges: Vec<String>,
    /// `[dns]`: `nameservers` resolve the `edges` names too.
    dns: DnsSection,
    dialer: Dialer,
}

impl Connector {
    pub fn bind(cfg: ConnectorConfig, file: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let trust = Trust::load(cfg.tls.files(), &cfg.trust_domain)
            .with_context(|| format!("loading [tls] of {}", file.display()))?;
        let id = trust.local_id();
        if id.role != crate::trust::Role::Connector {
            anyhow::bail!(
                "{}: [tls] cert is a {} certificate ({id}); a connector needs a connector certificate",
                file.display(),
                id.role.as_str()
            );
        }
        let bind: SocketAddr = if cfg.edges.iter().any(|e| e.starts_with('[')) {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let endpoint = quic::client_endpoint(
            bind,
            &trust,
            ALPN_CONNECTOR,
            &cfg.limits,
            cfg.limits.max_flows_per_tunnel,
        )?;
        let hosts = cfg
            .dns
            .hosts
            .iter()
            .map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), *v))
            .collect();
        metrics.observe_trust(&trust);
        let dialer = Dialer {
            choice: cfg.transport,
            quic: endpoint,
            tls: tls::connector(&trust, ALPN_CONNECTOR),
            timeout: cfg.limits.handshake_timeout,
            head_start: HEAD_START,
        };
        Ok(Self {
            state: Arc::new(ConnectorState {
                trust,
                metrics,
                limits: cfg.limits,
                hosts,
                access_log: cfg.log.access,
                abort: CancellationToken::new(),
            }),
            edges: cfg.edges,
            dns: cfg.dns,
            dialer,
        })
    }

    pub fn state(&self) -> Arc<ConnectorState> {
        Arc::clone(&self.state)
    }

    /// Keep a tunnel to every edge address until `drain`, following the
    /// `edges` names as they re-resolve (at the TTL): a new address gets a
    /// tunnel; one that left the record is drained (no new flows, running
    /// ones finish). Nothing resolving is not fatal: the names are retried
    /// with backoff. At `drain`, flows finish for up to `drain_timeout`.
    pub async fn run(self, drain: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        // Certificates, CA and CRL are re-read when they change on disk.
        let m = Arc::clone(&self.state.metrics);
        crate::trust::watch::spawn(Arc::clone(&self.state.trust), drain.clone(), move |t| {
            m.observe_trust(t)
        });
        let ipv6 = self.dialer.choice == TransportChoice::Tls
            || self.dialer.quic.local_addr().is_ok_and(|a| a.is_ipv6());
        let edges = EdgeWatch::start(&self.edges, &self.dns, ipv6);
        let mut set = edges.subscribe();
        // One tunnel per address; its token (a child of `drain`) drains it alone.
        let mut tunnels: HashMap<SocketAddr, CancellationToken> = HashMap::new();
        loop {
            let now: Vec<EdgeAddr> = set.borrow_and_update().clone();
            tunnels.retain(|addr, stop| {
                let keep = now.iter().any(|e| e.addr == *addr);
                if !keep {
                    info!(edge = %addr, "edge address left the record; draining its tunnel");
                    stop.cancel();
                }
                keep
            });
            for edge in now {
                if tunnels.contains_key(&edge.addr) {
                    continue;
                }
                let stop = drain.child_token();
                tunnels.insert(edge.addr, stop.clone());
                let span = tracing::info_span!("tunnel", edge = %edge.addr);
                tracker.spawn(
                    keep_tunnel(
                        Arc::clone(&self.state),
                        self.dialer.clone(),
                        edge,
                        tracker.clone(),
                        stop,
                    )
                    .instrument(span),
                );
            }
            tokio::select! {
                changed = set.changed() => {
                    if changed.is_err() {
                        // The set can no longer change: keep what we have.
                        drain.cancelled().await;
                        break;
                    }
                }
                _ = drain.cancelled() => break,
            }
        }
        drop((set, edges));
        tracker.close();
        let timeout = self.state.limits.drain_timeout;
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            warn!("drain deadline passed; aborting remaining flows");
            self.state.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        }
        self.dialer
            .quic
            .close(close_code::DRAINING.into(), b"connector shutting down");
        info!("connector stopped");
        Ok(())
    }
}

/// Dial one edge address until `drain` (its own token: the address left
/// the record, or shutdown), serving flows while up; never gives up.
async fn keep_tunnel(
    state: Arc<ConnectorState>,
    dialer: Dialer,
    edge: EdgeAddr,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let m = &state.metrics;
    let mut backoff = Backoff::tunnel();
    let mut last_error: Option<String> = None;
    let mut quic_bad = false;
    let mut ready_quic: Option<quinn::Connection> = None;
    while !drain.is_cancelled() {
        let dialed = match ready_quic.take() {
            Some(c) => Ok(Dialed::Quic(c)),
            None => tokio::select! {
                r = dialer.dial(&edge, quic_bad) => r,
                _ = drain.cancelled() => break,
            },
        };
        let dialed = match dialed {
            Ok(d) => d,
            Err(e) => {
                let kind = dialer.failed_kind(quic_bad, &e);
                m.handshakes
                    .with_label_values(&["edge", kind.as_str(), e.reason()])
                    .inc();
                let msg = e.to_string();
                // Logged once per change of condition, not on every retry.
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!("cannot reach edge: {msg}; retrying with backoff");
                    last_error = Some(msg);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = drain.cancelled() => break,
                }
                continue;
            }
        };
        let kind = dialed.kind();
        m.handshakes
            .with_label_values(&["edge", kind.as_str(), "ok"])
            .inc();
        last_error = None;
        let since = std::time::Instant::now();
        match dialed {
            Dialed::Quic(conn) => {
                quic_bad = false;
                let tunnels = m.tunnels_active.with_label_values(&["edge", "quic"]);
                tunnels.inc();
                let peer = quic::peer_id(&conn)
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                info!(peer, transport = "quic", "edge tunnel up");
                let why = serve_quic(&state, &conn, &tracker, &drain).await;
                tunnels.dec();
                info!(peer, transport = "quic", "edge tunnel down: {why}");
            }
            Dialed::Tls(stream) => {
                if dialer.choice == TransportChoice::Auto && !quic_bad {
                    m.transport_fallbacks
                        .with_label_values(&["connector"])
                        .inc();
                    warn!("QUIC to the edge did not come up within {:?}; using TLS and re-probing QUIC", dialer.head_start);
                }
                quic_bad = dialer.choice == TransportChoice::Auto;
                let stop = drain.child_token();
                let mut task = tracker.spawn(serve_tls(
                    Arc::clone(&state),
                    *stream,
                    tracker.clone(),
                    stop.clone(),
                ));
                let probe = async {
                    if dialer.choice == TransportChoice::Auto {
                        reprobe_quic(&dialer, &edge).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    _ = &mut task => {}
                    conn = probe => {
                        info!("QUIC to the edge works again; moving to QUIC, TLS tunnel drains");
                        // The TLS tunnel finishes its running flows in the background.
                        stop.cancel();
                        ready_quic = Some(conn);
                        continue;
                    }
                }
            }
        }
        if drain.is_cancelled() {
            break;
        }
        // A tunnel that died at once (refused identity, edge restarting) backs
        // off; only one that lived a while starts the backoff over.
        if since.elapsed() >= Duration::from_secs(1) {
            backoff.reset();
        } else {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = drain.cancelled() => break,
            }
        }
    }
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

/// Serve flows on a TLS tunnel until it ends or `stop` (then gracefully).
async fn serve_tls(
    state: Arc<ConnectorState>,
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let tunnels = state
        .metrics
        .tunnels_active
        .with_label_values(&["edge", "tls"]);
    tunnels.inc();
    let peer = tls::peer_id(stream.get_ref().1)
        .map(|p| p.to_string())
        .unwrap_or_default();
    info!(peer, transport = "tls", "edge tunnel up");
    let limits = state.limits.clone();
    let st = Arc::clone(&state);
    let why = mux::connector_side(stream, &limits, stop, move |side| {
        tracker.spawn(flow::serve(Arc::clone(&st), side).instrument(tracing::debug_span!("flow")));
    })
    .await;
    tunnels.dec();
    info!(peer, transport = "tls", "edge tunnel down: {why}");
}

/// Accept flows on a QUIC tunnel until it closes or `stop` (its address
/// left the record, or shutdown). A stopped tunnel takes no new flow: each
/// stream the edge still opens is refused at once, so the edge tries
/// another connector instead of waiting; running flows finish (bounded by
/// the shutdown deadline through `abort`), then the tunnel closes.
async fn serve_quic(
    state: &Arc<ConnectorState>,
    conn: &quinn::Connection,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> String {
    let flows = TaskTracker::new();
    loop {
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((send, recv)) => {
                    let side = Side { recv: RecvHalf::Quic(recv), send: SendHalf::Quic(send) };
                    let flow = flow::serve(Arc::clone(state), side).instrument(tracing::debug_span!("flow"));
                    tracker.spawn(flows.track_future(flow));
                }
                Err(e) => return e.to_string(),
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
                Err(e) => return e.to_string(),
            },
            _ = flows.wait() => break,
        }
    }
    conn.close(close_code::DRAINING.into(), b"draining");
    "draining".into()
}
