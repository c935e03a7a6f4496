//! A small HTTP/1.1 application for the demo, tests and benches: `GET /`
//! answers a greeting, `GET /bytes/N` answers N bytes of a fixed pattern
//! (so a receiver can check them without storing them), `POST /echo`
//! answers the request body back. One request per connection.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head the app reads.
const MAX_HEAD: usize = 16 * 1024;

/// Byte `i` of the `/bytes/N` pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fill `buf` with the pattern starting at offset `start`.
pub fn fill_pattern(start: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(start + k as u64);
    }
}

/// Bind on `addr` and serve forever in a spawned task; returns the bound address.
pub async fn spawn(addr: SocketAddr, greeting: &'static str) -> std::io::Result<SocketAddr> {
    let l = crate::transport::tcp_listener(addr)?;
    let bound = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s, greeting));
        }
    });
    Ok(bound)
}

async fn handle(mut s: TcpStream, greeting: &'static str) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let body_start = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if head.len() > MAX_HEAD {
            return s
                .write_all(b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).to_string();
    let mut parts = text.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let content_length = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<u64>().ok())?
        })
        .unwrap_or(0);
    if method == "POST" && path == "/echo" {
        let hdr = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(hdr.as_bytes()).await?;
        let mut first = head.split_off(body_start);
        first.truncate(content_length as usize);
        s.write_all(&first).await?;
        let mut left = content_length - first.len() as u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = chunk.len().min(left as usize);
            let n = s.read(&mut chunk[..want]).await?;
            if n == 0 {
                break;
            }
            s.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        return s.shutdown().await;
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let hdr = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(hdr.as_bytes()).await?;
        // 251 is prime to the chunk size, so the pattern is written from a
        // rotating window over one precomputed block.
        let mut block = vec![0u8; 251 * 1024];
        fill_pattern(0, &mut block);
        let mut off = 0u64;
        while off < n {
            let start = (off % 251) as usize;
            let len = ((n - off) as usize).min(250 * 1024);
            s.write_all(&block[start..start + len]).await?;
            off += len as u64;
        }
        return s.shutdown().await;
    }
    let body = format!("{greeting}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}
