//! The user-side agent: local SOCKS5, HTTP CONNECT and port-forward
//! listeners whose flows ride one tunnel to an edge (`tunnel`: QUIC, or
//! HTTP/2 over TLS).

mod http;
pub mod socks5;
pub mod tunnel;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{ClientConfig, Limits};
use crate::dr::DrMode;
use crate::metrics::{LogGate, Metrics, NO_SEGMENT};
use crate::preamble::Dest;
use crate::refusal::Refusal;
use crate::role_error::{BindError, RunError};
use crate::splice::{self, RecvHalf, SendHalf, Side};
use crate::transport::dial::{Dialer, HEAD_START};
use crate::transport::{quic, stream_code, tls, ALPN_CLIENT, ALPN_H2};
use crate::trust::Trust;
use tunnel::{Early, OpenError, Tunnel};

/// What a local listener does with its connections.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    Socks,
    Http,
    Forward(Dest),
}

impl ListenerKind {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Socks => "socks",
            Self::Http => "http",
            Self::Forward(_) => "forward",
        }
    }
}

/// State shared by the client's tasks.
pub struct ClientState {
    /// Our certificate, the pinned CA and CRL; SIGHUP re-reads them.
    pub trust: Arc<Trust>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub mode: watch::Receiver<DrMode>,
    pub tunnel: Arc<Tunnel>,
    pub flows: Arc<Semaphore>,
    pub abort: CancellationToken,
}

/// A bound client, ready to run.
pub struct Client {
    state: Arc<ClientState>,
    listeners: Vec<(ListenerKind, TcpListener)>,
    stop_tunnel: CancellationToken,
}

impl Client {
    pub async fn bind(
        cfg: ClientConfig,
        file: &Path,
        mode: watch::Receiver<DrMode>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BindError> {
        let trust =
            Trust::load(cfg.tls.files(), &cfg.trust_domain).map_err(BindError::trust(file))?;
        let mut listeners = Vec::new();
        let mut wanted: Vec<(ListenerKind, SocketAddr)> = Vec::new();
        if let Some(a) = cfg.listen.socks {
            wanted.push((ListenerKind::Socks, a));
        }
        if let Some(a) = cfg.listen.http {
            wanted.push((ListenerKind::Http, a));
        }
        for f in &cfg.forwards {
            let dest = Dest::parse(&f.to).map_err(|reason| BindError::Forward {
                to: f.to.clone(),
                reason,
            })?;
            wanted.push((ListenerKind::Forward(dest), f.listen));
        }
        for (kind, addr) in wanted {
            let l = crate::transport::tcp_listener(addr).map_err(|source| BindError::Listener {
                kind: kind.as_str(),
                addr,
                source,
            })?;
            info!("listening {} {}", kind.as_str(), l.local_addr()?);
            listeners.push((kind, l));
        }
        let bind = if cfg.edges.iter().any(|e| e.starts_with('[')) {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint = quic::client_endpoint(bind, &trust, ALPN_CLIENT, &cfg.limits, 0)?;
        let dialer = Dialer {
            choice: cfg.transport,
            quic: endpoint,
            tls: tls::connector(&trust, ALPN_H2),
            timeout: cfg.limits.handshake_timeout,
            head_start: HEAD_START,
        };
        let stop_tunnel = CancellationToken::new();
        let tunnel = Tunnel::start_with_dns(
            dialer,
            cfg.edges.clone(),
            &cfg.dns,
            cfg.limits.clone(),
            Arc::clone(&metrics),
            stop_tunnel.clone(),
        );
        metrics.observe_trust(&trust);
        Ok(Self {
            state: Arc::new(ClientState {
                trust: Arc::clone(&trust),
                flows: Arc::new(Semaphore::new(cfg.limits.max_flows)),
                metrics,
                limits: cfg.limits,
                mode,
                tunnel,
                abort: CancellationToken::new(),
            }),
            listeners,
            stop_tunnel,
        })
    }

    /// Bound listener addresses by kind.
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(k, l)| l.local_addr().ok().map(|a| (k.clone(), a)))
            .collect()
    }

    pub fn state(&self) -> Arc<ClientState> {
        Arc::clone(&self.state)
    }

    pub async fn run(self, drain: CancellationToken) -> Result<(), RunError> {
        let tracker = TaskTracker::new();
        // Certificates, CA and CRL are re-read when they change on disk.
        let (trust, m) = (&self.state.trust, &self.state.metrics);
        crate::trust::watch::spawn(Arc::clone(trust), drain.clone(), Arc::clone(m), |_| {});
        for (kind, listener) in self.listeners {
            let state = Arc::clone(&self.state);
            let t = tracker.clone();
            let drain = drain.clone();
            tracker.spawn(accept_loop(state, kind, listener, t, drain));
        }
        drain.cancelled().await;
        tracker.close();
        if tokio::time::timeout(self.state.limits.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!("drain deadline passed; aborting remaining flows");
            self.state.abort.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tracker.wait()).await;
        }
        self.stop_tunnel.cancel();
        self.state.tunnel.close().await;
        info!("client stopped");
        Ok(())
    }
}

async fn accept_loop(
    state: Arc<ClientState>,
    kind: ListenerKind,
    listener: TcpListener,
    tracker: TaskTracker,
    drain: CancellationToken,
) {
    let mut errors = crate::accept::AcceptErrors::new(kind.as_str());
    loop {
        // Take a flow permit before accepting: over the bound, connections wait in the backlog.
        let permit = tokio::select! {
            p = Arc::clone(&state.flows).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = drain.cancelled() => return,
        };
        // EMFILE and friends: survived, refused, backed off (accept.rs).
        let Some((sock, peer)) = errors.accept(&listener, &drain, drop).await else {
            return;
        };
        let state = Arc::clone(&state);
        let kind = kind.clone();
        let span = tracing::debug_span!("flow", listener = kind.as_str(), %peer);
        tracker.spawn(
            async move {
                let _permit = permit;
                let _ = sock.set_nodelay(true);
                match kind {
                    ListenerKind::Socks => socks_flow(&state, sock).await,
                    ListenerKind::Http => http::flow(&state, sock).await,
                    ListenerKind::Forward(dest) => forward_flow(&state, sock, dest).await,
                }
            }
            .instrument(span),
        );
    }
}

/// Refused flows logged at warn: a few per 10 s; the rest are in
/// `lifeboat_flows_total{result}` and counted into the next line.
static REFUSAL_LOG: LogGate = LogGate::new(10, std::time::Duration::from_secs(10));

/// One warning for a flow `listener` could not open (rate-limited).
pub(crate) fn log_refused(listener: &'static str, dest: &Dest, e: &OpenError) {
    let Some(held_back) = REFUSAL_LOG.allow(Instant::now()) else {
        return;
    };
    let reason = match e {
        OpenError::Refused { reason, .. } if !reason.is_empty() => format!("{e}: {reason}"),
        _ => e.to_string(),
    };
    warn!(
        listener,
        %dest,
        result = e.word(),
        held_back,
        "flow refused: {reason}"
    );
}

/// Open a flow through the tunnel, honouring the client's own view of DR
/// mode; `early` carries the app's first bytes when it speaks first.
pub(crate) async fn open(
    state: &ClientState,
    dest: &Dest,
    early: &mut Early<'_>,
) -> Result<(Side, bytes::Bytes), OpenError> {
    if *state.mode.borrow() == DrMode::Off {
        return Err(OpenError::Refused {
            status: Refusal::DrInactive.status(),
            refusal: Some(Refusal::DrInactive),
            reason: "DR mode is off in this client's view".into(),
        });
    }
    let started = Instant::now();
    let r = state.tunnel.open(dest, early).await;
    let m = &state.metrics;
    m.flow_setup.observe(started.elapsed().as_secs_f64());
    match &r {
        Ok(_) => m.flows_total.with_label_values(&[NO_SEGMENT, "ok"]).inc(),
        Err(OpenError::Refused {
            refusal: Some(w), ..
        }) => m.refused_unmatched(*w).inc(),
        Err(_) => m
            .flows_total
            .with_label_values(&[NO_SEGMENT, "no-tunnel"])
            .inc(),
    }
    r
}

/// Splice an accepted local connection with an opened flow: `early` came
/// from the edge with its answer; `sent_up` app bytes went before it.
pub(crate) async fn carry(
    state: &ClientState,
    sock: TcpStream,
    mut edge: Side,
    early: bytes::Bytes,
    sent_up: usize,
) {
    let m = &state.metrics;
    let flow = m.flow();
    m.agent_bytes.up.inc_by(sent_up as u64);
    let (r, w) = sock.into_split();
    let mut local = Side {
        recv: RecvHalf::tcp(r),
        send: SendHalf::Tcp(w),
    };
    if !early.is_empty() && local.send.write(early).await.is_err() {
        edge.send.abort(stream_code::ABORTED);
        return;
    }
    let outcome =
        splice::splice_counted(&mut local, &mut edge, (m, flow), &state.abort, None).await;
    let reason = outcome.end.reason();
    debug!(
        up = outcome.up + sent_up as u64,
        down = outcome.down,
        result = reason,
        "flow ended"
    );
}

async fn socks_flow(state: &ClientState, mut sock: TcpStream) {
    let dest =
        match tokio::time::timeout(state.limits.preamble_timeout, socks5::handshake(&mut sock))
            .await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                debug!("SOCKS handshake: {e}");
                return;
            }
            Err(_) => return,
        };
    match open(state, &dest, &mut Early::none()).await {
        Ok((edge, early)) => {
            if socks5::reply(&mut sock, socks5::rep::SUCCEEDED)
                .await
                .is_err()
            {
                return;
            }
            carry(state, sock, edge, early, 0).await;
        }
        Err(e) => {
            let code = match &e {
                OpenError::Refused { refusal, .. } => socks5::reply_for(*refusal),
                OpenError::NoTunnel { .. } | OpenError::Broken(_) => {
                    socks5::rep::NETWORK_UNREACHABLE
                }
            };
            log_refused("socks", &dest, &e);
            let _ = socks5::reply(&mut sock, code).await;
        }
    }
}

/// A port-forward flow: the app speaks as soon as it connected, so its
/// first bytes ride with the preamble.
async fn forward_flow(state: &ClientState, sock: TcpStream, dest: Dest) {
    let mut early = Early::from_app(&sock);
    let opened = open(state, &dest, &mut early).await;
    let sent_up = early.sent().len();
    // The bytes are the stream's now: not held for the flow's life.
    drop(early);
    match opened {
        Ok((edge, early)) => carry(state, sock, edge, early, sent_up).await,
        Err(e) => log_refused("forward", &dest, &e),
    }
}
