//! Offline CA tooling behind `lifeboat pki`: `init`, `issue`, `revoke`.
//!
//! Owns the on-disk layout of a CA directory: `ca.pem`, `ca.key` (0600),
//! `ca.crl`, and `<name>.pem` / `<name>.key` (0600) per issued certificate.
//! Every certificate carries exactly one SPIFFE URI SAN (see `trust`); the CA
//! carries `spiffe://<trust_domain>` so `issue` can read the trust domain
//! back. Keys are ECDSA P-256. Files are written to a temporary file in the
//! same directory and renamed, so a crash never leaves half a key or CRL.
//! Never talks to the network.

mod ca;
mod crl;
mod files;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::num_bigint::BigUint;

use crate::trust::{check_trust_domain, Role, SpiffeId};
use ca::Ca;
pub use crl::revoke;
use crl::write_crl;
use files::{write_file, Clobber, Secret};

/// Certificates start this long before "now", to absorb clock skew between
/// the machine that issues and the machines that verify.
const BACKDATE: Duration = Duration::minutes(5);
/// `nextUpdate` of every CRL written. lifeboat keeps honouring a CRL past
/// its nextUpdate (see `trust::verify`), so this is advisory for other tools.
const CRL_VALIDITY: Duration = Duration::days(30);

/// What `lifeboat pki issue` is asked for.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// The CA directory (holds `ca.pem`, `ca.key`; receives `<name>.pem/.key`).
    pub dir: PathBuf,
    pub role: Role,
    /// Edge name, connector name, or client user name: 1-255 of
    /// `[A-Za-z0-9._-]`, not `.`, `..` or `ca`.
    pub name: String,
    /// Connector group: required for a connector, refused otherwise.
    pub group: Option<String>,
    /// Extra DNS SANs (an edge used as an HTTPS proxy by curl needs these).
    pub dns: Vec<String>,
    /// Extra IP SANs.
    pub ips: Vec<IpAddr>,
    /// Validity in days from now (ignored for an end overridden below).
    pub days: u32,
    /// Test hook: start of validity instead of now minus 5 minutes.
    pub not_before: Option<OffsetDateTime>,
    /// Test hook: end of validity instead of now plus `days`.
    pub not_after: Option<OffsetDateTime>,
}

impl IssueOptions {
    /// Options for a 365-day certificate with no extra SANs.
    pub fn new(dir: impl Into<PathBuf>, role: Role, name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            role,
            name: name.into(),
            group: None,
            dns: Vec::new(),
            ips: Vec::new(),
            days: 365,
            not_before: None,
            not_after: None,
        }
    }
}

/// Creates a CA in `dir`: `ca.pem`, `ca.key` (0600) and an empty `ca.crl`, so
/// configs can name the CRL from day one. Refuses to overwrite a `ca.key`.
pub fn init(dir: &Path, trust_domain: &str, days: u32) -> anyhow::Result<()> {
    check_trust_domain(trust_domain).context("--trust-domain")?;
    ensure!(days > 0, "--days must be at least 1");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a CA key",
            key_path.display()
        );
    }

    let key = KeyPair::generate().context("generating the CA key")?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("lifeboat CA {trust_domain}"));
    // A random OU keeps two CAs of one trust domain (a re-init, a test
    // deployment) apart by name, so a stray certificate or CRL of the other
    // reads as "unknown CA" and not as a bad signature.
    let instance: [u8; 8] = rand::random();
    let instance: String = instance.iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("lifeboat CA {instance}"),
    );
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
        "spiffe://{trust_domain}"
    ))?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(days.into());
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;

    // The key first, without clobbering: of two racing `init`s one fails here.
    write_file(
        &key_path,
        key.serialize_pem().as_bytes(),
        Secret::Yes,
        Clobber::No,
    )?;
    write_file(
        &dir.join("ca.pem"),
        cert.pem().as_bytes(),
        Secret::No,
        Clobber::Yes,
    )?;
    let issuer = Issuer::new(params, key);
    write_crl(dir, &issuer, Vec::new(), &BigUint::from(1u8))
}

/// Issues `<name>.pem` (the leaf certificate alone) and `<name>.key` (0600)
/// in `opts.dir`, signed by the CA there; returns their paths. Re-issuing a
/// name replaces both files (renewal).
pub fn issue(opts: &IssueOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
    check_issue_options(opts)?;
    let ca = Ca::load(&opts.dir)?;
    let id = SpiffeId {
        trust_domain: ca.trust_domain.clone(),
        role: opts.role,
        name: opts.name.clone(),
        group: opts.group.clone(),
    };
    // The grammar's own check, so `issue` never writes an id `trust` refuses.
    ensure!(
        SpiffeId::parse(&id.uri()).as_ref() == Ok(&id),
        "{id} is not a valid SPIFFE id"
    );

    let params = leaf_params(opts, &id)?;
    let key = KeyPair::generate().context("generating the key")?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .with_context(|| format!("signing {id}"))?;
    let cert_path = opts.dir.join(format!("{}.pem", opts.name));
    let key_path = opts.dir.join(format!("{}.key", opts.name));
    write_file(
        &key_path,
        key.serialize_pem().as_bytes(),
        Secret::Yes,
        Clobber::Yes,
    )?;
    write_file(&cert_path, cert.pem().as_bytes(), Secret::No, Clobber::Yes)?;
    Ok((cert_path, key_path))
}

/// The flags of `issue` that need no CA: role and group agree, names are
/// path-safe SPIFFE segments, the validity is not empty.
fn check_issue_options(opts: &IssueOptions) -> anyhow::Result<()> {
    match (opts.role, &opts.group) {
        (Role::Connector, None) => bail!("--group is required for a connector"),
        (Role::Edge | Role::Client, Some(_)) => {
            bail!("--group is only for connectors, not for a {}", opts.role)
        }
        _ => {}
    }
    ensure!(
        crate::trust::valid_segment(&opts.name),
        "invalid --name {:?}: use 1-255 of A-Z a-z 0-9 . _ - (not . or ..)",
        opts.name
    );
    ensure!(
        opts.name != "ca",
        "--name ca is reserved for the CA's own files"
    );
    if let Some(group) = &opts.group {
        ensure!(
            crate::trust::valid_segment(group),
            "invalid --group {group:?}: use 1-255 of A-Z a-z 0-9 . _ - (not . or ..)"
        );
    }
    ensure!(
        opts.days > 0 || opts.not_after.is_some(),
        "--days must be at least 1"
    );
    Ok(())
}

/// The leaf certificate's parameters: SANs (the SPIFFE id, then `--dns`
/// and `--ip`), key usages for the role, validity.
fn leaf_params(opts: &IssueOptions, id: &SpiffeId) -> anyhow::Result<CertificateParams> {
    let mut sans = vec![SanType::URI(Ia5String::try_from(id.uri())?)];
    for dns in &opts.dns {
        rustls_pki_types::DnsName::try_from(dns.as_str())
            .map_err(|_| anyhow!("invalid --dns {dns:?}"))?;
        sans.push(SanType::DnsName(Ia5String::try_from(dns.as_str())?));
    }
    sans.extend(opts.ips.iter().copied().map(SanType::IpAddress));

    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&opts.name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match opts.role {
        Role::Edge => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Connector | Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = opts.not_before.unwrap_or(now - BACKDATE);
    params.not_after = opts
        .not_after
        .unwrap_or_else(|| now + Duration::days(opts.days.into()));
    ensure!(
        params.not_after > params.not_before,
        "the certificate would end before it starts"
    );
    Ok(params)
}

/// For `lifeboat pki issue` without `--force`: an error naming the file if
/// `dir/<name>.pem` or `dir/<name>.key` exists ([`issue`] itself replaces
/// them, which is how a renewal is done).
pub fn refuse_overwrite(dir: &Path, name: &str) -> anyhow::Result<()> {
    for ext in ["pem", "key"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.exists() {
            bail!(
                "{} exists: pass --force to replace the certificate and key (renewal)",
                p.display()
            );
        }
    }
    Ok(())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// 16 random bytes, top bit clear (positive) and second bit set (so the DER
/// INTEGER is exactly 16 bytes, never shortened).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

mod flawed;
#[doc(hidden)]
pub use flawed::write_flawed_crl;

#[cfg(test)]
mod tests;
