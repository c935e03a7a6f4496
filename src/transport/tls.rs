//! mTLS over TCP (tokio-rustls): the edge's `tls` listener, the client's
//! per-flow connections and the connector's tunnel. Same pinned-CA verifiers
//! as QUIC; TLS 1.3 session tickets let repeat clients skip the full
//! handshake (tickets die with every trust reload, so a revoked certificate
//! cannot resume).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{TunnelError, ALPN_CLIENT, ALPN_CONNECTOR, ALPN_H2};
use crate::trust::{spiffe_id_of, Role, SpiffeId, Trust};

/// ALPN for standard HTTPS-proxy clients.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The edge's server config: clients (one flow per connection, or an
/// HTTP/2 tunnel of CONNECT streams) and connectors (a multiplexed tunnel).
/// The edge's order wins: a client offering several gets the first here.
pub fn server_config(trust: &Arc<Trust>) -> Arc<rustls::ServerConfig> {
    Arc::new(trust.server_config(
        &[Role::Client, Role::Connector],
        &[ALPN_CLIENT, ALPN_H2, ALPN_HTTP1, ALPN_CONNECTOR],
    ))
}

/// A ClientHello read, the handshake not started.
pub type Hello = tokio_rustls::StartHandshake<TcpStream>;

/// Read the ClientHello (no crypto yet); whether it asks for the connector
/// ALPN.
pub async fn read_hello(tcp: TcpStream) -> std::io::Result<(Hello, bool)> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let wants_connector = start
        .client_hello()
        .alpn()
        .is_some_and(|mut protos| protos.any(|p| p == ALPN_CONNECTOR));
    Ok((start, wants_connector))
}

/// A client-side connector presenting our certificate with `alpn`.
pub fn connector(trust: &Arc<Trust>, alpn: &[u8]) -> TlsConnector {
    TlsConnector::from(Arc::new(trust.client_config(&[alpn])))
}

/// TCP keepalive for TLS connections that carry no ping frames of their own.
pub fn tcp_keepalive(s: &TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle);
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Connect TCP and run the TLS handshake, bounded by `timeout`.
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TunnelError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TunnelError::NoAddress(server_name.to_string()))?;
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await.map_err(TunnelError::Tls)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(TunnelError::Timeout(timeout)),
    }
}

/// The peer's SPIFFE id from a finished handshake.
pub fn peer_id(conn: &rustls::CommonState) -> Result<SpiffeId, TunnelError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| TunnelError::PeerIdentity("peer presented no certificate".into()))?;
    spiffe_id_of(leaf).map_err(|e| TunnelError::PeerIdentity(e.to_string()))
}

/// A stream with bytes already read from it put back in front: what the
/// dialler read while waiting for the edge's verdict (a connector's edge
/// speaks first, HTTP/2's preface) is read again by the protocol.
pub struct Prefixed<T> {
    early: bytes::Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    pub fn new(io: T) -> Self {
        Self {
            early: bytes::Bytes::new(),
            io,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Put `b` back in front of what is read next.
    pub fn unread(&mut self, b: &[u8]) {
        let mut v = Vec::with_capacity(b.len() + self.early.len());
        v.extend_from_slice(b);
        v.extend_from_slice(&self.early);
        self.early = v.into();
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            let chunk = self.early.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
