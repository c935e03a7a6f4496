//! The edge under attack: peers without a certificate cannot close the
//! door for everyone else. Loopback only; every loop is bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lifeboat::metrics::Metrics;

fn connectors_connected(m: &Metrics) -> i64 {
    m.connectors_connected.with_label_values(&[GROUP]).get()
}

/// 300 TCP connections to the TLS listener that never send a byte (no
/// certificate needed) while only 4 handshakes may run at once: a TLS
/// client, a QUIC client and a connector that arrives meanwhile are all
/// served, because a connection holds a handshake slot only once its
/// ClientHello is in, and the oldest silent ones make room for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_without_a_certificate_lock_nobody_out() {
    let rig = Rig::new().await;
    let edge = rig.start_edge(&rig.edge_toml(
        "quic = \"127.0.0.1:0\"\ntls = \"127.0.0.1:0\"",
        "static:on",
        "max_handshakes_inflight = 4\n",
    ));
    let (quic, tls) = (edge.quic.expect("quic"), edge.tls.expect("tls"));
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(tls).await.expect("connect"));
    }
    let started = Instant::now();
    let conn = rig.start_connector(0, tls, "tls", "");
    eventually("a TLS connector gets in", Duration::from_secs(10), || {
        connectors_connected(&edge.metrics) == 1
    })
    .await;
    let tls_client = rig.start_client(&rig.user(BOB), tls, "tls", "").await;
    first_flow_after(tls_client.http, rig.app.port(), Duration::from_secs(10)).await;
    let quic_client = rig.start_client(&rig.user(ALICE), quic, "quic", "").await;
    first_flow_after(quic_client.http, rig.app.port(), Duration::from_secs(10)).await;
    println!(
        "with 300 silent connections held: connector, TLS and QUIC clients served within {:?}",
        started.elapsed()
    );
    // More silent connections keep arriving: a new client still gets in.
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(tls).await.expect("connect"));
    }
    let late = rig.start_client(&rig.user("carol"), tls, "tls", "").await;
    first_flow_after(late.http, rig.app.port(), Duration::from_secs(10)).await;
    assert!(tunnels_of(&conn, "edge", "tls") == 1);
    drop(idle);
}
