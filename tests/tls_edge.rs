//! The edge's `tls` listener as a standard HTTPS proxy: curl and `openssl
//! s_client` with a client certificate and no lifeboat client; a third-party
//! QUIC client (aioquic) on the QUIC listener; TLS 1.3 resumption that keeps
//! the client's identity and dies with a CRL reload. Prints full and resumed
//! handshake rates.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lifeboat::dr::DrMode;
use lifeboat::transport::tls::ALPN_HTTP1;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 256 MiB.
const BIG: u64 = 256 * 1024 * 1024;

/// An edge with both listeners on one port number, one connector (QUIC)
/// registered, DR `mode`.
async fn tls_edge(mode: DrMode) -> Topology {
    let t = Builder::quic()
        .listen(Listen::Both)
        .crl()
        .dr(Dr::Static(mode))
        .client(None)
        .start()
        .await;
    let (quic, tls) = (t.edge_quic(), t.edge_tls());
    assert_eq!(quic.port(), tls.port(), "one port number for both");
    t
}

/// curl's proxy arguments for the edge's TLS listener, with `cert` or none.
fn proxy_args(t: &Topology, cert: Option<&CertFiles>) -> Vec<String> {
    let mut a = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "50".into(),
        "--proxy".into(),
        format!("https://{}", t.edge_tls()),
        "--proxy-cacert".into(),
        t.ca.pem().display().to_string(),
    ];
    if let Some(c) = cert {
        a.extend([
            "--proxy-cert".into(),
            c.cert.display().to_string(),
            "--proxy-key".into(),
            c.key.display().to_string(),
        ]);
    }
    a
}

/// Run curl to completion (at most 55 s): (exit code, stdout, stderr).
async fn run_curl(args: &[String]) -> (Option<i32>, Vec<u8>, String) {
    let out = tokio::time::timeout(Duration::from_secs(55), curl().args(args).output())
        .await
        .expect("curl finished within 55 s")
        .expect("run curl");
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn edge_tls_handshakes(edge: &lifeboat::metrics::Metrics, result: &str) -> u64 {
    handshakes_of(edge, "client", "tls", result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_https_proxy_256_mib_byte_exact() {
    let t = tls_edge(DrMode::On).await;
    let alice = t.user_cert(ALICE);
    let mut args = proxy_args(&t, Some(&alice));
    args.extend([
        "-p".into(),
        format!("http://{DR_HOST}:{}/bytes/{BIG}", t.app.port()),
        "-o".into(),
        "-".into(),
    ]);
    let started = Instant::now();
    let (got, status) = curl_streamed(&args, Duration::from_secs(55)).await;
    let took = started.elapsed();
    assert!(
        status.status.success(),
        "curl {args:?}: {:?} {}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(got, BIG, "bytes delivered");
    eprintln!(
        "256 MiB through curl -> edge tls listener -> QUIC connector in {took:?} ({:.0} MiB/s)",
        BIG as f64 / 1048576.0 / took.as_secs_f64()
    );
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 1);
    let m = &t.edge_metrics;
    assert_eq!(m.flows_total.with_label_values(&["payroll", "ok"]).get(), 1);
    assert!(
        m.flow_bytes.with_label_values(&["payroll", "down"]).get() >= BIG,
        "edge counted the bytes down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_without_a_client_certificate_is_refused_at_the_handshake() {
    let t = tls_edge(DrMode::On).await;
    let mut args = proxy_args(&t, None);
    args.extend([
        "-p".into(),
        format!("http://{DR_HOST}:{}/bytes/100", t.app.port()),
    ]);
    let (code, stdout, stderr) = run_curl(&args).await;
    assert_ne!(code, Some(0), "curl succeeded without a certificate");
    assert!(stdout.is_empty(), "no app bytes: {stdout:?}");
    // Not an HTTP answer: the TLS handshake itself failed.
    assert!(!stderr.contains("CONNECT tunnel failed"), "{stderr}");
    assert!(stderr.contains("certificate required"), "{stderr}");
    eprintln!(
        "curl without a client certificate: exit {code:?}: {}",
        stderr.trim()
    );
    let m = Arc::clone(&t.edge_metrics);
    eventually(
        "edge counts handshakes_total{client,tls,no-certificate}",
        Duration::from_secs(5),
        || handshakes_of(&m, "client", "tls", "no-certificate") == 1,
    )
    .await;
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 0);
    assert_eq!(m.flows_total.with_label_values(&["payroll", "ok"]).get(), 0);
}

/// The response lines curl -v logged from the proxy (`< ...`).
fn proxy_answer(stderr: &str) -> String {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("< "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_refusals_403_405_431() {
    let t = tls_edge(DrMode::On).await;
    let alice = t.user_cert(ALICE);
    let port = t.app.port();

    // A segment that is not designated for DR.
    let mut args = proxy_args(&t, Some(&alice));
    args.extend([
        "-v".into(),
        "-p".into(),
        format!("http://{NON_DR_HOST}:{port}/"),
    ]);
    let (code, _, stderr) = run_curl(&args).await;
    let answer = proxy_answer(&stderr);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("CONNECT tunnel failed, response 403"),
        "{stderr}"
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("Lifeboat-Error: not-dr-segment"),
        "{answer}"
    );

    // No -p: curl asks the proxy `GET http://...` instead of CONNECT.
    let mut args = proxy_args(&t, Some(&alice));
    args.extend([
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        format!("http://{DR_HOST}:{port}/"),
    ]);
    let (code, stdout, stderr) = run_curl(&args).await;
    let head = String::from_utf8_lossy(&stdout);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.contains("Lifeboat-Error: method"), "{head}");

    // A CONNECT preamble over 8 KiB (a big proxy header).
    let mut args = proxy_args(&t, Some(&alice));
    args.extend([
        "-v".into(),
        "--proxy-header".into(),
        format!("X-Pad: {}", "p".repeat(9000)),
        "-p".into(),
        format!("http://{DR_HOST}:{port}/"),
    ]);
    let (code, _, stderr) = run_curl(&args).await;
    let answer = proxy_answer(&stderr);
    assert_ne!(code, Some(0));
    assert!(answer.starts_with("HTTP/1.1 431"), "{stderr}");
    assert!(answer.contains("Lifeboat-Error: too-large"), "{answer}");

    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 3);
    let m = &t.edge_metrics;
    assert_eq!(m.flows_total.with_label_values(&["payroll", "ok"]).get(), 0);
}

/// `openssl s_client -quiet` to `addr` with `cert` (or none): writes
/// `first`, reads its answer head; if that is a 200 and `then` is given,
/// writes it. Returns its exit code, everything read until the edge closed
/// (at most 30 s) and its stderr.
async fn s_client(
    rig: &Rig,
    addr: std::net::SocketAddr,
    cert: Option<&CertFiles>,
    first: &[u8],
    then: Option<&[u8]>,
) -> (Option<i32>, Vec<u8>, String) {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(rig.ca.pem())
        .args(["-alpn", "http/1.1"]);
    if let Some(c) = cert {
        cmd.arg("-cert").arg(&c.cert).arg("-key").arg(&c.key);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut got = Vec::new();
    let io = async {
        // A write to an s_client that already failed may see a broken pipe.
        let _ = stdin.write_all(first).await;
        let _ = stdin.flush().await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent_then = then.is_none();
        loop {
            let k = stdout.read(&mut buf).await.expect("read s_client");
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
            if !sent_then && got.windows(4).any(|w| w == b"\r\n\r\n") {
                sent_then = true;
                if got.starts_with(b"HTTP/1.1 200 ") {
                    let _ = stdin.write_all(then.unwrap_or_default()).await;
                    let _ = stdin.flush().await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .expect("s_client done within 30 s");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("s_client exits")
        .expect("wait s_client");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), got, stderr)
}

fn connect_to(host: &str, port: u16) -> Vec<u8> {
    format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_connect_by_hand() {
    let t = tls_edge(DrMode::On).await;
    let alice = t.user_cert(ALICE);
    let tls = t.edge_tls();
    let port = t.app.port();
    const N: usize = 1 << 20;

    // CONNECT, the edge's 200, then an HTTP request to the app through it.
    let get = format!("GET /bytes/{N} HTTP/1.1\r\nHost: {DR_HOST}\r\nConnection: close\r\n\r\n");
    let (_, got, stderr) = s_client(
        &t,
        tls,
        Some(&alice),
        &connect_to(DR_HOST, port),
        Some(get.as_bytes()),
    )
    .await;
    assert!(!got.is_empty(), "s_client: {stderr}");
    let (head, rest) = split_http(&got);
    assert_eq!(head, "HTTP/1.1 200 Connection Established");
    let (app_head, body) = split_http(rest);
    assert!(app_head.starts_with("HTTP/1.1 200"), "{app_head}");
    assert_eq!(body.len(), N, "app body length");
    let mut check = PatternCheck::default();
    check.feed(body);

    // Refusals: status and word.
    let cases: [(Vec<u8>, &str, &str); 3] = [
        (connect_to(NON_DR_HOST, port), "403", "not-dr-segment"),
        (
            format!("GET http://{DR_HOST}:{port}/ HTTP/1.1\r\nHost: {DR_HOST}:{port}\r\n\r\n")
                .into_bytes(),
            "405",
            "method",
        ),
        (
            format!(
                "CONNECT {DR_HOST}:{port} HTTP/1.1\r\nHost: {DR_HOST}:{port}\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(9000)
            )
            .into_bytes(),
            "431",
            "too-large",
        ),
    ];
    for (req, status, word) in &cases {
        let (_, got, stderr) = s_client(&t, tls, Some(&alice), req, None).await;
        assert!(!got.is_empty(), "{status}: s_client: {stderr}");
        let (head, body) = split_http(&got);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {head}"
        );
        assert!(
            head.contains(&format!("Lifeboat-Error: {word}")),
            "{word}: {head}"
        );
        assert!(!body.is_empty(), "a one-line reason follows: {head}");
    }

    // No certificate: the handshake fails, nothing is answered.
    let (code, got, stderr) = s_client(&t, tls, None, &connect_to(DR_HOST, port), None).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_ne!(code, Some(0), "s_client without a certificate: {stderr}");
    assert!(stderr.contains("certificate required"), "{stderr}");
    let m = Arc::clone(&t.edge_metrics);
    eventually("no-certificate counted", Duration::from_secs(5), || {
        handshakes_of(&m, "client", "tls", "no-certificate") == 1
    })
    .await;
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 4);
}

/// Whether python3 runs `check` (an import of a third-party client's
/// library); if not, the test is skipped unless `require` is set to 1 in
/// the environment, and then it fails.
fn python_has(what: &str, check: &str, require: &str, install: &str) -> bool {
    let out = std::process::Command::new("python3")
        .args(["-c", check])
        .output();
    let why = match out {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("python3: {e}"),
    };
    assert!(
        std::env::var(require).as_deref() != Ok("1"),
        "{require}=1 but python3 with {what} is missing: {why}"
    );
    eprintln!("SKIPPED: python3 with {what} is missing ({why}); `{install}`");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_client_speaks_to_the_quic_edge() {
    let check = "import aioquic";
    if !python_has(
        "aioquic",
        check,
        "LIFEBOAT_REQUIRE_AIOQUIC",
        "pip install aioquic",
    ) {
        return;
    }
    let t = tls_edge(DrMode::On).await;
    let alice = t.user_cert(ALICE);
    let quic = t.edge_quic();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aioquic_client.py");
    const N: u64 = 1 << 20;
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port", &quic.port().to_string()])
        .arg("--ca")
        .arg(t.ca.pem())
        .arg("--cert")
        .arg(&alice.cert)
        .arg("--key")
        .arg(&alice.key)
        .args([
            "--dest",
            &format!("{DR_HOST}:{}", t.app.port()),
            "--refused-dest",
            &format!("{NON_DR_HOST}:{}", t.app.port()),
            "--bytes",
            &N.to_string(),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(40), out)
        .await
        .expect("aioquic client done within 40 s")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "aioquic client failed: {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{}", stdout.trim());
    // What the script saw, checked here too.
    assert!(stdout.contains("alpn=lifeboat/1"), "{stdout}");
    assert!(
        stdout.contains("answer=HTTP/1.1 200 Connection Established"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("app_body={N} pattern=ok")),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused=HTTP/1.1 403") && stdout.contains("word=not-dr-segment"),
        "{stdout}"
    );
    // The edge saw a client tunnel over QUIC from alice, and served its flow.
    assert_eq!(handshakes_of(&t.edge_metrics, "client", "quic", "ok"), 1);
    let m = &t.edge_metrics;
    assert_eq!(m.flows_total.with_label_values(&["payroll", "ok"]).get(), 1);
}

/// A third-party HTTP/2 client (Python's `h2`) on the edge's TLS listener:
/// ALPN `h2`, three CONNECT streams at once on one connection. The DR flow
/// echoes 4 MiB byte-exact both ways (half-closed after the body); the
/// refusals carry the contract's status and `lifeboat-error` word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_http2_client_connects_through_the_edge() {
    if !python_has("h2", "import h2", "LIFEBOAT_REQUIRE_H2", "pip install h2") {
        return;
    }
    let t = tls_edge(DrMode::On).await;
    let alice = t.user_cert(ALICE);
    let tls = t.edge_tls();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2_client.py");
    const N: usize = 4 << 20;
    let port = t.app.port();
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &tls.port().to_string(), "127.0.0.1"])
        .arg(t.ca.pem())
        .arg(&alice.cert)
        .arg(&alice.key)
        .args([
            format!("{DR_HOST}:{port}"),
            format!("{NON_DR_HOST}:{port}"),
            N.to_string(),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("h2 client done within 60 s")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "h2 client failed: {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");
    eprintln!("{seen}");
    assert_eq!(seen["alpn"], "h2");
    assert_eq!(seen["flow_status"], 200);
    assert_eq!(seen["echo_head"], "HTTP/1.1 200 OK", "{seen}");
    assert_eq!(seen["echo_len"], N);
    assert_eq!(seen["echo_exact"], true);
    let refusals = seen["refusals"].as_array().expect("refusals");
    assert_eq!(refusals[0]["status"], 403);
    assert_eq!(refusals[0]["word"], "not-dr-segment");
    assert_eq!(
        refusals[0]["line"],
        "destination is in no DR application segment\n"
    );
    assert_eq!(refusals[1]["status"], 405);
    assert_eq!(refusals[1]["word"], "method");
    // A header list over `preamble_bytes` gets the contract's word too.
    assert_eq!(refusals[2]["status"], 431);
    assert_eq!(refusals[2]["word"], "too-large");
    // One TLS handshake, one client tunnel; the flow and both refusals counted.
    let m = &t.edge_metrics;
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 1);
    assert_eq!(m.flows_total.with_label_values(&["payroll", "ok"]).get(), 1);
    assert!(m.flow_bytes.with_label_values(&["payroll", "up"]).get() >= N as u64);
    assert_eq!(
        m.refused_unmatched(lifeboat::refusal::Refusal::Method)
            .get(),
        1
    );
    assert_eq!(
        m.refused_unmatched(lifeboat::refusal::Refusal::TooLarge)
            .get(),
        1
    );
}

/// Agents on the default transport (`auto`) and an edge that serves no
/// QUIC (TLS only, DR on, the CA's CRL).
fn tls_only() -> Builder {
    Builder::new().listen(Listen::Tls).crl()
}

/// The lifeboat client with the default `transport = "auto"`, against an
/// edge that serves no QUIC: its flows ride one HTTP/2 tunnel over TLS.
/// 24 flows at once (uploads echoed, downloads), byte-exact; a refusal
/// reaches the user with its word; the edge made one TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_client_carries_its_flows_over_one_http2_tunnel() {
    let t = tls_only().client(None).start_unready().await;
    let em = Arc::clone(&t.edge_metrics);
    eventually("connector registered", Duration::from_secs(15), || {
        em.connectors_connected.with_label_values(&[GROUP]).get() == 1
    })
    .await;
    let client = t.start_client(ClientCert::user(ALICE)).await;
    let port = t.app.port();
    first_flow_after(client.http, port, Duration::from_secs(20)).await;

    let mut flows = tokio::task::JoinSet::new();
    for i in 0..24u64 {
        let http = client.http;
        flows.spawn(async move {
            if i % 2 == 0 {
                let sent = body(i, 512 * 1024 + i as usize);
                let got = post_via(http, port, &sent).await?;
                (got == sent)
                    .then_some(())
                    .ok_or_else(|| format!("flow {i}: echo differs"))
            } else {
                let len = 1 << 20;
                let app = fetch_via(http, port, &format!("/bytes/{len}")).await?;
                let (_, got) = split_http(&app);
                let mut check = PatternCheck::default();
                check.feed(got);
                (check.offset == len as u64)
                    .then_some(())
                    .ok_or_else(|| format!("flow {i}: {} bytes", check.offset))
            }
        });
    }
    while let Some(r) = flows.join_next().await {
        r.expect("flow task").unwrap_or_else(|e| panic!("{e}"));
    }
    let refused = raw_connect(client.http, &format!("{NON_DR_HOST}:{port}")).await;
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    assert!(
        refused.contains("Lifeboat-Error: not-dr-segment"),
        "{refused}"
    );

    let m = &t.edge_metrics;
    assert_eq!(
        handshakes_of(m, "client", "tls", "ok"),
        1,
        "one TLS connection"
    );
    assert_eq!(tunnels_of(m, "client", "tls"), 1);
    assert_eq!(tunnels_of(&client.metrics, "edge", "tls"), 1);
    assert_eq!(
        m.flows_total.with_label_values(&["payroll", "ok"]).get(),
        25
    );
}

/// A client on an HTTP/2 tunnel (the default `auto`, an edge serving no
/// QUIC) revoked while a flow is open: the edge re-reads its CRL, ends the
/// flow (`cert-refused`) and the tunnel, and the client's reconnect is
/// refused `revoked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_client_closes_its_http2_tunnel_and_flows() {
    let t = tls_only().start_unready().await;
    let client = t.client();
    let port = t.app.port();
    first_flow_after(client.http, port, Duration::from_secs(20)).await;
    let m = Arc::clone(&t.edge_metrics);
    assert_eq!(tunnels_of(&m, "client", "tls"), 1);
    let mut open = lifeboat::demo::socks_client::connect(client.socks, DR_HOST, port)
        .await
        .expect("an open flow before the revocation");
    t.ca.revoke(&t.user_cert(ALICE));
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), open.read(&mut buf))
        .await
        .expect("the open flow ends after the revocation");
    assert!(
        matches!(ended, Err(_) | Ok(0)),
        "still carries data: {ended:?}"
    );
    let closed =
        |m: &lifeboat::metrics::Metrics| m.flows_closed.with_label_values(&["cert-refused"]).get();
    eventually(
        "the flow closed as cert-refused",
        Duration::from_secs(10),
        || closed(&m) >= 1,
    )
    .await;
    eventually(
        "the edge closed alice's tunnel",
        Duration::from_secs(10),
        || tunnels_of(&m, "client", "tls") == 0,
    )
    .await;
    eventually(
        "alice's reconnect refused as revoked",
        Duration::from_secs(15),
        || handshakes_of(&m, "client", "tls", "revoked") >= 1,
    )
    .await;
    assert_ne!(socks_reply(client.socks, DR_HOST, port).await, 0);
}

/// One user floods the HTTP/2 tunnel: over `max_flows_per_identity` a
/// CONNECT stream is answered 429 `quota` and nothing of it is forwarded;
/// another user on another tunnel is served, and the flood's slots come
/// back when its flows end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_an_http2_tunnel_gets_quota_and_leaves_others_served() {
    let t = tls_only()
        .edge_limits("max_flows_per_identity = 4")
        .client(Some(ClientCert::user(BOB)))
        .also_client(ALICE)
        .start_unready()
        .await;
    let (bob, alice, port) = (t.client(), t.user(ALICE), t.app.port());
    first_flow_after(bob.http, port, Duration::from_secs(20)).await;
    // That flow's quota slot comes back as the edge ends its task, just
    // after the client saw it end: wait for it, or the fourth held flow
    // below can meet it still taken.
    let m = &t.edge_metrics;
    eventually(
        "bob's first flow ended at the edge",
        Duration::from_secs(10),
        || m.flows_active.get() == 0,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let s = lifeboat::demo::socks_client::connect(bob.socks, DR_HOST, port)
            .await
            .expect("bob's flow within his quota");
        held.push(s);
    }
    let refused = raw_connect(bob.http, &format!("{DR_HOST}:{port}")).await;
    assert!(refused.starts_with("HTTP/1.1 429 "), "{refused}");
    assert!(refused.contains("Lifeboat-Error: quota"), "{refused}");
    assert_eq!(
        m.refused_unmatched(lifeboat::refusal::Refusal::Quota).get(),
        1
    );
    // Alice, on her own tunnel, is served meanwhile.
    first_flow_after(alice.http, port, Duration::from_secs(10)).await;
    drop(held);
    first_flow_after(bob.http, port, Duration::from_secs(10)).await;
    assert_eq!(
        handshakes_of(m, "client", "tls", "ok"),
        2,
        "one tunnel each"
    );
}

/// Runs tests/tlslite_client.py as alice against the edge's TLS listener.
async fn tlslite_client(rig: &Rig, tls: std::net::SocketAddr, bytes: u64) -> (bool, String) {
    let alice = rig.user(ALICE);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tlslite_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port", &tls.port().to_string()])
        .arg("--cert")
        .arg(&alice.cert)
        .arg("--key")
        .arg(&alice.key)
        .args(["--dest", &format!("{DR_HOST}:{}", rig.app.port())])
        .args(["--bytes", &bytes.to_string()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("tlslite client done within 60 s")
        .expect("run python3");
    let text = format!(
        "{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Post-quantum key agreement by default, proven with a third-party client
/// that offers X25519MLKEM768 and nothing else: the default edge completes
/// the handshake and carries the flow; an edge configured
/// `key_exchange = "classical"` cannot, so the check is not vacuous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_client_negotiates_x25519mlkem768_with_the_default_edge() {
    let check =
        "from tlslite.utils.compat import ML_KEM_AVAILABLE as k; assert k, 'kyber-py missing'";
    let install = "pip install tlslite-ng kyber-py";
    if !python_has("tlslite-ng", check, "LIFEBOAT_REQUIRE_TLSLITE", install) {
        return;
    }
    let t = tls_edge(DrMode::On).await;
    const N: u64 = 100_000;
    let (ok, out) = tlslite_client(&t, t.edge_tls(), N).await;
    let words: Vec<_> = lifeboat::trust::WORDS
        .iter()
        .map(|w| (w, edge_tls_handshakes(&t.edge_metrics, w)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        ok,
        "tlslite client failed against the default edge ({words:?}):\n{out}"
    );
    assert!(out.contains("handshake=ok group=x25519mlkem768"), "{out}");
    assert!(out.contains("answer=HTTP/1.1 200"), "{out}");
    assert!(out.contains(&format!("app_body={N} pattern=ok")), "{out}");
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 1);

    // The same client against a classical edge: no group in common.
    let toml = t.edge_toml("tls = \"127.0.0.1:0\"", "static:on", "");
    let classical = toml.replacen("\n[listen]", "key_exchange = \"classical\"\n\n[listen]", 1);
    assert_ne!(classical, toml);
    let edge = t.start_edge(&classical);
    let (ok, out) = tlslite_client(&t, edge.tls.expect("tls"), N).await;
    assert!(!ok && out.contains("handshake=failed"), "{out}");
    assert_eq!(edge_tls_handshakes(&edge.metrics, "ok"), 0);
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> std::io::Result<ClientTls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("edge.lifeboat.test").expect("name");
    tokio_rustls::TlsConnector::from(Arc::clone(cfg))
        .connect(name, tcp)
        .await
}

/// Write `req` and read until the edge closes (at most 15 s).
async fn exchange(s: &mut ClientTls, req: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(req).await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no answer within 15 s"))??;
    Ok(got)
}

fn kind(s: &ClientTls) -> Option<HandshakeKind> {
    s.get_ref().1.handshake_kind()
}

/// CONNECT to the DR app and GET 1000 bytes; the edge's answer head.
async fn flow_over(s: &mut ClientTls, port: u16) -> String {
    let mut req = connect_to(DR_HOST, port);
    req.extend_from_slice(
        format!("GET /bytes/1000 HTTP/1.1\r\nHost: {DR_HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let got = exchange(s, &req).await.expect("flow");
    let (head, rest) = split_http(&got);
    if head.starts_with("HTTP/1.1 200 ") {
        let (app, body) = split_http(rest);
        assert!(app.starts_with("HTTP/1.1 200"), "{app}");
        assert_eq!(body.len(), 1000);
        PatternCheck::default().feed(body);
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_sessions_keep_the_identity_and_die_with_revocation() {
    // DR test mode: alice (a test user) is served, bob is not.
    let t = tls_edge(DrMode::Test).await;
    let tls = t.edge_tls();
    let port = t.app.port();
    let alice = t.user_cert(ALICE);
    let bob = t.user_cert(BOB);
    let alice_cfg = Arc::new(t.ca.trust(&alice).client_config(&[ALPN_HTTP1]));
    let bob_cfg = Arc::new(t.ca.trust(&bob).client_config(&[ALPN_HTTP1]));

    let mut s = tls_connect(&alice_cfg, tls).await.expect("alice 1");
    assert_eq!(kind(&s), Some(HandshakeKind::Full));
    assert_eq!(
        flow_over(&mut s, port).await,
        "HTTP/1.1 200 Connection Established"
    );
    let mut s = tls_connect(&alice_cfg, tls).await.expect("alice 2");
    assert_eq!(kind(&s), Some(HandshakeKind::Resumed), "alice resumes");
    assert_eq!(
        flow_over(&mut s, port).await,
        "HTTP/1.1 200 Connection Established",
        "a resumed alice is still alice, a test user"
    );

    let mut s = tls_connect(&bob_cfg, tls).await.expect("bob 1");
    assert_eq!(kind(&s), Some(HandshakeKind::Full));
    let head = flow_over(&mut s, port).await;
    assert!(head.contains("Lifeboat-Error: not-allowed"), "{head}");
    let mut s = tls_connect(&bob_cfg, tls).await.expect("bob 2");
    assert_eq!(kind(&s), Some(HandshakeKind::Resumed), "bob resumes");
    let head = flow_over(&mut s, port).await;
    assert!(
        head.starts_with("HTTP/1.1 403 ") && head.contains("Lifeboat-Error: not-allowed"),
        "a resumed bob is still bob, not a test user: {head}"
    );
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 4);

    // Revoke alice, reload the edge's trust (CRL): her ticket no longer
    // resumes, and the full handshake refuses her as revoked.
    t.ca.revoke(&alice);
    t.edge.trust.reload().expect("trust reload");
    let refused = match tls_connect(&alice_cfg, tls).await {
        Err(e) => e,
        Ok(mut s) => {
            assert_eq!(
                kind(&s),
                Some(HandshakeKind::Full),
                "no resumption after the reload"
            );
            exchange(&mut s, &connect_to(DR_HOST, port))
                .await
                .expect_err("a revoked alice gets no answer")
        }
    };
    let inner = refused
        .get_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        inner.contains("CertificateRevoked"),
        "refused as revoked: {refused} ({inner})"
    );
    let m = Arc::clone(&t.edge_metrics);
    eventually("edge counts revoked", Duration::from_secs(5), || {
        handshakes_of(&m, "client", "tls", "revoked") == 1
    })
    .await;
    assert_eq!(edge_tls_handshakes(&t.edge_metrics, "ok"), 4);
    // Bob's ticket died with the reload too, but he is not revoked.
    let s = tls_connect(&bob_cfg, tls).await.expect("bob 3");
    assert_eq!(kind(&s), Some(HandshakeKind::Full), "tickets die on reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rates_full_and_resumed() {
    const N: usize = 500;
    let t = tls_edge(DrMode::On).await;
    let tls = t.edge_tls();
    let trust = t.ca.trust(&t.user_cert(ALICE));
    let mut full = trust.client_config(&[ALPN_HTTP1]);
    full.resumption = rustls::client::Resumption::disabled();
    let full = Arc::new(full);
    let resumed = Arc::new(trust.client_config(&[ALPN_HTTP1]));
    // Each connection: TCP, the TLS handshake, `GET /` answered 405 (the
    // edge's cheapest answer; reading it also takes the session tickets).
    let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let run = |cfg: Arc<rustls::ClientConfig>, want: HandshakeKind| async move {
        let started = Instant::now();
        let mut kinds = 0;
        for _ in 0..N {
            let mut s = tls_connect(&cfg, tls).await.expect("connect");
            if kind(&s) == Some(want) {
                kinds += 1;
            }
            let got = exchange(&mut s, get).await.expect("405");
            assert!(got.starts_with(b"HTTP/1.1 405 "));
        }
        (started.elapsed(), kinds)
    };
    // Prime the ticket store.
    let mut s = tls_connect(&resumed, tls).await.expect("connect");
    exchange(&mut s, get).await.expect("405");
    let (full_took, full_n) = tokio::time::timeout(
        Duration::from_secs(25),
        run(Arc::clone(&full), HandshakeKind::Full),
    )
    .await
    .expect("full handshakes within 25 s");
    let (res_took, res_n) = tokio::time::timeout(
        Duration::from_secs(25),
        run(Arc::clone(&resumed), HandshakeKind::Resumed),
    )
    .await
    .expect("resumed handshakes within 25 s");
    assert_eq!(
        full_n, N,
        "every full-config connection was a full handshake"
    );
    assert_eq!(res_n, N, "every repeat connection resumed");
    let rate = |took: Duration| N as f64 / took.as_secs_f64();
    eprintln!(
        "edge mTLS handshakes, sequential, one client in the same process (each: TCP + TLS 1.3 + a 405 answer): \
         full {:.0}/s ({full_took:?} for {N}), resumed {:.0}/s ({res_took:?} for {N})",
        rate(full_took),
        rate(res_took)
    );
    assert_eq!(
        edge_tls_handshakes(&t.edge_metrics, "ok") as usize,
        2 * N + 1
    );
}
