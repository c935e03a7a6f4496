//! The DR App Connector: dials out to every edge address and keeps those
//! tunnels up (jittered exponential backoff, never gives up); for each flow
//! an edge opens, resolves and connects to the application and splices.

mod flow;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::{ConnectorConfig, DnsSection, Limits, TransportChoice};
use crate::metrics::Metrics;
use crate::role_error::{BindError, RunError};
use crate::stall::Stalls;
use crate::transport::dial::{Dialed, Dialer, HEAD_START};
use crate::transport::keeper::{Ended, Keeper, TunnelRole};
use crate::transport::resolve::EdgeWatch;
use crate::transport::{close_code, quic, tls, EdgeAddr, ALPN_CONNECTOR};

/// Background retries of a connector grow to this: an edge restarted
/// during an outage is rejoined within a couple of seconds (connectors are
/// few; a short ceiling costs the edge little).
const RETRY_CEILING: Duration = Duration::from_secs(2);
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
    pub fn bind(
        cfg: ConnectorConfig,
        file: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BindError> {
        let trust =
            Trust::load(cfg.tls.files(), &cfg.trust_domain).map_err(BindError::trust(file))?;
        let id = trust.local_id();
        if id.role != crate::trust::Role::Connector {
            return Err(BindError::NotAConnector {
                file: file.to_path_buf(),
                id,
            });
        }
        let bind = if cfg.edges.iter().any(|e| e.starts_with('[')) {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = quic::client_endpoint(
            bind,
            &trust,
            ALPN_CONNECTOR,
            &cfg.limits,
            cfg.limits.max_flows_per_connector_tunnel,
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
    pub async fn run(self, drain: CancellationToken) -> Result<(), RunError> {
        let tracker = TaskTracker::new();
        // Certificates, CA and CRL are re-read when they change on disk.
        let (trust, m) = (&self.state.trust, &self.state.metrics);
        crate::trust::watch::spawn(Arc::clone(trust), drain.clone(), Arc::clone(m), |_| {});
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
        // Let the CONNECTION_CLOSE go out: the edge stops counting us now.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.dialer.quic.wait_idle()).await;
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
    let keeper = Keeper {
        dialer,
        metrics: Arc::clone(&state.metrics),
        backoff: Backoff::new(Duration::from_millis(100), RETRY_CEILING),
        demand: None,
        stop: drain,
    };
    keeper
        .run(ConnectorRole {
            state,
            edge,
            tracker,
        })
        .await;
}

/// The connector's part of the keeper: one tunnel to one edge address,
/// serving the flows the edge opens.
struct ConnectorRole {
    state: Arc<ConnectorState>,
    edge: EdgeAddr,
    tracker: TaskTracker,
}

impl TunnelRole for ConnectorRole {
    const NAME: &'static str = "connector";
    const UNREACHABLE: &'static str = "cannot reach edge";

    fn targets(&mut self, _lost: Option<SocketAddr>) -> Vec<EdgeAddr> {
        vec![self.edge.clone()]
    }

    fn targets_changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    fn down(&mut self, _why: &str, _word: &'static str) {}

    fn serve(
        &mut self,
        tunnel: Dialed,
        _edge: &EdgeAddr,
        moving: CancellationToken,
    ) -> impl Future<Output = Ended> + Send {
        let (state, tracker) = (Arc::clone(&self.state), self.tracker.clone());
        async move {
            let stalls = tunnel_stalls(&state.limits);
            let limits = state.limits.clone();
            let flow = move |side| {
                flow::serve(Arc::clone(&state), side, Arc::clone(&stalls))
                    .instrument(tracing::debug_span!("flow"))
            };
            tunnel.serve_flows(&limits, &tracker, moving, flow).await
        }
    }
}

/// The stalled flows of one tunnel to an edge, bounded as the edge bounds
/// its own (`crate::stall`).
fn tunnel_stalls(limits: &Limits) -> Arc<Stalls> {
    Arc::new(Stalls::new(
        limits.effective_tunnel_window(),
        limits.flow_window,
    ))
}
