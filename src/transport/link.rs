//! A tunnel that flows are opened on, whatever carries it: a QUIC
//! connection (a bidirectional stream per flow) or an HTTP/2 connection over
//! TLS (`mux`, a stream per flow). The edge holds one per connector tunnel;
//! the client one towards its edge.

use std::time::Duration;

use bytes::Bytes;

use super::connect::{self, Early, OpenError};
use super::half::{RecvHalf, SendHalf, Side};
use super::mux::MuxLink;
use super::{close_code, TransportKind};
use crate::preamble::Dest;

/// One tunnel, on either transport.
#[derive(Clone)]
pub enum Link {
    Quic(quinn::Connection),
    H2(MuxLink),
}

impl Link {
    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::Quic(c) => c.close_reason().is_some(),
            Self::H2(m) => m.is_closed(),
        }
    }

    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            Self::H2(_) => TransportKind::Tls,
        }
    }

    /// Datagrams received on the tunnel so far: QUIC's sign of life from a
    /// peer that acknowledges what it got. `None` over HTTP/2 (TCP
    /// acknowledges below us).
    pub fn datagrams_in(&self) -> Option<u64> {
        match self {
            Self::Quic(c) => Some(c.stats().udp_rx.datagrams),
            Self::H2(_) => None,
        }
    }

    /// The tunnel's round-trip estimate (QUIC).
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            Self::Quic(c) => Some(c.rtt()),
            Self::H2(_) => None,
        }
    }

    /// Whether `self` and `other` are the same tunnel.
    pub fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Quic(a), Self::Quic(b)) => a.stable_id() == b.stable_id(),
            (Self::H2(a), Self::H2(b)) => a.id() == b.id(),
            _ => false,
        }
    }

    /// End the tunnel now with `code` (QUIC) and `reason`; its flows break.
    pub fn close(&self, code: u32, reason: &str) {
        match self {
            Self::Quic(c) => c.close(code.into(), reason.as_bytes()),
            Self::H2(m) => m.kill(),
        }
    }

    /// Tell the peer this end is going away, once no flow needs the tunnel:
    /// a QUIC tunnel closes with `GOING_AWAY`; an HTTP/2 one sends its
    /// GOAWAY when its last handle is dropped.
    pub fn go_away(&self) {
        if let Self::Quic(c) = self {
            c.close(close_code::GOING_AWAY.into(), b"edge going away");
        }
    }

    /// Open a flow stream towards the connector (the edge's side of a
    /// connector tunnel): the first bytes written are the flow header.
    pub async fn open(&self) -> std::io::Result<Side> {
        match self {
            Self::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(std::io::Error::other)?;
                Ok(Side {
                    recv: RecvHalf::Quic(recv),
                    send: SendHalf::Quic(send),
                })
            }
            Self::H2(m) => m.open().await.map_err(std::io::Error::other),
        }
    }

    /// Open a flow to `dest` as the client (see `connect`): the edge's
    /// answer within `answer_timeout`, its head within `limit` bytes; the
    /// flow's halves and any bytes the edge sent after its answer. The
    /// app's first bytes (`early`) go out before the answer.
    pub async fn connect(
        &self,
        dest: &Dest,
        limit: usize,
        answer_timeout: Duration,
        early: &mut Early<'_>,
    ) -> Result<(Side, Bytes), OpenError> {
        match self {
            Self::Quic(c) => connect::quic(c, dest, limit, answer_timeout, early).await,
            Self::H2(m) => connect::h2(m, dest, limit, answer_timeout, early).await,
        }
    }

    /// Log the QUIC path's figures at debug (when a tunnel ends).
    pub fn log_path(&self) {
        if let Self::Quic(conn) = self {
            let st = conn.stats().path;
            tracing::debug!(
                mtu = st.current_mtu,
                lost = st.lost_packets,
                cwnd = st.cwnd,
                congestion_events = st.congestion_events,
                sent = st.sent_packets,
                "QUIC path"
            );
        }
    }
}
