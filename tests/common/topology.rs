//! A running topology made by the [`Builder`](super::Builder): its edge,
//! connectors and clients, waits until they are ready, the edge's counters,
//! and a clean shutdown.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat::dr::DrMode;
use lifeboat::edge::EdgeState;
use lifeboat::metrics::Metrics;
use lifeboat::role_error::RunError;
use lifeboat::trust::Role;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    eventually, tunnels_of, Ca, CertFiles, ClientCert, ClientHandle, Rig, RigEdge, Transport,
    GROUP, TD,
};

/// A running loopback topology; the [`Rig`] parts it was built from are
/// reachable through it (`t.dir`, `t.ca`, `t.app`, ...).
pub struct Topology {
    pub foreign_td: Option<Ca>,
    /// The first edge's listeners (see [`Topology::edge_quic`]).
    pub(super) quic: Option<SocketAddr>,
    pub(super) tls: Option<SocketAddr>,
    /// The first edge's config file (for [`EdgeState::reload`]).
    pub edge_config: PathBuf,
    /// What connectors and clients dial with.
    pub transport: Transport,
    /// Added to each connector's `[limits]`.
    pub(super) connector_limits: String,
    /// The address of each edge they dial, the first edge's first.
    pub dial: Vec<SocketAddr>,
    /// The edges after the first (see [`Builder::edges`](super::Builder::edges)).
    pub more_edges: Vec<RigEdge>,
    /// The first edge.
    pub edge: Arc<EdgeState>,
    pub edge_mode: watch::Receiver<DrMode>,
    pub edge_metrics: Arc<Metrics>,
    pub connectors: Vec<Arc<Metrics>>,
    pub connector_certs: Vec<CertFiles>,
    pub client: Option<ClientHandle>,
    pub dr_file: PathBuf,
    /// The default client's user, when it presents `client/<user>`.
    pub(super) client_user: Option<String>,
    /// Clients added by [`Builder::also_client`], by user.
    pub(super) more_clients: Vec<(String, ClientHandle)>,
    /// How long [`Topology::wait_mode`] waits.
    pub(super) mode_wait: Duration,
    pub(super) tasks: Vec<(&'static str, JoinHandle<Result<(), RunError>>)>,
    pub(super) rig: Rig,
}

impl Deref for Topology {
    type Target = Rig;

    fn deref(&self) -> &Rig {
        &self.rig
    }
}
impl Topology {
    pub fn app_port(&self) -> u16 {
        self.app.port()
    }

    /// The first edge's QUIC address (panics if it has no QUIC listener).
    pub fn edge_quic(&self) -> SocketAddr {
        self.quic
            .expect("this topology's edge has no QUIC listener")
    }

    /// `client/<name>` of the deployment's CA (issued on first use); see
    /// [`Topology::user`] for the client of a user.
    pub fn user_cert(&self, name: &str) -> CertFiles {
        self.rig.user(name)
    }

    /// The first edge's TLS address (panics if it has no TLS listener).
    pub fn edge_tls(&self) -> SocketAddr {
        self.tls.expect("this topology's edge has no TLS listener")
    }

    /// The default client (panics if the builder started none).
    pub fn client(&self) -> &ClientHandle {
        self.client.as_ref().expect("this topology runs no client")
    }

    pub fn socks(&self) -> SocketAddr {
        self.client().socks
    }

    pub fn http(&self) -> SocketAddr {
        self.client().http
    }

    /// Rewrite the DR trigger file (the edge re-reads it every second).
    pub fn set_dr(&self, text: &str) {
        std::fs::write(&self.dr_file, text).expect("write DR file");
    }

    /// A client of this topology by its user: the default client or one
    /// added by [`Builder::also_client`].
    pub fn user(&self, name: &str) -> &ClientHandle {
        if self.client_user.as_deref() == Some(name) {
            return self.client();
        }
        self.more_clients
            .iter()
            .find(|(u, _)| u == name)
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("this topology runs no client of user {name}"))
    }

    /// The edge's DR mode now.
    pub fn mode(&self) -> DrMode {
        *self.edge_mode.borrow()
    }

    /// Wait until the edge's DR mode is `mode` (5 s; 10 s for a DNS trigger).
    pub async fn wait_mode(&self, mode: DrMode) {
        let rx = self.edge_mode.clone();
        eventually(&format!("edge DR mode {mode}"), self.mode_wait, || {
            *rx.borrow() == mode
        })
        .await;
    }

    /// `dr_transitions_total{from,to}` at the edge.
    pub fn transitions(&self, from: DrMode, to: DrMode) -> u64 {
        self.edge_metrics
            .dr_transitions
            .with_label_values(&[from.as_str(), to.as_str()])
            .get()
    }

    /// Every client of this topology, the default one first.
    fn clients(&self) -> impl Iterator<Item = &ClientHandle> {
        self.client
            .iter()
            .chain(self.more_clients.iter().map(|(_, c)| c))
    }

    /// Every edge's metrics, the first edge's first.
    fn edge_metrics_all(&self) -> impl Iterator<Item = &Metrics> {
        std::iter::once(&*self.edge_metrics).chain(self.more_edges.iter().map(|e| &*e.metrics))
    }

    /// Wait until every connector is registered and every client's tunnel is up.
    pub async fn wait_ready(&self) {
        self.wait_connectors().await;
        let want = self.clients().count() as i64;
        let at_edges = || {
            self.edge_metrics_all()
                .map(|m| tunnels_up(m, "client"))
                .sum::<i64>()
        };
        for c in self.clients() {
            eventually(
                "client tunnel up at both ends",
                Duration::from_secs(10),
                || tunnels_up(&c.metrics, "edge") == 1 && at_edges() == want,
            )
            .await;
        }
    }

    /// Wait until every connector is registered at every edge.
    pub async fn wait_connectors(&self) {
        let want = self.connectors.len() as i64;
        eventually(
            &format!("{want} connector(s) registered at every edge"),
            Duration::from_secs(10),
            || {
                self.edge_metrics_all()
                    .all(|m| m.connectors_connected.with_label_values(&[GROUP]).get() == want)
            },
        )
        .await;
    }

    /// `connectors_connected{group="dc1-dr"}` at the edge.
    pub fn connectors_connected(&self) -> i64 {
        self.edge_metrics
            .connectors_connected
            .with_label_values(&[GROUP])
            .get()
    }

    /// `tunnels_active{role,transport="quic"}` at the edge.
    pub fn edge_tunnels(&self, role: &str) -> i64 {
        self.edge_metrics
            .tunnels_active
            .with_label_values(&[role, "quic"])
            .get()
    }

    /// `handshakes_total{role,transport="quic",result}` at the edge.
    pub fn edge_handshakes(&self, role: &str, result: &str) -> u64 {
        self.edge_metrics
            .handshakes
            .with_label_values(&[role, "quic", result])
            .get()
    }

    /// Every non-zero `handshakes_total` series at the edge, for failure messages.
    pub fn edge_handshakes_nonzero(&self) -> Vec<String> {
        let mut out = Vec::new();
        for role in ["client", "connector"] {
            for r in lifeboat::metrics::HANDSHAKE_RESULTS {
                let n = self.edge_handshakes(role, r);
                if n > 0 {
                    out.push(format!("{role}/{r}={n}"));
                }
            }
        }
        out
    }

    /// `flows_total{segment,result}` at the edge.
    pub fn edge_flows(&self, segment: &str, result: &str) -> u64 {
        self.edge_metrics
            .flows_total
            .with_label_values(&[segment, result])
            .get()
    }

    /// `flows_closed_total{reason}` at the edge.
    pub fn edge_closed(&self, reason: &str) -> u64 {
        self.edge_metrics
            .flows_closed
            .with_label_values(&[reason])
            .get()
    }

    /// Start connector `i` (certificate `connector<i>`, group `dc1-dr`).
    pub(super) fn start_connector(
        &self,
        i: usize,
    ) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
        self.start_connector_with(&self.connector_certs[i], &format!("connector{i}"))
    }

    /// Start another connector presenting `cert`; `name` names its config file.
    pub fn start_connector_with(
        &self,
        cert: &CertFiles,
        name: &str,
    ) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
        self.start_connector_over(cert, name, self.transport)
    }

    /// [`Topology::start_connector_with`] dialling with `transport` instead
    /// (see [`Topology::start_client_over`]).
    pub fn start_connector_over(
        &self,
        cert: &CertFiles,
        name: &str,
        transport: Transport,
    ) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
        let text = self.connector_config(
            cert,
            &self.dial_over(transport),
            transport.as_str(),
            &self.connector_limits,
        );
        self.spawn_connector(name, &text)
    }

    /// The addresses an agent dialling with `transport` lists: every edge's
    /// on the topology's own transport, else the first edge's QUIC or TLS
    /// address (`auto`: QUIC's if it has one).
    fn dial_over(&self, transport: Transport) -> Vec<SocketAddr> {
        if transport == self.transport {
            return self.dial.clone();
        }
        let addr = match transport {
            Transport::Quic => self.quic,
            Transport::Tls => self.tls,
            Transport::Auto => self.quic.or(self.tls),
        };
        vec![addr.unwrap_or_else(|| panic!("the edge has no listener for {transport:?}"))]
    }

    /// The certificate files (and the CA file it pins) for a client cert choice.
    pub fn client_files(&self, cert: &ClientCert) -> (CertFiles, PathBuf) {
        let d = self.dir.path();
        match cert {
            ClientCert::User(u) => (self.rig.user(u), self.ca.pem()),
            ClientCert::ForeignCa => {
                let impostor = Ca::init(&d.join("impostor"), TD);
                let f = impostor.issue(Role::Client, "eve", None);
                let pinned = d.join("eve-ca.pem");
                let mut both = std::fs::read(impostor.pem()).expect("read ca");
                both.extend(std::fs::read(self.ca.pem()).expect("read ca"));
                std::fs::write(&pinned, both).expect("write ca");
                (f, pinned)
            }
            ClientCert::Expired => (self.ca.issue_expired("carol"), self.ca.pem()),
            ClientCert::Revoked => (
                CertFiles {
                    cert: self.ca.dir.join("mallory.pem"),
                    key: self.ca.dir.join("mallory.key"),
                },
                self.ca.pem(),
            ),
            ClientCert::ConnectorCert => (self.connector_certs[0].clone(), self.ca.pem()),
            ClientCert::Files(f) => (f.clone(), self.ca.pem()),
        }
    }

    /// Start a client presenting `cert`, with SOCKS5 and HTTP CONNECT
    /// listeners; does not wait for its tunnel.
    pub async fn start_client(&self, cert: ClientCert) -> ClientHandle {
        self.start_client_over(cert, self.transport).await
    }

    /// [`Topology::start_client`] dialling with `transport` instead (the
    /// first edge's QUIC or TLS address; `auto` dials QUIC's if it has one).
    pub async fn start_client_over(&self, cert: ClientCert, transport: Transport) -> ClientHandle {
        let (files, ca) = self.client_files(&cert);
        let dial = self.dial_over(transport);
        let text = self.client_config(&files, &ca, &dial, transport.as_str(), "");
        self.spawn_client(&text).await
    }

    /// A client of `user` dialling with `transport`, with a port-forward
    /// listener to each of `to` (`host:port`), in [`ClientHandle::forwards`].
    pub async fn start_forwarding_client(
        &self,
        user: &str,
        transport: Transport,
        to: &[&str],
    ) -> ClientHandle {
        let (files, ca) = self.client_files(&ClientCert::User(user.into()));
        let dial = self.dial_over(transport);
        let text = self.forwarding_client_config(&files, &ca, &dial, transport.as_str(), to);
        self.spawn_client(&text).await
    }

    /// Drain every role and check each stopped cleanly within its drain timeout.
    pub async fn shutdown(mut self) {
        self.rig.drain().cancel();
        let mut tasks = std::mem::take(&mut self.tasks);
        for e in std::mem::take(&mut self.more_edges) {
            tasks.push(("edge", e.task));
        }
        let client = self.client.take();
        for (role, t) in tasks {
            let r = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap_or_else(|_| panic!("{role} did not stop within 10 s of drain"));
            r.expect("task panicked")
                .unwrap_or_else(|e| panic!("{role} failed: {e:#}"));
        }
        if let Some(c) = client {
            tokio::time::timeout(Duration::from_secs(10), c.task)
                .await
                .expect("client did not stop within 10 s of drain")
                .expect("task panicked")
                .expect("client failed");
        }
    }
}

/// `tunnels_active{role}` of `m` over both transports.
fn tunnels_up(m: &Metrics, role: &str) -> i64 {
    tunnels_of(m, role, "quic") + tunnels_of(m, role, "tls")
}
