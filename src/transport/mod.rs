//! Tunnel transports. QUIC (`quic`) carries many flows per connection as
//! bidirectional streams; TLS over TCP (`tls`) carries one flow per
//! connection (HTTP/1.1 CONNECT) or many as HTTP/2 streams (`mux`). `dial`
//! races the two, `keeper` keeps a tunnel up, `serve` is what a role does
//! with a dialled tunnel, `resolve` follows the edge names, `shed` tells a
//! refused peer when to come back, `link` is the tunnel flows are opened on
//! (`connect`: the client's CONNECT on it). Both legs share the ALPN names,
//! the tunnel error type, the flow halves (`half`) and the head reader
//! (`head`).

pub mod connect;
pub mod dial;
pub mod half;
pub mod head;
pub mod keeper;
pub mod link;
pub mod mux;
pub mod quic;
pub mod resolve;
pub mod serve;
pub mod shed;
pub mod tls;

use std::fmt;

/// ALPN of client tunnels (and of standard clients speaking the CONNECT preamble).
pub const ALPN_CLIENT: &[u8] = b"lifeboat/1";
/// ALPN of client tunnels over TLS: HTTP/2, each flow a CONNECT stream
/// (RFC 9113 8.5), so standard HTTP/2 proxy clients work too.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of connector tunnels: lets the edge tell connectors from clients before any flow.
pub const ALPN_CONNECTOR: &[u8] = b"lifeboat-connector/1";

/// QUIC application close codes the edge and agents use (HTTP/2 tunnels
/// end with GOAWAY instead). Every code is in use; `word` names each but
/// `DONE` in DESIGN's result vocabulary.
pub mod close_code {
    /// Normal shutdown.
    pub const DONE: u32 = 0;
    /// The peer's certificate role does not fit the tunnel it asked for.
    pub const WRONG_ROLE: u32 = 0x10;
    /// Too many tunnels.
    pub const OVERLOADED: u32 = 0x11;
    /// The tunnel is being drained (address left DNS, or shutdown).
    pub const DRAINING: u32 = 0x12;
    /// The peer's certificate is expired and DR `cert_grace` no longer applies.
    pub const GRACE_OVER: u32 = 0x13;
    /// The peer's certificate is no longer accepted (revoked, or the CA
    /// changed) after a trust reload.
    pub const CERT_REFUSED: u32 = 0x14;
    /// The edge is going away (SIGTERM: a restart or shutdown); peers move
    /// to another address of the edge name at once.
    pub const GOING_AWAY: u32 = 0x15;
    /// The peer's identity holds `max_tunnels_per_identity` tunnels already.
    pub const QUOTA: u32 = 0x16;

    /// The result word of a close by the edge (DESIGN's vocabulary).
    pub fn word(code: u64) -> Option<&'static str> {
        Some(match u32::try_from(code).ok()? {
            WRONG_ROLE => "wrong-role",
            OVERLOADED => "shed",
            DRAINING | GOING_AWAY => "going-away",
            GRACE_OVER => "expired",
            CERT_REFUSED => "cert-refused",
            QUOTA => "quota",
            _ => return None,
        })
    }
}

/// The result word of a QUIC connection that ended: the edge's own close
/// code when it closed with one (a certificate revoked or of the wrong role
/// is refused after a TLS 1.3 client thinks its handshake is done, so the
/// close can come at any later step), else what the TLS alert says.
pub fn quic_end_word(e: &quinn::ConnectionError) -> &'static str {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            close_code::word(c.error_code.into_inner()).unwrap_or("other")
        }
        e => crate::trust::classify_quic(e),
    }
}

/// Stream error codes (QUIC RESET_STREAM / STOP_SENDING).
pub mod stream_code {
    /// The other side of the flow went away with an error.
    pub const ABORTED: u32 = 1;
    /// DR mode narrowed and this flow is no longer allowed.
    pub const DR_NARROWED: u32 = 2;
    /// Shutdown deadline passed.
    pub const SHUTDOWN: u32 = 3;
    /// The client's certificate is no longer accepted (revoked since).
    pub const CERT_REFUSED: u32 = 4;
    /// Nothing moved either way for `[limits] flow_idle_timeout`.
    pub const IDLE: u32 = 5;
    /// Its reader stopped reading while the tunnel's window was running
    /// out for the other flows (`crate::stall`).
    pub const STALLED: u32 = 6;
}

/// Which transport a tunnel runs over (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Quic,
    Tls,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tls => "tls",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tunnel could not be set up or ended.
#[derive(thiserror::Error, Debug)]
pub enum TunnelError {
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("handshake did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// The QUIC handshake finished but the edge sent no welcome (it refused
    /// us after checking our certificate, or is not a lifeboat edge).
    #[error("the edge sent no welcome: {0}")]
    NoWelcome(String),
    /// Over TLS the edge closed, or spoke when it should not have, before
    /// any request: a refusal that came without an alert.
    #[error("the edge closed the connection before any request: {0}")]
    ClosedEarly(String),
    /// Our own TLS configuration cannot be used (a bug or a bad key type).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The peer's certificate names no usable identity.
    #[error("peer identity: {0}")]
    PeerIdentity(String),
    #[error("no address for edge `{0}`")]
    NoAddress(String),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// Neither transport got an answer (QUIC silent, TCP refused or silent):
    /// the edge is down, restarting, or not reachable from here.
    #[error("edge unreachable: {0}")]
    Unreachable(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl TunnelError {
    /// The word for `lifeboat_handshakes_total{result}`.
    pub fn reason(&self) -> &'static str {
        if self.retry_after().is_some() {
            return "shed";
        }
        match self {
            Self::Connection(e) => quic_end_word(e),
            Self::Timeout(_) => "timeout",
            Self::NoWelcome(_) => "no-welcome",
            Self::ClosedEarly(_) => "closed-early",
            Self::Config(_) => "config",
            Self::PeerIdentity(_) => "no-identity",
            Self::Tls(e) => crate::trust::classify_io(e),
            Self::Io(e) if crate::accept::out_of_descriptors(e) => "fd-limit",
            Self::Unreachable(_) | Self::Io(_) => "unreachable",
            Self::Connect(_) | Self::NoAddress(_) => "other",
        }
    }

    /// When the edge said to come back, if it shed this handshake: a QUIC
    /// `CONNECTION_REFUSED` (no figure: [`shed::DEFAULT`]), the close
    /// `OVERLOADED` (its `retry-after-ms`, else the default), a TLS
    /// `user_canceled` alert (the default). Bounded by [`shed::MIN`] and
    /// [`shed::MAX`].
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        use quinn::ConnectionError as C;
        match self {
            Self::Connection(C::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Some(shed::DEFAULT)
            }
            Self::Connection(C::ApplicationClosed(c))
                if c.error_code == close_code::OVERLOADED.into() =>
            {
                Some(shed::parse(&c.reason).unwrap_or(shed::DEFAULT))
            }
            Self::Tls(e) => {
                let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
                matches!(
                    inner,
                    rustls::Error::AlertReceived(rustls::AlertDescription::UserCanceled)
                )
                .then_some(shed::DEFAULT)
            }
            _ => None,
        }
    }
}

/// One edge address to dial, with the name to present as SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeAddr {
    pub addr: std::net::SocketAddr,
    pub server_name: String,
}

pub use resolve::resolve_edges;

/// Listen backlog for TCP listeners: bursts of new flows (a DR activation,
/// a browser opening many connections) wait in the kernel, not in SYN retries.
pub const TCP_BACKLOG: u32 = 4096;

/// Bind a TCP listener with [`TCP_BACKLOG`] (std's default of 128 overflows
/// under a burst and costs the dropped connections a 1 s SYN retry).
pub fn tcp_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(TCP_BACKLOG)
}
