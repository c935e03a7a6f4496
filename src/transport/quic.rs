//! QUIC endpoints (quinn): socket setup, transport parameters from
//! `[limits]`, and the peer identity of an established connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TokioRuntime, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use super::TunnelError;
use crate::config::Limits;
use crate::trust::{spiffe_id_of, Role, SpiffeId, Trust};

/// UDP socket buffer size asked of the kernel (it may grant less).
const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Unacknowledged bytes a sender keeps in flight on one connection: bounds
/// bursts (a burst larger than the peer's UDP buffer is dropped wholesale and
/// stalls every stream in loss recovery) and the memory of data sent but not
/// yet acknowledged. Receive windows (per flow) are separate.
const SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// Largest UDP payload path MTU discovery probes for. Above quinn's
/// internet default (1452) so data-centre jumbo-frame paths (and loopback)
/// get fewer, larger packets: most of QUIC's per-byte cost is per packet.
/// Not 8952: quinn-udp hands the kernel GSO batches of up to 10 segments,
/// and 10 x 8952 exceeds the 64 KiB one UDP send may carry (EMSGSIZE,
/// measured as stalled flows under load); 10 x 6500 fits. Internet paths
/// settle lower by themselves (lost probes).
const MAX_UDP_PAYLOAD: u16 = 6500;

/// The endpoint's settings. Its stateless-reset key is derived from our
/// private key (see `Trust::stateless_reset_key`), so a process restarted on
/// the same address answers its predecessor's connections with a stateless
/// reset and their peers notice at their next packet, not after
/// `idle_timeout`.
fn endpoint_config(trust: &Trust) -> EndpointConfig {
    let mut c = EndpointConfig::new(Arc::new(trust.stateless_reset_key()));
    // Connection IDs carry a keyed hash that the endpoint checks before it
    // answers an unknown one with a reset; the same key after a restart
    // makes the predecessor's IDs valid, so they are reset, not dropped.
    let cid_key = trust.connection_id_key();
    c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // Only fails for values outside QUIC's 1200..=65527 range.
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    c
}

/// Flows a peer may open at once on a new tunnel; [`StreamCredit`] raises it
/// as they are used. quinn keeps state for every stream the peer may open
/// (two map entries each), so granting `max_flows_per_tunnel` (1024) up
/// front cost about 85 KiB per idle tunnel at the edge, most of its memory.
const INITIAL_STREAM_CREDIT: u32 = 32;

/// The stream credit of one tunnel: starts at [`INITIAL_STREAM_CREDIT`] (or
/// `max` if lower) and doubles, up to `max`, whenever the flows open reach
/// half of it, so a peer opening many flows at once waits a few round trips
/// at most.
#[derive(Debug, Clone, Copy)]
pub struct StreamCredit {
    granted: u32,
    max: u32,
}

impl StreamCredit {
    pub fn new(max: u32) -> Self {
        Self {
            granted: INITIAL_STREAM_CREDIT.min(max),
            max,
        }
    }

    /// What a new tunnel grants (its transport parameter).
    pub fn initial(max: u32) -> u32 {
        Self::new(max).granted
    }

    /// After a flow was accepted with `open` flows running: the new credit
    /// if it should grow (then tell the peer with
    /// `set_max_concurrent_bi_streams`).
    pub fn grow(&mut self, open: usize) -> Option<u32> {
        let half = usize::try_from(self.granted / 2).unwrap_or(usize::MAX);
        if self.granted >= self.max || open < half {
            return None;
        }
        self.granted = self.granted.saturating_mul(2).min(self.max);
        Some(self.granted)
    }

    /// [`StreamCredit::grow`], told to the peer of `conn`.
    pub fn grow_on(&mut self, conn: &quinn::Connection, open: usize) {
        if let Some(n) = self.grow(open) {
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(n));
        }
    }
}

/// Transport parameters for one side. `incoming_bidi` is how many flows the
/// peer may open at once towards us (0 where the peer never opens any).
pub fn transport_config(limits: &Limits, incoming_bidi: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(limits.flow_window))
        .receive_window(VarInt::from_u64(limits.effective_tunnel_window()).unwrap_or(VarInt::MAX))
        .send_window(limits.effective_tunnel_window().min(SEND_WINDOW))
        .keep_alive_interval(Some(limits.keepalive()))
        .max_idle_timeout(Some(idle(limits.idle_timeout)));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

fn idle(d: Duration) -> IdleTimeout {
    // Durations past QUIC's varint range are clamped to the largest allowed.
    IdleTimeout::try_from(d).unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX))
}

/// Bind a UDP socket with large buffers for an endpoint.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the address is the unspecified v6 address.
        let _ = sock.set_only_v6(!addr.ip().is_unspecified());
    }
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// The edge's UDP socket: as [`udp_socket`], and a warning when the kernel
/// granted smaller buffers than asked (`net.core.rmem_max`/`wmem_max`): a
/// DR activation's burst of handshakes, or a fast flow, then loses packets
/// in the kernel. `deploy/sysctl/90-lifeboat.conf` raises the caps.
fn edge_udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let sock = udp_socket(addr)?;
    let s = socket2::SockRef::from(&sock);
    // Linux reports twice what it grants (the doubled bookkeeping size).
    let granted = |n: std::io::Result<usize>| n.map(|n| n / 2).unwrap_or(0);
    let (recv, send) = (granted(s.recv_buffer_size()), granted(s.send_buffer_size()));
    if recv < UDP_BUFFER || send < UDP_BUFFER {
        tracing::warn!(
            recv_buffer = recv,
            send_buffer = send,
            wanted = UDP_BUFFER,
            "the kernel capped the QUIC socket's buffers (net.core.rmem_max / net.core.wmem_max); \
             bursts of handshakes and fast flows will lose packets: install deploy/sysctl/90-lifeboat.conf"
        );
    }
    Ok(sock)
}

/// The edge's server endpoint: clients and connectors, ALPN decides the role.
pub fn server_endpoint(
    addr: SocketAddr,
    trust: &Arc<Trust>,
    limits: &Limits,
) -> Result<Endpoint, TunnelError> {
    let tls = trust.server_config(
        &[Role::Client, Role::Connector],
        &[super::ALPN_CLIENT, super::ALPN_CONNECTOR],
    );
    let crypto = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| TunnelError::Config(format!("unusable for QUIC: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(
        limits,
        StreamCredit::initial(limits.max_flows_per_tunnel),
    )));
    // Address validation costs a round trip; the edge asks for it only when
    // handshakes pile up (see the accept loop), not on every connection.
    server.migration(true);
    let socket = edge_udp_socket(addr)?;
    Ok(Endpoint::new(
        endpoint_config(trust),
        Some(server),
        socket,
        Arc::new(TokioRuntime),
    )?)
}

/// A client-side endpoint (client or connector) with its default config;
/// a connector's tunnels start with the credit [`StreamCredit`] gives
/// `incoming_bidi`.
pub fn client_endpoint(
    bind: SocketAddr,
    trust: &Arc<Trust>,
    alpn: &[u8],
    limits: &Limits,
    incoming_bidi: u32,
) -> Result<Endpoint, TunnelError> {
    let tls = trust.client_config(&[alpn]);
    let crypto = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| TunnelError::Config(format!("unusable for QUIC: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(limits, StreamCredit::initial(incoming_bidi));
    // The edge's welcome (see `connect`) and its going-away notice.
    transport.max_concurrent_uni_streams(VarInt::from_u32(2));
    // A dial to an edge that is down (or restarting) retransmits its Initial
    // after 3 x initial_rtt: 300 ms instead of RFC 9002's 1 s, so an edge
    // that starts during an attempt is reached sooner.
    transport.initial_rtt(Duration::from_millis(100));
    client.transport_config(Arc::new(transport));
    let socket = udp_socket(bind)?;
    let mut ep = Endpoint::new(endpoint_config(trust), None, socket, Arc::new(TokioRuntime))?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// The edge's word that it accepted our certificate.
const WELCOME: u8 = 1;

/// Edge side: tell an accepted peer that its certificate passed. In TLS 1.3
/// the server checks the client's certificate after the client has finished
/// its side of the handshake, so without this a refused peer would believe
/// its tunnel up until the alert arrives.
pub async fn send_welcome(conn: &quinn::Connection) {
    if let Ok(mut s) = conn.open_uni().await {
        let _ = s.write_all(&[WELCOME]).await;
        let _ = s.finish();
    }
}

/// The edge's word that it is going away (draining for a restart): new
/// flows go elsewhere, running ones finish.
pub const GOING_AWAY_NOTICE: u8 = 2;

/// Edge side: tell a peer that this edge is going away (best effort,
/// bounded: a peer that grants no stream in time learns it from the close).
pub async fn send_going_away(conn: &quinn::Connection) {
    let notice = async {
        let mut s = conn.open_uni().await.ok()?;
        s.write_all(&[GOING_AWAY_NOTICE]).await.ok()?;
        s.finish().ok()
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), notice).await;
}

/// Connect to an edge and wait for its welcome, bounded by `timeout`. A
/// refusal of our certificate comes back as the connection error (a TLS
/// alert), so it is counted under its reason, never as a tunnel up.
pub async fn connect(
    ep: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<quinn::Connection, TunnelError> {
    connect_heard(ep, addr, server_name, timeout, None).await
}

/// [`connect`], telling `heard` as soon as the edge's first handshake
/// flight came: UDP works both ways and the edge took our handshake.
pub async fn connect_heard(
    ep: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
    heard: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<quinn::Connection, TunnelError> {
    let mut connecting = ep.connect(addr, server_name)?;
    let welcomed = async {
        if let Some(heard) = heard {
            if connecting.handshake_data().await.is_ok() {
                let _ = heard.send(());
            }
        }
        let conn = connecting.await?;
        let mut s = conn.accept_uni().await?;
        let mut b = [0u8; 1];
        match s.read_exact(&mut b).await {
            Ok(()) if b[0] == WELCOME => Ok(conn),
            Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
                Err(e.into())
            }
            _ => Err(TunnelError::NoWelcome("no welcome stream".into())),
        }
    };
    match tokio::time::timeout(timeout, welcomed).await {
        Ok(r) => r,
        Err(_) => Err(TunnelError::Timeout(timeout)),
    }
}

/// The ALPN protocol a connection agreed on.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// The peer's SPIFFE identity (its certificate was verified in the handshake).
pub fn peer_id(conn: &quinn::Connection) -> Result<SpiffeId, TunnelError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| TunnelError::PeerIdentity("peer presented no certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| TunnelError::PeerIdentity("peer presented no certificate".into()))?;
    spiffe_id_of(leaf).map_err(|e| TunnelError::PeerIdentity(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::StreamCredit;

    #[test]
    fn stream_credit_doubles_at_half_use_up_to_the_max() {
        let mut c = StreamCredit::new(100);
        assert_eq!(StreamCredit::initial(100), 32);
        assert_eq!(c.grow(15), None, "under half of 32");
        assert_eq!(c.grow(16), Some(64));
        assert_eq!(c.grow(31), None);
        assert_eq!(c.grow(32), Some(100), "capped at the max");
        assert_eq!(c.grow(99), None, "at the max");
        assert_eq!(StreamCredit::initial(8), 8, "a max below the start");
        assert_eq!(StreamCredit::new(0).grow(0), None);
    }
}
