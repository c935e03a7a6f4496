//! Keepalives: a real `lifeboat edge` process is frozen with SIGSTOP (its
//! kernel still ACKs TCP, but the process answers nothing: no QUIC packet,
//! no HTTP/2 PING). With `idle_timeout = "2s"` everywhere, the client's QUIC
//! tunnel, a connector's QUIC tunnel and a connector's TLS (HTTP/2) tunnel
//! are declared dead within the idle timeout, and the flows they carried
//! end at the client and at both connectors. SIGCONT brings the edge back,
//! the agents reconnect, and SIGTERM stops it cleanly.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::*;
use lifeboat::metrics::Metrics;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const IDLE: Duration = Duration::from_secs(2);
const LIMITS: &str = "idle_timeout = \"2s\"\n";

/// How a flow read through the client's HTTP CONNECT listener ended.
#[derive(Debug)]
struct FlowEnd {
    bytes: u64,
    at: Instant,
    how: String,
}

/// Open a flow to the app's `/bytes/1GiB` through the client's HTTP
/// listener and read it at a trickle (64 KiB every 20 ms) until it ends or
/// 40 s pass. Returns once the first body bytes arrived.
async fn trickle_flow(http: SocketAddr, app_port: u16) -> tokio::task::JoinHandle<FlowEnd> {
    let mut s = TcpStream::connect(http).await.expect("connect client");
    let auth = format!("{DR_HOST}:{app_port}");
    let req = format!(
        "CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\nGET /bytes/{} HTTP/1.1\r\nHost: {DR_HOST}\r\n\r\n",
        1u64 << 30
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    let first = async {
        while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
            let k = s.read(&mut buf).await.expect("read");
            assert!(k > 0, "flow ended early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..k]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("flow established and answered within 10 s");
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut bytes = got.len() as u64;
        let how = loop {
            if Instant::now() > deadline {
                break "still running after 40 s".to_string();
            }
            match s.read(&mut buf).await {
                Ok(0) => break "EOF".to_string(),
                Ok(k) => bytes += k as u64,
                Err(e) => break e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        FlowEnd {
            bytes,
            at: Instant::now(),
            how,
        }
    })
}

fn flows(m: &Metrics) -> i64 {
    m.flows_active.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_edge_is_declared_dead_within_idle_timeout_on_quic_and_tls() {
    let rig = Rig::new().await;
    let app_port = rig.app.port();
    let text = rig.edge_toml(
        "quic = \"127.0.0.1:0\"\ntls = \"127.0.0.1:0\"",
        "static:on",
        LIMITS,
    );
    let config = rig.dir.path().join("edge.toml");
    std::fs::write(&config, &text).expect("write edge.toml");
    let mut edge = Proc::role("edge", &config);
    let quic = edge.listening("quic").await;
    let tls = edge.listening("tls").await;

    // Connector 0 over QUIC, connector 1 over TLS (HTTP/2), a QUIC client,
    // a TLS (HTTP/2) client.
    let cq = rig.start_connector(0, quic, "quic", LIMITS);
    let ct = rig.start_connector(1, tls, "tls", LIMITS);
    let client = rig
        .start_client(&rig.user(ALICE), quic, "quic", LIMITS)
        .await;
    let client_tls = rig.start_client(&rig.user(BOB), tls, "tls", LIMITS).await;
    let cm = Arc::clone(&client.metrics);
    let ctm = Arc::clone(&client_tls.metrics);
    let up = |cq: &Metrics, ct: &Metrics, cm: &Metrics, ctm: &Metrics| {
        tunnels_of(cq, "edge", "quic") == 1
            && tunnels_of(ct, "edge", "tls") == 1
            && tunnels_of(cm, "edge", "quic") == 1
            && tunnels_of(ctm, "edge", "tls") == 1
    };
    eventually("all four tunnels up", Duration::from_secs(15), || {
        up(&cq, &ct, &cm, &ctm)
    })
    .await;

    // Two running flows: the edge puts them on the least-loaded connector,
    // one on each.
    let f1 = trickle_flow(client.http, app_port).await;
    let f2 = trickle_flow(client.http, app_port).await;
    eventually("one flow at each connector", Duration::from_secs(5), || {
        flows(&cq) == 1 && flows(&ct) == 1 && flows(&cm) == 2
    })
    .await;

    // Freeze the edge.
    edge.signal("-STOP");
    let stopped = Instant::now();
    let bound = IDLE + Duration::from_secs(1);
    let within = bound + Duration::from_secs(5);
    let after = |what: &'static str, m: &'static str, cond: fn(&Metrics) -> bool| {
        let m = match m {
            "client" => Arc::clone(&cm),
            "tls client" => Arc::clone(&ctm),
            "quic connector" => Arc::clone(&cq),
            _ => Arc::clone(&ct),
        };
        async move {
            eventually(what, within, || cond(&m)).await;
            stopped.elapsed()
        }
    };
    let client_dead = after("client QUIC tunnel declared dead", "client", |m| {
        tunnels_of(m, "edge", "quic") == 0
    });
    let client_tls_dead = after(
        "client TLS (HTTP/2) tunnel declared dead",
        "tls client",
        |m| tunnels_of(m, "edge", "tls") == 0,
    );
    let cq_dead = after(
        "connector QUIC tunnel declared dead",
        "quic connector",
        |m| tunnels_of(m, "edge", "quic") == 0,
    );
    let ct_dead = after(
        "connector TLS (HTTP/2) tunnel declared dead",
        "tls connector",
        |m| tunnels_of(m, "edge", "tls") == 0,
    );
    let cq_flow = after("the QUIC connector's flow ended", "quic connector", |m| {
        flows(m) == 0
    });
    let ct_flow = after("the TLS connector's flow ended", "tls connector", |m| {
        flows(m) == 0
    });
    let client_flows = after("the client's flows ended", "client", |m| flows(m) == 0);
    let (client_dead, client_tls_dead, cq_dead, ct_dead, cq_flow, ct_flow, client_flows) = tokio::join!(
        client_dead,
        client_tls_dead,
        cq_dead,
        ct_dead,
        cq_flow,
        ct_flow,
        client_flows
    );
    let ends = [
        f1.await.expect("flow 1 task"),
        f2.await.expect("flow 2 task"),
    ];
    eprintln!(
        "edge frozen (idle_timeout {IDLE:?}); declared dead after: client QUIC {client_dead:?}, \
         client TLS/HTTP-2 {client_tls_dead:?}, \
         connector QUIC {cq_dead:?}, connector TLS/HTTP-2 {ct_dead:?}; flows ended: \
         QUIC connector {cq_flow:?}, TLS connector {ct_flow:?}, client {client_flows:?}; \
         local sockets: {:?}",
        ends.iter()
            .map(|e| format!(
                "{} after {:?} ({} bytes)",
                e.how,
                e.at.duration_since(stopped),
                e.bytes
            ))
            .collect::<Vec<_>>()
    );
    // HTTP/2: a PING unanswered past idle_timeout less one keepalive period
    // (the worst case, the freeze right after a PING answer, is made exact
    // in `http2_tunnel_is_dead_within_idle_timeout_of_the_last_frame`).
    // QUIC (RFC 9000 §10.1): the idle timer restarts at the last packet
    // received and again at the first ack-eliciting packet sent after it,
    // which on an idle tunnel is our own keepalive PING, up to one
    // keepalive period later: idle_timeout + IDLE/3 at worst.
    let quic_bound = bound + IDLE / 3;
    for (what, took, limit) in [
        ("client QUIC tunnel", client_dead, quic_bound),
        ("client TLS/HTTP-2 tunnel", client_tls_dead, bound),
        ("connector QUIC tunnel", cq_dead, quic_bound),
        ("connector TLS/HTTP-2 tunnel", ct_dead, bound),
        ("QUIC connector's flow", cq_flow, quic_bound),
        ("TLS connector's flow", ct_flow, bound),
        ("client's flows", client_flows, quic_bound),
    ] {
        assert!(
            took <= limit,
            "{what} ended {took:?} after the edge froze; idle_timeout is {IDLE:?}"
        );
    }
    for e in &ends {
        assert!(
            e.how != "still running after 40 s" && e.at.duration_since(stopped) <= quic_bound,
            "the local connection of a flow ended {:?} after the freeze: {e:?}",
            e.at.duration_since(stopped)
        );
    }

    // Thaw it: every agent reconnects (backoff), and a flow works again.
    edge.signal("-CONT");
    eventually("all four tunnels up again", Duration::from_secs(20), || {
        up(&cq, &ct, &cm, &ctm)
    })
    .await;
    let f3 = trickle_flow(client.http, app_port).await;
    f3.abort();
    // The HTTP/2 client's flows work again too.
    first_flow_after(client_tls.http, app_port, Duration::from_secs(10)).await;

    // SIGTERM: it drains (2 s) and exits 0.
    edge.signal("-TERM");
    let status = edge.exited(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "{}", edge.log());
}

/// The plaintext side of a fake edge's TLS connection: it scans the HTTP/2
/// frames the edge writes and, once armed, freezes right after the first
/// PING ACK has been flushed (the answer to the connector's keepalive PING):
/// from then on it neither reads nor writes, like a stopped process whose
/// kernel still holds the TCP connection open.
struct FreezeAfterPong<T> {
    inner: T,
    /// Bytes of the written stream still to skip (preface, frame payloads).
    skip: usize,
    /// A partial frame header.
    head: Vec<u8>,
    pong_written: bool,
    frozen: Arc<Mutex<Option<Instant>>>,
    armed: Arc<AtomicBool>,
}

impl<T> FreezeAfterPong<T> {
    fn is_frozen(&self) -> bool {
        self.frozen.lock().expect("frozen").is_some()
    }

    /// Follow the frames in `buf`, the next bytes the edge wrote.
    fn scan(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                continue;
            }
            let n = (9 - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.head.len() == 9 {
                let h = std::mem::take(&mut self.head);
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                // Type 6 is PING, flag 1 its ACK.
                if h[3] == 6 && h[4] & 1 == 1 && self.armed.load(Ordering::SeqCst) {
                    self.pong_written = true;
                }
                self.skip = len;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FreezeAfterPong<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_frozen() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FreezeAfterPong<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_frozen() {
            return Poll::Pending;
        }
        let n = match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        self.scan(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_frozen() {
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && self.pong_written {
            *self.frozen.lock().expect("frozen") = Some(Instant::now());
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_frozen() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// DESIGN: "a tunnel silent past idle_timeout is dead". A real connector
/// (`transport = "tls"`) dials a fake edge built from the edge's own pieces
/// (`Trust::server_config`, `transport::mux::edge_side`), which goes
/// silent right after answering one of the connector's keepalive PINGs:
/// the worst case of the PING cycle, made exact. The connector must
/// declare the tunnel dead within idle_timeout of that last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_tunnel_is_dead_within_idle_timeout_of_the_last_frame() {
    let rig = Rig::new().await;
    let trust = rig.ca.trust(&rig.edge_cert);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(trust.server_config(
        &[lifeboat::trust::Role::Connector],
        &[lifeboat::transport::ALPN_CONNECTOR],
    )));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frozen = Arc::new(Mutex::new(None::<Instant>));
    let armed = Arc::new(AtomicBool::new(false));
    let (f, a) = (Arc::clone(&frozen), Arc::clone(&armed));
    let fake_edge = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("TLS handshake");
        let io = FreezeAfterPong {
            inner: tls,
            // The client connection preface (`PRI * HTTP/2.0...`) comes first.
            skip: 24,
            head: Vec::new(),
            pong_written: false,
            frozen: f,
            armed: a,
        };
        let limits = lifeboat::config::Limits {
            idle_timeout: IDLE,
            ..Default::default()
        };
        let (link, driver) = lifeboat::transport::mux::client_side(io, &limits)
            .await
            .expect("HTTP/2 handshake");
        // The driver stays pending once frozen; the test's end drops it.
        let why = driver.await;
        drop(link);
        why
    });

    let cm = rig.start_connector(0, addr, "tls", LIMITS);
    eventually(
        "connector tunnel over TLS up",
        Duration::from_secs(10),
        || tunnels_of(&cm, "edge", "tls") == 1,
    )
    .await;
    armed.store(true, Ordering::SeqCst);
    let f = Arc::clone(&frozen);
    eventually(
        "the fake edge answered a keepalive PING and froze",
        Duration::from_secs(5),
        || f.lock().expect("frozen").is_some(),
    )
    .await;
    let since = frozen.lock().expect("frozen").expect("frozen at");
    eventually(
        "connector declares the silent tunnel dead",
        IDLE * 3,
        || tunnels_of(&cm, "edge", "tls") == 0,
    )
    .await;
    let took = since.elapsed();
    eprintln!(
        "HTTP/2 tunnel silent since a PING answer: connector declared it dead after {took:?} (idle_timeout {IDLE:?}, keepalive {:?})",
        IDLE / 3
    );
    // Scheduling slack of 300 ms on 2 cores; one more keepalive period
    // (667 ms) is the bug this catches.
    assert!(
        took <= IDLE + Duration::from_millis(300),
        "the connector's HTTP/2 tunnel was silent for {took:?} before it was declared dead; idle_timeout is {IDLE:?}"
    );
    fake_edge.abort();
}
