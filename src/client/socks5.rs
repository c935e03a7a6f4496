//! SOCKS5 server side (RFC 1928): no-auth method, CONNECT command, DOMAIN,
//! IPv4 and IPv6 address types; names are resolved by the far end.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::preamble::Dest;
use crate::refusal::Refusal;

/// RFC 1928 reply codes.
pub mod rep {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 0x08;
}

/// Why a SOCKS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("not SOCKS version 5")]
    Version,
    #[error("client offers no acceptable method (only no-auth is supported)")]
    NoMethod,
    #[error("command {0} not supported (only CONNECT)")]
    Command(u8),
    #[error("address type {0} not supported")]
    AddressType(u8),
    #[error("bad destination: {0}")]
    Dest(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The reply code for an edge refusal.
pub fn reply_for(r: Option<Refusal>) -> u8 {
    match r {
        Some(Refusal::NotDrSegment | Refusal::NotAllowed | Refusal::Quota | Refusal::WrongRole) => {
            rep::NOT_ALLOWED
        }
        Some(Refusal::DrInactive | Refusal::NoConnector | Refusal::GoingAway) => {
            rep::NETWORK_UNREACHABLE
        }
        Some(Refusal::UpstreamFailed) => rep::CONNECTION_REFUSED,
        Some(Refusal::UpstreamTimeout) => rep::HOST_UNREACHABLE,
        Some(Refusal::BadRequest | Refusal::Method | Refusal::TooLarge) | None => {
            rep::GENERAL_FAILURE
        }
    }
}

/// Run the greeting and the request; returns the destination. On a
/// protocol error the matching reply has already been sent.
pub async fn handshake(s: &mut TcpStream) -> Result<Dest, SocksError> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(SocksError::Version);
    }
    let mut methods = [0u8; 255];
    let methods = &mut methods[..usize::from(head[1])];
    s.read_exact(methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        return Err(SocksError::NoMethod);
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(SocksError::Version);
    }
    if req[1] != 1 {
        reply(s, rep::COMMAND_NOT_SUPPORTED).await?;
        return Err(SocksError::Command(req[1]));
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            IpAddr::V4(Ipv4Addr::from(a)).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            format!("[{}]", Ipv6Addr::from(a))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await?;
            match String::from_utf8(name) {
                Ok(n) if !n.contains(':') => n,
                _ => {
                    reply(s, rep::GENERAL_FAILURE).await?;
                    return Err(SocksError::Dest("name is not a host name".into()));
                }
            }
        }
        t => {
            reply(s, rep::ADDRESS_NOT_SUPPORTED).await?;
            return Err(SocksError::AddressType(t));
        }
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await?;
    let authority = format!("{host}:{}", u16::from_be_bytes(port));
    match Dest::parse(&authority) {
        Ok(d) => Ok(d),
        Err(e) => {
            reply(s, rep::GENERAL_FAILURE).await?;
            Err(SocksError::Dest(format!("{authority}: {e}")))
        }
    }
}

/// Send a reply with an unspecified bound address.
pub async fn reply(s: &mut TcpStream, code: u8) -> std::io::Result<()> {
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}
