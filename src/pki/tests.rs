use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::crl::read_crl;
use super::*;

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn crl_serials(dir: &Path) -> (Vec<Vec<u8>>, BigUint) {
    let ca = Ca::load(dir).unwrap();
    let (entries, number) = read_crl(&dir.join("ca.crl"), &ca.subject).unwrap();
    (
        entries.iter().map(|e| e.serial_number.to_bytes()).collect(),
        number,
    )
}

fn serial_of(path: &Path) -> Vec<u8> {
    let der = CertificateDer::from_pem_file(path).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    x509.serial.to_bytes_be()
}

#[test]
fn init_writes_ca_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "lifeboat.test", 10).unwrap();
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join("ca.pem")), 0o644);
    let key_before = fs::read(dir.path().join("ca.key")).unwrap();

    let err = init(dir.path(), "lifeboat.test", 10).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err:#}");
    assert_eq!(fs::read(dir.path().join("ca.key")).unwrap(), key_before);

    let ca = Ca::load(dir.path()).unwrap();
    assert_eq!(ca.trust_domain, "lifeboat.test");
    let der = CertificateDer::from_pem_file(dir.path().join("ca.pem")).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(x509.is_ca());
    let bc = x509.basic_constraints().unwrap().unwrap().value;
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    let validity = x509.validity().time_to_expiration().unwrap();
    assert!(validity > Duration::days(9) && validity <= Duration::days(10));
    // The empty CRL is there from the start.
    let (serials, number) = crl_serials(dir.path());
    assert!(serials.is_empty());
    assert_eq!(number, BigUint::from(1u8));
}

#[test]
fn init_refuses_bad_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    assert!(init(dir.path(), "Lifeboat.Test", 10).is_err());
    assert!(init(dir.path(), "", 10).is_err());
    assert!(!dir.path().join("ca.key").exists());
}

#[test]
fn issue_per_role() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "lifeboat.test", 10).unwrap();

    let mut edge = IssueOptions::new(dir.path(), Role::Edge, "edge-1");
    edge.dns = vec!["edge.example.com".into()];
    edge.ips = vec!["127.0.0.1".parse().unwrap()];
    let (cert, key) = issue(&edge).unwrap();
    assert_eq!(cert, dir.path().join("edge-1.pem"));
    assert_eq!(key, dir.path().join("edge-1.key"));
    assert_eq!(mode(&key), 0o600);
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    assert_eq!(
        crate::trust::spiffe_id_of(&der).unwrap().uri(),
        "spiffe://lifeboat.test/edge/edge-1"
    );
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(x509.serial.to_bytes_be().len(), 16);
    let sans = &x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 3, "{sans:?}");

    let mut conn = IssueOptions::new(dir.path(), Role::Connector, "c1");
    conn.group = Some("dc-east".into());
    let (cert, _) = issue(&conn).unwrap();
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    assert_eq!(
        crate::trust::spiffe_id_of(&der).unwrap().uri(),
        "spiffe://lifeboat.test/connector/dc-east/c1"
    );
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(!eku.server_auth && eku.client_auth);
    // Certificate files hold the leaf only.
    assert_eq!(
        CertificateDer::pem_file_iter(&cert).unwrap().count(),
        1,
        "leaf only"
    );
}

#[test]
fn issue_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "lifeboat.test", 10).unwrap();
    let err = |opts: IssueOptions| format!("{:#}", issue(&opts).unwrap_err());

    let conn = IssueOptions::new(dir.path(), Role::Connector, "c1");
    assert!(err(conn).contains("--group is required"));
    let mut client = IssueOptions::new(dir.path(), Role::Client, "alice");
    client.group = Some("g".into());
    assert!(err(client).contains("only for connectors"));
    for bad in ["", ".", "..", "a/b", "al ice", "ca"] {
        let opts = IssueOptions::new(dir.path(), Role::Client, bad);
        let msg = err(opts);
        assert!(msg.contains("--name"), "{bad:?}: {msg}");
    }
    let mut conn = IssueOptions::new(dir.path(), Role::Connector, "c1");
    conn.group = Some("a/b".into());
    assert!(err(conn).contains("--group"));
    let mut edge = IssueOptions::new(dir.path(), Role::Edge, "e");
    edge.dns = vec!["not a name".into()];
    assert!(err(edge).contains("--dns"));
    // No CA there at all: the message names the file.
    let empty = tempfile::tempdir().unwrap();
    let msg = err(IssueOptions::new(empty.path(), Role::Client, "alice"));
    assert!(msg.contains("ca.pem"), "{msg}");
    assert!(!dir.path().join("ca.pem.pem").exists());
}

#[test]
fn revoke_accumulates_entries() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "lifeboat.test", 10).unwrap();
    let (a, _) = issue(&IssueOptions::new(dir.path(), Role::Client, "alice")).unwrap();
    let (b, _) = issue(&IssueOptions::new(dir.path(), Role::Client, "bob")).unwrap();

    revoke(dir.path(), &a).unwrap();
    let (serials, n1) = crl_serials(dir.path());
    assert_eq!(serials, vec![serial_of(&a)]);

    revoke(dir.path(), &b).unwrap();
    let (serials, n2) = crl_serials(dir.path());
    assert_eq!(serials, vec![serial_of(&a), serial_of(&b)]);
    assert_eq!(n2, n1.clone() + 1u8);

    // Idempotent: no duplicate entry, but a fresh number.
    revoke(dir.path(), &a).unwrap();
    let (serials, n3) = crl_serials(dir.path());
    assert_eq!(serials.len(), 2);
    assert_eq!(n3, n2 + 1u8);
}

#[test]
fn revoke_refuses_foreign_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    init(dir.path(), "lifeboat.test", 10).unwrap();
    init(other.path(), "lifeboat.test", 10).unwrap();
    let (foreign, _) = issue(&IssueOptions::new(other.path(), Role::Client, "eve")).unwrap();
    let msg = format!("{:#}", revoke(dir.path(), &foreign).unwrap_err());
    assert!(msg.contains("not issued by the CA"), "{msg}");
    let msg = format!(
        "{:#}",
        revoke(dir.path(), &dir.path().join("ca.pem")).unwrap_err()
    );
    assert!(msg.contains("CA certificate"), "{msg}");
}

#[test]
fn revoke_refuses_a_ca_that_may_not_sign_crls() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "lifeboat.test", 10).unwrap();
    let (alice, _) = issue(&IssueOptions::new(dir.path(), Role::Client, "alice")).unwrap();
    // A CA of the same key and trust domain without cRLSign, as an
    // operator's own CA might be.
    let key = KeyPair::from_pem(&fs::read_to_string(dir.path().join("ca.key")).unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from("spiffe://lifeboat.test").unwrap(),
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
    let crl_before = fs::read(dir.path().join("ca.crl")).unwrap();
    let msg = format!("{:#}", revoke(dir.path(), &alice).unwrap_err());
    assert!(
        msg.contains("ca.pem: the CA's key usage lacks cRLSign"),
        "{msg}"
    );
    assert_eq!(fs::read(dir.path().join("ca.crl")).unwrap(), crl_before);
}
