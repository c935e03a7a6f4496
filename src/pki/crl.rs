//! The CA's revocation list: `revoke` merges an entry into `ca.crl`, keeping
//! what is there, with the next CRL number.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, ensure, Context};
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::num_bigint::BigUint;

use super::ca::Ca;
use super::files::{write_file, Clobber, Secret};
use super::CRL_VALIDITY;

/// Adds the certificate in `cert` to `dir/ca.crl`, keeping every entry already
/// there, with the CRL number incremented and a fresh 30-day nextUpdate.
/// Revoking an already revoked certificate just re-signs the CRL.
pub fn revoke(dir: &Path, cert: &Path) -> anyhow::Result<()> {
    let ca = Ca::load(dir)?;
    ensure!(
        crate::trust::may_sign_crls(&ca.der) == Some(true),
        "{}: the CA's key usage lacks cRLSign, so edges, connectors and clients would refuse its CRL; issue a new CA with `lifeboat pki init`",
        dir.join("ca.pem").display()
    );
    let der = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .next()
        .ok_or_else(|| anyhow!("{}: no certificate found", cert.display()))?
        .with_context(|| format!("reading {}", cert.display()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("{}: cannot parse certificate: {e}", cert.display()))?;
    ensure!(
        !x509.is_ca(),
        "{} is a CA certificate; revoking it has no effect (replace the CA instead)",
        cert.display()
    );
    ensure!(
        crate::trust::issued_by(&der, &ca.der),
        "{} was not issued by the CA in {}",
        cert.display(),
        dir.display()
    );
    let serial = x509.serial.to_bytes_be();

    let crl_path = dir.join("ca.crl");
    let (mut revoked, number) = if crl_path.exists() {
        read_crl(&crl_path, &ca.subject)?
    } else {
        (Vec::new(), BigUint::from(0u8))
    };
    if !revoked.iter().any(|r| r.serial_number.as_ref() == serial) {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from(serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    write_crl(dir, &ca.issuer, revoked, &(number + 1u8))
}

/// Entries and CRL number of an existing CRL (PEM or DER) of this CA.
pub(super) fn read_crl(
    path: &Path,
    ca_subject: &[u8],
) -> anyhow::Result<(Vec<RevokedCertParams>, BigUint)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = if bytes.starts_with(b"-----BEGIN") {
        rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&bytes)
            .with_context(|| format!("{}: bad PEM", path.display()))?
            .as_ref()
            .to_vec()
    } else {
        bytes
    };
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| anyhow!("{}: cannot parse CRL: {e}", path.display()))?;
    ensure!(
        crl.issuer().as_raw() == ca_subject,
        "{} is not a CRL of this CA; refusing to merge it",
        path.display()
    );
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from(r.user_certificate.to_bytes_be()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: r.reason_code().and_then(|(_, code)| reason(code.0)),
            invalidity_date: r.invalidity_date().map(|(_, t)| t.to_datetime()),
        })
        .collect();
    let number = crl.crl_number().cloned().unwrap_or_default();
    Ok((entries, number))
}

fn reason(code: u8) -> Option<RevocationReason> {
    use RevocationReason as R;
    Some(match code {
        0 => R::Unspecified,
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        8 => R::RemoveFromCrl,
        9 => R::PrivilegeWithdrawn,
        10 => R::AaCompromise,
        _ => return None,
    })
}

pub(super) fn write_crl(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    revoked_certs: Vec<RevokedCertParams>,
    number: &BigUint,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from(number.to_bytes_be()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer).context("signing the CRL")?;
    let pem = crl.pem().context("encoding the CRL")?;
    write_file(
        &dir.join("ca.crl"),
        pem.as_bytes(),
        Secret::No,
        Clobber::Yes,
    )
}
