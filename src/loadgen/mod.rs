//! `lifeboat loadgen`: one or many clients (each its own tunnel, with the
//! client certificate of a client config) against a real edge. Reports
//! flows/s, flow-setup latency percentiles, throughput and refusals by
//! `Lifeboat-Error` word. Every run is bounded in flow count and in time and
//! stops by itself.
//!
//! `--clients N` is N real clients arriving at once (a DR activation): each
//! starts its tunnel keeper at the same moment and opens its first flow;
//! a handshake the edge shed, a tunnel not up yet or a refused flow is
//! retried the way a client would (the keeper's backoff and the edge's
//! retry hint, then the client's backoff between attempts) until the
//! client is served or the run's time is up. One client never aborts the
//! run. Then the rest of the flows run over the served clients. The report
//! adds the time until every client was served, tunnels up per second
//! during that stampede, and the handshakes the edge refused, by reason.

mod flow;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::client::tunnel::Tunnel;
use crate::config::{self, ClientConfig, TransportChoice};
use crate::metrics::Metrics;
use crate::preamble::Dest;
use crate::transport::dial::{Dialer, HEAD_START};
use crate::transport::{quic, tls, ALPN_CLIENT, ALPN_H2};
use crate::trust::Trust;
use flow::{arrive, work, FlowError};
pub use report::Report;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Dest,
    /// Flows to open in all, each client's first flow included (the run
    /// also stops at `duration`); at least `clients`.
    pub flows: u64,
    /// Flows in progress at once.
    pub concurrency: usize,
    /// Separate clients (tunnels) arriving at once; the flows are spread over them.
    pub clients: usize,
    pub duration: Duration,
    /// If set, each flow sends `GET <path>` and reads the answer to its end.
    pub http_get: Option<String>,
    /// Keep each opened flow idle this long before closing it.
    pub hold: Duration,
    pub transport: Option<TransportChoice>,
}

impl Options {
    /// Why these options cannot run, in the flags' words.
    pub fn check(&self) -> Result<(), String> {
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.flows < self.clients as u64 {
            return Err(format!(
                "--flows {} is less than --clients {}: every client opens at least its first flow",
                self.flows, self.clients
            ));
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

impl Tally {
    fn add(&mut self, r: Result<(Duration, u64), FlowError>) {
        match r {
            Ok((setup, bytes)) => {
                self.setups.push(setup);
                self.bytes += bytes;
            }
            Err(FlowError::Refused(word)) => {
                self.failed += 1;
                *self.refusals.entry(word).or_default() += 1;
            }
            Err(FlowError::Other) => self.failed += 1,
        }
    }
}

/// One client arriving: its tunnel, and whether its first flow opened yet
/// (its workers wait for that).
struct Client {
    tunnel: Arc<Tunnel>,
    served: tokio::sync::watch::Sender<bool>,
}

/// What the arrivals share: the flows' tally, when each client was served
/// (from the arrival), the first-flow attempts retried by word, and the
/// tunnels up when the last client was served.
#[derive(Default)]
struct Arrivals {
    served_at: Vec<Duration>,
    retried: BTreeMap<String, u64>,
    handshakes_ok: Option<u64>,
}

/// What every task of a run reads.
struct Run {
    opts: Options,
    started: Instant,
    deadline: Instant,
    /// Flows taken so far (every client's first flow is taken up front).
    next: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
}

impl Run {
    /// Our handshakes with the edge that ended in `result`, both transports.
    fn handshakes(&self, result: &str) -> u64 {
        ["quic", "tls"]
            .iter()
            .map(|kind| {
                self.metrics
                    .handshakes
                    .with_label_values(&["edge", kind, result])
                    .get()
            })
            .sum()
    }
}

/// Run the load described by `opts` with the identity and edges of `client_config`.
pub async fn run(client_config: &Path, opts: Options) -> anyhow::Result<Report> {
    opts.check().map_err(anyhow::Error::msg)?;
    let cfg: ClientConfig = config::load(client_config)?;
    let trust = Trust::load(cfg.tls.files(), &cfg.trust_domain)
        .with_context(|| format!("loading [tls] of {}", client_config.display()))?;
    let metrics = Arc::new(Metrics::new("client"));
    let stop = CancellationToken::new();
    let dialers = dialers(&cfg, &trust, &opts)?;
    // Every client arrives now: its keeper dials at once, its first flow
    // waits for it; its workers wait for that flow.
    let started = Instant::now();
    let run = Arc::new(Run {
        next: (opts.clients as u64).into(),
        deadline: started + opts.duration,
        started,
        opts,
        metrics: Arc::clone(&metrics),
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let mut clients = Vec::with_capacity(dialers.len());
    let mut tasks = tokio::task::JoinSet::new();
    for dialer in dialers {
        let client = Arc::new(Client {
            tunnel: Tunnel::start_with_dns(
                dialer,
                cfg.edges.clone(),
                &cfg.dns,
                cfg.limits.clone(),
                Arc::clone(&metrics),
                stop.clone(),
            ),
            served: tokio::sync::watch::Sender::new(false),
        });
        tasks.spawn(arrive(
            Arc::clone(&client),
            Arc::clone(&run),
            Arc::clone(&tally),
            Arc::clone(&arrivals),
        ));
        clients.push(client);
    }
    for w in 0..run.opts.concurrency {
        let client = Arc::clone(&clients[w % clients.len()]);
        tasks.spawn(work(client, Arc::clone(&run), Arc::clone(&tally)));
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    // Close every tunnel (CONNECTION_CLOSE), so the edge stops counting them now.
    for c in clients {
        tasks.spawn(async move { c.tunnel.close().await });
    }
    while tasks.join_next().await.is_some() {}
    let t = std::mem::take(&mut *tally.lock().await);
    let a = std::mem::take(&mut *arrivals.lock().await);
    Ok(report::report(&run, t, a, secs))
}

/// One dialer (its own QUIC endpoint) per client.
fn dialers(cfg: &ClientConfig, trust: &Arc<Trust>, opts: &Options) -> anyhow::Result<Vec<Dialer>> {
    let choice = opts.transport.unwrap_or(cfg.transport);
    let endpoint = || {
        quic::client_endpoint("0.0.0.0:0".parse()?, trust, ALPN_CLIENT, &cfg.limits, 0)
            .context("a client's QUIC endpoint (is `ulimit -n` above --clients?)")
    };
    // Over TLS alone no client dials QUIC: one idle endpoint serves them all,
    // rather than a UDP socket each (10,000 clients held 20,000 descriptors
    // and met `ulimit -n`, which failed their connects as `unreachable`).
    let shared = match choice {
        TransportChoice::Tls => Some(endpoint()?),
        TransportChoice::Quic | TransportChoice::Auto => None,
    };
    let mut dialers = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        let quic = match &shared {
            Some(e) => e.clone(),
            None => endpoint()?,
        };
        dialers.push(Dialer {
            choice,
            quic,
            tls: tls::connector(trust, ALPN_H2),
            timeout: cfg.limits.handshake_timeout,
            head_start: HEAD_START,
        });
    }
    Ok(dialers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(flows: u64, clients: usize, concurrency: usize) -> Options {
        Options {
            target: Dest::parse("app.example:443").expect("literal"),
            flows,
            concurrency,
            clients,
            duration: Duration::from_secs(1),
            http_get: None,
            hold: Duration::ZERO,
            transport: None,
        }
    }

    #[test]
    fn options_that_cannot_run_say_why() {
        assert_eq!(opts(10_000, 1, 64).check(), Ok(()));
        assert_eq!(opts(2000, 2000, 64).check(), Ok(()));
        let e = opts(100, 2000, 64)
            .check()
            .expect_err("fewer flows than clients");
        assert!(
            e.contains("--flows 100") && e.contains("--clients 2000"),
            "{e}"
        );
        assert!(opts(10, 0, 64)
            .check()
            .expect_err("no client")
            .contains("--clients"));
        assert!(opts(10, 1, 0)
            .check()
            .expect_err("no worker")
            .contains("--concurrency"));
    }
}
