//! The client's way to an edge, kept up by a background keeper (jittered
//! backoff, moving to the next edge address on failure). Over QUIC, one
//! connection carries every flow as a stream. Over TLS (configured, or
//! `auto` when QUIC does not come up within its head start), each flow is
//! its own TLS connection to the same edge, resumed from a session ticket;
//! the keeper re-probes QUIC in the background and moves back when it works.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::{DnsSection, Limits, TransportChoice};
use crate::metrics::Metrics;
use crate::preamble::{self, ConnectResponse, Dest};
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::dial::{Dialed, Dialer};
use crate::transport::resolve::{failover_order, EdgeWatch};
use crate::transport::EdgeAddr;

/// What the keeper last knew of the way to an edge.
#[derive(Clone)]
pub enum TunnelState {
    Connecting,
    /// A QUIC connection carrying every flow.
    Quic(quinn::Connection),
    /// Flows dial this edge over TLS, one connection each.
    Tls(EdgeAddr),
    Down(String),
}

/// Why a flow could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no tunnel to an edge: {0}")]
    NoTunnel(String),
    #[error("edge refused: {status} {}", .refusal.map_or("", |r| r.word()))]
    Refused {
        status: u16,
        refusal: Option<Refusal>,
        reason: String,
    },
    #[error("tunnel failed while opening the flow: {0}")]
    Broken(String),
}

/// Shared handle to the way to an edge.
pub struct Tunnel {
    state: watch::Receiver<TunnelState>,
    limits: Limits,
    dialer: Dialer,
    /// A TLS flow could not reach its edge: the keeper moves on.
    tls_failed: Notify,
}

impl Tunnel {
    /// Start the keeper task; `edges` names resolve through `[dns]`
    /// (`nameservers`, else the system resolver) and are re-resolved at the
    /// TTL. It stops when `stop` is cancelled.
    pub fn start_with_dns(
        dialer: Dialer,
        edges: Vec<String>,
        dns: &DnsSection,
        limits: Limits,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = watch::channel(TunnelState::Connecting);
        let t = Arc::new(Self {
            state: rx,
            limits,
            dialer,
            tls_failed: Notify::new(),
        });
        tokio::spawn(keeper(
            Arc::clone(&t),
            edges,
            dns.clone(),
            metrics,
            tx,
            stop,
        ));
        t
    }

    /// The current way to the edge: waits while the keeper is connecting
    /// (up to the handshake timeout); fails at once if the last attempt failed.
    pub async fn current(&self) -> Result<TunnelState, OpenError> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    TunnelState::Quic(c) if c.close_reason().is_none() => {
                        return Ok(TunnelState::Quic(c.clone()))
                    }
                    TunnelState::Tls(e) => return Ok(TunnelState::Tls(e.clone())),
                    TunnelState::Down(e) => return Err(OpenError::NoTunnel(e.clone())),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(OpenError::NoTunnel("client stopping".into()));
                }
            }
        };
        match tokio::time::timeout(self.limits.handshake_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(OpenError::NoTunnel("no edge answered in time".into())),
        }
    }

    /// Open a flow to `dest`: CONNECT preamble, the edge's answer, then the
    /// flow's halves and any bytes the edge sent after its answer.
    pub async fn open(&self, dest: &Dest) -> Result<(Side, Bytes), OpenError> {
        let mut side = match self.current().await? {
            TunnelState::Quic(conn) => {
                let (send, recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| OpenError::Broken(e.to_string()))?;
                Side {
                    recv: RecvHalf::Quic(recv),
                    send: SendHalf::Quic(send),
                }
            }
            TunnelState::Tls(edge) => match self.dialer.dial_tls(&edge).await {
                Ok(s) => {
                    crate::transport::tls::tcp_keepalive(s.get_ref().0, self.limits.keepalive());
                    let (r, w) = tokio::io::split(s);
                    Side {
                        recv: RecvHalf::io(Box::new(r)),
                        send: SendHalf::Io(Box::new(w)),
                    }
                }
                Err(e) => {
                    self.tls_failed.notify_one();
                    return Err(OpenError::Broken(e.to_string()));
                }
            },
            _ => return Err(OpenError::NoTunnel("no edge".into())),
        };
        side.send
            .write(preamble::encode_request(dest))
            .await
            .map_err(|e| OpenError::Broken(e.to_string()))?;
        // The edge answers within its connect timeout plus margin; bound our wait above that.
        let answer_timeout = self.limits.connect_timeout + Duration::from_secs(5);
        let answer = tokio::time::timeout(
            answer_timeout,
            read_answer(&mut side.recv, self.limits.preamble_bytes),
        )
        .await;
        match answer {
            Ok(Ok((resp, rest))) if resp.status == 200 => Ok((side, rest)),
            Ok(Ok((resp, rest))) => Err(OpenError::Refused {
                status: resp.status,
                refusal: resp.error,
                reason: String::from_utf8_lossy(&rest).trim().to_string(),
            }),
            Ok(Err(e)) => {
                if matches!(side.recv, RecvHalf::Io { .. }) {
                    // A TLS flow cut before any answer (a refused certificate,
                    // a dead edge): the keeper re-checks the edge.
                    self.tls_failed.notify_one();
                }
                Err(OpenError::Broken(e))
            }
            Err(_) => {
                side.send.abort(crate::transport::stream_code::ABORTED);
                Err(OpenError::Refused {
                    status: 504,
                    refusal: Some(Refusal::UpstreamTimeout),
                    reason: "the edge did not answer in time".into(),
                })
            }
        }
    }
}

/// Read the edge's answer head; for a refusal also its one-line body.
async fn read_answer(
    recv: &mut RecvHalf,
    limit: usize,
) -> Result<(ConnectResponse, Bytes), String> {
    let mut buf = BytesMut::new();
    loop {
        match recv.read_chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) => return Err("edge closed the flow without an answer".into()),
            Err(e) => return Err(format!("edge reset the flow: {e}")),
        }
        match preamble::parse_response(&buf, limit) {
            Ok(Some((resp, used))) => {
                let mut rest = buf.split_off(used);
                if resp.status != 200 {
                    while rest.len() < resp.content_length.min(limit) {
                        match recv.read_chunk().await {
                            Ok(Some(c)) => rest.extend_from_slice(&c),
                            _ => break,
                        }
                    }
                }
                return Ok((resp, rest.freeze()));
            }
            Ok(None) => continue,
            Err(e) => return Err(format!("bad answer from edge: {e}")),
        }
    }
}

/// Try QUIC now and then (jittered, growing to a minute) until it works.
async fn reprobe_quic(dialer: &Dialer, edge: &EdgeAddr) -> quinn::Connection {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        if let Ok(c) = dialer.dial_quic(edge).await {
            return c;
        }
    }
}

/// Resolves once the edge set, not empty, no longer holds `addr` (the
/// operator took that edge out of the record): the keeper moves elsewhere.
async fn left_record(known: &mut watch::Receiver<Vec<EdgeAddr>>, addr: std::net::SocketAddr) {
    loop {
        {
            let set = known.borrow_and_update();
            if !set.is_empty() && !set.iter().any(|e| e.addr == addr) {
                return;
            }
        }
        if known.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn keeper(
    tunnel: Arc<Tunnel>,
    edges: Vec<String>,
    dns: DnsSection,
    metrics: Arc<Metrics>,
    tx: watch::Sender<TunnelState>,
    stop: CancellationToken,
) {
    let dialer = &tunnel.dialer;
    let ipv6 = dialer.choice == TransportChoice::Tls
        || dialer.quic.local_addr().is_ok_and(|a| a.is_ipv6());
    // Re-resolved at the TTL in the background; every (re)connect reads the
    // addresses known then.
    let edges = EdgeWatch::start(&edges, &dns, ipv6);
    let mut known = edges.subscribe();
    // The address last lost or failed: tried last next time.
    let mut lost: Option<std::net::SocketAddr> = None;
    let mut backoff = Backoff::tunnel();
    let mut last_error = None::<String>;
    let mut quic_bad: HashSet<std::net::SocketAddr> = HashSet::new();
    let mut ready_quic: Option<(quinn::Connection, EdgeAddr)> = None;
    while !stop.is_cancelled() {
        let mut up = ready_quic.take().map(|(c, e)| (Dialed::Quic(c), e));
        let mut err = String::from("no edge address resolved");
        if up.is_none() {
            // Start at a random address (spreads clients), the lost one
            // last; on a failed connect move to the next at once.
            let addrs = failover_order(&known.borrow_and_update(), lost, rand::random());
            for edge in &addrs {
                let started = std::time::Instant::now();
                let attempt = tokio::select! {
                    r = dialer.dial(edge, quic_bad.contains(&edge.addr)) => r,
                    _ = stop.cancelled() => return,
                };
                // A TLS probe counts only once the edge has not refused our certificate.
                let attempt = match attempt {
                    Ok(Dialed::Tls(mut probe)) => {
                        Dialer::confirm_tls(&mut probe, started.elapsed())
                            .await
                            .map(|()| Dialed::Tls(probe))
                    }
                    other => other,
                };
                match attempt {
                    Ok(d) => {
                        up = Some((d, edge.clone()));
                        break;
                    }
                    Err(e) => {
                        let kind = dialer.failed_kind(quic_bad.contains(&edge.addr), &e);
                        metrics
                            .handshakes
                            .with_label_values(&["edge", kind.as_str(), e.reason()])
                            .inc();
                        err = format!("{}: {e}", edge.addr);
                        lost = Some(edge.addr);
                    }
                }
            }
        }
        let Some((dialed, edge)) = up else {
            if last_error.as_deref() != Some(err.as_str()) {
                warn!("no edge reachable: {err}; retrying with backoff");
                last_error = Some(err.clone());
            }
            let _ = tx.send(TunnelState::Down(err));
            // Ask DNS again; a changed edge set is tried at once.
            edges.refresh();
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                Ok(()) = known.changed() => {}
                _ = stop.cancelled() => break,
            }
            continue;
        };
        let kind = dialed.kind();
        metrics
            .handshakes
            .with_label_values(&["edge", kind.as_str(), "ok"])
            .inc();
        last_error = None;
        let since = std::time::Instant::now();
        let tunnels = metrics
            .tunnels_active
            .with_label_values(&["edge", kind.as_str()]);
        tunnels.inc();
        info!(edge = %edge.addr, transport = kind.as_str(), "edge tunnel up");
        let why = match dialed {
            Dialed::Quic(conn) => {
                quic_bad.remove(&edge.addr);
                let _ = tx.send(TunnelState::Quic(conn.clone()));
                let why = tokio::select! {
                    e = conn.closed() => e.to_string(),
                    // Running flows keep the old connection open through their streams.
                    _ = left_record(&mut known, edge.addr) => "the edge address left the record".into(),
                    _ = stop.cancelled() => "client stopping".into(),
                };
                let st = conn.stats().path;
                tracing::debug!(
                    mtu = st.current_mtu,
                    lost = st.lost_packets,
                    cwnd = st.cwnd,
                    congestion_events = st.congestion_events,
                    sent = st.sent_packets,
                    "QUIC path"
                );
                why
            }
            Dialed::Tls(probe) => {
                // The handshake proved the edge reachable; flows dial their own.
                drop(probe);
                if dialer.choice == TransportChoice::Auto && quic_bad.insert(edge.addr) {
                    metrics
                        .transport_fallbacks
                        .with_label_values(&["client"])
                        .inc();
                    warn!(edge = %edge.addr, "QUIC did not come up within {:?}; using TLS and re-probing QUIC", dialer.head_start);
                }
                let _ = tx.send(TunnelState::Tls(edge.clone()));
                let probe = async {
                    if dialer.choice == TransportChoice::Auto {
                        reprobe_quic(dialer, &edge).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    conn = probe => {
                        info!(edge = %edge.addr, "QUIC works again; moving flows back to QUIC");
                        ready_quic = Some((conn, edge.clone()));
                        "moving to QUIC".into()
                    }
                    _ = tunnel.tls_failed.notified() => "a flow could not reach the edge over TLS".into(),
                    _ = left_record(&mut known, edge.addr) => "the edge address left the record".into(),
                    _ = stop.cancelled() => "client stopping".into(),
                }
            }
        };
        tunnels.dec();
        info!(edge = %edge.addr, transport = kind.as_str(), "edge tunnel down: {why}");
        if ready_quic.is_some() {
            continue;
        }
        // Move on to another address at once; the lost one is tried last.
        lost = Some(edge.addr);
        edges.refresh();
        let _ = tx.send(TunnelState::Connecting);
        if since.elapsed() >= Duration::from_secs(1) {
            backoff.reset();
        } else {
            // A tunnel that dies at once (refused identity, edge restarting) backs off.
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.cancelled() => break,
            }
        }
    }
}
