//! Edge discovery through a real DNS server: hickory-server in process on
//! 127.0.0.1 serving `dr-edge.example.test` (A records, 1 s TTL) that the
//! test rewrites; two edges on 127.0.0.2 and 127.0.0.3 (same port), one
//! connector and one client that know the edges only by that name.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    eventually, run_client, run_connector, toml_path, Answer, DnsServer, EchoFlow, Logs, DR_HOST,
    GROUP, LIMITS, TD,
};
use lifeboat::client::ListenerKind;
use lifeboat::config::{self, EdgeConfig};
use lifeboat::edge::Edge;
use lifeboat::metrics::Metrics;
use lifeboat::pki::{self, IssueOptions};
use lifeboat::role_error::RunError;
use lifeboat::trust::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The edges' DNS name.
const NAME: &str = "dr-edge.example.test";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP literal")
}

/// The A records of [`NAME`], TTL 1 s.
fn zone(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|a| format!("{NAME}. 1 IN A {a}\n"))
        .collect()
}

/// An edge running on its own address, with its own drain token.
struct RunningEdge {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    drain: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl RunningEdge {
    /// `connectors_connected{group="dc1-dr"}` at this edge.
    fn connectors(&self) -> i64 {
        self.metrics
            .connectors_connected
            .with_label_values(&[GROUP])
            .get()
    }

    /// Client tunnels this edge holds (QUIC).
    fn clients(&self) -> i64 {
        self.metrics
            .tunnels_active
            .with_label_values(&["client", "quic"])
            .get()
    }

    /// Flows this edge served.
    fn flows_ok(&self) -> u64 {
        self.metrics
            .flows_total
            .with_label_values(&["payroll", "ok"])
            .get()
    }

    /// Drain it and wait until it has stopped.
    async fn kill(self) {
        self.drain.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("edge stops within 15 s of its drain")
            .expect("edge task")
            .expect("edge run");
    }
}

/// Certificates, the app and the names every role shares.
struct Lab {
    dir: tempfile::TempDir,
    ca: PathBuf,
    app: SocketAddr,
}

impl Lab {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, TD, 2).expect("pki init");
        let lab = Self {
            ca: pki_dir.join("ca.pem"),
            app: lifeboat::demo::app::spawn("127.0.0.1:0".parse().expect("literal"), "hello")
                .await
                .expect("app"),
            dir,
        };
        lab.issue(Role::Edge, "edge1", None);
        lab.issue(Role::Connector, "connector0", Some(GROUP));
        lab.issue(Role::Client, "alice", None);
        lab
    }

    fn issue(&self, role: Role, name: &str, group: Option<&str>) {
        pki::issue(&IssueOptions {
            dir: self.dir.path().join("pki"),
            role,
            name: name.into(),
            group: group.map(Into::into),
            dns: vec![NAME.into()],
            ips: vec![ip("127.0.0.2"), ip("127.0.0.3")],
            days: 2,
            not_before: None,
            not_after: None,
        })
        .expect("pki issue");
    }

    /// `[tls]` lines for the certificate `name`.
    fn tls(&self, name: &str) -> String {
        let p = self.dir.path().join("pki");
        format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_path(&self.ca),
            toml_path(&p.join(format!("{name}.pem"))),
            toml_path(&p.join(format!("{name}.key"))),
        )
    }

    /// Bind an edge (DR on) with its QUIC and TLS listeners on `listen`, and run it.
    fn start_edge(&self, listen: SocketAddr) -> anyhow::Result<RunningEdge> {
        let text = format!(
            r#"trust_domain = "{TD}"

[tls]
{tls}
[listen]
quic = "{listen}"
tls = "{listen}"

[dr]
trigger = "static:on"

[limits]
{LIMITS}
[[connector_group]]
name = "{GROUP}"
dr = true

[[server_group]]
name = "dc1"
connector_groups = ["{GROUP}"]

[[segment]]
name = "payroll"
dr = true
domains = ["{DR_HOST}"]
tcp_ports = ["{port}"]
server_groups = ["dc1"]
"#,
            tls = self.tls("edge1"),
            port = self.app.port(),
        );
        let path = self.dir.path().join(format!("edge-{}.toml", listen.ip()));
        std::fs::write(&path, &text).expect("write edge config");
        let cfg: EdgeConfig =
            config::from_text(&path, &text).unwrap_or_else(|e| panic!("edge config: {e}\n{text}"));
        let metrics = Arc::new(Metrics::new("edge"));
        let drain = CancellationToken::new();
        let mode = lifeboat::dr::trigger::start(
            cfg.dr.trigger.as_ref(),
            Arc::clone(&metrics),
            drain.clone(),
        )?;
        let edge = Edge::bind(cfg, &path, &text, mode, Arc::clone(&metrics))?;
        let addr = edge.quic_addr().expect("QUIC address");
        assert_eq!(edge.tls_addr(), Some(addr), "TLS listener beside QUIC");
        let task = tokio::spawn(edge.run(drain.clone()));
        Ok(RunningEdge {
            addr,
            metrics,
            drain,
            task,
        })
    }

    /// Start an edge on `addr` again, retrying while the old socket lingers.
    async fn restart_edge(&self, addr: SocketAddr) -> RunningEdge {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.start_edge(addr) {
                Ok(e) => return e,
                Err(e) => assert!(Instant::now() < deadline, "rebinding {addr}: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Two edges on 127.0.0.2:P and 127.0.0.3:P.
    async fn start_edge_pair(&self) -> (RunningEdge, RunningEdge) {
        for _ in 0..16 {
            let a = self
                .start_edge("127.0.0.2:0".parse().expect("literal"))
                .expect("edge on 127.0.0.2");
            let port = a.addr.port();
            match self.start_edge(SocketAddr::new(ip("127.0.0.3"), port)) {
                Ok(b) => return (a, b),
                Err(_) => a.kill().await,
            }
        }
        panic!("no port free on both 127.0.0.2 and 127.0.0.3");
    }

    /// The connector, its edges by name through `dns`.
    fn start_connector(&self, dns: &DnsServer, port: u16, drain: &CancellationToken) {
        let text = format!(
            r#"trust_domain = "{TD}"
edges = ["{NAME}:{port}"]
transport = "quic"

[tls]
{tls}
[dns]
nameservers = ["{ns}"]
hosts = {{ "{DR_HOST}" = "127.0.0.1" }}

[limits]
{LIMITS}"#,
            tls = self.tls("connector0"),
            ns = dns.addr,
        );
        run_connector(
            &self.dir.path().join("connector.toml"),
            &text,
            drain.clone(),
        );
    }

    /// The client (DR follows the edge), its edges by name through `dns`;
    /// returns its SOCKS5 address.
    async fn start_client(
        &self,
        dns: &DnsServer,
        port: u16,
        drain: &CancellationToken,
    ) -> SocketAddr {
        let text = format!(
            r#"trust_domain = "{TD}"
edges = ["{NAME}:{port}"]
transport = "quic"

[tls]
{tls}
[listen]
socks = "127.0.0.1:0"

[dns]
nameservers = ["{ns}"]

[limits]
{LIMITS}"#,
            tls = self.tls("alice"),
            ns = dns.addr,
        );
        let path = self.dir.path().join("client.toml");
        let (_, addrs, _) = run_client(&path, &text, drain.clone()).await;
        addrs
            .into_iter()
            .find(|(k, _)| matches!(k, ListenerKind::Socks))
            .expect("socks listener")
            .1
    }
}

/// One flow through the client's SOCKS5 listener: `POST /echo` of `len`
/// bytes, checked byte-exact. `Err` on any failure, for retry loops.
async fn echo(socks: SocketAddr, port: u16, len: usize, seed: u8) -> Result<(), String> {
    let body: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(37) ^ seed)
        .collect();
    let run = async {
        let mut s = lifeboat::demo::socks_client::connect(socks, DR_HOST, port)
            .await
            .map_err(|e| e.to_string())?;
        let head =
            format!("POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: {len}\r\n\r\n");
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&body).await.map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .map_err(|_| "flow timed out".to_string())??;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head")?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&resp[..end]).into_owned());
    }
    let back = &resp[end + 4..];
    assert_eq!(back.len(), len, "echo length");
    assert!(back == body.as_slice(), "echo not byte-exact");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn connector_follows_the_record_and_the_client_fails_over() {
    let (logs, _guard) = Logs::capture();
    let dns = DnsServer::start().await;
    let (a_ip, b_ip) = (ip("127.0.0.2"), ip("127.0.0.3"));
    dns.publish_zone(&zone(&[a_ip, b_ip]));
    let lab = Lab::new().await;
    let app_port = lab.app.port();
    let (a, b) = lab.start_edge_pair().await;
    let port = a.addr.port();
    let drain = CancellationToken::new();
    lab.start_connector(&dns, port, &drain);
    let socks = lab.start_client(&dns, port, &drain).await;

    // The connector holds a tunnel to every address of the name.
    eventually(
        "the connector registered at both edges",
        Duration::from_secs(15),
        || a.connectors() == 1 && b.connectors() == 1,
    )
    .await;
    echo(socks, app_port, 64 * 1024, 1)
        .await
        .expect("a flow through the client");
    let mut edges = [Some(a), Some(b)];
    let on = edges
        .iter()
        .position(|e| e.as_ref().is_some_and(|e| e.clients() == 1))
        .expect("the client holds a tunnel to one edge");
    let other = 1 - on;
    let (dead_addr, live_addr) = (
        edges[on].as_ref().expect("edge").addr,
        edges[other].as_ref().expect("edge").addr,
    );

    // Kill the client's edge: its next flow goes through the other one.
    let served_before = edges[other].as_ref().expect("edge").flows_ok();
    let dead = edges[on].take().expect("edge");
    let killed = Instant::now();
    dead.drain.cancel();
    let mut attempts = 0u32;
    let gap = loop {
        attempts += 1;
        match echo(socks, app_port, 64 * 1024, 2).await {
            Ok(()) => break killed.elapsed(),
            Err(e) => assert!(
                killed.elapsed() < Duration::from_secs(15),
                "no flow within 15 s of the edge dying: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let live = edges[other].as_ref().expect("edge");
    assert!(
        live.flows_ok() > served_before,
        "the flow went through {live_addr}"
    );
    eprintln!(
        "client-side failover gap: {gap:?} from draining {dead_addr} to the first flow through {live_addr} ({attempts} attempt(s))"
    );
    dead.kill().await;
    assert_eq!(live.connectors(), 1, "the live edge keeps its connector");

    // Restart it on the same address: the connector rejoins it.
    let restarted_at = Instant::now();
    edges[on] = Some(lab.restart_edge(dead_addr).await);
    let back = edges[on].as_ref().expect("edge");
    eventually(
        "the connector rejoined the restarted edge",
        Duration::from_secs(30),
        || back.connectors() == 1,
    )
    .await;
    eprintln!(
        "connector rejoined the restarted edge {dead_addr} after {:?}",
        restarted_at.elapsed()
    );
    let live = edges[other].as_ref().expect("edge");
    assert_eq!(live.connectors(), 1);

    // A flow runs through the live edge (where the client is) while that
    // address leaves the record: the connector drains it (no new flows,
    // the running one finishes byte-exact), the client moves to the other.
    let mut running = EchoFlow::open(socks, app_port).await;
    running.ping(16 * 1024).await.expect("running flow echoes");
    let served_live = live.flows_ok();
    let served_back = back.flows_ok();
    assert!(
        served_live >= 1 && live.clients() == 1,
        "client on {live_addr}"
    );
    let removed_at = Instant::now();
    dns.publish_zone(&zone(&[dead_addr.ip()]));
    eventually(
        "the connector drains the address that left the record",
        Duration::from_secs(10),
        || logs.count("edge address left the record") >= 1,
    )
    .await;
    eprintln!(
        "connector began draining {live_addr} {:?} after it left the record",
        removed_at.elapsed()
    );
    running
        .ping(16 * 1024)
        .await
        .expect("the running flow keeps going while its tunnel drains");
    assert_eq!(
        live.connectors(),
        1,
        "the draining tunnel stays up while a flow runs on it"
    );
    eventually(
        "the client moved to the edge still in the record",
        Duration::from_secs(10),
        || back.clients() == 1,
    )
    .await;
    echo(socks, app_port, 64 * 1024, 3)
        .await
        .expect("a new flow after the client moved");
    assert!(
        back.flows_ok() > served_back,
        "the new flow went through {dead_addr}"
    );
    assert_eq!(
        live.flows_ok(),
        served_live,
        "no new flow on the drained edge"
    );
    running
        .ping(16 * 1024)
        .await
        .expect("the running flow still echoes");
    drop(running);
    eventually(
        "the drained edge loses the connector, the other keeps it",
        Duration::from_secs(10),
        || live.connectors() == 0,
    )
    .await;
    assert_eq!(back.connectors(), 1);

    // The address comes back: the connector dials it again.
    dns.publish_zone(&zone(&[a_ip, b_ip]));
    eventually(
        "the connector rejoined the address back in the record",
        Duration::from_secs(15),
        || live.connectors() == 1 && back.connectors() == 1,
    )
    .await;
    drain.cancel();
    for e in edges.into_iter().flatten() {
        e.kill().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_resolving_is_retried_and_a_failing_name_keeps_its_addresses() {
    let (logs, _guard) = Logs::capture();
    let dns = DnsServer::start().await;
    dns.set(Answer::NxDomain);
    let lab = Lab::new().await;
    let app_port = lab.app.port();
    let (a, b) = lab.start_edge_pair().await;
    let port = a.addr.port();
    let drain = CancellationToken::new();
    lab.start_connector(&dns, port, &drain);
    let socks = lab.start_client(&dns, port, &drain).await;

    // Nothing resolves: both roles keep retrying (each says so once).
    let q = dns.queries();
    eventually("retried lookups", Duration::from_secs(10), || {
        dns.queries() >= q + 8
    })
    .await;
    assert_eq!(a.connectors() + b.connectors(), 0);
    assert_eq!(logs.count("edge name does not resolve: NXDOMAIN"), 2);

    // The record appears: the connector reaches both edges, the client one.
    dns.publish_zone(&zone(&[ip("127.0.0.2"), ip("127.0.0.3")]));
    eventually(
        "the connector registered at both edges",
        Duration::from_secs(20),
        || a.connectors() == 1 && b.connectors() == 1,
    )
    .await;
    eventually(
        "the client reached an edge",
        Duration::from_secs(20),
        || a.clients() + b.clients() == 1,
    )
    .await;
    echo(socks, app_port, 32 * 1024, 7)
        .await
        .expect("a flow once the name resolves");
    assert_eq!(logs.count("edge name resolves again"), 2);

    // The server fails: the last good addresses stay, tunnels and flows go
    // on, and each role logs the failure once however often it retries.
    let good = zone(&[ip("127.0.0.2"), ip("127.0.0.3")]);
    for (round, (answer, word)) in [
        (Answer::ServFail, "SERVFAIL"),
        (Answer::Silent, "timed out"),
    ]
    .into_iter()
    .enumerate()
    {
        let line = format!("edge name does not resolve: {word}");
        dns.set(answer);
        eventually(&format!("`{line}` logged"), Duration::from_secs(20), || {
            logs.count(&line) >= 2
        })
        .await;
        // At least two more lookups per role after the first failure.
        let q = dns.queries();
        eventually(
            &format!("lookups retried while {word}"),
            Duration::from_secs(30),
            || dns.queries() >= q + 16,
        )
        .await;
        assert_eq!(
            logs.count(&line),
            2,
            "logged once per role\n{}",
            logs.text()
        );
        assert_eq!((a.connectors(), b.connectors()), (1, 1), "{word}");
        echo(socks, app_port, 32 * 1024, 8)
            .await
            .unwrap_or_else(|e| panic!("a flow while DNS fails ({word}): {e}"));
        dns.publish_zone(&good);
        let recovered = 4 + 2 * round;
        eventually("the name resolves again", Duration::from_secs(40), || {
            logs.count("edge name resolves again") >= recovered
        })
        .await;
    }
    assert_eq!(logs.count("edge address left the record"), 0);
    drain.cancel();
    a.kill().await;
    b.kill().await;
}
