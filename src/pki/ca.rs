//! The CA of a `lifeboat pki` directory: its certificate and key, checked
//! to belong together, and the trust domain its SPIFFE URI SAN names.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context};
use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::trust::check_trust_domain;

/// The CA of a directory, ready to sign.
pub(super) struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) trust_domain: String,
    /// Raw DER subject name, to match the issuer of a CRL.
    pub(super) subject: Vec<u8>,
    pub(super) der: CertificateDer<'static>,
}

impl Ca {
    pub(super) fn load(dir: &Path) -> anyhow::Result<Self> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let pem = fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: bad private key", key_path.display()))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .with_context(|| format!("{}: no certificate", cert_path.display()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow!("{}: cannot parse certificate: {e}", cert_path.display()))?;
        ensure!(
            x509.public_key().raw == key.subject_public_key_info().as_slice(),
            "{} does not belong to {}",
            key_path.display(),
            cert_path.display()
        );
        let trust_domain = ca_trust_domain(&der).with_context(|| {
            format!(
                "{}: no spiffe://<trust domain> URI SAN",
                cert_path.display()
            )
        })?;
        let subject = x509.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .with_context(|| format!("{}: unusable CA certificate", cert_path.display()))?;
        Ok(Self {
            issuer,
            trust_domain,
            subject,
            der,
        })
    }
}

/// The trust domain named by the CA's `spiffe://<td>` URI SAN.
fn ca_trust_domain(der: &[u8]) -> anyhow::Result<String> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| anyhow!("bad certificate: {e}"))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| anyhow!("bad subjectAltName: {e}"))?
        .ok_or_else(|| anyhow!("no subjectAltName"))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(td) = uri.strip_prefix("spiffe://") {
                let td = td.trim_end_matches('/');
                check_trust_domain(td)?;
                return Ok(td.to_owned());
            }
        }
    }
    bail!("no spiffe:// URI SAN")
}
