//! The client's tunnel to an edge: one QUIC connection carrying every flow,
//! kept up by a background task (jittered backoff, moving to the next edge
//! address on failure), and the opening of one flow on it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::preamble::{self, ConnectResponse, Dest};
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::{quic, resolve_edges, TransportKind};

/// What the keeper last knew of the tunnel.
#[derive(Clone)]
pub enum TunnelState {
    Connecting,
    Up(quinn::Connection),
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

/// Shared handle to the tunnel.
pub struct Tunnel {
    state: watch::Receiver<TunnelState>,
    limits: Limits,
}

impl Tunnel {
    /// Start the keeper task; it stops when `stop` is cancelled.
    pub fn start(
        endpoint: quinn::Endpoint,
        edges: Vec<String>,
        limits: Limits,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = watch::channel(TunnelState::Connecting);
        tokio::spawn(keeper(endpoint, edges, limits.clone(), metrics, tx, stop));
        Arc::new(Self { state: rx, limits })
    }

    /// The live connection: waits while the keeper is connecting (up to the
    /// handshake timeout); fails at once if the last attempt failed.
    pub async fn connection(&self) -> Result<quinn::Connection, OpenError> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    TunnelState::Up(c) if c.close_reason().is_none() => return Ok(c.clone()),
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
    /// stream halves and any bytes the edge sent after its answer.
    pub async fn open(&self, dest: &Dest) -> Result<(Side, Bytes), OpenError> {
        let conn = self.connection().await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| OpenError::Broken(e.to_string()))?;
        send.write_chunk(preamble::encode_request(dest))
            .await
            .map_err(|e| OpenError::Broken(e.to_string()))?;
        // The edge answers within its connect timeout plus margin; bound our wait above that.
        let answer_timeout = self.limits.connect_timeout + Duration::from_secs(5);
        let answer = tokio::time::timeout(
            answer_timeout,
            read_answer(&mut recv, self.limits.preamble_bytes),
        )
        .await;
        match answer {
            Ok(Ok((resp, rest))) if resp.status == 200 => Ok((
                Side {
                    recv: RecvHalf::Quic(recv),
                    send: SendHalf::Quic(send),
                },
                rest,
            )),
            Ok(Ok((resp, rest))) => Err(OpenError::Refused {
                status: resp.status,
                refusal: resp.error,
                reason: String::from_utf8_lossy(&rest).trim().to_string(),
            }),
            Ok(Err(e)) => Err(OpenError::Broken(e)),
            Err(_) => {
                let _ = send.reset(crate::transport::stream_code::ABORTED.into());
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
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<(ConnectResponse, Bytes), String> {
    let mut buf = BytesMut::new();
    loop {
        match recv.read_chunk(limit, true).await {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            Ok(None) => return Err("edge closed the flow without an answer".into()),
            Err(e) => return Err(format!("edge reset the flow: {e}")),
        }
        match preamble::parse_response(&buf, limit) {
            Ok(Some((resp, used))) => {
                let mut rest = buf.split_off(used);
                if resp.status != 200 {
                    while rest.len() < resp.content_length.min(limit) {
                        match recv.read_chunk(limit, true).await {
                            Ok(Some(c)) => rest.extend_from_slice(&c.bytes),
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

async fn keeper(
    endpoint: quinn::Endpoint,
    edges: Vec<String>,
    limits: Limits,
    metrics: Arc<Metrics>,
    tx: watch::Sender<TunnelState>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::tunnel();
    let mut next = rand::random::<usize>();
    let mut last_error = None::<String>;
    let tunnels = metrics
        .tunnels_active
        .with_label_values(&["edge", TransportKind::Quic.as_str()]);
    while !stop.is_cancelled() {
        let (addrs, _) = resolve_edges(&edges).await;
        let mut up = None;
        let mut err = String::from("no edge address resolved");
        // Start at a random address (spreads clients), then try each in turn.
        for i in 0..addrs.len() {
            let edge = &addrs[(next + i) % addrs.len()];
            match quic::connect(
                &endpoint,
                edge.addr,
                &edge.server_name,
                limits.handshake_timeout,
            )
            .await
            {
                Ok(c) => {
                    metrics
                        .handshakes
                        .with_label_values(&["edge", "quic", "ok"])
                        .inc();
                    next = (next + i) % addrs.len();
                    up = Some((c, edge.addr));
                    break;
                }
                Err(e) => {
                    metrics
                        .handshakes
                        .with_label_values(&["edge", "quic", e.reason()])
                        .inc();
                    err = format!("{}: {e}", edge.addr);
                }
            }
        }
        match up {
            Some((conn, addr)) => {
                backoff.reset();
                last_error = None;
                info!(edge = %addr, "edge tunnel up");
                tunnels.inc();
                let since = std::time::Instant::now();
                let _ = tx.send(TunnelState::Up(conn.clone()));
                let why = tokio::select! {
                    e = conn.closed() => e.to_string(),
                    _ = stop.cancelled() => "client stopping".into(),
                };
                tunnels.dec();
                info!(edge = %addr, "edge tunnel down: {why}");
                // Move on to the next address at once; the lost one is tried last.
                next = next.wrapping_add(1);
                let _ = tx.send(TunnelState::Connecting);
                if since.elapsed() > Duration::from_secs(1) {
                    continue;
                }
                // A tunnel that dies at once (refused identity, edge restarting) backs off.
            }
            None => {
                if last_error.as_deref() != Some(err.as_str()) {
                    warn!("no edge reachable: {err}; retrying with backoff");
                    last_error = Some(err.clone());
                }
                let _ = tx.send(TunnelState::Down(err));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => break,
        }
    }
}
