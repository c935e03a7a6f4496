//! QUIC blocked: a connector and a client with `transport = "auto"` fall
//! back to TLS on the edge's `tls` port after QUIC's head start, count the
//! fallback, keep carrying flows byte-exact, and return to QUIC when UDP
//! works again (the background re-probe).
//!
//! Two ways to block QUIC:
//! - a real UDP drop: the whole test (edge, connector, client, app) runs in
//!   a network namespace of its own (loopback only), where an nftables rule
//!   drops UDP to the edge's port; removing the rule heals the network. Needs
//!   root (CAP_SYS_ADMIN) and `nft`; without them the test is skipped,
//!   unless `LIFEBOAT_REQUIRE_NETNS=1` (CI), which makes it fail.
//! - a UDP port where nothing listens: the edge's QUIC endpoint is bound to
//!   another address than the one the agents dial (TCP there is the edge's
//!   `tls` listener); "healing" starts a UDP relay on the dialled port that
//!   forwards to the edge's QUIC endpoint. Runs everywhere.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lifeboat::metrics::Metrics;
use lifeboat::transport::dial::HEAD_START;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// How QUIC to the dialled port is blocked, and how it heals.
enum Block {
    /// An nftables table in this test's own network namespace.
    Nft { port: u16 },
    /// Nothing on UDP `listen` until a relay to `to` starts there.
    Unserved { listen: SocketAddr, to: SocketAddr },
}

const NFT_TABLE: &str = "lifeboat_test";

fn nft(args: &[&str]) {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Block {
    fn apply(&self) {
        if let Self::Nft { port } = self {
            nft(&["add", "table", "inet", NFT_TABLE]);
            nft(&[
                "add",
                "chain",
                "inet",
                NFT_TABLE,
                "out",
                "{ type filter hook output priority 0; }",
            ]);
            nft(&[
                "add",
                "rule",
                "inet",
                NFT_TABLE,
                "out",
                "udp",
                "dport",
                &port.to_string(),
                "drop",
            ]);
        }
    }

    async fn heal(&self, stop: CancellationToken) {
        match self {
            Self::Nft { .. } => nft(&["delete", "table", "inet", NFT_TABLE]),
            Self::Unserved { listen, to } => udp_relay(*listen, *to, stop).await,
        }
    }
}

/// Forward UDP datagrams from `listen` to `to` and the answers back, one
/// upstream socket per peer, until `stop`.
async fn udp_relay(listen: SocketAddr, to: SocketAddr, stop: CancellationToken) {
    let front = Arc::new(
        UdpSocket::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("relay bind UDP {listen}: {e}")),
    );
    tokio::spawn(async move {
        let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = tokio::select! {
                r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            let back = match peers.get(&peer) {
                Some(b) => Arc::clone(b),
                None => {
                    let b = UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
                    b.connect(to).await.expect("relay connect");
                    let b = Arc::new(b);
                    peers.insert(peer, Arc::clone(&b));
                    let (front, back, stop) = (Arc::clone(&front), Arc::clone(&b), stop.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            tokio::select! {
                                r = back.recv(&mut buf) => if let Ok(n) = r {
                                    let _ = front.send_to(&buf[..n], peer).await;
                                },
                                _ = stop.cancelled() => return,
                            }
                        }
                    });
                    b
                }
            };
            let _ = back.send(&buf[..n]).await;
        }
    });
}

/// curl through the client's SOCKS5 listener: `n` bytes of the pattern, byte-exact.
async fn socks_pattern(client: &ClientHandle, app_port: u16, n: u64) {
    let args = ["-sS", "--max-time", "30", "--socks5-hostname"]
        .map(String::from)
        .into_iter()
        .chain([
            client.socks.to_string(),
            format!("http://{DR_HOST}:{app_port}/bytes/{n}"),
        ])
        .collect::<Vec<_>>();
    let (got, o) = curl_streamed(&args, Duration::from_secs(30)).await;
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(got, n, "bytes delivered");
}

/// Wait until `cond` holds (polling every 10 ms, at most `within`); the time since `since`.
async fn time_until(
    what: &str,
    within: Duration,
    since: Instant,
    cond: impl Fn() -> bool,
) -> Duration {
    eventually(what, within, cond).await;
    since.elapsed()
}

/// The test proper: `dial` is where both agents reach the edge (its TLS
/// port; QUIC there is blocked by `block` until healed).
async fn falls_back_and_returns(rig: &Rig, edge: &RigEdge, dial: SocketAddr, block: Block) {
    const N: u64 = 16 * 1024 * 1024;
    let em = Arc::clone(&edge.metrics);
    let app_port = rig.app.port();
    block.apply();

    // Both agents start with QUIC blocked.
    let alice = rig.user(ALICE);
    let connector_started = Instant::now();
    let cm: Arc<Metrics> = rig.start_connector(0, dial, "auto", "");
    let client_started = Instant::now();
    let client = rig.start_client(&alice, dial, "auto", "").await;
    let ccm = Arc::clone(&client.metrics);
    let (c2, e2) = (Arc::clone(&cm), Arc::clone(&em));
    let (connector_fb, client_fb) = tokio::join!(
        time_until(
            "connector tunnel over TLS, registered at the edge",
            Duration::from_secs(10),
            connector_started,
            move || tunnels_of(&c2, "edge", "tls") == 1
                && tunnels_of(&e2, "connector", "tls") == 1
                && e2.connectors_connected.with_label_values(&[GROUP]).get() == 1,
        ),
        time_until(
            "client way to the edge over TLS",
            Duration::from_secs(10),
            client_started,
            || tunnels_of(&ccm, "edge", "tls") == 1,
        ),
    );
    eprintln!(
        "fallback to TLS with UDP blocked ({}): connector up over TLS {connector_fb:?} after start, client {client_fb:?} (head start {HEAD_START:?})",
        match block {
            Block::Nft { .. } => "nftables drop",
            Block::Unserved { .. } => "port not served",
        }
    );
    for (who, took) in [("connector", connector_fb), ("client", client_fb)] {
        assert!(
            took >= HEAD_START,
            "{who} on TLS after {took:?}: before QUIC's head start"
        );
        assert!(
            took < HEAD_START + Duration::from_secs(3),
            "{who} fell back only after {took:?}"
        );
    }
    assert_eq!(fallbacks_of(&cm, "connector"), 1);
    assert_eq!(fallbacks_of(&ccm, "client"), 1);
    assert_eq!(tunnels_of(&cm, "edge", "quic"), 0);
    assert_eq!(tunnels_of(&ccm, "edge", "quic"), 0);

    // Flows keep working: client --TLS--> edge --TLS/HTTP-2--> connector.
    socks_pattern(&client, app_port, N).await;
    let raw = raw_connect(client.http, &format!("{NON_DR_HOST}:{app_port}")).await;
    assert!(raw.starts_with("HTTP/1.1 403 "), "{raw}");
    let ok = em.flows_total.with_label_values(&["payroll", "ok"]).get();
    assert_eq!(ok, 1);
    // One TLS connection (HTTP/2) carries both flows.
    assert_eq!(handshakes_of(&em, "client", "tls", "ok"), 1);
    assert_eq!(tunnels_of(&em, "client", "tls"), 1);
    assert_eq!(handshakes_of(&em, "client", "quic", "ok"), 0);
    assert_eq!(handshakes_of(&em, "connector", "quic", "ok"), 0);

    // Keep UDP blocked until the first re-probe (within 1 s of the
    // fallback) has failed at its handshake timeout (5 s here): healing
    // must not depend on catching the first probe in flight.
    let first_probe_failed = client_started + Duration::from_millis(6_500);
    tokio::time::sleep_until(first_probe_failed.into()).await;
    assert_eq!(
        tunnels_of(&cm, "edge", "quic"),
        0,
        "QUIC came up while blocked"
    );
    assert_eq!(tunnels_of(&client.metrics, "edge", "quic"), 0);

    // Heal the network: both re-probe QUIC and move back.
    let healed = Instant::now();
    block.heal(rig.drain()).await;
    let (c2, e2, cc2) = (
        Arc::clone(&cm),
        Arc::clone(&em),
        Arc::clone(&client.metrics),
    );
    let back = time_until(
        "connector and client back on QUIC",
        Duration::from_secs(40),
        healed,
        move || {
            tunnels_of(&c2, "edge", "quic") == 1
                && tunnels_of(&e2, "connector", "quic") == 1
                && tunnels_of(&cc2, "edge", "quic") == 1
                && tunnels_of(&cc2, "edge", "tls") == 0
                && tunnels_of(&e2, "client", "quic") == 1
        },
    )
    .await;
    eprintln!("back on QUIC {back:?} after UDP works again");
    let (c2, e2) = (Arc::clone(&cm), Arc::clone(&em));
    eventually(
        "the connector's and the client's TLS tunnels drained",
        Duration::from_secs(10),
        move || {
            tunnels_of(&c2, "edge", "tls") == 0
                && tunnels_of(&e2, "connector", "tls") == 0
                && tunnels_of(&e2, "client", "tls") == 0
        },
    )
    .await;
    assert_eq!(em.connectors_connected.with_label_values(&[GROUP]).get(), 1);

    // Flows now ride QUIC both ways; nothing fell back again.
    let tls_flows = handshakes_of(&em, "client", "tls", "ok");
    socks_pattern(&client, app_port, N).await;
    assert_eq!(
        em.flows_total.with_label_values(&["payroll", "ok"]).get(),
        ok + 1
    );
    assert_eq!(
        handshakes_of(&em, "client", "tls", "ok"),
        tls_flows,
        "no TLS connection for a flow on QUIC"
    );
    assert_eq!(handshakes_of(&em, "client", "quic", "ok"), 1);
    assert_eq!(handshakes_of(&em, "connector", "quic", "ok"), 1);
    assert_eq!(fallbacks_of(&cm, "connector"), 1);
    assert_eq!(fallbacks_of(&ccm, "client"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_where_udp_is_not_served_and_returns_when_it_is() {
    let rig = Rig::new().await;
    // QUIC on another address than TLS: UDP on the TLS port is nobody's.
    let edge = rig.start_edge(&rig.edge_toml(
        "quic = \"127.0.0.2:0\"\ntls = \"127.0.0.1:0\"",
        "static:on",
        "",
    ));
    let tls = edge.tls.expect("tls");
    let quic = edge.quic.expect("quic");
    let block = Block::Unserved {
        listen: tls,
        to: quic,
    };
    falls_back_and_returns(&rig, &edge, tls, block).await;
}

/// A network namespace of this test's own (`unshare(CLONE_NEWNET)` on a
/// fresh thread; the runtime's threads and child processes inherit it).
mod netns {
    use std::ffi::c_int;

    const CLONE_NEWNET: c_int = 0x4000_0000;

    extern "C" {
        fn unshare(flags: c_int) -> c_int;
    }

    /// Run `body` on a runtime inside a new network namespace with its
    /// loopback up; Err(why) if one cannot be made here.
    pub fn run<F, Fut>(body: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let t = std::thread::spawn(move || -> Result<(), String> {
            // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's
            // network namespace; it touches no memory of ours.
            if unsafe { unshare(CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                ));
            }
            for (cmd, args) in [
                ("ip", &["link", "set", "lo", "up"][..]),
                ("nft", &["list", "ruleset"][..]),
            ] {
                match std::process::Command::new(cmd).args(args).output() {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => {
                        return Err(format!(
                            "{cmd} {args:?}: {}",
                            String::from_utf8_lossy(&o.stderr).trim()
                        ))
                    }
                    Err(e) => return Err(format!("{cmd}: {e}")),
                }
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(body());
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            Ok(())
        });
        match t.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[test]
fn auto_falls_back_when_udp_is_dropped_and_returns_when_the_drop_is_removed() {
    let r = netns::run(|| async {
        let rig = Rig::new().await;
        // The usual deployment: QUIC and TLS on one port number.
        let edge = rig.start_edge(&rig.edge_toml(
            "quic = \"127.0.0.1:0\"\ntls = \"127.0.0.1:0\"",
            "static:on",
            "",
        ));
        let tls = edge.tls.expect("tls");
        assert_eq!(edge.quic.expect("quic").port(), tls.port());
        falls_back_and_returns(&rig, &edge, tls, Block::Nft { port: tls.port() }).await;
    });
    if let Err(why) = r {
        assert!(
            std::env::var("LIFEBOAT_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LIFEBOAT_REQUIRE_NETNS=1 but no network namespace with nftables here: {why}"
        );
        eprintln!("SKIPPED: no network namespace with nftables here ({why}); the unserved-port test covers the fallback");
    }
}

/// `transport = "tls"` agents that cannot reach the edge count the failed
/// handshakes under `transport="tls"`, never under QUIC, which they never
/// tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_dials_are_counted_under_tls() {
    let rig = Rig::new().await;
    let nobody: SocketAddr = format!("127.0.0.1:{}", closed_port().await)
        .parse()
        .expect("addr");
    let cm = rig.start_connector(0, nobody, "tls", "");
    let client = rig.start_client(&rig.user(ALICE), nobody, "tls", "").await;
    let failed = |m: &Metrics, t: &str| -> u64 {
        lifeboat::metrics::HANDSHAKE_RESULTS
            .iter()
            .filter(|r| **r != "ok")
            .map(|r| handshakes_of(m, "edge", t, r))
            .sum()
    };
    let ccm = Arc::clone(&client.metrics);
    eventually(
        "both agents failed at least twice",
        Duration::from_secs(10),
        || {
            failed(&cm, "tls") + failed(&cm, "quic") >= 2
                && failed(&ccm, "tls") + failed(&ccm, "quic") >= 2
        },
    )
    .await;
    for (who, m) in [("connector", &cm), ("client", &ccm)] {
        assert_eq!(
            failed(m, "quic"),
            0,
            "{who} with transport=tls counted failed QUIC handshakes ({} under tls)",
            failed(m, "tls")
        );
        assert!(failed(m, "tls") >= 2, "{who}");
    }
}

/// A client with `transport = "tls"` whose certificate the edge refuses
/// (revoked) must not report its way to the edge as up: in TLS 1.3 the
/// client finishes its side of the handshake before the edge has checked
/// the client certificate, and the edge's refusal comes as an alert after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_refused_by_the_edge_does_not_report_a_tunnel_up() {
    let t = Builder::new()
        .transport(Transport::Tls)
        .listen(Listen::Both)
        .connectors(0)
        .client(Some(ClientCert::Revoked))
        .start_unready()
        .await;
    let client = t.client();
    let em = Arc::clone(&t.edge_metrics);
    eventually(
        "the edge refused mallory as revoked",
        Duration::from_secs(10),
        || handshakes_of(&em, "client", "tls", "revoked") >= 1,
    )
    .await;
    // Let the client take in what it was told.
    let raw = raw_connect(client.http, &format!("{DR_HOST}:{}", t.app.port())).await;
    assert!(raw.starts_with("HTTP/1.1 503 "), "{raw}");
    let m = &client.metrics;
    assert_eq!(
        (
            tunnels_of(m, "edge", "tls"),
            handshakes_of(m, "edge", "tls", "ok")
        ),
        (0, 0),
        "a refused client reports tunnels_active{{edge,tls}} and handshakes_total{{edge,tls,ok}}"
    );
    assert!(
        handshakes_of(m, "edge", "tls", "revoked") >= 1,
        "the client counts the refusal as revoked"
    );
}

/// The default transport with UDP dropped, and the agents started before
/// the edge: both come up over TLS once the edge starts, and a flow goes
/// through within seconds (no panic in the race, no long backoff).
#[test]
fn agents_started_before_an_edge_whose_udp_is_dropped_come_up_over_tls() {
    let r = netns::run(|| async {
        let rig = Rig::new().await;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        Block::Nft { port }.apply();
        let cm = rig.start_connector(0, addr, "auto", "");
        let client = rig.start_client(&rig.user(ALICE), addr, "auto", "").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!client.task.is_finished(), "the client task ended");
        let edge = rig.start_edge(&rig.edge_toml(
            &format!("quic = \"{addr}\"\ntls = \"{addr}\""),
            "static:on",
            "",
        ));
        assert_eq!(edge.tls, Some(addr));
        let started = Instant::now();
        let served = first_flow_after(client.http, rig.app.port(), Duration::from_secs(20)).await;
        eprintln!(
            "UDP dropped, agents before the edge: first flow {:?} after the edge's start",
            served - started
        );
        assert_eq!(
            tunnels_of(&cm, "edge", "tls"),
            1,
            "the connector is up over TLS"
        );
    });
    if let Err(why) = r {
        assert!(
            std::env::var("LIFEBOAT_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LIFEBOAT_REQUIRE_NETNS=1 but no network namespace with nftables here: {why}"
        );
        eprintln!("SKIPPED: no network namespace with nftables here ({why})");
    }
}
