//! The parts of a topology, each started on its own: certificates (CA with
//! its CRL, edge, users, connectors of `dc1-dr`), the app, and edges,
//! connectors and clients run in process from config text. The
//! [`Builder`](super::Builder) composes them; tests that start parts at
//! will (any `[listen]`, any transport, several edges, restarts) use a
//! [`Rig`] directly. Dropping a [`Rig`] cancels the drain token of
//! everything it started.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat::client::{Client, ListenerKind};
use lifeboat::config::{self, ClientConfig, ConnectorConfig, EdgeConfig};
use lifeboat::connector::Connector;
use lifeboat::dr::DrMode;
use lifeboat::edge::{Edge, EdgeState};
use lifeboat::metrics::Metrics;
use lifeboat::role_error::RunError;
use lifeboat::trust::Role;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    toml_path, Ca, CertFiles, ALICE, DR_HOST, GROUP, LIMITS, NON_DR_HOST, TD, UNKNOWN_HOST,
    WILDCARD_HOST,
};

/// Certificates (CA with its CRL, edge, users, connectors of `dc1-dr`) and
/// the app; each part is started by its own method.
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
    /// Its DR mode, as its trigger publishes it.
    pub mode: watch::Receiver<DrMode>,
    pub quic: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// Its config file (for [`EdgeState::reload`]).
    pub config: PathBuf,
    pub task: JoinHandle<Result<(), RunError>>,
}

/// A running client.
pub struct ClientHandle {
    pub socks: SocketAddr,
    pub http: SocketAddr,
    /// Its `[[forward]]` listeners, in config order.
    pub forwards: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub task: JoinHandle<Result<(), RunError>>,
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

/// What an edge config says besides its fixed policy: segment `payroll`
/// (DR: `DR_HOST` and `*.hr.corp.example`) and segment `wiki` (not DR:
/// `NON_DR_HOST`), both on `ports`, served by connector group `dc1-dr`.
pub struct EdgeSpec<'a> {
    /// `[tls] ca`: the pinned CA file.
    pub ca: &'a Path,
    /// `[tls] crl`, if any.
    pub crl: Option<&'a Path>,
    /// The body of `[listen]`.
    pub listen: &'a str,
    /// The body of `[dr]`.
    pub dr: &'a str,
    /// `[dns] nameservers`, if any.
    pub nameserver: Option<SocketAddr>,
    /// Added to `[limits]`.
    pub limits: &'a str,
    /// `[log] access = true`.
    pub access_log: bool,
    /// The body of both segments' `tcp_ports` array.
    pub ports: &'a str,
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

    /// An edge config like the [`Builder`](super::Builder)'s (segments
    /// `payroll`, DR, on the app's port, and `wiki`, not DR; test user
    /// alice; the CA's CRL), with `listen` as the body of `[listen]`,
    /// `trigger` as `[dr] trigger` and `limits` added to `[limits]`.
    pub fn edge_toml(&self, listen: &str, trigger: &str, limits: &str) -> String {
        let ca = self.ca.pem();
        let crl = self.ca.crl();
        self.edge_config(&EdgeSpec {
            ca: &ca,
            crl: Some(&crl),
            listen,
            dr: &format!("trigger = {trigger:?}\ntest_users = [\"{ALICE}\"]\n"),
            nameserver: None,
            limits,
            access_log: false,
            ports: &format!("\"{}\"", self.app.port()),
        })
    }

    /// The edge config `spec` describes, presenting `edge1`.
    pub fn edge_config(&self, spec: &EdgeSpec<'_>) -> String {
        let mut tls = format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_path(spec.ca),
            toml_path(&self.edge_cert.cert),
            toml_path(&self.edge_cert.key)
        );
        if let Some(crl) = spec.crl {
            let _ = writeln!(tls, "crl = {}", toml_path(crl));
        }
        let dns = spec.nameserver.map_or_else(String::new, |ns| {
            format!("[dns]\nnameservers = [\"{ns}\"]\n\n")
        });
        let log = if spec.access_log {
            "[log]\naccess = true\n\n"
        } else {
            ""
        };
        format!(
            r#"trust_domain = "{TD}"

[tls]
{tls}
[listen]
{listen}

[dr]
{dr}
{dns}[limits]
{LIMITS}{limits}

{log}[[connector_group]]
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
            listen = spec.listen,
            dr = spec.dr,
            limits = spec.limits,
            ports = spec.ports,
        )
    }

    /// Write `text` as `edge.toml`, bind the edge in process and run it.
    pub fn start_edge(&self, text: &str) -> RigEdge {
        self.start_edge_as("edge", text)
    }

    /// [`Rig::start_edge`] with `<name>.toml` as its config file.
    pub fn start_edge_as(&self, name: &str, text: &str) -> RigEdge {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write edge.toml");
        let cfg: EdgeConfig =
            config::from_text(&path, text).unwrap_or_else(|e| panic!("edge config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("edge"));
        let mode = lifeboat::dr::trigger::start_for(
            Role::Edge,
            &cfg.dr,
            &cfg.dns,
            Arc::clone(&metrics),
            self.drain.clone(),
        )
        .expect("DR trigger");
        let edge =
            Edge::bind(cfg, &path, text, mode.clone(), Arc::clone(&metrics)).expect("edge bind");
        RigEdge {
            state: edge.state(),
            metrics,
            mode,
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
        self.connector_config(&self.connector_cert(i), &[edge], transport, limits)
    }

    /// The config of a connector presenting `cert`, dialling every address
    /// of `edges` with `transport`; every test name resolves to 127.0.0.1.
    pub fn connector_config(
        &self,
        cert: &CertFiles,
        edges: &[SocketAddr],
        transport: &str,
        limits: &str,
    ) -> String {
        let hosts = [DR_HOST, WILDCARD_HOST, NON_DR_HOST, UNKNOWN_HOST]
            .map(|h| format!("{h:?} = \"127.0.0.1\""))
            .join(", ");
        let dns = format!("[dns]\nhosts = {{ {hosts} }}\n");
        agent_config(cert, &self.ca.pem(), edges, transport, &dns, limits)
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
        let text = self.connector_config(&self.connector_cert(i), edges, transport, limits);
        self.spawn_connector(&format!("connector{i}"), &text).0
    }

    /// Write `text` as `<name>.toml`, bind a connector in process and run it.
    pub fn spawn_connector(
        &self,
        name: &str,
        text: &str,
    ) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
        let path = self.dir.path().join(format!("{name}.toml"));
        run_connector(&path, text, self.drain.clone())
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
        self.client_config(cert, &self.ca.pem(), edges, transport, limits)
    }

    /// [`Rig::client_toml`] pinning the CA file `ca`.
    pub fn client_config(
        &self,
        cert: &CertFiles,
        ca: &Path,
        edges: &[SocketAddr],
        transport: &str,
        limits: &str,
    ) -> String {
        let listen = "[listen]\nsocks = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";
        agent_config(cert, ca, edges, transport, listen, limits)
    }

    /// [`Rig::client_config`] with a port-forward listener (port 0) to
    /// each of `to` (`host:port`).
    pub fn forwarding_client_config(
        &self,
        cert: &CertFiles,
        ca: &Path,
        edges: &[SocketAddr],
        transport: &str,
        to: &[&str],
    ) -> String {
        let mut section = "[listen]\nsocks = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n".to_string();
        for dest in to {
            let _ = write!(
                section,
                "\n[[forward]]\nlisten = \"127.0.0.1:0\"\nto = \"{dest}\"\n"
            );
        }
        agent_config(cert, ca, edges, transport, &section, "")
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
        self.spawn_client(&text).await
    }

    /// Write `text` as a new `client*.toml`, bind a client in process and
    /// run it; does not wait for its tunnel.
    pub async fn spawn_client(&self, text: &str) -> ClientHandle {
        let path = tempfile::Builder::new()
            .prefix("client")
            .suffix(".toml")
            .tempfile_in(self.dir.path())
            .expect("client config file")
            .into_temp_path()
            .keep()
            .expect("keep client config");
        let (metrics, addrs, task) = run_client(&path, text, self.drain.clone()).await;
        let find = |want: fn(&ListenerKind) -> bool, what: &str| {
            addrs
                .iter()
                .find(|(k, _)| want(k))
                .unwrap_or_else(|| panic!("{what} listener"))
                .1
        };
        ClientHandle {
            socks: find(|k| matches!(k, ListenerKind::Socks), "socks"),
            http: find(|k| matches!(k, ListenerKind::Http), "http"),
            forwards: addrs
                .iter()
                .filter(|(k, _)| matches!(k, ListenerKind::Forward(_)))
                .map(|(_, a)| *a)
                .collect(),
            metrics,
            task,
        }
    }
}

/// Write `text` to `path`, bind a connector in process and run it until `drain`.
pub fn run_connector(
    path: &Path,
    text: &str,
    drain: CancellationToken,
) -> (Arc<Metrics>, JoinHandle<Result<(), RunError>>) {
    std::fs::write(path, text).expect("write connector config");
    let cfg: ConnectorConfig =
        config::from_text(path, text).unwrap_or_else(|e| panic!("connector config: {e}\n{text}"));
    let metrics = Arc::new(Metrics::new("connector"));
    let c = Connector::bind(cfg, path, Arc::clone(&metrics)).expect("connector bind");
    (metrics, tokio::spawn(c.run(drain)))
}

/// Write `text` to `path`, bind a client (DR mode from the edge) in process
/// and run it until `drain`; does not wait for its tunnel. Its metrics and
/// the addresses of its listeners.
pub async fn run_client(
    path: &Path,
    text: &str,
    drain: CancellationToken,
) -> (
    Arc<Metrics>,
    Vec<(ListenerKind, SocketAddr)>,
    JoinHandle<Result<(), RunError>>,
) {
    std::fs::write(path, text).expect("write client config");
    let cfg: ClientConfig =
        config::from_text(path, text).unwrap_or_else(|e| panic!("client config: {e}\n{text}"));
    let metrics = Arc::new(Metrics::new("client"));
    let mode = lifeboat::dr::trigger::start(None, Arc::clone(&metrics), drain.clone())
        .expect("client DR mode");
    let client = Client::bind(cfg, path, mode, Arc::clone(&metrics))
        .await
        .expect("client bind");
    let addrs = client.local_addrs();
    (metrics, addrs, tokio::spawn(client.run(drain)))
}

/// A connector's or client's config: presenting `cert` and pinning `ca`,
/// dialling `edges` with `transport`, with `section` (its own, ending in a
/// newline) before `[limits]`, to which `limits` is added.
fn agent_config(
    cert: &CertFiles,
    ca: &Path,
    edges: &[SocketAddr],
    transport: &str,
    section: &str,
    limits: &str,
) -> String {
    format!(
        r#"trust_domain = "{TD}"
edges = {edges}
transport = "{transport}"

[tls]
ca = {ca}
cert = {cert}
key = {key}

{section}
[limits]
{LIMITS}{limits}
"#,
        edges = edge_list(edges),
        ca = toml_path(ca),
        cert = toml_path(&cert.cert),
        key = toml_path(&cert.key),
    )
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
