//! A DR activation stampede on loopback: 200 clients arriving at once
//! through `lifeboat::loadgen` (its library entry point) against a real
//! edge whose handshake pool holds 4, so the edge sheds most of them at
//! first. Every client comes back as a client would (the keeper's backoff,
//! the edge's hint) and is served; the report counts the sheds; no client
//! aborts the run. Bounded: the run stops by itself within its duration,
//! and the test gives up a little after that.
//!
//! And the hint itself: a client shed by an edge (QUIC `CONNECTION_REFUSED`
//! before any crypto, TLS `user_canceled` alert after the ClientHello)
//! does not dial again before the edge's hint, jittered.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, handshakes_of, Builder, Listen, Rig, DR_HOST};
use lifeboat::client::tunnel::Tunnel;
use lifeboat::config::{DnsSection, Limits, TransportChoice};
use lifeboat::loadgen::{self, Options};
use lifeboat::metrics::Metrics;
use lifeboat::preamble::Dest;
use lifeboat::transport::dial::{Dialer, HEAD_START};
use lifeboat::transport::{quic, shed, tls, ALPN_CLIENT};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 200;
/// The loadgen's own bound; the test's is a little longer.
const RUN: Duration = Duration::from_secs(40);

/// Start an edge with 4 handshake slots and a connector; run 200 clients
/// over `transport` through loadgen; check that all were served after
/// being shed, and return nothing: a failure panics with the report.
/// An edge (QUIC and TLS) with 4 handshake slots and a connector, and a
/// loadgen client config (alice, dialling over `transport`) at `file` in
/// its folder.
async fn shedding_edge(transport: TransportChoice, file: &str) -> (common::Topology, PathBuf) {
    let t = Builder::quic()
        .listen(Listen::Both)
        .crl()
        // Every loadgen client presents alice's certificate.
        .edge_limits("max_handshakes_inflight = 4\nmax_tunnels_per_identity = 1000\n")
        .client(None)
        .start()
        .await;
    let (to, word) = if transport == TransportChoice::Tls {
        (t.edge_tls(), "tls")
    } else {
        (t.edge_quic(), "quic")
    };
    let text = t.client_toml(&t.user_cert("alice"), &[to], word, "");
    let path = t.dir.path().join(file);
    std::fs::write(&path, text).expect("write the client config");
    (t, path)
}

async fn stampede(transport: TransportChoice, word: &str) {
    let (t, path) = shedding_edge(transport, "stampede-client.toml").await;
    let opts = Options {
        target: Dest::parse(&format!("{DR_HOST}:{}", t.app.port())).expect("target"),
        flows: CLIENTS as u64,
        concurrency: 16,
        clients: CLIENTS,
        duration: RUN,
        http_get: Some("/bytes/100".into()),
        hold: Duration::ZERO,
        transport: Some(transport),
    };
    let report = tokio::time::timeout(RUN + Duration::from_secs(10), loadgen::run(&path, opts))
        .await
        .expect("loadgen stops by itself within its duration")
        .expect("loadgen runs");
    println!("{word}: {CLIENTS} clients arriving at once, 4 handshake slots:\n{report}");
    assert_eq!(report.clients, CLIENTS as u64, "{report}");
    assert_eq!(
        report.clients_served, CLIENTS as u64,
        "every client served: {report}"
    );
    assert!(report.all_served_seconds.is_some(), "{report}");
    assert_eq!(report.flows_ok, CLIENTS as u64, "{report}");
    assert_eq!(report.flows_failed, 0, "{report}");
    assert!(
        report.bytes > 0,
        "each first flow read its answer: {report}"
    );
    assert!(
        report.handshakes_ok >= CLIENTS as u64,
        "each client's tunnel came up: {report}"
    );
    let shed_seen = report.handshakes_refused.get("shed").copied().unwrap_or(0);
    assert!(
        shed_seen > 0,
        "the clients saw their handshakes shed: {report}"
    );
    let shed_at_edge = handshakes_of(&t.edge_metrics, "client", word, "shed");
    assert!(
        shed_at_edge >= shed_seen,
        "the edge counted {shed_at_edge} sheds, the clients {shed_seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_clients_arriving_at_once_are_all_served_after_being_shed() {
    stampede(TransportChoice::Quic, "quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_arriving_at_once_are_all_served_after_being_shed() {
    stampede(TransportChoice::Tls, "tls").await;
}

/// An edge that sheds every dial, run against the client's tunnel keeper
/// (as `lifeboat client` and loadgen run it) dialling it with `choice`:
/// `shed_one` waits for one dial, sheds it and says when the dial came.
/// No flow waits for the tunnel, so only the keeper's own pacing decides
/// when it dials again. Checks that each dial came no sooner after the
/// one before than half the default hint (its jitter's floor; the backoff
/// alone would come back after 50-100 ms), and that the client counted
/// its handshakes `shed`.
async fn shed_every_dial<F, Fut>(
    rig: &Rig,
    edge: SocketAddr,
    choice: TransportChoice,
    mut shed_one: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Instant>,
{
    let trust = rig.ca.trust(&rig.user("alice"));
    let limits = Limits::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let dialer = Dialer {
        choice,
        quic: quic::client_endpoint(any, &trust, ALPN_CLIENT, &limits, 0).expect("client endpoint"),
        tls: tls::connector(&trust, ALPN_CLIENT),
        timeout: Duration::from_secs(5),
        head_start: HEAD_START,
    };
    let metrics = Arc::new(Metrics::new("client"));
    let stop = CancellationToken::new();
    let _tunnel = Tunnel::start_with_dns(
        dialer,
        vec![edge.to_string()],
        &DnsSection::default(),
        limits,
        Arc::clone(&metrics),
        stop.clone(),
    );
    let dials = tokio::time::timeout(Duration::from_secs(15), async {
        let mut dials = Vec::new();
        while dials.len() < 4 {
            dials.push(shed_one().await);
        }
        dials
    })
    .await
    .expect("four dials within 15 s");
    stop.cancel();
    let what = if choice == TransportChoice::Tls {
        "tls"
    } else {
        "quic"
    };
    for pair in dials.windows(2) {
        let gap = pair[1] - pair[0];
        println!("{what}: dialled again after {gap:?}");
        assert!(
            gap >= shed::DEFAULT / 2,
            "{what}: dialled again after {gap:?}, before the edge's hint ({:?}, jittered from half)",
            shed::DEFAULT
        );
    }
    eventually(
        "the client counted its sheds",
        Duration::from_secs(5),
        || handshakes_of(&metrics, "edge", what, "shed") >= 3,
    )
    .await;
}

/// A QUIC edge whose handshake pool is full refuses before any crypto
/// (`CONNECTION_REFUSED`, no reason phrase): the client counts it `shed`
/// and comes back after the default hint, jittered, not at its backoff's
/// first step. The edge here is lifeboat's own endpoint refusing every
/// connection, as a full pool does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_shed_comes_back_after_the_hint() {
    let rig = Rig::new().await;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let ep = quic::server_endpoint(any, &rig.ca.trust(&rig.edge_cert), &Limits::default())
        .expect("edge endpoint");
    let addr = ep.local_addr().expect("edge address");
    let ep = &ep;
    shed_every_dial(&rig, addr, TransportChoice::Quic, move || async move {
        let incoming = ep.accept().await.expect("the endpoint is open");
        let at = Instant::now();
        incoming.refuse();
        at
    })
    .await;
}

/// A TLS edge that sheds right after the ClientHello answers a fatal
/// `user_canceled` alert: the client counts it `shed` and comes back after
/// the default hint, jittered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_shed_comes_back_after_the_hint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("edge address");
    let listener = &listener;
    shed_every_dial(&rig, addr, TransportChoice::Tls, move || async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let at = Instant::now();
        let mut hello = [0u8; 2048];
        let n = tcp.read(&mut hello).await.expect("read the ClientHello");
        assert_eq!(
            hello.first(),
            Some(&22),
            "a TLS handshake record ({n} bytes)"
        );
        tcp.write_all(&shed::TLS_ALERT)
            .await
            .expect("send the alert");
        at
    })
    .await;
}

/// `lifeboat loadgen --transport tls` under a descriptor limit a little
/// above its clients: each client holds one TCP connection and no UDP
/// socket of its own (10,000 TLS clients once held 20,000 descriptors, met
/// `ulimit -n`, and their connects failed as `unreachable`). The real
/// binary under `prlimit`, against an edge that sheds most of them first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_loadgen_clients_fit_a_descriptor_limit_just_above_their_number() {
    let (t, path) = shedding_edge(TransportChoice::Tls, "loadgen-client.toml").await;
    // 200 clients: their TCP connections, the runtime's own descriptors and
    // the connections being shed fit in 320; a UDP socket each would not.
    let clients = CLIENTS.to_string();
    let out = tokio::process::Command::new("prlimit")
        .arg("--nofile=320:320")
        .arg(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("loadgen")
        .arg("-c")
        .arg(&path)
        .args(["--target", &format!("{DR_HOST}:{}", t.app.port())])
        .args([
            "--clients",
            &clients,
            "--flows",
            &clients,
            "--concurrency",
            "16",
        ])
        .args(["--duration", "40s", "--transport", "tls", "--json"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN + Duration::from_secs(10), out)
        .await
        .expect("loadgen stops by itself within its duration")
        .expect("run prlimit and loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("loadgen's JSON ({e}):\n{stdout}\n--- stderr\n{stderr}"));
    println!("{report}");
    assert_eq!(report["clients_served"], CLIENTS, "{report}\n{stderr}");
    assert_eq!(report["flows_failed"], 0, "{report}\n{stderr}");
    assert!(
        report["handshakes_refused"].get("unreachable").is_none(),
        "no connect failed: {report}"
    );
}
