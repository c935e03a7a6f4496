//! Reading the head at the start of a flow -- the client's CONNECT preamble,
//! the edge's flow header, the connector's reply, the edge's answer -- with
//! one loop for all four: read a chunk, hand the buffered bytes to the pure
//! parser (`preamble`, `wire`), stop at its answer. The parser is asked again
//! only when a chunk brought something new, and no head may take `limit`
//! bytes or more. The callers own the timeouts and what a failure means.

use std::io;

use bytes::{Bytes, BytesMut};

use super::half::RecvHalf;
use crate::preamble::{self, ConnectResponse, PreambleError};

/// Why no head was read.
#[derive(thiserror::Error, Debug)]
pub enum HeadError<E> {
    /// The stream ended (`reset` is `None`) or failed before a whole head
    /// came; `buffered` bytes of it had.
    #[error("the stream ended before a whole head ({buffered} bytes)")]
    Cut {
        buffered: usize,
        reset: Option<io::Error>,
    },
    /// The parser refused the bytes.
    #[error("{0}")]
    Parse(E),
    /// `limit` bytes came and the parser still wanted more.
    #[error("no whole head within the size limit")]
    TooLarge,
}

/// Read until `parse` answers: the head, and the bytes after it (flow data).
/// `parse` returns `Ok(None)` for "need more", else the head and the bytes
/// it used, as `preamble::parse_request` and `wire::parse_flow_header` do.
pub async fn read_head<T, E>(
    recv: &mut RecvHalf,
    limit: usize,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<(T, BytesMut), HeadError<E>> {
    let mut buf = BytesMut::new();
    loop {
        let chunk = match recv.read_chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Err(cut(&buf, None)),
            Err(e) => return Err(cut(&buf, Some(e))),
        };
        if chunk.is_empty() {
            // Nothing new: the parser's last "need more" still holds.
            continue;
        }
        buf.extend_from_slice(&chunk);
        if let Some((head, used)) = parse(&buf).map_err(HeadError::Parse)? {
            let rest = buf.split_off(used);
            return Ok((head, rest));
        }
        if buf.len() >= limit {
            return Err(HeadError::TooLarge);
        }
    }
}

fn cut<E>(buf: &[u8], reset: Option<io::Error>) -> HeadError<E> {
    HeadError::Cut {
        buffered: buf.len(),
        reset,
    }
}

/// The edge's answer to a CONNECT (client and `drill`): its head and, for a
/// refusal, its one-line body (up to its `Content-Length` and `limit`; what
/// came before the stream ended).
pub async fn read_answer(
    recv: &mut RecvHalf,
    limit: usize,
) -> Result<(ConnectResponse, Bytes), HeadError<PreambleError>> {
    let (resp, mut rest) =
        read_head(recv, limit, |buf| preamble::parse_response(buf, limit)).await?;
    if resp.status != 200 {
        while rest.len() < resp.content_length.min(limit) {
            match recv.read_chunk().await {
                Ok(Some(c)) => rest.extend_from_slice(&c),
                _ => break,
            }
        }
    }
    Ok((resp, rest.freeze()))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::refusal::Refusal;

    /// A receive half fed `bytes` one byte per read, then a clean end.
    fn byte_at_a_time(bytes: &'static [u8]) -> RecvHalf {
        let (mut tx, rx) = tokio::io::duplex(1);
        tokio::spawn(async move {
            let _ = tx.write_all(bytes).await;
        });
        RecvHalf::io(Box::new(rx))
    }

    fn connect(buf: &[u8]) -> Result<Option<(String, usize)>, PreambleError> {
        let parsed = preamble::parse_request(buf, 256)?;
        Ok(parsed.map(|(req, used)| (req.dest.to_string(), used)))
    }

    #[tokio::test]
    async fn many_reads_then_the_head_and_what_follows() {
        let mut recv = byte_at_a_time(b"CONNECT a.example:443 HTTP/1.1\r\n\r\nflow");
        let (dest, rest) = read_head(&mut recv, 256, connect).await.expect("head");
        assert_eq!(dest, "a.example:443");
        assert!(b"flow".starts_with(&rest), "{rest:?}");
    }

    #[tokio::test]
    async fn an_ended_stream_says_how_much_had_come() {
        for (bytes, want) in [(&b""[..], 0), (b"CONNECT a.ex", 12)] {
            let mut recv = byte_at_a_time(bytes);
            match read_head(&mut recv, 256, connect).await {
                Err(HeadError::Cut {
                    buffered,
                    reset: None,
                }) => assert_eq!(buffered, want),
                other => panic!("{:?}", other.map(|(d, _)| d)),
            }
        }
    }

    #[tokio::test]
    async fn the_parser_refuses_or_the_limit_does() {
        let mut recv = byte_at_a_time(b"GET / HTTP/1.1\r\n\r\n");
        let refused = read_head(&mut recv, 256, connect).await;
        assert!(matches!(
            refused,
            Err(HeadError::Parse(PreambleError::Method))
        ));
        let mut recv = byte_at_a_time(&[0; 64]);
        let never = |_: &[u8]| Ok::<Option<((), usize)>, ()>(None);
        let bounded = read_head(&mut recv, 16, never).await;
        assert!(matches!(bounded, Err(HeadError::TooLarge)));
    }

    #[tokio::test]
    async fn an_answer_brings_its_refusal_body() {
        let body = Refusal::NoConnector.encode_response("none connected");
        let bytes: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
        let mut recv = byte_at_a_time(bytes);
        let (resp, reason) = read_answer(&mut recv, 256).await.expect("answer");
        assert_eq!(resp.error, Some(Refusal::NoConnector));
        assert_eq!(String::from_utf8_lossy(&reason).trim(), "none connected");
    }
}
