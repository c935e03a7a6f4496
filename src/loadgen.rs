//! `lifeboat loadgen`: one or many clients (each its own tunnel, with the
//! client certificate of a client config) against a real edge. Reports
//! flows/s, flow-setup latency percentiles, throughput and refusals by
//! `Lifeboat-Error` word. Every run is bounded in flow count and in time and
//! stops by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::client::tunnel::{OpenError, Tunnel};
use crate::config::{self, ClientConfig, TransportChoice};
use crate::metrics::Metrics;
use crate::preamble::Dest;
use crate::splice::RecvHalf;
use crate::transport::dial::{Dialer, HEAD_START};
use crate::transport::{quic, tls, ALPN_CLIENT};
use crate::trust::Trust;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Dest,
    /// Flows to open in all (the run also stops at `duration`).
    pub flows: u64,
    /// Flows in progress at once.
    pub concurrency: usize,
    /// Separate clients (tunnels) the flows are spread over.
    pub clients: usize,
    pub duration: Duration,
    /// If set, each flow sends `GET <path>` and reads the answer to its end.
    pub http_get: Option<String>,
    /// Keep each opened flow idle this long before closing it.
    pub hold: Duration,
    pub transport: Option<TransportChoice>,
}

/// What happened.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub flows_ok: u64,
    pub flows_failed: u64,
    pub seconds: f64,
    pub flows_per_second: f64,
    pub setup_p50_us: f64,
    pub setup_p90_us: f64,
    pub setup_p99_us: f64,
    pub setup_max_us: f64,
    pub bytes: u64,
    pub megabits_per_second: f64,
    pub refusals: BTreeMap<String, u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flows: {} ok, {} failed in {:.2} s ({:.0} flows/s)",
            self.flows_ok, self.flows_failed, self.seconds, self.flows_per_second
        )?;
        writeln!(
            f,
            "flow setup: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
            self.setup_p50_us, self.setup_p90_us, self.setup_p99_us, self.setup_max_us
        )?;
        if self.bytes > 0 {
            writeln!(
                f,
                "received: {} bytes ({:.0} Mbit/s)",
                self.bytes, self.megabits_per_second
            )?;
        }
        for (word, n) in &self.refusals {
            writeln!(f, "refused {word}: {n}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    setups: Vec<Duration>,
    failed: u64,
    bytes: u64,
    refusals: BTreeMap<String, u64>,
}

/// Run the load described by `opts` with the identity and edges of `client_config`.
pub async fn run(client_config: &Path, opts: Options) -> anyhow::Result<Report> {
    let cfg: ClientConfig = config::load(client_config)?;
    let trust = Trust::load(cfg.tls.files(), &cfg.trust_domain)
        .with_context(|| format!("loading [tls] of {}", client_config.display()))?;
    let metrics = Arc::new(Metrics::new("client"));
    let stop = CancellationToken::new();
    let mut tunnels = Vec::new();
    for _ in 0..opts.clients.max(1) {
        let endpoint =
            quic::client_endpoint("0.0.0.0:0".parse()?, &trust, ALPN_CLIENT, &cfg.limits, 0)?;
        let dialer = Dialer {
            choice: opts.transport.unwrap_or(cfg.transport),
            quic: endpoint,
            tls: tls::connector(&trust, ALPN_CLIENT),
            timeout: cfg.limits.handshake_timeout,
            head_start: HEAD_START,
        };
        tunnels.push(Tunnel::start_with_dns(
            dialer,
            cfg.edges.clone(),
            &cfg.dns,
            cfg.limits.clone(),
            Arc::clone(&metrics),
            stop.clone(),
        ));
    }
    // Wait for every tunnel (bounded by the handshake timeout); a client
    // that cannot reach an edge is reported, not fatal.
    let mut tally = Tally::default();
    let mut up = Vec::with_capacity(tunnels.len());
    for t in &tunnels {
        match t.current().await {
            Ok(_) => up.push(Arc::clone(t)),
            Err(e) => {
                tracing::warn!("a client could not reach an edge: {e}");
                *tally.refusals.entry("unreachable".into()).or_default() += 1;
            }
        }
    }
    let tally = Arc::new(Mutex::new(tally));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut workers = tokio::task::JoinSet::new();
    let workers_n = if up.is_empty() {
        0
    } else {
        opts.concurrency.max(1)
    };
    for w in 0..workers_n {
        let tunnel = Arc::clone(&up[w % up.len()]);
        let (tally, next, opts) = (Arc::clone(&tally), Arc::clone(&next), opts.clone());
        workers.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < opts.flows
                && Instant::now() < deadline
            {
                let t0 = Instant::now();
                let left = deadline.saturating_duration_since(t0);
                let r = tokio::time::timeout(left, one_flow(&tunnel, &opts, t0)).await;
                let mut t = tally.lock().await;
                match r {
                    Ok(Ok((setup, bytes))) => {
                        t.setups.push(setup);
                        t.bytes += bytes;
                    }
                    Ok(Err(FlowError::Refused(word))) => {
                        t.failed += 1;
                        *t.refusals.entry(word).or_default() += 1;
                    }
                    Ok(Err(FlowError::Other)) | Err(_) => t.failed += 1,
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    // Close every tunnel (CONNECTION_CLOSE), so the edge stops counting them now.
    for t in &tunnels {
        t.close().await;
    }
    let mut t = std::mem::take(&mut *tally.lock().await);
    t.setups.sort();
    let pct = |q: f64| -> f64 {
        if t.setups.is_empty() {
            return 0.0;
        }
        let i = ((t.setups.len() as f64 - 1.0) * q).round() as usize;
        t.setups[i].as_secs_f64() * 1e6
    };
    Ok(Report {
        flows_ok: t.setups.len() as u64,
        flows_failed: t.failed,
        seconds: secs,
        flows_per_second: t.setups.len() as f64 / secs,
        setup_p50_us: pct(0.50),
        setup_p90_us: pct(0.90),
        setup_p99_us: pct(0.99),
        setup_max_us: pct(1.0),
        bytes: t.bytes,
        megabits_per_second: t.bytes as f64 * 8.0 / secs / 1e6,
        refusals: t.refusals,
    })
}

enum FlowError {
    Refused(String),
    Other,
}

async fn one_flow(
    tunnel: &Tunnel,
    opts: &Options,
    t0: Instant,
) -> Result<(Duration, u64), FlowError> {
    let (mut side, _early) = match tunnel.open(&opts.target).await {
        Ok(x) => x,
        Err(OpenError::Refused {
            refusal, status, ..
        }) => {
            let word = refusal.map_or_else(|| format!("status-{status}"), |r| r.word().to_string());
            return Err(FlowError::Refused(word));
        }
        Err(OpenError::NoTunnel(_)) => return Err(FlowError::Refused("unreachable".into())),
        Err(_) => return Err(FlowError::Other),
    };
    let setup = t0.elapsed();
    let mut bytes = 0u64;
    if let Some(path) = &opts.http_get {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            opts.target
        );
        side.send
            .write(Bytes::from(req))
            .await
            .map_err(|_| FlowError::Other)?;
        bytes = drain(&mut side.recv).await?;
    }
    if !opts.hold.is_zero() {
        tokio::time::sleep(opts.hold).await;
    }
    let _ = side.send.finish().await;
    Ok((setup, bytes))
}

async fn drain(recv: &mut RecvHalf) -> Result<u64, FlowError> {
    let mut n = 0u64;
    loop {
        match recv.read_chunk().await {
            Ok(Some(c)) => n += c.len() as u64,
            Ok(None) => return Ok(n),
            Err(_) => return Err(FlowError::Other),
        }
    }
}
