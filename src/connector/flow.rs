//! One flow at the connector: read the edge's flow header, resolve
//! (`[dns] hosts` first, then the system resolver), connect within
//! `connect_timeout`, answer, splice.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::ConnectorState;
use crate::metrics::{LogGate, NO_SEGMENT};
use crate::preamble::Host;
use crate::splice::{self, RecvHalf, SendHalf, Side};
use crate::stall::{FlowStalls, Stalls};
use crate::transport::head::{self, HeadError};
use crate::transport::stream_code;
use crate::wire::{self, FailKind, FlowHeader, FlowReply};

/// Serve one flow the edge opened on a tunnel whose stalled flows are
/// `stalls`.
pub(super) async fn serve(state: Arc<ConnectorState>, mut edge: Side, stalls: Arc<Stalls>) {
    let m = &state.metrics;
    let started = Instant::now();
    let header = match tokio::time::timeout(
        state.limits.preamble_timeout,
        read_header(&mut edge.recv),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!("bad flow header from edge: {e}");
            edge.send.abort(stream_code::ABORTED);
            edge.recv.abort(stream_code::ABORTED);
            return;
        }
        Err(_) => {
            edge.send.abort(stream_code::ABORTED);
            edge.recv.abort(stream_code::ABORTED);
            return;
        }
    };
    let flow = m.flow();
    let (header, early) = header;
    let connected =
        tokio::time::timeout(state.limits.connect_timeout, connect(&state, &header)).await;
    let tcp = match connected {
        Ok(Ok(s)) => s,
        Ok(Err((kind, message))) => {
            fail(&state, &header, &mut edge.send, kind, message).await;
            return;
        }
        Err(_) => {
            let message = format!(
                "no answer from {} within {}",
                header.dest,
                humantime::format_duration(state.limits.connect_timeout)
            );
            fail(&state, &header, &mut edge.send, FailKind::Timeout, message).await;
            return;
        }
    };
    let mut out = BytesMut::with_capacity(8);
    wire::encode_flow_reply(&FlowReply::Connected, &mut out);
    if edge.send.write(out.freeze()).await.is_err() {
        return;
    }
    m.flows_total.with_label_values(&[NO_SEGMENT, "ok"]).inc();
    m.flow_setup.observe(started.elapsed().as_secs_f64());
    let _ = tcp.set_nodelay(true);
    let (r, w) = tcp.into_split();
    let mut app = Side {
        recv: RecvHalf::tcp(r),
        send: SendHalf::Tcp(w),
    };
    if !early.is_empty() && app.send.write(early.freeze()).await.is_err() {
        return;
    }
    // An app that stops reading holds the tunnel's window with this flow's
    // unread bytes: a flow stalled here counts on its tunnel, and the user
    // with the most stalled flows loses his longest stalled one when the
    // window would be spent (`crate::stall`), as at the edge.
    let stalls = FlowStalls::new(header.client.as_str().into(), [Some(stalls), None, None]);
    let outcome =
        splice::splice_counted(&mut edge, &mut app, (m, flow), &state.abort, Some(&stalls)).await;
    let reason = outcome.end.reason();
    if state.access_log {
        info!(flow = header.flow_id, client = %header.client, segment = %header.segment, dest = %header.dest,
            up = outcome.up, down = outcome.down, duration_ms = started.elapsed().as_millis() as u64, result = reason, "flow");
    }
}

/// Apps this connector cannot reach, logged at warn: a few per 10 s; the
/// rest are in `lifeboat_flows_total{result}` and counted into the next line.
static UPSTREAM_LOG: LogGate = LogGate::new(10, std::time::Duration::from_secs(10));

async fn fail(
    state: &ConnectorState,
    header: &FlowHeader,
    send: &mut SendHalf,
    kind: FailKind,
    message: String,
) {
    let word = if kind == FailKind::Timeout {
        "upstream-timeout"
    } else {
        "upstream-failed"
    };
    if let Some(held_back) = UPSTREAM_LOG.allow(Instant::now()) {
        warn!(
            flow = header.flow_id,
            dest = %header.dest,
            segment = %header.segment,
            client = %header.client,
            result = word,
            held_back,
            "cannot reach the app: {message}"
        );
    }
    state
        .metrics
        .flows_total
        .with_label_values(&[NO_SEGMENT, word])
        .inc();
    let mut out = BytesMut::with_capacity(64 + message.len());
    wire::encode_flow_reply(&FlowReply::Failed { kind, message }, &mut out);
    if send.write(out.freeze()).await.is_ok() {
        let _ = send.finish().await;
    }
}

async fn read_header(recv: &mut RecvHalf) -> Result<(FlowHeader, BytesMut), wire::WireError> {
    head::read_head(recv, wire::MAX_HEADER, wire::parse_flow_header)
        .await
        .map_err(|e| match e {
            HeadError::Cut { .. } => {
                wire::WireError::Malformed("stream ended before the flow header")
            }
            HeadError::Parse(e) => e,
            HeadError::TooLarge => wire::WireError::TooLarge,
        })
}

async fn connect(state: &ConnectorState, h: &FlowHeader) -> Result<TcpStream, (FailKind, String)> {
    let port = h.dest.port;
    let addrs: Vec<SocketAddr> = match &h.dest.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => match state.hosts.get(name.as_str()) {
            Some(ip) => vec![SocketAddr::new(*ip, port)],
            None => match tokio::net::lookup_host((name.as_str(), port)).await {
                Ok(a) => a.collect(),
                Err(e) => return Err((FailKind::Resolve, format!("cannot resolve {name}: {e}"))),
            },
        },
    };
    if addrs.is_empty() {
        return Err((FailKind::Resolve, format!("{} has no address", h.dest)));
    }
    let mut last: Option<io::Error> = None;
    for a in &addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            // Our fault, not the app's, and the same for every address.
            Err(e) if crate::accept::out_of_descriptors(&e) => {
                return Err((
                    FailKind::Other,
                    format!(
                        "the connector is out of file descriptors ({e}); {} was not tried (raise its LimitNOFILE= or `ulimit -n`)",
                        h.dest
                    ),
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no address"));
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => FailKind::Refused,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => FailKind::Unreachable,
        io::ErrorKind::TimedOut => FailKind::Timeout,
        _ => FailKind::Other,
    };
    Err((kind, format!("connect to {}: {e}", h.dest)))
}
