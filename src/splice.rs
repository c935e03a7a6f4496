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

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use quinn::VarInt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::stall::{FlowStalls, STALL_AFTER};
use crate::transport::stream_code;

/// Most chunks moved per read (QUIC hands over one chunk per frame).
const BATCH: usize = 32;

/// Largest chunk read from TCP at once.
const TCP_CHUNK: usize = 64 * 1024;

/// A byte stream read through a buffer (TLS: rustls copies plaintext out of
/// its record buffer into ours; that is the record layer's own copy).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A byte stream written chunk by chunk (TLS).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The receiving half of one side of a flow.
pub enum RecvHalf {
    Quic(quinn::RecvStream),
    Tcp {
        read: OwnedReadHalf,
        buf: BytesMut,
    },
    /// A TLS stream (one flow per connection).
    Io {
        read: BoxRead,
        buf: BytesMut,
    },
    /// An HTTP/2 stream of a multiplexed TLS tunnel.
    H2(h2::RecvStream),
    /// An HTTP/2 stream whose response head has not arrived yet.
    H2Pending(Option<h2::client::ResponseFuture>),
}

/// The sending half of one side of a flow.
pub enum SendHalf {
    Quic(quinn::SendStream),
    Tcp(OwnedWriteHalf),
    Io(BoxWrite),
    H2(h2::SendStream<Bytes>),
    /// Aborted: nothing more goes out.
    Closed,
}

fn h2_io(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

async fn read_into<R: AsyncRead + Unpin + ?Sized>(
    read: &mut R,
    buf: &mut BytesMut,
) -> io::Result<Option<Bytes>> {
    if buf.capacity() < TCP_CHUNK / 4 {
        buf.reserve(TCP_CHUNK);
    }
    let n = read.read_buf(buf).await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(buf.split().freeze()))
}

impl RecvHalf {
    pub fn tcp(read: OwnedReadHalf) -> Self {
        Self::Tcp {
            read,
            buf: BytesMut::new(),
        }
    }

    pub fn io(read: BoxRead) -> Self {
        Self::Io {
            read,
            buf: BytesMut::new(),
        }
    }

    /// Append the next chunks to `out` (several at once where the transport
    /// has them ready); `false` at a clean end of stream.
    pub async fn read_batch(&mut self, out: &mut Vec<Bytes>) -> io::Result<bool> {
        if let Self::Quic(r) = self {
            let mut bufs: [Bytes; BATCH] = Default::default();
            return match r.read_chunks(&mut bufs).await {
                Ok(Some(n)) => {
                    out.extend(bufs.iter_mut().take(n).map(std::mem::take));
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
            };
        }
        match self.read_chunk().await? {
            Some(c) => {
                out.push(c);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next chunk, `None` at a clean end of stream.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Self::Quic(r) => match r.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => Ok(Some(c.bytes)),
                Ok(None) => Ok(None),
                Err(e) => Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
            },
            Self::Tcp { read, buf } => read_into(read, buf).await,
            Self::Io { read, buf } => read_into(read, buf).await,
            Self::H2Pending(resp) => {
                let Some(fut) = resp.take() else {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "flow stream lost",
                    ));
                };
                let body = fut.await.map_err(h2_io)?.into_body();
                *self = Self::H2(body);
                Box::pin(self.read_chunk()).await
            }
            Self::H2(r) => loop {
                match r.data().await {
                    Some(Ok(b)) => {
                        // Give the window back as soon as the chunk is handed on:
                        // the next read waits for the write of this one anyway.
                        let _ = r.flow_control().release_capacity(b.len());
                        if b.is_empty() {
                            continue;
                        }
                        return Ok(Some(b));
                    }
                    Some(Err(e)) => return Err(h2_io(e)),
                    None => return Ok(None),
                }
            },
        }
    }

    /// Abort: tell the peer we will read no more.
    pub fn abort(&mut self, code: u32) {
        match self {
            Self::Quic(r) => {
                let _ = r.stop(VarInt::from_u32(code));
            }
            // Dropping the HTTP/2 body after the send side's reset ends the stream.
            Self::Tcp { .. } | Self::Io { .. } | Self::H2(_) | Self::H2Pending(_) => {}
        }
    }
}

impl SendHalf {
    /// Write a batch of chunks; the slice is left consumed in unspecified state.
    pub async fn write_batch(&mut self, chunks: &mut [Bytes]) -> io::Result<()> {
        match self {
            Self::Quic(s) => s
                .write_all_chunks(chunks)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e)),
            Self::Tcp(w) => write_all_vectored(w, chunks).await,
            Self::Io(w) => {
                write_all_vectored(w, chunks).await?;
                w.flush().await
            }
            Self::H2(_) => {
                for c in chunks.iter_mut() {
                    self.write(std::mem::take(c)).await?;
                }
                Ok(())
            }
            Self::Closed => Err(io::Error::new(io::ErrorKind::NotConnected, "flow aborted")),
        }
    }

    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        match self {
            Self::Quic(s) => s
                .write_chunk(chunk)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e)),
            Self::Tcp(w) => w.write_all(&chunk).await,
            Self::Io(w) => {
                w.write_all(&chunk).await?;
                // TLS keeps records it could not send in its buffer: push them out.
                w.flush().await
            }
            Self::H2(s) => {
                let mut chunk = chunk;
                while !chunk.is_empty() {
                    s.reserve_capacity(chunk.len());
                    let cap = match std::future::poll_fn(|cx| s.poll_capacity(cx)).await {
                        Some(Ok(c)) => c,
                        Some(Err(e)) => return Err(h2_io(e)),
                        None => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "flow stream closed",
                            ))
                        }
                    };
                    if cap == 0 {
                        continue;
                    }
                    let part = chunk.split_to(cap.min(chunk.len()));
                    s.send_data(part, false).map_err(h2_io)?;
                }
                Ok(())
            }
            Self::Closed => Err(io::Error::new(io::ErrorKind::NotConnected, "flow aborted")),
        }
    }

    /// Half-close: no more data from us.
    pub async fn finish(&mut self) -> io::Result<()> {
        match self {
            Self::Quic(s) => s
                .finish()
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e)),
            Self::Tcp(w) => w.shutdown().await,
            Self::Io(w) => w.shutdown().await,
            Self::H2(s) => s.send_data(Bytes::new(), true).map_err(h2_io),
            Self::Closed => Err(io::Error::new(io::ErrorKind::NotConnected, "flow aborted")),
        }
    }

    /// Abort: reset the stream (QUIC) or make the close a RST (TCP).
    pub fn abort(&mut self, code: u32) {
        match self {
            Self::Quic(s) => {
                let _ = s.reset(VarInt::from_u32(code));
            }
            Self::Io(_) => {}
            Self::H2(s) => s.send_reset(h2::Reason::CANCEL),
            Self::Tcp(_) => {
                if let Self::Tcp(w) = std::mem::replace(self, Self::Closed) {
                    // Linger 0 turns the close into a RST (it does not block with a
                    // zero timeout); `forget` keeps tokio from sending a FIN first, so
                    // the peer sees the reset when the read half goes.
                    let _ = socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO));
                    w.forget();
                }
            }
            Self::Closed => {}
        }
    }
}

/// One side of a flow.
pub struct Side {
    pub recv: RecvHalf,
    pub send: SendHalf,
}

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

/// Write every byte of `chunks` with vectored writes (one syscall for many
/// QUIC frames' worth of payload instead of one each).
async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    chunks: &mut [Bytes],
) -> io::Result<()> {
    let mut i = 0;
    while i < chunks.len() {
        if chunks[i].is_empty() {
            i += 1;
            continue;
        }
        let mut slices = [io::IoSlice::new(&[]); BATCH];
        let mut k = 0;
        for c in chunks[i..].iter().take(BATCH) {
            slices[k] = io::IoSlice::new(c);
            k += 1;
        }
        let mut n = w.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < chunks.len() {
            let len = chunks[i].len();
            if n >= len {
                n -= len;
                i += 1;
            } else {
                bytes::Buf::advance(&mut chunks[i], n);
                n = 0;
            }
        }
    }
    Ok(())
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
