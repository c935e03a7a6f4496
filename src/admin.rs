//! The admin listener (`[listen] admin`): `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process serves) and `GET /readyz` (the role's own
//! readiness, with the reason when not ready). Plain HTTP/1.1 on a local
//! address; bounded like everything else (connections, request time).
//!
//! Idle peers cannot starve it, so a liveness prober always gets an answer:
//! a connection must send its whole request head within [`HEADER_TIMEOUT`];
//! each connection carries one request (no keep-alive: nothing idles after
//! its answer); and at [`MAX_CONNECTIONS`] a new connection evicts the
//! oldest one not answered yet instead of waiting for a slot.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::dr::machine::LookupResult;
use crate::metrics::Metrics;

/// Admin connections held at once; at the cap a new one evicts an old one.
const MAX_CONNECTIONS: usize = 64;
/// A connection that has not sent a whole request head by then is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection is closed after this long, whatever it does (e.g. a peer
/// that does not read its answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `/readyz`: `Ok` when ready, else why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The edge's readiness. Its admin listener is bound after `Edge::bind`
/// returned, so by the time this is asked the listeners are bound and the
/// config compiled; what is left is knowing the DR mode (a fixed trigger, a
/// restored state file, or one good trigger lookup).
pub fn edge_readiness(metrics: Arc<Metrics>) -> Readiness {
    Arc::new(move || {
        if metrics.dr_mode_is_known() {
            return Ok(());
        }
        let failed: u64 = LookupResult::ALL
            .iter()
            .filter(|&&r| r != LookupResult::Ok)
            .map(|r| {
                metrics
                    .dr_trigger_lookups
                    .with_label_values(&[r.as_str()])
                    .get()
            })
            .sum();
        Err(format!(
            "DR mode not known yet: no good trigger lookup ({failed} failed) and no state restored"
        ))
    })
}

/// The connector's readiness: at least one edge tunnel is up.
pub fn connector_readiness(metrics: Arc<Metrics>) -> Readiness {
    Arc::new(move || {
        if metrics.edge_tunnels() > 0 {
            Ok(())
        } else {
            Err("no edge tunnel is up".into())
        }
    })
}

/// The client's readiness: at least one edge is reachable.
pub fn client_readiness(metrics: Arc<Metrics>) -> Readiness {
    Arc::new(move || {
        if metrics.edge_tunnels() > 0 {
            Ok(())
        } else {
            Err("no edge is reachable".into())
        }
    })
}

/// Bind the admin listener and log its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = crate::transport::tcp_listener(addr)?;
    info!("listening admin {}", l.local_addr()?);
    Ok(l)
}

/// One open admin connection, as the accept loop sees it.
struct Conn {
    id: u64,
    /// Set once its request head arrived: it is being answered.
    answered: Arc<AtomicBool>,
    close: CancellationToken,
}

/// The open connections, oldest first (at most [`MAX_CONNECTIONS`]).
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: VecDeque<Conn>,
}

impl Conns {
    /// Register a new connection. At the cap, first close the oldest one
    /// whose request has not arrived (an idle or slow peer), or else the
    /// oldest: a new prober never waits behind idle connections.
    fn admit(&mut self, stop: &CancellationToken) -> (u64, Arc<AtomicBool>, CancellationToken) {
        if self.open.len() >= MAX_CONNECTIONS {
            let idle = self
                .open
                .iter()
                .position(|c| !c.answered.load(Ordering::Relaxed));
            if let Some(old) = self.open.remove(idle.unwrap_or(0)) {
                debug!(answered = idle.is_none(), "admin connection evicted");
                old.close.cancel();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let answered = Arc::new(AtomicBool::new(false));
        let close = stop.child_token();
        self.open.push_back(Conn {
            id,
            answered: Arc::clone(&answered),
            close: close.clone(),
        });
        (id, answered, close)
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.open.iter().position(|c| c.id == id) {
            self.open.remove(i);
        }
    }
}

/// Removes a connection from [`Conns`] when its task ends, however it ends.
struct Registered {
    conns: Arc<Mutex<Conns>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(self.id);
        }
    }
}

/// Serve admin requests until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    stop: CancellationToken,
) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut errors = crate::accept::AcceptErrors::new("admin");
    loop {
        let Some((sock, _)) = errors.accept(&listener, &stop, drop).await else {
            return;
        };
        let Ok((id, answered, close)) = conns.lock().map(|mut c| c.admit(&stop)) else {
            return; // poisoned: a task panicked while holding it
        };
        let registered = Registered {
            conns: Arc::clone(&conns),
            id,
        };
        let metrics = Arc::clone(&metrics);
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let _registered = registered;
            let svc = hyper::service::service_fn(move |req| {
                answered.store(true, Ordering::Relaxed);
                let metrics = Arc::clone(&metrics);
                let ready = Arc::clone(&ready);
                async move { Ok::<_, Infallible>(answer(&req, &metrics, &ready)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                _ = close.cancelled() => {}
            }
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn answer(req: &Request<Incoming>, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n", PLAIN);
    }
    let path = req.uri().path();
    let readiness = match path {
        "/metrics" | "/readyz" => {
            let r = ready();
            metrics.ready.set(i64::from(r.is_ok()));
            r
        }
        _ => Ok(()),
    };
    match path {
        "/metrics" => text(
            StatusCode::OK,
            metrics.encode(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => match readiness {
            Ok(()) => text(StatusCode::OK, "ready\n", PLAIN),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                PLAIN,
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
            PLAIN,
        ),
    }
}
