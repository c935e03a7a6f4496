//! The edge's accept loops: QUIC (clients and connectors on one UDP port,
//! a stream per flow) and TLS over TCP (a client flow per connection, or a
//! multiplexed connector tunnel). Both shed excess handshakes before any
//! crypto and check that the certificate's role fits the tunnel the peer
//! asked for by ALPN.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use super::certs::{cert_watch, expired_now};
use super::client_tunnel::{self, QuicCarrier};
use super::h2_tunnel::H2Carrier;
use super::quota::Kind;
use super::registry::Link;
use super::{connector_tunnel, flow, EdgeState};
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::{close_code, mux, quic, shed, tls, TransportKind, ALPN_CONNECTOR, ALPN_H2};
use crate::trust::Role;

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

/// Accept QUIC connections until the endpoint closes; from `drain` on,
/// every new connection is refused.
pub(super) async fn quic_loop(
    state: Arc<EdgeState>,
    ep: quinn::Endpoint,
    gates: Gates,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    loop {
        let Some(incoming) = ep.accept().await else {
            return;
        };
        if drain.is_cancelled() {
            // Going away: a new tunnel is refused at once (CONNECTION_REFUSED),
            // so the peer tries another edge address instead of waiting.
            incoming.refuse();
            continue;
        }
        // Handshakes piling up (a DR stampede, or Initials from spoofed
        // addresses): ask unvalidated peers for a Retry round trip first, so
        // only peers that can receive at their address take a slot.
        // A source over its share is asked for a Retry too: an address that
        // was spoofed (to use up a NAT's share) never answers it.
        let remote = incoming.remote_address();
        let busy = gates.quic_handshakes.available_permits() < gates.handshake_slots / 2
            || gates.per_source.is_full(remote.ip());
        if busy && !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            continue;
        }
        // Shed before any crypto: refusing costs one stateless packet. The
        // role is not known yet (it is in the encrypted ClientHello): a shed
        // QUIC handshake is counted under `client`.
        let (Ok(hs), Some(source)) = (
            Arc::clone(&gates.quic_handshakes).try_acquire_owned(),
            gates.per_source.take(remote.ip()),
        ) else {
            count(&state, Role::Client, TransportKind::Quic, "shed");
            incoming.refuse();
            continue;
        };
        let span = tracing::info_span!("tunnel", transport = "quic", %remote);
        tracker.spawn(
            quic_conn(
                Arc::clone(&state),
                incoming,
                (hs, source),
                gates.clone(),
                tracker.clone(),
                drain.clone(),
            )
            .instrument(span),
        );
    }
}

async fn quic_conn(
    state: Arc<EdgeState>,
    incoming: quinn::Incoming,
    hs: (OwnedSemaphorePermit, SourceSlot),
    gates: Gates,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let q = TransportKind::Quic;
    let timeout = state.policy.load().limits.handshake_timeout;
    let mut connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!("accept failed: {e}");
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    // The ALPN is known from the ClientHello, before the certificates are
    // checked: it labels the handshake's result with the role asked for.
    let hello = async {
        match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
            Ok(Ok(hd)) => claimed_role(
                hd.downcast::<quinn::crypto::rustls::HandshakeData>()
                    .ok()
                    .and_then(|h| h.protocol)
                    .as_deref(),
            ),
            _ => Role::Client,
        }
    };
    let asked = tokio::select! {
        role = hello => role,
        () = drain.cancelled() => return,
    };
    // A handshake still running when the edge goes away is dropped: the
    // drain waits for flows, not for handshakes.
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, connecting) => r,
        () = drain.cancelled() => return,
    };
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let reason = crate::trust::classify_quic(&e);
            count(&state, asked, q, reason);
            debug!(reason, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            count(&state, asked, q, "timeout");
            return;
        }
    };
    drop(hs);
    let claimed = claimed_role(quic::alpn(&conn).as_deref());
    let peer = match quic::peer_id(&conn) {
        Ok(p) if p.role == claimed => p,
        Ok(p) => {
            count(&state, claimed, q, "wrong-role");
            warn!(peer = %p, "refused: a {} certificate on a {} tunnel", p.role.as_str(), claimed.as_str());
            conn.close(close_code::WRONG_ROLE.into(), b"wrong-role");
            return;
        }
        Err(e) => {
            count(&state, claimed, q, "no-identity");
            debug!("no identity: {e}");
            conn.close(close_code::WRONG_ROLE.into(), b"no identity");
            return;
        }
    };
    if let Some(reason) = expired_now(&state, &quic_certs(&conn), claimed) {
        count(&state, claimed, q, reason);
        conn.close(close_code::CERT_REFUSED.into(), reason.as_bytes());
        return;
    }
    let Ok(_tunnel) = Arc::clone(gates.tunnels(claimed)).try_acquire_owned() else {
        count(&state, claimed, q, "shed");
        // After the handshake the close carries a reason: when to come back.
        let why = shed::encode(shed::TUNNELS_FULL);
        conn.close(close_code::OVERLOADED.into(), why.as_bytes());
        return;
    };
    let max = state.policy.load().limits.max_tunnels_per_identity;
    let Some(_quota) = state.quotas.take(&peer.uri().into(), Kind::Tunnel, max) else {
        count(&state, claimed, q, "quota");
        warn!(peer = %peer, "refused: this identity holds {max} tunnels already (max_tunnels_per_identity)");
        conn.close(close_code::QUOTA.into(), b"quota");
        return;
    };
    count(&state, claimed, q, "ok");
    if drain.is_cancelled() {
        conn.close(close_code::GOING_AWAY.into(), b"edge going away");
        return;
    }
    quic::send_welcome(&conn).await;
    if claimed == Role::Connector {
        let closed = {
            let conn = conn.clone();
            async move { conn.closed().await.to_string() }
        };
        let certs = quic_certs(&conn);
        connector_tunnel(state, Link::Quic(conn), peer, certs, closed, drain).await;
    } else {
        let max = state.policy.load().limits.max_flows_per_tunnel;
        let certs = quic_certs(&conn);
        let carrier = QuicCarrier::new(conn, max);
        client_tunnel::run(state, carrier, peer, certs, (tracker, drain)).await;
    }
}

/// The peer's certificate chain of a QUIC connection.
fn quic_certs(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default()
}

/// Accept TLS connections until `drain`. A connection holds no handshake
/// slot until its ClientHello is in (within `client_hello_timeout`), so
/// connections that send nothing cannot keep others out; those waiting for
/// their ClientHello are bounded by [`Gates::hellos`].
pub(super) async fn tls_loop(
    state: Arc<EdgeState>,
    listener: TcpListener,
    acceptor: Arc<rustls::ServerConfig>,
    gates: Gates,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let mut errors = crate::accept::AcceptErrors::new("tls");
    // Out of descriptors: each connection refused (or the attempt) counts.
    let fd_limit = state
        .metrics
        .handshakes
        .with_label_values(&["client", "tls", "fd-limit"]);
    loop {
        let Some((tcp, remote)) = errors
            .accept(&listener, &drain, |failed| {
                if let crate::accept::Failed::OutOfDescriptors { refused } = failed {
                    fd_limit.inc_by(refused.max(1).into());
                }
            })
            .await
        else {
            return;
        };
        let hello = gates.hellos.admit();
        let span = tracing::info_span!("tunnel", transport = "tls", %remote);
        tracker.spawn(
            tls_conn(
                Arc::clone(&state),
                Arc::clone(&acceptor),
                tcp,
                remote,
                hello,
                gates.clone(),
                (tracker.clone(), drain.clone()),
            )
            .instrument(span),
        );
    }
}

async fn tls_conn(
    state: Arc<EdgeState>,
    acceptor: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    remote: SocketAddr,
    (hello_id, evicted): (u64, CancellationToken),
    gates: Gates,
    (tracker, drain): (TaskTracker, CancellationToken),
) {
    let t = TransportKind::Tls;
    let limits = state.policy.load().limits.clone();
    let _ = tcp.set_nodelay(true);
    // A peer that vanishes without a FIN or RST (power loss, a dropped
    // path) is found by TCP keepalive: flows over TLS carry no pings.
    tls::tcp_keepalive(&tcp, limits.keepalive());
    // The ClientHello within its own short deadline, holding no handshake slot.
    let hello = tokio::select! {
        r = tokio::time::timeout(limits.client_hello_timeout, tls::read_hello(tcp)) => r,
        () = evicted.cancelled() => {
            count(&state, Role::Client, t, "shed");
            return;
        }
        () = drain.cancelled() => {
            gates.hellos.done(hello_id);
            return;
        }
    };
    gates.hellos.done(hello_id);
    let (start, wants_connector) = match hello {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            count(&state, Role::Client, t, "other");
            debug!(%remote, "no usable ClientHello: {e}");
            return;
        }
        Err(_) => {
            count(&state, Role::Client, t, "timeout");
            return;
        }
    };
    // The role the peer asks for (by ALPN) labels its handshake, failed or not.
    let asked = if wants_connector {
        Role::Connector
    } else {
        Role::Client
    };
    let (Ok(hs), Some(source), Ok(_tunnel)) = (
        Arc::clone(&gates.tls_handshakes).try_acquire_owned(),
        gates.per_source.take(remote.ip()),
        Arc::clone(gates.tunnels(asked)).try_acquire_owned(),
    ) else {
        count(&state, asked, t, "shed");
        // Still before any crypto: a `user_canceled` alert tells the client
        // it was shed (it comes back after `shed::DEFAULT`, jittered), not
        // refused. A full socket buffer skips it: the close says enough.
        let _ = start.io.try_write(&shed::TLS_ALERT);
        return;
    };
    let result = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, start.into_stream(acceptor)) => r,
        () = drain.cancelled() => return,
    };
    let stream = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = crate::trust::classify_io(&e);
            count(&state, asked, t, reason);
            debug!(%remote, reason, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            count(&state, asked, t, "timeout");
            return;
        }
    };
    drop((hs, source));
    let (_, conn) = stream.get_ref();
    let claimed = claimed_role(conn.alpn_protocol());
    // A client asking for `h2` multiplexes its flows on this connection.
    let multiplexed = conn.alpn_protocol() == Some(ALPN_H2);
    let peer = match tls::peer_id(conn) {
        Ok(p) if p.role == claimed => p,
        Ok(p) => {
            count(&state, claimed, t, "wrong-role");
            warn!(peer = %p, "refused: a {} certificate on a {} tunnel", p.role.as_str(), claimed.as_str());
            if claimed == Role::Client && !multiplexed {
                // A client connection speaks HTTP: it gets the word.
                let mut stream = stream;
                let body = Refusal::WrongRole.encode_response("");
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &body).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                state.metrics.refused_unmatched(Refusal::WrongRole).inc();
            }
            return;
        }
        Err(e) => {
            count(&state, claimed, t, "no-identity");
            debug!("no identity: {e}");
            return;
        }
    };
    let peer_certs: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    if let Some(reason) = expired_now(&state, &peer_certs, claimed) {
        count(&state, claimed, t, reason);
        return;
    }
    let limits_now = state.policy.load().limits.clone();
    let (kind, max) = if claimed == Role::Connector || multiplexed {
        (Kind::Tunnel, limits_now.max_tunnels_per_identity)
    } else {
        (Kind::Flow, limits_now.max_flows_per_identity)
    };
    let Some(quota) = state.quotas.take(&peer.uri().into(), kind, max) else {
        count(&state, claimed, t, "quota");
        debug!(peer = %peer, "refused: over this identity's quota");
        if claimed != Role::Connector && !multiplexed {
            // A client flow connection: answered `quota` like a QUIC flow.
            let mut stream = stream;
            let _ = tokio::io::AsyncWriteExt::write_all(
                &mut stream,
                &Refusal::Quota.encode_response(""),
            )
            .await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            state.metrics.refused_unmatched(Refusal::Quota).inc();
        }
        return;
    };
    count(&state, claimed, t, "ok");
    if claimed == Role::Connector {
        let _quota = quota;
        let certs: Vec<CertificateDer<'static>> = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        match mux::client_side(stream, &limits).await {
            Ok((link, driver)) => {
                let closed = tokio::spawn(driver);
                let closed = async move { closed.await.unwrap_or_else(|e| e.to_string()) };
                connector_tunnel(state, Link::H2(link), peer, certs, closed, drain).await;
            }
            Err(e) => debug!(peer = %peer, "connector tunnel setup failed: {e}"),
        }
        return;
    }
    if multiplexed {
        let _quota = quota;
        match H2Carrier::handshake(stream, &limits).await {
            Ok(carrier) => {
                client_tunnel::run(state, carrier, peer, peer_certs, (tracker, drain)).await;
            }
            Err(e) => debug!(peer = %peer, "{e}"),
        }
        return;
    }
    // A client: this connection is one flow.
    let Ok(permit) = Arc::clone(&state.flows).try_acquire_owned() else {
        return;
    };
    let permit = (permit, quota);
    if drain.is_cancelled() {
        return;
    }
    let tunnels = state
        .metrics
        .tunnels_active
        .with_label_values(&["client", t.as_str()]);
    tunnels.inc();
    let certs: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let (r, w) = tokio::io::split(stream);
    let side = Side {
        recv: RecvHalf::io(Box::new(r)),
        send: SendHalf::Io(Box::new(w)),
    };
    let id = state.next_id();
    let span = tracing::debug_span!("flow", id, dest = tracing::field::Empty);
    // A certificate no longer accepted (a trust reload, its expiry, or
    // `cert_grace` ending as DR leaves `on`) ends its flow, as over QUIC.
    let cert_refused = CancellationToken::new();
    let watch = {
        let (state, cert_refused) = (Arc::clone(&state), cert_refused.clone());
        tokio::spawn(async move {
            let _ = cert_watch(state, certs).await;
            cert_refused.cancel();
        })
    };
    flow::serve(
        Arc::clone(&state),
        Arc::new(peer),
        id,
        (side, flow::Ask::preamble()),
        permit,
        flow::FromTunnel {
            cert_refused,
            stalls: None,
        },
    )
    .instrument(span)
    .await;
    watch.abort();
    tunnels.dec();
}
