//! `lifeboat drill` says why a flow failed in the DESIGN's words, whatever
//! the transport: a revoked certificate is `revoked`, a certificate of
//! another role `wrong-role`, an edge nobody answers at `unreachable`
//! (TCP refused) or `timeout` (UDP silent); and
//! it exits 1 for each.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lifeboat::demo::{self, Topology};
use lifeboat::pki::{self, IssueOptions};
use lifeboat::trust::Role;

fn drill(dir: &Path, config: &str, transport: &str, target: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args([
            "drill",
            "-c",
            config,
            "--transport",
            transport,
            "--json",
            "--target",
            target,
        ])
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run drill")
}

/// The result words of a drill run (and the run, for messages).
fn words(o: &Output) -> (Vec<String>, String) {
    let text = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    let words = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"].as_str().expect("result").to_owned())
        .collect();
    (words, text)
}

/// A topology, and in its folder client configs for `bob` (revoked once
/// the first drill passed), `c9` (a connector's certificate) and `dead`
/// (an edge address nothing answers at); the target.
async fn setup() -> (Topology, std::path::PathBuf, String) {
    let t = Topology::start().await.expect("topology");
    let d = t.dir.path().to_path_buf();
    let target = format!("{}:{}", demo::DR_HOST, t.app.port());
    let client = std::fs::read_to_string(d.join("client.toml")).expect("client.toml");

    pki::issue(&IssueOptions::new(&d, Role::Client, "bob")).expect("bob");
    let mut c = IssueOptions::new(&d, Role::Connector, "c9");
    c.group = Some("dc1-dr".into());
    pki::issue(&c).expect("c9");
    for (name, cert) in [("bob.toml", "bob"), ("c9.toml", "c9")] {
        let text = client
            .replace("alice.pem", &format!("{cert}.pem"))
            .replace("alice.key", &format!("{cert}.key"));
        std::fs::write(d.join(name), text).expect("write");
    }
    // Nothing listens there (UDP and TCP).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let edge = t.edge_quic.to_string();
    assert!(client.contains(&edge), "{client}");
    std::fs::write(
        d.join("dead.toml"),
        client.replace(&format!("\"{edge}\""), &format!("\"{dead}\""))
            + "[limits]\nhandshake_timeout = \"1s\"\n",
    )
    .expect("write");

    // bob works until his certificate is revoked (the edge re-reads the CRL
    // when it changes).
    for transport in ["quic", "tls"] {
        let o = drill(&d, "bob.toml", transport, &target);
        assert_eq!(words(&o).0, ["ok"], "{}", words(&o).1);
    }
    pki::revoke(&d, &d.join("bob.pem")).expect("revoke");
    (t, d, target)
}

/// Each `(config, transport, word)`: the drill exits 1 with that word.
async fn expect_words(d: &Path, target: &str, cases: &[(&'static str, &'static str, &str)]) {
    for &(config, transport, want) in cases {
        let deadline = Instant::now() + Duration::from_secs(15);
        let (got, text) = loop {
            let o = tokio::task::spawn_blocking({
                let (d, target) = (d.to_path_buf(), target.to_owned());
                move || drill(&d, config, transport, &target)
            })
            .await
            .expect("drill");
            let (got, text) = words(&o);
            // Until the edge has re-read the CRL, bob still passes.
            if got != ["ok"] || Instant::now() > deadline {
                assert_eq!(o.status.code(), Some(1), "{text}");
                break (got, text);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(got, [want], "{config} over {transport}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_words_for_revoked_wrong_role_and_unreachable_over_quic_and_tls() {
    let (t, d, target) = setup().await;
    let cases = [
        ("bob.toml", "quic", "revoked"),
        ("bob.toml", "tls", "revoked"),
        ("c9.toml", "quic", "wrong-role"),
        // Nothing answers on UDP: the handshake times out.
        ("dead.toml", "quic", "timeout"),
        ("dead.toml", "tls", "unreachable"),
    ];
    expect_words(&d, &target, &cases).await;
    t.shutdown().await.expect("shutdown");
}

/// Over TLS the edge answers a client connection whose certificate is not
/// a client's `403 wrong-role`, so the drill says `wrong-role` as over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_says_wrong_role_over_tls() {
    let (t, d, target) = setup().await;
    expect_words(&d, &target, &[("c9.toml", "tls", "wrong-role")]).await;
    t.shutdown().await.expect("shutdown");
}
