//! Tunnels that always come back, with the transport users get by default
//! (`auto`): clients and connectors started before the edge, an edge
//! restarted (SIGTERM, then a new process on the same address), an edge
//! SIGKILLed and restarted (stateless reset), an edge going away while a
//! flow runs (it finishes byte-exact; new flows go to the other edge), and
//! `drill` / `loadgen` against a dead edge. The edge is a real `lifeboat
//! edge` process; clients and connectors run the library in process.
//!
//! Time bounds here are correctness bounds far above the measured figures
//! (printed with `--nocapture`), not performance assertions.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use lifeboat::metrics::Metrics;

const AUTO: &str = "auto";

/// An edge process on 127.0.0.1:`port` (QUIC and, if `tls`, TLS on the same
/// port), DR on, `extra` added to `[limits]` and `drain` as its drain_timeout.
fn edge_config(
    rig: &Rig,
    name: &str,
    ip: &str,
    port: u16,
    tls: bool,
    drain: &str,
) -> std::path::PathBuf {
    let listen = if tls {
        format!("quic = \"{ip}:{port}\"\ntls = \"{ip}:{port}\"\nadmin = \"127.0.0.1:0\"")
    } else {
        format!("quic = \"{ip}:{port}\"\nadmin = \"127.0.0.1:0\"")
    };
    let text = rig.edge_toml(&listen, "static:on", "").replace(
        "drain_timeout = \"2s\"",
        &format!("drain_timeout = {drain:?}"),
    );
    let path = rig.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write edge config");
    path
}

/// An edge process (QUIC and TLS on one free port, DR on, drain_timeout
/// 20 s) with a connector and a client on the default transport, a flow
/// through them served.
struct Served {
    rig: Rig,
    config: std::path::PathBuf,
    edge: Proc,
    conn: std::sync::Arc<Metrics>,
    client: ClientHandle,
}

async fn served_through_an_edge_process() -> Served {
    let rig = Rig::new().await;
    let port = free_port();
    let edge_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = edge_config(&rig, "edge", "127.0.0.1", port, true, "20s");
    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let conn = rig.start_connector(0, edge_addr, AUTO, "");
    let client = rig.start_client(&rig.user(BOB), edge_addr, AUTO, "").await;
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    Served {
        rig,
        config,
        edge,
        conn,
        client,
    }
}

/// A client config file for bob dialling `edge` (default transport), with
/// `extra` sections appended: for the client, `drill` and `loadgen` run as
/// processes.
fn client_config(rig: &Rig, name: &str, edge: SocketAddr, extra: &str) -> std::path::PathBuf {
    let bob = rig.user(BOB);
    let path = rig.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            "trust_domain = \"{TD}\"\nedges = [\"{edge}\"]\n\n[tls]\nca = {}\ncert = {}\nkey = {}\n\n{extra}",
            toml_path(&rig.ca.pem()),
            toml_path(&bob.cert),
            toml_path(&bob.key)
        ),
    )
    .expect("write client config");
    path
}

fn connected(m: &Metrics) -> bool {
    tunnels_of(m, "edge", "quic") + tunnels_of(m, "edge", "tls") > 0
}

async fn agents_before_the_edge(tls_listener: bool) {
    let rig = Rig::new().await;
    let port = free_port();
    let edge_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = edge_config(&rig, "edge", "127.0.0.1", port, tls_listener, "20s");
    // Connector and client first, on the default transport: their dials fail.
    let conn = rig.start_connector(0, edge_addr, AUTO, "");
    let client = rig.start_client(&rig.user(BOB), edge_addr, AUTO, "").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!connected(&conn) && !connected(&client.metrics));
    assert!(!client.task.is_finished(), "the client task ended");

    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let started = Instant::now();
    let served = first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    println!(
        "agents started before the edge (TLS listener {}): first flow {:?} after the edge's start",
        if tls_listener { "present" } else { "absent" },
        served - started
    );
    assert!(connected(&conn), "the connector is up");
    let log = edge.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_started_before_the_edge_are_served_once_it_starts() {
    agents_before_the_edge(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_started_before_a_quic_only_edge_are_served_once_it_starts() {
    agents_before_the_edge(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_tunnels_but_no_flows_exits_at_once_and_restart_is_served() {
    let Served {
        rig,
        config,
        mut edge,
        conn,
        client,
    } = served_through_an_edge_process().await;
    // A client and a connector connected for a minute.
    tokio::time::sleep(Duration::from_secs(60)).await;

    edge.signal("-TERM");
    let term = Instant::now();
    let status = edge.exited(Duration::from_secs(10)).await;
    let took = term.elapsed();
    println!("SIGTERM with tunnels, no flows: exit after {took:?}");
    assert!(status.success(), "{status}\n{}", edge.log());
    assert!(
        took < Duration::from_secs(5),
        "the edge waited {took:?} (drain_timeout 20s) although no flow ran:\n{}",
        edge.log()
    );
    let log = edge.log();
    assert!(log.contains("edge stopped"), "{log}");
    assert!(!log.contains("drain deadline passed"), "{log}");
    // The agents heard it leave: their tunnels are down without waiting for idle_timeout.
    eventually("agents saw the edge go", Duration::from_secs(3), || {
        !connected(&conn) && !connected(&client.metrics)
    })
    .await;

    // A replacement on the same address: the first flow through it.
    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let started = Instant::now();
    let served = first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    println!(
        "edge restarted under a client and a connector connected for a minute: first flow {:?} after the new edge's start",
        served - started
    );
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_failing_for_a_while_is_served_soon_after_the_edge_returns() {
    let Served {
        rig,
        config,
        mut edge,
        conn,
        client,
    } = served_through_an_edge_process().await;
    edge.signal("-TERM");
    edge.exited(Duration::from_secs(5)).await;
    // Down for a minute: every background backoff is long at its ceiling,
    // and a user keeps trying.
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(60) {
        assert!(fetch_via(client.http, rig.app.port(), "/bytes/10")
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let started = Instant::now();
    let served = first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    println!(
        "client and connector failing for a minute: first flow {:?} after the edge's start",
        served - started
    );
    assert!(connected(&conn));
    drop(edge);
}

/// A SIGKILLed edge restarted on the same address answers its
/// predecessor's connections with a stateless reset: the agents notice at
/// their next packet (a keepalive, every `idle_timeout / 3`), far sooner
/// than the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_peers_notice_by_stateless_reset() {
    let rig = Rig::new().await;
    let port = free_port();
    let edge_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = edge_config(&rig, "edge", "127.0.0.1", port, false, "20s");
    // Keepalive every 5 s; without the reset the tunnels would live on for 15 s.
    let limits = "idle_timeout = \"15s\"\n";
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("[limits]\n", &format!("[limits]\n{limits}"));
    std::fs::write(&config, text).expect("write");
    let mut edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let conn = rig.start_connector(0, edge_addr, AUTO, limits);
    let client = rig
        .start_client(&rig.user(BOB), edge_addr, AUTO, limits)
        .await;
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    let handshakes = |m: &Metrics| handshakes_of(m, "edge", "quic", "ok");
    let (conn_before, client_before) = (handshakes(&conn), handshakes(&client.metrics));

    edge.signal("-KILL");
    edge.exited(Duration::from_secs(5)).await;
    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let restarted = Instant::now();
    // The old tunnels are reset at their next keepalive and the agents
    // dial the new process; no user flow prompts them.
    eventually(
        "both agents redialled the restarted edge",
        Duration::from_secs(9),
        || handshakes(&conn) > conn_before && handshakes(&client.metrics) > client_before,
    )
    .await;
    println!(
        "SIGKILL + restart: both agents back {:?} after the restart",
        restarted.elapsed()
    );
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(10)).await;
    drop(edge);
}

/// SIGKILL and restart under a client's HTTP/2 tunnel (`transport =
/// "tls"`): the kernel closes the dead process's TCP connections, the
/// client sees its tunnel end at once, and the restarted edge serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_under_an_http2_client_tunnel() {
    let rig = Rig::new().await;
    let port = free_port();
    let edge_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = edge_config(&rig, "edge", "127.0.0.1", port, true, "20s");
    let mut edge = Proc::role("edge", &config);
    edge.listening("tls").await;
    let _conn = rig.start_connector(0, edge_addr, AUTO, "");
    let client = rig.start_client(&rig.user(BOB), edge_addr, "tls", "").await;
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    let m = std::sync::Arc::clone(&client.metrics);
    let before = handshakes_of(&m, "edge", "tls", "ok");
    assert_eq!(tunnels_of(&m, "edge", "tls"), 1);

    edge.signal("-KILL");
    edge.exited(Duration::from_secs(5)).await;
    eventually(
        "the client saw its HTTP/2 tunnel end",
        Duration::from_secs(5),
        || tunnels_of(&m, "edge", "tls") == 0,
    )
    .await;
    let edge = Proc::role("edge", &config);
    edge.listening("tls").await;
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(15)).await;
    assert!(handshakes_of(&m, "edge", "tls", "ok") > before);
    assert_eq!(tunnels_of(&m, "edge", "tls"), 1);
    drop(edge);
}

/// Two edges; the client's tunnel is on edge A. SIGTERM on A while a flow
/// runs: the flow finishes byte-exact, new flows go to edge B with no
/// refusal, and A exits once its flow is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_away_finishes_running_flows_and_moves_new_ones_to_the_other_edge() {
    going_away_moves_new_flows(AUTO).await;
}

/// The same over the client's HTTP/2 tunnel (`transport = "tls"`): A's
/// GOAWAY moves new flows, the flow running on A finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_away_over_http2_finishes_running_flows_and_moves_new_ones() {
    going_away_moves_new_flows("tls").await;
}

async fn going_away_moves_new_flows(client_transport: &str) {
    let rig = Rig::new().await;
    let (pa, pb) = (free_port(), free_port());
    let a: SocketAddr = format!("127.0.0.1:{pa}").parse().expect("addr");
    let b: SocketAddr = format!("127.0.0.1:{pb}").parse().expect("addr");
    let mut edge_a = Proc::role(
        "edge",
        &edge_config(&rig, "edge-a", "127.0.0.1", pa, true, "30s"),
    );
    edge_a.listening("quic").await;
    // The client knows both addresses but only A runs: its tunnel is on A.
    let client = rig
        .start_client_to(&rig.user(BOB), &[a, b], client_transport, "")
        .await;
    let conn = rig.start_connector_to(0, &[a, b], AUTO, "");
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
    let edge_b = Proc::role(
        "edge",
        &edge_config(&rig, "edge-b", "127.0.0.1", pb, true, "30s"),
    );
    edge_b.listening("quic").await;
    eventually(
        "the connector holds a tunnel to both edges",
        Duration::from_secs(10),
        || tunnels_of(&conn, "edge", "quic") + tunnels_of(&conn, "edge", "tls") == 2,
    )
    .await;

    // A 64 MiB download through A, read slowly enough to outlive the SIGTERM.
    const LEN: usize = 64 << 20;
    let http = client.http;
    let app_port = rig.app.port();
    let long = tokio::spawn(async move {
        let started = Instant::now();
        let r = slow_fetch(http, app_port, LEN).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin_a = edge_a.listening("admin").await;
    assert!(admin_get(admin_a, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    edge_a.signal("-TERM");
    let term = Instant::now();
    // Going away: not ready (load balancers take it out) while the flow runs.
    eventually_async(
        "edge A's /readyz answers 503 while it drains",
        Duration::from_secs(3),
        || async move {
            admin_get(admin_a, "/readyz")
                .await
                .starts_with("HTTP/1.1 503")
        },
    )
    .await;

    // New flows meanwhile: every one served (through B), none refused.
    for i in 0..10 {
        let r = fetch_via(client.http, rig.app.port(), "/bytes/1000").await;
        let app = r.unwrap_or_else(|e| panic!("flow {i} after SIGTERM refused: {e}"));
        assert!(app.starts_with(b"HTTP/1.1 200"), "flow {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if client_transport == "tls" {
        // The new flows rode the client's HTTP/2 tunnel to B.
        assert_eq!(tunnels_of(&client.metrics, "edge", "tls"), 1);
        assert_eq!(tunnels_of(&client.metrics, "edge", "quic"), 0);
    }
    let (got, took) = long.await.expect("long flow task");
    let got = got.unwrap_or_else(|e| panic!("the running flow broke: {e}"));
    let (_, body) = split_http(&got);
    assert_eq!(body.len(), LEN, "every byte of the running flow");
    let mut check = PatternCheck::default();
    check.feed(body);
    println!("running flow of {LEN} bytes finished after {took:?}");
    let status = edge_a.exited(Duration::from_secs(20)).await;
    println!("edge A exited {:?} after SIGTERM", term.elapsed());
    assert!(status.success(), "{status}");
    assert!(
        !edge_a.log().contains("drain deadline passed"),
        "{}",
        edge_a.log()
    );
    drop(edge_b);
}

/// GET `/bytes/len` through the client, read at about 16 MiB/s.
async fn slow_fetch(http: SocketAddr, app_port: u16, len: usize) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = format!("{DR_HOST}:{app_port}");
    let mut s = tokio::net::TcpStream::connect(http)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\nGET /bytes/{len} HTTP/1.1\r\nHost: {DR_HOST}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if Instant::now() > deadline {
            return Err("still running after 40 s".into());
        }
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) => return Err(format!("{e} after {} bytes", out.len())),
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    if !out.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned());
    }
    Ok(split_http(&out).1.to_vec())
}

/// `drill` and `loadgen` against an edge that is not running: a result
/// word and exit status 1, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_and_loadgen_report_a_dead_edge() {
    let rig = Rig::new().await;
    let port = free_port();
    let dead: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let edge_cfg = edge_config(&rig, "edge", "127.0.0.1", port, true, "20s");
    let client_cfg = client_config(
        &rig,
        "drill.toml",
        dead,
        "[limits]\nhandshake_timeout = \"2s\"\n",
    );
    let target = format!("{DR_HOST}:{}", rig.app.port());
    let drill = tokio::process::Command::new(BIN)
        .args(["drill", "-c"])
        .arg(&client_cfg)
        .arg("--edge-config")
        .arg(&edge_cfg)
        .args(["--target", &target])
        .output();
    let loadgen = tokio::process::Command::new(BIN)
        .args(["loadgen", "-c"])
        .arg(&client_cfg)
        // A client retries until served or its --duration: bounded here.
        .args(["--target", &target, "--flows", "5", "--duration", "6s"])
        .output();
    let (drill, loadgen) = tokio::join!(drill, loadgen);
    for (name, out) in [
        ("drill", drill.expect("run drill")),
        ("loadgen", loadgen.expect("run loadgen")),
    ] {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("--- {name}: {}\n{text}", out.status);
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        assert!(!text.contains("panicked"), "{name}: {text}");
        assert!(
            text.contains("unreachable"),
            "{name} names the result: {text}"
        );
    }
}

/// A connector SIGKILLed and restarted: the edge takes its new tunnel in
/// place of the dead one (same identity) at once, not after idle_timeout,
/// and flows go through the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_connector_replaces_its_dead_tunnel_at_once() {
    let t = Builder::new()
        .crl()
        .connectors(0)
        .client(None)
        .start_unready()
        .await;
    let text = t.connector_toml(0, t.edge_quic(), AUTO, "");
    let path = t.dir.path().join("connector0.toml");
    std::fs::write(&path, text).expect("write connector config");
    let mut connector = Proc::role("connector", &path);
    let client = t.start_client(ClientCert::user(BOB)).await;
    first_flow_after(client.http, t.app.port(), Duration::from_secs(20)).await;
    assert_eq!(t.connectors_connected(), 1);

    connector.signal("-KILL");
    connector.exited(Duration::from_secs(5)).await;
    let connector = Proc::role("connector", &path);
    let restarted = Instant::now();
    first_flow_after(client.http, t.app.port(), Duration::from_secs(10)).await;
    println!(
        "connector SIGKILLed and restarted: flows through it {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(
        t.connectors_connected(),
        1,
        "the dead tunnel is not counted beside the new one"
    );
    // Every flow goes through the live tunnel, none to the dead one.
    for _ in 0..5 {
        let app = fetch_via(client.http, t.app.port(), "/bytes/100")
            .await
            .expect("flow");
        assert!(app.starts_with(b"HTTP/1.1 200"));
    }
    drop(connector);
}

/// `lifeboat pki revoke` of a connector's certificate: the edge re-checks
/// its live tunnel at the trust reload (no signal) and closes it; the
/// connector's redials are refused as revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_connector_loses_its_tunnel() {
    for choice in [Transport::Quic, Transport::Tls] {
        let transport = choice.as_str();
        let t = Builder::new()
            .transport(choice)
            .listen(Listen::Both)
            .crl()
            .client(None)
            .start()
            .await;
        let conn = &t.connectors[0];
        t.ca.revoke(&t.connector_certs[0]);
        eventually(
            &format!("the edge closes the revoked connector's {transport} tunnel"),
            Duration::from_secs(10),
            || t.connectors_connected() == 0 && !connected(conn),
        )
        .await;
        eventually(
            "its redial is refused as revoked",
            Duration::from_secs(10),
            || {
                t.edge_metrics
                    .handshakes
                    .with_label_values(&["connector", transport, "revoked"])
                    .get()
                    >= 1
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(t.connectors_connected(), 0, "{transport}: stays out");
    }
}

/// One of two connectors frozen (SIGSTOP): it acknowledges nothing, and
/// every flow is served by the other one, long before the connect timeout
/// (20 s here) would have moved it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connector_does_not_swallow_flows() {
    let rig = Rig::new().await;
    let text = rig
        .edge_toml("quic = \"127.0.0.1:0\"", "static:on", "")
        .replace("connect_timeout = \"3s\"", "connect_timeout = \"20s\"");
    let edge = rig.start_edge(&text);
    let quic = edge.quic.expect("quic");
    let mut procs = Vec::new();
    for i in 0..2 {
        let path = rig.dir.path().join(format!("connector{i}.toml"));
        std::fs::write(&path, rig.connector_toml(i, quic, AUTO, "")).expect("write");
        procs.push(Proc::role("connector", &path));
    }
    let client = rig.start_client(&rig.user(BOB), quic, AUTO, "").await;
    eventually("both connectors up", Duration::from_secs(15), || {
        connectors_connected(&edge.metrics) == 2
    })
    .await;
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(10)).await;

    procs[0].signal("-STOP");
    // Datagrams it sent just before it froze may still be on their way in
    // (taken for signs of life by a flow opened at that very moment).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut flows = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let http = client.http;
        let port = rig.app.port();
        flows.spawn(async move {
            let r = fetch_via(http, port, "/bytes/1000").await;
            (r, started.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(done) = flows.join_next().await {
        let (r, took) = done.expect("flow task");
        let app = r.unwrap_or_else(|e| panic!("a flow failed with a connector frozen: {e}"));
        assert!(app.starts_with(b"HTTP/1.1 200"));
        slowest = slowest.max(took);
    }
    println!("10 concurrent flows with one of two connectors frozen: all served, the slowest in {slowest:?}");
    assert!(
        slowest < Duration::from_secs(10),
        "a flow waited {slowest:?}: it sat on the frozen connector"
    );
    procs[0].signal("-CONT");
}

/// The edge says at start when the kernel capped its QUIC socket buffers
/// below the 8 MiB it asks for (`net.core.rmem_max`/`wmem_max`), and is
/// silent when it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_warns_when_the_kernel_caps_its_udp_buffers() {
    let cap = |name: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .expect("read sysctl")
            .trim()
            .parse()
            .expect("a number")
    };
    let capped = cap("rmem_max") < 8 << 20 || cap("wmem_max") < 8 << 20;
    let rig = Rig::new().await;
    let config = edge_config(&rig, "edge", "127.0.0.1", free_port(), false, "20s");
    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let warned = edge
        .log()
        .contains("the kernel capped the QUIC socket's buffers");
    assert_eq!(
        warned,
        capped,
        "capped by the kernel: {capped}\n{}",
        edge.log()
    );
}

/// A client that exits closes its tunnel (CONNECTION_CLOSE): the edge stops
/// counting it at once, not after `idle_timeout` (30 s here). `loadgen`
/// exits the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_exit_close_their_tunnels_at_once() {
    let t = Builder::quic().crl().client(None).start_unready().await;
    let client_cfg = client_config(
        &t,
        "client.toml",
        t.edge_quic(),
        "[listen]\nsocks = \"127.0.0.1:0\"\n",
    );
    let m = std::sync::Arc::clone(&t.edge_metrics);
    let clients = move || tunnels_of(&m, "client", "quic");
    let mut client = Proc::role("client", &client_cfg);
    eventually("the client's tunnel is up", Duration::from_secs(10), || {
        clients() == 1
    })
    .await;
    client.signal("-TERM");
    let exited = Instant::now();
    assert!(client.exited(Duration::from_secs(10)).await.success());
    eventually(
        "the edge stopped counting it",
        Duration::from_secs(1),
        || clients() == 0,
    )
    .await;
    println!(
        "client exit: the edge's count dropped within {:?}",
        exited.elapsed()
    );

    let target = format!("{DR_HOST}:{}", t.app.port());
    let out = tokio::process::Command::new(BIN)
        .args(["loadgen", "-c"])
        .arg(&client_cfg)
        .args(["--target", &target, "--flows", "20"])
        .output()
        .await
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "loadgen's tunnel is not counted after it exited",
        Duration::from_secs(1),
        || clients() == 0,
    )
    .await;
}

/// Ten SIGHUPs under load, alternating a good and a broken config file:
/// every flow running or started meanwhile is served, the broken files are
/// refused (the good config stays) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sighups_under_load_fail_no_flow() {
    let rig = Rig::new().await;
    let port = free_port();
    let edge_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = edge_config(&rig, "edge", "127.0.0.1", port, true, "20s");
    let good = std::fs::read_to_string(&config).expect("read config");
    let edge = Proc::role("edge", &config);
    edge.listening("quic").await;
    let admin = edge.listening("admin").await;
    let _conn = rig.start_connector(0, edge_addr, AUTO, "");
    let client = rig.start_client(&rig.user(BOB), edge_addr, AUTO, "").await;
    first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;

    let (http, app_port) = (client.http, rig.app.port());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let stop = std::sync::Arc::clone(&stop);
        load.spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match fetch_via(http, app_port, "/bytes/262144").await {
                    Ok(app) if split_http(&app).1.len() == 262_144 => ok += 1,
                    Ok(app) => failed
                        .push(String::from_utf8_lossy(&app[..app.len().min(100)]).into_owned()),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        });
    }
    for i in 0..10 {
        let text = if i % 2 == 0 {
            good.replace("[limits]\n", "[limits]\nmax_flows_per_identity = 5000\n")
        } else {
            format!("{good}\nmax_flows = \"many\"\n")
        };
        std::fs::write(&config, text).expect("write config");
        edge.signal("-HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut served, mut failed) = (0u32, Vec::new());
    while let Some(r) = load.join_next().await {
        let (ok, f) = r.expect("load task");
        served += ok;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} flows failed during the reloads: {failed:?}",
        failed.len()
    );
    assert!(served >= 4, "the load ran ({served} flows)");
    let metrics = admin_get(admin, "/metrics").await;
    let count = |result: &str| -> u64 {
        let series = format!("lifeboat_config_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    println!("10 SIGHUPs under load: {served} flows served, none failed");
    assert_eq!((count("ok"), count("error")), (5, 5), "{}", edge.log());
}
