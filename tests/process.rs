//! What only the real binary shows: files written by `lifeboat pki`, exit
//! codes and messages, the `listening` log lines, SIGTERM drain, the demo.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proc::{run, text};
use common::*;
use lifeboat::trust::Role;

/// `lifeboat pki init` of a CA in `ca/` for `dr.example.com`.
const PKI_INIT: [&str; 6] = [
    "pki",
    "init",
    "--dir",
    "ca",
    "--trust-domain",
    "dr.example.com",
];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `openssl ARGS` in `cwd`: (success, stdout + stderr).
fn openssl(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_init_issue_revoke_write_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = run(&PKI_INIT, d).await;
    assert!(out.status.success(), "{}", text(&out));
    let ca = d.join("ca");
    for f in ["ca.pem", "ca.key", "ca.crl"] {
        assert!(ca.join(f).is_file(), "pki init wrote no {f}");
    }
    assert_eq!(mode(&ca.join("ca.key")), 0o600, "ca.key mode");
    // A second init must not overwrite the CA key.
    let key_before = std::fs::read(ca.join("ca.key")).expect("read");
    let again = run(&PKI_INIT, d).await;
    assert!(!again.status.success(), "second init: {}", text(&again));
    assert_eq!(std::fs::read(ca.join("ca.key")).expect("read"), key_before);

    let out = run(
        &[
            "pki", "issue", "--dir", "ca", "--role", "client", "--name", "alice",
        ],
        d,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        &[
            "pki",
            "issue",
            "--dir",
            "ca",
            "--role",
            "connector",
            "--name",
            "c1",
            "--group",
            "dc1-dr",
        ],
        d,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        &[
            "pki",
            "issue",
            "--dir",
            "ca",
            "--role",
            "edge",
            "--name",
            "edge1",
            "--dns",
            "edge1.example.com",
            "--ip",
            "127.0.0.1",
        ],
        d,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    for (name, uri) in [
        ("alice", "URI:spiffe://dr.example.com/client/alice"),
        ("c1", "URI:spiffe://dr.example.com/connector/dc1-dr/c1"),
        ("edge1", "URI:spiffe://dr.example.com/edge/edge1"),
    ] {
        assert_eq!(
            mode(&ca.join(format!("{name}.key"))),
            0o600,
            "{name}.key mode"
        );
        let pem = format!("ca/{name}.pem");
        let (ok, san) = openssl(
            &["x509", "-in", &pem, "-noout", "-ext", "subjectAltName"],
            d,
        );
        assert!(ok && san.contains(uri), "{name}: {san}");
        let (ok, v) = openssl(&["verify", "-CAfile", "ca/ca.pem", &pem], d);
        assert!(ok, "{name} does not chain to the CA: {v}");
    }
    let (_, san) = openssl(
        &[
            "x509",
            "-in",
            "ca/edge1.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        d,
    );
    assert!(
        san.contains("DNS:edge1.example.com") && san.contains("IP Address:127.0.0.1"),
        "{san}"
    );

    let out = run(
        &["pki", "revoke", "--dir", "ca", "--cert", "ca/alice.pem"],
        d,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let (_, serial) = openssl(&["x509", "-in", "ca/alice.pem", "-noout", "-serial"], d);
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    let (ok, crl) = openssl(&["crl", "-in", "ca/ca.crl", "-noout", "-text"], d);
    assert!(ok, "{crl}");
    assert!(
        crl.contains(&format!("Serial Number: {serial}")),
        "alice's serial {serial} not in the CRL:\n{crl}"
    );
    let (ok, v) = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "ca/ca.pem",
            "-CRLfile",
            "ca/ca.crl",
            "ca/alice.pem",
        ],
        d,
    );
    assert!(!ok && v.contains("revoked"), "alice after revoke: {v}");
    let (ok, v) = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "ca/ca.pem",
            "-CRLfile",
            "ca/ca.crl",
            "ca/c1.pem",
        ],
        d,
    );
    assert!(ok, "c1 must stay valid: {v}");
}

/// DESIGN: "2 usage or configuration error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = run(&PKI_INIT, d).await;
    assert!(out.status.success(), "{}", text(&out));
    // clap's own usage errors.
    let out = run(&["pki", "issue", "--dir", "ca", "--role", "client"], d).await;
    assert_eq!(out.status.code(), Some(2), "missing --name: {}", text(&out));
    // A connector needs its group.
    let out = run(
        &[
            "pki",
            "issue",
            "--dir",
            "ca",
            "--role",
            "connector",
            "--name",
            "c1",
        ],
        d,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--group"),
        "{}",
        text(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a connector without --group is a usage error: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Usage: lifeboat pki issue "),
        "pki issue's own usage: {}",
        text(&out)
    );
}

/// A minimal edge config around `extra` (certificates from the CA in `ca/`).
fn edge_config(extra: &str) -> String {
    format!(
        r#"trust_domain = "{TD}"

[tls]
ca = "ca/ca.pem"
cert = "ca/edge1.pem"
key = "ca/edge1.key"

[listen]
quic = "127.0.0.1:0"
admin = "127.0.0.1:0"

[limits]
drain_timeout = "2s"
{extra}
[dr]
trigger = "static:on"

[[connector_group]]
name = "{GROUP}"
dr = true

[[server_group]]
name = "dc1"
connector_groups = ["{GROUP}"]

[[segment]]
name = "payroll"
dr = true
domains = ["{DR_HOST}"]
tcp_ports = ["8000-8080"]
server_groups = ["dc1"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_with_a_bad_config_exits_2_naming_file_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::init(&d.join("ca"), TD);
    ca.issue(Role::Edge, "edge1", None);

    // A value of the wrong type: the parser knows the line.
    let good = edge_config("");
    let bad = good.replace("drain_timeout = \"2s\"", "drain_timeout = 2");
    let line = bad
        .lines()
        .position(|l| l == "drain_timeout = 2")
        .expect("line")
        + 1;
    std::fs::write(d.join("bad.toml"), &bad).expect("write");
    let out = run(&["edge", "-c", "bad.toml"], d).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        err.contains(&format!("bad.toml:{line}:")) && err.contains("limits.drain_timeout"),
        "want file, line {line} and key limits.drain_timeout:\n{err}"
    );

    // A semantic error: a reference to a server group that does not exist.
    let bad = good.replace("server_groups = [\"dc1\"]", "server_groups = [\"dc9\"]");
    let line = bad
        .lines()
        .position(|l| l == "server_groups = [\"dc9\"]")
        .expect("line")
        + 1;
    std::fs::write(d.join("refs.toml"), &bad).expect("write");
    let out = run(&["edge", "-c", "refs.toml"], d).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        err.contains(&format!("refs.toml:{line}:"))
            && err.contains("segment[0].server_groups")
            && err.contains("dc9"),
        "want file, line {line}, key segment[0].server_groups and the name:\n{err}"
    );

    // An unknown key.
    let bad = good.replace("[listen]\n", "[listen]\nquick = \"127.0.0.1:0\"\n");
    let line = bad
        .lines()
        .position(|l| l.starts_with("quick"))
        .expect("line")
        + 1;
    std::fs::write(d.join("unknown.toml"), &bad).expect("write");
    let out = run(&["edge", "-c", "unknown.toml"], d).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        err.contains(&format!("unknown.toml:{line}:")) && err.contains("quick"),
        "want file, line {line} and the unknown key:\n{err}"
    );
}

/// A missing key has no line of its own: the message must not point at
/// another table's line that merely shares a word (here `dr = true` of the
/// segment, for the missing `[dr] trigger`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_not_reported_at_an_unrelated_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::init(&d.join("ca"), TD);
    ca.issue(Role::Edge, "edge1", None);
    let good = edge_config("");
    let bad = good.replace("[dr]\ntrigger = \"static:on\"\n", "");
    std::fs::write(d.join("missing.toml"), &bad).expect("write");
    let out = run(&["edge", "-c", "missing.toml"], d).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("dr.trigger"), "{err}");
    let wrong = bad.lines().position(|l| l == "dr = true").expect("line") + 1;
    assert!(
        !err.contains(&format!("missing.toml:{wrong}:")),
        "the missing [dr] trigger is reported at line {wrong}, which is `dr = true` of [[segment]]:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_exits_0_and_everything_behaved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = run(&["demo", "--once"], dir.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("everything behaved"), "{}", text(&out));
    assert!(!stdout.contains("FAIL"), "{}", text(&out));
    eprintln!("demo --once took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_logs_its_listeners_serves_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::init(&d.join("ca"), TD);
    ca.issue(Role::Edge, "edge1", None);
    let alice = ca.issue(Role::Client, ALICE, None);
    std::fs::write(d.join("edge.toml"), edge_config("")).expect("write");

    let mut edge = Proc::spawn(&["edge", "-c", "edge.toml"], d);
    let quic = edge.listening("quic").await;
    let admin = edge.listening("admin").await;
    assert!(quic.ip().is_loopback() && quic.port() != 0, "{quic}");

    // The logged address is the real one: a client's tunnel comes up on it.
    let text = format!(
        "trust_domain = \"{TD}\"\nedges = [\"{quic}\"]\ntransport = \"quic\"\n[tls]\nca = {}\ncert = {}\nkey = {}\n[listen]\nsocks = \"127.0.0.1:0\"\n",
        toml_path(&ca.pem()),
        toml_path(&alice.cert),
        toml_path(&alice.key)
    );
    let path = d.join("client.toml");
    let cfg: lifeboat::config::ClientConfig =
        lifeboat::config::from_text(&path, &text).expect("client config");
    let metrics = Arc::new(lifeboat::metrics::Metrics::new("client"));
    let stop = tokio_util::sync::CancellationToken::new();
    let mode =
        lifeboat::dr::trigger::start(None, Arc::clone(&metrics), stop.clone()).expect("mode");
    let client = lifeboat::client::Client::bind(cfg, &path, mode, Arc::clone(&metrics))
        .await
        .expect("client bind");
    let client_task = tokio::spawn(client.run(stop.clone()));
    let up = metrics.tunnels_active.with_label_values(&["edge", "quic"]);
    eventually(
        "client tunnel to the process edge",
        Duration::from_secs(10),
        || up.get() == 1,
    )
    .await;
    // And the edge's admin listener says so.
    let out = curl()
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{admin}/metrics"))
        .output()
        .await
        .expect("curl /metrics");
    let metrics_text = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics_text.contains("lifeboat_tunnels_active{role=\"client\",transport=\"quic\"} 1"),
        "{metrics_text}"
    );

    // SIGTERM: the edge drains and exits 0 within its drain timeout (2 s).
    let pid = edge.child.id().expect("pid").to_string();
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(6), edge.child.wait())
        .await
        .unwrap_or_else(|_| panic!("edge still running 6 s after SIGTERM:\n{}", edge.log()))
        .expect("wait");
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", edge.log());
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    // Its last words (the reader task may still be draining the pipe).
    eventually("`edge stopped` logged", Duration::from_secs(5), || {
        edge.log().contains("edge stopped")
    })
    .await;

    // The client notices the edge went away.
    eventually("client tunnel down", Duration::from_secs(10), || {
        up.get() == 0
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), client_task).await;
}

/// `pki issue` replaces a certificate only with `--force`; `--role` lists
/// its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_issue_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let init = ["pki", "init", "--dir", "ca", "--trust-domain", TD];
    assert!(run(&init, d).await.status.success());
    let issue = [
        "pki", "issue", "--dir", "ca", "--role", "client", "--name", "alice",
    ];
    assert!(run(&issue, d).await.status.success());
    let (pem, key) = (
        std::fs::read(d.join("ca/alice.pem")).expect("pem"),
        std::fs::read(d.join("ca/alice.key")).expect("key"),
    );
    let out = run(&issue, d).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ca/alice.pem exists: pass --force to replace"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(d.join("ca/alice.pem")).expect("pem"), pem);
    assert_eq!(std::fs::read(d.join("ca/alice.key")).expect("key"), key);
    let forced = [&issue[..], &["--force"]].concat();
    let out = run(&forced, d).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(std::fs::read(d.join("ca/alice.pem")).expect("pem"), pem);
    assert_ne!(std::fs::read(d.join("ca/alice.key")).expect("key"), key);

    let out = run(&["pki", "issue", "--help"], d).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("[possible values: edge, connector, client]"),
        "{help}"
    );
}

/// Every option of every subcommand says what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_has_help_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let commands: &[&[&str]] = &[
        &[],
        &["edge"],
        &["connector"],
        &["client"],
        &["check"],
        &["pki", "init"],
        &["pki", "issue"],
        &["pki", "revoke"],
        &["dns-record"],
        &["dns-record", "keygen"],
        &["drill"],
        &["loadgen"],
        &["demo"],
    ];
    let mut options = 0;
    for cmd in commands {
        let args = [*cmd, &["--help"]].concat();
        let out = run(&args, dir.path()).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let section = help.split("Options:\n").nth(1).expect("an Options section");
        for line in section.lines().take_while(|l| !l.is_empty()) {
            let trimmed = line.trim_start();
            if !trimmed.starts_with('-') {
                continue; // a wrapped description
            }
            options += 1;
            let described = trimmed
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(
                described,
                "lifeboat {cmd:?}: no help for `{trimmed}`\n{help}"
            );
        }
    }
    assert!(options > 40, "saw only {options} options");
}

/// `dns-record --txt` prints just the record text, which `lifeboat check`
/// and the `file:` trigger take as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_record_txt_prints_only_the_record_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        &[
            "dns-record",
            "--name",
            "_dr.example.com",
            "--mode",
            "test",
            "--kind",
            "all",
            "--txt",
        ],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v=1; b=test; k=all\n");
    let out = run(
        &[
            "dns-record",
            "--name",
            "_dr.example.com",
            "--mode",
            "on",
            "--txt",
            "--edge-name",
            "e.example.com",
            "--edge",
            "192.0.2.1",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "--txt is the trigger text alone: {}",
        text(&out)
    );
}
