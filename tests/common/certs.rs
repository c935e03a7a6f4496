//! The deployment's certificates: a CA made by `lifeboat pki init` and
//! certificates issued by it (valid, expired, expiring, revoked).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat::pki::{self, IssueOptions};
use lifeboat::trust::{Role, TlsFiles, Trust};

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA directory made by `lifeboat::pki::init`.
#[derive(Debug, Clone)]
pub struct Ca {
    pub dir: PathBuf,
    pub trust_domain: String,
}

impl Ca {
    pub fn init(dir: &Path, trust_domain: &str) -> Self {
        pki::init(dir, trust_domain, 2).expect("pki init");
        Self {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.into(),
        }
    }

    pub fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn crl(&self) -> PathBuf {
        self.dir.join("ca.crl")
    }

    /// The trust a role presenting `cert` loads, pinning this CA (no CRL,
    /// the default key exchange): for hand-made dials and endpoints.
    pub fn trust(&self, cert: &CertFiles) -> Arc<Trust> {
        let files = TlsFiles {
            ca: self.pem(),
            cert: cert.cert.clone(),
            key: cert.key.clone(),
            crl: None,
            key_exchange: Default::default(),
        };
        Trust::load(files, &self.trust_domain).expect("load trust")
    }

    fn options(&self, role: Role, name: &str, group: Option<&str>) -> IssueOptions {
        IssueOptions {
            dir: self.dir.clone(),
            role,
            name: name.into(),
            group: group.map(Into::into),
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("literal")],
            days: 2,
            not_before: None,
            not_after: None,
        }
    }

    fn write(&self, opts: &IssueOptions) -> CertFiles {
        let (cert, key) = pki::issue(opts).expect("pki issue");
        CertFiles { cert, key }
    }

    /// A certificate valid now for `role`/`name` (`group` for connectors).
    pub fn issue(&self, role: Role, name: &str, group: Option<&str>) -> CertFiles {
        self.write(&self.options(role, name, group))
    }

    /// A client certificate that expired yesterday.
    pub fn issue_expired(&self, name: &str) -> CertFiles {
        self.issue_expired_as(Role::Client, name, None)
    }

    /// A client certificate valid from an hour ago until `secs` from now.
    pub fn issue_expiring_in(&self, name: &str, secs: i64) -> CertFiles {
        let now = time::OffsetDateTime::now_utc();
        let mut o = self.options(Role::Client, name, None);
        o.not_before = Some(now - time::Duration::hours(1));
        o.not_after = Some(now + time::Duration::seconds(secs));
        self.write(&o)
    }

    /// A certificate for `role`/`name` (`group` for connectors) that expired yesterday.
    pub fn issue_expired_as(&self, role: Role, name: &str, group: Option<&str>) -> CertFiles {
        let now = time::OffsetDateTime::now_utc();
        let mut o = self.options(role, name, group);
        o.not_before = Some(now - time::Duration::days(3));
        o.not_after = Some(now - time::Duration::days(1));
        self.write(&o)
    }

    /// Add `cert` to this CA's CRL.
    pub fn revoke(&self, cert: &CertFiles) {
        pki::revoke(&self.dir, &cert.cert).expect("pki revoke");
    }
}
