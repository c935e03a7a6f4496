//! The DR Private Service Edge: accepts client and connector tunnels on one
//! QUIC endpoint, checks identities (done in the TLS handshake by `trust`,
//! role against ALPN here), and hands each client stream to `flow`.

mod flow;
pub mod registry;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{compile_segments, EdgeConfig, Limits};
use crate::dr::DrMode;
use crate::metrics::{Metrics, SegmentMetrics};
use crate::segments::Matcher;
use crate::transport::{close_code, quic, TransportKind, ALPN_CLIENT, ALPN_CONNECTOR};
use crate::trust::{Role, SpiffeId, Trust};
use registry::{ConnectorTunnel, Registry};

/// What a reload may swap: the compiled segments and the policy around them.
pub struct Policy {
    pub matcher: Matcher,
    pub segment_metrics: Vec<SegmentMetrics>,
    pub test_users: HashSet<String>,
    pub limits: Limits,
    pub access_log: bool,
    /// The config it came from, to tell which parts a reload changes.
    pub source: EdgeConfig,
}

impl Policy {
    fn compile(
        cfg: EdgeConfig,
        file: &Path,
        text: &str,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let matcher = compile_segments(&cfg, file, text)?;
        let segment_metrics = matcher
            .segments()
            .iter()
            .map(|s| metrics.segment(&s.name))
            .collect();
        Ok(Self {
            matcher,
            segment_metrics,
            test_users: cfg.dr.test_users.iter().cloned().collect(),
            limits: cfg.limits.clone(),
            access_log: cfg.log.access,
            source: cfg,
        })
    }
}

/// State shared by every task of one edge.
pub struct EdgeState {
    pub policy: ArcSwap<Policy>,
    pub trust: Arc<Trust>,
    pub metrics: Arc<Metrics>,
    pub mode: watch::Receiver<DrMode>,
    pub registry: Registry,
    pub flows: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Cancelled when the drain deadline passes: running flows are aborted.
    pub abort: CancellationToken,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Certificates and config swapped in.
    Applied,
    /// Certificates re-read, but segment/group/policy changes refused while DR is on.
    PolicyRefused,
}

impl EdgeState {
    /// Re-read certificates, CA and CRL (always), then the config: a bad
    /// file keeps the old one; policy changes are refused while DR is `on`.
    pub fn reload(&self, file: &Path) -> anyhow::Result<ReloadOutcome> {
        let m = &self.metrics;
        let trust = self.trust.reload();
        let parsed = crate::config::load_with_text::<EdgeConfig>(file)
            .map_err(anyhow::Error::from)
            .and_then(|(cfg, text)| Policy::compile(cfg, file, &text, m));
        let policy = match (trust, parsed) {
            (Ok(()), Ok(p)) => p,
            (Err(e), _) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                return Err(anyhow::Error::from(e).context("reload: certificate files"));
            }
            (_, Err(e)) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                return Err(e.context("reload: config kept as it was"));
            }
        };
        let old = self.policy.load();
        let changes_policy = old.source.segments != policy.source.segments
            || old.source.server_groups != policy.source.server_groups
            || old.source.connector_groups != policy.source.connector_groups
            || old.source.dr.test_users != policy.source.dr.test_users;
        if changes_policy && *self.mode.borrow() == DrMode::On {
            m.config_reloads.with_label_values(&["refused"]).inc();
            warn!("reload: segment, group and policy changes are refused while DR mode is on; certificates and CRL were re-read");
            return Ok(ReloadOutcome::PolicyRefused);
        }
        self.policy.store(Arc::new(policy));
        self.update_ready();
        m.config_reloads.with_label_values(&["ok"]).inc();
        info!("reload: config and certificates applied");
        Ok(ReloadOutcome::Applied)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Recompute `lifeboat_segment_ready` after connectors came or went.
    fn update_ready(&self) {
        let policy = self.policy.load();
        for (seg, m) in policy
            .matcher
            .segments()
            .iter()
            .zip(&policy.segment_metrics)
        {
            let ready = seg
                .connector_groups
                .iter()
                .any(|g| self.registry.count(g) > 0);
            m.ready.set(i64::from(ready));
        }
    }
}

/// A bound edge, ready to run.
pub struct Edge {
    state: Arc<EdgeState>,
    quic: Option<quinn::Endpoint>,
    handshakes: Arc<Semaphore>,
    tunnels: Arc<Semaphore>,
}

impl Edge {
    /// Load trust, compile the config and bind the listeners. `file` and
    /// `text` name the config in errors.
    pub fn bind(
        cfg: EdgeConfig,
        file: &Path,
        text: &str,
        mode: watch::Receiver<DrMode>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let trust = Trust::load(cfg.tls.files(), &cfg.trust_domain)
            .with_context(|| format!("loading [tls] of {}", file.display()))?;
        let limits = cfg.limits.clone();
        let quic_addr = cfg.listen.quic;
        let policy = Policy::compile(cfg, file, text, &metrics)?;
        let quic = match quic_addr {
            Some(addr) => {
                let ep = quic::server_endpoint(addr, &trust, &limits)
                    .with_context(|| format!("binding QUIC listener {addr}"))?;
                info!("listening quic {}", ep.local_addr()?);
                Some(ep)
            }
            None => None,
        };
        let (local, ca) = trust.expiry_unix();
        metrics
            .cert_expiry
            .with_label_values(&["local"])
            .set(local as f64);
        metrics
            .cert_expiry
            .with_label_values(&["ca"])
            .set(ca as f64);
        let state = Arc::new(EdgeState {
            policy: ArcSwap::from_pointee(policy),
            trust,
            metrics,
            mode,
            registry: Registry::default(),
            flows: Arc::new(Semaphore::new(limits.max_flows)),
            next_id: AtomicU64::new(1),
            abort: CancellationToken::new(),
        });
        state.update_ready();
        Ok(Self {
            state,
            quic,
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes_inflight)),
            tunnels: Arc::new(Semaphore::new(limits.max_tunnels)),
        })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    pub fn state(&self) -> Arc<EdgeState> {
        Arc::clone(&self.state)
    }

    /// Serve until `drain` is cancelled, then let flows finish for up to
    /// `drain_timeout`, abort the rest and close.
    pub async fn run(self, drain: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        if let Some(ep) = &self.quic {
            loop {
                tokio::select! {
                    incoming = ep.accept() => {
                        let Some(incoming) = incoming else { break };
                        self.on_incoming(incoming, &tracker, &drain);
                    }
                    _ = drain.cancelled() => break,
                }
            }
            ep.set_server_config(None);
        } else {
            drain.cancelled().await;
        }
        let drain_timeout = self.state.policy.load().limits.drain_timeout;
        info!(
            flows = self.state.metrics.flows_active.get(),
            "draining for up to {drain_timeout:?}"
        );
        tracker.close();
        if tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!("drain deadline passed; aborting remaining flows");
            self.state.abort.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tracker.wait()).await;
        }
        if let Some(ep) = &self.quic {
            ep.close(close_code::DRAINING.into(), b"edge shutting down");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ep.wait_idle()).await;
        }
        info!("edge stopped");
        Ok(())
    }

    fn on_incoming(
        &self,
        incoming: quinn::Incoming,
        tracker: &TaskTracker,
        drain: &CancellationToken,
    ) {
        let m = &self.state.metrics;
        // Shed before any crypto: refusing costs one stateless packet.
        let Ok(hs_permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
            m.handshakes
                .with_label_values(&["client", "quic", "shed"])
                .inc();
            incoming.refuse();
            return;
        };
        let Ok(tunnel_permit) = Arc::clone(&self.tunnels).try_acquire_owned() else {
            m.handshakes
                .with_label_values(&["client", "quic", "shed"])
                .inc();
            incoming.refuse();
            return;
        };
        let state = Arc::clone(&self.state);
        let remote = incoming.remote_address();
        let drain = drain.clone();
        let tracker2 = tracker.clone();
        tracker.spawn(
            async move {
                let timeout = state.policy.load().limits.handshake_timeout;
                let conn = match incoming.accept() {
                    Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            let reason = crate::trust::classify_quic(&e);
                            state.metrics.handshakes.with_label_values(&["client", "quic", reason]).inc();
                            debug!(%remote, reason, "handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            state.metrics.handshakes.with_label_values(&["client", "quic", "timeout"]).inc();
                            debug!(%remote, "handshake timed out");
                            return;
                        }
                    },
                    Err(e) => {
                        debug!(%remote, "accept failed: {e}");
                        return;
                    }
                };
                drop(hs_permit);
                let peer = match quic::peer_id(&conn) {
                    Ok(p) => p,
                    Err(e) => {
                        state.metrics.handshakes.with_label_values(&["client", "quic", "no-identity"]).inc();
                        conn.close(close_code::WRONG_ROLE.into(), b"no identity");
                        debug!(%remote, "no identity: {e}");
                        return;
                    }
                };
                let alpn = quic::alpn(&conn);
                let claimed = match alpn.as_deref() {
                    Some(ALPN_CONNECTOR) => Role::Connector,
                    Some(ALPN_CLIENT) | None => Role::Client,
                    Some(_) => Role::Client,
                };
                if peer.role != claimed {
                    state.metrics.handshakes.with_label_values(&[claimed.as_str(), "quic", "wrong-role"]).inc();
                    warn!(%remote, peer = %peer, "refused: a {} certificate on a {} tunnel", peer.role.as_str(), claimed.as_str());
                    conn.close(close_code::WRONG_ROLE.into(), b"wrong-role");
                    return;
                }
                state.metrics.handshakes.with_label_values(&[claimed.as_str(), "quic", "ok"]).inc();
                let _tunnel_permit = tunnel_permit;
                match claimed {
                    Role::Connector => connector_tunnel(state, conn, peer).await,
                    _ => client_tunnel(state, conn, peer, tracker2, drain).await,
                }
            }
            .instrument(tracing::info_span!("tunnel", transport = "quic", %remote)),
        );
    }
}

async fn connector_tunnel(state: Arc<EdgeState>, conn: quinn::Connection, peer: SpiffeId) {
    let Some(group) = peer.group.clone() else {
        conn.close(
            close_code::WRONG_ROLE.into(),
            b"connector identity without group",
        );
        return;
    };
    let known = state
        .policy
        .load()
        .source
        .connector_groups
        .iter()
        .any(|g| g.name == group && g.dr);
    if !known {
        warn!(peer = %peer, "connector of group `{group}`, which is not a DR connector group here: it will carry no flows");
    }
    let t = Arc::new(ConnectorTunnel {
        id: state.next_id(),
        peer: peer.clone(),
        group: group.clone(),
        conn: conn.clone(),
        active: Default::default(),
    });
    let m = &state.metrics;
    let tunnels = m
        .tunnels_active
        .with_label_values(&["connector", TransportKind::Quic.as_str()]);
    let connected = m.connectors_connected.with_label_values(&[group.as_str()]);
    tunnels.inc();
    connected.inc();
    state.registry.add(Arc::clone(&t));
    state.update_ready();
    info!(peer = %peer, "connector tunnel up");
    let why = conn.closed().await;
    state.registry.remove(&group, t.id);
    state.update_ready();
    tunnels.dec();
    connected.dec();
    info!(peer = %peer, "connector tunnel down: {why}");
}

async fn client_tunnel(
    state: Arc<EdgeState>,
    conn: quinn::Connection,
    peer: SpiffeId,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let tunnels = state
        .metrics
        .tunnels_active
        .with_label_values(&["client", TransportKind::Quic.as_str()]);
    tunnels.inc();
    info!(peer = %peer, "client tunnel up");
    let peer = Arc::new(peer);
    let why = loop {
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((send, recv)) => {
                    let Ok(permit) = Arc::clone(&state.flows).try_acquire_owned() else {
                        // Over max_flows: refuse the stream itself; the client sees a reset.
                        let (mut send, mut recv) = (send, recv);
                        let _ = send.reset(crate::transport::stream_code::ABORTED.into());
                        let _ = recv.stop(crate::transport::stream_code::ABORTED.into());
                        continue;
                    };
                    let id = state.next_id();
                    let span = tracing::debug_span!("flow", id, dest = tracing::field::Empty);
                    tracker.spawn(flow::serve(Arc::clone(&state), Arc::clone(&peer), id, send, recv, permit).instrument(span));
                }
                Err(e) => break e.to_string(),
            },
            _ = drain.cancelled() => {
                // Running flows keep the tunnel until they end or the drain deadline.
                break "draining".to_string();
            }
        }
    };
    // On drain the tunnel lives on in its running flows' stream handles and
    // closes when the last one ends; the drain deadline aborts those.
    tunnels.dec();
    info!(peer = %peer, "client tunnel down: {why}");
}
