//! The client's way to an edge, kept up by the shared tunnel keeper
//! (`transport::keeper`): one tunnel at a time, starting at a random edge
//! address and moving to the next at once on failure or when the edge goes
//! away. Over QUIC, one connection carries every flow as a stream. Over TLS
//! (configured, or `auto` when QUIC does not come up within its head start),
//! one HTTP/2 connection carries every flow as a CONNECT stream (ALPN `h2`);
//! the keeper re-probes QUIC and moves back when it works. A flow that
//! finds no tunnel wakes the keeper (at most one dial a second).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{DnsSection, Limits, TransportChoice};
use crate::metrics::Metrics;
use crate::preamble::Dest;
use crate::refusal::Refusal;
use crate::splice::Side;
pub use crate::transport::connect::{Broken, Early, OpenError};
use crate::transport::dial::{Dialed, Dialer};
use crate::transport::keeper::{Ended, Keeper, TunnelRole};
use crate::transport::link::Link;
use crate::transport::resolve::{failover_order, EdgeWatch};
use crate::transport::{close_code, EdgeAddr};

/// Background retries of a client grow to this: a user waiting for a flow
/// wakes the keeper anyway (see [`Tunnel::current`]).
pub const RETRY_CEILING: Duration = Duration::from_secs(5);

/// What the keeper last knew of the way to an edge.
#[derive(Clone)]
pub enum TunnelState {
    Connecting,
    /// A tunnel carrying every flow: QUIC, or HTTP/2 over TLS.
    Up(Link),
    /// Why not, and the last attempt's result word.
    Down(String, &'static str),
}

/// Shared handle to the way to an edge.
pub struct Tunnel {
    state: watch::Receiver<TunnelState>,
    limits: Limits,
    dialer: Dialer,
    /// A flow is waiting while no edge is reachable: the keeper dials now.
    demand: Arc<Notify>,
    /// A flow was refused `going-away`: the keeper leaves that edge now.
    edge_going: Notify,
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
        let demand = Arc::new(Notify::new());
        let t = Arc::new(Self {
            state: rx,
            limits,
            dialer: dialer.clone(),
            demand: Arc::clone(&demand),
            edge_going: Notify::new(),
        });
        let ipv6 = dialer.choice == TransportChoice::Tls
            || dialer.quic.local_addr().is_ok_and(|a| a.is_ipv6());
        // Re-resolved at the TTL in the background; every (re)connect reads
        // the addresses known then.
        let watch = EdgeWatch::start(&edges, dns, ipv6);
        let role = ClientRole {
            tunnel: Arc::clone(&t),
            known: watch.subscribe(),
            edges: watch,
            tx,
        };
        let keeper = Keeper {
            dialer,
            metrics,
            backoff: Backoff::new(Duration::from_millis(100), RETRY_CEILING),
            demand: Some(demand),
            stop,
        };
        tokio::spawn(keeper.run(role));
        t
    }

    /// Close the QUIC endpoint (CONNECTION_CLOSE to the edge, so it stops
    /// counting our tunnel at once) and wait briefly for the close to go out.
    pub async fn close(&self) {
        self.dialer
            .quic
            .close(close_code::DONE.into(), b"client stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.dialer.quic.wait_idle()).await;
    }

    /// How long a flow waits for the keeper's tunnel: one whole attempt (the
    /// handshake, then over TLS the edge's verdict), so a flow does not give
    /// up on an attempt that is still allowed to succeed.
    fn tunnel_wait(&self) -> Duration {
        self.limits.handshake_timeout + crate::transport::dial::VERDICT_WAIT
    }

    /// The current way to the edge: waits while the keeper is connecting
    /// (up to the handshake timeout). When no edge was reachable, the flow
    /// asks the keeper to dial now and waits for that attempt's outcome.
    pub async fn current(&self) -> Result<Link, OpenError> {
        let mut rx = self.state.clone();
        let wait = async {
            let mut asked = false;
            loop {
                match &*rx.borrow_and_update() {
                    TunnelState::Up(l) if !l.is_closed() => return Ok(l.clone()),
                    TunnelState::Down(why, word) if asked => {
                        return Err(OpenError::NoTunnel {
                            why: why.clone(),
                            word,
                        })
                    }
                    TunnelState::Down(..) => {
                        self.demand.notify_one();
                        asked = true;
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(OpenError::no_tunnel("client stopping"));
                }
            }
        };
        match tokio::time::timeout(self.tunnel_wait(), wait).await {
            Ok(r) => r,
            Err(_) => Err(OpenError::NoTunnel {
                why: "no edge answered in time".into(),
                word: "timeout",
            }),
        }
    }

    /// Open a flow to `dest`: CONNECT preamble (and the app's first bytes,
    /// `early`), the edge's answer, then the flow's halves and any bytes the
    /// edge sent after its answer.
    ///
    /// A QUIC tunnel that ends before the edge answered (the edge went away,
    /// or a restarted edge reset it) is tried once more on the next tunnel
    /// instead of failing the user -- unless the app's first bytes went out
    /// on it: the edge may have passed them on, and they are not sent twice
    /// (unless they may: [`Early::replayable`]).
    pub async fn open(
        &self,
        dest: &Dest,
        early: &mut Early<'_>,
    ) -> Result<(Side, Bytes), OpenError> {
        let used = self.current().await?;
        match self.open_on(&used, dest, early).await {
            Err(OpenError::Broken(e)) if used.is_closed() && early.may_open_again() => {
                tracing::debug!(
                    "tunnel ended before the edge answered ({e}); opening on the next one"
                );
                let next = self.next_tunnel(&used).await?;
                self.open_on(&next, dest, early).await
            }
            Err(OpenError::Broken(e)) if used.is_closed() => {
                tracing::debug!(
                    bytes = early.sent().len(),
                    "tunnel ended before the edge answered ({e}); not opened again: \
                     the app's first bytes may have reached it"
                );
                Err(OpenError::Broken(e))
            }
            Err(OpenError::Refused {
                refusal: Some(Refusal::GoingAway),
                ..
            }) => {
                // The flow crossed the edge's going-away notice: it was not
                // forwarded (nor its first bytes); the keeper moves on and
                // the flow follows.
                tracing::debug!("the edge is going away; opening on the next tunnel");
                self.edge_going.notify_one();
                let next = self.next_tunnel(&used).await?;
                self.open_on(&next, dest, early).await
            }
            r => r,
        }
    }

    /// The current tunnel once it is another than `used`.
    async fn next_tunnel(&self, used: &Link) -> Result<Link, OpenError> {
        let deadline = tokio::time::Instant::now() + self.tunnel_wait();
        loop {
            let link = self.current().await?;
            if !link.same(used) {
                return Ok(link);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OpenError::no_tunnel(
                    "the edge is going away and no other tunnel came up in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn open_on(
        &self,
        link: &Link,
        dest: &Dest,
        early: &mut Early<'_>,
    ) -> Result<(Side, Bytes), OpenError> {
        // The edge answers within its connect timeout plus margin; bound our wait above that.
        let answer_timeout = self.limits.connect_timeout + Duration::from_secs(5);
        link.connect(dest, self.limits.preamble_bytes, answer_timeout, early)
            .await
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

/// The client's part of the keeper: one tunnel over the edge name's
/// addresses, published to flows through the watch.
struct ClientRole {
    tunnel: Arc<Tunnel>,
    edges: EdgeWatch,
    known: watch::Receiver<Vec<EdgeAddr>>,
    tx: watch::Sender<TunnelState>,
}

impl TunnelRole for ClientRole {
    const NAME: &'static str = "client";
    const UNREACHABLE: &'static str = "no edge reachable";

    fn targets(&mut self, lost: Option<std::net::SocketAddr>) -> Vec<EdgeAddr> {
        // A random start spreads clients; the lost address goes last.
        failover_order(&self.known.borrow_and_update(), lost, rand::random())
    }

    async fn targets_changed(&mut self) {
        if self.known.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn refresh(&mut self) {
        self.edges.refresh();
    }

    fn connecting(&mut self) {
        self.tx.send_replace(TunnelState::Connecting);
    }

    fn down(&mut self, why: &str, word: &'static str) {
        self.tx
            .send_replace(TunnelState::Down(why.to_string(), word));
    }

    fn serve(
        &mut self,
        tunnel: Dialed,
        edge: &EdgeAddr,
        moving: CancellationToken,
    ) -> impl Future<Output = Ended> + Send {
        let addr = edge.addr;
        async move {
            let (link, ending) = match tunnel.into_client_link(&self.tunnel.limits).await {
                Ok(up) => up,
                Err(e) => return Ended::new(format!("HTTP/2 handshake: {e}")),
            };
            self.tx.send_replace(TunnelState::Up(link.clone()));
            // Running flows keep the old connection open through their streams.
            let ended = tokio::select! {
                ended = ending.wait() => ended,
                () = self.tunnel.edge_going.notified() => Ended::going_away("the edge refused a flow: going away"),
                () = left_record(&mut self.known, addr) => Ended::new("the edge address left the record"),
                () = moving.cancelled() => Ended::new("client stopping"),
            };
            link.log_path();
            // New flows wait for the next tunnel, not the one going away.
            self.tx.send_replace(TunnelState::Connecting);
            ended
        }
    }
}
