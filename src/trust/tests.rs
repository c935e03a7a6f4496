//! Trust end to end: certificates from `crate::pki` in temp dirs, rustls
//! connections driven in memory (no sockets), one QUIC pair on loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig};
use rustls::{Error, HandshakeKind, ServerConnection, SignatureScheme};
use time::{Duration, OffsetDateTime};

use super::*;
use crate::pki::{self, IssueOptions};

const TD: &str = "lifeboat.test";
const ALPN: &[&[u8]] = &[b"lifeboat/1"];

// ---------------------------------------------------------------- SPIFFE ids

#[test]
fn spiffe_ids_round_trip() {
    for uri in [
        "spiffe://lifeboat.test/edge/edge-1",
        "spiffe://lifeboat.test/connector/dc-east/c_1",
        "spiffe://lifeboat.test/client/Alice.Smith",
        "spiffe://a-b_c.0/client/x",
    ] {
        let id = SpiffeId::parse(uri).unwrap();
        assert_eq!(id.uri(), uri);
        assert_eq!(id.to_string(), uri);
        assert_eq!(SpiffeId::parse(&id.uri()), Ok(id));
    }
    let id = SpiffeId::parse("spiffe://lifeboat.test/connector/dc-east/c1").unwrap();
    assert_eq!(
        id,
        SpiffeId {
            trust_domain: TD.into(),
            role: Role::Connector,
            name: "c1".into(),
            group: Some("dc-east".into()),
        }
    );
    let id = SpiffeId::parse("spiffe://lifeboat.test/client/alice").unwrap();
    assert_eq!(
        (id.role, id.name.as_str(), id.group),
        (Role::Client, "alice", None)
    );
}

#[test]
fn malformed_spiffe_ids_are_refused() {
    for uri in [
        "",
        "spiffe://",
        "https://lifeboat.test/edge/e",
        "SPIFFE://lifeboat.test/edge/e",
        "spiffe:/lifeboat.test/edge/e",
        "spiffe://lifeboat.test",
        "spiffe://lifeboat.test/",
        "spiffe:///edge/e",
        "spiffe://Lifeboat.Test/edge/e", // upper-case trust domain: refused, not folded
        "spiffe://lifeboat.test:443/edge/e",
        "spiffe://user@lifeboat.test/edge/e",
        "spiffe://lifeboat.test/edge",
        "spiffe://lifeboat.test/edge/",
        "spiffe://lifeboat.test/edge//e",
        "spiffe://lifeboat.test/edge/e/",
        "spiffe://lifeboat.test/edge/e/extra",
        "spiffe://lifeboat.test/edge/..",
        "spiffe://lifeboat.test/edge/.",
        "spiffe://lifeboat.test/edge/e%20f",
        "spiffe://lifeboat.test/edge/e?q=1",
        "spiffe://lifeboat.test/edge/e#f",
        "spiffe://lifeboat.test/Edge/e",
        "spiffe://lifeboat.test/admin/e",
        "spiffe://lifeboat.test/connector/c1", // connector without group
        "spiffe://lifeboat.test/connector/g/c1/x",
        "spiffe://lifeboat.test/client/g/alice",
        "spiffe://lifeboat.test/client/al ice",
        "spiffe://lifeboat.test//client/alice",
    ] {
        let err = SpiffeId::parse(uri).unwrap_err();
        assert!(
            matches!(err, IdentityError::Malformed { .. }),
            "{uri:?}: {err:?}"
        );
    }
    let long = format!("spiffe://lifeboat.test/client/{}", "a".repeat(256));
    assert!(SpiffeId::parse(&long).is_err());
}

#[test]
fn roles_parse_and_print() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
    }
    assert!("Edge".parse::<Role>().is_err());
    assert!("admin".parse::<Role>().is_err());
}

#[test]
fn check_refuses_foreign_domain_before_role() {
    let id = SpiffeId::parse("spiffe://other.test/edge/e").unwrap();
    assert!(matches!(
        id.check(TD, &[Role::Client]),
        Err(IdentityError::ForeignTrustDomain { .. })
    ));
    let id = SpiffeId::parse("spiffe://lifeboat.test/edge/e").unwrap();
    assert!(matches!(
        id.check(TD, &[Role::Client, Role::Connector]),
        Err(IdentityError::WrongRole {
            found: Role::Edge,
            ..
        })
    ));
    assert_eq!(id.check(TD, &[Role::Edge]), Ok(()));
}

#[test]
fn spiffe_id_of_needs_exactly_one_uri() {
    let dir = ca(TD);
    let (none, _) = custom_cert(dir.path(), "plain", &[]);
    assert_eq!(spiffe_id_of(&der(&none)), Err(IdentityError::NoSpiffeId));
    let (two, _) = custom_cert(
        dir.path(),
        "two",
        &[
            "spiffe://lifeboat.test/client/a",
            "spiffe://lifeboat.test/client/b",
        ],
    );
    assert_eq!(
        spiffe_id_of(&der(&two)),
        Err(IdentityError::MultipleSpiffeIds { count: 2 })
    );
    let (other_uri, _) = custom_cert(
        dir.path(),
        "other",
        &["https://example.com/", "spiffe://lifeboat.test/client/a"],
    );
    assert_eq!(spiffe_id_of(&der(&other_uri)).unwrap().name, "a");
}

// ---------------------------------------------------------------- handshakes

#[test]
fn client_and_connector_reach_edge() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = edge.server_config(
        &[Role::Client, Role::Connector],
        &[b"lifeboat/1", b"http/1.1"],
    );
    let server = Arc::new(server);

    let alice = trust_for(dir.path(), Role::Client, "alice");
    let out = handshake(alice.client_config(ALPN), server.clone());
    out.assert_ok();
    assert_eq!(
        out.server_peer_id().uri(),
        "spiffe://lifeboat.test/client/alice"
    );
    assert_eq!(
        out.client_peer_id().uri(),
        "spiffe://lifeboat.test/edge/edge-1"
    );
    assert_eq!(out.server.alpn_protocol(), Some(&b"lifeboat/1"[..]));
    assert_eq!(
        out.server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let conn = trust_for(dir.path(), Role::Connector, "c1");
    let out = handshake(conn.client_config(ALPN), server.clone());
    out.assert_ok();
    let id = out.server_peer_id();
    assert_eq!(
        (id.role, id.group.as_deref()),
        (Role::Connector, Some("g1"))
    );

    // TLS 1.2 is refused: it would carry the client certificate in clear.
    let (cert, key) = issued(dir.path(), Role::Client, "bob");
    let tls12 = raw_client(Some((&cert, &key)), &[&rustls::version::TLS12]);
    let out = handshake(tls12, server);
    assert!(
        matches!(out.server_err, Some(Error::PeerIncompatible(_))),
        "a TLS 1.2-only client was not refused: {:?}",
        out.server_err
    );
}

/// Hybrid post-quantum key agreement is what two lifeboat peers agree on by
/// default; a classical peer on either side gets X25519, and in one round
/// trip (the hybrid client's ClientHello carries an X25519 share as well).
#[test]
fn key_exchange_is_hybrid_by_default_and_falls_back_to_x25519() {
    use rustls::NamedGroup::{X25519, X25519MLKEM768};
    let dir = ca(TD);
    let server = |kx| {
        let edge = trust_with(dir.path(), Role::Edge, "edge-1", kx);
        Arc::new(edge.server_config(&[Role::Client], ALPN))
    };
    let client = |kx| trust_with(dir.path(), Role::Client, "alice", kx).client_config(ALPN);
    let (hybrid, classical) = (KeyExchange::Hybrid, KeyExchange::Classical);
    assert_eq!(KeyExchange::default(), hybrid);
    for (c, s, group) in [
        (hybrid, hybrid, X25519MLKEM768),
        (classical, hybrid, X25519),
        (hybrid, classical, X25519),
        (classical, classical, X25519),
    ] {
        let out = handshake(client(c), server(s));
        out.assert_ok();
        let negotiated = |kx: Option<&dyn rustls::crypto::SupportedKxGroup>| kx.map(|g| g.name());
        let what = format!("client {}, server {}", c.as_str(), s.as_str());
        assert_eq!(
            negotiated(out.server.negotiated_key_exchange_group()),
            Some(group),
            "{what}"
        );
        assert_eq!(
            negotiated(out.client.negotiated_key_exchange_group()),
            Some(group),
            "{what}"
        );
        assert_eq!(
            out.server.handshake_kind(),
            Some(HandshakeKind::Full),
            "{what}"
        );
    }
}

#[test]
fn wrong_roles_are_refused() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let clients_only = Arc::new(edge.server_config(&[Role::Client, Role::Connector], ALPN));
    let connectors_only = Arc::new(edge.server_config(&[Role::Connector], ALPN));

    // An edge certificate presented by a client.
    let other_edge = trust_for(dir.path(), Role::Edge, "edge-2");
    let out = handshake(other_edge.client_config(ALPN), clients_only);
    out.assert_refused_by_server("wrong-role");
    // The refused side learns it from the access_denied alert.
    assert_eq!(out.client_word(), "wrong-role");

    // A client certificate on a connector-only listener.
    let alice = trust_for(dir.path(), Role::Client, "alice");
    let out = handshake(alice.client_config(ALPN), connectors_only);
    out.assert_refused_by_server("wrong-role");
}

#[test]
fn client_refuses_a_server_that_is_not_an_edge() {
    let dir = ca(TD);
    let alice = trust_for(dir.path(), Role::Client, "alice");
    for (role, name) in [(Role::Client, "mallory"), (Role::Connector, "c9")] {
        let (cert, key) = issued(dir.path(), role, name);
        let out = handshake(alice.client_config(ALPN), raw_server(&cert, &key));
        out.assert_refused_by_client("wrong-role");
    }
    // And an edge of another CA.
    let foreign = ca(TD);
    let (cert, key) = issued(foreign.path(), Role::Edge, "edge-1");
    let out = handshake(alice.client_config(ALPN), raw_server(&cert, &key));
    out.assert_refused_by_client("unknown-ca");
}

#[test]
fn untrusted_or_invalid_client_certificates_are_refused() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));

    // Same trust domain, same CA name, different key: unknown CA.
    let foreign = ca(TD);
    let (cert, key) = issued(foreign.path(), Role::Client, "eve");
    let out = handshake(raw_client(Some((&cert, &key)), TLS13), server.clone());
    out.assert_refused_by_server("unknown-ca");
    assert_eq!(out.client_word(), "unknown-ca");

    let now = OffsetDateTime::now_utc();
    let mut expired = IssueOptions::new(dir.path(), Role::Client, "old");
    expired.not_before = Some(now - Duration::days(10));
    expired.not_after = Some(now - Duration::days(1));
    let (cert, key) = pki::issue(&expired).unwrap();
    let out = handshake(raw_client(Some((&cert, &key)), TLS13), server.clone());
    out.assert_refused_by_server("expired");
    assert_eq!(out.client_word(), "expired");

    let mut future = IssueOptions::new(dir.path(), Role::Client, "future");
    future.not_before = Some(now + Duration::days(1));
    future.not_after = Some(now + Duration::days(10));
    let (cert, key) = pki::issue(&future).unwrap();
    let out = handshake(raw_client(Some((&cert, &key)), TLS13), server.clone());
    out.assert_refused_by_server("not-yet-valid");

    let (cert, key) = custom_cert(dir.path(), "anonymous", &[]);
    let out = handshake(raw_client(Some((&cert, &key)), TLS13), server.clone());
    out.assert_refused_by_server("no-identity");

    let out = handshake(raw_client(None, TLS13), server);
    out.assert_refused_by_server("no-certificate");
    assert_eq!(out.client_word(), "no-certificate");
}

#[test]
fn foreign_trust_domain_is_refused_even_under_a_pinned_ca() {
    let ours = ca(TD);
    let theirs = ca("other.test");
    // Pin both CAs in one file.
    let both = ours.path().join("both.pem");
    let pem = [ours.path().join("ca.pem"), theirs.path().join("ca.pem")]
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect::<String>();
    fs::write(&both, pem).unwrap();
    let (cert, key) = issued(ours.path(), Role::Edge, "edge-1");
    let edge = Trust::load(
        TlsFiles {
            ca: both,
            cert,
            key,
            crl: None,
            key_exchange: Default::default(),
        },
        TD,
    )
    .unwrap();
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));

    let (cert, key) = issued(theirs.path(), Role::Client, "alice");
    let out = handshake(raw_client(Some((&cert, &key)), TLS13), server.clone());
    out.assert_refused_by_server("foreign-trust-domain");
    // The client only sees certificate_unknown.
    assert_eq!(out.client_word(), "bad-certificate");

    let (cert, key) = issued(ours.path(), Role::Client, "alice");
    handshake(raw_client(Some((&cert, &key)), TLS13), server).assert_ok();
}

#[test]
fn revocation_applies_to_configs_built_before_reload_and_kills_resumption() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let alice = trust_for(dir.path(), Role::Client, "alice");
    let client = alice.client_config(ALPN);

    handshake(client.clone(), server.clone()).assert_ok();
    // Resumption carries the identity.
    let out = handshake(client.clone(), server.clone());
    out.assert_ok();
    assert_eq!(out.server.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(out.server_peer_id().name, "alice");
    assert_eq!(out.client_peer_id().name, "edge-1");

    assert!(!edge.reload_if_changed().unwrap());
    pki::revoke(dir.path(), &dir.path().join("alice.pem")).unwrap();
    assert!(edge.reload_if_changed().unwrap());
    assert!(!edge.reload_if_changed().unwrap());

    // A ticket from before the reload is refused: full handshake, refused.
    let out = handshake(client, server.clone());
    out.assert_refused_by_server("revoked");
    assert_eq!(out.client_word(), "revoked");

    // Others are unaffected.
    let bob = trust_for(dir.path(), Role::Client, "bob");
    handshake(bob.client_config(ALPN), server).assert_ok();
}

#[test]
fn an_expired_crl_still_revokes() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let alice = trust_for(dir.path(), Role::Client, "alice");
    let bob = trust_for(dir.path(), Role::Client, "bob");

    let ca_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.path().join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let alice_cert = der(&dir.path().join("alice.pem"));
    let (_, x509) = x509_parser::parse_x509_certificate(&alice_cert).unwrap();
    let now = OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - Duration::days(60),
        next_update: now - Duration::days(30),
        crl_number: rcgen::SerialNumber::from(9u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(x509.serial.to_bytes_be()),
            revocation_time: now - Duration::days(60),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    fs::write(dir.path().join("ca.crl"), crl.pem().unwrap()).unwrap();
    assert!(edge.reload_if_changed().unwrap());

    // Neither fail-open (alice readmitted) nor fail-closed (bob refused).
    handshake(alice.client_config(ALPN), server.clone()).assert_refused_by_server("revoked");
    handshake(bob.client_config(ALPN), server).assert_ok();
}

#[test]
fn reload_keeps_old_state_on_bad_files() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let alice = trust_for(dir.path(), Role::Client, "alice");
    let before = edge.expiry_unix();

    fs::write(dir.path().join("ca.pem"), "garbage, not PEM").unwrap();
    let err = edge.reload().unwrap_err();
    assert!(matches!(err, TrustError::BadCa { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    // Reported once per bad version, not at every poll.
    fs::write(dir.path().join("ca.pem"), "garbage, still not PEM").unwrap();
    assert!(edge.reload_if_changed().is_err());
    assert!(!edge.reload_if_changed().unwrap());

    assert_eq!(edge.local_id().name, "edge-1");
    assert_eq!(edge.expiry_unix(), before);
    handshake(alice.client_config(ALPN), server.clone()).assert_ok();

    // A garbage CRL is refused the same way.
    fs::write(
        dir.path().join("ca.crl"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    assert!(edge.reload().is_err());
    handshake(alice.client_config(ALPN), server).assert_ok();
}

#[test]
fn reload_swaps_our_certificate_without_rebuilding_configs() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let alice = trust_for(dir.path(), Role::Client, "alice");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let first = handshake(alice.client_config(ALPN), server.clone());
    let serial = |out: &Outcome| out.client.peer_certificates().unwrap()[0].clone();
    let old = serial(&first);

    issued(dir.path(), Role::Edge, "edge-1"); // renewal: same name, new key
    assert!(edge.reload_if_changed().unwrap());
    let second = handshake(alice.client_config(ALPN), server);
    second.assert_ok();
    assert_ne!(serial(&second), old);
}

#[test]
fn load_errors_name_the_bad_file() {
    let dir = ca(TD);
    let (cert, key) = issued(dir.path(), Role::Edge, "edge-1");
    let (_, other_key) = issued(dir.path(), Role::Edge, "edge-2");
    let files = |cert: &Path, key: &Path, crl: Option<PathBuf>| TlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: cert.to_owned(),
        key: key.to_owned(),
        crl,
        key_exchange: Default::default(),
    };

    let err = Trust::load(files(&cert, &other_key, None), TD).unwrap_err();
    assert!(
        matches!(&err, TrustError::BadKey { path, .. } if *path == other_key),
        "{err}"
    );

    let err = Trust::load(files(&cert, &key, None), "other.test").unwrap_err();
    assert!(
        matches!(&err, TrustError::Identity { path, source: IdentityError::ForeignTrustDomain { .. } } if *path == cert),
        "{err}"
    );

    let err = Trust::load(files(&cert, &key, None), "Other.Test").unwrap_err();
    assert!(matches!(err, TrustError::TrustDomain(_)), "{err}");

    let foreign = ca(TD);
    let (fcert, fkey) = issued(foreign.path(), Role::Edge, "edge-1");
    let err = Trust::load(files(&fcert, &fkey, None), TD).unwrap_err();
    assert!(
        matches!(&err, TrustError::NotTrusted { path, .. } if *path == fcert),
        "{err}"
    );

    let fcrl = foreign.path().join("ca.crl");
    let err = Trust::load(files(&cert, &key, Some(fcrl.clone())), TD).unwrap_err();
    assert!(
        matches!(&err, TrustError::ForeignCrl { path } if *path == fcrl),
        "{err}"
    );

    let missing = dir.path().join("missing.crl");
    let err = Trust::load(files(&cert, &key, Some(missing.clone())), TD).unwrap_err();
    assert!(
        matches!(&err, TrustError::Read { path, .. } if *path == missing),
        "{err}"
    );
}

#[test]
fn look_alike_ca_is_unknown_and_its_crl_refused() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let alice = trust_for(dir.path(), Role::Client, "alice");
    // An impostor issuer: our CA's exact name, another key.
    let ca_pem = fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let impostor =
        rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::generate().unwrap()).unwrap();

    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from("spiffe://lifeboat.test/client/eve").unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &impostor).unwrap();
    let (cert_path, key_path) = (dir.path().join("eve.pem"), dir.path().join("eve.key"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    let out = handshake(
        raw_client(Some((&cert_path, &key_path)), TLS13),
        server.clone(),
    );
    out.assert_refused_by_server("unknown-ca");

    // A CRL under our CA's name but not signed by it: refused at reload.
    fs::write(dir.path().join("ca.crl"), empty_crl(&impostor, 7)).unwrap();
    let err = edge.reload().unwrap_err();
    assert!(matches!(err, TrustError::ForeignCrl { .. }), "{err}");
    handshake(alice.client_config(ALPN), server).assert_ok();
}

/// A CRL with no CRL number, or a critical one, cannot say whether it is
/// older than the one in force: refused at reload (the CRL in force stays,
/// revoked alice stays out) and at load, naming the file. Each flawed CRL
/// here is the CRL from before alice's revocation, re-signed by the real CA:
/// accepted, it would readmit her.
#[test]
fn a_crl_without_a_sound_crl_number_is_refused_and_the_one_in_force_stays() {
    let dir = ca(TD);
    let crl = dir.path().join("ca.crl");
    let before_revocation = fs::read(&crl).unwrap();
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let alice = trust_for(dir.path(), Role::Client, "alice");
    pki::revoke(dir.path(), &dir.path().join("alice.pem")).unwrap();
    edge.reload().unwrap();
    handshake(alice.client_config(ALPN), server.clone()).assert_refused_by_server("revoked");
    let (cert, key) = issued(dir.path(), Role::Edge, "edge-2");
    for flaw in [CrlFlaw::NoNumber, CrlFlaw::CriticalNumber] {
        fs::write(&crl, &before_revocation).unwrap();
        pki::write_flawed_crl(dir.path(), flaw).unwrap();
        let refused = |err: &TrustError| {
            matches!(err, TrustError::UnsoundCrl { path, flaw: f } if *path == crl && *f == flaw)
                && err.to_string().contains("ca.crl: CRL refused: ")
        };
        let err = edge.reload().unwrap_err();
        assert!(refused(&err), "{flaw:?}: {err}");
        handshake(alice.client_config(ALPN), server.clone()).assert_refused_by_server("revoked");
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: cert.clone(),
            key: key.clone(),
            crl: Some(crl.clone()),
            key_exchange: KeyExchange::default(),
        };
        let err = Trust::load(files, TD).unwrap_err();
        assert!(refused(&err), "{flaw:?} at load: {err}");
    }
    // The same entries with a sound number are taken.
    fs::write(&crl, &before_revocation).unwrap();
    pki::revoke(dir.path(), &dir.path().join("alice.pem")).unwrap();
    edge.reload().unwrap();
}

/// A CRL signed by a pinned CA whose key usage lacks cRLSign is refused at
/// load, naming the file; the same CA with cRLSign is fine.
#[test]
fn a_crl_of_a_ca_without_crl_sign_is_refused() {
    use rcgen::KeyUsagePurpose::{CrlSign, KeyCertSign};
    let dir = ca(TD);
    let (cert, key) = issued(dir.path(), Role::Edge, "edge-1");
    let ours = fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    for (usages, flaw) in [
        (vec![KeyCertSign], Some(CrlFlaw::IssuerWithoutCrlSign)),
        (vec![KeyCertSign, CrlSign], None),
    ] {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "second CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = usages;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let same_key = rcgen::KeyPair::from_pem(&ca_key.serialize_pem()).unwrap();
        let pinned = params.self_signed(&ca_key).unwrap();
        // rcgen signs CRLs only as a cRLSign issuer: the same name and key
        // with cRLSign sign it; the pinned certificate is the one above.
        params.key_usages = vec![KeyCertSign, CrlSign];
        let signer = rcgen::Issuer::new(params, same_key);
        let (ca_path, crl_path) = (dir.path().join("both.pem"), dir.path().join("second.crl"));
        fs::write(&ca_path, format!("{ours}{}", pinned.pem())).unwrap();
        fs::write(&crl_path, empty_crl(&signer, 1)).unwrap();
        let files = TlsFiles {
            ca: ca_path,
            cert: cert.clone(),
            key: key.clone(),
            crl: Some(crl_path.clone()),
            key_exchange: KeyExchange::default(),
        };
        match (Trust::load(files, TD), flaw) {
            (Ok(_), None) => {}
            (Err(TrustError::UnsoundCrl { path, flaw: f }), Some(want)) => {
                assert_eq!((path, f), (crl_path, want));
            }
            (other, _) => panic!("{flaw:?}: {other:?}"),
        }
    }
}

#[test]
fn expiry_is_exported() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let (local, ca) = edge.expiry_unix();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let day = 86_400;
    assert!((local - (now + 365 * day)).abs() < day, "{local}");
    assert!((ca - (now + 3650 * day)).abs() < day, "{ca}");
    assert_eq!(edge.trust_domain(), TD);
}

#[test]
fn configs_work_with_quinn() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let alice = trust_for(dir.path(), Role::Client, "alice");
    quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(
        edge.server_config(&[Role::Client], ALPN),
    ))
    .unwrap();
    quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(alice.client_config(ALPN))).unwrap();
}

#[tokio::test]
async fn quic_handshakes_are_verified_and_classified() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server_cfg = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(
        edge.server_config(&[Role::Client], ALPN),
    ))
    .unwrap();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_cfg)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connect = |trust: &Arc<Trust>| {
        let cfg =
            quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(trust.client_config(ALPN)))
                .unwrap();
        client
            .connect_with(quinn::ClientConfig::new(Arc::new(cfg)), addr, "edge")
            .unwrap()
    };

    let alice = trust_for(dir.path(), Role::Client, "alice");
    let (c, s) = tokio::join!(connect(&alice), async {
        server.accept().await.unwrap().await
    });
    let (c, s) = (c.unwrap(), s.unwrap());
    let peer = s.peer_identity().unwrap();
    let chain = peer.downcast_ref::<Vec<CertificateDer<'static>>>().unwrap();
    assert_eq!(spiffe_id_of(&chain[0]).unwrap().name, "alice");
    c.close(0u32.into(), b"done");

    let connector = trust_for(dir.path(), Role::Connector, "c1");
    let (c, s) = tokio::join!(
        async {
            match connect(&connector).await {
                Ok(conn) => conn.closed().await,
                Err(e) => e,
            }
        },
        async { server.accept().await.unwrap().await }
    );
    assert_eq!(classify_quic(&s.unwrap_err()), "wrong-role");
    assert_eq!(classify_quic(&c), "wrong-role");
}

// ---------------------------------------------------------------- cert_grace

/// A client (or connector) certificate that expired `ago` before now.
fn expired(dir: &Path, role: Role, name: &str, ago: Duration) -> (PathBuf, PathBuf) {
    let now = OffsetDateTime::now_utc();
    let mut opts = IssueOptions::new(dir, role, name);
    if role == Role::Connector {
        opts.group = Some("g1".into());
    }
    opts.not_before = Some(now - Duration::days(30));
    opts.not_after = Some(now - ago);
    pki::issue(&opts).unwrap()
}

#[test]
fn cert_grace_accepts_recently_expired_clients_only() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let counter = prometheus::IntCounter::new("grace", "grace").unwrap();
    edge.count_cert_grace(counter.clone());
    let server = Arc::new(edge.server_config(&[Role::Client, Role::Connector], ALPN));
    let (cert, key) = expired(dir.path(), Role::Client, "late", Duration::hours(1));
    let late = || raw_client(Some((&cert, &key)), TLS13);

    // Off (the default): expired is expired.
    handshake(late(), server.clone()).assert_refused_by_server("expired");

    edge.set_cert_grace(Some(std::time::Duration::from_secs(2 * 3600)));
    assert_eq!(
        edge.cert_grace(),
        Some(std::time::Duration::from_secs(7200))
    );
    let client = late();
    let out = handshake(client.clone(), server.clone());
    out.assert_ok();
    assert_eq!(out.server_peer_id().name, "late");
    assert_eq!(counter.get(), 1);
    // No session ticket for a grace acceptance: the next connection is a
    // full handshake, verified (and counted) again.
    let out = handshake(client.clone(), server.clone());
    out.assert_ok();
    assert_eq!(out.server.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(counter.get(), 2);

    // Longer ago than the window; a connector; an intermediate-free chain
    // from another CA; revoked: all refused, with their own reasons.
    let (c, k) = expired(dir.path(), Role::Client, "later", Duration::hours(3));
    handshake(raw_client(Some((&c, &k)), TLS13), server.clone())
        .assert_refused_by_server("expired");
    let (c, k) = expired(dir.path(), Role::Connector, "c-late", Duration::hours(1));
    handshake(raw_client(Some((&c, &k)), TLS13), server.clone())
        .assert_refused_by_server("expired");
    let foreign = ca(TD);
    let (c, k) = expired(foreign.path(), Role::Client, "eve", Duration::hours(1));
    handshake(raw_client(Some((&c, &k)), TLS13), server.clone())
        .assert_refused_by_server("unknown-ca");
    let (c, k) = expired(dir.path(), Role::Client, "lost", Duration::hours(1));
    pki::revoke(dir.path(), &c).unwrap();
    assert!(edge.reload_if_changed().unwrap());
    handshake(raw_client(Some((&c, &k)), TLS13), server.clone())
        .assert_refused_by_server("revoked");
    // A foreign trust domain under a pinned CA is still foreign.
    let theirs = ca("other.test");
    let both = dir.path().join("both.pem");
    let pem = [dir.path().join("ca.pem"), theirs.path().join("ca.pem")]
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect::<String>();
    fs::write(&both, pem).unwrap();
    let (ec, ek) = issued(dir.path(), Role::Edge, "edge-2");
    let edge2 = Trust::load(
        TlsFiles {
            ca: both,
            cert: ec,
            key: ek,
            crl: None,
            key_exchange: Default::default(),
        },
        TD,
    )
    .unwrap();
    edge2.set_cert_grace(Some(std::time::Duration::from_secs(7200)));
    let (c, k) = expired(theirs.path(), Role::Client, "alien", Duration::hours(1));
    handshake(
        raw_client(Some((&c, &k)), TLS13),
        Arc::new(edge2.server_config(&[Role::Client], ALPN)),
    )
    .assert_refused_by_server("foreign-trust-domain");
    assert_eq!(counter.get(), 2);

    // Off again: refused as before.
    edge.set_cert_grace(None);
    handshake(late(), server).assert_refused_by_server("expired");
    assert_eq!(counter.get(), 2);
}

#[test]
fn switching_cert_grace_off_voids_session_tickets() {
    let dir = ca(TD);
    let edge = trust_for(dir.path(), Role::Edge, "edge-1");
    let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
    let alice = trust_for(dir.path(), Role::Client, "alice");
    let client = alice.client_config(ALPN);
    let window = Some(std::time::Duration::from_secs(3600));

    edge.set_cert_grace(window);
    handshake(client.clone(), server.clone()).assert_ok();
    // Switching on, or on again, keeps tickets.
    edge.set_cert_grace(window);
    let out = handshake(client.clone(), server.clone());
    assert_eq!(out.server.handshake_kind(), Some(HandshakeKind::Resumed));
    // Off: every earlier ticket is void (a full, re-verified handshake).
    edge.set_cert_grace(None);
    let out = handshake(client.clone(), server.clone());
    out.assert_ok();
    assert_eq!(out.server.handshake_kind(), Some(HandshakeKind::Full));
    let out = handshake(client, server);
    assert_eq!(out.server.handshake_kind(), Some(HandshakeKind::Resumed));
}

// ---------------------------------------------------------------- harness

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca(td: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), td, 3650).unwrap();
    dir
}

fn issued(dir: &Path, role: Role, name: &str) -> (PathBuf, PathBuf) {
    let mut opts = IssueOptions::new(dir, role, name);
    if role == Role::Connector {
        opts.group = Some("g1".into());
    }
    pki::issue(&opts).unwrap()
}

fn trust_for(dir: &Path, role: Role, name: &str) -> Arc<Trust> {
    trust_with(dir, role, name, KeyExchange::default())
}

fn trust_with(dir: &Path, role: Role, name: &str, key_exchange: KeyExchange) -> Arc<Trust> {
    let (cert, key) = issued(dir, role, name);
    Trust::load(
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert,
            key,
            crl: Some(dir.join("ca.crl")),
            key_exchange,
        },
        TD,
    )
    .unwrap()
}

/// An empty CRL numbered `number`, valid for a day, signed by `issuer` (PEM).
fn empty_crl(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, number: u64) -> String {
    let now = OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(1),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// A clientAuth certificate from the CA in `dir` with exactly these URI SANs
/// (plus a DNS name), for the cases `pki::issue` rightly cannot produce.
fn custom_cert(dir: &Path, name: &str, uris: &[&str]) -> (PathBuf, PathBuf) {
    use rcgen::string::Ia5String;
    let ca_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
    for uri in uris {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(Ia5String::try_from(*uri).unwrap()));
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Accepts any server certificate: lets a test reach the server's checks.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
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
    ) -> Result<HandshakeSignatureValid, Error> {
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

fn raw_client(
    cert: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())));
    let mut cfg = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![der(cert)], PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"lifeboat/1".to_vec()];
    cfg
}

fn raw_server(cert: &Path, key: &Path) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der(cert)], PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    cfg.alpn_protocols = vec![b"lifeboat/1".to_vec()];
    Arc::new(cfg)
}

struct Outcome {
    client: ClientConnection,
    server: ServerConnection,
    client_err: Option<Error>,
    server_err: Option<Error>,
}

impl Outcome {
    fn assert_ok(&self) {
        assert!(
            self.client_err.is_none() && self.server_err.is_none(),
            "client: {:?}, server: {:?}",
            self.client_err,
            self.server_err
        );
        assert!(!self.client.is_handshaking() && !self.server.is_handshaking());
    }

    fn assert_refused_by_server(&self, word: &str) {
        let err = self.server_err.as_ref().expect("server refused");
        assert_eq!(classify(err), word, "{err:?}");
    }

    fn assert_refused_by_client(&self, word: &str) {
        let err = self.client_err.as_ref().expect("client refused");
        assert_eq!(classify(err), word, "{err:?}");
    }

    fn client_word(&self) -> &'static str {
        classify(self.client_err.as_ref().expect("client saw an error"))
    }

    fn server_peer_id(&self) -> SpiffeId {
        spiffe_id_of(&self.server.peer_certificates().expect("client certificate")[0]).unwrap()
    }

    fn client_peer_id(&self) -> SpiffeId {
        spiffe_id_of(&self.client.peer_certificates().expect("server certificate")[0]).unwrap()
    }
}

/// Drives both ends in memory until neither has anything left to send;
/// records the first error each side reports.
fn handshake(client: ClientConfig, server: Arc<ServerConfig>) -> Outcome {
    let name = ServerName::try_from("edge.invalid").unwrap();
    let mut c = Connection::Client(ClientConnection::new(Arc::new(client), name).unwrap());
    let mut s = Connection::Server(ServerConnection::new(server).unwrap());
    let (mut client_err, mut server_err) = (None, None);
    for _ in 0..32 {
        let a = transfer(&mut c, &mut s, &mut server_err);
        let b = transfer(&mut s, &mut c, &mut client_err);
        if !a && !b {
            break;
        }
    }
    let (Connection::Client(client), Connection::Server(server)) = (c, s) else {
        unreachable!()
    };
    Outcome {
        client,
        server,
        client_err,
        server_err,
    }
}

fn transfer(from: &mut Connection, to: &mut Connection, to_err: &mut Option<Error>) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() {
        return false;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if to.read_tls(&mut rd).is_err() {
            break;
        }
        if let Err(e) = to.process_new_packets() {
            to_err.get_or_insert(e);
            break;
        }
    }
    true
}
