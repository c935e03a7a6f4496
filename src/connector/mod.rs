//! The DR App Connector: dials out to every edge address and keeps those
//! tunnels up (jittered exponential backoff, never gives up); for each flow
//! an edge opens, resolves and connects to the application and splices.

mod flow;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::{ConnectorConfig, Limits};
use crate::metrics::Metrics;
use crate::transport::{close_code, quic, resolve_edges, EdgeAddr, TransportKind, ALPN_CONNECTOR};
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
    endpoint: quinn::Endpoint,
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
        let bind: std::net::SocketAddr = if cfg.edges.iter().any(|e| e.starts_with('[')) {
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
        let (local, ca) = trust.expiry_unix();
        metrics
            .cert_expiry
            .with_label_values(&["local"])
            .set(local as f64);
        metrics
            .cert_expiry
            .with_label_values(&["ca"])
            .set(ca as f64);
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
            endpoint,
        })
    }

    pub fn state(&self) -> Arc<ConnectorState> {
        Arc::clone(&self.state)
    }

    /// Keep a tunnel to every edge address until `drain`; then let flows
    /// finish for up to `drain_timeout`.
    pub async fn run(self, drain: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let (addrs, errs) = resolve_edges(&self.edges).await;
        for e in errs {
            warn!("edge address skipped: {e}");
        }
        if addrs.is_empty() {
            anyhow::bail!("no edge address resolved from {:?}", self.edges);
        }
        for edge in addrs {
            let span = tracing::info_span!("tunnel", transport = "quic", edge = %edge.addr);
            tracker.spawn(
                keep_tunnel(
                    Arc::clone(&self.state),
                    self.endpoint.clone(),
                    edge,
                    tracker.clone(),
                    drain.clone(),
                )
                .instrument(span),
            );
        }
        drain.cancelled().await;
        tracker.close();
        let timeout = self.state.limits.drain_timeout;
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            warn!("drain deadline passed; aborting remaining flows");
            self.state.abort.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tracker.wait()).await;
        }
        self.endpoint
            .close(close_code::DRAINING.into(), b"connector shutting down");
        info!("connector stopped");
        Ok(())
    }
}

/// Dial one edge address forever (until drain), serving flows while up.
async fn keep_tunnel(
    state: Arc<ConnectorState>,
    endpoint: quinn::Endpoint,
    edge: EdgeAddr,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let mut backoff = Backoff::tunnel();
    let mut last_error: Option<String> = None;
    let tunnels = state
        .metrics
        .tunnels_active
        .with_label_values(&["edge", TransportKind::Quic.as_str()]);
    while !drain.is_cancelled() {
        let attempt = quic::connect(
            &endpoint,
            edge.addr,
            &edge.server_name,
            state.limits.handshake_timeout,
        );
        let result = tokio::select! {
            r = attempt => r,
            _ = drain.cancelled() => break,
        };
        match result {
            Ok(conn) => {
                state
                    .metrics
                    .handshakes
                    .with_label_values(&["edge", "quic", "ok"])
                    .inc();
                backoff.reset();
                last_error = None;
                tunnels.inc();
                let peer = quic::peer_id(&conn)
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                info!(peer, "edge tunnel up");
                let why = serve_tunnel(&state, &conn, &tracker, &drain).await;
                tunnels.dec();
                info!(peer, "edge tunnel down: {why}");
                if drain.is_cancelled() {
                    break;
                }
            }
            Err(e) => {
                state
                    .metrics
                    .handshakes
                    .with_label_values(&["edge", "quic", e.reason()])
                    .inc();
                let msg = e.to_string();
                // Logged once per change of condition, not on every retry.
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!("cannot reach edge: {msg}; retrying with backoff");
                    last_error = Some(msg);
                }
            }
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = drain.cancelled() => break,
        }
    }
}

/// Accept flows on one tunnel until it closes or drain begins.
async fn serve_tunnel(
    state: &Arc<ConnectorState>,
    conn: &quinn::Connection,
    tracker: &TaskTracker,
    drain: &CancellationToken,
) -> String {
    loop {
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((send, recv)) => {
                    tracker.spawn(flow::serve(Arc::clone(state), send, recv).instrument(tracing::debug_span!("flow")));
                }
                Err(e) => return e.to_string(),
            },
            _ = drain.cancelled() => return "draining".into(),
        }
    }
}
