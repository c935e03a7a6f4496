//! The two halves of one side of a flow, over every transport: a QUIC
//! stream, a TCP connection (the app, a local client), a TLS connection
//! (one flow per connection) and an HTTP/2 stream (a multiplexed TLS
//! tunnel). Reading hands over `Bytes` chunks (QUIC's own allocations, no
//! copy); writing respects each transport's flow control, so what is
//! buffered stays within its windows. `crate::splice` moves bytes between
//! two sides through these halves only.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::VarInt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Most chunks moved per read (QUIC hands over one chunk per frame).
pub const BATCH: usize = 32;

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
