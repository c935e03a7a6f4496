//! The edge's side of a connector tunnel, either transport: registered for
//! flows while it lives, taken out when a newer tunnel of the same identity
//! comes, closed when a trust reload refuses its certificate, and told to
//! go away when the edge drains.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::certs;
use super::registry::{ConnectorTunnel, Link};
use super::EdgeState;
use crate::transport::close_code;
use crate::trust::SpiffeId;

/// Register a connector tunnel (either transport) until `closed` resolves.
/// It is taken out when a newer tunnel of the same identity arrives (a
/// restarted connector), closed when a trust reload no longer accepts its
/// certificate (a revoked connector), and at `drain` closed with
/// `GOING_AWAY` (QUIC) or GOAWAY (HTTP/2) once no flow runs on the edge
/// (see `go_away`).
pub(super) async fn connector_tunnel(
    state: Arc<EdgeState>,
    link: Link,
    peer: SpiffeId,
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    closed: impl std::future::Future<Output = String>,
    drain: CancellationToken,
) {
    let Some((group, known)) = group_of(&state, &peer) else {
        return;
    };
    let kind = link.kind();
    let t = new_tunnel(&state, &peer, &group, link);
    let m = &state.metrics;
    let tunnels = m
        .tunnels_active
        .with_label_values(&["connector", kind.as_str()]);
    // The group label comes from the peer's certificate: count only groups the
    // config names, so labels stay bounded by the config.
    let connected = known.then(|| m.connectors_connected.with_label_values(&[group.as_str()]));
    tunnels.inc();
    if let Some(c) = &connected {
        c.inc();
    }
    state.registry.add(Arc::clone(&t));
    state.update_ready();
    info!(peer = %peer, transport = kind.as_str(), "connector tunnel up");
    // Counted as connected (and routable) until this is false.
    let mut counted = true;
    let uncount = |counted: &mut bool| {
        if std::mem::take(counted) {
            state.registry.remove(&group, t.id);
            state.update_ready();
            tunnels.dec();
            if let Some(c) = &connected {
                c.dec();
            }
        }
    };
    let mut trust_changed = state.trust_changed.subscribe();
    tokio::pin!(closed);
    let why = loop {
        tokio::select! {
            why = &mut closed => break why,
            () = t.superseded.cancelled(), if counted => {
                // The old tunnel of a restarted connector is dead but not yet
                // timed out: it takes no flow and counts no more; it ends
                // by itself (its running flows first).
                uncount(&mut counted);
                info!(peer = %peer, transport = kind.as_str(), "connector tunnel superseded by a newer tunnel of the same identity");
            }
            Ok(()) = trust_changed.changed() => {
                if let Err(reason) = certs::still_accepted(&state, &certs, crate::trust::Role::Connector) {
                    uncount(&mut counted);
                    t.link.close(close_code::CERT_REFUSED, reason);
                    break format!("certificate no longer accepted after a trust reload: {reason}");
                }
            }
            () = drain.cancelled() => {
                go_away(&state, &t).await;
                uncount(&mut counted);
                // HTTP/2: the last handle on the link goes with `t`, and the
                // connection ends with a GOAWAY.
                drop(t);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), &mut closed).await;
                info!(peer = %peer, transport = kind.as_str(), "connector tunnel down: edge going away");
                return;
            }
        }
    };
    uncount(&mut counted);
    info!(peer = %peer, transport = kind.as_str(), "connector tunnel down: {why}");
}

/// The group a connector's certificate names, and whether the config names
/// it as a DR connector group (only those get a metric label); `None`,
/// warned, for an identity without a group.
fn group_of(state: &EdgeState, peer: &SpiffeId) -> Option<(String, bool)> {
    let Some(group) = peer.group.clone() else {
        warn!(peer = %peer, "connector identity without a group; tunnel ignored");
        return None;
    };
    let known = state
        .policy
        .load()
        .source
        .connector_groups
        .iter()
        .any(|g| g.name == group && g.dr);
    if !known {
        warn!(peer = %peer, "connector of group `{group}`, which is not a DR connector group here: it will carry no flows");
    }
    Some((group, known))
}

/// A new tunnel of `peer` on `link`, with no flow yet.
fn new_tunnel(state: &EdgeState, peer: &SpiffeId, group: &str, link: Link) -> Arc<ConnectorTunnel> {
    Arc::new(ConnectorTunnel {
        id: state.next_id(),
        peer: peer.clone(),
        group: group.to_string(),
        link,
        active: Default::default(),
        superseded: CancellationToken::new(),
        suspect_until: Default::default(),
        stalls: {
            let l = &state.policy.load().limits;
            Arc::new(crate::stall::Stalls::new(
                l.effective_tunnel_window(),
                l.flow_window,
            ))
        },
        shares: Default::default(),
    })
}

/// A draining edge's goodbye to one connector tunnel. It stays registered
/// while any flow runs on this edge, so a flow that crossed a client's
/// going-away notice is still carried; once none runs (or the drain
/// deadline aborted them), the QUIC tunnel is closed with `GOING_AWAY`.
async fn go_away(state: &EdgeState, t: &ConnectorTunnel) {
    use std::sync::atomic::Ordering;
    let idle = async {
        while (state.metrics.flows_active.get() > 0 || t.active.load(Ordering::Relaxed) > 0)
            && !t.link.is_closed()
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        () = idle => {}
        () = state.abort.cancelled() => {}
    }
    t.link.go_away();
}
