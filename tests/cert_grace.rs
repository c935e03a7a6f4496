//! `[dr] cert_grace` end to end, in process: an edge with `cert_grace =
//! "2h"` and a file DR trigger, a connector, the app. A client certificate
//! that expired an hour ago is served while DR is `on` (over TLS and QUIC),
//! counted in `lifeboat_cert_grace_accepted_total`; the same certificate is
//! refused "expired" at the handshake in `test` mode (its user is a test
//! user, so only the certificate can refuse it) and after switching `off`,
//! and no session resumption carries it past the mode. One that expired
//! three hours ago is refused even while `on`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lifeboat::config::Limits;
use lifeboat::dr::DrMode;
use lifeboat::pki::{self, IssueOptions};
use lifeboat::transport::{close_code, quic, tls, ALPN_CLIENT};
use lifeboat::trust::{Role, Trust};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const ON: &str = "v=1; b=on; k=zpa";
const TEST: &str = "v=1; b=test; k=zpa";
const OFF: &str = "v=1; b=off; k=zpa";

/// How one flow ended.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// 200, and the app's greeting came back.
    Served,
    /// The edge answered this status line.
    Refused(String),
    /// The handshake failed (the edge's alert, as the client saw it).
    NoTunnel(String),
}

/// A client certificate of the rig's CA for `user` that expired `ago`.
fn expired_user(rig: &Rig, user: &str, ago: time::Duration) -> CertFiles {
    let now = time::OffsetDateTime::now_utc();
    let mut o = IssueOptions::new(&rig.ca.dir, Role::Client, user);
    o.not_before = Some(now - time::Duration::days(30));
    o.not_after = Some(now - ago);
    let (cert, key) = pki::issue(&o).expect("pki issue");
    CertFiles { cert, key }
}

fn request(app_port: u16) -> String {
    format!(
        "CONNECT {DR_HOST}:{app_port} HTTP/1.1\r\nHost: {DR_HOST}:{app_port}\r\n\r\n\
         GET / HTTP/1.1\r\nHost: app\r\n\r\n"
    )
}

fn answer(buf: &[u8], err: Option<String>) -> Answer {
    let text = String::from_utf8_lossy(buf);
    match text.lines().next() {
        Some(l) if l.starts_with("HTTP/1.1 200 ") && text.contains("hello") => Answer::Served,
        Some(l) if l.starts_with("HTTP/1.1 ") => Answer::Refused(l.to_string()),
        _ => Answer::NoTunnel(err.unwrap_or_else(|| format!("no answer: {text:?}"))),
    }
}

/// One flow over TLS (a connection per flow): the answer, and whether the
/// handshake was a resumption.
async fn tls_flow(
    edge: SocketAddr,
    client: &TlsConnector,
    app_port: u16,
) -> (Answer, Option<HandshakeKind>) {
    let mut s = match tls::connect(client, edge, "localhost", Duration::from_secs(5)).await {
        Ok(s) => s,
        Err(e) => return (Answer::NoTunnel(e.to_string()), None),
    };
    let kind = s.get_ref().1.handshake_kind();
    let mut buf = Vec::new();
    let mut err = s
        .write_all(request(app_port).as_bytes())
        .await
        .err()
        .map(|e| e.to_string());
    if err.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => err = Some(e.to_string()),
            Err(_) => err = Some("timed out".into()),
        }
    }
    (answer(&buf, err), kind)
}

/// One flow over a new QUIC connection.
async fn quic_flow(edge: SocketAddr, trust: &Arc<Trust>, app_port: u16) -> Answer {
    let bind = "127.0.0.1:0".parse().expect("literal");
    let ep = quic::client_endpoint(bind, trust, ALPN_CLIENT, &Limits::default(), 0)
        .expect("QUIC endpoint");
    let conn = match quic::connect(&ep, edge, "localhost", Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => return Answer::NoTunnel(e.to_string()),
    };
    let flow = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(request(app_port).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
    };
    let a = match tokio::time::timeout(Duration::from_secs(10), flow).await {
        Ok(Ok(buf)) => answer(&buf, None),
        Ok(Err(e)) => answer(&[], Some(e)),
        Err(_) => answer(&[], Some("timed out".into())),
    };
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    a
}

fn handshakes(t: &Topology, transport: &str, result: &str) -> u64 {
    handshakes_of(&t.edge_metrics, "client", transport, result)
}

/// Rewrite the DR trigger and wait until the edge is in `mode` with the
/// grace window it implies.
/// `handshakes{role="client",transport,result}` reaches `n` (counted by the
/// edge after the peer saw the refusal) and stays there.
async fn expect_count(t: &Topology, transport: &str, result: &str, n: u64) {
    eventually(
        &format!("{transport} handshakes counted {result}: {n}"),
        Duration::from_secs(5),
        || handshakes(t, transport, result) >= n,
    )
    .await;
    assert_eq!(handshakes(t, transport, result), n);
}

async fn set_mode(t: &Topology, text: &str, mode: DrMode) {
    t.set_dr(text);
    let (rx, trust) = (t.edge.mode.clone(), Arc::clone(&t.edge.trust));
    let want_grace = mode == DrMode::On;
    eventually(
        &format!("edge in DR mode {mode}, cert_grace {want_grace}"),
        Duration::from_secs(10),
        || *rx.borrow() == mode && trust.cert_grace().is_some() == want_grace,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_served_within_cert_grace_only_while_dr_is_on() {
    let t = Builder::quic()
        .listen(Listen::Both)
        .crl()
        .dr_file(ON)
        .test_users(&[ALICE, BOB])
        .dr_extra("cert_grace = \"2h\"")
        .client(None)
        .start()
        .await;
    let text = std::fs::read_to_string(&t.edge_config).expect("read edge config");
    assert!(text.contains("cert_grace = \"2h\""), "{text}");
    let (quic_addr, tls_addr) = (t.edge_quic(), t.edge_tls());
    set_mode(&t, ON, DrMode::On).await;
    let port = t.app.port();
    let grace = &t.edge_metrics.cert_grace_accepted;
    assert_eq!(grace.get(), 0);
    assert!(t
        .edge_metrics
        .encode()
        .contains("lifeboat_cert_grace_accepted_total 0"));

    // Both test users, so that in `test` mode only the certificate refuses.
    let alice =
        t.ca.trust(&expired_user(&t, ALICE, time::Duration::hours(1)));
    let bob = t.ca.trust(&expired_user(&t, BOB, time::Duration::hours(3)));
    let carol = t.ca.trust(&t.user_cert("carol"));
    let alice_tls = tls::connector(&alice, b"http/1.1");
    let carol_tls = tls::connector(&carol, b"http/1.1");

    // On: expired an hour ago, within the 2 h grace: served, over both
    // transports, and never resumed (each connection re-verified, counted).
    let (a, kind) = tls_flow(tls_addr, &alice_tls, port).await;
    assert_eq!(a, Answer::Served);
    assert_eq!(kind, Some(HandshakeKind::Full));
    let (a, kind) = tls_flow(tls_addr, &alice_tls, port).await;
    assert_eq!(a, Answer::Served);
    assert_eq!(
        kind,
        Some(HandshakeKind::Full),
        "a grace session was resumed"
    );
    assert_eq!(quic_flow(quic_addr, &alice, port).await, Answer::Served);
    assert_eq!(grace.get(), 3);
    assert!(t
        .edge_metrics
        .encode()
        .contains("lifeboat_cert_grace_accepted_total 3"));
    assert_eq!(handshakes(&t, "tls", "expired"), 0);

    // Expired three hours ago: refused "expired" even while on.
    let bob_tls = tls::connector(&bob, b"http/1.1");
    let (a, _) = tls_flow(tls_addr, &bob_tls, port).await;
    assert!(matches!(a, Answer::NoTunnel(_)), "{a:?}");
    assert!(matches!(
        quic_flow(quic_addr, &bob, port).await,
        Answer::NoTunnel(_)
    ));
    expect_count(&t, "tls", "expired", 1).await;
    expect_count(&t, "quic", "expired", 1).await;
    assert_eq!(grace.get(), 3);

    // A valid certificate resumes as usual (the control for the above).
    assert_eq!(tls_flow(tls_addr, &carol_tls, port).await.0, Answer::Served);
    let (a, kind) = tls_flow(tls_addr, &carol_tls, port).await;
    assert_eq!((a, kind), (Answer::Served, Some(HandshakeKind::Resumed)));

    // A QUIC tunnel let in by grace lives only while DR stays on.
    let held_ep = quic::client_endpoint(
        "127.0.0.1:0".parse().expect("literal"),
        &alice,
        ALPN_CLIENT,
        &Limits::default(),
        0,
    )
    .expect("QUIC endpoint");
    let held = quic::connect(&held_ep, quic_addr, "localhost", Duration::from_secs(5))
        .await
        .expect("a grace tunnel while DR is on");
    assert_eq!(grace.get(), 4);
    // A TLS flow let in by grace, open (idle) when DR leaves on.
    let mut held_tls = tls::connect(&alice_tls, tls_addr, "localhost", Duration::from_secs(5))
        .await
        .expect("a grace TLS flow while DR is on");
    let auth = format!("{DR_HOST}:{port}");
    held_tls
        .write_all(format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let mut head = [0u8; 64];
    let n = held_tls.read(&mut head).await.expect("read the answer");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    assert_eq!(grace.get(), 5);

    // Test mode: alice is a test user, but her certificate is expired:
    // refused at the handshake, not resumed from the `on` days.
    set_mode(&t, TEST, DrMode::Test).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), held.closed())
        .await
        .expect("the grace tunnel is closed when DR leaves on");
    match &closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close_code::GRACE_OVER.into(), "{closed}")
        }
        other => panic!("grace tunnel ended with {other}, expected GRACE_OVER"),
    }
    let mut rest = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(5), held_tls.read(&mut rest))
        .await
        .expect("the grace TLS flow is closed when DR leaves on");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    let (a, kind) = tls_flow(tls_addr, &alice_tls, port).await;
    assert!(matches!(a, Answer::NoTunnel(_)), "{a:?}");
    assert_eq!(kind, Some(HandshakeKind::Full));
    assert!(matches!(
        quic_flow(quic_addr, &alice, port).await,
        Answer::NoTunnel(_)
    ));
    expect_count(&t, "tls", "expired", 2).await;
    expect_count(&t, "quic", "expired", 2).await;
    // Switching grace off voided every ticket: carol's next is a full one
    // (and, not a test user, she is not allowed in test mode).
    let (a, kind) = tls_flow(tls_addr, &carol_tls, port).await;
    assert_eq!(kind, Some(HandshakeKind::Full));
    assert!(
        matches!(&a, Answer::Refused(l) if l.starts_with("HTTP/1.1 403")),
        "{a:?}"
    );

    // Off: refused as expired too (not merely dr-inactive).
    set_mode(&t, OFF, DrMode::Off).await;
    let (a, _) = tls_flow(tls_addr, &alice_tls, port).await;
    assert!(matches!(a, Answer::NoTunnel(_)), "{a:?}");
    expect_count(&t, "tls", "expired", 3).await;

    // On again: served again.
    set_mode(&t, ON, DrMode::On).await;
    assert_eq!(tls_flow(tls_addr, &alice_tls, port).await.0, Answer::Served);
    assert_eq!(grace.get(), 6);
    assert_eq!(handshakes(&t, "tls", "ok"), 7);
    // alice's flow under grace and the held grace tunnel.
    assert_eq!(handshakes(&t, "quic", "ok"), 2);
}
