//! Test hook: CRLs that break RFC 5280 CRL hygiene yet are signed by the
//! real CA of a `lifeboat pki` directory, so tests can prove every role
//! refuses them (see `crate::trust::CrlFlaw`). lifeboat itself never writes
//! such a CRL; `revoke` always writes a non-critical CRL number.

use std::path::Path;

use anyhow::{bail, Context};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, SerialNumber, SigningKey};
use time::OffsetDateTime;

use super::ca::Ca;
use super::crl::read_crl;
use super::files::{write_file, Clobber, Secret};
use super::CRL_VALIDITY;
use crate::trust::crl::tlv_len;
use crate::trust::CrlFlaw;

/// Rewrites `dir/ca.crl`: the same entries, the next CRL number, signed by
/// the CA of `dir`, but with `flaw` (no CRL number, or a critical one).
/// [`CrlFlaw::IssuerWithoutCrlSign`] needs another CA and is refused here.
#[doc(hidden)]
pub fn write_flawed_crl(dir: &Path, flaw: CrlFlaw) -> anyhow::Result<()> {
    let ca = Ca::load(dir)?;
    let path = dir.join("ca.crl");
    let (revoked_certs, number) = read_crl(&path, &ca.subject)?;
    let number = SerialNumber::from((number + 1u8).to_bytes_be());
    let now = OffsetDateTime::now_utc();
    let sound = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: number.clone(),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .context("signing the CRL")?;
    // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signature }
    let der = sound.der().as_ref();
    let list = contents(der).context("CRL DER")?;
    let (tbs_len, rest) = tlv_len(0x30, list).context("tbsCertList")?;
    let (alg_len, _) = tlv_len(0x30, rest).context("signatureAlgorithm")?;
    let sig_alg = &rest[..alg_len];
    // tbsCertList's elements, then its crlExtensions ([0] { SEQUENCE OF
    // Extension }, the last) without the CRL number (2.5.29.20).
    let mut elements = Vec::new();
    let mut extensions = Vec::new();
    let mut tbs = contents(&list[..tbs_len]).context("tbsCertList contents")?;
    while let Some(&tag) = tbs.first() {
        let (len, rest) = tlv_len(tag, tbs).context("tbsCertList element")?;
        if tag == 0xa0 {
            let inner = contents(&tbs[..len]).context("crlExtensions")?;
            let mut exts = contents(inner).context("Extensions")?;
            while !exts.is_empty() {
                let (ext_len, more) = tlv_len(0x30, exts).context("Extension")?;
                let ext = &exts[..ext_len];
                if !contents(ext).is_some_and(|c| c.starts_with(CRL_NUMBER_OID)) {
                    extensions.extend_from_slice(ext);
                }
                exts = more;
            }
        } else {
            elements.extend_from_slice(&tbs[..len]);
        }
        tbs = rest;
    }
    match flaw {
        CrlFlaw::NoNumber => {}
        CrlFlaw::CriticalNumber => {
            // Extension { 2.5.29.20, critical TRUE, OCTET STRING { INTEGER } }
            let mut ext = CRL_NUMBER_OID.to_vec();
            ext.extend_from_slice(&[0x01, 0x01, 0xff]);
            let int = der_tlv(0x02, &positive(number.as_ref()));
            ext.extend(der_tlv(0x04, &int));
            extensions.extend(der_tlv(0x30, &ext));
        }
        CrlFlaw::IssuerWithoutCrlSign => {
            bail!("a CRL of a CA without cRLSign needs such a CA; build one with rcgen")
        }
    }
    elements.extend(der_tlv(0xa0, &der_tlv(0x30, &extensions)));
    let tbs = der_tlv(0x30, &elements);
    let signature = ca.issuer.key().sign(&tbs).context("signing the CRL")?;
    let mut bits = vec![0u8];
    bits.extend(signature);
    let mut body = tbs;
    body.extend_from_slice(sig_alg);
    body.extend(der_tlv(0x03, &bits));
    let crl = der_tlv(0x30, &body);
    write_file(&path, pem_crl(&crl).as_bytes(), Secret::No, Clobber::Yes)
}

/// OBJECT IDENTIFIER 2.5.29.20 (cRLNumber), DER.
const CRL_NUMBER_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x14];

/// The contents of the DER element that is all of `der`.
fn contents(der: &[u8]) -> Option<&[u8]> {
    let (total, _) = tlv_len(*der.first()?, der)?;
    let len_bytes = match *der.get(1)? {
        n if n < 0x80 => 0,
        n => usize::from(n & 0x7f),
    };
    der.get(2 + len_bytes..total)
}

fn der_tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// A big-endian unsigned number as DER INTEGER contents.
fn positive(n: &[u8]) -> Vec<u8> {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => &[0],
    };
    let mut out = Vec::with_capacity(n.len() + 1);
    if n.first().is_some_and(|b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(n);
    out
}

fn pem_crl(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN X509 CRL-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END X509 CRL-----\n");
    pem
}
