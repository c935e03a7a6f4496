//! The flows of a run: each client's arrival (its first flow, retried as a
//! client would), the workers that share the rest, and one flow's life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{Arrivals, Client, Options, Run, Tally};
use crate::backoff::Backoff;
use crate::client::tunnel::{Early, OpenError, Tunnel, RETRY_CEILING};
use crate::splice::{RecvHalf, Side};

/// Open `client`'s first flow, retrying every failure as a client would,
/// until it opens or `deadline`; then use it like any flow. The keeper
/// paces a tunnel that is not up (its backoff, the edge's retry hint);
/// attempts start no more often than the client's backoff allows (counted
/// from each attempt's start).
pub(super) async fn arrive(
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
pub(super) async fn work(client: Arc<Client>, run: Arc<Run>, tally: Arc<Mutex<Tally>>) {
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

/// Why a flow failed: a refusal (its word) or anything else.
pub(super) enum FlowError {
    Refused(String),
    Other,
}

impl FlowError {
    /// The result word of a retried attempt.
    pub(super) fn word(&self) -> &str {
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
    match tunnel.open(&opts.target, &mut Early::none()).await {
        Ok((side, _early)) => Ok(side),
        Err(OpenError::Refused {
            refusal, status, ..
        }) => {
            let word = refusal.map_or_else(|| format!("status-{status}"), |r| r.word().to_string());
            Err(FlowError::Refused(word))
        }
        // No tunnel, or it broke before the edge answered.
        Err(e) => Err(FlowError::Refused(e.word().into())),
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
