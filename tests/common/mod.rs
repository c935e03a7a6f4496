//! Shared harness for the integration tests: a whole DR topology (app, edge,
//! connectors, clients) on 127.0.0.1 with port 0 everywhere, certificates
//! from `lifeboat::pki` in a tempdir, configs written as TOML text and
//! loaded with `lifeboat::config::from_text`, each role with its own
//! `Metrics` so tests assert on counters.
//!
//! Start one with [`Builder`]; wait on conditions with [`eventually`], never
//! bare sleeps. Everything stops by itself: dropping a [`Topology`] cancels
//! its drain token, every role bounds its drain by `drain_timeout`, and the
//! test's runtime ends the rest.
#![allow(dead_code)] // each test binary uses a different part of the harness

#[path = "../common_proc/mod.rs"]
mod proc;
#[allow(unused_imports)] // not every test binary spawns processes
pub use proc::{get as admin_get, Proc, BIN};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat::client::{Client, ListenerKind};
use lifeboat::config::{self, ClientConfig, ConnectorConfig, EdgeConfig};
use lifeboat::connector::Connector;
use lifeboat::dr::{DrMode, Trigger};
use lifeboat::edge::{Edge, EdgeState};
use lifeboat::metrics::Metrics;
use lifeboat::pki::{self, IssueOptions};
use lifeboat::role_error::RunError;
use lifeboat::trust::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The deployment's trust domain.
pub const TD: &str = "dr.lifeboat.test";
/// Another deployment's trust domain.
pub const FOREIGN_TD: &str = "other.example";
/// The DR segment's exact name.
pub const DR_HOST: &str = "payroll.corp.example";
/// A name under the DR segment's wildcard `*.hr.corp.example`.
pub const WILDCARD_HOST: &str = "benefits.hr.corp.example";
/// A name of the segment that is not designated for DR (`dr = false`).
pub const NON_DR_HOST: &str = "wiki.corp.example";
/// A name in no segment at all.
pub const UNKNOWN_HOST: &str = "nowhere.corp.example";
/// The connector group every harness connector belongs to.
pub const GROUP: &str = "dc1-dr";
/// Test users the default edge config lists in `[dr] test_users`.
pub const ALICE: &str = "alice";
pub const BOB: &str = "bob";

/// [`eventually`] for a condition that has to await (a request).
pub async fn eventually_async<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// Poll `cond` every 10 ms until it holds; panic naming `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TOML basic string holding `p`.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA directory made by `lifeboat::pki::init`.
#[derive(Debug, Clone)]
pub struct Ca {
    pub dir: PathBuf,
    pub trust_domain: String,
}

impl Ca {
    pub fn init(dir: &Path, trust_domain: &str) -> Self {
        pki::init(dir, trust_domain, 2).expect("pki init");
        Self {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.into(),
        }
    }

    pub fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn crl(&self) -> PathBuf {
        self.dir.join("ca.crl")
    }

    fn options(&self, role: Role, name: &str, group: Option<&str>) -> IssueOptions {
        IssueOptions {
            dir: self.dir.clone(),
            role,
            name: name.into(),
            group: group.map(Into::into),
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("literal")],
            days: 2,
            not_before: None,
            not_after: None,
        }
    }

    fn write(&self, opts: &IssueOptions) -> CertFiles {
        let (cert, key) = pki::issue(opts).expect("pki issue");
        CertFiles { cert, key }
    }

    /// A certificate valid now for `role`/`name` (`group` for connectors).
    pub fn issue(&self, role: Role, name: &str, group: Option<&str>) -> CertFiles {
        self.write(&self.options(role, name, group))
    }

    /// A client certificate that expired yesterday.
    pub fn issue_expired(&self, name: &str) -> CertFiles {
        self.issue_expired_as(Role::Client, name, None)
    }

    /// A client certificate valid from an hour ago until `secs` from now.
    pub fn issue_expiring_in(&self, name: &str, secs: i64) -> CertFiles {
        let now = time::OffsetDateTime::now_utc();
        let mut o = self.options(Role::Client, name, None);
        o.not_before = Some(now - time::Duration::hours(1));
        o.not_after = Some(now + time::Duration::seconds(secs));
        self.write(&o)
    }

    /// A certificate for `role`/`name` (`group` for connectors) that expired yesterday.
    pub fn issue_expired_as(&self, role: Role, name: &str, group: Option<&str>) -> CertFiles {
        let now = time::OffsetDateTime::now_utc();
        let mut o = self.options(role, name, group);
        o.not_before = Some(now - time::Duration::days(3));
        o.not_after = Some(now - time::Duration::days(1));
        self.write(&o)
    }

    /// Add `cert` to this CA's CRL.
    pub fn revoke(&self, cert: &CertFiles) {
        pki::revoke(&self.dir, &cert.cert).expect("pki revoke");
    }
}

/// Where the edge's DR mode comes from.
#[derive(Debug, Clone)]
pub enum Dr {
    /// `static:on|test|off`.
    Static(DrMode),
    /// `file:PATH`, the file first holding this record text.
    File(String),
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
    /// and the client's tunnel up (when those run and can come up).
    pub async fn start(self) -> Topology {
        let t = self.start_unready().await;
        t.wait_ready().await;
        t
    }

    /// Start it all without waiting for connectors or the client tunnel.
    pub async fn start_unready(mut self) -> Topology {
        if matches!(self.client, Some(ClientCert::Revoked))
            && !self.revoked.iter().any(|u| u == "mallory")
        {
            self = self.revoked_user("mallory");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let ca = Ca::init(&d.join("pki"), TD);
        let edge_cert = ca.issue(Role::Edge, "edge1", None);
        let connector_certs: Vec<CertFiles> = (0..self.connectors.max(1))
            .map(|i| ca.issue(Role::Connector, &format!("connector{i}"), Some(GROUP)))
            .collect();
        for u in &self.revoked {
            let c = ca.issue(Role::Client, u, None);
            ca.revoke(&c);
        }
        let foreign_td = self
            .foreign_td_pinned
            .then(|| Ca::init(&d.join("foreign-td"), FOREIGN_TD));
        let mut edge_ca = ca.pem();
        if let Some(f) = &foreign_td {
            edge_ca = d.join("edge-ca.pem");
            let mut both = std::fs::read(ca.pem()).expect("read ca");
            both.extend(std::fs::read(f.pem()).expect("read foreign ca"));
            std::fs::write(&edge_ca, both).expect("write edge ca");
        }

        let app = lifeboat::demo::app::spawn("127.0.0.1:0".parse().expect("literal"), "hello")
            .await
            .expect("app");
        let drain = CancellationToken::new();

        // DR trigger.
        let dr_file = d.join("dr.txt");
        let trigger = match &self.dr {
            Dr::Static(m) => format!("static:{}", m.as_str()),
            Dr::File(text) => {
                std::fs::write(&dr_file, text).expect("write DR file");
                format!("file:{}", dr_file.display())
            }
        };

        // Edge.
        let mut ports = vec![app.port().to_string()];
        ports.extend(self.segment_ports.iter().map(u16::to_string));
        let ports = ports
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let users = self
            .test_users
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut tls = format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_path(&edge_ca),
            toml_path(&edge_cert.cert),
            toml_path(&edge_cert.key)
        );
        if self.crl {
            let _ = writeln!(tls, "crl = {}", toml_path(&ca.crl()));
        }
        let edge_text = format!(
            r#"trust_domain = "{TD}"

[tls]
{tls}
[listen]
quic = "127.0.0.1:0"

[dr]
trigger = {trigger:?}
test_users = [{users}]

[limits]
{LIMITS}
[log]
access = {access}

[[connector_group]]
name = "{GROUP}"
dr = true

[[server_group]]
name = "dc1"
connector_groups = ["{GROUP}"]

[[segment]]
name = "payroll"
dr = true
domains = ["{DR_HOST}", "*.hr.corp.example"]
tcp_ports = [{ports}]
server_groups = ["dc1"]

[[segment]]
name = "wiki"
dr = false
domains = ["{NON_DR_HOST}"]
tcp_ports = [{ports}]
server_groups = ["dc1"]
"#,
            access = self.access_log,
        );
        let edge_path = d.join("edge.toml");
        std::fs::write(&edge_path, &edge_text).expect("write edge.toml");
        let edge_cfg: EdgeConfig = config::from_text(&edge_path, &edge_text)
            .unwrap_or_else(|e| panic!("edge config: {e}\n{edge_text}"));
        let edge_metrics = Arc::new(Metrics::new("edge"));
        let mode = lifeboat::dr::trigger::start(
            edge_cfg.dr.trigger.as_ref(),
            Arc::clone(&edge_metrics),
            drain.clone(),
        )
        .expect("DR trigger");
        if let Dr::File(_) = &self.dr {
            assert_eq!(edge_cfg.dr.trigger, Some(Trigger::File(dr_file.clone())));
        }
        let edge = Edge::bind(
            edge_cfg,
            &edge_path,
            &edge_text,
            mode.clone(),
            Arc::clone(&edge_metrics),
        )
        .expect("edge bind");
        let edge_quic = edge.quic_addr().expect("edge QUIC address");
        let edge_state = edge.state();
        let mut tasks = vec![("edge", tokio::spawn(edge.run(drain.clone())))];

        let mut t = Topology {
            dir,
            ca,
            foreign_td,
            app,
            edge_quic,
            edge: edge_state,
            edge_mode: mode,
            edge_metrics,
            connectors: Vec::new(),
            connector_certs,
            client: None,
            dr_file,
            drain,
            tasks: Vec::new(),
        };
        for i in 0..self.connectors {
            let (m, task) = t.start_connector(i);
            t.connectors.push(m);
            tasks.push(("connector", task));
        }
        t.tasks = tasks;
        if let Some(cert) = self.client {
            t.client = Some(t.start_client(cert).await);
        }
        t
    }
}

/// `[limits]` of every role: short enough for tests, long enough for 2 cores.
const LIMITS: &str = r#"handshake_timeout = "5s"
connect_timeout = "3s"
drain_timeout = "2s"
"#;

/// A running client.
pub struct ClientHandle {
    pub socks: SocketAddr,
    pub http: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl ClientHandle {
    /// `tunnels_active{role="edge",transport="quic"}` of this client.
    pub fn tunnels(&self) -> i64 {
        self.metrics
            .tunnels_active
            .with_label_values(&["edge", "quic"])
            .get()
    }
}

/// A running loopback topology.
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub foreign_td: Option<Ca>,
    pub app: SocketAddr,
    pub edge_quic: SocketAddr,
    pub edge: Arc<EdgeState>,
    pub edge_mode: watch::Receiver<DrMode>,
    pub edge_metrics: Arc<Metrics>,
    pub connectors: Vec<Arc<Metrics>>,
    pub connector_certs: Vec<CertFiles>,
    pub client: Option<ClientHandle>,
    pub dr_file: PathBuf,
    drain: CancellationToken,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<Result<(), RunError>>)>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.drain.cancel();
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

    /// Wait until the edge's DR mode is `mode`.
    pub async fn wait_mode(&self, mode: DrMode) {
        let rx = self.edge_mode.clone();
        eventually(
            &format!("edge DR mode {mode}"),
            Duration::from_secs(5),
            || *rx.borrow() == mode,
        )
        .await;
    }

    /// Wait until every connector is registered and the client tunnel is up.
    pub async fn wait_ready(&self) {
        self.wait_connectors().await;
        if let Some(c) = &self.client {
            eventually(
                "client tunnel up at both ends",
                Duration::from_secs(10),
                || c.tunnels() == 1 && self.edge_tunnels("client") == 1,
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
    fn start_connector(
        &self,
        i: usize,
    ) -> (Arc<Metrics>, tokio::task::JoinHandle<Result<(), RunError>>) {
        self.start_connector_with(&self.connector_certs[i], &format!("connector{i}"))
    }

    /// Start another connector presenting `cert`; `name` names its config file.
    pub fn start_connector_with(
        &self,
        cert: &CertFiles,
        name: &str,
    ) -> (Arc<Metrics>, tokio::task::JoinHandle<Result<(), RunError>>) {
        let d = self.dir.path();
        let hosts = [DR_HOST, WILDCARD_HOST, NON_DR_HOST, UNKNOWN_HOST]
            .map(|h| format!("{h:?} = \"127.0.0.1\""))
            .join(", ");
        let text = format!(
            r#"trust_domain = "{TD}"
edges = ["{edge}"]
transport = "quic"

[tls]
ca = {ca}
cert = {cert}
key = {key}

[dns]
hosts = {{ {hosts} }}

[limits]
{LIMITS}"#,
            edge = self.edge_quic,
            ca = toml_path(&self.ca.pem()),
            cert = toml_path(&cert.cert),
            key = toml_path(&cert.key),
        );
        let path = d.join(format!("{name}.toml"));
        std::fs::write(&path, &text).expect("write connector.toml");
        let cfg: ConnectorConfig = config::from_text(&path, &text)
            .unwrap_or_else(|e| panic!("connector config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("connector"));
        let c = Connector::bind(cfg, &path, Arc::clone(&metrics)).expect("connector bind");
        let task = tokio::spawn(c.run(self.drain.clone()));
        (metrics, task)
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
        let d = self.dir.path();
        let text = format!(
            r#"trust_domain = "{TD}"
edges = ["{edge}"]
transport = "quic"

[tls]
ca = {ca}
cert = {cert}
key = {key}

[listen]
socks = "127.0.0.1:0"
http = "127.0.0.1:0"

[limits]
{LIMITS}"#,
            edge = self.edge_quic,
            ca = toml_path(&ca),
            cert = toml_path(&files.cert),
            key = toml_path(&files.key),
        );
        let path = tempfile::Builder::new()
            .prefix("client")
            .suffix(".toml")
            .tempfile_in(d)
            .expect("client config file")
            .into_temp_path()
            .keep()
            .expect("keep client config");
        std::fs::write(&path, &text).expect("write client.toml");
        let cfg: ClientConfig = config::from_text(&path, &text)
            .unwrap_or_else(|e| panic!("client config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("client"));
        let mode = lifeboat::dr::trigger::start(None, Arc::clone(&metrics), self.drain.clone())
            .expect("client DR mode");
        let client = Client::bind(cfg, &path, mode, Arc::clone(&metrics))
            .await
            .expect("client bind");
        let addrs = client.local_addrs();
        let socks = addrs
            .iter()
            .find(|(k, _)| matches!(k, ListenerKind::Socks))
            .expect("socks listener")
            .1;
        let http = addrs
            .iter()
            .find(|(k, _)| matches!(k, ListenerKind::Http))
            .expect("http listener")
            .1;
        let task = tokio::spawn(client.run(self.drain.clone()));
        ClientHandle {
            socks,
            http,
            metrics,
            task,
        }
    }

    /// Drain every role and check each stopped cleanly within its drain timeout.
    pub async fn shutdown(mut self) {
        self.drain.cancel();
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

/// The `/bytes/N` pattern, checked chunk by chunk without storing the body.
pub struct PatternCheck {
    block: Vec<u8>,
    pub offset: u64,
}

impl Default for PatternCheck {
    fn default() -> Self {
        let mut block = vec![0u8; 251 * 1024];
        lifeboat::demo::app::fill_pattern(0, &mut block);
        Self { block, offset: 0 }
    }
}

impl PatternCheck {
    /// Feed the next bytes; panics at the first byte that differs.
    pub fn feed(&mut self, mut data: &[u8]) {
        let max = self.block.len() - 251;
        while !data.is_empty() {
            let start = (self.offset % 251) as usize;
            let n = data.len().min(max);
            if data[..n] != self.block[start..start + n] {
                let i = (0..n)
                    .find(|&i| data[i] != self.block[start + i])
                    .expect("a differing byte");
                panic!(
                    "byte {} is {} where the pattern has {}",
                    self.offset + i as u64,
                    data[i],
                    self.block[start + i]
                );
            }
            self.offset += n as u64;
            data = &data[n..];
        }
    }
}

/// A deterministic body of `len` bytes distinct for each `seed`.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Split an HTTP/1.1 answer into its head (as text) and body.
pub fn split_http(resp: &[u8]) -> (String, &[u8]) {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(resp)));
    (
        String::from_utf8_lossy(&resp[..end]).into_owned(),
        &resp[end + 4..],
    )
}

/// Send a raw CONNECT to the client's HTTP listener and read its whole answer.
pub async fn raw_connect(http: SocketAddr, authority: &str) -> String {
    let mut s = TcpStream::connect(http)
        .await
        .expect("connect HTTP listener");
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write CONNECT");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut resp))
        .await
        .expect("answer within 15 s")
        .expect("read answer");
    String::from_utf8_lossy(&resp).into_owned()
}

/// The reply code of a SOCKS5 CONNECT to `host:port` (0 when it succeeded).
pub async fn socks_reply(socks: SocketAddr, host: &str, port: u16) -> u8 {
    use lifeboat::demo::socks_client::{connect, SocksConnectError};
    match tokio::time::timeout(Duration::from_secs(15), connect(socks, host, port))
        .await
        .expect("SOCKS answer within 15 s")
    {
        Ok(_) => 0,
        Err(SocksConnectError::Reply(code)) => code,
        Err(e) => panic!("SOCKS connect to {host}:{port}: {e}"),
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// A `curl` command with no config file, no proxy from the environment.
pub fn curl() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("curl");
    c.arg("-q")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .kill_on_drop(true);
    c
}

// ---------------------------------------------------------------------------
// A topology started part by part, for the TLS listener and the transport
// choice (tests/tls_edge.rs, tests/transport_fallback.rs, tests/keepalive.rs):
// an edge with any `[listen]` (in process, or its config for the binary), and
// connectors and clients dialling any address with any `transport`.

/// `tunnels_active{role,transport}` of `m`.
pub fn tunnels_of(m: &Metrics, role: &str, transport: &str) -> i64 {
    m.tunnels_active.with_label_values(&[role, transport]).get()
}

/// `handshakes_total{role,transport,result}` of `m`.
pub fn handshakes_of(m: &Metrics, role: &str, transport: &str, result: &str) -> u64 {
    m.handshakes
        .with_label_values(&[role, transport, result])
        .get()
}

/// `transport_fallbacks_total{role}` of `m`.
pub fn fallbacks_of(m: &Metrics, role: &str) -> u64 {
    m.transport_fallbacks.with_label_values(&[role]).get()
}

/// Certificates (CA with its CRL, edge, users, connectors of `dc1-dr`) and
/// the app; each part is started by its own method. Dropping it cancels the
/// drain token of everything it started.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub app: SocketAddr,
    pub edge_cert: CertFiles,
    drain: CancellationToken,
}

/// An edge started in process by [`Rig::start_edge`].
pub struct RigEdge {
    pub state: Arc<EdgeState>,
    pub metrics: Arc<Metrics>,
    pub quic: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// Its config file (for [`EdgeState::reload`]).
    pub config: PathBuf,
    pub task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.drain.cancel();
    }
}

impl Rig {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(&dir.path().join("pki"), TD);
        let edge_cert = ca.issue(Role::Edge, "edge1", None);
        let app = lifeboat::demo::app::spawn("127.0.0.1:0".parse().expect("literal"), "hello")
            .await
            .expect("app");
        Self {
            dir,
            ca,
            app,
            edge_cert,
            drain: CancellationToken::new(),
        }
    }

    /// The token every part started by this rig drains on.
    pub fn drain(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// `client/<name>` of the deployment's CA (issued on first use).
    pub fn user(&self, name: &str) -> CertFiles {
        self.issued(Role::Client, name, None)
    }

    /// `connector/<GROUP>/connector<i>` (issued on first use).
    pub fn connector_cert(&self, i: usize) -> CertFiles {
        self.issued(Role::Connector, &format!("connector{i}"), Some(GROUP))
    }

    fn issued(&self, role: Role, name: &str, group: Option<&str>) -> CertFiles {
        let f = CertFiles {
            cert: self.ca.dir.join(format!("{name}.pem")),
            key: self.ca.dir.join(format!("{name}.key")),
        };
        if f.cert.exists() {
            return f;
        }
        self.ca.issue(role, name, group)
    }

    /// An edge config like the [`Builder`]'s (segments `payroll`, DR, on the
    /// app's port, and `wiki`, not DR; test user alice; the CA's CRL), with
    /// `listen` as the body of `[listen]`, `trigger` as `[dr] trigger` and
    /// `limits` added to `[limits]`.
    pub fn edge_toml(&self, listen: &str, trigger: &str, limits: &str) -> String {
        let port = self.app.port();
        format!(
            r#"trust_domain = "{TD}"

[tls]
ca = {ca}
cert = {cert}
key = {key}
crl = {crl}

[listen]
{listen}

[dr]
trigger = {trigger:?}
test_users = ["{ALICE}"]

[limits]
{LIMITS}{limits}

[[connector_group]]
name = "{GROUP}"
dr = true

[[server_group]]
name = "dc1"
connector_groups = ["{GROUP}"]

[[segment]]
name = "payroll"
dr = true
domains = ["{DR_HOST}", "*.hr.corp.example"]
tcp_ports = ["{port}"]
server_groups = ["dc1"]

[[segment]]
name = "wiki"
dr = false
domains = ["{NON_DR_HOST}"]
tcp_ports = ["{port}"]
server_groups = ["dc1"]
"#,
            ca = toml_path(&self.ca.pem()),
            cert = toml_path(&self.edge_cert.cert),
            key = toml_path(&self.edge_cert.key),
            crl = toml_path(&self.ca.crl()),
        )
    }

    /// Write `text` as `edge.toml`, bind the edge in process and run it.
    pub fn start_edge(&self, text: &str) -> RigEdge {
        let path = self.dir.path().join("edge.toml");
        std::fs::write(&path, text).expect("write edge.toml");
        let cfg: EdgeConfig =
            config::from_text(&path, text).unwrap_or_else(|e| panic!("edge config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("edge"));
        let mode = lifeboat::dr::trigger::start(
            cfg.dr.trigger.as_ref(),
            Arc::clone(&metrics),
            self.drain.clone(),
        )
        .expect("DR trigger");
        let edge = Edge::bind(cfg, &path, text, mode, Arc::clone(&metrics)).expect("edge bind");
        RigEdge {
            state: edge.state(),
            metrics,
            quic: edge.quic_addr(),
            tls: edge.tls_addr(),
            config: path,
            task: tokio::spawn(edge.run(self.drain.clone())),
        }
    }

    /// The config of connector `i` dialling `edge` with `transport`.
    pub fn connector_toml(
        &self,
        i: usize,
        edge: SocketAddr,
        transport: &str,
        limits: &str,
    ) -> String {
        let cert = self.connector_cert(i);
        let hosts = [DR_HOST, WILDCARD_HOST, NON_DR_HOST, UNKNOWN_HOST]
            .map(|h| format!("{h:?} = \"127.0.0.1\""))
            .join(", ");
        format!(
            r#"trust_domain = "{TD}"
edges = ["{edge}"]
transport = "{transport}"

[tls]
ca = {ca}
cert = {cert}
key = {key}

[dns]
hosts = {{ {hosts} }}

[limits]
{LIMITS}{limits}
"#,
            ca = toml_path(&self.ca.pem()),
            cert = toml_path(&cert.cert),
            key = toml_path(&cert.key),
        )
    }

    /// Start connector `i` dialling `edge` with `transport` (`limits` added to `[limits]`).
    pub fn start_connector(
        &self,
        i: usize,
        edge: SocketAddr,
        transport: &str,
        limits: &str,
    ) -> Arc<Metrics> {
        self.start_connector_to(i, &[edge], transport, limits)
    }

    /// Start connector `i` dialling every address of `edges`.
    pub fn start_connector_to(
        &self,
        i: usize,
        edges: &[SocketAddr],
        transport: &str,
        limits: &str,
    ) -> Arc<Metrics> {
        let text = self
            .connector_toml(i, edges[0], transport, limits)
            .replacen(
                &format!("edges = [\"{}\"]", edges[0]),
                &format!("edges = {}", edge_list(edges)),
                1,
            );
        let path = self.dir.path().join(format!("connector{i}.toml"));
        std::fs::write(&path, &text).expect("write connector.toml");
        let cfg: ConnectorConfig = config::from_text(&path, &text)
            .unwrap_or_else(|e| panic!("connector config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("connector"));
        let c = Connector::bind(cfg, &path, Arc::clone(&metrics)).expect("connector bind");
        tokio::spawn(c.run(self.drain.clone()));
        metrics
    }

    /// Start a client presenting `cert`, dialling `edge` with `transport`,
    /// with SOCKS5 and HTTP CONNECT listeners; does not wait for its tunnel.
    pub async fn start_client(
        &self,
        cert: &CertFiles,
        edge: SocketAddr,
        transport: &str,
        limits: &str,
    ) -> ClientHandle {
        self.start_client_to(cert, &[edge], transport, limits).await
    }

    /// The config of a client presenting `cert`, dialling `edges` with
    /// `transport`, with SOCKS5 and HTTP CONNECT listeners on port 0.
    pub fn client_toml(
        &self,
        cert: &CertFiles,
        edges: &[SocketAddr],
        transport: &str,
        limits: &str,
    ) -> String {
        let edges = edge_list(edges);
        format!(
            r#"trust_domain = "{TD}"
edges = {edges}
transport = "{transport}"

[tls]
ca = {ca}
cert = {cert}
key = {key}

[listen]
socks = "127.0.0.1:0"
http = "127.0.0.1:0"

[limits]
{LIMITS}{limits}
"#,
            ca = toml_path(&self.ca.pem()),
            cert = toml_path(&cert.cert),
            key = toml_path(&cert.key),
        )
    }

    /// Start a client like [`Rig::start_client`] whose `edges` are `edges`.
    pub async fn start_client_to(
        &self,
        cert: &CertFiles,
        edges: &[SocketAddr],
        transport: &str,
        limits: &str,
    ) -> ClientHandle {
        let text = self.client_toml(cert, edges, transport, limits);
        let path = tempfile::Builder::new()
            .prefix("client")
            .suffix(".toml")
            .tempfile_in(self.dir.path())
            .expect("client config file")
            .into_temp_path()
            .keep()
            .expect("keep client config");
        std::fs::write(&path, &text).expect("write client.toml");
        let cfg: ClientConfig = config::from_text(&path, &text)
            .unwrap_or_else(|e| panic!("client config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("client"));
        let mode = lifeboat::dr::trigger::start(None, Arc::clone(&metrics), self.drain.clone())
            .expect("client DR mode");
        let client = Client::bind(cfg, &path, mode, Arc::clone(&metrics))
            .await
            .expect("client bind");
        let addrs = client.local_addrs();
        let find = |want: fn(&ListenerKind) -> bool| {
            addrs
                .iter()
                .find(|(k, _)| want(k))
                .expect("client listener")
                .1
        };
        let socks = find(|k| matches!(k, ListenerKind::Socks));
        let http = find(|k| matches!(k, ListenerKind::Http));
        let task = tokio::spawn(client.run(self.drain.clone()));
        ClientHandle {
            socks,
            http,
            metrics,
            task,
        }
    }
}

/// `["a:p", "b:p"]`: a TOML array of edge addresses.
fn edge_list(edges: &[SocketAddr]) -> String {
    let quoted: Vec<String> = edges.iter().map(|e| format!("\"{e}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A port free for both UDP and TCP on 127.0.0.1 right now (an edge to be
/// started later binds QUIC and TLS on it).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One HTTP request through the client's HTTP CONNECT listener to the
/// app's `path` on `DR_HOST`; the whole answer (head and body), or why not.
pub async fn fetch_via(http: SocketAddr, app_port: u16, path: &str) -> Result<Vec<u8>, String> {
    let auth = format!("{DR_HOST}:{app_port}");
    let go = async {
        let mut s = TcpStream::connect(http).await.map_err(|e| e.to_string())?;
        let req = format!(
            "CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\nGET {path} HTTP/1.1\r\nHost: {DR_HOST}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        if !resp.starts_with(b"HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned());
        }
        // The CONNECT answer's head, then the app's answer.
        let (_, app) = split_http(&resp);
        Ok(app.to_vec())
    };
    tokio::time::timeout(Duration::from_secs(20), go)
        .await
        .unwrap_or_else(|_| Err("no answer within 20 s".into()))
}

/// `POST /echo` of `body` through the client's HTTP CONNECT listener to the
/// app on `DR_HOST`, written while the answer is read; the body echoed
/// back, or why not.
pub async fn post_via(http: SocketAddr, app_port: u16, body: &[u8]) -> Result<Vec<u8>, String> {
    let s = open_flow_to(http, app_port).await;
    let (mut rx, mut tx) = s.into_split();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        tx.write_all(head.as_bytes()).await?;
        tx.write_all(&body).await
    });
    let mut resp = Vec::new();
    rx.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("upload: {e}"))?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned());
    }
    Ok(split_http(&resp).1.to_vec())
}

/// Try a small flow every 100 ms until one succeeds; when it did. Panics
/// after `within`, with the last failure.
pub async fn first_flow_after(http: SocketAddr, app_port: u16, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match fetch_via(http, app_port, "/bytes/1000").await {
            Ok(app) if app.starts_with(b"HTTP/1.1 200") => return Instant::now(),
            Ok(app) => last = String::from_utf8_lossy(&app[..app.len().min(200)]).into_owned(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no flow succeeded within {within:?}; last: {last}");
}

/// `lifeboat_connectors_connected{group="dc1-dr"}` of an edge.
pub fn connectors_connected(m: &Metrics) -> i64 {
    m.connectors_connected.with_label_values(&[GROUP]).get()
}

/// A flow through the client's HTTP CONNECT listener to the app, answered
/// 200 and left open (nothing sent after the CONNECT).
pub async fn open_flow(http: SocketAddr, app_port: u16) -> TcpStream {
    open_flow_to(http, app_port).await
}

/// [`open_flow`] to any port of `DR_HOST`.
pub async fn open_flow_to(http: SocketAddr, app_port: u16) -> TcpStream {
    try_open_flow_to(http, app_port)
        .await
        .unwrap_or_else(|answer| panic!("{answer}"))
}

/// [`open_flow_to`], with the answer of a refused flow as the error.
pub async fn try_open_flow_to(http: SocketAddr, app_port: u16) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(http).await.expect("connect");
    let auth = format!("{DR_HOST}:{app_port}");
    let req = format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write CONNECT");
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).await.expect("read the answer");
    if buf[..n].starts_with(b"HTTP/1.1 200") {
        Ok(s)
    } else {
        Err(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}
