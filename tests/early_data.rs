//! A port-forwarded app that speaks first (HTTP, a TLS ClientHello) has its
//! first bytes sent behind the CONNECT preamble rather than after the
//! edge's answer: one round trip to the edge less per flow. What must hold:
//! the bytes arrive byte-exact through the real chain on both transports;
//! they do go out before the answer; a flow whose tunnel breaks after they
//! went out is not opened again on the next tunnel (the edge may have
//! passed them on: a request must not be done twice); a flow whose app sent
//! nothing still is; a `going-away` refusal (nothing was passed on) sends
//! them again on the next tunnel. The HTTP listener sends a plain proxy
//! request's head the same way; a GET (HEAD, OPTIONS) is opened again, a
//! POST is not.
//!
//! All but the first need an edge that breaks at an exact moment: a fake edge
//! built from the edge's own pieces (`quic::server_endpoint`, the welcome),
//! in front of the real client.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lifeboat::config::Limits;
use lifeboat::refusal::Refusal;
use lifeboat::transport::quic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP request larger than one early read, so the flow carries bytes
/// both before and after the edge's answer; the demo app echoes its body.
fn echo_request(body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_app_that_speaks_first_is_carried_byte_exact_on_both_transports() {
    let t = Builder::new().start().await;
    let to = format!("{DR_HOST}:{}", t.app.port());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let req = echo_request(&body);
    let refused_to = format!("{NON_DR_HOST}:{}", t.app.port());
    for transport in [Transport::Auto, Transport::Tls] {
        let c = t
            .start_forwarding_client(ALICE, transport, &[&to, &refused_to])
            .await;
        // A flow the edge refuses (not a DR segment) after its first bytes
        // went out: they are dropped, the app's connection is closed, and
        // the tunnel carries on (over HTTP/2 the edge answers a stream
        // whose DATA it never read).
        let mut refused = TcpStream::connect(c.forwards[1]).await.expect("connect");
        refused
            .write_all(&req[..4096])
            .await
            .expect("write request");
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), refused.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: the refused flow is closed within 10 s"));
        assert!(
            matches!(end, Ok(0) | Err(_)) && rest.is_empty(),
            "{transport:?}: the refused flow's app got {end:?} {rest:?}"
        );
        let m = Arc::clone(&c.metrics);
        eventually(
            &format!("{transport:?}: the client counts the refusal by its word"),
            Duration::from_secs(5),
            || m.refused_unmatched(Refusal::NotDrSegment).get() == 1,
        )
        .await;
        let mut app = TcpStream::connect(c.forwards[0]).await.expect("connect");
        // All of it at once, before anything came back: the first read the
        // client takes rides with the preamble, the rest follows the answer.
        app.write_all(&req).await.expect("write request");
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), app.read_to_end(&mut resp))
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: no whole answer in 20 s"))
            .expect("read answer");
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{transport:?}: no response head in {} bytes", resp.len()));
        let head = String::from_utf8_lossy(&resp[..split]);
        assert!(head.starts_with("HTTP/1.1 200"), "{transport:?}: {head}");
        assert!(
            resp[split + 4..] == body[..],
            "{transport:?}: the echo differs from what was sent ({} bytes back of {})",
            resp.len() - split - 4,
            body.len()
        );
        // The bytes sent before the answer are counted with the rest (the
        // refused flow's were never carried).
        let want = req.len() as u64;
        eventually(
            &format!("{transport:?}: the client counts every byte the app sent"),
            Duration::from_secs(5),
            || m.agent_bytes.up.get() == want,
        )
        .await;
        // The HTTP/2 tunnel outlived the refused stream and its unread DATA
        // (`auto` may move between QUIC and TLS by itself: not counted).
        if transport == Transport::Tls {
            assert_eq!(
                handshakes_of(&c.metrics, "edge", "tls", "ok"),
                1,
                "both flows rode the first HTTP/2 tunnel"
            );
        }
    }
}

/// A QUIC edge that answers nothing by itself: each tunnel the client
/// dials is welcomed and handed to the test.
struct FakeEdge {
    ep: quinn::Endpoint,
}

impl FakeEdge {
    fn start(rig: &Rig) -> Self {
        let trust = rig.ca.trust(&rig.edge_cert);
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let ep = quic::server_endpoint(addr, &trust, &Limits::default()).expect("endpoint");
        Self { ep }
    }

    fn addr(&self) -> SocketAddr {
        self.ep.local_addr().expect("addr")
    }

    /// The client's next tunnel, welcomed.
    async fn tunnel(&self) -> quinn::Connection {
        let conn = tokio::time::timeout(Duration::from_secs(10), async {
            let incoming = self.ep.accept().await.expect("endpoint open");
            incoming.await.expect("handshake")
        })
        .await
        .expect("the client dialled within 10 s");
        quic::send_welcome(&conn).await;
        conn
    }
}

/// A flow stream: its CONNECT preamble and whatever followed it, once at
/// least `extra` bytes followed (within 5 s).
struct FakeFlow {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    preamble: String,
    after: Vec<u8>,
}

async fn next_flow(conn: &quinn::Connection, extra: usize) -> FakeFlow {
    let (send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .expect("a flow stream within 10 s")
        .expect("stream");
    let mut buf = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if buf.len() >= end + 4 + extra {
                    return end + 4;
                }
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                other => panic!("stream ended with {} bytes: {other:?}", buf.len()),
            }
        }
    })
    .await;
    let end = got.unwrap_or_else(|_| {
        panic!(
            "no preamble with {extra} bytes after it within 5 s (the edge has not answered): got {:?}",
            String::from_utf8_lossy(&buf)
        )
    });
    FakeFlow {
        send,
        recv,
        preamble: String::from_utf8_lossy(&buf[..end]).into_owned(),
        after: buf[end..].to_vec(),
    }
}

/// The real client (alice, `transport = "auto"`, a port forward to
/// DR_HOST:80) whose only edge is a fake one, and its first tunnel there.
struct Lab {
    _rig: Rig,
    edge: FakeEdge,
    client: ClientHandle,
    first: quinn::Connection,
}

impl Lab {
    async fn start() -> Self {
        let rig = Rig::new().await;
        let edge = FakeEdge::start(&rig);
        let text = rig.forwarding_client_config(
            &rig.user(ALICE),
            &rig.ca.pem(),
            &[edge.addr()],
            "auto",
            &[&format!("{DR_HOST}:80")],
        );
        let client = rig.spawn_client(&text).await;
        let first = edge.tunnel().await;
        Self {
            _rig: rig,
            edge,
            client,
            first,
        }
    }

    /// An app connection to the forward listener.
    async fn app(&self) -> TcpStream {
        TcpStream::connect(self.client.forwards[0])
            .await
            .expect("connect")
    }
}

/// Exactly `n` bytes from `r` within 5 s.
async fn read_n(r: &mut (impl AsyncReadExt + Unpin), n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what} within 5 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    buf
}

/// What `app` reads until its connection ends (within 5 s).
async fn read_all(app: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut got))
        .await
        .expect("the app's answer within 5 s")
        .expect("read");
    got
}

/// The fake edge connects `flow` and the app behind it answers `204`,
/// which reaches `app`.
async fn answer_204(flow: &mut FakeFlow, app: &mut TcpStream) {
    flow.send
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
        .await
        .expect("answer");
    let _ = flow.send.finish();
    assert_eq!(read_all(app).await, b"HTTP/1.1 204 No Content\r\n\r\n");
}

/// The app's side sees its connection end (EOF or reset) within 5 s.
async fn closed(app: &mut TcpStream) {
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), app.read(&mut b))
        .await
        .expect("the client closed the app's connection within 5 s");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the app got bytes, not its connection closed: {r:?}"
    );
}

const REQUEST: &[u8] = b"POST /pay HTTP/1.1\r\nHost: payroll\r\nContent-Length: 4\r\n\r\nonce";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_go_before_the_answer_and_are_not_sent_twice_when_the_tunnel_breaks() {
    let lab = Lab::start().await;
    let (edge, first) = (&lab.edge, &lab.first);
    let mut app = lab.app().await;
    app.write_all(REQUEST).await.expect("write");
    // The request reaches the edge with the preamble, while it has not
    // answered: it went out before the answer.
    let flow = next_flow(first, REQUEST.len()).await;
    assert!(
        flow.preamble
            .starts_with(&format!("CONNECT {DR_HOST}:80 HTTP/1.1\r\n")),
        "{}",
        flow.preamble
    );
    assert_eq!(flow.after, REQUEST);
    // The edge's tunnel breaks before any answer (as when it is killed and
    // a restarted edge resets the tunnel).
    first.close(0x77u32.into(), b"edge crashed");
    // The flow is not opened again: the app's connection is closed...
    closed(&mut app).await;
    // ...and the next tunnel carries no second copy of the request.
    let second = edge.tunnel().await;
    let again = tokio::time::timeout(Duration::from_secs(1), second.accept_bi()).await;
    assert!(
        again.is_err(),
        "the flow was opened again on the next tunnel: {again:?}"
    );
    drop(flow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_app_waits_is_opened_again_when_the_tunnel_breaks() {
    let lab = Lab::start().await;
    let (edge, first) = (&lab.edge, &lab.first);
    // An app whose server speaks first (an SSH or SMTP client): it sends
    // nothing until it hears the banner.
    let mut app = lab.app().await;
    let flow = next_flow(first, 0).await;
    assert!(flow.after.is_empty(), "{:?}", flow.after);
    first.close(0x77u32.into(), b"edge crashed");
    // Nothing of the app's went out: the flow is opened on the next tunnel.
    let second = edge.tunnel().await;
    let mut flow = next_flow(&second, 0).await;
    assert!(flow.preamble.starts_with(&format!("CONNECT {DR_HOST}:80 ")));
    flow.send
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\nSSH-2.0-banner\r\n")
        .await
        .expect("answer");
    assert_eq!(
        read_n(&mut app, 16, "the banner").await,
        b"SSH-2.0-banner\r\n"
    );
    // And the flow carries the app's bytes after the answer.
    app.write_all(b"SSH-2.0-client\r\n").await.expect("write");
    let got = read_n(&mut flow.recv, 16, "the app's bytes").await;
    assert_eq!(got, b"SSH-2.0-client\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_going_away_refusal_sends_the_first_bytes_again_on_the_next_tunnel() {
    let lab = Lab::start().await;
    let mut app = lab.app().await;
    app.write_all(REQUEST).await.expect("write");
    let mut flow = next_flow(&lab.first, REQUEST.len()).await;
    assert_eq!(flow.after, REQUEST);
    // The edge is draining: it turns the flow away unforwarded.
    let answer = Refusal::GoingAway.encode_response("draining for a restart");
    flow.send.write_all(&answer).await.expect("refuse");
    let _ = flow.send.finish();
    // The client leaves this tunnel and sends preamble and request again.
    let second = lab.edge.tunnel().await;
    let mut flow = next_flow(&second, REQUEST.len()).await;
    assert_eq!(flow.after, REQUEST, "the request, once, on the next tunnel");
    answer_204(&mut flow, &mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_proxy_get_is_opened_again_when_the_tunnel_breaks_a_post_is_not() {
    let lab = Lab::start().await;
    let proxy = |method: &str, path: &str| {
        format!("{method} http://{DR_HOST}{path} HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: 0\r\n\r\n")
    };
    // What the edge gets: the head rewritten to origin form.
    let origin = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    // A GET asks nothing to be done: sent again on the next tunnel.
    let mut get = TcpStream::connect(lab.client.http).await.expect("connect");
    get.write_all(proxy("GET", "/x").as_bytes())
        .await
        .expect("write");
    let want = origin("GET", "/x");
    let flow = next_flow(&lab.first, want.len()).await;
    assert_eq!(flow.after, want);
    lab.first.close(0x77u32.into(), b"edge crashed");
    let second = lab.edge.tunnel().await;
    let mut flow = next_flow(&second, want.len()).await;
    assert_eq!(flow.after, want, "the GET, again, on the next tunnel");
    answer_204(&mut flow, &mut get).await;
    // A POST may do something: not sent twice.
    let mut post = TcpStream::connect(lab.client.http).await.expect("connect");
    post.write_all(proxy("POST", "/pay").as_bytes())
        .await
        .expect("write");
    let want = origin("POST", "/pay");
    let flow = next_flow(&second, want.len()).await;
    assert_eq!(flow.after, want);
    second.close(0x77u32.into(), b"edge crashed");
    // The proxy's app hears why, and the connection ends.
    let resp = read_all(&mut post).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.starts_with("HTTP/1.1 5") && resp.contains("Lifeboat-Error: "),
        "{resp}"
    );
    let third = lab.edge.tunnel().await;
    let again = tokio::time::timeout(Duration::from_secs(1), third.accept_bi()).await;
    assert!(again.is_err(), "the POST was sent again: {again:?}");
}
