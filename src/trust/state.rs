//! Loading the pinned CA, the CRL(s), our certificate and key from files into
//! one immutable [`State`]; `Trust` swaps whole states atomically.
//!
//! Everything a handshake needs is precomputed here (trust anchors, parsed
//! CRLs, the signing key) so verifiers only borrow. Nothing here does network
//! I/O or looks at anything but the configured files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use webpki::CertRevocationList;

use super::anchors::{anchors, read, read_pem_or_der, Anchors, Validity};
use super::spiffe::{spiffe_id_of, SpiffeId};
use super::{TlsFiles, TrustError};

/// One consistent generation of trust material.
pub(crate) struct State {
    pub(crate) roots: Vec<TrustAnchor<'static>>,
    /// Validity of each root, in the same order.
    pub(crate) root_validity: Vec<Validity>,
    pub(crate) crls: Vec<CertRevocationList<'static>>,
    pub(crate) certified: Arc<CertifiedKey>,
    /// Derived from our private key: the QUIC stateless-reset secret, the
    /// same in every process holding this key (see `Trust::stateless_reset_key`).
    pub(crate) reset_secret: [u8; 32],
    pub(crate) local_id: SpiffeId,
    pub(crate) local_not_after: i64,
    /// Earliest `not_after` among the pinned CA certificates.
    pub(crate) ca_not_after: i64,
    /// Earliest `nextUpdate` among the CRLs, unix seconds.
    pub(crate) crl_next_update: Option<i64>,
    /// Each CRL's (issuer, CRL number as big-endian bytes), to refuse a
    /// reload that goes back.
    pub(crate) crl_numbers: Vec<(Vec<u8>, Vec<u8>)>,
    /// mtime/len of each file as seen *before* it was read.
    pub(crate) stamps: Vec<Stamp>,
    /// Bumped on every successful reload; session tickets and cached client
    /// sessions from an older epoch are refused (see `verify.rs`).
    pub(crate) epoch: u64,
}

/// What `reload_if_changed` compares: `None` when the file could not be
/// stat'ed (a missing file is a change too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(Option<(SystemTime, u64)>);

pub(crate) fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    let mut paths: Vec<&Path> = vec![&files.ca, &files.cert, &files.key];
    if let Some(crl) = &files.crl {
        paths.push(crl);
    }
    paths
        .into_iter()
        .map(|p| {
            Stamp(
                fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len()))),
            )
        })
        .collect()
}

/// All certificates in a PEM file (non-certificate blocks are skipped), or
/// the file as one DER certificate.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs = read_pem_or_der(path)?;
    if certs.is_empty() {
        return Err(TrustError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

pub(crate) fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(x509.validity().not_after.timestamp())
}

/// Reads and cross-checks every file; `epoch` is stored as given.
pub(crate) fn load(
    files: &TlsFiles,
    trust_domain: &str,
    provider: &CryptoProvider,
    epoch: u64,
) -> Result<State, TrustError> {
    // Stat before reading: a write racing the read shows up as a change on
    // the next `reload_if_changed`, never as a missed one.
    let stamps = stamps(files);

    let pinned = anchors(&read_certs(&files.ca)?, &files.ca)?;
    let (crls, crl_next_update, crl_numbers) = match &files.crl {
        Some(path) => super::crl::load(path, &pinned, provider)?,
        None => (Vec::new(), None, Vec::new()),
    };
    let Anchors {
        roots,
        validity: root_validity,
        not_after: ca_not_after,
        ..
    } = pinned;

    let chain = read_certs(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|source| TrustError::Pem {
            path: files.key.clone(),
            source,
        })?;
    let reset_secret = derive_reset_secret(key.secret_der());
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TrustError::BadKey {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|source| TrustError::BadKey {
            path: files.key.clone(),
            source,
        })?;
    let leaf = certified
        .end_entity_cert()
        .map_err(|source| TrustError::BadKey {
            path: files.cert.clone(),
            source,
        })?;

    let local_id = spiffe_id_of(leaf).map_err(|source| TrustError::Identity {
        path: files.cert.clone(),
        source,
    })?;
    local_id
        .check(trust_domain, &[local_id.role])
        .map_err(|source| TrustError::Identity {
            path: files.cert.clone(),
            source,
        })?;
    check_own_chain(leaf, &certified.cert[1..], &roots, provider, &files.cert)?;
    let local_not_after = not_after(leaf).ok_or_else(|| TrustError::NotTrusted {
        path: files.cert.clone(),
        source: webpki::Error::BadDer,
    })?;

    Ok(State {
        roots,
        root_validity,
        crls,
        certified: Arc::new(certified),
        reset_secret,
        local_id,
        local_not_after,
        ca_not_after,
        crl_next_update,
        crl_numbers,
        stamps,
        epoch,
    })
}

/// Our own certificate must chain to the pinned CA: catches a cert/CA mix-up
/// at load instead of at every peer's handshake. Validity dates are not held
/// against it (an expired local certificate is exported as a metric and
/// refused by peers, but refusing to start or to reload would not help).
fn check_own_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
    roots: &[TrustAnchor<'static>],
    provider: &CryptoProvider,
    path: &Path,
) -> Result<(), TrustError> {
    let algs = provider.signature_verification_algorithms.all;
    match chains_to(leaf, intermediates, roots, algs) {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(path = %path.display(), "local certificate is outside its validity period");
            Ok(())
        }
        Err(source) => Err(TrustError::NotTrusted {
            path: PathBuf::from(path),
            source,
        }),
    }
}

/// Accepts any extended key usage: for "who signed this", not "may it do that".
pub(crate) struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// Whether `leaf` chains to `roots` by signature: `Ok(true)` if valid now,
/// `Ok(false)` if the chain is sound but `leaf` (or an intermediate) is
/// outside its validity period now. Time is the only thing forgiven: the
/// chain is re-checked at a moment inside the leaf's own window (trust anchors
/// carry no validity of their own). No revocation, any EKU.
pub(crate) fn chains_to(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[TrustAnchor<'_>],
    algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
) -> Result<bool, webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    let verify_at = |time| {
        ee.verify_for_usage(algs, roots, intermediates, time, AnyEku, None, None)
            .map(drop)
    };
    match verify_at(UnixTime::now()) {
        Ok(()) => Ok(true),
        Err(webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }) => {
            let (_, x509) =
                x509_parser::parse_x509_certificate(leaf).map_err(|_| webpki::Error::BadDer)?;
            let validity = x509.validity();
            let mid = validity.not_before.timestamp() / 2 + validity.not_after.timestamp() / 2;
            let mid = std::time::Duration::from_secs(u64::try_from(mid).unwrap_or(0));
            verify_at(UnixTime::since_unix_epoch(mid)).map(|()| false)
        }
        Err(e) => Err(e),
    }
}

/// HMAC-SHA256 of a fixed label under the private key: secret (nobody
/// without the key can forge a reset) and stable across restarts.
fn derive_reset_secret(key_der: &[u8]) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_der);
    let tag = ring::hmac::sign(&k, b"lifeboat QUIC stateless reset key v1");
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}
