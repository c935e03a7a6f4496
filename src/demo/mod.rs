//! `lifeboat demo`: the whole DR topology on loopback from an embedded
//! config (a throwaway CA, an HTTP app, edge, connector and client), real
//! traffic through it, and a few readable lines on what happened.
//! [`Topology`] is public: benches and tests start the same thing.

pub mod app;
pub mod socks_client;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ListenerKind};
use crate::config::{self, ClientConfig, ConnectorConfig, EdgeConfig};
use crate::connector::Connector;
use crate::edge::{Edge, EdgeState};
use crate::metrics::Metrics;
use crate::pki::{self, IssueOptions};
use crate::role_error::RunError;
use crate::trust::Role;

const EDGE_TOML: &str = include_str!("edge.toml");
const CONNECTOR_TOML: &str = include_str!("connector.toml");
const CLIENT_TOML: &str = include_str!("client.toml");

/// The DR segment's names in the embedded config.
pub const DR_HOST: &str = "payroll.demo.internal";
pub const WILDCARD_HOST: &str = "benefits.hr.demo.internal";
pub const NON_DR_HOST: &str = "wiki.demo.internal";

/// A running loopback topology.
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub app: SocketAddr,
    pub edge_quic: SocketAddr,
    pub edge_tls: Option<SocketAddr>,
    pub edge_admin: Option<SocketAddr>,
    pub socks: SocketAddr,
    pub http: SocketAddr,
    pub edge: Arc<EdgeState>,
    pub edge_metrics: Arc<Metrics>,
    pub connector_metrics: Arc<Metrics>,
    pub client_metrics: Arc<Metrics>,
    drain: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), RunError>>>,
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Which transport the client and the connector use (`auto`, `quic`, `tls`).
#[derive(Debug, Clone, Copy)]
pub struct TopologyOptions {
    pub client_transport: &'static str,
    pub connector_transport: &'static str,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            client_transport: "auto",
            connector_transport: "auto",
        }
    }
}

impl Topology {
    /// Make a CA and certificates, start the app, edge, connector and client.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(TopologyOptions::default()).await
    }

    /// [`Topology::start`] with chosen transports.
    pub async fn start_with(opts: TopologyOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        pki::init(d, "demo.lifeboat.test", 2)?;
        let issue = |role, name: &str, group: Option<&str>| {
            pki::issue(&IssueOptions {
                dir: d.to_path_buf(),
                role,
                name: name.into(),
                group: group.map(Into::into),
                dns: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse().expect("literal")],
                days: 2,
                not_before: None,
                not_after: None,
            })
        };
        issue(Role::Edge, "edge1", None)?;
        issue(Role::Connector, "dc1-connector", Some("dc1-dr"))?;
        issue(Role::Client, "alice", None)?;

        let app = app::spawn("127.0.0.1:0".parse()?, "hello from payroll").await?;
        let drain = CancellationToken::new();
        let mut tasks = Vec::new();

        let edge_text = EDGE_TOML.replace("@APP_PORT@", &app.port().to_string());
        let edge_path = write(d, "edge.toml", &edge_text)?;
        let edge_cfg: EdgeConfig = config::from_text(&edge_path, &edge_text)?;
        let edge_metrics = Arc::new(Metrics::new("edge"));
        let mode = crate::dr::trigger::start_for(
            Role::Edge,
            &edge_cfg.dr,
            &edge_cfg.dns,
            Arc::clone(&edge_metrics),
            drain.clone(),
        )?;
        let admin = edge_cfg.listen.admin;
        let edge = Edge::bind(
            edge_cfg,
            &edge_path,
            &edge_text,
            mode,
            Arc::clone(&edge_metrics),
        )?;
        let edge_quic = edge.quic_addr().context("edge has no QUIC listener")?;
        let edge_tls = edge.tls_addr();
        let edge_admin = match admin {
            Some(a) => {
                let l = crate::admin::bind(a).await?;
                let bound = l.local_addr()?;
                tokio::spawn(crate::admin::serve(
                    l,
                    Arc::clone(&edge_metrics),
                    crate::admin::edge_readiness(Arc::clone(&edge_metrics)),
                    drain.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let edge_state = edge.state();
        tasks.push(tokio::spawn(edge.run(drain.clone())));

        let edge_entry = edge_quic.to_string();
        let conn_text = CONNECTOR_TOML
            .replace("@EDGE@", &edge_entry)
            .replace("@TRANSPORT@", opts.connector_transport);
        let conn_path = write(d, "connector.toml", &conn_text)?;
        let conn_cfg: ConnectorConfig = config::from_text(&conn_path, &conn_text)?;
        let connector_metrics = Arc::new(Metrics::new("connector"));
        let connector = Connector::bind(conn_cfg, &conn_path, Arc::clone(&connector_metrics))?;
        tasks.push(tokio::spawn(connector.run(drain.clone())));

        let client_text = CLIENT_TOML
            .replace("@EDGE@", &edge_entry)
            .replace("@TRANSPORT@", opts.client_transport);
        let client_path = write(d, "client.toml", &client_text)?;
        let client_cfg: ClientConfig = config::from_text(&client_path, &client_text)?;
        let client_metrics = Arc::new(Metrics::new("client"));
        let client_mode = crate::dr::trigger::start_for(
            Role::Client,
            &client_cfg.dr,
            &client_cfg.dns,
            Arc::clone(&client_metrics),
            drain.clone(),
        )?;
        let client = Client::bind(
            client_cfg,
            &client_path,
            client_mode,
            Arc::clone(&client_metrics),
        )
        .await?;
        let addrs = client.local_addrs();
        let find =
            |k: fn(&ListenerKind) -> bool| addrs.iter().find(|(kind, _)| k(kind)).map(|(_, a)| *a);
        let socks = find(|k| matches!(k, ListenerKind::Socks)).context("no socks listener")?;
        let http = find(|k| matches!(k, ListenerKind::Http)).context("no http listener")?;
        tasks.push(tokio::spawn(client.run(drain.clone())));

        let t = Self {
            dir,
            app,
            edge_quic,
            edge_tls,
            edge_admin,
            socks,
            http,
            edge: edge_state,
            edge_metrics,
            connector_metrics,
            client_metrics,
            drain,
            tasks,
        };
        t.wait_ready(Duration::from_secs(10)).await?;
        Ok(t)
    }

    /// Wait until the connector is registered and the client tunnel is up.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let seg = self
                .edge_metrics
                .segment_ready
                .with_label_values(&["payroll"])
                .get();
            let client: i64 = ["quic", "tls"]
                .iter()
                .map(|t| {
                    self.client_metrics
                        .tunnels_active
                        .with_label_values(&["edge", t])
                        .get()
                })
                .sum();
            if seg == 1 && client == 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("topology not ready within {within:?} (segment ready {seg}, client tunnels {client})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drain everything and wait for the roles to stop.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.drain.cancel();
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// GET `path` from `host:port` through SOCKS5; returns the status line's code and the body.
pub async fn socks_get(
    socks: SocketAddr,
    host: &str,
    port: u16,
    path: &str,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = socks_client::connect(socks, host, port)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head in answer")?;
    let status = std::str::from_utf8(&resp[..end])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    Ok((status, resp[end + 4..].to_vec()))
}

/// The walkthrough's verdicts: one line each, and whether all were good.
struct Checks {
    ok: bool,
}

impl Checks {
    fn check(&mut self, what: &str, good: bool, detail: String) {
        println!(
            "  [{}] {what}: {detail}",
            if good { " ok " } else { "FAIL" }
        );
        self.ok &= good;
    }
}

/// Run the demo. Returns whether everything behaved as expected.
pub async fn run(once: bool) -> anyhow::Result<bool> {
    println!("lifeboat demo: a DR edge, an App Connector, a client and an app, all on loopback");
    let started = Instant::now();
    let t = Topology::start().await?;
    println!(
        "  topology up in {:.0} ms: edge quic {}, client socks5 {}, app {}",
        started.elapsed().as_secs_f64() * 1e3,
        t.edge_quic,
        t.socks,
        t.app
    );
    let mut checks = Checks { ok: true };
    check_segments(&t, &mut checks).await;
    check_concurrent_flows(&t, &mut checks).await;
    print_edge_counters(&t.edge_metrics);
    let ok = checks.ok;
    if once {
        t.shutdown().await?;
        println!(
            "{}",
            if ok {
                "demo: everything behaved"
            } else {
                "demo: something misbehaved (see FAIL above)"
            }
        );
        return Ok(ok);
    }
    print_try_lines(&t);
    println!("running until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    t.shutdown().await?;
    Ok(ok)
}

/// One flow each: the DR segment by exact name and by wildcard (1 MiB,
/// byte-exact) are served; a non-DR name and a port outside the segment
/// are refused.
async fn check_segments(t: &Topology, c: &mut Checks) {
    let port = t.app.port();
    let t0 = Instant::now();
    let r = socks_get(t.socks, DR_HOST, port, "/").await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok((200, body)) => c.check(
            "DR segment `payroll` served",
            true,
            format!(
                "{DR_HOST}:{port} answered {:?} in {ms:.1} ms",
                String::from_utf8_lossy(&body).trim()
            ),
        ),
        other => c.check("DR segment `payroll` served", false, format!("{other:?}")),
    }

    let r = socks_get(t.socks, WILDCARD_HOST, port, "/bytes/1048576").await;
    match r {
        Ok((200, body)) => {
            let good = body.len() == 1 << 20
                && body
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == app::pattern_byte(i as u64));
            c.check(
                "wildcard `*.hr.demo.internal` served",
                good,
                format!("1 MiB from {WILDCARD_HOST}, byte-exact: {good}"),
            );
        }
        other => c.check(
            "wildcard `*.hr.demo.internal` served",
            false,
            format!("{other:?}"),
        ),
    }

    let r = socks_get(t.socks, NON_DR_HOST, port, "/").await;
    match r {
        Err(e) if e.contains("reply code 2") => c.check(
            "non-DR segment `wiki` refused",
            true,
            "SOCKS5 reply 2 (not allowed): the edge answered 403 not-dr-segment".into(),
        ),
        other => c.check("non-DR segment `wiki` refused", false, format!("{other:?}")),
    }

    let r = socks_get(t.socks, DR_HOST, 1, "/").await;
    match r {
        Err(e) if e.contains("reply code 2") => c.check(
            "port outside the segment refused",
            true,
            format!("{DR_HOST}:1 -> 403 not-dr-segment"),
        ),
        other => c.check(
            "port outside the segment refused",
            false,
            format!("{other:?}"),
        ),
    }
}

/// 200 flows at once over the client's one tunnel.
async fn check_concurrent_flows(t: &Topology, c: &mut Checks) {
    let port = t.app.port();
    let n = 200;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let socks = t.socks;
        set.spawn(async move { socks_get(socks, DR_HOST, port, "/").await });
    }
    let mut good = 0;
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(Ok((200, _)))) {
            good += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    c.check(
        "concurrent flows over one tunnel",
        good == n,
        format!(
            "{good}/{n} requests in {:.0} ms ({:.0} flows/s)",
            secs * 1e3,
            n as f64 / secs
        ),
    );
}

/// What the edge counted: served, refused, flow setups.
fn print_edge_counters(m: &Metrics) {
    println!(
        "  edge counters: payroll ok={}, refused not-dr-segment={}, flow setups observed={}",
        m.flows_total.with_label_values(&["payroll", "ok"]).get(),
        m.flows_total
            .with_label_values(&[crate::metrics::NO_SEGMENT, "not-dr-segment"])
            .get()
            + m.flows_total
                .with_label_values(&["payroll", "not-dr-segment"])
                .get(),
        m.flow_setup.get_sample_count(),
    );
}

/// The admin address and the commands a person can try by hand.
fn print_try_lines(t: &Topology) {
    let port = t.app.port();
    if let Some(a) = t.edge_admin {
        println!("  edge admin: http://{a}/metrics  http://{a}/readyz");
    }
    println!(
        "  try: curl --socks5-hostname {} http://{DR_HOST}:{port}/",
        t.socks
    );
    println!(
        "  try: curl --proxy http://{} -p http://{DR_HOST}:{port}/",
        t.http
    );
    if let Some(tls) = t.edge_tls {
        let d = t.dir.path().display();
        println!(
            "  try the edge as an HTTPS proxy, no lifeboat client:\n    curl --proxy https://127.0.0.1:{} \
             --proxy-cacert {d}/ca.pem --proxy-cert {d}/alice.pem --proxy-key {d}/alice.key -p http://{DR_HOST}:{port}/",
            tls.port()
        );
    }
}
