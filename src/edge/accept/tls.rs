//! TLS tunnels over TCP: the ClientHello first (holding no handshake slot),
//! shedding before any crypto, the handshake, the peer's role and quota;
//! then a connector's HTTP/2 tunnel, a client's HTTP/2 tunnel, or one
//! client flow on the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use super::{
    cert_watch, claimed_role, client_tunnel, connector_tunnel, count, expired_now, flow, EdgeState,
    Gates, H2Carrier, Link,
};
use crate::config::Limits;
use crate::edge::quota::{Kind, QuotaGuard};
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::{mux, shed, tls, TransportKind, ALPN_H2};
use crate::trust::{Role, SpiffeId};

/// Accept TLS connections until `drain`. A connection holds no handshake
/// slot until its ClientHello is in (within `client_hello_timeout`), so
/// connections that send nothing cannot keep others out; those waiting for
/// their ClientHello are bounded by [`Gates::hellos`].
pub(in crate::edge) async fn tls_loop(
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

/// One TLS connection: its ClientHello, the handshake, the peer's role and
/// quota; then a connector's tunnel, a client's HTTP/2 tunnel, or one
/// client flow.
async fn tls_conn(
    state: Arc<EdgeState>,
    acceptor: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    remote: SocketAddr,
    hello: (u64, CancellationToken),
    gates: Gates,
    (tracker, drain): (TaskTracker, CancellationToken),
) {
    let t = TransportKind::Tls;
    let limits = state.policy.load().limits.clone();
    // Each step's future is boxed: this task lives as long as the tunnel,
    // and unboxed it would be the size of its largest step (about 14 KiB)
    // for all of that time, whatever the connection turns out to carry.
    let Some((start, asked)) = Box::pin(client_hello(
        &state,
        (tcp, remote),
        &limits,
        hello,
        &gates,
        &drain,
    ))
    .await
    else {
        return;
    };
    // The tunnel slot is held while the connection lives.
    let Some((mut stream, _tunnel)) = Box::pin(handshake(
        &state,
        (start, acceptor),
        remote,
        asked,
        &limits,
        &gates,
        &drain,
    ))
    .await
    else {
        return;
    };
    let (_, conn) = stream.get_ref();
    let claimed = claimed_role(conn.alpn_protocol());
    // A client asking for `h2` multiplexes its flows on this connection.
    let multiplexed = conn.alpn_protocol() == Some(ALPN_H2);
    // A client connection that is one flow speaks HTTP: a refusal gets the word.
    let one_flow = claimed == Role::Client && !multiplexed;
    let certs: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let admitted = Box::pin(admit(&state, &mut stream, (claimed, one_flow), &certs)).await;
    let Some((peer, quota)) = admitted else {
        return;
    };
    count(&state, claimed, t, "ok");
    if claimed == Role::Connector {
        let _quota = quota;
        match Box::pin(mux::client_side(stream, &limits)).await {
            Ok((link, driver)) => {
                let closed = tokio::spawn(driver);
                let closed = async move { closed.await.unwrap_or_else(|e| e.to_string()) };
                Box::pin(connector_tunnel(
                    state,
                    Link::H2(link),
                    peer,
                    certs,
                    closed,
                    drain,
                ))
                .await;
            }
            Err(e) => debug!(peer = %peer, "connector tunnel setup failed: {e}"),
        }
    } else if multiplexed {
        let _quota = quota;
        match Box::pin(H2Carrier::handshake(stream, &limits)).await {
            Ok(carrier) => {
                Box::pin(client_tunnel::run(
                    state,
                    carrier,
                    peer,
                    certs,
                    (tracker, drain),
                ))
                .await;
            }
            Err(e) => debug!(peer = %peer, "{e}"),
        }
    } else {
        Box::pin(serve_one_flow(state, stream, peer, certs, quota, &drain)).await;
    }
}

/// The ClientHello within its own short deadline, holding no handshake
/// slot, and the role the peer asks for by ALPN (which labels its
/// handshake, failed or not). `None`, counted, when none came.
async fn client_hello(
    state: &EdgeState,
    (tcp, remote): (TcpStream, SocketAddr),
    limits: &Limits,
    (hello_id, evicted): (u64, CancellationToken),
    gates: &Gates,
    drain: &CancellationToken,
) -> Option<(tls::Hello, Role)> {
    let t = TransportKind::Tls;
    let _ = tcp.set_nodelay(true);
    // A peer that vanishes without a FIN or RST (power loss, a dropped
    // path) is found by TCP keepalive: flows over TLS carry no pings.
    tls::tcp_keepalive(&tcp, limits.keepalive());
    let hello = tokio::select! {
        r = tokio::time::timeout(limits.client_hello_timeout, tls::read_hello(tcp)) => r,
        () = evicted.cancelled() => {
            count(state, Role::Client, t, "shed");
            return None;
        }
        () = drain.cancelled() => {
            gates.hellos.done(hello_id);
            return None;
        }
    };
    gates.hellos.done(hello_id);
    match hello {
        Ok(Ok((start, true))) => Some((start, Role::Connector)),
        Ok(Ok((start, false))) => Some((start, Role::Client)),
        Ok(Err(e)) => {
            count(state, Role::Client, t, "other");
            debug!(%remote, "no usable ClientHello: {e}");
            None
        }
        Err(_) => {
            count(state, Role::Client, t, "timeout");
            None
        }
    }
}

/// Take a handshake slot, the source's share and a slot of `asked`'s
/// tunnels (else shed, still before any crypto), then the handshake within
/// its timeout. The stream, and the tunnel slot it holds while it lives;
/// `None`, counted, when shed or failed.
async fn handshake(
    state: &EdgeState,
    (start, acceptor): (tls::Hello, Arc<rustls::ServerConfig>),
    remote: SocketAddr,
    asked: Role,
    limits: &Limits,
    gates: &Gates,
    drain: &CancellationToken,
) -> Option<(TlsStream<TcpStream>, OwnedSemaphorePermit)> {
    let t = TransportKind::Tls;
    let (Ok(hs), Some(source), Ok(tunnel)) = (
        Arc::clone(&gates.tls_handshakes).try_acquire_owned(),
        gates.per_source.take(remote.ip()),
        Arc::clone(gates.tunnels(asked)).try_acquire_owned(),
    ) else {
        count(state, asked, t, "shed");
        // Still before any crypto: a `user_canceled` alert tells the client
        // it was shed (it comes back after `shed::DEFAULT`, jittered), not
        // refused. A full socket buffer skips it: the close says enough.
        let _ = start.io.try_write(&shed::TLS_ALERT);
        return None;
    };
    let result = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, start.into_stream(acceptor)) => r,
        () = drain.cancelled() => return None,
    };
    let stream = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = crate::trust::classify_io(&e);
            count(state, asked, t, reason);
            debug!(%remote, reason, "handshake failed: {e}");
            return None;
        }
        Err(_) => {
            count(state, asked, t, "timeout");
            return None;
        }
    };
    drop((hs, source));
    Some((stream, tunnel))
}

/// The peer's identity, if its certificate's role is the one it `claimed`
/// by ALPN and is not expired, with the identity's share of tunnels (of
/// flows, for a connection that is `one_flow`). `None`, counted, otherwise;
/// a one-flow client is answered with the word.
async fn admit(
    state: &EdgeState,
    stream: &mut TlsStream<TcpStream>,
    (claimed, one_flow): (Role, bool),
    certs: &[CertificateDer<'static>],
) -> Option<(SpiffeId, QuotaGuard)> {
    let t = TransportKind::Tls;
    let peer = match tls::peer_id(stream.get_ref().1) {
        Ok(p) if p.role == claimed => p,
        Ok(p) => {
            count(state, claimed, t, "wrong-role");
            warn!(peer = %p, "refused: a {} certificate on a {} tunnel", p.role.as_str(), claimed.as_str());
            if one_flow {
                refuse_flow(state, stream, Refusal::WrongRole).await;
            }
            return None;
        }
        Err(e) => {
            count(state, claimed, t, "no-identity");
            debug!("no identity: {e}");
            return None;
        }
    };
    if let Some(reason) = expired_now(state, certs, claimed) {
        count(state, claimed, t, reason);
        return None;
    }
    let limits_now = state.policy.load().limits.clone();
    let (kind, max) = if one_flow {
        (Kind::Flow, limits_now.max_flows_per_identity)
    } else {
        (Kind::Tunnel, limits_now.max_tunnels_per_identity)
    };
    let Some(quota) = state.quotas.take(&peer.uri().into(), kind, max) else {
        count(state, claimed, t, "quota");
        debug!(peer = %peer, "refused: over this identity's quota");
        if one_flow {
            // Answered `quota` like a QUIC flow.
            refuse_flow(state, stream, Refusal::Quota).await;
        }
        return None;
    };
    Some((peer, quota))
}

/// Answer a client's one-flow connection with `r` before any flow, as a
/// QUIC flow would be answered, and count it as unmatched.
async fn refuse_flow(state: &EdgeState, stream: &mut TlsStream<TcpStream>, r: Refusal) {
    let _ = stream.write_all(&r.encode_response("")).await;
    let _ = stream.shutdown().await;
    state.metrics.refused_unmatched(r).inc();
}

/// A client's connection that is one flow: served as a flow, counted as a
/// client tunnel while it runs, ended when the certificate is no longer
/// accepted.
async fn serve_one_flow(
    state: Arc<EdgeState>,
    stream: TlsStream<TcpStream>,
    peer: SpiffeId,
    certs: Vec<CertificateDer<'static>>,
    quota: QuotaGuard,
    drain: &CancellationToken,
) {
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
        .with_label_values(&["client", TransportKind::Tls.as_str()]);
    tunnels.inc();
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
