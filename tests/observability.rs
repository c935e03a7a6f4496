//! Observability on loopback: the admin endpoints of all three roles, the
//! metrics after real traffic (checked by `promtool check metrics`, by
//! value, and for label hygiene), every DESIGN.md metric from start-up in
//! the real `lifeboat edge` process, readiness with reasons, and a real
//! Prometheus server scraping a running edge.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package,
//! which `.ci/run` installs and then sets `LIFEBOAT_REQUIRE_PROMETHEUS=1`:
//! elsewhere a test that needs them says it skipped, in CI it fails.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Proc};
use lifeboat::admin::{self, Readiness};
use lifeboat::config::{self, ClientConfig, TransportChoice};
use lifeboat::demo::{self, Topology};
use lifeboat::drill::{self, Target};
use lifeboat::metrics::Metrics;
use lifeboat::pki::{self, IssueOptions};
use lifeboat::preamble::Dest;
use lifeboat::trust::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The metric families DESIGN.md names.
const DESIGN_METRICS: &[&str] = &[
    "lifeboat_dr_mode",
    "lifeboat_dr_trigger_lookups_total",
    "lifeboat_tunnels_active",
    "lifeboat_handshakes_total",
    "lifeboat_flows_active",
    "lifeboat_flows_total",
    "lifeboat_flow_bytes_total",
    "lifeboat_flow_setup_seconds",
    "lifeboat_connectors_connected",
    "lifeboat_config_reloads_total",
    "lifeboat_segment_ready",
    "lifeboat_dr_transitions_total",
    "lifeboat_flows_closed_total",
    "lifeboat_transport_fallbacks_total",
    "lifeboat_cert_expiry_timestamp_seconds",
    "lifeboat_build_info",
];

// ---------------------------------------------------------------- helpers

/// A tool from Debian's `prometheus` package, or `None` after saying the
/// test skipped (a failure when `LIFEBOAT_REQUIRE_PROMETHEUS` is set).
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_PROMETHEUS").is_none(),
            "`{name}` not found on PATH and LIFEBOAT_REQUIRE_PROMETHEUS is set: apt-get install prometheus"
        );
        eprintln!("SKIPPED: `{name}` not found on PATH (apt-get install prometheus; .ci/run does)");
    }
    found
}

/// `GET path` over HTTP/1.1; the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
        .await
        .expect("answer in time")
        .expect("read answer");
    let text = String::from_utf8(resp).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// Serve `metrics` on a fresh admin listener, as the roles do.
async fn serve_admin(metrics: Arc<Metrics>, ready: Readiness) -> SocketAddr {
    let l = admin::bind("127.0.0.1:0".parse().expect("literal"))
        .await
        .expect("bind admin");
    let addr = l.local_addr().expect("admin address");
    tokio::spawn(admin::serve(l, metrics, ready, CancellationToken::new()));
    addr
}

/// `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool_check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

/// One sample of the text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parse the text exposition format (what the `prometheus` crate writes).
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name.to_string(), parse_labels(body))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.push((k.to_string(), value));
        s = rest[end + 1..].trim_start_matches(',');
    }
    out
}

/// The sum of the samples of `name` whose labels include `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
        .sum()
}

/// The metric families a text exposition declares.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Every label value must be a config name or a fixed word: never a user,
/// an address or a port. `forbidden` are this topology's users, addresses
/// and ports; `allowed` maps each label name to what it may hold.
fn assert_label_hygiene(role: &str, samples: &[Sample], forbidden: &[String]) {
    let words = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut results = words(&["ok", "no-tunnel"]);
    results.extend(lifeboat::refusal::Refusal::ALL.map(|r| r.word().to_string()));
    results.extend(
        lifeboat::metrics::HANDSHAKE_RESULTS
            .iter()
            .map(|s| s.to_string()),
    );
    results.extend(lifeboat::dr::machine::LookupResult::ALL.map(|r| r.as_str().to_string()));
    results.extend(words(&["refused", "error"]));
    let modes = words(&["off", "test", "on"]);
    for s in samples {
        for (k, v) in &s.labels {
            for f in forbidden {
                assert!(
                    !v.contains(f.as_str()),
                    "{role}: {}{{{k}={v:?}}} carries `{f}` (a user, an address or a port)",
                    s.name
                );
            }
            let ok = match k.as_str() {
                "mode" | "from" | "to" => modes.contains(v),
                "result" => results.contains(v),
                "role" => ["client", "connector", "edge"].contains(&v.as_str()),
                "transport" => ["quic", "tls"].contains(&v.as_str()),
                "segment" => ["payroll", "-"].contains(&v.as_str()),
                "group" => v == "dc1-dr",
                "direction" => ["up", "down"].contains(&v.as_str()),
                "reason" => lifeboat::metrics::CLOSE_REASONS.contains(&v.as_str()),
                "cert" => ["local", "ca"].contains(&v.as_str()),
                "version" => v == env!("CARGO_PKG_VERSION"),
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                _ => false,
            };
            assert!(ok, "{role}: unexpected label {}{{{k}={v:?}}}", s.name);
        }
    }
}

/// A client config for the demo topology's edge with another certificate.
fn client_config(dir: &Path, edge: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
    let text = format!(
        "trust_domain = \"demo.lifeboat.test\"\nedges = [\"{edge}\"]\ntransport = \"quic\"\n\
         [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[limits]\nhandshake_timeout = \"5s\"\n"
    );
    let path = dir.join("drill-client.toml");
    std::fs::write(&path, &text).expect("write client config");
    config::from_text(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Open one flow with a client certificate the edge must refuse; the
/// drill's result word is the handshake reason the client saw.
async fn refused_handshake(t: &Topology, cert: &Path, key: &Path, ca: &Path) -> String {
    let dir = t.dir.path();
    let cfg = client_config(dir, t.edge_quic, ca, cert, key);
    let target = Target {
        dest: Dest::parse(&format!("{}:{}", demo::DR_HOST, t.app.port())).expect("dest"),
        segment: None,
    };
    let report = drill::run_drill(
        &cfg,
        &dir.join("drill-client.toml"),
        TransportChoice::Quic,
        &[target],
    )
    .await
    .expect("drill runs");
    assert!(!report.passed(), "{}", drill::render_table(&report));
    report.outcomes[0].result.clone()
}

// ------------------------------------------------------ in-process roles

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_roles_metrics_after_real_traffic_pass_promtool_count_and_carry_no_user_or_address() {
    let t = Topology::start().await.expect("topology");
    let port = t.app.port();
    let connector_admin = serve_admin(
        Arc::clone(&t.connector_metrics),
        admin::connector_readiness(Arc::clone(&t.connector_metrics)),
    )
    .await;
    let client_admin = serve_admin(
        Arc::clone(&t.client_metrics),
        admin::client_readiness(Arc::clone(&t.client_metrics)),
    )
    .await;
    let edge_admin = t.edge_admin.expect("the demo edge has an admin listener");

    // Real traffic: flows served, a 64 KiB answer, refusals by word.
    for _ in 0..5 {
        let (status, body) = demo::socks_get(t.socks, demo::DR_HOST, port, "/")
            .await
            .expect("DR flow");
        assert_eq!((status, body.is_empty()), (200, false));
    }
    let (status, body) = demo::socks_get(t.socks, demo::WILDCARD_HOST, port, "/bytes/65536")
        .await
        .expect("wildcard flow");
    assert_eq!((status, body.len()), (200, 65536));
    let refused = demo::socks_get(t.socks, demo::NON_DR_HOST, port, "/").await;
    assert!(
        refused.is_err(),
        "non-DR segment must be refused: {refused:?}"
    );
    let refused = demo::socks_get(t.socks, demo::DR_HOST, 1, "/").await;
    assert!(
        refused.is_err(),
        "a port outside the segment must be refused: {refused:?}"
    );

    // Handshakes the edge refuses, by reason: expired, unknown CA, wrong role.
    let d = t.dir.path();
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let (expired_cert, expired_key) = pki::issue(&IssueOptions {
        dir: d.to_path_buf(),
        role: Role::Client,
        name: "carol".into(),
        group: None,
        dns: vec![],
        ips: vec![],
        days: 1,
        not_before: Some(past - time::Duration::days(2)),
        not_after: Some(past),
    })
    .expect("issue expired");
    let other = tempfile::tempdir().expect("tempdir");
    pki::init(other.path(), "demo.lifeboat.test", 2).expect("other CA");
    let mut eve = IssueOptions::new(other.path(), Role::Client, "eve");
    eve.days = 1;
    let (eve_cert, eve_key) = pki::issue(&eve).expect("issue eve");
    let ca = d.join("ca.pem");
    let r = refused_handshake(&t, &expired_cert, &expired_key, &ca).await;
    assert_ne!(r, "ok");
    // eve pins both CAs (so she trusts the edge); the edge pins only its own.
    let both = d.join("both-ca.pem");
    let mut pem = std::fs::read(&ca).expect("ca");
    pem.extend(std::fs::read(other.path().join("ca.pem")).expect("other ca"));
    std::fs::write(&both, pem).expect("write both");
    refused_handshake(&t, &eve_cert, &eve_key, &both).await;
    refused_handshake(
        &t,
        &d.join("dc1-connector.pem"),
        &d.join("dc1-connector.key"),
        &ca,
    )
    .await;
    let em = Arc::clone(&t.edge_metrics);
    let reason = move |r: &str| {
        ["quic", "tls"]
            .iter()
            .map(|tr| em.handshakes.with_label_values(&["client", tr, r]).get())
            .sum::<u64>()
    };
    eventually(
        "edge counts expired, unknown-ca and wrong-role handshakes",
        Duration::from_secs(10),
        || reason("expired") >= 1 && reason("unknown-ca") >= 1 && reason("wrong-role") >= 1,
    )
    .await;
    eventually(
        "edge counts the flows closed",
        Duration::from_secs(10),
        || {
            t.edge_metrics
                .flows_closed
                .with_label_values(&["done"])
                .get()
                >= 6
        },
    )
    .await;

    // Every role's /metrics, through its admin listener.
    let forbidden: Vec<String> = [
        "alice".to_string(),
        "carol".into(),
        "eve".into(),
        "127.0.0.1".into(),
        "spiffe".into(),
        port.to_string(),
        t.edge_quic.port().to_string(),
        t.socks.port().to_string(),
    ]
    .into();
    let promtool = prometheus_tool("promtool");
    for (role, addr) in [
        ("edge", edge_admin),
        ("connector", connector_admin),
        ("client", client_admin),
    ] {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{role} /metrics");
        let fams = families(&text);
        // Each role exports what means something for it: a connector has no
        // DR mode; only the edge has connector groups, segments and grace.
        let edge_only = [
            "lifeboat_connectors_connected",
            "lifeboat_segment_ready",
            "lifeboat_cert_grace_accepted_total",
        ];
        let not_connector = [
            "lifeboat_dr_mode",
            "lifeboat_dr_trigger_lookups_total",
            "lifeboat_dr_transitions_total",
            "lifeboat_dr_mode_known",
            "lifeboat_dr_trigger_last_success_timestamp_seconds",
        ];
        let meaningful = |m: &str| {
            (role == "edge" || !edge_only.contains(&m))
                && (role != "connector" || !not_connector.contains(&m))
        };
        for m in DESIGN_METRICS
            .iter()
            .chain(&edge_only)
            .chain(&not_connector)
        {
            assert_eq!(
                fams.contains(*m),
                meaningful(m),
                "{role} /metrics: {m} exported only where it means something:\n{text}"
            );
        }
        for m in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(fams.contains(m), "{role} /metrics lacks {m}:\n{text}");
        }
        let samples = parse_samples(&text);
        assert_label_hygiene(role, &samples, &forbidden);
        if let Some(p) = &promtool {
            let (ok, said) = promtool_check_metrics(p, &text);
            assert!(ok, "promtool check metrics on {role}:\n{said}");
        }
        assert_eq!(http_get(addr, "/healthz").await, (200, "ok\n".into()));
        let (status, body) = http_get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"), "{role} /readyz");

        let v = |name: &str, labels: &[(&str, &str)]| sum(&samples, name, labels);
        match role {
            "edge" => {
                assert!(
                    v(
                        "lifeboat_flows_total",
                        &[("segment", "payroll"), ("result", "ok")]
                    ) >= 6.0
                );
                assert!(v("lifeboat_flows_total", &[("result", "not-dr-segment")]) >= 2.0);
                assert!(
                    v(
                        "lifeboat_flow_bytes_total",
                        &[("segment", "payroll"), ("direction", "down")]
                    ) >= 65536.0
                );
                assert!(
                    v(
                        "lifeboat_flow_bytes_total",
                        &[("segment", "payroll"), ("direction", "up")]
                    ) > 0.0
                );
                assert!(v("lifeboat_flow_setup_seconds_count", &[]) >= 8.0);
                assert!(v("lifeboat_flows_closed_total", &[("reason", "done")]) >= 6.0);
                assert!(
                    v(
                        "lifeboat_handshakes_total",
                        &[("role", "client"), ("result", "ok")]
                    ) >= 1.0
                );
                assert!(
                    v(
                        "lifeboat_handshakes_total",
                        &[("role", "connector"), ("result", "ok")]
                    ) >= 1.0
                );
                for r in ["expired", "unknown-ca", "wrong-role"] {
                    assert!(
                        v("lifeboat_handshakes_total", &[("result", r)]) >= 1.0,
                        "handshakes {r}"
                    );
                }
                assert_eq!(
                    v("lifeboat_connectors_connected", &[("group", "dc1-dr")]),
                    1.0
                );
                assert_eq!(v("lifeboat_segment_ready", &[("segment", "payroll")]), 1.0);
                assert_eq!(v("lifeboat_dr_mode", &[("mode", "on")]), 1.0);
                assert_eq!(
                    v(
                        "lifeboat_dr_transitions_total",
                        &[("from", "off"), ("to", "on")]
                    ),
                    1.0
                );
            }
            "connector" => {
                assert!(v("lifeboat_flows_total", &[("result", "ok")]) >= 6.0);
                assert!(v("lifeboat_flow_bytes_total", &[("direction", "down")]) >= 65536.0);
                assert!(
                    v(
                        "lifeboat_handshakes_total",
                        &[("role", "edge"), ("result", "ok")]
                    ) >= 1.0
                );
                assert_eq!(v("lifeboat_tunnels_active", &[("role", "edge")]), 1.0);
            }
            _ => {
                assert!(v("lifeboat_flows_total", &[("result", "ok")]) >= 6.0);
                assert!(v("lifeboat_flows_total", &[("result", "not-dr-segment")]) >= 2.0);
                assert!(v("lifeboat_flow_bytes_total", &[("direction", "down")]) >= 65536.0);
                assert!(v("lifeboat_flow_setup_seconds_count", &[]) >= 8.0);
                assert_eq!(v("lifeboat_tunnels_active", &[("role", "edge")]), 1.0);
            }
        }
        assert_eq!(v("lifeboat_ready", &[]), 1.0, "{role} lifeboat_ready");
    }
    t.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn readiness_says_why_not_and_the_ready_gauge_follows() {
    let edge = Arc::new(Metrics::new("edge"));
    let addr = serve_admin(Arc::clone(&edge), admin::edge_readiness(Arc::clone(&edge))).await;
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: DR mode not known yet"),
        "{body}"
    );
    let (_, text) = http_get(addr, "/metrics").await;
    assert_eq!(sum(&parse_samples(&text), "lifeboat_ready", &[]), 0.0);
    assert_eq!(
        sum(&parse_samples(&text), "lifeboat_dr_mode_known", &[]),
        0.0
    );
    // One good lookup is enough, and it sticks.
    edge.dr_last_good_lookup.set(1_700_000_000.0);
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".into()));
    let (_, text) = http_get(addr, "/metrics").await;
    assert_eq!(sum(&parse_samples(&text), "lifeboat_ready", &[]), 1.0);
    assert_eq!(
        sum(&parse_samples(&text), "lifeboat_dr_mode_known", &[]),
        1.0
    );

    for (role, ready, why) in [
        (
            "connector",
            admin::connector_readiness as fn(Arc<Metrics>) -> Readiness,
            "no edge tunnel is up",
        ),
        ("client", admin::client_readiness, "no edge is reachable"),
    ] {
        let m = Arc::new(Metrics::new(role));
        let addr = serve_admin(Arc::clone(&m), ready(Arc::clone(&m))).await;
        assert_eq!(
            http_get(addr, "/readyz").await,
            (503, format!("not ready: {why}\n"))
        );
        m.tunnels_active.with_label_values(&["edge", "tls"]).inc();
        assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(http_get(addr, "/nope").await.0, 404);
    }
}

// ------------------------------------------------------- real processes

/// Certificates for an edge, a connector and a client in `dir`.
fn pki_in(dir: &Path) {
    pki::init(dir, "dr.lifeboat.test", 2).expect("CA");
    for (role, name, group) in [
        (Role::Edge, "edge1", None),
        (Role::Connector, "dc1-a", Some("dc1-dr")),
        (Role::Client, "alice", None),
    ] {
        let mut o = IssueOptions::new(dir.to_path_buf(), role, name);
        o.group = group.map(Into::into);
        o.days = 1;
        o.ips = vec!["127.0.0.1".parse().expect("literal")];
        pki::issue(&o).expect("issue");
    }
}

fn edge_toml(trigger: &str, extra: &str) -> String {
    format!(
        r#"trust_domain = "dr.lifeboat.test"
[tls]
ca = "ca.pem"
cert = "edge1.pem"
key = "edge1.key"
[listen]
quic = "127.0.0.1:0"
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"
[dr]
trigger = "{trigger}"
{extra}
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
"#
    )
}

/// Start `lifeboat edge` on `text`; the process and its admin address.
async fn start_edge(dir: &Path, name: &str, text: &str) -> (Proc, SocketAddr) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write edge config");
    let p = Proc::role("edge", &path);
    let admin = p.listening("admin").await;
    (p, admin)
}

#[tokio::test]
async fn edge_process_has_every_design_metric_from_start_up_and_each_role_says_why_it_is_not_ready()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    pki_in(d);

    // An edge on standby, no connector yet: every series from start-up.
    let (_edge, admin) = start_edge(d, "edge.toml", &edge_toml("static:off", "")).await;
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let fams = families(&text);
    for m in DESIGN_METRICS {
        assert!(
            fams.contains(*m),
            "edge /metrics lacks {m} at start-up:\n{text}"
        );
    }
    let s = parse_samples(&text);
    assert_eq!(
        sum(&s, "lifeboat_connectors_connected", &[("group", "dc1-dr")]),
        0.0
    );
    assert_eq!(
        sum(&s, "lifeboat_segment_ready", &[("segment", "payroll")]),
        0.0
    );
    assert_eq!(sum(&s, "lifeboat_dr_mode", &[("mode", "off")]), 1.0);
    assert_eq!(
        sum(&s, "lifeboat_dr_mode", &[]),
        1.0,
        "exactly one mode is current"
    );
    for (from, to) in [
        ("off", "on"),
        ("on", "off"),
        ("test", "on"),
        ("off", "test"),
    ] {
        assert!(
            s.iter().any(|x| x.name == "lifeboat_dr_transitions_total"
                && x.labels.contains(&("from".into(), from.into()))
                && x.labels.contains(&("to".into(), to.into()))),
            "transition {from}->{to} exists at 0"
        );
    }
    let now = lifeboat::dr::trigger::unix_now() as f64;
    assert!(
        sum(
            &s,
            "lifeboat_cert_expiry_timestamp_seconds",
            &[("cert", "local")]
        ) > now
    );
    assert!(
        sum(
            &s,
            "lifeboat_cert_expiry_timestamp_seconds",
            &[("cert", "ca")]
        ) > now
    );
    assert_eq!(
        sum(
            &s,
            "lifeboat_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(sum(&s, "lifeboat_ready", &[]), 1.0);
    if let Some(p) = prometheus_tool("promtool") {
        let (ok, said) = promtool_check_metrics(&p, &text);
        assert!(ok, "promtool check metrics on the edge process:\n{said}");
    }
    // A fixed trigger: the mode is known, the edge is ready.
    assert_eq!(http_get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));

    // A DNS trigger nobody answers: not ready, and /readyz says why.
    let dead_dns = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let ns = dead_dns.local_addr().expect("addr");
    let (_edge2, admin2) = start_edge(
        d,
        "edge-dns.toml",
        &edge_toml(
            "dns:_dr.example.test",
            &format!("poll_interval = \"1s\"\n[dns]\nnameservers = [\"{ns}\"]"),
        ),
    )
    .await;
    let (status, body) = http_get(admin2, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("DR mode not known yet"), "{body}");

    // A connector and a client with no edge to reach: not ready, with why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let nowhere = closed.local_addr().expect("addr");
    drop(closed);
    for (role, cert, why, extra) in [
        ("connector", "dc1-a", "no edge tunnel is up", ""),
        (
            "client",
            "alice",
            "no edge is reachable",
            "socks = \"127.0.0.1:0\"\n",
        ),
    ] {
        let text = format!(
            "trust_domain = \"dr.lifeboat.test\"\nedges = [\"{nowhere}\"]\ntransport = \"tls\"\n\
             [tls]\nca = \"ca.pem\"\ncert = \"{cert}.pem\"\nkey = \"{cert}.key\"\n\
             [listen]\nadmin = \"127.0.0.1:0\"\n{extra}"
        );
        let path = d.join(format!("{role}.toml"));
        std::fs::write(&path, &text).expect("write config");
        let p = Proc::role(role, &path);
        let admin = p.listening("admin").await;
        assert_eq!(
            http_get(admin, "/readyz").await,
            (503, format!("not ready: {why}\n")),
            "{role}"
        );
        let (_, text) = http_get(admin, "/metrics").await;
        assert_eq!(sum(&parse_samples(&text), "lifeboat_ready", &[]), 0.0);
    }
}

/// Percent-encode a query parameter.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn a_real_prometheus_scrapes_a_running_edge() {
    let Some(prometheus) = prometheus_tool("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    pki_in(d);
    let (_edge, admin) = start_edge(d, "edge.toml", &edge_toml("static:on", "")).await;

    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr")
    };
    let cfg = d.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: lifeboat-edge\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut child = Command::new(&prometheus)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().expect("log");
            l.push_str(&line);
            l.push('\n');
        }
    });
    struct Kill(Child, Arc<Mutex<String>>);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- prometheus output:\n{}",
                    self.1.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        }
    }
    let _prometheus = Kill(child, log);

    // Bounded wait: Prometheus up, the edge scraped, lifeboat_dr_mode in the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = format!(
        "/api/v1/query?query={}",
        urlencode("lifeboat_dr_mode{mode=\"on\"}")
    );
    let body = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned lifeboat_dr_mode"
        );
        if tokio::net::TcpStream::connect(web).await.is_ok() {
            let (status, body) = http_get(web, &query).await;
            if status == 200 && body.contains("\"job\":\"lifeboat-edge\"") {
                break body;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("API answer is JSON");
    assert_eq!(v["status"], "success", "{body}");
    let result = &v["data"]["result"][0];
    assert_eq!(result["metric"]["__name__"], "lifeboat_dr_mode", "{body}");
    assert_eq!(result["metric"]["mode"], "on", "{body}");
    assert_eq!(result["value"][1], "1", "{body}");

    // The target is healthy and every alert rule and dashboard query of
    // deploy/ is valid PromQL to this Prometheus.
    let (_, targets) = http_get(web, "/api/v1/targets").await;
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/lifeboat-alerts.yml"))
        .expect("alert rules");
    let mut exprs: Vec<String> = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest == "|" {
            let mut e = String::new();
            while let Some(n) = lines.peek() {
                if n.trim_start().starts_with("for:") || n.trim_start().starts_with("labels:") {
                    break;
                }
                e.push_str(n.trim());
                e.push(' ');
                lines.next();
            }
            exprs.push(e);
        } else {
            exprs.push(rest.to_string());
        }
    }
    assert!(exprs.len() >= 15, "found the rules' expressions: {exprs:?}");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/lifeboat-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut dash_exprs = 0;
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("expr");
            exprs.push(e.replace("$job", ".*").replace("$instance", ".*"));
            dash_exprs += 1;
        }
    }
    assert!(dash_exprs >= 20, "dashboard queries: {dash_exprs}");
    for e in &exprs {
        let (status, body) = http_get(web, &format!("/api/v1/query?query={}", urlencode(e))).await;
        assert_eq!(status, 200, "Prometheus refused `{e}`: {body}");
    }
}

/// Issue 10 item 9: idle peers held every admin slot (64, 30 s each), so
/// `/healthz` timed out and a Kubernetes liveness probe restarted the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_200_idle_connections_hold_the_admin_port() {
    let ready: Readiness = Arc::new(|| Ok(()));
    let addr = serve_admin(Arc::new(Metrics::new("edge")), ready).await;
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        if i % 10 == 0 {
            // Some send half a request head and stall (slowloris).
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("partial head");
        }
        held.push(s);
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), http_get(addr, path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer within 5 s beside 200 idle connections"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(http_get(addr, "/healthz").await.1, "ok\n");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_closes_silent_and_answered_connections() {
    let ready: Readiness = Arc::new(|| Ok(()));
    let addr = serve_admin(Arc::new(Metrics::new("edge")), ready).await;
    let closed_within = |mut s: tokio::net::TcpStream| async move {
        let started = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("closed by the admin listener within 10 s")
            .ok();
        (started.elapsed(), rest)
    };

    // Silent: closed by the header timeout (2 s), not at once.
    let silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (took, rest) = closed_within(silent).await;
    assert!(took >= Duration::from_secs(1), "closed after {took:?}");
    assert!(
        rest.is_empty() || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&rest)
    );

    // Keep-alive asked for: answered, then closed (nothing idles after).
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let (took, answer) = closed_within(s).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}
