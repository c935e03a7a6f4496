//! Flows the edge refuses, and why: segments (not-dr-segment), DR mode
//! (dr-inactive, not-allowed, narrowing closes running flows), connectors
//! (no-connector, upstream-failed after trying a second connector). Each is
//! checked through SOCKS5 (reply code, curl's exit code) and HTTP CONNECT
//! (status and `Lifeboat-Error` word), and on the edge's counters.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use lifeboat::dr::DrMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// SOCKS5 reply codes (RFC 1928).
const NOT_ALLOWED: u8 = 2;
const NETWORK_UNREACHABLE: u8 = 3;
const CONNECTION_REFUSED: u8 = 5;
/// curl's CURLE_PROXY: the SOCKS proxy refused.
const CURL_PROXY_ERROR: i32 = 97;

/// curl through SOCKS5: its exit code.
async fn curl_socks_exit(socks: SocketAddr, url: &str) -> i32 {
    let out = curl()
        .args(["-sS", "--max-time", "20", "--socks5-hostname"])
        .arg(socks.to_string())
        .arg(url)
        .output()
        .await
        .expect("run curl");
    out.status.code().expect("curl exited")
}

/// curl through HTTP CONNECT: (exit code, `%{http_connect}`, stderr of `-v`).
async fn curl_http_connect(http: SocketAddr, url: &str) -> (i32, String, String) {
    let out = curl()
        .args(["-sS", "-v", "--max-time", "20", "-p", "--proxy"])
        .arg(format!("http://{http}"))
        .args(["-w", "%{http_connect}", "-o", "/dev/null"])
        .arg(url)
        .output()
        .await
        .expect("run curl");
    (
        out.status.code().expect("curl exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Assert one refusal through every way in: SOCKS5 reply `socks_code`, curl
/// over SOCKS5 fails with 97, curl over HTTP CONNECT sees `status`, and a raw
/// CONNECT gets `HTTP/1.1 <status>` with `Lifeboat-Error: <word>`.
async fn assert_refused(
    c: &ClientHandle,
    host: &str,
    port: u16,
    socks_code: u8,
    status: u16,
    word: &str,
) {
    let what = format!("{host}:{port}");
    assert_eq!(
        socks_reply(c.socks, host, port).await,
        socks_code,
        "SOCKS reply for {what}"
    );
    let url = format!("http://{host}:{port}/");
    assert_eq!(
        curl_socks_exit(c.socks, &url).await,
        CURL_PROXY_ERROR,
        "curl --socks5-hostname exit code for {what}"
    );
    let (code, connect, verbose) = curl_http_connect(c.http, &url).await;
    assert_ne!(code, 0, "curl -p succeeded for {what}");
    assert_eq!(connect, status.to_string(), "%{{http_connect}} for {what}");
    assert!(
        verbose.contains(&format!("< HTTP/1.1 {status}"))
            && verbose.contains(&format!("< Lifeboat-Error: {word}")),
        "curl -v for {what}:\n{verbose}"
    );
    let raw = raw_connect(c.http, &what).await;
    assert!(
        raw.starts_with(&format!("HTTP/1.1 {status} ")),
        "raw CONNECT {what}: {raw}"
    );
    assert!(
        raw.contains(&format!("\r\nLifeboat-Error: {word}\r\n")),
        "raw CONNECT {what}: {raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_dr_segments_are_refused_403() {
    let t = Builder::quic().start().await;
    let port = t.app_port();
    // Served: the exact name and the wildcard (sanity, same topology).
    assert_eq!(socks_reply(t.socks(), DR_HOST, port).await, 0);
    assert_eq!(socks_reply(t.socks(), WILDCARD_HOST, port).await, 0);
    let c = t.client();
    // A segment with `dr = false`.
    assert_refused(c, NON_DR_HOST, port, NOT_ALLOWED, 403, "not-dr-segment").await;
    // A name in no segment.
    assert_refused(c, UNKNOWN_HOST, port, NOT_ALLOWED, 403, "not-dr-segment").await;
    // The DR segment's name on a port outside its ranges.
    assert_refused(c, DR_HOST, 1, NOT_ALLOWED, 403, "not-dr-segment").await;
    // The wildcard's parent name itself is not covered by `*.hr.corp.example`.
    assert_eq!(
        socks_reply(t.socks(), "hr.corp.example", port).await,
        NOT_ALLOWED
    );
    // 3 refusals x 4 ways in, plus the parent name.
    assert_eq!(t.edge_flows("-", "not-dr-segment"), 13);
    assert_eq!(t.edge_flows("payroll", "ok"), 2);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_off_refuses_503_dr_inactive_but_keeps_connectors_warm() {
    let t = Builder::quic().dr(Dr::Static(DrMode::Off)).start().await;
    // Warm standby: the connector is registered and the segment ready.
    assert_eq!(t.connectors_connected(), 1);
    assert_eq!(
        t.edge_metrics
            .segment_ready
            .with_label_values(&["payroll"])
            .get(),
        1
    );
    assert_eq!(t.edge_metrics.dr_mode.with_label_values(&["off"]).get(), 1);
    assert_refused(
        t.client(),
        DR_HOST,
        t.app_port(),
        NETWORK_UNREACHABLE,
        503,
        "dr-inactive",
    )
    .await;
    // Counted under the segment the flows were for (DR_HOST is payroll's).
    assert_eq!(t.edge_flows("payroll", "dr-inactive"), 4);
    assert_eq!(t.edge_flows("-", "dr-inactive"), 0);
    assert_eq!(t.edge_flows("payroll", "ok"), 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connector_refuses_503_no_connector() {
    let t = Builder::quic().connectors(0).start().await;
    assert_eq!(
        t.edge_metrics
            .segment_ready
            .with_label_values(&["payroll"])
            .get(),
        0
    );
    assert_refused(
        t.client(),
        DR_HOST,
        t.app_port(),
        NETWORK_UNREACHABLE,
        503,
        "no-connector",
    )
    .await;
    assert_eq!(t.edge_flows("payroll", "no-connector"), 4);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_port_closed_refuses_502_after_trying_both_connectors() {
    let dead = closed_port().await;
    let t = Builder::quic()
        .connectors(2)
        .segment_port(dead)
        .start()
        .await;
    let failed = |i: usize| {
        t.connectors[i]
            .flows_total
            .with_label_values(&["-", "upstream-failed"])
            .get()
    };

    assert_eq!(
        socks_reply(t.socks(), DR_HOST, dead).await,
        CONNECTION_REFUSED
    );
    assert_eq!(
        (failed(0), failed(1)),
        (1, 1),
        "each connector saw one attempt of the one flow"
    );

    let raw = raw_connect(t.http(), &format!("{DR_HOST}:{dead}")).await;
    assert!(raw.starts_with("HTTP/1.1 502 "), "{raw}");
    assert!(
        raw.contains("\r\nLifeboat-Error: upstream-failed\r\n"),
        "{raw}"
    );
    assert_eq!((failed(0), failed(1)), (2, 2));

    let url = format!("http://{DR_HOST}:{dead}/");
    assert_eq!(curl_socks_exit(t.socks(), &url).await, CURL_PROXY_ERROR);
    let (_, connect, _) = curl_http_connect(t.http(), &url).await;
    assert_eq!(connect, "502");
    assert_eq!((failed(0), failed(1)), (4, 4));
    assert_eq!(t.edge_flows("payroll", "upstream-failed"), 4);
    // The live app port still works through the same connectors.
    assert_eq!(socks_reply(t.socks(), DR_HOST, t.app_port()).await, 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_test_mode_serves_only_test_users() {
    let t = Builder::quic()
        .dr_file("v=1;b=test;k=zpa")
        .test_users(&[ALICE])
        .start()
        .await;
    t.wait_mode(DrMode::Test).await;
    let bob = t.start_client(ClientCert::user(BOB)).await;
    eventually("bob's tunnel up", Duration::from_secs(10), || {
        bob.tunnels() == 1
    })
    .await;
    let port = t.app_port();

    let (status, body) = lifeboat::demo::socks_get(t.socks(), DR_HOST, port, "/")
        .await
        .expect("alice served in test mode");
    assert_eq!((status, body.as_slice()), (200, &b"hello\n"[..]));
    assert_refused(&bob, DR_HOST, port, NOT_ALLOWED, 403, "not-allowed").await;
    assert_eq!(t.edge_flows("payroll", "not-allowed"), 4);
    assert_eq!(t.edge_flows("-", "not-allowed"), 0);

    // Widening to `on` serves bob too.
    t.set_dr("v=1;b=on;k=zpa");
    t.wait_mode(DrMode::On).await;
    let (status, _) = lifeboat::demo::socks_get(bob.socks, DR_HOST, port, "/")
        .await
        .expect("bob served once DR is on");
    assert_eq!(status, 200);
    assert_eq!(
        t.edge_metrics
            .dr_transitions
            .with_label_values(&["test", "on"])
            .get(),
        1
    );
    t.shutdown().await;
}

/// Open a long-lived flow: POST /echo announcing more than will ever be
/// sent, and check the first bytes come back.
async fn open_echo(socks: SocketAddr, port: u16) -> TcpStream {
    let mut s = lifeboat::demo::socks_client::connect(socks, DR_HOST, port)
        .await
        .expect("SOCKS connect");
    s.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: 100000000\r\n\r\nping")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ping") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("echo within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "flow closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// The flow still echoes.
async fn still_echoes(s: &mut TcpStream, what: &str) {
    s.write_all(b"more").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo within 10 s"))
        .unwrap_or_else(|e| panic!("{what}: flow broken: {e}"));
    assert_eq!(&buf, b"more");
}

/// The flow was closed: the client's next read ends (EOF or error).
async fn was_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open 10 s after DR narrowed"));
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "{what}: read {r:?}, expected the end of the flow"
    );
}

/// The flow was reset: the client's next read fails with ECONNRESET, so an
/// application can tell the cut from a complete answer.
async fn was_reset(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open 10 s after DR narrowed"));
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{what}: {e}"),
        Ok(n) => panic!(
            "{what}: read returned {n} bytes (0 = a clean FIN, indistinguishable from a complete answer); expected a reset"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_dr_mode_closes_the_flows_it_no_longer_allows() {
    let t = Builder::quic()
        .dr_file("v=1;b=on;k=zpa")
        .test_users(&[ALICE])
        .start()
        .await;
    t.wait_mode(DrMode::On).await;
    let bob = t.start_client(ClientCert::user(BOB)).await;
    eventually("bob's tunnel up", Duration::from_secs(10), || {
        bob.tunnels() == 1
    })
    .await;
    let port = t.app_port();
    let mut alice_flow = open_echo(t.socks(), port).await;
    let mut bob_flow = open_echo(bob.socks, port).await;

    // on -> test: bob is no longer allowed, alice (a test user) is.
    t.set_dr("v=1;b=test;k=zpa");
    t.wait_mode(DrMode::Test).await;
    was_closed(&mut bob_flow, "bob's flow after on -> test").await;
    eventually(
        "edge counts one dr-narrowed",
        Duration::from_secs(5),
        || t.edge_closed("dr-narrowed") == 1,
    )
    .await;
    still_echoes(&mut alice_flow, "alice's flow after on -> test").await;

    // test -> off: nobody is allowed.
    t.set_dr("b=off v=1");
    t.wait_mode(DrMode::Off).await;
    was_closed(&mut alice_flow, "alice's flow after test -> off").await;
    eventually(
        "edge counts two dr-narrowed",
        Duration::from_secs(5),
        || t.edge_closed("dr-narrowed") == 2,
    )
    .await;
    assert_eq!(
        socks_reply(t.socks(), DR_HOST, port).await,
        NETWORK_UNREACHABLE,
        "a new flow while DR is off"
    );
    eventually("no flow active at the edge", Duration::from_secs(5), || {
        t.edge_metrics.flows_active.get() == 0
    })
    .await;
    t.shutdown().await;
}

/// DESIGN: "a transition that narrows access closes the flows it no longer
/// allows" -- the client must see that as a reset, not as a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_closed_by_dr_narrowing_is_reset_at_the_client() {
    let t = Builder::quic().dr_file("v=1;b=on;k=zpa").start().await;
    t.wait_mode(DrMode::On).await;
    let mut flow = open_echo(t.socks(), t.app_port()).await;
    t.set_dr("v=1;b=off;k=zpa");
    t.wait_mode(DrMode::Off).await;
    eventually(
        "edge counts the flow dr-narrowed",
        Duration::from_secs(5),
        || t.edge_closed("dr-narrowed") == 1,
    )
    .await;
    was_reset(&mut flow, "flow after on -> off").await;
    t.shutdown().await;
}
