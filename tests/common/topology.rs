//! The one topology builder: an app, an edge (DR from a fixed mode, a file
//! or a DNS server), connectors and clients, started from the parts of a
//! [`Rig`] with the options a test asks for, and waited on until ready.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat::config::{self, EdgeConfig};
use lifeboat::dr::{DrMode, Trigger};
use lifeboat::edge::EdgeState;
use lifeboat::metrics::Metrics;
use lifeboat::role_error::RunError;
use lifeboat::trust::Role;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    eventually, Ca, CertFiles, ClientHandle, DnsServer, EdgeSpec, Rig, ALICE, FOREIGN_TD, GROUP,
    TD, TRIGGER,
};

/// Where the edge's DR mode comes from.
#[derive(Debug, Clone)]
pub enum Dr {
    /// `static:on|test|off`.
    Static(DrMode),
    /// `file:PATH`, the file first holding this record text.
    File(String),
    /// `dns:_dr.example.test` asked of `nameserver` every second, with
    /// `extra` lines added to `[dr]`.
    Dns {
        nameserver: SocketAddr,
        extra: String,
    },
}

/// Which certificate a client presents.
#[derive(Debug, Clone)]
pub enum ClientCert {
    /// `client/<user>` from the deployment's CA.
    User(String),
    /// `client/eve` from another CA of the same trust domain (the client
    /// itself pins both CAs, so it trusts the edge and only the edge refuses).
    ForeignCa,
    /// `client/carol`, expired yesterday.
    Expired,
    /// `client/mallory`, listed in the CA's CRL (the builder revoked it and
    /// configured the edge's `[tls] crl`; see [`Builder::revoked_user`]).
    Revoked,
    /// The first connector's certificate, used by a client.
    ConnectorCert,
}

impl ClientCert {
    pub fn user(u: &str) -> Self {
        Self::User(u.into())
    }
}

/// Chooses what a [`Topology`] runs.
#[derive(Debug, Clone)]
pub struct Builder {
    dr: Dr,
    test_users: Vec<String>,
    connectors: usize,
    client: Option<ClientCert>,
    more_users: Vec<String>,
    segment_ports: Vec<u16>,
    crl: bool,
    revoked: Vec<String>,
    foreign_td_pinned: bool,
    access_log: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            dr: Dr::Static(DrMode::On),
            test_users: vec![ALICE.into()],
            connectors: 1,
            client: Some(ClientCert::user(ALICE)),
            more_users: Vec::new(),
            segment_ports: Vec::new(),
            crl: false,
            revoked: Vec::new(),
            foreign_td_pinned: false,
            access_log: false,
        }
    }
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dr(mut self, dr: Dr) -> Self {
        self.dr = dr;
        self
    }

    /// DR from a file trigger holding `text` (rewrite it with [`Topology::set_dr`]).
    pub fn dr_file(self, text: &str) -> Self {
        self.dr(Dr::File(text.into()))
    }

    /// DR from the TXT record [`TRIGGER`] that `dns` serves, polled every
    /// second; `extra_dr` is added to the edge's `[dr]`.
    pub fn dns(self, dns: &DnsServer, extra_dr: &str) -> Self {
        self.dr(Dr::Dns {
            nameserver: dns.addr,
            extra: extra_dr.into(),
        })
    }

    pub fn test_users(mut self, users: &[&str]) -> Self {
        self.test_users = users.iter().map(|u| (*u).to_string()).collect();
        self
    }

    /// How many connectors (all of group `dc1-dr`) run.
    pub fn connectors(mut self, n: usize) -> Self {
        self.connectors = n;
        self
    }

    /// The default client's certificate; `None` starts no client.
    pub fn client(mut self, cert: Option<ClientCert>) -> Self {
        self.client = cert;
        self
    }

    /// Another client, presenting `client/<user>` (see [`Topology::user`]).
    pub fn also_client(mut self, user: &str) -> Self {
        self.more_users.push(user.into());
        self
    }

    /// Another TCP port in the DR segment `payroll` (besides the app's).
    pub fn segment_port(mut self, port: u16) -> Self {
        self.segment_ports.push(port);
        self
    }

    /// Issue `client/<user>` and revoke it before the edge starts; turns on
    /// the edge's `[tls] crl`.
    pub fn revoked_user(mut self, user: &str) -> Self {
        self.revoked.push(user.into());
        self.crl = true;
        self
    }

    /// Configure the edge's `[tls] crl` (the CA's empty CRL from `pki init`).
    pub fn crl(mut self) -> Self {
        self.crl = true;
        self
    }

    /// Make a second CA, of trust domain [`FOREIGN_TD`], and append its
    /// certificate to the edge's pinned CA file.
    pub fn edge_pins_foreign_trust_domain(mut self) -> Self {
        self.foreign_td_pinned = true;
        self
    }

    pub fn access_log(mut self) -> Self {
        self.access_log = true;
        self
    }

    /// Start it all and wait until it is ready: every connector registered
    /// and every client's tunnel up (when those run and can come up).
    pub async fn start(self) -> Topology {
        let t = self.start_unready().await;
        t.wait_ready().await;
        t
    }

    /// Start it all without waiting for connectors or the client tunnels.
    pub async fn start_unready(mut self) -> Topology {
        if matches!(self.client, Some(ClientCert::Revoked))
            && !self.revoked.iter().any(|u| u == "mallory")
        {
            self = self.revoked_user("mallory");
        }
        let rig = Rig::new().await;
        let d = rig.dir.path().to_path_buf();
        let connector_certs: Vec<CertFiles> = (0..self.connectors.max(1))
            .map(|i| rig.connector_cert(i))
            .collect();
        for u in &self.revoked {
            let c = rig.ca.issue(Role::Client, u, None);
            rig.ca.revoke(&c);
        }
        let foreign_td = self
            .foreign_td_pinned
            .then(|| Ca::init(&d.join("foreign-td"), FOREIGN_TD));
        let mut edge_ca = rig.ca.pem();
        if let Some(f) = &foreign_td {
            edge_ca = d.join("edge-ca.pem");
            let mut both = std::fs::read(rig.ca.pem()).expect("read ca");
            both.extend(std::fs::read(f.pem()).expect("read foreign ca"));
            std::fs::write(&edge_ca, both).expect("write edge ca");
        }
        let dr_file = d.join("dr.txt");
        let edge_text = rig.edge_config(&EdgeSpec {
            ca: &edge_ca,
            crl: self.crl.then(|| rig.ca.crl()).as_deref(),
            listen: "quic = \"127.0.0.1:0\"",
            dr: &self.dr_lines(&dr_file),
            nameserver: match &self.dr {
                Dr::Dns { nameserver, .. } => Some(*nameserver),
                Dr::Static(_) | Dr::File(_) => None,
            },
            limits: "",
            access_log: self.access_log,
            ports: &self.ports(rig.app.port()),
        });
        if let Dr::File(_) = &self.dr {
            let cfg: EdgeConfig = config::from_text(&d.join("edge.toml"), &edge_text)
                .unwrap_or_else(|e| panic!("edge config: {e}\n{edge_text}"));
            assert_eq!(cfg.dr.trigger, Some(Trigger::File(dr_file.clone())));
        }
        let edge = rig.start_edge(&edge_text);
        let mut t = Topology {
            edge_quic: edge.quic.expect("edge QUIC address"),
            edge: edge.state,
            edge_mode: edge.mode,
            edge_metrics: edge.metrics,
            mode_wait: match self.dr {
                Dr::Dns { .. } => Duration::from_secs(10),
                Dr::Static(_) | Dr::File(_) => Duration::from_secs(5),
            },
            connectors: Vec::new(),
            connector_certs,
            client: None,
            client_user: None,
            more_clients: Vec::new(),
            foreign_td,
            dr_file,
            tasks: vec![("edge", edge.task)],
            rig,
        };
        for i in 0..self.connectors {
            let (m, task) = t.start_connector(i);
            t.connectors.push(m);
            t.tasks.push(("connector", task));
        }
        if let Some(cert) = self.client {
            if let ClientCert::User(u) = &cert {
                t.client_user = Some(u.clone());
            }
            t.client = Some(t.start_client(cert).await);
        }
        for u in self.more_users {
            let c = t.start_client(ClientCert::User(u.clone())).await;
            t.more_clients.push((u, c));
        }
        t
    }

    /// The body of the edge's `[dr]`; a file trigger's file is written.
    fn dr_lines(&self, dr_file: &std::path::Path) -> String {
        let trigger = match &self.dr {
            Dr::Static(m) => format!("static:{}", m.as_str()),
            Dr::File(text) => {
                std::fs::write(dr_file, text).expect("write DR file");
                format!("file:{}", dr_file.display())
            }
            Dr::Dns { .. } => format!("dns:{TRIGGER}"),
        };
        let users = self
            .test_users
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut lines = format!("trigger = {trigger:?}\ntest_users = [{users}]\n");
        if let Dr::Dns { extra, .. } = &self.dr {
            lines.push_str(&format!("poll_interval = \"1s\"\n{extra}\n"));
        }
        lines
    }

    /// The segments' `tcp_ports`: the app's port and the extra ones.
    fn ports(&self, app_port: u16) -> String {
        let mut ports = vec![app_port.to_string()];
        ports.extend(self.segment_ports.iter().map(u16::to_string));
        ports
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A running loopback topology; the [`Rig`] parts it was built from are
/// reachable through it (`t.dir`, `t.ca`, `t.app`, ...).
pub struct Topology {
    pub foreign_td: Option<Ca>,
    pub edge_quic: SocketAddr,
    pub edge: Arc<EdgeState>,
    pub edge_mode: watch::Receiver<DrMode>,
    pub edge_metrics: Arc<Metrics>,
    pub connectors: Vec<Arc<Metrics>>,
    pub connector_certs: Vec<CertFiles>,
    pub client: Option<ClientHandle>,
    pub dr_file: PathBuf,
    /// The default client's user, when it presents `client/<user>`.
    client_user: Option<String>,
    /// Clients added by [`Builder::also_client`], by user.
    more_clients: Vec<(String, ClientHandle)>,
    /// How long [`Topology::wait_mode`] waits.
    mode_wait: Duration,
    tasks: Vec<(&'static str, JoinHandle<Result<(), RunError>>)>,
    rig: Rig,
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

    /// Wait until every connector is registered and every client's tunnel is up.
    pub async fn wait_ready(&self) {
        self.wait_connectors().await;
        let want = self.clients().count() as i64;
        for c in self.clients() {
            eventually(
                "client tunnel up at both ends",
                Duration::from_secs(10),
                || c.tunnels() == 1 && self.edge_tunnels("client") == want,
            )
            .await;
        }
    }

    /// Wait until every connector is registered at the edge.
    pub async fn wait_connectors(&self) {
        let want = self.connectors.len() as i64;
        eventually(
            &format!("{want} connector(s) registered at the edge"),
            Duration::from_secs(10),
            || self.connectors_connected() == want,
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
    fn start_connector(&self, i: usize) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
        self.start_connector_with(&self.connector_certs[i], &format!("connector{i}"))
    }

    /// Start another connector presenting `cert`; `name` names its config file.
    pub fn start_connector_with(
        &self,
        cert: &CertFiles,
        name: &str,
    ) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
        let text = self.connector_config(cert, &[self.edge_quic], "quic", "");
        self.spawn_connector(name, &text)
    }

    /// The certificate files (and the CA file it pins) for a client cert choice.
    pub fn client_files(&self, cert: &ClientCert) -> (CertFiles, PathBuf) {
        let d = self.dir.path();
        match cert {
            ClientCert::User(u) => {
                let f = CertFiles {
                    cert: self.ca.dir.join(format!("{u}.pem")),
                    key: self.ca.dir.join(format!("{u}.key")),
                };
                if !f.cert.exists() {
                    return (self.ca.issue(Role::Client, u, None), self.ca.pem());
                }
                (f, self.ca.pem())
            }
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
        }
    }

    /// Start a client presenting `cert`, with SOCKS5 and HTTP CONNECT
    /// listeners; does not wait for its tunnel.
    pub async fn start_client(&self, cert: ClientCert) -> ClientHandle {
        let (files, ca) = self.client_files(&cert);
        let text = self.client_config(&files, &ca, &[self.edge_quic], "quic", "");
        self.spawn_client(&text).await
    }

    /// Drain every role and check each stopped cleanly within its drain timeout.
    pub async fn shutdown(mut self) {
        self.rig.drain().cancel();
        let tasks = std::mem::take(&mut self.tasks);
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
