//! The configuration model (TOML, `deny_unknown_fields` everywhere) and its
//! loading. Owns parsing, defaults, path resolution and the mapping of every
//! error to a [`ConfigError`] naming file, key and line. It does not compile
//! segments (that is `segments`) nor touch sockets.

mod files;
mod limits;
mod locate;
mod reload;
mod shadow;
mod validate;
mod warnings;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use files::{check_files, RoleFiles, Validity, EXPIRY_WARNING};
pub use limits::Limits;
pub use reload::RestartNeeded;
pub use validate::compile_segments;
pub use warnings::{dr_connector_groups, edge_warnings, ConfigWarning, WarningKind};

use crate::dr_mode::Trigger;
use crate::trust::{KeyExchange, TlsFiles};

/// A configuration error: which file, which key, which line, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `segment[2].tcp_ports`; empty when the file as a whole is wrong.
    pub key: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// `transport = "auto|quic|tls"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    #[default]
    Auto,
    Quic,
    Tls,
}

impl TransportChoice {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tls => "tls",
        }
    }
}

/// `[tls]`: the pinned CA, our certificate and key, an optional CRL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub crl: Option<PathBuf>,
    #[serde(default)]
    pub key_exchange: KeyExchange,
}

impl TlsSection {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            crl: self.crl.clone(),
            key_exchange: self.key_exchange,
        }
    }

    fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            *p = base.join(&*p);
        }
        if let Some(crl) = &mut self.crl {
            *crl = base.join(&*crl);
        }
    }
}

/// `[dr]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrSection {
    #[serde(default)]
    pub trigger: Option<Trigger>,
    #[serde(default)]
    pub test_users: Vec<String>,
    #[serde(default, with = "duration_opt")]
    pub poll_interval: Option<Duration>,
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    #[serde(default, with = "duration_opt")]
    pub cert_grace: Option<Duration>,
    /// Upper bound of the random delay spreading reactions to mode changes and reconnects.
    #[serde(default, with = "duration_opt")]
    pub jitter: Option<Duration>,
}

impl DrSection {
    fn resolve(&mut self, base: &Path) {
        if let Some(Trigger::File(p)) = &mut self.trigger {
            *p = base.join(&*p);
        }
        for p in [&mut self.signing_key, &mut self.state_file]
            .into_iter()
            .flatten()
        {
            *p = base.join(&*p);
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Static names (connector): name -> address, checked before the resolver.
    #[serde(default)]
    pub hosts: HashMap<String, std::net::IpAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// One line per finished flow at info level.
    #[serde(default)]
    pub access: bool,
}

/// The edge's `[listen]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeListen {
    #[serde(default)]
    pub quic: Option<SocketAddr>,
    #[serde(default)]
    pub tls: Option<SocketAddr>,
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorGroupConfig {
    pub name: String,
    #[serde(default)]
    pub dr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerGroupConfig {
    pub name: String,
    #[serde(default)]
    pub connector_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub name: String,
    #[serde(default)]
    pub dr: bool,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub tcp_ports: Vec<String>,
    #[serde(default)]
    pub server_groups: Vec<String>,
}

/// `lifeboat edge -c edge.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub trust_domain: String,
    pub tls: TlsSection,
    pub listen: EdgeListen,
    #[serde(default)]
    pub dr: DrSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default, rename = "connector_group")]
    pub connector_groups: Vec<ConnectorGroupConfig>,
    #[serde(default, rename = "server_group")]
    pub server_groups: Vec<ServerGroupConfig>,
    #[serde(default, rename = "segment")]
    pub segments: Vec<SegmentConfig>,
}

/// `[listen]` of connector and client.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentListen {
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    #[serde(default)]
    pub socks: Option<SocketAddr>,
    #[serde(default)]
    pub http: Option<SocketAddr>,
}

/// `lifeboat connector -c connector.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub trust_domain: String,
    pub tls: TlsSection,
    pub edges: Vec<String>,
    #[serde(default)]
    pub transport: TransportChoice,
    #[serde(default)]
    pub listen: AgentListen,
    #[serde(default)]
    pub dr: DrSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogSection,
}

/// `[[forward]]`: a local port carried to a fixed destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    pub listen: SocketAddr,
    pub to: String,
}

/// `lifeboat client -c client.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub trust_domain: String,
    pub tls: TlsSection,
    pub edges: Vec<String>,
    #[serde(default)]
    pub transport: TransportChoice,
    #[serde(default)]
    pub listen: AgentListen,
    #[serde(default, rename = "forward")]
    pub forwards: Vec<ForwardConfig>,
    #[serde(default)]
    pub dr: DrSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogSection,
}

/// Implemented by the three role configs: path resolution and checks after parsing.
pub trait RoleConfig: DeserializeOwned {
    /// Resolve relative paths against `base` (the config file's folder).
    fn resolve_paths(&mut self, base: &Path);
    /// Semantic checks that serde cannot express.
    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError>;
    /// The files the role loads, for [`check_files`].
    fn files(&self) -> RoleFiles<'_>;
}

impl RoleConfig for EdgeConfig {
    fn files(&self) -> RoleFiles<'_> {
        RoleFiles {
            role: crate::trust::Role::Edge,
            trust_domain: &self.trust_domain,
            tls: &self.tls,
            dr: &self.dr,
        }
    }
    fn resolve_paths(&mut self, base: &Path) {
        self.tls.resolve(base);
        self.dr.resolve(base);
    }
    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        validate::edge(self, file, text)
    }
}

impl RoleConfig for ConnectorConfig {
    fn files(&self) -> RoleFiles<'_> {
        RoleFiles {
            role: crate::trust::Role::Connector,
            trust_domain: &self.trust_domain,
            tls: &self.tls,
            dr: &self.dr,
        }
    }
    fn resolve_paths(&mut self, base: &Path) {
        self.tls.resolve(base);
        self.dr.resolve(base);
    }
    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        validate::agent(&self.edges, &self.limits, &self.dr, file, text)
    }
}

impl RoleConfig for ClientConfig {
    fn files(&self) -> RoleFiles<'_> {
        RoleFiles {
            role: crate::trust::Role::Client,
            trust_domain: &self.trust_domain,
            tls: &self.tls,
            dr: &self.dr,
        }
    }
    fn resolve_paths(&mut self, base: &Path) {
        self.tls.resolve(base);
        self.dr.resolve(base);
    }
    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        validate::agent(&self.edges, &self.limits, &self.dr, file, text)?;
        let l = &self.listen;
        let named = [
            ("listen.socks", l.socks),
            ("listen.http", l.http),
            ("listen.admin", l.admin),
        ];
        let listeners = named
            .into_iter()
            .filter_map(|(k, a)| Some((k.to_owned(), a?)))
            .chain(
                self.forwards
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("forward[{i}].listen"), f.listen)),
            );
        validate::distinct_listeners(listeners, file, text)?;
        for (i, f) in self.forwards.iter().enumerate() {
            if let Err(e) = crate::preamble::Dest::parse(&f.to) {
                return Err(validate::at(
                    file,
                    text,
                    format!("forward[{i}].to"),
                    format!("`{}` is not host:port ({e})", f.to),
                ));
            }
        }
        Ok(())
    }
}

/// Read, parse, resolve and validate a role config.
pub fn load<T: RoleConfig>(path: &Path) -> Result<T, ConfigError> {
    load_with_text(path).map(|(cfg, _)| cfg)
}

/// [`load`], also returning the file's text (later errors quote its lines).
pub fn load_with_text<T: RoleConfig>(path: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
    let cfg = from_text(path, &text)?;
    Ok((cfg, text))
}

/// Parse, resolve (against `path`'s folder) and validate config text.
pub fn from_text<T: RoleConfig>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let mut cfg: T = parse_str(path, text)?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    cfg.resolve_paths(base);
    cfg.validate(path, text)?;
    Ok(cfg)
}

/// Parse TOML text (named `path` in errors) without touching the file system.
pub fn parse_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let inner = e.into_inner();
        let line = inner.span().map(|s| line_of_offset(text, s.start));
        ConfigError {
            file: path.to_path_buf(),
            key,
            line,
            message: inner.message().trim().to_string(),
        }
    })
}

pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Durations written as `"30s"`, `"250ms"`, `"5m"`.
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration like \"30s\" or \"250ms\": {e}"
            ))
        })
    }
}

pub(crate) mod duration_opt {
    use serde::Deserializer;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests;
