//! The admin listener (`[listen] admin`): `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process serves) and `GET /readyz` (the role's own
//! readiness, with the reason when not ready). Plain HTTP/1.1 on a local
//! address; bounded like everything else (connections, request time).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::dr::machine::LookupResult;
use crate::metrics::Metrics;

/// Concurrent admin connections.
const MAX_CONNECTIONS: usize = 64;
/// An admin connection is closed after this long, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Serve admin requests until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(e) => { debug!("admin accept: {e}"); continue; } },
            _ = stop.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let metrics = Arc::clone(&metrics);
                let ready = Arc::clone(&ready);
                async move { Ok::<_, Infallible>(answer(&req, &metrics, &ready)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
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
