//! Tunnels over TLS on TCP, for networks that drop UDP: one TLS connection
//! multiplexed with HTTP/2 framing (the h2 crate). HTTP/2 gives what the
//! QUIC tunnel has: many flows on one connection, a window per flow and per
//! tunnel (so one slow reader stalls only its own flow), resets, and PING
//! frames for liveness.
//!
//! - Connector tunnels: the edge is the HTTP/2 client (it opens one stream
//!   per flow towards the connector, which dialled out and is the TLS
//!   client), the connector the HTTP/2 server. A stream's body carries the
//!   same flow header and reply as a QUIC stream (`crate::wire`), then raw
//!   bytes both ways.
//! - Client tunnels (ALPN `h2`): the lifeboat client is the HTTP/2 client
//!   and each flow is a standard CONNECT stream (RFC 9113 8.5) to the edge,
//!   answered with `:status` and the `lifeboat-error` word; any HTTP/2 client
//!   that speaks CONNECT to a proxy works the same way.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::half::{RecvHalf, SendHalf, Side};
use super::keeper::Ended;
use crate::config::Limits;

/// Largest HTTP/2 frame we accept (fewer frames per megabyte than the 16 KiB default).
const MAX_FRAME: u32 = 256 * 1024;

/// HTTP/2 windows stop at 2^31 - 1.
fn h2_window(limits: &Limits) -> u32 {
    u32::try_from(limits.effective_tunnel_window())
        .map_or(i32::MAX as u32, |w| w.min(i32::MAX as u32))
}

/// The HTTP/2 client's handle on a multiplexed tunnel: the edge's on a
/// connector tunnel, the lifeboat client's on its tunnel to an edge.
#[derive(Clone)]
pub struct MuxLink {
    send: h2::client::SendRequest<Bytes>,
    closed: CancellationToken,
    /// Ends the tunnel at once (a revoked connector).
    kill: CancellationToken,
    /// Tells tunnels apart (a flow retried on "another" tunnel).
    id: u64,
}

/// The answer to a CONNECT, and the stream's sending half.
pub type Connecting = (h2::client::ResponseFuture, h2::SendStream<Bytes>);

impl MuxLink {
    /// This tunnel's number, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Open a CONNECT stream to `authority` (a `host:port` URI), as RFC
    /// 9113 8.5 has it: no `:scheme`, no `:path`. Waits while the edge's
    /// limit of concurrent streams is reached.
    pub async fn connect(&self, authority: http::Uri) -> Result<Connecting, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::CONNECT;
        *req.uri_mut() = authority;
        send.send_request(req, false)
    }

    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// End the tunnel now: its flows break.
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// Resolves when the tunnel ends.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Open a flow stream: the first bytes written are the flow header; the
    /// first bytes read are the connector's reply.
    pub async fn open(&self) -> Result<Side, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri("https://lifeboat/flow")
            .body(())
            .expect("static request parts are valid");
        let (resp, stream) = send.send_request(req, false)?;
        Ok(Side {
            recv: RecvHalf::H2Pending(Some(resp)),
            send: SendHalf::H2(stream),
        })
    }
}

/// Send a PING every `interval`; end when the peer has answered nothing for
/// `idle` (the last answer, then `interval` of quiet, then at most
/// `idle - interval` waiting for the next one).
async fn keepalive(mut pp: h2::PingPong, interval: Duration, idle: Duration) -> String {
    let wait = idle.saturating_sub(interval).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(wait, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("ping failed: {e}"),
            Err(_) => return format!("no PING answer within {idle:?}"),
        }
    }
}

/// The HTTP/2 client's side of a tunnel (the edge on a connector's
/// connection, the lifeboat client on its connection to an edge): run the
/// handshake on `io`. Returns the link and the driver future to spawn; the
/// driver sends PINGs, ends (and the link reports closed) when the tunnel
/// dies, and says why.
pub async fn client_side<T>(
    io: T,
    limits: &Limits,
) -> Result<(MuxLink, impl Future<Output = String>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(limits.flow_window)
        .initial_connection_window_size(h2_window(limits))
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(0)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = CancellationToken::new();
    let kill = CancellationToken::new();
    let pp = conn.ping_pong();
    let (interval, idle) = (limits.keepalive(), limits.idle_timeout);
    let (done, killed) = (closed.clone(), kill.clone());
    let driver = async move {
        let ka = async move {
            match pp {
                Some(pp) => keepalive(pp, interval, idle).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            r = conn => r.err().map_or_else(|| "closed".to_string(), |e| e.to_string()),
            why = ka => why,
            // Dropping the connection closes the TCP stream under it.
            () = killed.cancelled() => "closed by the edge".to_string(),
        };
        done.cancel();
        why
    };
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok((
        MuxLink {
            send,
            closed,
            kill,
            id,
        },
        driver,
    ))
}

/// The HTTP/2 server's settings on a tunnel that takes at most `streams`
/// flows at once.
pub fn server(limits: &Limits, streams: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(limits.flow_window)
        .initial_connection_window_size(h2_window(limits))
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(streams);
    b
}

/// Send PINGs on a server-side tunnel every `interval` until the peer has
/// answered nothing for `idle` (see [`keepalive`]); pending when the
/// connection gave no PING handle. Says why the tunnel died.
pub async fn server_keepalive(
    pp: Option<h2::PingPong>,
    interval: Duration,
    idle: Duration,
) -> String {
    match pp {
        Some(pp) => keepalive(pp, interval, idle).await,
        None => std::future::pending().await,
    }
}

/// Connector side: serve flow streams opened by the edge on `io`, calling
/// `on_flow` for each, until the tunnel ends or `stop` fires. Returns why it
/// ended; the edge closing the connection (its GOAWAY) is going away.
pub async fn connector_side<T, F>(
    io: T,
    limits: &Limits,
    stop: CancellationToken,
    mut on_flow: F,
) -> Ended
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Side),
{
    let mut conn = match server(limits, limits.max_flows_per_connector_tunnel)
        .handshake::<_, Bytes>(io)
        .await
    {
        Ok(c) => c,
        Err(e) => return Ended::new(format!("HTTP/2 handshake: {e}")),
    };
    let ka = server_keepalive(conn.ping_pong(), limits.keepalive(), limits.idle_timeout);
    tokio::pin!(ka);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, mut respond))) => {
                    let resp = http::Response::builder().status(200).body(()).expect("static response parts are valid");
                    match respond.send_response(resp, false) {
                        Ok(send) => on_flow(Side { recv: RecvHalf::H2(req.into_body()), send: SendHalf::H2(send) }),
                        Err(e) => tracing::debug!("cannot answer a flow stream: {e}"),
                    }
                }
                Some(Err(e)) if e.is_go_away() => return Ended::going_away(format!("the edge is going away: {e}")),
                Some(Err(e)) => return Ended::new(e.to_string()),
                None => return Ended::going_away("closed by the edge (GOAWAY)"),
            },
            why = &mut ka => return Ended::new(why),
            _ = stop.cancelled() => {
                conn.graceful_shutdown();
                // Let running flows finish on the shutting-down connection.
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                return Ended::new("draining");
            }
        }
    }
}
