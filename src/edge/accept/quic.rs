//! QUIC tunnels: one endpoint for clients and connectors; a Retry round
//! trip for unvalidated peers when handshakes pile up, shedding before any
//! crypto, then the peer's role, certificate, tunnel slot and quota.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use super::{
    claimed_role, client_tunnel, connector_tunnel, count, expired_now, EdgeState, Gates, Link,
    SourceSlot,
};
use crate::edge::client_tunnel::QuicCarrier;
use crate::edge::quota::{Kind, QuotaGuard};
use crate::transport::{close_code, quic, shed, TransportKind};
use crate::trust::{Role, SpiffeId};

/// Accept QUIC connections until the endpoint closes; from `drain` on,
/// every new connection is refused.
pub(in crate::edge) async fn quic_loop(
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

/// One QUIC connection: the handshake, then the peer's role, certificate,
/// tunnel slot and quota; then a connector's tunnel or a client's.
async fn quic_conn(
    state: Arc<EdgeState>,
    incoming: quinn::Incoming,
    hs: (OwnedSemaphorePermit, SourceSlot),
    gates: Gates,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let q = TransportKind::Quic;
    let Some(conn) = handshake(&state, incoming, hs, &drain).await else {
        return;
    };
    let claimed = claimed_role(quic::alpn(&conn).as_deref());
    // Held while the tunnel lives.
    let Some((peer, _tunnel, _quota)) = admit(&state, &conn, claimed, &gates) else {
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

/// The handshake within `handshake_timeout`, its result counted under the
/// role the peer asked for by ALPN; the handshake slot `hs` is given back
/// when it is done. `None` when it failed, or the edge went away meanwhile.
async fn handshake(
    state: &EdgeState,
    incoming: quinn::Incoming,
    hs: (OwnedSemaphorePermit, SourceSlot),
    drain: &CancellationToken,
) -> Option<quinn::Connection> {
    let q = TransportKind::Quic;
    let timeout = state.policy.load().limits.handshake_timeout;
    let mut connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!("accept failed: {e}");
            return None;
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
        () = drain.cancelled() => return None,
    };
    // A handshake still running when the edge goes away is dropped: the
    // drain waits for flows, not for handshakes.
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, connecting) => r,
        () = drain.cancelled() => return None,
    };
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let reason = crate::trust::classify_quic(&e);
            count(state, asked, q, reason);
            debug!(reason, "handshake failed: {e}");
            return None;
        }
        Err(_) => {
            count(state, asked, q, "timeout");
            return None;
        }
    };
    drop(hs);
    Some(conn)
}

/// The peer's identity, if its certificate's role is the one it `claimed`
/// by ALPN and is not expired, with a slot of that role's tunnels and the
/// identity's share of them. `None`, counted, with the connection closed
/// with its reason, otherwise.
fn admit(
    state: &EdgeState,
    conn: &quinn::Connection,
    claimed: Role,
    gates: &Gates,
) -> Option<(SpiffeId, OwnedSemaphorePermit, QuotaGuard)> {
    let q = TransportKind::Quic;
    let peer = match quic::peer_id(conn) {
        Ok(p) if p.role == claimed => p,
        Ok(p) => {
            count(state, claimed, q, "wrong-role");
            warn!(peer = %p, "refused: a {} certificate on a {} tunnel", p.role.as_str(), claimed.as_str());
            conn.close(close_code::WRONG_ROLE.into(), b"wrong-role");
            return None;
        }
        Err(e) => {
            count(state, claimed, q, "no-identity");
            debug!("no identity: {e}");
            conn.close(close_code::WRONG_ROLE.into(), b"no identity");
            return None;
        }
    };
    if let Some(reason) = expired_now(state, &quic_certs(conn), claimed) {
        count(state, claimed, q, reason);
        conn.close(close_code::CERT_REFUSED.into(), reason.as_bytes());
        return None;
    }
    let Ok(tunnel) = Arc::clone(gates.tunnels(claimed)).try_acquire_owned() else {
        count(state, claimed, q, "shed");
        // After the handshake the close carries a reason: when to come back.
        let why = shed::encode(shed::TUNNELS_FULL);
        conn.close(close_code::OVERLOADED.into(), why.as_bytes());
        return None;
    };
    let max = state.policy.load().limits.max_tunnels_per_identity;
    let Some(quota) = state.quotas.take(&peer.uri().into(), Kind::Tunnel, max) else {
        count(state, claimed, q, "quota");
        warn!(peer = %peer, "refused: this identity holds {max} tunnels already (max_tunnels_per_identity)");
        conn.close(close_code::QUOTA.into(), b"quota");
        return None;
    };
    Some((peer, tunnel, quota))
}

/// The peer's certificate chain of a QUIC connection.
fn quic_certs(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default()
}
