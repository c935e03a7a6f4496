//! SPIFFE-style identities: `spiffe://<trust_domain>/<role>/...`.
//!
//! Owns the grammar of the URI SAN every lifeboat certificate carries and the
//! extraction of that SAN from a DER certificate. It does not decide whether a
//! certificate is trusted (that is `verify.rs`); it only says who it names.
//!
//! Grammar (the SPIFFE-ID spec, narrowed to our three shapes):
//! - scheme exactly `spiffe://` (lower case);
//! - trust domain: 1..=255 of `[a-z0-9._-]`. Upper case is refused rather than
//!   folded: the SPIFFE spec requires lower case, and folding would let two
//!   spellings of one id disagree in logs and test-group lists;
//! - path segments: 1..=255 of `[A-Za-z0-9._-]`, never `.` or `..`, no empty
//!   segment, no trailing `/`, no query, fragment, port, userinfo or
//!   percent-encoding (none of those characters are allowed);
//! - `edge/<name>`, `connector/<group>/<name>`, `client/<user>`, nothing else.
//!
//! The restricted segment alphabet also makes every name safe as a file name
//! (`pki issue` writes `<name>.pem`).

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

const SCHEME: &str = "spiffe://";
/// Longest URI we accept (SPIFFE spec: 2048 bytes).
const MAX_URI: usize = 2048;
const MAX_TRUST_DOMAIN: usize = 255;
const MAX_SEGMENT: usize = 255;

/// What a certificate is for. Edges accept clients and connectors; clients
/// and connectors accept only edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Edge,
    Connector,
    Client,
}

impl Role {
    /// All roles, in a stable order.
    pub const ALL: [Self; 3] = [Self::Edge, Self::Connector, Self::Client];

    /// The path word for this role, also used as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Connector => "connector",
            Self::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    /// Exact lower-case words only (`edge`, `connector`, `client`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole { role: s.to_owned() })
    }
}

/// Why a certificate or URI does not name an acceptable lifeboat identity.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The certificate carries no `spiffe://` URI SAN.
    #[error("certificate carries no spiffe:// URI SAN")]
    NoSpiffeId,
    /// More than one `spiffe://` URI SAN: ambiguous, refused.
    #[error("certificate carries {count} spiffe:// URI SANs; exactly one is required")]
    MultipleSpiffeIds { count: usize },
    /// The certificate itself could not be parsed.
    #[error("certificate could not be parsed")]
    BadCertificate,
    /// A `spiffe://` URI that breaks the grammar above.
    #[error("malformed SPIFFE id {uri:?}: {reason}")]
    Malformed { uri: String, reason: &'static str },
    /// A role word other than `edge`, `connector`, `client`.
    #[error("unknown role {role:?} (expected edge, connector or client)")]
    UnknownRole { role: String },
    /// A valid id from another trust domain.
    #[error("foreign trust domain {found:?} (expected {expected:?})")]
    ForeignTrustDomain { expected: String, found: String },
    /// A valid id of a role this endpoint does not accept.
    #[error("role {found} not accepted here (accepted: {accepted:?})")]
    WrongRole { found: Role, accepted: Vec<Role> },
}

/// A parsed lifeboat identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub role: Role,
    /// Edge name, connector name, or client user name.
    pub name: String,
    /// Connector group; `Some` exactly when `role` is `Connector`.
    pub group: Option<String>,
}

impl SpiffeId {
    /// Parses `spiffe://<td>/edge/<name>`, `spiffe://<td>/connector/<group>/<name>`
    /// or `spiffe://<td>/client/<user>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason| IdentityError::Malformed {
            uri: uri.to_owned(),
            reason,
        };
        if uri.len() > MAX_URI {
            return Err(bad("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("scheme must be spiffe://"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no path after the trust domain"))?;
        check_trust_domain(td).map_err(|_| bad("invalid trust domain"))?;
        let mut segments = path.split('/');
        let role_word = segments.next().unwrap_or_default();
        let rest: Vec<&str> = segments.collect();
        for segment in &rest {
            if !valid_segment(segment) {
                return Err(bad("invalid path segment"));
            }
        }
        let role = Role::from_str(role_word).map_err(|_| bad("unknown role"))?;
        let (group, name) = match (role, rest.as_slice()) {
            (Role::Edge | Role::Client, [name]) => (None, *name),
            (Role::Connector, [group, name]) => (Some((*group).to_owned()), *name),
            (Role::Connector, _) => return Err(bad("expected connector/<group>/<name>")),
            (Role::Edge, _) => return Err(bad("expected edge/<name>")),
            (Role::Client, _) => return Err(bad("expected client/<user>")),
        };
        Ok(Self {
            trust_domain: td.to_owned(),
            role,
            name: name.to_owned(),
            group,
        })
    }

    /// The URI form, `spiffe://...`.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Refuses an id from another trust domain or of a role not in `accept`.
    /// The trust domain is checked first: a foreign id has no meaningful role.
    pub fn check(&self, trust_domain: &str, accept: &[Role]) -> Result<(), IdentityError> {
        if self.trust_domain != trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                expected: trust_domain.to_owned(),
                found: self.trust_domain.clone(),
            });
        }
        if !accept.contains(&self.role) {
            return Err(IdentityError::WrongRole {
                found: self.role,
                accepted: accept.to_vec(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}/", self.trust_domain, self.role)?;
        if let Some(group) = &self.group {
            write!(f, "{group}/")?;
        }
        f.write_str(&self.name)
    }
}

/// Checks a trust domain name against the SPIFFE grammar (lower case only).
pub fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN
        && td
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Malformed {
            uri: format!("{SCHEME}{td}"),
            reason: "trust domain must be 1-255 of [a-z0-9._-]",
        })
    }
}

/// Checks one path segment (a name or group) against the SPIFFE grammar.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The `spiffe://` URI SANs of a certificate, in order. Other URI SANs (and
/// DNS/IP SANs) are ignored.
pub(crate) fn spiffe_uris(cert: &[u8]) -> Result<Vec<String>, IdentityError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| IdentityError::BadCertificate)?;
    let san = x509
        .subject_alternative_name()
        .map_err(|_| IdentityError::BadCertificate)?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            // The scheme is matched case-insensitively here so that
            // `SPIFFE://...` counts as "a SPIFFE id" and is then refused as
            // malformed, instead of silently as "no id".
            GeneralName::URI(uri)
                if uri
                    .get(..SCHEME.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME)) =>
            {
                Some((*uri).to_owned())
            }
            _ => None,
        })
        .collect())
}

/// The identity a certificate names: exactly one `spiffe://` URI SAN is
/// required. Says nothing about whether the certificate is trusted.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let uris = spiffe_uris(cert)?;
    match uris.as_slice() {
        [] => Err(IdentityError::NoSpiffeId),
        [uri] => SpiffeId::parse(uri),
        many => Err(IdentityError::MultipleSpiffeIds { count: many.len() }),
    }
}
