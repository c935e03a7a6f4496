//! Live reload. In process (`EdgeState::reload`, what SIGHUP calls): a good
//! reload changes routing while a flow opened before it keeps streaming
//! byte-exact; a bad file keeps serving and counts `result="error"`; during
//! DR `on` a segment change is refused (`result="refused"`) while a CRL
//! change still applies. As processes (`kill -HUP`): the edge counts its
//! reloads, and a client keeps its listeners serving across reloads.

mod common;

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{eventually, Builder, ClientCert, Dr, Topology, DR_HOST, UNKNOWN_HOST};
use lifeboat::demo::app::pattern_byte;
use lifeboat::demo::socks_client;
use lifeboat::dr::DrMode;
use lifeboat::edge::ReloadOutcome;
use lifeboat::preamble::Dest;
use lifeboat::segments::Lookup;
use lifeboat::trust::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn edge_path(t: &Topology) -> PathBuf {
    t.dir.path().join("edge.toml")
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    let new = f(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    std::fs::write(path, new).unwrap();
}

fn reloads(t: &Topology, result: &str) -> u64 {
    t.edge_metrics
        .config_reloads
        .with_label_values(&[result])
        .get()
}

/// GET `/` of `host` through the client; the HTTP status, or the SOCKS error.
async fn get(t: &Topology, host: &str) -> Result<u16, String> {
    lifeboat::demo::socks_get(t.socks(), host, t.app_port(), "/")
        .await
        .map(|(status, _)| status)
}

/// Where `host` goes at the edge now (the compiled matcher in use).
fn route(t: &Topology, host: &str) -> Option<String> {
    let d = Dest::parse(&format!("{host}:{}", t.app_port())).unwrap();
    match t.edge.policy.load().matcher.lookup(&d) {
        Lookup::Hit(s) => Some(s.name.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_reload_changes_routing_without_dropping_running_flows() {
    // DR test mode (alice is a test user): policy changes apply.
    let t = Builder::quic().dr(Dr::Static(DrMode::Test)).start().await;
    assert_eq!(get(&t, DR_HOST).await, Ok(200));
    assert!(get(&t, UNKNOWN_HOST).await.is_err(), "not a DR segment yet");

    // A long flow, opened before the reload: read a little, then stall it
    // (backpressure holds the rest in flight) across the reload.
    const TOTAL: u64 = 32 << 20;
    let mut flow = socks_client::connect(t.socks(), DR_HOST, t.app_port())
        .await
        .unwrap();
    let req =
        format!("GET /bytes/{TOTAL} HTTP/1.1\r\nHost: {DR_HOST}\r\nConnection: close\r\n\r\n");
    flow.write_all(req.as_bytes()).await.unwrap();
    let mut body = BodyCheck::default();
    let mut buf = vec![0u8; 64 * 1024];
    while body.offset < 256 * 1024 {
        let n = flow.read(&mut buf).await.unwrap();
        assert!(n > 0, "flow ended early");
        body.feed(&buf[..n]);
    }

    // Move the DR segment from DR_HOST to UNKNOWN_HOST.
    edit(&edge_path(&t), |s| {
        s.replacen(
            &format!("\"{DR_HOST}\", "),
            &format!("\"{UNKNOWN_HOST}\", "),
            1,
        )
    });
    let state = t.edge.clone();
    let path = edge_path(&t);
    let outcome = tokio::task::spawn_blocking(move || state.reload(&path))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, ReloadOutcome::Applied);
    assert_eq!((reloads(&t, "ok"), reloads(&t, "error")), (1, 0));
    assert_eq!(route(&t, UNKNOWN_HOST).as_deref(), Some("payroll"));
    assert_eq!(route(&t, DR_HOST), None);
    // New flows follow the new config.
    assert_eq!(get(&t, UNKNOWN_HOST).await, Ok(200));
    let refused = get(&t, DR_HOST).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("reply code 2")),
        "{refused:?}"
    );

    // The old flow still streams, byte-exact, to the end.
    loop {
        let n = flow.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        body.feed(&buf[..n]);
    }
    assert_eq!(body.offset, TOTAL, "whole body");
    assert!(body.exact, "byte-exact");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_keeps_serving_and_counts_an_error() {
    let t = Builder::quic().dr(Dr::Static(DrMode::Test)).start().await;
    let before = std::fs::read_to_string(edge_path(&t)).unwrap();
    for bad in [
        before.replacen("tcp_ports = [", "tcp_ports = [\"0\", ", 1),
        before.replace("[listen]", "[listen]\nbogus = 1"),
        "not toml [".to_owned(),
    ] {
        std::fs::write(edge_path(&t), bad).unwrap();
        let e = t.edge.reload(&edge_path(&t)).unwrap_err();
        assert!(format!("{e:#}").contains("edge.toml"), "{e:#}");
    }
    assert_eq!((reloads(&t, "error"), reloads(&t, "ok")), (3, 0));
    assert_eq!(get(&t, DR_HOST).await, Ok(200));
    assert_eq!(route(&t, DR_HOST).as_deref(), Some("payroll"));
    // Fixing the file makes the next reload good again.
    std::fs::write(edge_path(&t), &before).unwrap();
    assert_eq!(
        t.edge.reload(&edge_path(&t)).unwrap(),
        ReloadOutcome::Applied
    );
    assert_eq!(reloads(&t, "ok"), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_on_refuses_segment_changes_but_applies_the_crl() {
    // DR on; the edge honours the CA's CRL file.
    let t = Builder::quic().crl().start().await;
    assert_eq!(get(&t, DR_HOST).await, Ok(200));
    // Lose alice's laptop: revoke her certificate; and (in the same edit
    // window) try to change the segments.
    let alice = t.client_files(&ClientCert::user("alice")).0;
    t.ca.revoke(&alice);
    edit(&edge_path(&t), |s| {
        s.replacen(
            &format!("\"{DR_HOST}\", "),
            &format!("\"{UNKNOWN_HOST}\", "),
            1,
        )
    });
    assert_eq!(
        t.edge.reload(&edge_path(&t)).unwrap(),
        ReloadOutcome::PolicyRefused
    );
    assert_eq!((reloads(&t, "refused"), reloads(&t, "ok")), (1, 0));
    // Segments unchanged.
    assert_eq!(route(&t, DR_HOST).as_deref(), Some("payroll"));
    assert_eq!(route(&t, UNKNOWN_HOST), None);
    // The CRL applies: a new client with alice's certificate is refused.
    let second = t.start_client(ClientCert::user("alice")).await;
    eventually(
        "alice's new tunnel refused as revoked at the edge",
        Duration::from_secs(10),
        || t.edge_handshakes("client", "revoked") > 0,
    )
    .await;
    assert_eq!(second.tunnels(), 0, "a revoked client got a tunnel");
    // Other users still get in.
    let bob = t.start_client(ClientCert::user("bob")).await;
    eventually("bob's tunnel", Duration::from_secs(10), || {
        bob.tunnels() == 1
    })
    .await;
    t.shutdown().await;
}

/// Reads the `/bytes/N` response: skips the head, checks the pattern.
struct BodyCheck {
    head: Vec<u8>,
    in_body: bool,
    offset: u64,
    exact: bool,
}

impl Default for BodyCheck {
    fn default() -> Self {
        Self {
            head: Vec::new(),
            in_body: false,
            offset: 0,
            exact: true,
        }
    }
}

impl BodyCheck {
    fn feed(&mut self, mut data: &[u8]) {
        if !self.in_body {
            self.head.extend_from_slice(data);
            let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            assert!(
                self.head.starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&self.head)
            );
            let rest = self.head.split_off(end + 4);
            self.in_body = true;
            self.check(&rest);
            data = &[];
        }
        self.check(data);
    }

    fn check(&mut self, data: &[u8]) {
        for &b in data {
            self.exact &= b == pattern_byte(self.offset);
            self.offset += 1;
        }
    }
}

// ---- the real binary and SIGHUP ----

/// A `lifeboat` process, killed on drop; its stderr lines collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?}; got:\n{}", self.seen.join("\n"));
    }

    /// The address of the `listening KIND ADDR` line.
    fn listening(&mut self, kind: &str) -> SocketAddr {
        let l = self.wait_line(&format!("listening {kind} "));
        let addr = l.rsplit(' ').next().unwrap();
        addr.trim_matches(|c: char| {
            !c.is_ascii_alphanumeric() && c != '.' && c != ':' && c != '[' && c != ']'
        })
        .parse()
        .unwrap_or_else(|e| panic!("{l}: {e}"))
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        if std::thread::panicking() {
            eprintln!("--- lifeboat output ---\n{}", self.seen.join("\n"));
        }
    }
}

/// `GET /metrics` from an admin listener.
fn metrics(admin: SocketAddr) -> String {
    let mut s = StdTcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn wait_metric(admin: SocketAddr, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(admin);
        if m.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pki(dir: &Path) {
    lifeboat::pki::init(dir, "dr.lifeboat.test", 2).unwrap();
    for (role, name) in [(Role::Edge, "edge1"), (Role::Client, "alice")] {
        lifeboat::pki::issue(&lifeboat::pki::IssueOptions {
            dir: dir.to_path_buf(),
            role,
            name: name.into(),
            group: None,
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            days: 2,
            not_before: None,
            not_after: None,
        })
        .unwrap();
    }
}

#[test]
fn edge_process_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let path = dir.path().join("edge.toml");
    let text = r#"trust_domain = "dr.lifeboat.test"
[tls]
ca = "ca.pem"
cert = "edge1.pem"
key = "edge1.key"
[listen]
quic = "127.0.0.1:0"
admin = "127.0.0.1:0"
[dr]
trigger = "static:test"
[[connector_group]]
name = "dc1-dr"
dr = true
[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]
[[segment]]
name = "payroll"
dr = true
domains = ["payroll.corp.example"]
tcp_ports = ["443"]
server_groups = ["dc1"]
"#;
    std::fs::write(&path, text).unwrap();
    let mut edge = Proc::start(&["edge", "-c", path.to_str().unwrap()]);
    let admin = edge.listening("admin");
    wait_metric(admin, "lifeboat_config_reloads_total{result=\"ok\"} 0");

    // Bad: the old config stays, the error is logged with file and line.
    std::fs::write(&path, text.replace("\"443\"", "\"443-80\"")).unwrap();
    edge.hup();
    wait_metric(admin, "lifeboat_config_reloads_total{result=\"error\"} 1");
    let l = edge.wait_line("range is reversed");
    assert!(
        l.contains("edge.toml:21") && l.contains("segment[0].tcp_ports[0]"),
        "{l}"
    );

    // Good: a new segment; its series appears.
    std::fs::write(
        &path,
        format!("{text}[[segment]]\nname = \"wiki\"\ndr = true\ndomains = [\"wiki.corp.example\"]\ntcp_ports = [\"443\"]\nserver_groups = [\"dc1\"]\n"),
    )
    .unwrap();
    edge.hup();
    wait_metric(admin, "lifeboat_config_reloads_total{result=\"ok\"} 1");
    wait_metric(admin, "lifeboat_segment_ready{segment=\"wiki\"} 0");
    // A listener change is reported as needing a restart.
    std::fs::write(
        &path,
        text.replace("admin = \"127.0.0.1:0\"", "admin = \"127.0.0.1:1\""),
    )
    .unwrap();
    edge.hup();
    edge.wait_line("changes to listen need a restart");
    wait_metric(admin, "lifeboat_config_reloads_total{result=\"ok\"} 2");
}

/// A SOCKS5 greeting answered: the listener serves (no edge needed).
fn socks_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = StdTcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = [0u8; 2];
    s.write_all(&[5, 1, 0]).is_ok() && s.read_exact(&mut reply).is_ok() && reply == [5, 0]
}

#[test]
fn client_process_keeps_listeners_across_sighup() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let path = dir.path().join("client.toml");
    // The edge does not exist: the client keeps retrying, its listeners serve.
    let text = r#"trust_domain = "dr.lifeboat.test"
edges = ["127.0.0.1:9"]
transport = "quic"
[tls]
ca = "ca.pem"
cert = "alice.pem"
key = "alice.key"
[listen]
socks = "127.0.0.1:0"
admin = "127.0.0.1:0"
"#;
    std::fs::write(&path, text).unwrap();
    let mut client = Proc::start(&["client", "-c", path.to_str().unwrap()]);
    let socks = client.listening("socks");
    let admin = client.listening("admin");
    assert!(socks_answers(socks));

    // A listener change needs a rebind: logged, not applied; still serving.
    std::fs::write(
        &path,
        text.replace("socks = \"127.0.0.1:0\"", "socks = \"127.0.0.1:1\""),
    )
    .unwrap();
    client.hup();
    client.wait_line("changes to listen need a restart");
    wait_metric(admin, "lifeboat_config_reloads_total{result=\"ok\"} 1");
    assert!(socks_answers(socks));

    // A bad file: counted, logged, still serving.
    std::fs::write(&path, text.replace("[listen]", "[listen]\nsocks5 = 1")).unwrap();
    client.hup();
    wait_metric(admin, "lifeboat_config_reloads_total{result=\"error\"} 1");
    client.wait_line("config file is invalid");
    assert!(socks_answers(socks));
}
