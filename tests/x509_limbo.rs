//! lifeboat's certificate verification over the x509-limbo suite
//! (`../shared/testdata/x509-limbo.json`, 208 cases; see its README).
//!
//! Two layers, each built exactly as lifeboat builds it:
//! - the chain layer, [`check_chain_for_test`]: the case's trusted
//!   certificates loaded as `[tls] ca` is (the pinned roots), its CRLs as
//!   `[tls] crl` is, then the check every handshake makes (webpki path
//!   building with lifeboat's algorithms and revocation policy, plus the
//!   pinned root's own validity), for the usage the case asks for, at its
//!   validation time;
//! - the full verifiers of a `Trust` loaded from files: the edge's client
//!   certificate verifier (as `Trust::server_config` builds it, clientAuth)
//!   and the server certificate verifier clients and connectors use (as
//!   `Trust::client_config` builds it, serverAuth). They also require a
//!   SPIFFE id, which no limbo certificate carries, so they must accept
//!   nothing; what is checked is that they refuse for the chain layer's
//!   reason, or for "no-identity" exactly when the chain is sound.
//!
//! Each layer is compared with plain rustls-webpki, called here on the same
//! inputs: lifeboat may refuse more, never accept more. It must accept none
//! of the cases limbo expects to fail among `pathological::`, `cve::`,
//! expired, untrusted and revoked ones (two cases of those classes are valid
//! chains limbo expects to pass, `cve::cve-2024-0567` and
//! `pathological::multiple-chains-expired-intermediate`; they pass).
//!
//! Host names are the one thing lifeboat deliberately does not check: a
//! peer's identity is its SPIFFE id under a CA pinned for the deployment,
//! and the names edges are reached by are what changes in a disaster (see
//! `src/trust/verify.rs`). So a case whose *only* failure is a name mismatch
//! passes the chain layer. [`NAME_ONLY`] lists those cases, and the test
//! proves, for each, that plain webpki accepts the chain and refuses the
//! name, and that no other case passes the chain layer against limbo's
//! expectation without being explained in [`WEBPKI_ACCEPTS`].

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifeboat::pki::{self, IssueOptions};
use lifeboat::trust::{check_chain_for_test, classify, ChainError, Role, TlsFiles, Trust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use serde::Deserialize;

const LIMBO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/x509-limbo.json"
);
/// Every case of the file: the loop cannot silently check nothing.
const CASES: usize = 208;
const TD: &str = "limbo.lifeboat.test";

/// Cases whose only failure is the host name: they pass lifeboat's chain
/// layer by design (no host name check). Each is proven here to pass plain
/// webpki's chain check and fail its name check. A real peer with such a
/// certificate is still refused, for want of a SPIFFE id.
const NAME_ONLY: &[&str] = &[
    // 2048 subject CNs against 2048 name constraints, no SAN: webpki applies
    // name constraints to SANs only, so the chain is sound and fast; limbo
    // fails it because "t0.test" is in no SAN.
    "pathological::nc-dos-3",
    // An IP written as a dNSName: not a name for an IP check.
    "rfc5280::san::ip-in-dns",
    "webpki::san::mismatch-domain-san",
    "webpki::san::mismatch-subdomain-san",
    "webpki::san::mismatch-subdomain-apex-san",
    "webpki::san::mismatch-apex-subdomain-san",
    "webpki::san::public-suffix-wildcard-san",
    "webpki::san::wildcard-embedded-leftmost-san",
    "webpki::san::wildcard-not-in-leftmost-san",
    "webpki::san::wildcard-match-across-labels-san",
    "webpki::san::wildcard-embedded-ulabel-san",
    "webpki::san::unicode-emoji-san",
    "webpki::san::no-san",
    "webpki::san::san-wildcard-only",
    "webpki::san::san-wildcard-only-tld",
];

/// Cases limbo expects to fail that plain webpki accepts outright (chain and
/// name): rules webpki does not enforce, so neither does lifeboat's chain
/// layer. None is in a class lifeboat must refuse (checked).
const WEBPKI_ACCEPTS: &[(&str, &[&str])] = &[
    (
        "max_chain_depth is a verifier option lifeboat does not have (webpki caps \
         sub-CAs at 6 itself; a lifeboat CA is pathlen 0)",
        &[
            "pathlen::max-chain-depth-0-exhausted",
            "pathlen::max-chain-depth-1-exhausted",
        ],
    ),
    (
        "RFC 5280 / CABF profile rules webpki does not enforce (AKI/SKI presence \
         and criticality, serial number form, empty subjects, policy constraints, \
         keyCertSign on a leaf, name constraints syntax and placement, SAN \
         criticality, underscores, AIA syntax, anyEKU, critical EKU, a leaf \
         without EKU, name constraints with both subtrees null or empty, RSA \
         moduli that are not a multiple of 8 bits)",
        &[
            "rfc5280::aki::critical-aki",
            "rfc5280::aki::leaf-missing-aki",
            "rfc5280::aki::intermediate-missing-aki",
            "rfc5280::aki::cross-signed-root-missing-aki",
            "rfc5280::ski::critical-ski",
            "rfc5280::ski::root-missing-ski",
            "rfc5280::ski::intermediate-missing-ski",
            "rfc5280::serial::too-long",
            "rfc5280::serial::zero",
            "rfc5280::ca-empty-subject",
            "rfc5280::pc::ica-noncritical-pc",
            "rfc5280::leaf-ku-keycertsign",
            "rfc5280::nc::permitted-dns-match-noncritical",
            "rfc5280::nc::invalid-dnsname-leading-period",
            "rfc5280::nc::not-allowed-in-ee-noncritical",
            "rfc5280::nc::not-allowed-in-ee-critical",
            "rfc5280::san::noncritical-with-empty-subject",
            "rfc5280::san::underscore-dns",
            "webpki::san::san-critical-with-nonempty-subject",
            "webpki::malformed-aia",
            "webpki::eku::ee-anyeku",
            "webpki::eku::ee-critical-eku",
            "webpki::eku::ee-without-eku",
            "webpki::nc::intermediate-permitted-excluded-subtrees-both-null",
            "webpki::nc::intermediate-permitted-excluded-subtrees-both-empty-sequences",
            "webpki::forbidden-rsa-not-divisible-by-8-in-root",
        ],
    ),
    (
        "a trust anchor is a name and a key to webpki: the pinned root's own \
         extensions are not checked (lifeboat adds only its validity dates)",
        &[
            "rfc5280::root-missing-basic-constraints",
            "rfc5280::root-non-critical-basic-constraints",
            "rfc5280::root-inconsistent-ca-extensions",
            "rfc5280::unknown-critical-extension-root",
            "webpki::aki::root-with-aki-missing-keyidentifier",
            "webpki::aki::root-with-aki-authoritycertissuer",
            "webpki::aki::root-with-aki-authoritycertserialnumber",
            "webpki::aki::root-with-aki-all-fields",
            "webpki::aki::root-with-aki-ski-mismatch",
            "webpki::eku::root-has-eku",
        ],
    ),
    (
        "the subject CN is never a name to webpki (SANs only), so CN/SAN \
         mismatches are not looked at",
        &[
            "webpki::cn::ipv4-hex-mismatch",
            "webpki::cn::ipv4-leading-zeros-mismatch",
            "webpki::cn::ipv6-uppercase-mismatch",
            "webpki::cn::ipv6-uncompressed-mismatch",
            "webpki::cn::ipv6-non-rfc5952-mismatch",
            "webpki::cn::punycode-not-in-san",
            "webpki::cn::utf8-vs-punycode-mismatch",
            "webpki::cn::not-in-san",
            "webpki::cn::case-mismatch",
        ],
    ),
    (
        "wildcards over multi-label public suffixes need the PSL, which webpki \
         does not carry (a host name rule: lifeboat checks no host names)",
        &[
            "webpki::san::public-suffix-multi-label-wildcard-san",
            "webpki::san::public-suffix-private-namespace-wildcard-san",
        ],
    ),
    (
        "the leaf's own key is not used in path validation; in a TLS handshake it \
         must sign CertificateVerify, which rustls (ring) refuses for P-192, DSA \
         and RSA under 2048 bits",
        &[
            "webpki::forbidden-p192-leaf",
            "webpki::forbidden-dsa-leaf",
            "webpki::forbidden-weak-rsa-in-leaf",
            "webpki::forbidden-rsa-key-not-divisible-by-8-in-leaf",
        ],
    ),
];

/// Cases limbo expects to pass that the chain layer refuses: each is
/// refused by plain webpki too (checked), stricter by design.
const REFUSED_VALID: &[(&str, &[&str])] = &[
    (
        "a CA certificate is never accepted as a leaf",
        &[
            "pathlen::validation-ignores-pathlen-in-leaf",
            "rfc5280::ca-as-leaf",
        ],
    ),
    (
        "self-issued (not self-signed) intermediates are not followed",
        &[
            "pathlen::self-issued-certs-pathlen",
            "rfc5280::nc::permitted-self-issued",
        ],
    ),
    (
        "name constraints webpki cannot evaluate (directory names, email) refuse \
         the chain",
        &[
            "rfc5280::nc::permitted-dn-match",
            "rfc5280::nc::nc-permits-email-exact",
            "rfc5280::nc::nc-permits-email-domain",
            "rfc5280::nc::nc-permits-email-literal-asterisk-exact-match",
            "rfc5280::nc::nc-permits-email-literal-double-asterisk",
            "rfc5280::nc::nc-permits-email-literal-mid-asterisk",
        ],
    ),
];

/// Cases plain webpki accepts and the chain layer refuses (lifeboat is
/// stricter there, and limbo agrees with lifeboat).
const STRICTER_THAN_WEBPKI: &[(&str, &[&str])] = &[
    (
        "a pinned root outside its validity period vouches for nothing (webpki \
         ignores a trust anchor's dates)",
        &["rfc5280::validity::expired-root"],
    ),
    (
        "CRL hygiene (webpki checks none of it): a CRL without a CRL number, or \
         with a critical one, or signed by a CA whose key usage lacks cRLSign is \
         refused at load (a config error at start, a refused reload later)",
        &[
            "crl::crlnumber-missing",
            "crl::crlnumber-critical",
            "crl::issuer-missing-crlsign",
        ],
    ),
];

#[derive(Deserialize)]
struct Limbo {
    testcases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    validation_kind: Kind,
    trusted_certs: Vec<String>,
    untrusted_intermediates: Vec<String>,
    peer_certificate: String,
    validation_time: Option<String>,
    expected_result: Expected,
    expected_peer_name: Option<PeerName>,
    #[serde(default)]
    crls: Vec<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "UPPERCASE")]
enum Kind {
    Server,
    Client,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "UPPERCASE")]
enum Expected {
    Success,
    Failure,
}

#[derive(Deserialize)]
struct PeerName {
    kind: String,
    value: String,
}

/// What each layer (and plain webpki) said about one case.
struct Outcome {
    id: String,
    expected: Expected,
    /// Plain webpki, the case's usage.
    plain: Result<(), webpki::Error>,
    /// webpki's name check of the expected peer name, if any.
    name: Option<Result<(), String>>,
    /// lifeboat's chain layer, the case's usage.
    chain: Result<(), ChainError>,
    chain_time: Duration,
    /// The full verifiers: (plain webpki for their usage, their result).
    edge: Full,
    server: Full,
}

struct Full {
    plain: Result<(), webpki::Error>,
    result: Result<(), String>,
}

fn certs(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).expect("limbo certificate PEM"))
        .collect()
}

fn crls(pems: &[String]) -> Vec<CertificateRevocationListDer<'static>> {
    pems.iter()
        .map(|p| CertificateRevocationListDer::from_pem_slice(p.as_bytes()).expect("limbo CRL PEM"))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|+00:00)` as unix seconds; the fraction is
/// dropped, as webpki's `UnixTime` has whole seconds.
fn parse_time(s: &str) -> u64 {
    let num = |from: usize, to: usize| -> i64 {
        s.get(from..to)
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("limbo time {s:?}"))
    };
    assert!(
        s.ends_with("+00:00") || s.ends_with('Z'),
        "limbo time not UTC: {s}"
    );
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + num(11, 13) * 3600 + num(14, 16) * 60 + num(17, 19);
    u64::try_from(secs).expect("limbo time after 1970")
}

#[test]
fn time_parses() {
    assert_eq!(parse_time("1970-01-01T00:00:03+00:00"), 3);
    assert_eq!(parse_time("2024-03-01T00:00:00.999+00:00"), 1_709_251_200);
    assert_eq!(parse_time("2026-01-13T13:03:47Z"), 1_768_309_427);
}

/// Plain rustls-webpki as a library user calls it: every parsable trusted
/// certificate an anchor, all of webpki's algorithms, CRLs (if any) with
/// webpki's default revocation options.
fn plain_webpki(
    trusted: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
    ee: &CertificateDer<'_>,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchors: Vec<_> = trusted
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let crls = crls
        .iter()
        .map(|c| webpki::OwnedCertRevocationList::from_der(c).map(webpki::CertRevocationList::from))
        .collect::<Result<Vec<_>, _>>()?;
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
        .ok()
        .map(|b| b.build());
    webpki::EndEntityCert::try_from(ee)?
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            usage,
            revocation,
            None,
        )
        .map(drop)
}

/// webpki's host name check of the case's expected peer name.
fn plain_name_check(
    ee: &CertificateDer<'_>,
    name: Option<&PeerName>,
) -> Option<Result<(), String>> {
    let name = name?;
    let Ok(ee) = webpki::EndEntityCert::try_from(ee) else {
        return Some(Err("unparsable leaf".into()));
    };
    if name.kind != "DNS" && name.kind != "IP" {
        return Some(Err(format!("name kind {}", name.kind)));
    }
    Some(
        ServerName::try_from(name.value.as_str())
            .map_err(|e| e.to_string())
            .and_then(|n| {
                ee.verify_is_valid_for_subject_name(&n)
                    .map_err(|e| format!("{e:?}"))
            }),
    )
}

/// The lifeboat class a case belongs to that must never be accepted when
/// limbo expects it to fail.
fn forbidden_class(case: &Case, plain: &Result<(), webpki::Error>) -> Option<&'static str> {
    let id = case.id.as_str();
    let by_id = [
        ("pathological::", "pathological"),
        ("cve::", "cve"),
        ("expired", "expired"),
        ("not-yet-valid", "expired"),
        ("untrusted", "untrusted"),
        ("revoked", "revoked"),
    ]
    .into_iter()
    .find(|(needle, _)| id.contains(needle))
    .map(|(_, class)| class);
    by_id.or(match plain {
        Err(webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }) => {
            Some("expired")
        }
        Err(webpki::Error::UnknownIssuer) => Some("untrusted"),
        Err(webpki::Error::CertRevoked) => Some("revoked"),
        _ => None,
    })
}

/// A full verifier's refusal, as `classify` words it, with the detail.
fn word(r: &Result<(), String>) -> &str {
    match r {
        Ok(()) => "ACCEPTED",
        Err(e) => e.split(' ').next().unwrap_or(""),
    }
}

/// A small deployment whose edge certificate lets a `Trust` load next to
/// the limbo roots (its CA has its own name and key: no limbo chain reaches
/// it, and the chain-layer comparison below includes it all the same).
struct Own {
    dir: tempfile::TempDir,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Own {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki_dir = dir.path().join("own");
        pki::init(&pki_dir, TD, 2).expect("pki init");
        let (cert, key) =
            pki::issue(&IssueOptions::new(&pki_dir, Role::Edge, "edge1")).expect("pki issue");
        let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem")).expect("own CA");
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("own CA PEM");
        Self {
            dir,
            ca_pem,
            ca_der,
            cert,
            key,
        }
    }

    /// The edge's `Trust` pinning the case's roots (and ours), with its CRLs.
    fn trust(&self, n: usize, case: &Case) -> Result<Arc<Trust>, String> {
        let d = self.dir.path().join(format!("case{n}"));
        std::fs::create_dir_all(&d).expect("case dir");
        let ca = d.join("ca.pem");
        std::fs::write(
            &ca,
            format!("{}{}", case.trusted_certs.concat(), self.ca_pem),
        )
        .expect("write ca.pem");
        let crl = (!case.crls.is_empty()).then(|| {
            let p = d.join("ca.crl");
            std::fs::write(&p, case.crls.concat()).expect("write ca.crl");
            p
        });
        let files = TlsFiles {
            ca,
            cert: self.cert.clone(),
            key: self.key.clone(),
            crl,
            key_exchange: Default::default(),
        };
        Trust::load(files, TD).map_err(|e| format!("load {e}"))
    }
}

fn run(n: usize, case: &Case, own: &Own, real_now: u64) -> Outcome {
    let trusted = certs(&case.trusted_certs);
    let inter = certs(&case.untrusted_intermediates);
    let crl = crls(&case.crls);
    let ee = CertificateDer::from_pem_slice(case.peer_certificate.as_bytes()).expect("peer PEM");
    let secs = case.validation_time.as_deref().map_or(real_now, parse_time);
    let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let usage = match case.validation_kind {
        Kind::Server => webpki::KeyUsage::server_auth(),
        Kind::Client => webpki::KeyUsage::client_auth(),
    };

    let started = Instant::now();
    let chain = check_chain_for_test(&trusted, &inter, &crl, &ee, now, usage);
    let chain_time = started.elapsed();

    // The full verifiers pin our CA too; compare them with the chain layer
    // and plain webpki over the same roots and their own usage.
    let mut with_own = trusted.clone();
    with_own.push(own.ca_der.clone());
    let trust = own.trust(n, case);
    let full = |usage: webpki::KeyUsage,
                verify: &dyn Fn(&Arc<Trust>) -> Result<(), rustls::Error>| {
        let chain = check_chain_for_test(&with_own, &inter, &crl, &ee, now, usage);
        let result = match &trust {
            Ok(t) => verify(t).map_err(|e| format!("{} {e:?}", classify(&e))),
            Err(e) => Err(e.clone()),
        };
        check_full(&case.id, &chain, &result);
        Full {
            plain: plain_webpki(&with_own, &inter, &crl, &ee, now, usage),
            result,
        }
    };
    let edge = full(webpki::KeyUsage::client_auth(), &|t| {
        t.client_verifier(&[Role::Client, Role::Connector])
            .verify_client_cert(&ee, &inter, now)
            .map(drop)
    });
    let server = full(webpki::KeyUsage::server_auth(), &|t| {
        let name = ServerName::try_from("edge.invalid").expect("literal");
        t.server_verifier()
            .verify_server_cert(&ee, &inter, &name, &[], now)
            .map(drop)
    });
    Outcome {
        id: case.id.clone(),
        expected: case.expected_result,
        plain: plain_webpki(&trusted, &inter, &crl, &ee, now, usage),
        name: plain_name_check(&ee, case.expected_peer_name.as_ref()),
        chain,
        chain_time,
        edge,
        server,
    }
}

/// A full verifier refuses, and for the chain layer's reason: at load if the
/// roots or CRLs do not load, "no-identity" if the chain is sound, a chain
/// word otherwise. A chain that only lacks the EKU asked for is re-checked
/// for any EKU and then the identity (to tell a wrong role from a broken
/// chain), so either may be the word there.
fn check_full(id: &str, chain: &Result<(), ChainError>, result: &Result<(), String>) {
    let w = word(result);
    assert_ne!(
        w, "ACCEPTED",
        "{id}: a full verifier accepted a certificate without a SPIFFE id"
    );
    #[allow(deprecated)]
    match chain {
        Err(ChainError::Load(_)) => assert_eq!(w, "load", "{id}: {result:?} vs {chain:?}"),
        Ok(()) => assert_eq!(w, "no-identity", "{id}: {result:?} vs {chain:?}"),
        Err(ChainError::Verify(
            webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_),
        )) => assert_ne!(w, "load", "{id}: {result:?} vs {chain:?}"),
        Err(ChainError::Verify(_)) => assert!(
            w != "no-identity" && w != "load",
            "{id}: the chain layer refused ({chain:?}) but the verifier said {result:?}"
        ),
    }
}

#[test]
fn x509_limbo() {
    let text = std::fs::read_to_string(LIMBO).expect("read ../shared/testdata/x509-limbo.json");
    let limbo: Limbo = serde_json::from_str(&text).expect("parse x509-limbo.json");
    let own = Own::new();
    let real_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let outcomes: Vec<Outcome> = limbo
        .testcases
        .iter()
        .enumerate()
        .map(|(n, case)| run(n, case, &own, real_now))
        .collect();
    report_and_check(&limbo.testcases, &outcomes);
}

fn report_and_check(cases: &[Case], outcomes: &[Outcome]) {
    assert_eq!(outcomes.len(), CASES, "cases seen");
    let ids: BTreeSet<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids.len(), CASES, "case ids are unique");

    let mut violations = Vec::new();
    let mut name_only = BTreeSet::new();
    let mut webpki_accepts = BTreeSet::new();
    let mut refused_valid = BTreeSet::new();
    let mut stricter = BTreeSet::new();
    for (case, o) in cases.iter().zip(outcomes) {
        let id = o.id.as_str();
        // Never more than plain webpki, layer by layer.
        if o.chain.is_ok() && o.plain.is_err() {
            violations.push(format!(
                "{id}: chain layer accepts, webpki refuses {:?}",
                o.plain
            ));
        }
        for (layer, f) in [("edge", &o.edge), ("server", &o.server)] {
            if f.result.is_ok() && f.plain.is_err() {
                violations.push(format!("{id}: {layer} verifier accepts, webpki refuses"));
            }
        }
        // Slow pathological chains are the denial of service they test.
        assert!(
            o.chain_time < Duration::from_secs(10),
            "{id}: the chain layer took {:?}",
            o.chain_time
        );
        match (o.expected, &o.chain) {
            (Expected::Failure, Ok(())) => {
                let name_fails = matches!(o.name, Some(Err(_)));
                if o.plain.is_ok() && name_fails {
                    name_only.insert(id);
                } else {
                    webpki_accepts.insert(id);
                }
                if let Some(class) = forbidden_class(case, &o.plain) {
                    if !NAME_ONLY.contains(&id) {
                        violations.push(format!(
                            "{id}: accepted by the chain layer, a case of class {class}"
                        ));
                    }
                }
            }
            (Expected::Success, Err(_)) => {
                refused_valid.insert(id);
            }
            (Expected::Failure, Err(_)) if o.plain.is_ok() && !matches!(o.name, Some(Err(_))) => {
                stricter.insert(id);
            }
            _ => {}
        }
    }

    let listed = |groups: &[(&str, &[&str])]| -> BTreeSet<String> {
        groups
            .iter()
            .flat_map(|(_, ids)| ids.iter().map(|s| (*s).to_string()))
            .collect()
    };
    let owned =
        |s: &BTreeSet<&str>| -> BTreeSet<String> { s.iter().map(|s| (*s).to_string()).collect() };
    let name_only_listed: BTreeSet<String> = NAME_ONLY.iter().map(|s| (*s).to_string()).collect();
    // Every plain-webpki refusal among REFUSED_VALID: stricter by design only
    // where webpki is too.
    for id in &refused_valid {
        let o = outcomes.iter().find(|o| o.id == *id).expect("outcome");
        if o.plain.is_ok() {
            violations.push(format!(
                "{id}: valid per limbo and plain webpki, refused by lifeboat: {:?}",
                o.chain
            ));
        }
    }

    // The summary.
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "x509-limbo: {} cases ({} expected to pass)",
        outcomes.len(),
        count(&|o| o.expected == Expected::Success)
    );
    let _ = writeln!(
        s,
        "  plain webpki, chain only: {} accepted",
        count(&|o| o.plain.is_ok())
    );
    let _ = writeln!(
        s,
        "  chain layer:              {} accepted, {} refused ({} at load)",
        count(&|o| o.chain.is_ok()),
        count(&|o| o.chain.is_err()),
        count(&|o| matches!(o.chain, Err(ChainError::Load(_))))
    );
    let edge: Vec<&Result<(), String>> = outcomes.iter().map(|o| &o.edge.result).collect();
    let server: Vec<&Result<(), String>> = outcomes.iter().map(|o| &o.server.result).collect();
    for (layer, results) in [
        ("edge client verifier", edge),
        ("client/connector server verifier", server),
    ] {
        let mut words = std::collections::BTreeMap::<&str, usize>::new();
        for r in &results {
            *words.entry(word(r)).or_default() += 1;
        }
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        let _ = writeln!(s, "  {layer}: {accepted} accepted, refused: {words:?}");
    }
    let _ = writeln!(s, "disagreements with expected_result (chain layer):");
    let _ = writeln!(
        s,
        "  expected FAILURE, accepted -- name mismatch only (lifeboat checks no host names): {}",
        name_only.len()
    );
    for id in &name_only {
        let o = outcomes.iter().find(|o| o.id == *id).expect("outcome");
        let _ = writeln!(
            s,
            "    {id}: {}",
            o.name
                .as_ref()
                .and_then(|n| n.as_ref().err())
                .map_or("", String::as_str)
        );
    }
    let _ = writeln!(
        s,
        "  expected FAILURE, accepted -- plain webpki accepts too: {}",
        webpki_accepts.len()
    );
    for (why, ids) in WEBPKI_ACCEPTS {
        let _ = writeln!(s, "    {} case(s): {why}", ids.len());
    }
    let _ = writeln!(
        s,
        "  expected SUCCESS, refused -- plain webpki refuses too: {}",
        refused_valid.len()
    );
    for (why, ids) in REFUSED_VALID {
        let _ = writeln!(s, "    {} case(s): {why}", ids.len());
    }
    let _ = writeln!(
        s,
        "  (agreeing with limbo where plain webpki does not: {stricter:?})"
    );
    let mut classes = std::collections::BTreeMap::<&str, [usize; 3]>::new();
    for (case, o) in cases.iter().zip(outcomes) {
        if let Some(class) = forbidden_class(case, &o.plain) {
            let e = classes.entry(class).or_default();
            match (o.expected, o.chain.is_ok()) {
                (Expected::Failure, false) => e[0] += 1,
                (Expected::Failure, true) => e[1] += 1,
                (Expected::Success, _) => e[2] += 1,
            }
        }
    }
    let _ = writeln!(
        s,
        "classes never accepted when limbo expects a failure \
         ([refused, accepted as name-only, valid per limbo]): {classes:?}"
    );
    println!("{s}");

    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert_eq!(
        owned(&name_only),
        name_only_listed,
        "NAME_ONLY is exactly the name-only cases"
    );
    assert_eq!(
        owned(&webpki_accepts),
        listed(WEBPKI_ACCEPTS),
        "WEBPKI_ACCEPTS is exactly the rest accepted"
    );
    assert_eq!(
        owned(&refused_valid),
        listed(REFUSED_VALID),
        "REFUSED_VALID is exactly the valid cases refused"
    );
    assert_eq!(
        owned(&stricter),
        listed(STRICTER_THAN_WEBPKI),
        "STRICTER_THAN_WEBPKI"
    );
    // The exception is narrow: SERVER cases only, and the only case of a
    // forbidden class in it is the one documented above.
    for id in NAME_ONLY {
        let case = cases
            .iter()
            .find(|c| c.id == *id)
            .expect("listed case exists");
        assert_eq!(case.validation_kind, Kind::Server, "{id}");
    }
    let forbidden_name_only: Vec<&str> = NAME_ONLY
        .iter()
        .copied()
        .filter(|id| {
            let i = cases
                .iter()
                .position(|c| c.id == *id)
                .expect("listed case exists");
            forbidden_class(&cases[i], &outcomes[i].plain).is_some()
        })
        .collect();
    assert_eq!(forbidden_name_only, ["pathological::nc-dos-3"]);
    // The loop checked something: both verdicts occur in every layer.
    assert!(count(&|o| o.chain.is_ok()) >= 50 && count(&|o| o.chain.is_err()) >= 50);
}
