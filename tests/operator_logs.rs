//! What an operator reads, from real processes on loopback: the client's
//! HTTP listener proxies `http_proxy=` requests byte-exact; SOCKS refusals
//! (client) and unreachable apps (connector) are logged with their result
//! word; JSON mode writes only JSON, a fatal error included.

mod common;

use std::time::{Duration, Instant};

use common::proc::{pki, Proc, BIN};
use lifeboat::pki::IssueOptions;
use lifeboat::trust::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn edge_toml(ports: &str) -> String {
    format!(
        r#"trust_domain = "dr.example.com"
[tls]
ca = "ca.pem"
cert = "edge1.pem"
key = "edge1.key"
[listen]
quic = "127.0.0.1:0"
[dr]
trigger = "static:on"
[[connector_group]]
name = "dc1-dr"
dr = true
[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]
[[segment]]
name = "app"
dr = true
cidrs = ["127.0.0.1/32"]
tcp_ports = [{ports}]
server_groups = ["dc1"]
"#
    )
}

fn agent_toml(cert: &str, edge: std::net::SocketAddr, listen: &str) -> String {
    format!(
        "trust_domain = \"dr.example.com\"\nedges = [\"{edge}\"]\ntransport = \"quic\"\n\
         [tls]\nca = \"ca.pem\"\ncert = \"{cert}.pem\"\nkey = \"{cert}.key\"\n{listen}"
    )
}

/// An app answering every request with `body`; sends each request head it
/// read into the channel.
async fn app(body: Vec<u8>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (tx, body) = (tx.clone(), body.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (port, rx)
}

async fn eventually(what: &str, p: &Proc, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = p.log();
        if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no line with {needles:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("all_proxy")
        .output()
        .expect("run curl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_requests_and_refusals_as_an_operator_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (app_port, mut heads) = app(body.clone()).await;
    // A port nothing listens on: the connector's connect is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);

    std::fs::write(
        d.join("edge.toml"),
        edge_toml(&format!("\"{app_port}\", \"{dead_port}\"")),
    )
    .unwrap();
    let edge = Proc::spawn(&["edge", "-c", "edge.toml"], d);
    let edge_addr = edge.listening("quic").await;
    std::fs::write(d.join("connector.toml"), agent_toml("dc1-a", edge_addr, "")).unwrap();
    let connector = Proc::spawn(
        &["--log-format", "json", "connector", "-c", "connector.toml"],
        d,
    );
    let listen = "[listen]\nsocks = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";
    std::fs::write(
        d.join("client.toml"),
        agent_toml("alice", edge_addr, listen),
    )
    .unwrap();
    let client = Proc::spawn(&["client", "-c", "client.toml"], d);
    let socks = client.listening("socks").await;
    let http = client.listening("http").await;
    eventually("connector", &connector, &["edge tunnel up"]).await;

    // http_proxy= through the client's HTTP listener: byte-exact, and the
    // app sees an origin-form request.
    let out_file = d.join("body");
    let o = tokio::task::spawn_blocking({
        let (http, out_file) = (http.to_string(), out_file.clone());
        move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "20", "-o"])
                .arg(&out_file)
                .arg(format!("http://127.0.0.1:{app_port}/file?x=1"))
                .env("http_proxy", format!("http://{http}"))
                .env_remove("all_proxy")
                .env_remove("no_proxy")
                .env_remove("NO_PROXY")
                .output()
                .expect("curl")
        }
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{o:?}\n{}", client.log());
    assert!(std::fs::read(&out_file).unwrap() == body, "body differs");
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /file?x=1 HTTP/1.1\r\n")
            && head.contains("\r\nConnection: close\r\n")
            && !head.to_ascii_lowercase().contains("proxy-connection"),
        "{head}"
    );

    // Refusals, in the logs with their words.
    let (s, dead_url) = (socks.to_string(), format!("http://127.0.0.1:{dead_port}/"));
    let outside = format!("http://127.0.0.2:{app_port}/");
    let (o1, o2) = tokio::task::spawn_blocking(move || {
        (
            curl(&["--socks5", &s, &outside]),
            curl(&["--socks5", &s, &dead_url]),
        )
    })
    .await
    .unwrap();
    assert!(!o1.status.success() && !o2.status.success());
    eventually(
        "client",
        &client,
        &[
            "WARN",
            "flow refused",
            "listener=\"socks\"",
            "result=\"not-dr-segment\"",
            "127.0.0.2",
        ],
    )
    .await;
    eventually(
        "client",
        &client,
        &[
            "WARN",
            "flow refused",
            "listener=\"socks\"",
            "result=\"upstream-failed\"",
        ],
    )
    .await;
    eventually(
        "connector",
        &connector,
        &[
            "\"level\":\"WARN\"",
            "cannot reach the app",
            "\"result\":\"upstream-failed\"",
            &format!("127.0.0.1:{dead_port}"),
        ],
    )
    .await;
    // JSON mode: every line is a JSON object.
    let log = connector.log();
    for l in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    assert!(log.contains("edge tunnel up"), "{log}");
    client.stop().await;
    connector.stop().await;
    edge.stop().await;
}

#[test]
fn a_fatal_error_in_json_mode_is_json_and_without_colour_in_text_mode() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    std::fs::write(
        dir.path().join("edge.toml"),
        edge_toml("\"443\"").replace("edge1.key", "missing.key"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = run(&["--log-format", "json", "edge", "-c", "edge.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert_eq!(v["level"], "ERROR", "{l}");
        let msg = v["fields"]["message"].as_str().unwrap();
        assert!(
            msg.contains("edge.toml:5: key `tls.key`: missing.key: cannot read"),
            "{msg}"
        );
        assert_eq!(v["fields"]["exit_code"], 2, "{l}");
    }
    // Text mode: the same line, plain.
    let o = run(&["edge", "-c", "edge.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("error: ").count(),
        1,
        "one line, the cause once: {err:?}"
    );
    assert!(err.contains("edge.toml:5: key `tls.key`: "), "{err:?}");
}

/// On a terminal (a pty from `script`) lines are coloured, unless NO_COLOR
/// is set; the warning about a CA ending within 30 days is the line.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    lifeboat::pki::init(dir.path(), "dr.example.com", 20).unwrap();
    lifeboat::pki::issue(&IssueOptions::new(dir.path(), Role::Edge, "edge1")).unwrap();
    // A port in use: the edge warns, then fails to bind and exits.
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let text = edge_toml("\"443\"").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("edge.toml"), text).unwrap();
    let in_pty = |no_color: Option<&str>| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &format!("{BIN} edge -c edge.toml"), "/dev/null"])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let o = c.output().expect("run script");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let plain = in_pty(Some("1"));
    assert!(plain.contains("CA certificate expires at"), "{plain:?}");
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    let coloured = in_pty(None);
    assert!(
        coloured.contains("CA certificate expires at"),
        "{coloured:?}"
    );
    assert!(coloured.contains("\u{1b}["), "{coloured:?}");
    drop(busy);
}
