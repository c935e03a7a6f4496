//! The files a role config names, loaded as the role will load them:
//! `[tls]` CA, certificate, key and CRL (through [`Trust::load`], the very
//! code the role runs), and `[dr] signing_key`. `lifeboat check` and every
//! role at start-up call [`check_files`], so what stops a role is found by
//! `check` (the units' `ExecStartPre`) and the role itself exits 2 with the
//! same [`ConfigError`], naming file, key and line.
//!
//! Refused: a missing or unreadable file, a key that does not match its
//! certificate, a certificate of another role or trust domain, a private
//! key that others may read (or the group, unless root owns the file, as
//! for a Kubernetes secret volume with `fsGroup`: PostgreSQL's rule). With
//! [`Validity::Enforce`] (`check`), a certificate outside its validity
//! period too; a running role only warns (refusing to start would not
//! renew it). Within 30 days of its end: a warning.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::validate::at;
use super::{ConfigError, DrSection, TlsSection};
use crate::trust::{Role, Trust, TrustError};

/// A certificate ending sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Whether a certificate outside its validity period is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// `lifeboat check`: an error.
    Enforce,
    /// A role starting: a warning.
    Warn,
}

/// What a role config's files are, for a role config's keys.
pub struct RoleFiles<'a> {
    pub role: Role,
    pub trust_domain: &'a str,
    pub tls: &'a TlsSection,
    pub dr: &'a DrSection,
}

/// Loads every file `files` names; `Ok` holds the warnings (one line each,
/// naming file and key), in the order found.
pub fn check_files(
    files: &RoleFiles<'_>,
    config: &Path,
    text: &str,
    validity: Validity,
) -> Result<Vec<String>, ConfigError> {
    let err = |key: &str, message: String| at(config, text, key.to_owned(), message);
    let tls = files.tls;
    let mut paths = vec![
        ("tls.ca", &tls.ca),
        ("tls.cert", &tls.cert),
        ("tls.key", &tls.key),
    ];
    if let Some(crl) = &tls.crl {
        paths.push(("tls.crl", crl));
    }
    if let Some(k) = &files.dr.signing_key {
        paths.push(("dr.signing_key", k));
    }
    for (key, path) in &paths {
        if let Err(e) = std::fs::File::open(path).and_then(|f| f.metadata()) {
            return Err(err(key, format!("{}: cannot read: {e}", path.display())));
        }
    }
    key_mode(&tls.key).map_err(|m| err("tls.key", m))?;

    let trust = Trust::load(tls.files(), files.trust_domain).map_err(|e| match e {
        TrustError::BadKey {
            source: rustls::Error::InconsistentKeys(_),
            ..
        } => err(
            "tls.key",
            format!(
                "{}: private key does not match the certificate {}",
                tls.key.display(),
                tls.cert.display()
            ),
        ),
        e => err(trust_error_key(&e, &paths), e.to_string()),
    })?;
    let id = trust.local_id();
    if id.role != files.role {
        return Err(err(
            "tls.cert",
            format!(
                "{}: is a {} certificate ({id}); {a} needs {a} certificate \
                 (lifeboat pki issue --role {})",
                tls.cert.display(),
                id.role,
                files.role,
                a = match files.role {
                    Role::Edge => "an edge",
                    Role::Connector => "a connector",
                    Role::Client => "a client",
                },
            ),
        ));
    }
    if let Some(k) = &files.dr.signing_key {
        let text = std::fs::read_to_string(k).map_err(|e| {
            err(
                "dr.signing_key",
                format!("{}: cannot read: {e}", k.display()),
            )
        })?;
        crate::dr_mode::key::parse_public_key(&text)
            .map_err(|e| err("dr.signing_key", format!("{}: {e}", k.display())))?;
    }

    let mut warnings = Vec::new();
    let now = SystemTime::now();
    for (key, path, what) in [
        ("tls.cert", &tls.cert, "certificate"),
        ("tls.ca", &tls.ca, "CA certificate"),
    ] {
        let Some((not_before, not_after)) = first_validity(path) else {
            continue;
        };
        let problem = if now < not_before {
            Some(format!("{what} is not valid before {}", stamp(not_before)))
        } else if now > not_after {
            Some(format!("{what} expired at {}", stamp(not_after)))
        } else {
            None
        };
        match (problem, validity) {
            (Some(p), Validity::Enforce) => {
                return Err(err(key, format!("{}: {p}", path.display())));
            }
            (Some(p), Validity::Warn) => {
                warnings.push(err(key, format!("{}: {p}", path.display())).to_string());
            }
            (None, _) if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING => {
                let days = not_after.duration_since(now).unwrap_or_default().as_secs() / 86_400;
                let msg = format!(
                    "{}: {what} expires at {} (in {days} days): renew it",
                    path.display(),
                    stamp(not_after),
                );
                warnings.push(err(key, msg).to_string());
            }
            (None, _) => {}
        }
    }
    Ok(warnings)
}

/// The config key of the file a [`TrustError`] names.
fn trust_error_key(e: &TrustError, paths: &[(&'static str, &PathBuf)]) -> &'static str {
    let path = match e {
        TrustError::Read { path, .. }
        | TrustError::Pem { path, .. }
        | TrustError::NoCertificate { path }
        | TrustError::BadCa { path, .. }
        | TrustError::BadKey { path, .. }
        | TrustError::NoCrl { path }
        | TrustError::BadCrl { path, .. }
        | TrustError::ForeignCrl { path }
        | TrustError::UnsoundCrl { path, .. }
        | TrustError::CrlRolledBack { path, .. }
        | TrustError::NotTrusted { path, .. }
        | TrustError::Identity { path, .. } => path,
        TrustError::TrustDomain(_) => return "trust_domain",
        TrustError::Tls(_) => return "tls.cert",
    };
    paths
        .iter()
        .find(|(_, p)| *p == path)
        .map_or("tls", |(k, _)| k)
}

/// A private key must not be readable by others, nor by the group unless
/// root owns it.
#[cfg(unix)]
fn key_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    let others = mode & 0o007 != 0;
    let group = mode & 0o070 != 0 && meta.uid() != 0;
    if others || group {
        return Err(format!(
            "{}: private key is accessible by {} (mode {mode:04o}): run `chmod 600 {}`",
            path.display(),
            if others { "others" } else { "its group" },
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn key_mode(_: &Path) -> Result<(), String> {
    Ok(())
}

/// Validity period of the first certificate in a PEM or DER file.
fn first_validity(path: &Path) -> Option<(SystemTime, SystemTime)> {
    let bytes = std::fs::read(path).ok()?;
    let der = match CertificateDer::pem_slice_iter(&bytes).next() {
        Some(c) => c.ok()?,
        None => CertificateDer::from(bytes),
    };
    let (_, x509) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = x509.validity();
    let t = |ts: i64| {
        u64::try_from(ts)
            .ok()
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
    };
    Some((t(v.not_before.timestamp())?, t(v.not_after.timestamp())?))
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
