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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::tunnel::{OpenError, Tunnel, RETRY_CEILING};
use crate::config::{self, ClientConfig, TransportChoice};
use crate::metrics::{Metrics, HANDSHAKE_RESULTS};
use crate::preamble::Dest;
use crate::splice::{RecvHalf, Side};
use crate::transport::dial::{Dialer, HEAD_START};
use crate::transport::{quic, tls, ALPN_CLIENT, ALPN_H2};
use crate::trust::Trust;

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
    /// Flows that failed for good, by `Lifeboat-Error` word.
    pub refusals: BTreeMap<String, u64>,
    /// Clients that arrived at once.
    pub clients: u64,
    /// Clients whose first flow succeeded.
    pub clients_served: u64,
    /// From the arrival until every client was served; `None` when some
    /// never were within the run's time.
    pub all_served_seconds: Option<f64>,
    /// When clients were served, from the arrival: median and 99th percentile.
    pub served_p50_ms: f64,
    pub served_p99_ms: f64,
    /// Tunnels up (handshakes the edge accepted) until every client was
    /// served (or the arrival phase ended), and per second of it.
    pub handshakes_ok: u64,
    pub handshakes_per_second: f64,
    /// Handshakes that failed, by result word (`shed`, `timeout`, ...),
    /// each retried by its client.
    pub handshakes_refused: BTreeMap<String, u64>,
    /// First-flow attempts that failed and were retried, by word.
    pub retried: BTreeMap<String, u64>,
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
        words(f, "refused", &self.refusals)?;
        let all = match self.all_served_seconds {
            Some(s) => format!("all served within {s:.2} s"),
            None => format!(
                "{} never served",
                self.clients.saturating_sub(self.clients_served)
            ),
        };
        writeln!(
            f,
            "clients: {} arriving at once, {} served, {all} (served p50 {:.0} ms, p99 {:.0} ms)",
            self.clients, self.clients_served, self.served_p50_ms, self.served_p99_ms
        )?;
        writeln!(
            f,
            "handshakes: {} tunnels up during the arrival ({:.0} /s)",
            self.handshakes_ok, self.handshakes_per_second
        )?;
        words(f, "handshake refused", &self.handshakes_refused)?;
        if self.handshakes_refused.contains_key("quota") && self.clients > 1 {
            writeln!(
                f,
                "(every client presents the config's one certificate: for a stampede, raise the \
                 edge's [limits] max_tunnels_per_identity above --clients)"
            )?;
        }
        words(f, "first flow retried", &self.retried)
    }
}

/// A line `<what> <word>: <n>` per word of `counts`.
fn words(
    f: &mut std::fmt::Formatter<'_>,
    what: &str,
    counts: &BTreeMap<String, u64>,
) -> std::fmt::Result {
    for (word, n) in counts {
        writeln!(f, "{what} {word}: {n}")?;
    }
    Ok(())
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

/// Open `client`'s first flow, retrying every failure as a client would,
/// until it opens or `deadline`; then use it like any flow. The keeper
/// paces a tunnel that is not up (its backoff, the edge's retry hint);
/// attempts start no more often than the client's backoff allows (counted
/// from each attempt's start).
async fn arrive(
    client: Arc<Client>,
    run: Arc<Run>,
    tally: Arc<Mutex<Tally>>,
    arrivals: Arc<Mutex<Arrivals>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), RETRY_CEILING);
    loop {
        let t0 = Instant::now();
        let left = run.deadline.saturating_duration_since(t0);
        let e = match tokio::time::timeout(left, open_flow(&client.tunnel, &run.opts)).await {
            Ok(Ok(side)) => {
                let setup = t0.elapsed();
                {
                    let mut a = arrivals.lock().await;
                    a.served_at.push(t0 + setup - run.started);
                    if a.served_at.len() == run.opts.clients {
                        a.handshakes_ok = Some(run.handshakes("ok"));
                    }
                }
                client.served.send_replace(true);
                let r = use_flow(side, &run.opts).await.map(|bytes| (setup, bytes));
                tally.lock().await.add(r);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => FlowError::Refused("timeout".into()),
        };
        let next = t0 + backoff.next_delay();
        if next >= run.deadline {
            // Never served within the run: its last failure is the flow's.
            tally.lock().await.add(Err(e));
            return;
        }
        *arrivals
            .lock()
            .await
            .retried
            .entry(e.word().to_string())
            .or_default() += 1;
        tokio::time::sleep_until(next.into()).await;
    }
}

/// A worker: once `client` is served, flows from the shared count until it
/// runs out or `deadline`.
async fn work(client: Arc<Client>, run: Arc<Run>, tally: Arc<Mutex<Tally>>) {
    let mut served = client.served.subscribe();
    let until_served = tokio::time::timeout_at(run.deadline.into(), served.wait_for(|s| *s));
    if !matches!(until_served.await, Ok(Ok(_))) {
        return;
    }
    while run.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < run.opts.flows
        && Instant::now() < run.deadline
    {
        let t0 = Instant::now();
        let left = run.deadline.saturating_duration_since(t0);
        let r = tokio::time::timeout(left, one_flow(&client.tunnel, &run.opts, t0))
            .await
            .unwrap_or(Err(FlowError::Other));
        tally.lock().await.add(r);
    }
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
    Ok(report(&run, t, a, secs))
}

/// One dialer (its own QUIC endpoint) per client.
fn dialers(cfg: &ClientConfig, trust: &Arc<Trust>, opts: &Options) -> anyhow::Result<Vec<Dialer>> {
    let mut dialers = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        let endpoint =
            quic::client_endpoint("0.0.0.0:0".parse()?, trust, ALPN_CLIENT, &cfg.limits, 0)
                .context("a client's QUIC endpoint (is `ulimit -n` above --clients?)")?;
        dialers.push(Dialer {
            choice: opts.transport.unwrap_or(cfg.transport),
            quic: endpoint,
            tls: tls::connector(trust, ALPN_H2),
            timeout: cfg.limits.handshake_timeout,
            head_start: HEAD_START,
        });
    }
    Ok(dialers)
}

/// The report of a finished run that took `secs`.
fn report(run: &Run, mut t: Tally, mut a: Arrivals, secs: f64) -> Report {
    t.setups.sort();
    a.served_at.sort();
    let clients = run.opts.clients as u64;
    let all_served = a.served_at.len() as u64 == clients;
    // The arrival: until the last client was served, else the whole run.
    let arrival_secs = match (all_served, a.served_at.last()) {
        (true, Some(last)) => last.as_secs_f64(),
        _ => secs,
    };
    let handshakes_ok = a.handshakes_ok.unwrap_or_else(|| run.handshakes("ok"));
    let handshakes_refused: BTreeMap<String, u64> = HANDSHAKE_RESULTS
        .iter()
        .filter(|r| **r != "ok")
        .map(|r| (r.to_string(), run.handshakes(r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    Report {
        flows_ok: t.setups.len() as u64,
        flows_failed: t.failed,
        seconds: secs,
        flows_per_second: t.setups.len() as f64 / secs,
        setup_p50_us: percentile(&t.setups, 0.50) * 1e6,
        setup_p90_us: percentile(&t.setups, 0.90) * 1e6,
        setup_p99_us: percentile(&t.setups, 0.99) * 1e6,
        setup_max_us: percentile(&t.setups, 1.0) * 1e6,
        bytes: t.bytes,
        megabits_per_second: t.bytes as f64 * 8.0 / secs / 1e6,
        refusals: t.refusals,
        clients,
        clients_served: a.served_at.len() as u64,
        all_served_seconds: all_served.then_some(arrival_secs),
        served_p50_ms: percentile(&a.served_at, 0.50) * 1e3,
        served_p99_ms: percentile(&a.served_at, 0.99) * 1e3,
        handshakes_ok,
        handshakes_per_second: handshakes_ok as f64 / arrival_secs.max(1e-3),
        handshakes_refused,
        retried: a.retried,
    }
}

/// The `q` quantile of sorted `v`, in seconds (0 when empty).
fn percentile(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64()
}

enum FlowError {
    Refused(String),
    Other,
}

impl FlowError {
    /// The result word of a retried attempt.
    fn word(&self) -> &str {
        match self {
            Self::Refused(w) => w,
            Self::Other => "other",
        }
    }
}

async fn one_flow(
    tunnel: &Tunnel,
    opts: &Options,
    t0: Instant,
) -> Result<(Duration, u64), FlowError> {
    let side = open_flow(tunnel, opts).await?;
    let setup = t0.elapsed();
    let bytes = use_flow(side, opts).await?;
    Ok((setup, bytes))
}

/// Open a flow to the target: the edge's `200`, or why not.
async fn open_flow(tunnel: &Tunnel, opts: &Options) -> Result<Side, FlowError> {
    match tunnel.open(&opts.target).await {
        Ok((side, _early)) => Ok(side),
        Err(OpenError::Refused {
            refusal, status, ..
        }) => {
            let word = refusal.map_or_else(|| format!("status-{status}"), |r| r.word().to_string());
            Err(FlowError::Refused(word))
        }
        // No tunnel, or it broke before the edge answered.
        Err(e) => Err(FlowError::Refused(crate::client::refusal_word(&e).into())),
    }
}

/// Use an open flow as asked (`GET`, hold), then finish it; bytes read.
async fn use_flow(mut side: Side, opts: &Options) -> Result<u64, FlowError> {
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
    Ok(bytes)
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

    #[test]
    fn percentiles_of_sorted_durations() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), 0.051);
        assert_eq!(percentile(&v, 1.0), 0.1);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
