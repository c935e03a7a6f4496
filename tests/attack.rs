//! The edge under attack: peers without a certificate cannot close the
//! door for everyone else. Loopback only; every loop is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// 300 TCP connections to the TLS listener that never send a byte (no
/// certificate needed) while only 4 handshakes may run at once: a TLS
/// client, a QUIC client and a connector that arrives meanwhile are all
/// served, because a connection holds a handshake slot only once its
/// ClientHello is in, and the oldest silent ones make room for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_without_a_certificate_lock_nobody_out() {
    let t = Builder::quic()
        .listen(Listen::Both)
        .crl()
        .edge_limits("max_handshakes_inflight = 4\n")
        .connectors(0)
        .client(None)
        .start_unready()
        .await;
    let tls = t.edge_tls();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(tls).await.expect("connect"));
    }
    let started = Instant::now();
    let (conn, _) = t.start_connector_over(&t.connector_cert(0), "connector0", Transport::Tls);
    eventually("a TLS connector gets in", Duration::from_secs(10), || {
        t.connectors_connected() == 1
    })
    .await;
    let tls_client = t
        .start_client_over(ClientCert::user(BOB), Transport::Tls)
        .await;
    first_flow_after(tls_client.http, t.app.port(), Duration::from_secs(10)).await;
    let quic_client = t.start_client(ClientCert::user(ALICE)).await;
    first_flow_after(quic_client.http, t.app.port(), Duration::from_secs(10)).await;
    println!(
        "with 300 silent connections held: connector, TLS and QUIC clients served within {:?}",
        started.elapsed()
    );
    // More silent connections keep arriving: a new client still gets in.
    for _ in 0..300 {
        idle.push(TcpStream::connect(tls).await.expect("connect"));
    }
    let late = t
        .start_client_over(ClientCert::user("carol"), Transport::Tls)
        .await;
    first_flow_after(late.http, t.app.port(), Duration::from_secs(10)).await;
    assert!(tunnels_of(&conn, "edge", "tls") == 1);
    drop(idle);
}

/// One client certificate cannot take every tunnel or flow slot: with
/// `max_tunnels = 10`, bob's sixth QUIC tunnel is refused (`quota`) at
/// `max_tunnels_per_identity = 4`, and alice and the connector still get in;
/// bob's fourth concurrent flow is refused `429 quota` at
/// `max_flows_per_identity = 3` while alice's flows go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_take_every_slot() {
    let t = Builder::quic()
        .crl()
        .edge_limits("max_tunnels = 10\nmax_tunnels_per_identity = 4\nmax_flows_per_identity = 3\n")
        .connectors(0)
        .client(None)
        .start_unready()
        .await;
    let mut bobs = Vec::new();
    for _ in 0..6 {
        bobs.push(t.start_client(ClientCert::user(BOB)).await);
    }
    let edge_m = std::sync::Arc::clone(&t.edge_metrics);
    eventually(
        "bob's tunnels over quota refused",
        Duration::from_secs(10),
        || handshakes_of(&edge_m, "client", "quic", "quota") >= 2,
    )
    .await;
    assert!(tunnels_of(&edge_m, "client", "quic") <= 4);
    let (conn, _) = t.start_connector_with(&t.connector_cert(0), "connector0");
    let alice = t.start_client(ClientCert::user(ALICE)).await;
    eventually("the connector gets in", Duration::from_secs(10), || {
        t.connectors_connected() == 1
    })
    .await;
    first_flow_after(alice.http, t.app.port(), Duration::from_secs(10)).await;
    assert_eq!(tunnels_of(&conn, "edge", "quic"), 1);

    // Bob holds three flows open through one client; the fourth is refused.
    let bob = &bobs[0];
    first_flow_after(bob.http, t.app.port(), Duration::from_secs(10)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = open_flow(bob.http, t.app.port()).await;
        held.push(s);
    }
    let refused = raw_connect(bob.http, &format!("{DR_HOST}:{}", t.app.port())).await;
    assert!(
        refused.starts_with("HTTP/1.1 429") && refused.contains("Lifeboat-Error: quota"),
        "{refused}"
    );
    let app = fetch_via(alice.http, t.app.port(), "/bytes/100")
        .await
        .expect("alice's flow");
    assert!(app.starts_with(b"HTTP/1.1 200"));
    drop(held);
    // Bob's flows given back: he may open one again.
    eventually("bob's quota given back", Duration::from_secs(5), || {
        edge_m.flows_active.get() == 0
    })
    .await;
    let app = fetch_via(bob.http, t.app.port(), "/bytes/100")
        .await
        .expect("bob's flow");
    assert!(app.starts_with(b"HTTP/1.1 200"));
}

/// A client certificate that expires while its QUIC tunnel is open: the
/// edge notices at the expiry, not at the next trust reload, closes the
/// tunnel and refuses the reconnect as expired (no `cert_grace` here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_during_a_tunnel_ends_it() {
    let t = Builder::quic().crl().client(None).start_unready().await;
    let short = t.ca.issue_expiring_in("dave", 4);
    let client = t.start_client(ClientCert::Files(short)).await;
    first_flow_after(client.http, t.app.port(), Duration::from_secs(10)).await;
    assert_eq!(tunnels_of(&client.metrics, "edge", "quic"), 1);
    let edge_m = std::sync::Arc::clone(&t.edge_metrics);
    eventually(
        "the edge closed the tunnel at the certificate's expiry",
        Duration::from_secs(12),
        || tunnels_of(&edge_m, "client", "quic") == 0,
    )
    .await;
    eventually(
        "the reconnect is refused as expired",
        Duration::from_secs(10),
        || handshakes_of(&edge_m, "client", "quic", "expired") >= 1,
    )
    .await;
}

/// `flow_idle_timeout`: a flow over QUIC and one over the edge's TLS
/// listener that stay silent are closed by the edge and counted as `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_flows_end_at_flow_idle_timeout_on_both_transports() {
    let t = Builder::quic()
        .listen(Listen::Both)
        .crl()
        .edge_limits("flow_idle_timeout = \"1s\"\n")
        .client(Some(ClientCert::user(BOB)))
        .start_unready()
        .await;
    let qc = t.client();
    let tc = &t
        .start_client_over(ClientCert::user(ALICE), Transport::Tls)
        .await;
    for client in [qc, tc] {
        first_flow_after(client.http, t.app.port(), Duration::from_secs(10)).await;
    }
    let mut silent = Vec::new();
    for client in [qc, tc] {
        let s = open_flow(client.http, t.app.port()).await;
        silent.push(s);
    }
    let started = Instant::now();
    for mut s in silent {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("the silent flow ends within 10 s");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    println!(
        "silent flows closed after {:?} (flow_idle_timeout 1s)",
        started.elapsed()
    );
    // The edge counts a flow just after closing it: the client can see the
    // end first.
    eventually("both silent flows counted", Duration::from_secs(5), || {
        t.edge_closed("idle") >= 2
    })
    .await;
    let idle = t.edge_closed("idle");
    assert_eq!(idle, 2, "both counted as idle");
}

/// 24 flows pushing into an app that never reads, over one connector
/// tunnel whose window (16 MiB) holds 16 flow windows (1 MiB): without care
/// they spend the tunnel's window and every other flow on it stops. The
/// edge closes the flows stalled longest (`stalled`) so that another
/// user's flows over the same connector keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_into_an_app_that_never_reads_do_not_stall_the_others() {
    let t = bob_and_alice_over_one_connector("").await;
    let (bob, alice, sink_port, app_port) = (&t.bob, &t.alice, t.sink_port, t.topo.app.port());

    // Bob's 24 flows push until their writes block (bounded: 30 s). They
    // fill every buffer on the way and stall (a write blocked for a second
    // marks a flow stalled); the edge closes the ones stalled longest
    // whenever more than 8 of the 16 flow windows would be held.
    let mut pushers = push_into(bob.http, sink_port, 24, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Alice's flows over the same connector tunnel still go through.
    let started = Instant::now();
    for i in 0..5 {
        let app = fetch_via(alice.http, app_port, "/bytes/4194304")
            .await
            .unwrap_or_else(|e| panic!("alice's flow {i} with bob's flows stalled: {e}"));
        let (_, body) = split_http(&app);
        assert_eq!(body.len(), 4 << 20, "alice's flow {i} complete");
    }
    println!(
        "5 x 4 MiB for alice beside 24 stalled flows: {:?}; stalled flows closed at the edge {}, at the connector {}",
        started.elapsed(),
        stalled(&t.topo.edge_metrics),
        stalled(&t.topo.connectors[0]),
    );
    pushers.abort_all();
}

/// Flows closed for stalling, as counted by `m`.
fn stalled(m: &lifeboat::metrics::Metrics) -> u64 {
    m.flows_closed.with_label_values(&["stalled"]).get()
}

/// The worst case of one user against another on one connector tunnel:
/// bob asks for `max_flows_per_tunnel` flows (the default, 1024) at once,
/// half pushing into an app that never reads, half downloading 1 GiB each
/// without reading a byte. His flows stall, and his longest stalled are
/// closed where their bytes wait (uploads at the connector, downloads at
/// the edge); alice, on another client tunnel over the same connector
/// tunnel, still uploads and downloads 4 MiB (without the connector's part,
/// her upload did not finish within 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_flows_per_tunnel_stalled_both_ways_do_not_stall_another_user() {
    let t = bob_and_alice_over_one_connector("").await;
    let (bob, alice, sink_port, app_port) = (&t.bob, &t.alice, t.sink_port, t.topo.app.port());

    let max = default_max_flows_per_tunnel();
    let (uploads, mut refused) = open_many(bob.http, sink_port, max / 2).await;
    let mut pushers = push(uploads, Duration::from_secs(60));
    let (mut downloads, more) = open_many(bob.http, app_port, max / 2).await;
    refused.extend(more);
    for s in &mut downloads {
        s.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .expect("ask for 1 GiB");
    }
    assert_all_quota(&refused);
    // Every buffer on the way fills and bob's flows stall.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = Instant::now();
    let body = vec![0xa5u8; 4 << 20];
    let echoed = tokio::time::timeout(
        Duration::from_secs(30),
        post_via(alice.http, app_port, &body),
    )
    .await
    .expect("alice's 4 MiB upload within 30 s beside bob's stalled flows")
    .unwrap_or_else(|e| {
        let closed: Vec<_> = lifeboat::metrics::CLOSE_REASONS
            .iter()
            .map(|r| (r, t.topo.edge_closed(r)))
            .collect();
        panic!("alice's upload: {e}; edge closed flows: {closed:?}")
    });
    assert!(echoed == body, "alice's upload echoed whole");
    let up = started.elapsed();
    let app = fetch_via(alice.http, app_port, "/bytes/4194304")
        .await
        .expect("alice's download beside bob's stalled flows");
    let (_, body) = split_http(&app);
    assert_eq!(body.len(), 4 << 20, "alice's download complete");
    let (at_edge, at_connector) = (
        stalled(&t.topo.edge_metrics),
        stalled(&t.topo.connectors[0]),
    );
    println!(
        "bob asked for {max} flows ({} refused), stalled both ways: alice's 4 MiB up in {up:?}, \
         down in {:?}; stalled flows closed at the edge {at_edge}, at the connector {at_connector}",
        refused.len(),
        started.elapsed() - up
    );
    assert!(
        at_connector > 0,
        "bob's uploads were never seen stalled at the connector"
    );
    assert!(
        at_edge > 0,
        "bob's downloads were never seen stalled at the edge"
    );
    pushers.abort_all();
    drop(downloads);
}

/// Bob holds `max_flows_per_tunnel` flows (the default, 1024) open and
/// silent (nothing to send, so never stalled) to the app behind the only
/// connector; alice's flow over the same connector tunnel is served at once.
/// (Connector tunnels used to take as many flows as a client tunnel: alice
/// waited for a stream and got `504 upstream-timeout`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_flows_per_tunnel_idle_flows_do_not_lock_out_another_user() {
    let t = bob_and_alice_over_one_connector("").await;
    let max = default_max_flows_per_tunnel();
    let (idle, refused) = open_many(t.bob.http, t.sink_port, max).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(idle.len(), max);
    alice_is_served(&t.topo, t.alice.http).await;
    drop(idle);
}

/// With connector tunnels of 64 flows (`max_flows_per_connector_tunnel`),
/// bob asking for 64 gets his share, 32, and is refused `429 quota` beyond
/// it; alice is served over the same connector tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_gets_half_a_connector_tunnel_and_no_more() {
    let limits = "max_flows_per_connector_tunnel = 64\n";
    let t = bob_and_alice_over_one_connector(limits).await;
    let (idle, refused) = open_many(t.bob.http, t.sink_port, 64).await;
    assert_eq!(idle.len(), 32, "bob's share of the connector tunnel");
    assert_eq!(refused.len(), 32);
    assert_all_quota(&refused);
    alice_is_served(&t.topo, t.alice.http).await;
    drop(idle);
}

/// Bob and alice, each with a client (default transport) to one edge whose
/// segments take any port of the DR names, over its one connector; both
/// edge and connector with `limits` added. Alice's first flow is through.
struct TwoUsers {
    topo: Topology,
    bob: ClientHandle,
    alice: ClientHandle,
    /// A port that accepts and never reads ([`sink`]).
    sink_port: u16,
}

async fn bob_and_alice_over_one_connector(limits: &str) -> TwoUsers {
    let (sink_port, held) = sink().await;
    drop(held); // detached: the sink runs until the test ends
    let topo = any_port_edge(limits)
        .connector_limits(limits)
        .client(None)
        .start_unready()
        .await;
    let bob = topo.start_client(ClientCert::user(BOB)).await;
    let alice = topo.start_client(ClientCert::user(ALICE)).await;
    first_flow_after(alice.http, topo.app.port(), Duration::from_secs(10)).await;
    TwoUsers {
        topo,
        bob,
        alice,
        sink_port,
    }
}

async fn alice_is_served(rig: &Rig, http: SocketAddr) {
    let app = fetch_via(http, rig.app.port(), "/bytes/1000")
        .await
        .expect("alice served beside bob's flows");
    assert!(
        app.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&app)
    );
}

fn default_max_flows_per_tunnel() -> usize {
    let max = lifeboat::config::Limits::default().max_flows_per_tunnel;
    usize::try_from(max).expect("fits")
}

/// Every answer is the edge's `429` with the word `quota`.
fn assert_all_quota(refused: &[String]) {
    for answer in refused {
        assert!(
            answer.starts_with("HTTP/1.1 429") && answer.contains("Lifeboat-Error: quota"),
            "{answer}"
        );
    }
}

/// A TCP server that accepts and never reads (an app with a zero receive
/// window); its port, and its task.
async fn sink() -> (u16, tokio::task::JoinHandle<()>) {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let port = sink.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = sink.accept().await {
            conns.push(c);
        }
    });
    (port, held)
}

/// Agents on the default transport and an edge (QUIC only, DR on, `limits`
/// added) whose segments serve every port of their names, so flows can
/// reach a [`sink`].
fn any_port_edge(limits: &str) -> Builder {
    Builder::new()
        .listen(Listen::Quic)
        .crl()
        .any_port()
        .edge_limits(limits)
}

/// `n` flows through the client's HTTP listener to `port` that push
/// data until their writes block or the edge closes them; each stops by
/// itself after `for_`.
async fn push_into(
    http: SocketAddr,
    port: u16,
    n: usize,
    for_: Duration,
) -> tokio::task::JoinSet<()> {
    let (flows, refused) = open_many(http, port, n).await;
    assert!(refused.is_empty(), "refused: {refused:?}");
    push(flows, for_)
}

/// Up to `n` flows through the client's HTTP listener to `port`: those
/// opened, and the answers of those refused.
async fn open_many(http: SocketAddr, port: u16, n: usize) -> (Vec<TcpStream>, Vec<String>) {
    let (mut flows, mut refused) = (Vec::with_capacity(n), Vec::new());
    for _ in 0..n {
        match try_open_flow_to(http, port).await {
            Ok(s) => flows.push(s),
            Err(answer) => refused.push(answer),
        }
    }
    (flows, refused)
}

/// Each flow pushes data until its writes block or the edge closes it, and
/// stops by itself after `for_`.
fn push(flows: Vec<TcpStream>, for_: Duration) -> tokio::task::JoinSet<()> {
    let deadline = Instant::now() + for_;
    let mut pushers = tokio::task::JoinSet::new();
    for mut s in flows {
        pushers.spawn(async move {
            let chunk = vec![0x5au8; 64 * 1024];
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // closed by the edge
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
    pushers
}

/// One host (127.0.0.2) opens 20 TLS handshakes and stalls each right after
/// its ClientHello, with 8 TLS handshake slots: it gets at most its share
/// (a quarter, at least 4) and is shed beyond it, and a user from another address is
/// served at once. Their handshakes would otherwise hold every slot for
/// `handshake_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_take_every_handshake_slot() {
    let t = Builder::quic()
        .listen(Listen::Both)
        .crl()
        .edge_limits("max_handshakes_inflight = 8\n")
        .client(None)
        .start_unready()
        .await;
    let tls = t.edge_tls();
    let trust = t.ca.trust(&t.user_cert("mallory"));
    let config = std::sync::Arc::new(trust.client_config(&[b"lifeboat/1"]));
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        let mut tcp = sock.connect(tls).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut hello = rustls::ClientConnection::new(std::sync::Arc::clone(&config), name)
            .expect("client connection");
        let mut first = Vec::new();
        hello.write_tls(&mut first).expect("ClientHello");
        tcp.write_all(&first).await.expect("send ClientHello");
        stalled.push(tcp);
    }
    let m = std::sync::Arc::clone(&t.edge_metrics);
    eventually(
        "the host's handshakes beyond its share are shed",
        Duration::from_secs(5),
        || handshakes_of(&m, "client", "tls", "shed") >= 20 - 4,
    )
    .await;
    let started = Instant::now();
    let user = t
        .start_client_over(ClientCert::user(BOB), Transport::Tls)
        .await;
    first_flow_after(user.http, t.app.port(), Duration::from_secs(10)).await;
    println!(
        "with one host stalling 20 TLS handshakes: another user served within {:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// An edge (QUIC, DR on) with a connector, carol revoked and refused: the
/// CRL from before her revocation, and carol's client.
struct RevokedCarol {
    topo: Topology,
    client: ClientHandle,
    crl_before: Vec<u8>,
}

async fn revoked_carol() -> RevokedCarol {
    let topo = Builder::quic().crl().client(None).start_unready().await;
    let crl_before = std::fs::read(topo.ca.crl()).expect("read CRL");
    let carol = topo.user_cert("carol");
    topo.ca.revoke(&carol);
    let client = topo.start_client(ClientCert::Files(carol)).await;
    eventually("carol refused as revoked", Duration::from_secs(10), || {
        topo.edge_handshakes("client", "revoked") >= 1
    })
    .await;
    RevokedCarol {
        topo,
        client,
        crl_before,
    }
}

impl RevokedCarol {
    /// Carol is refused as revoked again, and holds no tunnel.
    async fn still_refused(&self) {
        let m = &self.topo.edge_metrics;
        let before = handshakes_of(m, "client", "quic", "revoked");
        eventually(
            "carol still refused as revoked",
            Duration::from_secs(10),
            || handshakes_of(m, "client", "quic", "revoked") > before,
        )
        .await;
        assert_eq!(tunnels_of(&self.client.metrics, "edge", "quic"), 0);
    }
}

/// An older CRL put back (a restored backup, a stale copy) would un-revoke
/// certificates: the edge refuses it at the reload and the newer one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crl_is_refused_and_the_newer_one_stays() {
    let t = revoked_carol().await;
    // The CRL from before carol's revocation, written back over the newer.
    std::fs::write(t.topo.ca.crl(), &t.crl_before).expect("write the old CRL");
    let err = t
        .topo
        .edge
        .trust
        .reload()
        .expect_err("an older CRL is refused");
    assert!(err.to_string().contains("older than"), "{err}");
    // Still revoked: the newer CRL stays in force.
    t.still_refused().await;
}

/// A CRL without a CRL number cannot be ordered against the one in force
/// (RFC 5280 requires the number): the CRL from before carol's revocation,
/// re-signed by the real CA without it, is refused when it appears on disk
/// (logged with the file and the reason, counted as a failed reload) and at
/// SIGHUP; carol stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_without_a_crl_number_is_refused_and_revoked_users_stay_out() {
    let t = revoked_carol().await;
    let failed = || {
        t.topo
            .edge_metrics
            .config_reloads
            .with_label_values(&["error"])
            .get()
    };
    assert_eq!(failed(), 0);
    std::fs::write(t.topo.ca.crl(), &t.crl_before).expect("write the old CRL");
    lifeboat::pki::write_flawed_crl(&t.topo.ca.dir, lifeboat::trust::CrlFlaw::NoNumber)
        .expect("a CRL without a number");
    eventually(
        "the file watcher refuses it (counted)",
        Duration::from_secs(10),
        || failed() == 1,
    )
    .await;
    let err = t
        .topo
        .edge
        .reload(&t.topo.edge_config)
        .expect_err("a reload refuses it");
    let err = format!("{err:#}");
    assert!(
        err.contains("ca.crl: CRL refused: it has no CRL number extension"),
        "{err}"
    );
    assert_eq!(failed(), 2);
    t.still_refused().await;
}

/// `memory_budget` bounds what stalled flows hold across the edge: with
/// 8 MiB and 1 MiB flow windows, at most 4 stalled flows stay open (each
/// may hold two windows); the ones stalled longest are closed. The flows
/// download and their client never reads, so what they hold is held at the
/// edge (an app that never reads is the connector's to close, which holds
/// those bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_bounds_the_flows_that_stall() {
    let t = any_port_edge("memory_budget = 8388608\n")
        .client(Some(ClientCert::user(BOB)))
        .start_unready()
        .await;
    let (bob, app_port) = (t.client(), t.app.port());
    first_flow_after(bob.http, app_port, Duration::from_secs(10)).await;
    let (mut downloads, refused) = open_many(bob.http, app_port, 12).await;
    assert!(refused.is_empty(), "{refused:?}");
    for s in &mut downloads {
        s.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .expect("ask for 1 GiB");
    }
    let m = std::sync::Arc::clone(&t.edge_metrics);
    eventually(
        "stalled flows beyond the budget closed",
        Duration::from_secs(15),
        || m.flows_closed.with_label_values(&["stalled"]).get() >= 12 - 4,
    )
    .await;
    assert!(
        m.flows_active.get() <= 4,
        "{} flows still open at the edge",
        m.flows_active.get()
    );
    drop(downloads);
}

/// A UDP socket that sends but never hears anything: a QUIC client over it
/// sends its Initial (and retransmits it) and never finishes a handshake,
/// like a flood of Initials from addresses that do not answer.
#[derive(Debug)]
struct Deaf(std::sync::Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for Deaf {
    fn create_io_poller(self: std::sync::Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        std::sync::Arc::clone(&self.0).create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        _cx: &mut std::task::Context,
        _bufs: &mut [std::io::IoSliceMut<'_>],
        _meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Pending
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// 300 QUIC handshakes from one host (127.0.0.2) that never finish, with 8
/// QUIC handshake slots and `handshake_timeout` 5 s: the host gets its
/// share of slots, the rest of its Initials are asked for a Retry it never
/// answers (no slot held), and a QUIC user from another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_quic_handshakes_lock_nobody_out() {
    use quinn::Runtime as _;
    let t = Builder::quic()
        .crl()
        .edge_limits("max_handshakes_inflight = 8\n")
        .client(None)
        .start_unready()
        .await;
    let quic = t.edge_quic();
    let trust = t.ca.trust(&t.user_cert("mallory"));
    let std_sock = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let inner = quinn::TokioRuntime.wrap_udp_socket(std_sock).expect("wrap");
    let mut deaf = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        std::sync::Arc::new(Deaf(inner)),
        std::sync::Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(
        trust.client_config(&[b"lifeboat/1"]),
    ))
    .expect("QUIC client config");
    deaf.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let mut pending = Vec::new();
    for _ in 0..300 {
        pending.push(deaf.connect(quic, "localhost").expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let user = t.start_client(ClientCert::user(BOB)).await;
    first_flow_after(user.http, t.app.port(), Duration::from_secs(10)).await;
    println!(
        "with 300 unfinished QUIC handshakes from one host: another user served within {:?}",
        started.elapsed()
    );
    drop(pending);
}
