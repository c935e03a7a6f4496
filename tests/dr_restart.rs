//! An edge restarted during DR: the real binary, `[dr] state_file`, and the
//! trigger record served by hickory-server in process. The restarted edge
//! comes back in the mode it had, logged as `DR mode restored: on`, not as
//! an activation and not counted as a transition; a later real change to
//! `on` still logs `DR mode is activated!` once and counts once.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Answer, DnsServer, Proc, DR_HOST, TD, TRIGGER};
use lifeboat::pki::{self, IssueOptions};
use lifeboat::trust::Role;

const ON: &str = "v=1; b=on; k=zpa";
const OFF: &str = "v=1; b=off; k=zpa";
const ACTIVATED: &str = "DR mode is activated!";
const RESTORED_ON: &str = "DR mode restored: on";

/// `GET /metrics`: the answer, checked to be a 200.
async fn scrape(admin: SocketAddr) -> String {
    let resp = common::proc::get(admin, "/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp
}

/// The value of one series (`name{labels}` exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn transitions(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with("lifeboat_dr_transitions_total{"))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Scrape until `cond` holds on the text, for up to `within`.
async fn until(admin: SocketAddr, what: &str, within: Duration, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape(admin).await;
        if cond(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {what}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_edge(dir: &Path, ns: SocketAddr) {
    let pki_dir = dir.join("pki");
    pki::init(&pki_dir, TD, 2).expect("pki init");
    pki::issue(&IssueOptions {
        dir: pki_dir,
        role: Role::Edge,
        name: "edge1".into(),
        group: None,
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().expect("literal")],
        days: 2,
        not_before: None,
        not_after: None,
    })
    .expect("pki issue");
    let text = format!(
        r#"trust_domain = "{TD}"

[tls]
ca = "pki/ca.pem"
cert = "pki/edge1.pem"
key = "pki/edge1.key"

[listen]
quic = "127.0.0.1:0"
admin = "127.0.0.1:0"

[dr]
trigger = "dns:{TRIGGER}"
poll_interval = "1s"
state_file = "dr.state"

[dns]
nameservers = ["{ns}"]

[limits]
drain_timeout = "2s"

[[connector_group]]
name = "dc1-dr"
dr = true

[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]

[[segment]]
name = "payroll"
dr = true
domains = ["{DR_HOST}"]
tcp_ports = ["443"]
server_groups = ["dc1"]
"#
    );
    std::fs::write(dir.join("edge.toml"), text).expect("write edge.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_in_dr_restores_on_without_an_activation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let dns = DnsServer::start().await;
    dns.publish(ON);
    write_edge(d, dns.addr);
    let on = r#"lifeboat_dr_mode{mode="on"}"#;
    let off_to_on = r#"lifeboat_dr_transitions_total{from="off",to="on"}"#;

    // First start, no state file yet: a real activation, counted once.
    let edge = Proc::spawn(&["edge", "-c", "edge.toml"], d);
    let admin = edge.listening("admin").await;
    until(admin, "mode on", Duration::from_secs(10), |t| {
        sample(t, on) == Some(1.0)
    })
    .await;
    assert_eq!(sample(&scrape(admin).await, off_to_on), Some(1.0));
    assert_eq!(edge.count(ACTIVATED), 1, "{}", edge.log());
    let state = std::fs::read_to_string(d.join("dr.state")).expect("state file written");
    assert!(state.contains("b=on"), "{state}");
    edge.stop().await;

    // Restart while DNS is silent (the outage): on from the state file
    // before any lookup, and nothing counted or logged as a transition.
    dns.set(Answer::Silent);
    let edge = Proc::spawn(&["edge", "-c", "edge.toml"], d);
    let admin = edge.listening("admin").await;
    let text = scrape(admin).await;
    assert_eq!(sample(&text, on), Some(1.0), "restored at start\n{text}");
    let counted = transitions(&text);
    assert!(!counted.is_empty(), "the series exist from start\n{text}");
    assert!(counted.iter().all(|(_, v)| *v == 0.0), "{counted:?}");
    assert_eq!(edge.count(RESTORED_ON), 1, "{}", edge.log());

    // DNS answers again, still on: still no activation.
    dns.publish(ON);
    until(admin, "a good lookup", Duration::from_secs(15), |t| {
        sample(t, r#"lifeboat_dr_trigger_lookups_total{result="ok"}"#) >= Some(1.0)
    })
    .await;
    let text = scrape(admin).await;
    assert!(transitions(&text).iter().all(|(_, v)| *v == 0.0), "{text}");
    assert_eq!(sample(&text, on), Some(1.0));
    assert_eq!(
        edge.count(ACTIVATED),
        0,
        "a restart is not an activation:\n{}",
        edge.log()
    );

    // A real change later: off, then on, logged and counted once each.
    dns.publish(OFF);
    until(admin, "mode off", Duration::from_secs(10), |t| {
        sample(t, r#"lifeboat_dr_mode{mode="off"}"#) == Some(1.0)
    })
    .await;
    dns.publish(ON);
    until(admin, "mode on again", Duration::from_secs(10), |t| {
        sample(t, on) == Some(1.0)
    })
    .await;
    // A few more lookups of the same record change nothing.
    let ok = sample(
        &scrape(admin).await,
        r#"lifeboat_dr_trigger_lookups_total{result="ok"}"#,
    )
    .expect("lookups");
    until(admin, "two more lookups", Duration::from_secs(10), |t| {
        sample(t, r#"lifeboat_dr_trigger_lookups_total{result="ok"}"#) >= Some(ok + 2.0)
    })
    .await;
    let text = scrape(admin).await;
    assert_eq!(sample(&text, off_to_on), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"lifeboat_dr_transitions_total{from="on",to="off"}"#
        ),
        Some(1.0)
    );
    assert_eq!(edge.count(ACTIVATED), 1, "{}", edge.log());
    assert_eq!(edge.count(RESTORED_ON), 1, "{}", edge.log());
    edge.stop().await;
}
