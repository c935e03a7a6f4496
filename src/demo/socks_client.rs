//! A minimal SOCKS5 CONNECT client (domain address type), for the demo,
//! the load generator and tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a SOCKS connect failed.
#[derive(Debug, thiserror::Error)]
pub enum SocksConnectError {
    #[error("SOCKS server refused with reply code {0}")]
    Reply(u8),
    #[error("SOCKS protocol error: {0}")]
    Protocol(&'static str),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Connect to `host:port` through the SOCKS5 server at `socks`.
pub async fn connect(
    socks: SocketAddr,
    host: &str,
    port: u16,
) -> Result<TcpStream, SocksConnectError> {
    let mut s = TcpStream::connect(socks).await?;
    let _ = s.set_nodelay(true);
    let name = host.as_bytes();
    let len = u8::try_from(name.len()).map_err(|_| SocksConnectError::Protocol("name too long"))?;
    // Greeting and request in one write: the server reads them in order.
    let mut msg = vec![5, 1, 0, 5, 1, 0, 3, len];
    msg.extend_from_slice(name);
    msg.extend_from_slice(&port.to_be_bytes());
    s.write_all(&msg).await?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await?;
    if method != [5, 0] {
        return Err(SocksConnectError::Protocol("no-auth method not accepted"));
    }
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep[..4]).await?;
    if rep[1] != 0 {
        return Err(SocksConnectError::Reply(rep[1]));
    }
    let rest = match rep[3] {
        1 => 6,
        4 => 18,
        _ => return Err(SocksConnectError::Protocol("unexpected bound address type")),
    };
    let mut tail = vec![0u8; rest];
    s.read_exact(&mut tail).await?;
    Ok(s)
}
