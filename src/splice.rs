//! Moving a flow's bytes both ways. Payload travels as `bytes::Bytes`
//! chunks: a QUIC chunk read at the edge is written to the other QUIC stream
//! as the same allocation (no copy); a TCP read fills a reusable `BytesMut`
//! once and the frozen chunk moves on as it is. Flow control is the
//! transports' own: a chunk is read only after the previous one was accepted
//! by the other side, so a slow reader holds at most one chunk plus its
//! stream window, and never stalls another flow.
//!
//! Half-close is carried through (EOF becomes FIN and FIN becomes
//! `shutdown(Write)`); an error or reset on either side aborts both sides of
//! the flow.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;

use crate::stall::{FlowStalls, STALL_AFTER};
pub use crate::transport::half::{BoxRead, BoxWrite, RecvHalf, SendHalf, Side, BATCH};
use crate::transport::stream_code;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions reached a clean end of stream.
    Done,
    /// One side failed or reset; both were aborted.
    Reset,
    /// The caller's `stop` future fired; both were aborted with its code.
    Stopped(u32),
}

impl End {
    /// The word for `lifeboat_flows_closed_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Reset => "reset",
            Self::Stopped(stream_code::DR_NARROWED) => "dr-narrowed",
            Self::Stopped(stream_code::CERT_REFUSED) => "cert-refused",
            Self::Stopped(stream_code::IDLE) => "idle",
            Self::Stopped(stream_code::STALLED) => "stalled",
            Self::Stopped(_) => "shutdown",
        }
    }
}

/// Splice an agent-side flow (connector or client): bytes counted without a
/// segment label, stopped by the drain deadline `abort` or, with `stalls`,
/// when its tunnel closes it for stalling; its end closes `flow`.
pub async fn splice_counted(
    a: &mut Side,
    b: &mut Side,
    (metrics, flow): (&crate::metrics::Metrics, crate::metrics::FlowGuard<'_>),
    abort: &tokio_util::sync::CancellationToken,
    stalls: Option<&FlowStalls>,
) -> Outcome {
    let abort = abort.clone();
    let stalled = stalls.map(|s| s.stop.clone());
    let outcome = splice(
        a,
        b,
        Counters {
            up: &metrics.agent_bytes.up,
            down: &metrics.agent_bytes.down,
        },
        async move {
            match stalled {
                Some(stalled) => tokio::select! {
                    () = abort.cancelled() => stream_code::SHUTDOWN,
                    () = stalled.cancelled() => stream_code::STALLED,
                },
                None => {
                    abort.cancelled().await;
                    stream_code::SHUTDOWN
                }
            }
        },
        None,
        stalls,
    )
    .await;
    flow.close(outcome.end.reason());
    outcome
}

/// Byte counts of a finished splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub end: End,
    /// Bytes from `a` to `b` (client to app).
    pub up: u64,
    /// Bytes from `b` to `a`.
    pub down: u64,
}

/// Counters bumped as bytes move (per segment).
pub struct Counters<'a> {
    pub up: &'a IntCounter,
    pub down: &'a IntCounter,
}

/// Milliseconds on a process-wide monotonic clock (cheap to store in an
/// atomic: flow activity, suspect connectors).
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

async fn pump(
    from: &mut RecvHalf,
    to: &mut SendHalf,
    count: &mut u64,
    counter: &IntCounter,
    active: &AtomicU64,
    stalls: Option<&FlowStalls>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    while from.read_batch(&mut batch).await? {
        let n: u64 = batch.iter().map(|c| c.len() as u64).sum();
        active.store(clock_ms(), Ordering::Relaxed);
        match stalls {
            None => to.write_batch(&mut batch).await?,
            Some(stalls) => write_watched(to, &mut batch, stalls).await?,
        }
        batch.clear();
        *count += n;
        counter.inc_by(n);
    }
    to.finish().await
}

/// Write `batch`; a write still blocked after [`STALL_AFTER`] counts the
/// flow as stalled until it completes. The timer starts only once the
/// write did not complete at once (the fast path costs one poll).
async fn write_watched(
    to: &mut SendHalf,
    batch: &mut [Bytes],
    stalls: &FlowStalls,
) -> io::Result<()> {
    let write = to.write_batch(batch);
    tokio::pin!(write);
    if let std::task::Poll::Ready(r) = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(write.as_mut(), cx))
    })
    .await
    {
        return r;
    }
    tokio::select! {
        r = &mut write => r,
        () = tokio::time::sleep(STALL_AFTER) => {
            let _stalled = stalls.stalled();
            write.await
        }
    }
}

/// Resolves once nothing has moved for `idle` (never when `None`).
async fn idle_for(active: &AtomicU64, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let idle_ms = idle.as_millis() as u64;
    loop {
        let due = active.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = clock_ms();
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}

/// Splice `a` (client side) and `b` (app side) until both directions end,
/// one fails, `stop` resolves with a stream error code, or nothing moved
/// either way for `idle`. With `stalls`, a write blocked for a second
/// counts the flow as stalled on the tunnels it crosses (`crate::stall`).
pub async fn splice(
    a: &mut Side,
    b: &mut Side,
    counters: Counters<'_>,
    stop: impl std::future::Future<Output = u32>,
    idle: Option<Duration>,
    stalls: Option<&FlowStalls>,
) -> Outcome {
    let (mut up, mut down) = (0u64, 0u64);
    let active = AtomicU64::new(clock_ms());
    let end = {
        let up_fut = pump(
            &mut a.recv,
            &mut b.send,
            &mut up,
            counters.up,
            &active,
            stalls,
        );
        let down_fut = pump(
            &mut b.recv,
            &mut a.send,
            &mut down,
            counters.down,
            &active,
            stalls,
        );
        let idle_fut = idle_for(&active, idle);
        tokio::pin!(up_fut, down_fut, stop, idle_fut);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                // A stop names why the flow ends (DR narrowed, certificate
                // refused, shutdown); the stream errors it causes must not
                // win the race and report a plain reset.
                biased;
                code = &mut stop => break End::Stopped(code),
                () = &mut idle_fut => break End::Stopped(stream_code::IDLE),
                r = &mut up_fut, if !up_done => {
                    if r.is_err() { break End::Reset; }
                    up_done = true;
                }
                r = &mut down_fut, if !down_done => {
                    if r.is_err() { break End::Reset; }
                    down_done = true;
                }
            }
            if up_done && down_done {
                break End::Done;
            }
        }
    };
    let code = match end {
        End::Done => None,
        End::Reset => Some(stream_code::ABORTED),
        End::Stopped(c) => Some(c),
    };
    if let Some(code) = code {
        a.recv.abort(code);
        a.send.abort(code);
        b.recv.abort(code);
        b.send.abort(code);
    }
    Outcome { end, up, down }
}
