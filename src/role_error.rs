//! The errors of the roles' lifecycle: [`BindError`] (edge, connector and
//! client `bind`), [`RunError`] (their `run`) and [`ReloadError`] (the
//! edge's `reload`). Typed, so callers can match them (`main` exits 2 for a
//! [`BindError::Config`]); the texts are the ones operators and tests know.
//! Owns no I/O: the roles build these, `main` and the tools report them.

use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::preamble::PreambleError;
use crate::transport::TunnelError;
use crate::trust::{SpiffeId, TrustError};

/// Why a role could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The `[tls]` files (certificate, key, CA, CRL) could not be loaded.
    #[error("loading [tls] of {}", file.display())]
    Trust {
        file: PathBuf,
        #[source]
        source: TrustError,
    },
    /// The config does not compile (the edge's segments).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The `[tls]` certificate is for another role.
    #[error(
        "{}: [tls] cert is a {} certificate ({id}); a connector needs a connector certificate",
        file.display(),
        id.role.as_str()
    )]
    NotAConnector { file: PathBuf, id: SpiffeId },
    /// A `[[forward]]` whose `to` is not `HOST:PORT`.
    #[error("forward to `{to}`: {reason}")]
    Forward { to: String, reason: PreambleError },
    /// The edge's QUIC listener could not be bound.
    #[error("binding QUIC listener {addr}")]
    QuicListener {
        addr: SocketAddr,
        #[source]
        source: TunnelError,
    },
    /// A TCP listener (the edge's TLS, the client's socks, http or forward)
    /// could not be bound.
    #[error("binding {kind} listener {addr}")]
    Listener {
        kind: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// QUIC and TLS asked for one port 0 and no port was free for both.
    #[error("no port free for both QUIC and TLS")]
    NoSharedPort,
    /// The QUIC endpoint that dials the edges could not be made.
    #[error(transparent)]
    Endpoint(#[from] TunnelError),
    /// A bound socket could not say its address.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BindError {
    /// [`BindError::Trust`] for the config `file`, to `map_err` a
    /// `Trust::load` with.
    pub fn trust(file: &Path) -> impl FnOnce(TrustError) -> Self + '_ {
        move |source| Self::Trust {
            file: file.to_path_buf(),
            source,
        }
    }

    /// The config error, when the config is at fault (`main` exits 2).
    pub fn config(&self) -> Option<&ConfigError> {
        match self {
            Self::Config(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a role stopped other than by its drain. Nothing does today: a role
/// serves until drained. Kept a type so callers match it and a new way to
/// fail is a new variant, not a string.
#[derive(Debug, thiserror::Error)]
pub enum RunError {}

/// Why an edge reload changed nothing. `{:#}` adds the causes, `: `
/// separated, as `anyhow` does.
#[derive(Debug)]
pub enum ReloadError {
    /// The certificate, key, CA or CRL files could not be re-read.
    Trust(TrustError),
    /// The config file is bad; the old one is kept.
    Config(ConfigError),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trust(_) => "reload: certificate files",
            Self::Config(_) => "reload: config kept as it was",
        })?;
        if f.alternate() {
            let mut cause = self.source();
            while let Some(e) = cause {
                write!(f, ": {e}")?;
                cause = e.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for ReloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Trust(e) => Some(e),
            Self::Config(e) => Some(e),
        }
    }
}
