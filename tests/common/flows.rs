//! Flows and requests through a running client (SOCKS5 and HTTP CONNECT
//! listeners) to the app, and checks on what comes back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::DR_HOST;

/// The `/bytes/N` pattern, checked chunk by chunk without storing the body.
pub struct PatternCheck {
    block: Vec<u8>,
    pub offset: u64,
}

impl Default for PatternCheck {
    fn default() -> Self {
        let mut block = vec![0u8; 251 * 1024];
        lifeboat::demo::app::fill_pattern(0, &mut block);
        Self { block, offset: 0 }
    }
}

impl PatternCheck {
    /// Feed the next bytes; panics at the first byte that differs.
    pub fn feed(&mut self, mut data: &[u8]) {
        let max = self.block.len() - 251;
        while !data.is_empty() {
            let start = (self.offset % 251) as usize;
            let n = data.len().min(max);
            if data[..n] != self.block[start..start + n] {
                let i = (0..n)
                    .find(|&i| data[i] != self.block[start + i])
                    .expect("a differing byte");
                panic!(
                    "byte {} is {} where the pattern has {}",
                    self.offset + i as u64,
                    data[i],
                    self.block[start + i]
                );
            }
            self.offset += n as u64;
            data = &data[n..];
        }
    }
}

/// A deterministic body of `len` bytes distinct for each `seed`.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Split an HTTP/1.1 answer into its head (as text) and body.
pub fn split_http(resp: &[u8]) -> (String, &[u8]) {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(resp)));
    (
        String::from_utf8_lossy(&resp[..end]).into_owned(),
        &resp[end + 4..],
    )
}

/// Send a raw CONNECT to the client's HTTP listener and read its whole answer.
pub async fn raw_connect(http: SocketAddr, authority: &str) -> String {
    let mut s = TcpStream::connect(http)
        .await
        .expect("connect HTTP listener");
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write CONNECT");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut resp))
        .await
        .expect("answer within 15 s")
        .expect("read answer");
    String::from_utf8_lossy(&resp).into_owned()
}

/// The reply code of a SOCKS5 CONNECT to `host:port` (0 when it succeeded).
pub async fn socks_reply(socks: SocketAddr, host: &str, port: u16) -> u8 {
    use lifeboat::demo::socks_client::{connect, SocksConnectError};
    match tokio::time::timeout(Duration::from_secs(15), connect(socks, host, port))
        .await
        .expect("SOCKS answer within 15 s")
    {
        Ok(_) => 0,
        Err(SocksConnectError::Reply(code)) => code,
        Err(e) => panic!("SOCKS connect to {host}:{port}: {e}"),
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// A `curl` command with no config file, no proxy from the environment.
pub fn curl() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("curl");
    c.arg("-q")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .kill_on_drop(true);
    c
}

/// Run [`curl`] with `args` and read its stdout as it streams through a
/// [`PatternCheck`] (never stored; a byte off the `/bytes/N` pattern
/// panics), for at most `within`: how many bytes of the pattern it wrote,
/// and its exit status and stderr.
pub async fn curl_streamed(args: &[String], within: Duration) -> (u64, std::process::Output) {
    let mut child = curl()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut out = child.stdout.take().expect("stdout");
    let mut check = PatternCheck::default();
    let mut buf = vec![0u8; 256 * 1024];
    let read = async {
        loop {
            let k = out.read(&mut buf).await.expect("read curl stdout");
            if k == 0 {
                break;
            }
            check.feed(&buf[..k]);
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| panic!("curl {args:?} not done within {within:?}"));
    let output = child.wait_with_output().await.expect("curl exit");
    (check.offset, output)
}

/// One HTTP request through the client's HTTP CONNECT listener to the
/// app's `path` on `DR_HOST`; the whole answer (head and body), or why not.
pub async fn fetch_via(http: SocketAddr, app_port: u16, path: &str) -> Result<Vec<u8>, String> {
    let auth = format!("{DR_HOST}:{app_port}");
    let go = async {
        let mut s = TcpStream::connect(http).await.map_err(|e| e.to_string())?;
        let req = format!(
            "CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\nGET {path} HTTP/1.1\r\nHost: {DR_HOST}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        if !resp.starts_with(b"HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned());
        }
        // The CONNECT answer's head, then the app's answer.
        let (_, app) = split_http(&resp);
        Ok(app.to_vec())
    };
    tokio::time::timeout(Duration::from_secs(20), go)
        .await
        .unwrap_or_else(|_| Err("no answer within 20 s".into()))
}

/// `POST /echo` of `body` through the client's HTTP CONNECT listener to the
/// app on `DR_HOST`, written while the answer is read; the body echoed
/// back, or why not.
pub async fn post_via(http: SocketAddr, app_port: u16, body: &[u8]) -> Result<Vec<u8>, String> {
    let s = open_flow_to(http, app_port).await;
    let (mut rx, mut tx) = s.into_split();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        tx.write_all(head.as_bytes()).await?;
        tx.write_all(&body).await
    });
    let mut resp = Vec::new();
    rx.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("upload: {e}"))?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned());
    }
    Ok(split_http(&resp).1.to_vec())
}

/// Try a small flow every 100 ms until one succeeds; when it did. Panics
/// after `within`, with the last failure.
pub async fn first_flow_after(http: SocketAddr, app_port: u16, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match fetch_via(http, app_port, "/bytes/1000").await {
            Ok(app) if app.starts_with(b"HTTP/1.1 200") => return Instant::now(),
            Ok(app) => last = String::from_utf8_lossy(&app[..app.len().min(200)]).into_owned(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no flow succeeded within {within:?}; last: {last}");
}

/// A flow through the client's HTTP CONNECT listener to the app, answered
/// 200 and left open (nothing sent after the CONNECT).
pub async fn open_flow(http: SocketAddr, app_port: u16) -> TcpStream {
    open_flow_to(http, app_port).await
}

/// [`open_flow`] to any port of `DR_HOST`.
pub async fn open_flow_to(http: SocketAddr, app_port: u16) -> TcpStream {
    try_open_flow_to(http, app_port)
        .await
        .unwrap_or_else(|answer| panic!("{answer}"))
}

/// [`open_flow_to`], with the answer of a refused flow as the error.
pub async fn try_open_flow_to(http: SocketAddr, app_port: u16) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(http).await.expect("connect");
    let auth = format!("{DR_HOST}:{app_port}");
    let req = format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write CONNECT");
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).await.expect("read the answer");
    if buf[..n].starts_with(b"HTTP/1.1 200") {
        Ok(s)
    } else {
        Err(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}
