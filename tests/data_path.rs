//! The core data path end to end: curl through the client's SOCKS5 and HTTP
//! CONNECT listeners, many concurrent flows over one tunnel, half-close.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 256 MiB.
const BIG: u64 = 256 * 1024 * 1024;

/// Run curl with `args`, check its stdout is exactly `n` bytes of the
/// `/bytes/N` pattern (read as it streams, never stored), return the wall time.
async fn curl_pattern(args: &[String], n: u64) -> Duration {
    let started = Instant::now();
    let (got, output) = curl_streamed(args, Duration::from_secs(60)).await;
    assert!(
        output.status.success(),
        "curl {args:?} failed: {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(got, n, "curl delivered {got} of {n} bytes");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks5_256_mib_byte_exact() {
    let t = Builder::quic().start().await;
    let url = format!("http://{DR_HOST}:{}/bytes/{BIG}", t.app_port());
    let took = curl_pattern(
        &[
            "-sS".into(),
            "--socks5-hostname".into(),
            t.socks().to_string(),
            url,
            "-o".into(),
            "-".into(),
        ],
        BIG,
    )
    .await;
    eprintln!("256 MiB over SOCKS5 in {took:?}");
    assert_eq!(t.edge_flows("payroll", "ok"), 1);
    let down = t
        .edge_metrics
        .flow_bytes
        .with_label_values(&["payroll", "down"])
        .get();
    assert!(down > BIG, "edge counted {down} bytes down");
    eventually("edge counts the flow done", Duration::from_secs(5), || {
        t.edge_closed("done") == 1
    })
    .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http_connect_256_mib_byte_exact() {
    let t = Builder::quic().start().await;
    let url = format!("http://{DR_HOST}:{}/bytes/{BIG}", t.app_port());
    let took = curl_pattern(
        &[
            "-sS".into(),
            "-p".into(),
            "--proxy".into(),
            format!("http://{}", t.http()),
            url,
            "-o".into(),
            "-".into(),
        ],
        BIG,
    )
    .await;
    eprintln!("256 MiB over HTTP CONNECT in {took:?}");
    assert_eq!(t.edge_flows("payroll", "ok"), 1);
    t.shutdown().await;
}

/// POST `body` to `/echo` through SOCKS5 (writing and reading at once) and
/// check the answer is the body.
async fn echo_once(socks: std::net::SocketAddr, port: u16, seed: u64, len: usize) {
    let s = lifeboat::demo::socks_client::connect(socks, DR_HOST, port)
        .await
        .unwrap_or_else(|e| panic!("flow {seed}: SOCKS connect: {e}"));
    let body = body(seed, len);
    let (mut r, mut w) = s.into_split();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let expected = body.clone();
    let writer = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await?;
        w.write_all(&body).await?;
        w.shutdown().await
    });
    let mut resp = Vec::with_capacity(len + 128);
    r.read_to_end(&mut resp)
        .await
        .unwrap_or_else(|e| panic!("flow {seed}: read: {e}"));
    writer
        .await
        .expect("writer task")
        .unwrap_or_else(|e| panic!("flow {seed}: write: {e}"));
    let (head, got) = split_http(&resp);
    assert!(head.starts_with("HTTP/1.1 200"), "flow {seed}: {head}");
    assert!(
        got == expected.as_slice(),
        "flow {seed}: echoed {} bytes, sent {len}, equal prefix {}",
        got.len(),
        got.iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_flows_over_one_tunnel() {
    const FLOWS: u64 = 1000;
    let t = Builder::quic().start().await;
    let client_handshakes = || {
        t.client()
            .metrics
            .handshakes
            .with_label_values(&["edge", "quic", "ok"])
            .get()
    };
    assert_eq!(client_handshakes(), 1);

    // Sample the edge's client tunnel gauge all along.
    let gauge = t
        .edge_metrics
        .tunnels_active
        .with_label_values(&["client", "quic"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (min, max) = (Arc::new(AtomicI64::new(1)), Arc::new(AtomicI64::new(1)));
    let sampler = {
        let (stop, min, max, gauge) = (stop.clone(), min.clone(), max.clone(), gauge.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let v = gauge.get();
                min.fetch_min(v, Ordering::Relaxed);
                max.fetch_max(v, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let (socks, port) = (t.socks(), t.app_port());
    for i in 0..FLOWS {
        // 16 KiB to 64 KiB, a different length and content for each flow.
        let len = 16 * 1024 + (i as usize * 48 * 1024 / FLOWS as usize) + i as usize % 7;
        set.spawn(echo_once(socks, port, i, len));
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.expect("flow task");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("1000 flows within 30 s");
    eprintln!("{FLOWS} concurrent echo flows in {:?}", started.elapsed());
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");

    assert_eq!(
        (min.load(Ordering::Relaxed), max.load(Ordering::Relaxed)),
        (1, 1),
        "edge tunnels_active{{role=client}} left 1 (min, max)"
    );
    assert_eq!(gauge.get(), 1);
    assert_eq!(client_handshakes(), 1, "the client opened another tunnel");
    assert_eq!(t.edge_handshakes("client", "ok"), 1);
    assert_eq!(t.edge_flows("payroll", "ok"), FLOWS);
    eventually("every flow closed as done", Duration::from_secs(10), || {
        t.edge_closed("done") == FLOWS && t.edge_metrics.flows_active.get() == 0
    })
    .await;
    t.shutdown().await;
}

/// An app that reads until EOF, then answers a summary line and `tail` pattern bytes.
async fn read_to_eof_app(tail: usize) -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_err() {
                    return;
                }
                let sum: u64 = got.iter().map(|&b| u64::from(b)).sum();
                let line = format!("got {} bytes, sum {sum}\n", got.len());
                let mut answer = line.into_bytes();
                let mut pattern = vec![0u8; tail];
                lifeboat::demo::app::fill_pattern(0, &mut pattern);
                answer.extend_from_slice(&pattern);
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_carries_fin_and_the_answer_still_arrives() {
    const TAIL: usize = 2 * 1024 * 1024;
    let (eof_port, _app) = read_to_eof_app(TAIL).await;
    let t = Builder::quic().segment_port(eof_port).start().await;

    // 1. An app that answers only after EOF: FIN must travel client -> app,
    //    and the whole answer must come back over the half-open flow.
    let sent = body(7, 300 * 1024);
    let mut s = lifeboat::demo::socks_client::connect(t.socks(), DR_HOST, eof_port)
        .await
        .expect("SOCKS connect");
    s.write_all(&sent).await.expect("write");
    s.shutdown().await.expect("shutdown(Write)");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut resp))
        .await
        .expect("answer within 15 s (did the FIN reach the app?)")
        .expect("read answer");
    let sum: u64 = sent.iter().map(|&b| u64::from(b)).sum();
    let line = format!("got {} bytes, sum {sum}\n", sent.len());
    assert!(
        resp.starts_with(line.as_bytes()),
        "answer starts {:?}, want {line:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(80)])
    );
    let mut check = PatternCheck::default();
    check.feed(&resp[line.len()..]);
    assert_eq!(check.offset, TAIL as u64, "whole answer after half-close");

    // 2. POST /echo, then shut the write side before reading anything.
    let sent = body(8, 200 * 1024);
    let mut s = lifeboat::demo::socks_client::connect(t.socks(), DR_HOST, t.app_port())
        .await
        .expect("SOCKS connect");
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: {}\r\n\r\n",
        sent.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(&sent).await.expect("write body");
    s.shutdown().await.expect("shutdown(Write)");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut resp))
        .await
        .expect("answer within 15 s")
        .expect("read answer");
    let (head, got) = split_http(&resp);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(got == sent.as_slice(), "echo after half-close differs");

    // Both flows ended cleanly in both directions (not reset).
    eventually("both flows closed as done", Duration::from_secs(5), || {
        t.edge_closed("done") == 2
    })
    .await;
    assert_eq!(t.edge_closed("reset"), 0);
    t.shutdown().await;
}

/// The DR segment's wildcard is served through both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_segment_is_served() {
    let t = Builder::quic().start().await;
    let url = format!("http://{WILDCARD_HOST}:{}/bytes/1000000", t.app_port());
    curl_pattern(
        &[
            "-sS".into(),
            "--socks5-hostname".into(),
            t.socks().to_string(),
            url.clone(),
            "-o".into(),
            "-".into(),
        ],
        1_000_000,
    )
    .await;
    curl_pattern(
        &[
            "-sS".into(),
            "-p".into(),
            "--proxy".into(),
            format!("http://{}", t.http()),
            url,
            "-o".into(),
            "-".into(),
        ],
        1_000_000,
    )
    .await;
    assert_eq!(t.edge_flows("payroll", "ok"), 2);
    // A plain GET via raw TCP too.
    let mut s = TcpStream::connect(t.http()).await.expect("connect");
    let auth = format!("{WILDCARD_HOST}:{}", t.app_port());
    s.write_all(
        format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK"),
        "{text}"
    );
    assert!(text.ends_with("hello\n"), "{text}");
    t.shutdown().await;
}

/// How the app saw a connection end.
#[derive(Debug, PartialEq, Eq)]
enum AppEnd {
    Eof,
    Reset,
    Other(std::io::ErrorKind),
}

/// An app that echoes, resets the connection itself when it reads `RST`,
/// and reports how each connection it did not reset ended.
async fn reset_app() -> (u16, tokio::sync::mpsc::UnboundedReceiver<AppEnd>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => return drop(tx.send(AppEnd::Eof)),
                        Ok(n) if buf[..n].windows(3).any(|w| w == b"RST") => {
                            reset(s);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            return drop(tx.send(AppEnd::Reset))
                        }
                        Err(e) => return drop(tx.send(AppEnd::Other(e.kind()))),
                    }
                }
            });
        }
    });
    (port, rx)
}

/// Close `s` with a RST (linger 0), not a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(s);
}

async fn echo_roundtrip(s: &mut TcpStream) {
    s.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo within 10 s")
        .expect("read echo");
    assert_eq!(&buf, b"hello");
}

/// DESIGN: "an error or reset on either side aborts both sides of the flow".
/// A reset must arrive as a reset: were it turned into a FIN, a cut upload
/// or download would look complete to the other end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_either_end_arrives_as_a_reset() {
    let (port, mut ends) = reset_app().await;
    let t = Builder::quic().segment_port(port).start().await;

    // Client -> app: the client resets, the app must read ECONNRESET.
    let mut s = lifeboat::demo::socks_client::connect(t.socks(), DR_HOST, port)
        .await
        .expect("SOCKS connect");
    echo_roundtrip(&mut s).await;
    reset(s);
    let end = tokio::time::timeout(Duration::from_secs(10), ends.recv())
        .await
        .expect("the app saw its connection end within 10 s")
        .expect("app running");
    eventually("edge counts a reset flow", Duration::from_secs(5), || {
        t.edge_closed("reset") == 1
    })
    .await;

    // App -> client: the app resets, the client must read ECONNRESET.
    let mut s = lifeboat::demo::socks_client::connect(t.socks(), DR_HOST, port)
        .await
        .expect("SOCKS connect");
    echo_roundtrip(&mut s).await;
    s.write_all(b"RST").await.expect("write");
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the client saw the end within 10 s");
    eventually(
        "edge counts two reset flows",
        Duration::from_secs(5),
        || t.edge_closed("reset") == 2,
    )
    .await;

    assert_eq!(
        end,
        AppEnd::Reset,
        "the client reset its connection; the app saw {end:?}"
    );
    match got {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("the app reset its connection; the client read {n} bytes (0 = clean FIN)"),
    }
    assert_eq!(t.edge_closed("done"), 0);
    t.shutdown().await;
}

/// An app that speaks first (SSH, SMTP, MySQL): it writes a banner as soon
/// as it accepts, then holds the connection open.
async fn banner_app(banner: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind banner app");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(banner).await;
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// The app's first bytes, sent before the client said anything, reach the
/// client on every flow: they often travel in the same read as the
/// connector's reply, and the edge hands them on (100 flows, 32 at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_speaks_first_is_heard_on_every_flow() {
    const BANNER: &[u8] = b"SSH-2.0-lifeboat-test-banner\r\n";
    let port = banner_app(BANNER).await;
    let t = Builder::quic().segment_port(port).start().await;
    let socks = t.socks();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut flows = tokio::task::JoinSet::new();
    for i in 0..100 {
        let sem = Arc::clone(&sem);
        flows.spawn(async move {
            let _slot = sem.acquire_owned().await.expect("semaphore");
            let mut s = lifeboat::demo::socks_client::connect(socks, DR_HOST, port)
                .await
                .map_err(|e| format!("flow {i}: SOCKS connect: {e}"))?;
            let mut got = vec![0u8; BANNER.len()];
            match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got)).await {
                Ok(Ok(_)) if got == BANNER => Ok(()),
                Ok(Ok(_)) => Err(format!(
                    "flow {i}: banner {:?}",
                    String::from_utf8_lossy(&got)
                )),
                Ok(Err(e)) => Err(format!("flow {i}: {e}")),
                Err(_) => Err(format!("flow {i}: no banner within 10 s")),
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = flows.join_next().await {
        if let Err(e) = r.expect("flow task") {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 100 flows lost the banner: {failed:?}",
        failed.len()
    );
    t.shutdown().await;
}
