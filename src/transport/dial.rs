//! Dialling an edge with the configured transport. `auto` is happy
//! eyeballs: QUIC first; if it has not finished its handshake within a head
//! start, TLS races it; the first to finish wins. An edge that answered
//! QUIC within the head start is busy, not blocked (a DR stampede): QUIC
//! alone goes on, TLS only after it fails; an edge that shed QUIC said when
//! to come back, and gets no TLS handshake on top. A caller that saw QUIC lose
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

/// How long a dialler waits, after its TLS handshake, for an HTTP/2 edge's
/// first bytes (its verdict on our certificate).
pub const VERDICT_WAIT: Duration = Duration::from_secs(2);

/// A TLS tunnel as dialled: the stream, with whatever was read from it
/// while waiting for the edge's verdict put back in front.
pub type TlsTunnel = tls::Prefixed<TlsStream<TcpStream>>;

/// A finished handshake on either transport.
pub enum Dialed {
    Quic(quinn::Connection),
    Tls(Box<TlsTunnel>),
}

impl Dialed {
    fn tls(s: TlsStream<TcpStream>) -> Self {
        Self::Tls(Box::new(tls::Prefixed::new(s)))
    }

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
    /// and a refusal arrives as an alert. An HTTP/2 tunnel (a connector's,
    /// a client's `h2`: the edge speaks first, its preface) is accepted when
    /// the edge's first bytes came, which are kept for the protocol; a
    /// one-flow connection (the client speaks first) when no alert came
    /// within the grace (a few handshake times, at least 20 ms, at most 1 s).
    pub async fn confirm_tls(
        stream: &mut TlsTunnel,
        handshake: Duration,
    ) -> Result<(), TunnelError> {
        use tokio::io::AsyncReadExt;
        // HTTP/2 (a connector's tunnel, a client's `h2` tunnel): the edge's
        // first bytes are its preface.
        let alpn = stream.get_ref().get_ref().1.alpn_protocol();
        let edge_speaks_first = alpn == Some(super::ALPN_CONNECTOR) || alpn == Some(super::ALPN_H2);
        let grace = if edge_speaks_first {
            // Ends as soon as the edge speaks; long only for a slow edge.
            VERDICT_WAIT
        } else {
            (handshake * 3).clamp(Duration::from_millis(20), Duration::from_secs(1))
        };
        let mut b = [0u8; 512];
        match tokio::time::timeout(grace, stream.get_mut().read(&mut b)).await {
            Err(_) if edge_speaks_first => Err(TunnelError::ClosedEarly(
                "the edge said nothing after the handshake".into(),
            )),
            Err(_) => Ok(()),
            Ok(Err(e)) => Err(TunnelError::Tls(e)),
            Ok(Ok(n)) if n > 0 && edge_speaks_first => {
                stream.unread(&b[..n]);
                Ok(())
            }
            Ok(Ok(_)) => Err(TunnelError::ClosedEarly(
                "the edge closed or spoke before any request".into(),
            )),
        }
    }

    /// Dial `edge` within the configured handshake timeout. With `auto`,
    /// `quic_bad` skips straight to TLS.
    pub async fn dial(&self, edge: &EdgeAddr, quic_bad: bool) -> Result<Dialed, TunnelError> {
        self.dial_within(edge, quic_bad, self.timeout).await
    }

    /// Dial `edge`, each transport's handshake bounded by `timeout`.
    pub async fn dial_within(
        &self,
        edge: &EdgeAddr,
        quic_bad: bool,
        timeout: Duration,
    ) -> Result<Dialed, TunnelError> {
        let quic = || quic::connect(&self.quic, edge.addr, &edge.server_name, timeout);
        let tls = || tls::connect(&self.tls, edge.addr, &edge.server_name, timeout);
        match self.choice {
            TransportChoice::Quic => quic().await.map(Dialed::Quic),
            TransportChoice::Tls => tls().await.map(Dialed::tls),
            TransportChoice::Auto if quic_bad => tls().await.map(Dialed::tls),
            TransportChoice::Auto => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let quic = quic::connect_heard(
                    &self.quic,
                    edge.addr,
                    &edge.server_name,
                    timeout,
                    Some(tx),
                );
                let heard = async {
                    if rx.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                match race_heard(quic, tls, self.head_start, heard).await? {
                    Won::Quic(c) => Ok(Dialed::Quic(c)),
                    Won::Tls(s) => Ok(Dialed::tls(s)),
                }
            }
        }
    }

    /// Dial `edge` and, over TLS, wait for the edge's verdict on our
    /// certificate (see [`Dialer::confirm_tls`]): `Ok` only for a tunnel the
    /// edge accepted.
    pub async fn connect(
        &self,
        edge: &EdgeAddr,
        quic_bad: bool,
        timeout: Duration,
    ) -> Result<Dialed, TunnelError> {
        let started = std::time::Instant::now();
        match self.dial_within(edge, quic_bad, timeout).await? {
            Dialed::Tls(mut s) => {
                Self::confirm_tls(&mut s, started.elapsed()).await?;
                Ok(Dialed::Tls(s))
            }
            quic => Ok(quic),
        }
    }
}

/// The winner of [`race`].
#[derive(Debug)]
pub enum Won<Q, T> {
    Quic(Q),
    Tls(T),
}

/// Happy eyeballs: `quic` runs alone for `head_start` (or until it fails),
/// then `tls()` races it; the first success wins. Each future is polled
/// only until it has completed, never after. When both fail, the QUIC error
/// is reported unless the TLS one says more (the TLS layer answered: an
/// identity refusal, an alert), since a refused TCP port says little when
/// the edge may serve QUIC alone; QUIC silent and TCP refused or failing is
/// `Unreachable`. QUIC shed within its head start (the edge is up and said
/// when to come back) ends the race without TLS.
pub async fn race<Q, T, QF, TF>(
    quic: QF,
    tls: impl FnOnce() -> TF,
    head_start: Duration,
) -> Result<Won<Q, T>, TunnelError>
where
    QF: std::future::Future<Output = Result<Q, TunnelError>>,
    TF: std::future::Future<Output = Result<T, TunnelError>>,
{
    race_heard(quic, tls, head_start, std::future::pending()).await
}

/// [`race`], where `heard` resolves when the edge answered QUIC (its first
/// handshake flight came): heard within the head start, QUIC alone is
/// awaited, and TLS starts only if it then fails. UDP works both ways and
/// the edge took the handshake; it is only slow (a DR stampede queues
/// handshakes), and a TLS handshake would add to its load and double ours.
pub async fn race_heard<Q, T, QF, TF>(
    quic: QF,
    tls: impl FnOnce() -> TF,
    head_start: Duration,
    heard: impl std::future::Future<Output = ()>,
) -> Result<Won<Q, T>, TunnelError>
where
    QF: std::future::Future<Output = Result<Q, TunnelError>>,
    TF: std::future::Future<Output = Result<T, TunnelError>>,
{
    tokio::pin!(quic);
    tokio::pin!(heard);
    let quic_err = tokio::select! {
        // `quic` has not completed when this resolves (it would have won):
        // awaited alone; failing, it is followed by TLS as if it had
        // failed at once (a refused identity is asked of TLS too).
        () = &mut heard => match (&mut quic).await {
            Ok(c) => return Ok(Won::Quic(c)),
            Err(e) if e.retry_after().is_some() => return Err(e),
            Err(e) => Some(e),
        },
        r = &mut quic => match r {
            Ok(c) => return Ok(Won::Quic(c)),
            // The edge is up and shed us (a stampede): it said when to come
            // back, and a TLS handshake now would only add to its load.
            Err(e) if e.retry_after().is_some() => return Err(e),
            Err(e) => Some(e),
        },
        () = tokio::time::sleep(head_start) => None,
    };
    let tls = tls();
    tokio::pin!(tls);
    let (quic_err, tls_err) = match quic_err {
        Some(q) => match tls.await {
            Ok(s) => return Ok(Won::Tls(s)),
            Err(t) => (q, t),
        },
        None => tokio::select! {
            r = &mut quic => match r {
                Ok(c) => return Ok(Won::Quic(c)),
                // QUIC is done: only TLS is left to wait for.
                Err(q) => match tls.await {
                    Ok(s) => return Ok(Won::Tls(s)),
                    Err(t) => (q, t),
                },
            },
            r = &mut tls => match r {
                Ok(s) => return Ok(Won::Tls(s)),
                // TLS is done: only QUIC is left to wait for.
                Err(t) => match quic.await {
                    Ok(c) => return Ok(Won::Quic(c)),
                    Err(q) => (q, t),
                },
            },
        },
    };
    Err(match (quic_err, tls_err) {
        (_, t @ TunnelError::Tls(_)) => t,
        (q @ TunnelError::Timeout(_), t @ TunnelError::Io(_)) => {
            TunnelError::Unreachable(format!("QUIC: {q}; TCP: {t}"))
        }
        (q, _) => q,
    })
}

#[cfg(test)]
mod tests;
