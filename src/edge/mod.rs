//! The DR Private Service Edge: accepts client and connector tunnels on its
//! QUIC endpoint and its TLS listener (`accept`: one flow per HTTP/1.1
//! CONNECT connection, many on HTTP/2), checks identities (done in the TLS
//! handshake by `trust`, role against ALPN in `accept`), and hands each
//! client flow to `flow`.

mod accept;
mod certs;
mod client_tunnel;
mod connector_tunnel;
mod flow;
mod h2_tunnel;
pub mod quota;
pub mod registry;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{compile_segments, ConfigError, EdgeConfig, Limits, RestartNeeded};
use crate::dr::DrMode;
use crate::metrics::{Metrics, SegmentMetrics};
use crate::role_error::{BindError, ReloadError, RunError};
use crate::segments::Matcher;
use crate::transport::{close_code, quic};
use crate::trust::Trust;
use registry::Registry;

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
    ) -> Result<Self, ConfigError> {
        let matcher = compile_segments(&cfg, file, text)?;
        metrics.init_connector_groups(
            cfg.connector_groups
                .iter()
                .filter(|g| g.dr)
                .map(|g| g.name.as_str()),
        );
        for w in crate::config::edge_warnings(&cfg, &matcher, file, text) {
            warn!("config: {w}");
        }
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
    /// Tunnels and flows held per identity.
    pub quotas: Arc<quota::Quotas>,
    /// Stalled flows across the edge, bounded by `memory_budget`.
    pub stalls: Arc<crate::stall::Stalls>,
    next_id: AtomicU64,
    /// Cancelled when the drain deadline passes: running flows are aborted.
    pub abort: CancellationToken,
    /// Bumped after every trust reload: live client tunnels re-check their
    /// peer's certificate (a revoked laptop loses its open tunnel too).
    pub trust_changed: watch::Sender<()>,
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
    pub fn reload(&self, file: &Path) -> Result<ReloadOutcome, ReloadError> {
        let m = &self.metrics;
        let trust = self.trust.reload();
        if trust.is_ok() {
            self.trust_changed.send_replace(());
        }
        let parsed = crate::config::load_with_text::<EdgeConfig>(file)
            .and_then(|(cfg, text)| Policy::compile(cfg, file, &text, m));
        let policy = match (trust, parsed) {
            (Ok(()), Ok(p)) => p,
            (Err(e), _) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                return Err(ReloadError::Trust(e));
            }
            (_, Err(e)) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                return Err(ReloadError::Config(e));
            }
        };
        self.metrics.observe_trust(&self.trust);
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
        let restart = old.source.restart_needed(&policy.source);
        if !restart.is_empty() {
            warn!(
                "reload: changes to {} need a restart and were not applied",
                restart.join(", ")
            );
        }
        // Segments the new config drops are no longer ready.
        let kept: HashSet<&str> = policy
            .matcher
            .segments()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        for (seg, sm) in old.matcher.segments().iter().zip(&old.segment_metrics) {
            if !kept.contains(seg.name.as_str()) {
                sm.ready.set(0);
            }
        }
        drop(kept);
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
    tls: Option<TlsListener>,
    gates: accept::Gates,
    /// `[dr] cert_grace`, in force while the DR mode is `on`.
    cert_grace: Option<std::time::Duration>,
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
    ) -> Result<Self, BindError> {
        let trust =
            Trust::load(cfg.tls.files(), &cfg.trust_domain).map_err(BindError::trust(file))?;
        let limits = cfg.limits.clone();
        let cert_grace = cfg.dr.cert_grace.filter(|g| !g.is_zero());
        let quic_addr = cfg.listen.quic;
        let tls_addr = cfg.listen.tls;
        let policy = Policy::compile(cfg, file, text, &metrics)?;
        let (quic, tls) = bind_listeners(quic_addr, tls_addr, &trust, &limits)?;
        if let Some(ep) = &quic {
            info!("listening quic {}", ep.local_addr()?);
        }
        if let Some((l, _)) = &tls {
            info!("listening tls {}", l.local_addr()?);
        }
        metrics.observe_trust(&trust);
        let state = Arc::new(EdgeState {
            policy: ArcSwap::from_pointee(policy),
            trust,
            metrics,
            mode,
            registry: Registry::default(),
            flows: Arc::new(Semaphore::new(limits.max_flows)),
            quotas: Default::default(),
            stalls: Arc::new(crate::stall::Stalls::new(
                limits.memory_budget,
                limits.flow_window,
            )),
            next_id: AtomicU64::new(1),
            abort: CancellationToken::new(),
            trust_changed: watch::channel(()).0,
        });
        state.update_ready();
        if let Some(grace) = cert_grace {
            state
                .trust
                .count_cert_grace(state.metrics.cert_grace_accepted.clone());
            // In force from the first handshake; `run` follows the mode.
            let on = *state.mode.borrow() == DrMode::On;
            state.trust.set_cert_grace(on.then_some(grace));
        }
        Ok(Self {
            state,
            quic,
            tls,
            gates: accept::Gates {
                quic_handshakes: Arc::new(Semaphore::new(limits.max_handshakes_inflight)),
                tls_handshakes: Arc::new(Semaphore::new(limits.max_handshakes_inflight)),
                handshake_slots: limits.max_handshakes_inflight,
                per_source: Arc::new(accept::PerSource::new(limits.max_handshakes_inflight)),
                client_tunnels: Arc::new(Semaphore::new(limits.max_tunnels)),
                connector_tunnels: Arc::new(Semaphore::new(accept::CONNECTOR_TUNNELS)),
                hellos: Arc::new(accept::Hellos::new(
                    limits.max_handshakes_inflight * accept::HELLOS_PER_HANDSHAKE,
                )),
            },
            cert_grace,
        })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// The bound TLS address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn state(&self) -> Arc<EdgeState> {
        Arc::clone(&self.state)
    }

    /// Serve until `drain` is cancelled, then let flows finish for up to
    /// `drain_timeout`, abort the rest and close.
    pub async fn run(self, drain: CancellationToken) -> Result<(), RunError> {
        let tracker = TaskTracker::new();
        let mut loops = tokio::task::JoinSet::new();
        // Certificates, CA and CRL are re-read when they change on disk.
        let st = Arc::clone(&self.state);
        let m = Arc::clone(&self.state.metrics);
        crate::trust::watch::spawn(Arc::clone(&self.state.trust), drain.clone(), m, move |_| {
            st.trust_changed.send_replace(());
        });
        if let Some(grace) = self.cert_grace {
            loops.spawn(follow_cert_grace(
                self.state.mode.clone(),
                Arc::clone(&self.state.trust),
                grace,
                drain.clone(),
            ));
        }
        if let Some(ep) = &self.quic {
            loops.spawn(accept::quic_loop(
                self.state(),
                ep.clone(),
                self.gates.clone(),
                tracker.clone(),
                drain.clone(),
            ));
        }
        if let Some((listener, acceptor)) = self.tls {
            loops.spawn(accept::tls_loop(
                Arc::clone(&self.state),
                listener,
                acceptor,
                self.gates.clone(),
                tracker.clone(),
                drain.clone(),
            ));
        }
        drain.cancelled().await;
        // Going away: the accept loops refuse new tunnels (QUIC) or stop
        // listening (TLS); every tunnel is told and closes as soon as it
        // carries no flow, so an edge without flows exits at once.
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
            ep.close(close_code::GOING_AWAY.into(), b"edge going away");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ep.wait_idle()).await;
        }
        loops.abort_all();
        while loops.join_next().await.is_some() {}
        info!("edge stopped");
        Ok(())
    }
}

/// `[dr] cert_grace` follows the DR mode: in force while it is `on`, off in
/// `test` and `off` (switching off also voids session tickets; see
/// `trust::Trust::set_cert_grace`).
async fn follow_cert_grace(
    mut mode: watch::Receiver<DrMode>,
    trust: Arc<Trust>,
    grace: std::time::Duration,
    drain: CancellationToken,
) {
    loop {
        let on = *mode.borrow_and_update() == DrMode::On;
        trust.set_cert_grace(on.then_some(grace));
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            _ = drain.cancelled() => return,
        }
    }
}

type TlsListener = (tokio::net::TcpListener, Arc<rustls::ServerConfig>);

/// Bind the QUIC endpoint and the TLS listener. When both ask for the same
/// address with port 0 (tests, the demo), they get one port number, as in a
/// deployment where both are on 443: the TCP port is taken first and the UDP
/// port of the same number tried, a few times over.
fn bind_listeners(
    quic_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    trust: &Arc<Trust>,
    limits: &Limits,
) -> Result<(Option<quinn::Endpoint>, Option<TlsListener>), BindError> {
    let bind_quic = |addr: SocketAddr| {
        quic::server_endpoint(addr, trust, limits)
            .map_err(|source| BindError::QuicListener { addr, source })
    };
    let bind_tls = |addr: SocketAddr| {
        crate::transport::tcp_listener(addr)
            .map(|l| (l, crate::transport::tls::server_config(trust)))
            .map_err(|source| BindError::Listener {
                kind: "TLS",
                addr,
                source,
            })
    };
    match (quic_addr, tls_addr) {
        (Some(q), Some(t)) if q == t && q.port() == 0 => {
            let mut last = None;
            for _ in 0..16 {
                let tls = bind_tls(t)?;
                let port = tls.0.local_addr()?.port();
                match bind_quic(SocketAddr::new(q.ip(), port)) {
                    Ok(ep) => return Ok((Some(ep), Some(tls))),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or(BindError::NoSharedPort))
        }
        _ => Ok((
            quic_addr.map(bind_quic).transpose()?,
            tls_addr.map(bind_tls).transpose()?,
        )),
    }
}
