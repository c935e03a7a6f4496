//! The pinned CA certificates as trust anchors, and the file reading every
//! loader shares: the bottom of `trust/`, used by the chain check
//! (`chain.rs`), the CRL loader (`crl.rs`) and the state loader (`state.rs`),
//! and using none of them.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use super::TrustError;

/// A pinned root's validity period, unix seconds, both ends inclusive (as
/// webpki treats certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Validity {
    pub(crate) fn of(cert: &[u8]) -> Option<Self> {
        let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
        let v = x509.validity();
        Some(Self {
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        })
    }

    /// `Ok` if `time` is inside the period, else webpki's error for it.
    pub(crate) fn check(self, time: UnixTime) -> Result<(), webpki::Error> {
        let secs = i64::try_from(time.as_secs()).unwrap_or(i64::MAX);
        let at = |s: i64| UnixTime::since_unix_epoch(Duration::from_secs(s.max(0).unsigned_abs()));
        if secs < self.not_before {
            Err(webpki::Error::CertNotValidYet {
                time,
                not_before: at(self.not_before),
            })
        } else if secs > self.not_after {
            Err(webpki::Error::CertExpired {
                time,
                not_after: at(self.not_after),
            })
        } else {
            Ok(())
        }
    }
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every `T` block of a PEM file (other blocks are skipped), or the whole
/// file as one DER item; none for an empty file.
pub(crate) fn read_pem_or_der<T>(path: &Path) -> Result<Vec<T>, TrustError>
where
    T: PemObject + From<Vec<u8>>,
{
    let bytes = read(path)?;
    if is_pem(&bytes) {
        T::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TrustError::Pem {
                path: path.to_owned(),
                source,
            })
    } else if bytes.is_empty() {
        Ok(Vec::new())
    } else {
        Ok(vec![T::from(bytes)])
    }
}

pub(crate) fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .windows(b"-----BEGIN".len())
        .any(|w| w == b"-----BEGIN")
}

fn raw_subject(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(x509.subject().as_raw().to_vec())
}

/// Whether `cert` may sign CRLs: no key usage extension, or one with
/// cRLSign. `None` if it does not parse.
pub(crate) fn may_sign_crls(cert: &[u8]) -> Option<bool> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let ku = x509.key_usage().ok()?;
    Some(ku.is_none_or(|ku| ku.value.crl_sign()))
}

/// The pinned CA certificates as trust anchors.
pub(crate) struct Anchors {
    pub(crate) roots: Vec<TrustAnchor<'static>>,
    /// Raw subject of each root, in the same order (CRL issuers match these).
    pub(crate) subjects: Vec<Vec<u8>>,
    /// Validity of each root, in the same order.
    pub(crate) validity: Vec<Validity>,
    /// Whether each root may sign CRLs, in the same order: it has no key
    /// usage extension, or one with cRLSign (RFC 5280 6.3.3 (f)).
    pub(crate) crl_sign: Vec<bool>,
    /// Earliest `not_after` among them, unix seconds.
    pub(crate) not_after: i64,
}

/// `[tls] ca` (read from `path`) as trust anchors: every certificate must be
/// one, and parse (its subject and expiry are used), or the file is refused.
pub(crate) fn anchors(ca_certs: &[CertificateDer<'_>], path: &Path) -> Result<Anchors, TrustError> {
    if ca_certs.is_empty() {
        return Err(TrustError::NoCertificate {
            path: path.to_owned(),
        });
    }
    let mut out = Anchors {
        roots: Vec::with_capacity(ca_certs.len()),
        subjects: Vec::with_capacity(ca_certs.len()),
        validity: Vec::with_capacity(ca_certs.len()),
        crl_sign: Vec::with_capacity(ca_certs.len()),
        not_after: i64::MAX,
    };
    for der in ca_certs {
        let anchor = webpki::anchor_from_trusted_cert(der).map_err(|source| TrustError::BadCa {
            path: path.to_owned(),
            source,
        })?;
        out.roots.push(anchor.to_owned());
        let bad = || TrustError::BadCa {
            path: path.to_owned(),
            source: webpki::Error::BadDer,
        };
        out.subjects.push(raw_subject(der).ok_or_else(bad)?);
        out.crl_sign.push(may_sign_crls(der).ok_or_else(bad)?);
        let validity = Validity::of(der).ok_or_else(bad)?;
        out.validity.push(validity);
        out.not_after = out.not_after.min(validity.not_after);
    }
    Ok(out)
}
