//! Dialling an edge with the configured transport. `auto` is happy
//! eyeballs: QUIC first; if it has not finished its handshake within a head
//! start, TLS races it; the first to finish wins. A caller that saw QUIC lose
//! remembers it per edge (`quic_bad`), goes to TLS at once next time, and
//! re-probes QUIC in the background so a healed network returns to QUIC.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{quic, tls, EdgeAddr, TransportKind, TunnelError};
use crate::config::TransportChoice;

/// How long QUIC runs alone before TLS joins the race.
pub const HEAD_START: Duration = Duration::from_millis(250);

/// A finished handshake on either transport.
pub enum Dialed {
    Quic(quinn::Connection),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Dialed {
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            Self::Tls(_) => TransportKind::Tls,
        }
    }
}

/// Everything needed to reach edges.
#[derive(Clone)]
pub struct Dialer {
    pub choice: TransportChoice,
    pub quic: quinn::Endpoint,
    pub tls: TlsConnector,
    pub timeout: Duration,
    pub head_start: Duration,
}

impl Dialer {
    pub async fn dial_quic(&self, edge: &EdgeAddr) -> Result<quinn::Connection, TunnelError> {
        quic::connect(&self.quic, edge.addr, &edge.server_name, self.timeout).await
    }

    pub async fn dial_tls(&self, edge: &EdgeAddr) -> Result<TlsStream<TcpStream>, TunnelError> {
        tls::connect(&self.tls, edge.addr, &edge.server_name, self.timeout).await
    }

    /// The transport a failed `dial(_, quic_bad)` was refused on (a metric
    /// label): `auto` reports the TLS error when TLS said more (see `race`).
    pub fn failed_kind(&self, quic_bad: bool, err: &TunnelError) -> TransportKind {
        match self.choice {
            TransportChoice::Quic => TransportKind::Quic,
            TransportChoice::Tls => TransportKind::Tls,
            TransportChoice::Auto if quic_bad || matches!(err, TunnelError::Tls(_)) => {
                TransportKind::Tls
            }
            TransportChoice::Auto => TransportKind::Quic,
        }
    }

    /// After a TLS handshake, wait briefly for the edge's verdict on our
    /// certificate: in TLS 1.3 the server checks it after the client is done,
    /// and a refusal arrives as an alert. `Ok` when no alert came within the
    /// grace (a few handshake times, at least 20 ms, at most 1 s).
    pub async fn confirm_tls(
        stream: &mut TlsStream<TcpStream>,
        handshake: Duration,
    ) -> Result<(), TunnelError> {
        use tokio::io::AsyncReadExt;
        let grace = (handshake * 3).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut b = [0u8; 1];
        match tokio::time::timeout(grace, stream.read(&mut b)).await {
            Err(_) => Ok(()),
            Ok(Err(e)) => Err(TunnelError::Tls(e)),
            Ok(Ok(_)) => Err(TunnelError::Identity(
                "the edge closed or spoke before any request".into(),
            )),
        }
    }

    /// Dial `edge`. With `auto`, `quic_bad` skips straight to TLS.
    pub async fn dial(&self, edge: &EdgeAddr, quic_bad: bool) -> Result<Dialed, TunnelError> {
        match self.choice {
            TransportChoice::Quic => self.dial_quic(edge).await.map(Dialed::Quic),
            TransportChoice::Tls => self.dial_tls(edge).await.map(|s| Dialed::Tls(Box::new(s))),
            TransportChoice::Auto if quic_bad => {
                self.dial_tls(edge).await.map(|s| Dialed::Tls(Box::new(s)))
            }
            TransportChoice::Auto => self.race(edge).await,
        }
    }

    async fn race(&self, edge: &EdgeAddr) -> Result<Dialed, TunnelError> {
        let quic = self.dial_quic(edge);
        tokio::pin!(quic);
        let mut quic_err = None;
        tokio::select! {
            r = &mut quic => match r {
                Ok(c) => return Ok(Dialed::Quic(c)),
                Err(e) => quic_err = Some(e),
            },
            _ = tokio::time::sleep(self.head_start) => {}
        }
        let tls = self.dial_tls(edge);
        tokio::pin!(tls);
        let mut tls_err = None;
        loop {
            tokio::select! {
                r = &mut quic, if quic_err.is_none() => match r {
                    Ok(c) => return Ok(Dialed::Quic(c)),
                    Err(e) => quic_err = Some(e),
                },
                r = &mut tls, if tls_err.is_none() => match r {
                    Ok(s) => return Ok(Dialed::Tls(Box::new(s))),
                    Err(e) => tls_err = Some(e),
                },
            }
            if let (Some(_), Some(t)) = (&quic_err, tls_err.take()) {
                // Both failed: report the QUIC error unless TLS says more (an identity refusal).
                return Err(match t {
                    TunnelError::Tls(_) => t,
                    _ => quic_err.take().unwrap_or(t),
                });
            }
        }
    }
}
