//! Tunnels refused at the handshake: the peer's certificate is from a
//! foreign CA, expired, revoked, of the wrong role for the tunnel it asks
//! for, or of a foreign trust domain. The tunnel never carries a flow, and
//! the edge counts `lifeboat_handshakes_total{role,transport,result}` with
//! the reason (role: the one the tunnel claimed by ALPN).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lifeboat::transport::{close_code, quic, ALPN_CLIENT, ALPN_CONNECTOR};
use lifeboat::trust::Role;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// SOCKS5 reply "network unreachable": the client has no tunnel.
const NETWORK_UNREACHABLE: u8 = 3;

/// The client of `t` was refused at the handshake with `result`: the edge
/// counted it, never counted an `ok` nor a client tunnel, and a flow fails.
async fn assert_client_refused(t: &Topology, result: &str) {
    eventually(
        &format!("edge counts handshakes_total{{role=client,result={result}}}"),
        Duration::from_secs(10),
        || t.edge_handshakes("client", result) >= 1,
    )
    .await;
    let reply = socks_reply(t.socks(), DR_HOST, t.app_port()).await;
    assert_eq!(reply, NETWORK_UNREACHABLE, "SOCKS reply without a tunnel");
    let raw = raw_connect(t.http(), &format!("{DR_HOST}:{}", t.app_port())).await;
    assert!(raw.starts_with("HTTP/1.1 503 "), "{raw}");
    assert_eq!(
        t.edge_handshakes("client", "ok"),
        0,
        "handshakes: {:?}",
        t.edge_handshakes_nonzero()
    );
    assert_eq!(t.edge_tunnels("client"), 0);
    assert_eq!(t.edge_flows("payroll", "ok"), 0);
    // Every refusal was counted under this one reason (the client retries);
    // the only other handshake is the connector's.
    let others: Vec<String> = t
        .edge_handshakes_nonzero()
        .into_iter()
        .filter(|s| !s.starts_with(&format!("client/{result}=")) && s != "connector/ok=1")
        .collect();
    assert!(others.is_empty(), "other handshake results: {others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_from_a_foreign_ca_is_refused_unknown_ca() {
    let t = Builder::quic()
        .client(Some(ClientCert::ForeignCa))
        .start_unready()
        .await;
    assert_client_refused(&t, "unknown-ca").await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_cert_is_refused_expired() {
    let t = Builder::quic()
        .client(Some(ClientCert::Expired))
        .start_unready()
        .await;
    assert_client_refused(&t, "expired").await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_cert_is_refused_revoked() {
    let t = Builder::quic()
        .client(Some(ClientCert::Revoked))
        .start_unready()
        .await;
    assert_client_refused(&t, "revoked").await;
    // A flow of the revoked user fails with the handshake's word, not a
    // bare `unreachable`: loadgen's report counts it by that word.
    let (files, ca) = t.client_files(&ClientCert::Revoked);
    let text = t.client_config(&files, &ca, &t.dial, "quic", "");
    let path = t.dir.path().join("revoked-loadgen.toml");
    std::fs::write(&path, text).expect("write the client config");
    let opts = lifeboat::loadgen::Options {
        target: lifeboat::preamble::Dest::parse(&format!("{DR_HOST}:{}", t.app_port()))
            .expect("target"),
        flows: 1,
        concurrency: 1,
        clients: 1,
        duration: Duration::from_secs(3),
        http_get: None,
        hold: Duration::ZERO,
        transport: Some(lifeboat::config::TransportChoice::Quic),
    };
    let report = tokio::time::timeout(Duration::from_secs(15), lifeboat::loadgen::run(&path, opts))
        .await
        .expect("loadgen stops by itself")
        .expect("loadgen runs");
    let words: Vec<&String> = report
        .retried
        .keys()
        .chain(report.refusals.keys())
        .collect();
    assert!(
        report.retried.contains_key("revoked") || report.refusals.contains_key("revoked"),
        "the flow's word: {words:?}\n{report}"
    );
    assert!(
        !words.iter().any(|w| *w == "unreachable"),
        "the flow's word: {words:?}\n{report}"
    );
    // The CRL names only mallory: alice, from the same CA, is served.
    let alice = t.start_client(ClientCert::user(ALICE)).await;
    eventually("alice's tunnel up", Duration::from_secs(10), || {
        alice.tunnels() == 1
    })
    .await;
    assert_eq!(socks_reply(alice.socks, DR_HOST, t.app_port()).await, 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_cert_used_by_a_client_is_refused_wrong_role() {
    let t = Builder::quic()
        .client(Some(ClientCert::ConnectorCert))
        .start_unready()
        .await;
    t.wait_connectors().await;
    assert_client_refused(&t, "wrong-role").await;
    // The real connector, with the same certificate, is still registered.
    assert_eq!(t.connectors_connected(), 1);
    assert_eq!(t.edge_handshakes("connector", "ok"), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_used_by_a_connector_is_not_registered_wrong_role() {
    let t = Builder::quic().connectors(0).client(None).start().await;
    let alice = t.ca.issue(Role::Client, ALICE, None);

    // The connector itself refuses to start with a client certificate.
    let dir = t.dir.path();
    let text = format!(
        "trust_domain = \"{TD}\"\nedges = [\"{}\"]\ntransport = \"quic\"\n[tls]\nca = {}\ncert = {}\nkey = {}\n",
        t.edge_quic(),
        toml_path(&t.ca.pem()),
        toml_path(&alice.cert),
        toml_path(&alice.key)
    );
    let path = dir.join("wrong-connector.toml");
    let cfg: lifeboat::config::ConnectorConfig =
        lifeboat::config::from_text(&path, &text).expect("connector config");
    let err = lifeboat::connector::Connector::bind(
        cfg,
        &path,
        Arc::new(lifeboat::metrics::Metrics::new("connector")),
    )
    .err()
    .expect("Connector::bind accepts a client certificate");
    assert!(
        err.to_string().contains("connector certificate"),
        "bind error: {err:#}"
    );

    // A peer that does it anyway: the connector ALPN with a client certificate.
    let trust = t.ca.trust(&alice);
    let limits = lifeboat::config::Limits::default();
    let ep = quic::client_endpoint(
        "127.0.0.1:0".parse().expect("literal"),
        &trust,
        ALPN_CONNECTOR,
        &limits,
        16,
    )
    .expect("endpoint");
    // The edge refuses before its welcome: `connect` fails with the edge's close.
    let end = match quic::connect(&ep, t.edge_quic(), "localhost", Duration::from_secs(5)).await {
        Err(lifeboat::transport::TunnelError::Connection(e)) => e,
        Err(e) => panic!("expected the edge's close, got {e}"),
        Ok(_) => panic!("the edge welcomed a client certificate on a connector tunnel"),
    };
    match &end {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close_code::WRONG_ROLE.into(), "{end}")
        }
        other => panic!("closed with {other}, expected the wrong-role close code"),
    }
    assert_eq!(t.edge_handshakes("connector", "wrong-role"), 1);
    assert_eq!(t.edge_handshakes("connector", "ok"), 0);
    assert_eq!(t.connectors_connected(), 0);
    assert_eq!(t.edge_tunnels("connector"), 0);
    assert_eq!(
        t.edge_metrics
            .segment_ready
            .with_label_values(&["payroll"])
            .get(),
        0
    );
    ep.close(0u32.into(), b"done");
    t.shutdown().await;
}

/// Accepts any server certificate: lets the test present a client
/// certificate the deployment's own client would refuse to load.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A bare QUIC handshake to `edge` presenting `cert`/`key` with `alpn`;
/// returns how the connection ended.
async fn raw_quic_peer(
    edge: SocketAddr,
    alpn: &[u8],
    cert: &Path,
    key: &Path,
) -> quinn::ConnectionError {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("read cert")
        .collect::<Result<_, _>>()
        .expect("parse cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("read key");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).expect("bind");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = ep.connect(edge, "localhost").expect("connect");
    let end = match tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("handshake ends within 10 s")
    {
        Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the edge closes the connection within 5 s"),
        Err(e) => e,
    };
    ep.close(0u32.into(), b"done");
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_trust_domain_is_refused_even_when_its_ca_is_pinned() {
    let t = Builder::quic()
        .client(None)
        .edge_pins_foreign_trust_domain()
        .start()
        .await;
    let foreign = t.foreign_td.clone().expect("foreign CA");
    let oscar = foreign.issue(Role::Client, "oscar", None);
    let end = raw_quic_peer(t.edge_quic(), ALPN_CLIENT, &oscar.cert, &oscar.key).await;
    eventually(
        "edge counts foreign-trust-domain",
        Duration::from_secs(5),
        || t.edge_handshakes("client", "foreign-trust-domain") == 1,
    )
    .await;
    assert!(
        !matches!(end, quinn::ConnectionError::LocallyClosed),
        "closed by us, not refused: {end}"
    );
    assert_eq!(
        t.edge_handshakes_nonzero(),
        vec![
            "client/foreign-trust-domain=1".to_string(),
            "connector/ok=1".to_string()
        ],
        "the chain to the pinned foreign CA passed; only the trust domain refused it"
    );
    assert_eq!(t.edge_tunnels("client"), 0);

    // Control: the same raw peer with a certificate of our own trust domain
    // is accepted, so the refusal above is the trust domain's alone.
    let alice = t.ca.issue(Role::Client, ALICE, None);
    let ok = raw_quic_peer_accepted(t.edge_quic(), &alice).await;
    assert!(ok, "a raw peer with a valid client certificate was refused");
    assert_eq!(t.edge_handshakes("client", "ok"), 1);
    t.shutdown().await;
}

/// Whether the edge accepts a raw QUIC client tunnel from `cert` (it stays
/// up and carries a flow to the app).
async fn raw_quic_peer_accepted(edge: SocketAddr, cert: &CertFiles) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
        .expect("read cert")
        .collect::<Result<_, _>>()
        .expect("parse cert");
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("read key");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC TLS");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).expect("bind");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let Ok(Ok(conn)) = tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect(edge, "localhost").expect("connect"),
    )
    .await
    else {
        return false;
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return false;
    };
    let req = format!("CONNECT {UNKNOWN_HOST}:1 HTTP/1.1\r\nHost: {UNKNOWN_HOST}:1\r\n\r\n");
    if send.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096)).await;
    ep.close(0u32.into(), b"done");
    // A refusal by segment proves the tunnel was accepted and served.
    matches!(answer, Ok(Ok(a)) if a.starts_with(b"HTTP/1.1 403 "))
}

/// DESIGN: `handshakes_total{role}` is the role the tunnel claimed (ALPN).
/// A connector whose certificate expired must be counted as a connector's
/// failed handshake, or an operator alerting on connector handshakes never
/// sees the DR connectors' certificates lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_connector_cert_is_counted_as_a_connector_handshake() {
    let t = Builder::quic().connectors(0).client(None).start().await;
    let old =
        t.ca.issue_expired_as(Role::Connector, "connector-old", Some(GROUP));
    let (m, _task) = t.start_connector_with(&old, "connector-old");
    eventually(
        "edge counts an expired handshake",
        Duration::from_secs(10),
        || t.edge_handshakes("connector", "expired") + t.edge_handshakes("client", "expired") >= 1,
    )
    .await;
    assert_eq!(t.connectors_connected(), 0);
    assert_eq!(
        m.tunnels_active.with_label_values(&["edge", "quic"]).get(),
        0
    );
    assert_eq!(
        t.edge_handshakes("client", "expired"),
        0,
        "a connector's expired certificate was counted under role=client: {:?}",
        t.edge_handshakes_nonzero()
    );
    assert!(t.edge_handshakes("connector", "expired") >= 1);
    t.shutdown().await;
}

/// The client's own view of a refused tunnel: it must not count the
/// handshake `ok` nor report the tunnel up (its readiness is "an edge tunnel
/// is up"), and it should name the edge's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_does_not_report_its_tunnel_up() {
    let t = Builder::quic()
        .client(Some(ClientCert::Expired))
        .start_unready()
        .await;
    let c = t.client();
    let gauge = c
        .metrics
        .tunnels_active
        .with_label_values(&["edge", "quic"]);
    // Watch through a few refused attempts (the client retries with backoff).
    let mut max = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        max = max.max(gauge.get());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(t.edge_handshakes("client", "expired") >= 2);
    let counted = |r: &str| {
        c.metrics
            .handshakes
            .with_label_values(&["edge", "quic", r])
            .get()
    };
    let results: Vec<String> = lifeboat::metrics::HANDSHAKE_RESULTS
        .iter()
        .filter(|r| counted(r) > 0)
        .map(|r| format!("{r}={}", counted(r)))
        .collect();
    assert_eq!(
        (max, counted("ok")),
        (0, 0),
        "the edge refused every handshake, yet the client reported its tunnel up \
         (tunnels_active max {max}) and counted handshakes {results:?}"
    );
    assert!(counted("expired") >= 1, "client counted {results:?}");
    t.shutdown().await;
}

/// DESIGN: "every reconnect uses jittered exponential backoff". A client or
/// connector the edge refuses at every handshake must back off (100 ms
/// doubling: at most 7 attempts in 3 s), not hammer the edge at a fixed
/// short interval -- after a DR activation that is a whole fleet of laptops
/// with lapsed certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_peers_back_off_exponentially() {
    let t = Builder::quic()
        .connectors(0)
        .client(Some(ClientCert::Expired))
        .start_unready()
        .await;
    let old =
        t.ca.issue_expired_as(Role::Connector, "connector-old", Some(GROUP));
    let (_m, _task) = t.start_connector_with(&old, "connector-old");
    tokio::time::sleep(Duration::from_secs(3)).await; // the observation window itself
    let attempts =
        t.edge_handshakes("client", "expired") + t.edge_handshakes("connector", "expired");
    assert!(
        attempts >= 2,
        "expected both peers to try: {:?}",
        t.edge_handshakes_nonzero()
    );
    assert!(
        attempts <= 14,
        "two refused peers made {attempts} handshakes in 3 s (at most 7 each with exponential backoff): {:?}",
        t.edge_handshakes_nonzero()
    );
    t.shutdown().await;
}

/// Revoking a lost laptop takes effect in an outage without a signal: the
/// edge re-reads its CRL when the file changes and closes the open tunnel of
/// the revoked client, which cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_client_closes_its_open_tunnel_without_a_signal() {
    let t = Builder::quic().crl().start().await;
    assert_eq!(socks_reply(t.socks(), DR_HOST, t.app_port()).await, 0);
    assert_eq!(t.client().tunnels(), 1);
    // A flow that is open (idle) when the certificate is revoked.
    let mut open = lifeboat::demo::socks_client::connect(t.socks(), DR_HOST, t.app_port())
        .await
        .expect("an open flow before the revocation");
    let (alice, _) = t.client_files(&ClientCert::user(ALICE));
    t.ca.revoke(&alice);
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut open, &mut buf),
    )
    .await
    .expect("the open flow ends after the revocation");
    assert!(
        matches!(ended, Err(_) | Ok(0)),
        "the open flow still carries data: {ended:?}"
    );
    eventually(
        "the edge counts the flow closed as cert-refused",
        Duration::from_secs(10),
        || {
            t.edge_metrics
                .flows_closed
                .with_label_values(&["cert-refused"])
                .get()
                >= 1
        },
    )
    .await;
    eventually(
        "the edge closes alice's open tunnel",
        Duration::from_secs(10),
        || t.client().tunnels() == 0,
    )
    .await;
    eventually(
        "alice's reconnect is refused as revoked",
        Duration::from_secs(10),
        || t.edge_handshakes("client", "revoked") >= 1,
    )
    .await;
    assert_ne!(socks_reply(t.socks(), DR_HOST, t.app_port()).await, 0);
    t.shutdown().await;
}
