//! The edge's accept loops: QUIC (`quic`: clients and connectors on one UDP
//! port, a stream per flow) and TLS over TCP (`tls`: a client flow per
//! connection, a client's HTTP/2 tunnel, or a multiplexed connector tunnel).
//! Both shed excess handshakes before any crypto and check that the
//! certificate's role fits the tunnel the peer asked for by ALPN.

mod quic;
mod tls;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::certs::{cert_watch, expired_now};
use super::client_tunnel;
use super::connector_tunnel::connector_tunnel;
use super::h2_tunnel::H2Carrier;
use super::registry::Link;
use super::{flow, EdgeState};
use crate::transport::{TransportKind, ALPN_CONNECTOR};
use crate::trust::Role;
pub(super) use quic::quic_loop;
pub(super) use tls::tls_loop;

/// The permits bounding tunnels and handshakes in progress.
#[derive(Clone)]
pub(super) struct Gates {
    /// Handshakes in progress, a pool per transport (a flood of one does
    /// not shut the other).
    pub quic_handshakes: Arc<Semaphore>,
    pub tls_handshakes: Arc<Semaphore>,
    /// `max_handshakes_inflight`: above half of it in use, QUIC asks for Retry.
    pub handshake_slots: usize,
    /// Handshakes in progress per source address.
    pub per_source: Arc<PerSource>,
    /// Client tunnels (`max_tunnels`) and connector tunnels
    /// ([`CONNECTOR_TUNNELS`]): clients cannot take the connectors' pool.
    pub client_tunnels: Arc<Semaphore>,
    pub connector_tunnels: Arc<Semaphore>,
    /// TLS connections waiting for their ClientHello.
    pub hellos: Arc<Hellos>,
}

/// Connector tunnels an edge holds, apart from `max_tunnels` (a deployment
/// has a few connectors per DR connector group, one tunnel per edge
/// address each).
pub(super) const CONNECTOR_TUNNELS: usize = 1024;

impl Gates {
    /// The pool of `role`'s tunnels.
    fn tunnels(&self, role: Role) -> &Arc<Semaphore> {
        match role {
            Role::Connector => &self.connector_tunnels,
            _ => &self.client_tunnels,
        }
    }
}

/// Handshakes in progress per source IP address: at most a quarter of a
/// transport's pool each (at least 4), so that one host cannot take it all;
/// generous enough for a NAT with many users arriving at once.
pub(super) struct PerSource {
    max: usize,
    held: dashmap::DashMap<std::net::IpAddr, usize>,
}

/// One handshake of a source, given back on drop.
pub(super) struct SourceSlot {
    of: Arc<PerSource>,
    ip: std::net::IpAddr,
}

impl PerSource {
    pub fn new(handshake_slots: usize) -> Self {
        Self {
            max: (handshake_slots / 4).max(4),
            held: Default::default(),
        }
    }

    fn is_full(&self, ip: std::net::IpAddr) -> bool {
        self.held.get(&ip).is_some_and(|n| *n >= self.max)
    }

    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let mut n = self.held.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            of: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let empty = self.of.held.get_mut(&self.ip).is_some_and(|mut n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
        if empty {
            self.of.held.remove_if(&self.ip, |_, n| *n == 0);
        }
    }
}

/// TLS connections waiting for their ClientHello: at most `max`
/// ([`HELLOS_PER_HANDSHAKE`] per handshake slot), each for at most
/// `client_hello_timeout`. When full, a new connection evicts the one that
/// has waited longest: a real client sends its ClientHello one round trip
/// after connecting, so keeping the door shut takes more connections per
/// round trip than the queue holds, not a trickle.
pub(super) struct Hellos {
    max: usize,
    next: std::sync::atomic::AtomicU64,
    waiting: std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
}

impl Hellos {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next: Default::default(),
            waiting: Default::default(),
        }
    }

    /// Queue a new connection; its id and the token that evicts it.
    fn admit(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut q = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while q.len() >= self.max {
            if let Some((_, oldest)) = q.pop_front() {
                oldest.cancel();
            }
        }
        q.push_back((id, token.clone()));
        (id, token)
    }

    /// The connection's ClientHello is in (or it is gone).
    fn done(&self, id: u64) {
        let mut q = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.iter().position(|(x, _)| *x == id) {
            q.remove(i);
        }
    }
}

/// TLS connections that may wait for their ClientHello, per handshake slot.
pub(super) const HELLOS_PER_HANDSHAKE: usize = 16;

fn count(state: &EdgeState, role: Role, transport: TransportKind, result: &str) {
    state
        .metrics
        .handshakes
        .with_label_values(&[role.as_str(), transport.as_str(), result])
        .inc();
}

/// The role a peer claims by ALPN: connectors ask for `lifeboat-connector/1`,
/// everything else (`lifeboat/1`, `http/1.1`, none) is a client.
fn claimed_role(alpn: Option<&[u8]>) -> Role {
    if alpn == Some(ALPN_CONNECTOR) {
        Role::Connector
    } else {
        Role::Client
    }
}
