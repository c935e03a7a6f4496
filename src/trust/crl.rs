//! Loading the CRL file(s): parse, and prove each CRL was issued *and
//! signed* by a pinned CA before it is used.
//!
//! webpki checks a CRL's signature only when a handshake consults it, and
//! ignores a CRL whose issuer matches no certificate. Either mistake in the
//! file (a CRL of another deployment, a corrupted one) would then show up as
//! every handshake failing, or as revocation silently not working. Checking
//! at load turns both into a reload error naming the file, and the previous
//! state stays in force.
//!
//! The same goes for CRL hygiene (RFC 5280 5.2.3, 4.2.1.3): a CRL must carry
//! a (non-critical) CRL number, which is what lets a reload refuse an older
//! CRL, and the CA that signed it must be allowed to sign CRLs (cRLSign, when
//! its certificate has a key usage extension at all). webpki checks neither.

use std::path::Path;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateRevocationListDer, TrustAnchor};
use webpki::{CertRevocationList, OwnedCertRevocationList};

use super::anchors::{read_pem_or_der, Anchors};
use super::{CrlFlaw, TrustError};

/// The CRLs in `path` (PEM blocks, or one DER CRL), and the earliest
/// nextUpdate among them (unix seconds).
pub(crate) fn load(
    path: &Path,
    anchors: &Anchors,
    provider: &CryptoProvider,
) -> Result<Loaded, TrustError> {
    parse(&read_crls(path)?, path, anchors, provider)
}

/// The CRLs, the earliest nextUpdate, and each CRL's (issuer, number).
pub(crate) type Loaded = (
    Vec<CertRevocationList<'static>>,
    Option<i64>,
    Vec<(Vec<u8>, Vec<u8>)>,
);

/// The first CRL of `new` whose number is below the one `old` had for the
/// same issuer, as (old, new) in decimal.
pub(crate) fn rolled_back(
    old: &[(Vec<u8>, Vec<u8>)],
    new: &[(Vec<u8>, Vec<u8>)],
) -> Option<(String, String)> {
    use x509_parser::num_bigint::BigUint;
    new.iter().find_map(|(issuer, n)| {
        let (_, o) = old.iter().find(|(i, _)| i == issuer)?;
        let (o, n) = (BigUint::from_bytes_be(o), BigUint::from_bytes_be(n));
        (n < o).then(|| (o.to_string(), n.to_string()))
    })
}

/// The CRLs read from `path` (named in errors), each checked to be issued
/// and signed by one of the pinned `anchors`, to carry a non-critical CRL
/// number, and to be signed by a CA that may sign CRLs.
pub(crate) fn parse(
    ders: &[CertificateRevocationListDer<'_>],
    path: &Path,
    anchors: &Anchors,
    provider: &CryptoProvider,
) -> Result<Loaded, TrustError> {
    let bad = |source| TrustError::BadCrl {
        path: path.to_owned(),
        source,
    };
    let flawed = |flaw| TrustError::UnsoundCrl {
        path: path.to_owned(),
        flaw,
    };
    let mut crls = Vec::new();
    let mut next_update: Option<i64> = None;
    let mut numbers = Vec::new();
    for der in ders {
        let crl = OwnedCertRevocationList::from_der(der).map_err(bad)?;
        let (_, parsed) =
            x509_parser::parse_x509_crl(der).map_err(|_| bad(webpki::Error::BadDer))?;
        let issuer = parsed.issuer().as_raw();
        // Whether each pinned CA that signed it may sign CRLs.
        let signers: Vec<bool> = anchors
            .subjects
            .iter()
            .zip(&anchors.roots)
            .zip(&anchors.crl_sign)
            .filter(|((subject, _), _)| subject.as_slice() == issuer)
            .filter(|((_, anchor), _)| signed_by(der, anchor, provider))
            .map(|(_, may_sign)| *may_sign)
            .collect();
        if signers.is_empty() {
            return Err(TrustError::ForeignCrl {
                path: path.to_owned(),
            });
        }
        if !signers.contains(&true) {
            return Err(flawed(CrlFlaw::IssuerWithoutCrlSign));
        }
        let number = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_CRL_NUMBER);
        match (number, parsed.crl_number()) {
            (Some(ext), Some(_)) if ext.critical => return Err(flawed(CrlFlaw::CriticalNumber)),
            (Some(_), Some(n)) => numbers.push((issuer.to_vec(), n.to_bytes_be())),
            _ => return Err(flawed(CrlFlaw::NoNumber)),
        }
        if let Some(next) = parsed.next_update() {
            let next = next.timestamp();
            next_update = Some(next_update.map_or(next, |n| n.min(next)));
        }
        crls.push(CertRevocationList::from(crl));
    }
    Ok((crls, next_update, numbers))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TrustError> {
    let crls = read_pem_or_der(path)?;
    if crls.is_empty() {
        return Err(TrustError::NoCrl {
            path: path.to_owned(),
        });
    }
    Ok(crls)
}

/// Whether `crl` (DER CertificateList) carries a valid signature by the key
/// of `anchor`, with one of the provider's algorithms.
fn signed_by(crl: &[u8], anchor: &TrustAnchor<'_>, provider: &CryptoProvider) -> bool {
    let check = || -> Option<bool> {
        // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }
        let (list, _) = expect(SEQUENCE, crl)?;
        let (tbs_len, rest) = tlv_len(SEQUENCE, list)?;
        let tbs = list.get(..tbs_len)?;
        let (sig_alg, rest) = expect(SEQUENCE, rest)?;
        let (sig_bits, _) = expect(BIT_STRING, rest)?;
        let signature = unused_bits_zero(sig_bits)?;
        // The anchor keeps the *contents* of SubjectPublicKeyInfo.
        let (key_alg, rest) = expect(SEQUENCE, anchor.subject_public_key_info.as_ref())?;
        let (key_bits, _) = expect(BIT_STRING, rest)?;
        let key = unused_bits_zero(key_bits)?;
        Some(
            provider
                .signature_verification_algorithms
                .all
                .iter()
                .filter(|alg| {
                    alg.public_key_alg_id().as_ref() == key_alg
                        && alg.signature_alg_id().as_ref() == sig_alg
                })
                .any(|alg| alg.verify_signature(key, tbs, signature).is_ok()),
        )
    };
    check().unwrap_or(false)
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;

/// Splits one DER element with tag `tag` off `input`: (contents, rest).
fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (total, rest) = tlv_len(tag, input)?;
    let element = input.get(..total)?;
    let header = element.len().checked_sub(content_len(element)?)?;
    Some((element.get(header..)?, rest))
}

/// Total length (header + contents) of the DER element at the start of
/// `input` if its tag is `tag`, and what follows it.
pub(crate) fn tlv_len(tag: u8, input: &[u8]) -> Option<(usize, &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let contents = content_len(input)?;
    let header = header_len(input)?;
    let total = header.checked_add(contents)?;
    Some((total, input.get(total..)?))
}

fn header_len(input: &[u8]) -> Option<usize> {
    let first = *input.get(1)?;
    Some(if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7f)
    })
}

/// Definite-length DER only; at most 4 length bytes.
fn content_len(input: &[u8]) -> Option<usize> {
    let first = *input.get(1)?;
    if first < 0x80 {
        return Some(usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    input.get(2..2 + n)?.iter().try_fold(0usize, |acc, b| {
        acc.checked_mul(256)?.checked_add(usize::from(*b))
    })
}

/// A BIT STRING's bytes when it is byte-aligned (signatures and keys are).
fn unused_bits_zero(bits: &[u8]) -> Option<&[u8]> {
    match bits.split_first()? {
        (0, rest) => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(
            expect(0x30, &[0x30, 0x01, 0xaa, 0xbb]),
            Some((&[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend(std::iter::repeat_n(7u8, 0x80));
        assert_eq!(
            expect(0x30, &long).map(|(c, r)| (c.len(), r.len())),
            Some((0x80, 0))
        );
        // Truncated, wrong tag, indefinite length.
        assert_eq!(expect(0x30, &[0x30, 0x05, 0x00]), None);
        assert_eq!(expect(0x30, &[0x31, 0x00]), None);
        assert_eq!(expect(0x30, &[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(expect(0x30, &[0x30]), None);
    }
}
