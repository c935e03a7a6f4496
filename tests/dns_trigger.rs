//! DR mode driven by a real DNS server: hickory-server in process on
//! 127.0.0.1, serving a TXT record the tests rewrite (1 s TTL, 1 s polling).

mod common;

use std::time::{Duration, Instant};

use common::{
    dns_record_cli, parse_zone, socks_reply, txt_texts, Answer, Builder, DnsServer, EchoFlow, Logs,
    Topology, Watcher, ALICE, BOB, DR_HOST, TRIGGER,
};
use lifeboat::dr::record::{self, Kind, Spec};
use lifeboat::dr::{key, DrMode};
use lifeboat::trust::Role;

const OFF: &str = "v=1; b=off; k=zpa";
const TEST: &str = "v=1; b=test; k=zpa";
const ON: &str = "v=1; b=on; k=zpa";

/// SOCKS5 reply codes the client maps the edge's refusals to.
const SERVED: u8 = 0;
const NOT_ALLOWED: u8 = 2; // 403 not-allowed
const DR_INACTIVE: u8 = 3; // 503 dr-inactive

fn now() -> u64 {
    lifeboat::dr::trigger::unix_now()
}

fn signed(k: &ed25519_dalek::SigningKey, mode: DrMode, start: u64, end: Option<u64>) -> String {
    let spec = Spec {
        mode,
        kind: Kind::Zpa,
        start: Some(start),
        end,
    };
    record::encode(&spec, Some(k))
}

/// Retry a SOCKS connect every 10 ms until it is served; the time it took.
async fn until_served(t: &Topology, socks: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    loop {
        if socks_reply(socks, DR_HOST, t.app_port()).await == SERVED {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn off_test_on_off_through_the_edge() {
    let (logs, _guard) = Logs::capture();
    let dns = DnsServer::start().await;
    dns.publish(OFF);
    let t = Builder::quic().dns(&dns, "").also_client(BOB).start().await;
    t.wait_mode(DrMode::Off).await;
    let port = t.app_port();

    // off: standby, everybody refused with dr-inactive; the connector is warm.
    assert_eq!(
        socks_reply(t.user(ALICE).socks, DR_HOST, port).await,
        DR_INACTIVE
    );
    assert_eq!(
        socks_reply(t.user(BOB).socks, DR_HOST, port).await,
        DR_INACTIVE
    );
    assert_eq!(
        t.edge_metrics
            .segment_ready
            .with_label_values(&["payroll"])
            .get(),
        1
    );

    // test: alice (a test user) is served, bob is not allowed.
    dns.publish(TEST);
    t.wait_mode(DrMode::Test).await;
    assert_eq!(
        socks_reply(t.user(ALICE).socks, DR_HOST, port).await,
        SERVED
    );
    assert_eq!(
        socks_reply(t.user(BOB).socks, DR_HOST, port).await,
        NOT_ALLOWED
    );
    let mut alice_flow = EchoFlow::open(t.user(ALICE).socks, port).await;
    alice_flow.ping(4096).await.expect("alice's flow in test");

    // on: widening keeps alice's flow byte-exact; bob is served.
    let changed = Instant::now();
    dns.publish(ON);
    let latency = until_served(&t, t.user(BOB).socks).await;
    eprintln!(
        "activation latency (record change -> first served flow, TTL 1 s, poll 1 s): {:.0} ms",
        latency.as_secs_f64() * 1e3
    );
    assert!(changed.elapsed() < Duration::from_secs(5));
    assert_eq!(t.mode(), DrMode::On);
    alice_flow
        .ping(64 * 1024)
        .await
        .expect("alice's flow survives test -> on");
    assert_eq!(
        socks_reply(t.user(ALICE).socks, DR_HOST, port).await,
        SERVED
    );
    let mut bob_flow = EchoFlow::open(t.user(BOB).socks, port).await;
    bob_flow.ping(4096).await.expect("bob's flow in on");
    assert_eq!(t.edge_closed("dr-narrowed"), 0);

    // off: both running flows are closed, new ones refused.
    dns.publish(OFF);
    t.wait_mode(DrMode::Off).await;
    assert!(
        bob_flow.closed_within(Duration::from_secs(5)).await,
        "bob's flow closed on on -> off"
    );
    assert!(
        alice_flow.closed_within(Duration::from_secs(5)).await,
        "alice's flow closed on on -> off"
    );
    let m = t.edge_metrics.clone();
    common::eventually("2 flows closed dr-narrowed", Duration::from_secs(5), || {
        m.flows_closed.with_label_values(&["dr-narrowed"]).get() == 2
    })
    .await;
    assert_eq!(
        socks_reply(t.user(ALICE).socks, DR_HOST, port).await,
        DR_INACTIVE
    );
    assert_eq!(
        socks_reply(t.user(BOB).socks, DR_HOST, port).await,
        DR_INACTIVE
    );

    assert_eq!(t.transitions(DrMode::Off, DrMode::Test), 1);
    assert_eq!(t.transitions(DrMode::Test, DrMode::On), 1);
    assert_eq!(t.transitions(DrMode::On, DrMode::Off), 1);
    assert_eq!(
        logs.count("DR mode is activated!"),
        1,
        "logged exactly once:\n{}",
        logs.text()
    );
    assert!(
        t.edge_metrics
            .dr_trigger_lookups
            .with_label_values(&["ok"])
            .get()
            >= 4
    );
    assert!(t.edge_metrics.dr_last_good_lookup.get() > 0.0);
}

#[tokio::test(flavor = "current_thread")]
async fn narrowing_on_to_test_closes_only_non_test_users() {
    let dns = DnsServer::start().await;
    dns.publish(ON);
    let t = Builder::quic().dns(&dns, "").also_client(BOB).start().await;
    t.wait_mode(DrMode::On).await;
    let port = t.app_port();
    let mut alice_flow = EchoFlow::open(t.user(ALICE).socks, port).await;
    let mut bob_flow = EchoFlow::open(t.user(BOB).socks, port).await;
    alice_flow.ping(1000).await.expect("alice");
    bob_flow.ping(1000).await.expect("bob");

    dns.publish(TEST);
    t.wait_mode(DrMode::Test).await;
    assert!(
        bob_flow.closed_within(Duration::from_secs(5)).await,
        "bob's flow closed on on -> test"
    );
    alice_flow
        .ping(100_000)
        .await
        .expect("alice's flow kept, byte-exact");
    assert_eq!(
        socks_reply(t.user(BOB).socks, DR_HOST, port).await,
        NOT_ALLOWED
    );
    assert_eq!(t.edge_closed("dr-narrowed"), 1);
}

/// Activation latency over a few off -> on cycles (printed for the notes).
#[tokio::test(flavor = "current_thread")]
async fn activation_latency() {
    let dns = DnsServer::start().await;
    dns.publish(OFF);
    let t = Builder::quic().dns(&dns, "").also_client(BOB).start().await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        dns.publish(OFF);
        t.wait_mode(DrMode::Off).await;
        // Change the record at a random point of the poll cycle.
        tokio::time::sleep(Duration::from_millis(rand_ms(1000))).await;
        dns.publish(ON);
        samples.push(until_served(&t, t.user(BOB).socks).await);
    }
    samples.sort();
    let ms: Vec<u128> = samples.iter().map(Duration::as_millis).collect();
    eprintln!("activation latency, TTL 1 s, poll 1 s, 5 runs (ms, sorted): {ms:?}");
    assert!(
        samples[4] < Duration::from_millis(2500),
        "bounded by the poll: {ms:?}"
    );
}

fn rand_ms(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    h.finish() % max
}

#[tokio::test(flavor = "current_thread")]
async fn failed_lookups_and_foreign_records_keep_the_mode() {
    let (logs, _guard) = Logs::capture();
    let dns = DnsServer::start().await;
    dns.publish(ON);
    let w = Watcher::start(&dns, Role::Edge, "");
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;

    type Set = Box<dyn Fn(&DnsServer)>;
    let cases: [(&str, Set); 6] = [
        ("servfail", Box::new(|d| d.set(Answer::ServFail))),
        ("nxdomain", Box::new(|d| d.set(Answer::NxDomain))),
        // The name exists with an A record but no TXT (NOERROR, no data).
        (
            "nxdomain",
            Box::new(|d| d.publish_zone(&format!("{TRIGGER}. 1 IN A 192.0.2.1\n"))),
        ),
        ("timeout", Box::new(|d| d.set(Answer::Silent))),
        ("malformed", Box::new(|d| d.publish("v=2; b=off; k=zpa"))),
        ("ignored", Box::new(|d| d.publish("v=1; b=off; k=zia"))),
    ];
    for (result, set) in &cases {
        let before = w.lookups(result);
        set(&dns);
        w.wait_lookups(result, before, 2).await;
        assert_eq!(w.mode(), DrMode::On, "after {result}");
    }
    // One log line per change of condition, not one per poll.
    assert_eq!(logs.count("SERVFAIL, mode unchanged"), 1, "{}", logs.text());
    assert_eq!(logs.count("timed out, mode unchanged"), 1);
    assert_eq!(logs.count("ignored, mode unchanged"), 1);
    assert_eq!(logs.count("malformed, mode unchanged"), 1);
    // Still listening: a good record switches.
    dns.publish(OFF);
    w.wait_mode(DrMode::Off, Duration::from_secs(5)).await;
    assert_eq!(
        w.metrics
            .dr_transitions
            .with_label_values(&["on", "off"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "current_thread")]
async fn signed_triggers_refuse_forgeries_and_replays_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = lifeboat::dns_record::keygen(&dir.path().join("dr")).expect("keygen");
    let k = key::parse_private_key(&std::fs::read_to_string(&private).expect("key"))
        .expect("private key");
    let state = dir.path().join("dr-state.toml");
    let extra = format!(
        "signing_key = {:?}\nstate_file = {:?}\n",
        public.display().to_string(),
        state.display().to_string()
    );
    let dns = DnsServer::start().await;
    let w = Watcher::start(&dns, Role::Edge, &extra);

    // Unsigned, signed by another key, signed without t: ignored.
    let forger = key::generate();
    for text in [
        ON.to_string(),
        signed(&forger, DrMode::On, now(), None),
        record::encode(
            &Spec {
                mode: DrMode::On,
                kind: Kind::Zpa,
                start: None,
                end: None,
            },
            Some(&k),
        ),
    ] {
        let before = w.lookups("ignored");
        dns.publish(&text);
        w.wait_lookups("ignored", before, 1).await;
        assert_eq!(w.mode(), DrMode::Off, "{text}");
    }

    // A good one switches and is kept in the state file.
    let t_on = now() - 10;
    dns.publish(&signed(&k, DrMode::On, t_on, None));
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;
    let kept = std::fs::read_to_string(&state).expect("state file written");
    assert!(kept.contains(&format!("t = {t_on}")), "{kept}");

    // A replay of an older (genuinely signed) record is ignored.
    let old_off = signed(&k, DrMode::Off, t_on - 100, None);
    let before = w.lookups("ignored");
    dns.publish(&old_off);
    w.wait_lookups("ignored", before, 2).await;
    assert_eq!(w.mode(), DrMode::On);
    drop(w);

    // Restart with DNS down: the mode comes back from the state file before
    // any lookup, and the replay is still a replay.
    dns.set(Answer::Silent);
    let w = Watcher::start(&dns, Role::Edge, &extra);
    assert_eq!(w.mode(), DrMode::On, "restored before any lookup");
    assert_eq!(w.metrics.dr_mode_known.get(), 1, "a restored mode is known");
    w.wait_lookups("timeout", 0, 1).await;
    assert_eq!(w.mode(), DrMode::On);
    dns.publish(&old_off);
    w.wait_lookups("ignored", 0, 1).await;
    assert_eq!(w.mode(), DrMode::On, "replay after restart ignored");

    // A newer signed record switches.
    dns.publish(&signed(&k, DrMode::Off, now(), None));
    w.wait_mode(DrMode::Off, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn signed_start_and_end_apply_without_a_lookup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = lifeboat::dns_record::keygen(&dir.path().join("dr")).expect("keygen");
    let k = key::parse_private_key(&std::fs::read_to_string(&private).expect("key"))
        .expect("private key");
    let extra = format!("signing_key = {:?}\n", public.display().to_string());
    let dns = DnsServer::start().await;
    dns.publish(&signed(&k, DrMode::On, now() - 10, None));
    let w = Watcher::start(&dns, Role::Edge, &extra);
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;

    // x in the past: off.
    dns.publish(&signed(&k, DrMode::On, now() - 5, Some(now() - 1)));
    w.wait_mode(DrMode::Off, Duration::from_secs(5)).await;

    // t in the future: nothing yet; then DNS goes quiet and t arrives.
    let t = now() + 3;
    let before = w.lookups("ok");
    dns.publish(&signed(&k, DrMode::On, t, Some(t + 3)));
    w.wait_lookups("ok", before, 1).await;
    dns.set(Answer::Silent);
    assert_eq!(w.mode(), DrMode::Off, "not before t");
    w.wait_mode(DrMode::On, Duration::from_secs(6)).await;
    assert!(now() >= t, "switched at t, not before");
    // ... and x = t + 3 ends it, still without an answer from DNS.
    w.wait_mode(DrMode::Off, Duration::from_secs(6)).await;
    assert!(now() >= t + 3, "ended at x, not before");
    assert_eq!(w.lookups("ok"), before + 1, "DNS said nothing since");
}

#[tokio::test(flavor = "current_thread")]
async fn client_spreads_its_reaction_over_the_jitter() {
    let (logs, _guard) = Logs::capture();
    let dns = DnsServer::start().await;
    dns.publish(OFF);
    let w = Watcher::start_with(
        &dns,
        Role::Client,
        &common::dr_section(&format!(
            "trigger = \"dns:{TRIGGER}\"\npoll_interval = \"1s\"\njitter = \"2s\"\n"
        )),
    );
    w.wait_lookups("ok", 0, 1).await;
    assert_eq!(w.mode(), DrMode::Off);
    dns.publish(ON);
    // Poll (<= 1 s) + spread (<= 2 s) + slack.
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;
    assert_eq!(logs.count("DR mode change spread"), 1, "{}", logs.text());
}

#[test]
fn role_defaults() {
    use lifeboat::dr::trigger::{default_jitter, default_poll_interval};
    assert_eq!(default_poll_interval(Role::Edge), Duration::from_secs(30));
    assert_eq!(
        default_poll_interval(Role::Connector),
        Duration::from_secs(30)
    );
    assert_eq!(
        default_poll_interval(Role::Client),
        Duration::from_secs(200)
    );
    assert_eq!(default_jitter(Role::Edge), Duration::ZERO);
    assert!(default_jitter(Role::Client) > Duration::ZERO);
}

#[tokio::test(flavor = "current_thread")]
async fn dns_record_output_loads_into_hickory_and_drives_the_trigger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("dr");
    dns_record_cli(&["keygen", "--out", out.to_str().expect("utf-8 path")]);
    let private = dir.path().join("dr.key");
    let public = dir.path().join("dr.pub");
    let vk = key::parse_public_key(&std::fs::read_to_string(&public).expect("pub")).expect("pub");

    // Unsigned, with the guide's defaults.
    let zone = dns_record_cli(&["--name", TRIGGER, "--mode", "test"]);
    let records = parse_zone(&zone);
    assert_eq!(records.len(), 1, "{zone}");
    assert_eq!(records[0].ttl(), 30, "the guide's 30 s default");
    assert_eq!(txt_texts(&records, TRIGGER), ["v=1; b=test; k=zpa"]);

    // Signed, with a window, and the edges' addresses, in one zone.
    let start = now() - 5;
    let zone = format!(
        "{}{}",
        dns_record_cli(&[
            "--name",
            TRIGGER,
            "--mode",
            "on",
            "--kind",
            "all",
            "--ttl",
            "1",
            "--start",
            &start.to_string(),
            "--end",
            &(start + 3600).to_string(),
            "--sign-key",
            private.to_str().expect("utf-8 path"),
        ]),
        dns_record_cli(&[
            "--edge-name",
            "dr-edge.example.test",
            "--edge",
            "192.0.2.10",
            "--edge",
            "2001:db8::10",
        ])
    );
    let records = parse_zone(&zone);
    assert_eq!(records.len(), 3, "{zone}");
    let texts = txt_texts(&records, TRIGGER);
    let r = record::parse(&texts[0]).expect("record parses");
    assert_eq!(
        (r.mode, r.start, r.end),
        (DrMode::On, Some(start), Some(start + 3600))
    );
    assert_eq!(r.verify(&vk), Ok(()), "signature survives the zone file");
    let addrs: Vec<String> = records
        .iter()
        .filter(|r| r.name().to_ascii() == "dr-edge.example.test.")
        .map(|r| r.data().to_string())
        .collect();
    assert_eq!(addrs.len(), 2);
    assert!(addrs.contains(&"192.0.2.10".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"2001:db8::10".to_string()), "{addrs:?}");

    // A record over 255 bytes is split into character-strings and joined back.
    let long = format!("{ON}; pad={}", "p".repeat(400));
    let line = lifeboat::dns_record::txt_line(TRIGGER, 1, &long).expect("line");
    assert_eq!(txt_texts(&parse_zone(&line), TRIGGER), [long.as_str()]);

    // Served as printed, the signed record drives a trigger that pins the key.
    let dns = DnsServer::start().await;
    dns.publish_zone(&zone);
    let w = Watcher::start(
        &dns,
        Role::Edge,
        &format!("signing_key = {:?}\n", public.display().to_string()),
    );
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;
    // The long, split record (unsigned) is read whole by the resolver path.
    let dns2 = DnsServer::start().await;
    dns2.publish(&long);
    let w2 = Watcher::start(&dns2, Role::Edge, "");
    w2.wait_mode(DrMode::On, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_unusable_signing_key_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "not a key\n").expect("write");
    let dns = DnsServer::start().await;
    for path in [bad, dir.path().join("missing.pub")] {
        let dr = common::dr_section(&format!(
            "trigger = \"dns:{TRIGGER}\"\nsigning_key = {:?}\n",
            path.display().to_string()
        ));
        let err = lifeboat::dr::trigger::start_for(
            Role::Edge,
            &dr,
            &dns.dns_section(),
            std::sync::Arc::new(lifeboat::metrics::Metrics::new("edge")),
            tokio_util::sync::CancellationToken::new(),
        )
        .expect_err("refused");
        let ce = err
            .downcast_ref::<lifeboat::config::ConfigError>()
            .unwrap_or_else(|| panic!("not a ConfigError (exit 2): {err:#}"));
        assert_eq!(ce.key, "dr.signing_key");
        assert_eq!(ce.file, path);
    }
}

/// `t=`/`x=` values that overflow `Instant + Duration` (at or above 2^63 s).
fn absurd_records() -> Vec<String> {
    vec![
        format!("{OFF}; t={}", u64::MAX),
        format!("{OFF}; t={}", 1u64 << 63),
        format!("{ON}; x={}", i64::MAX),
        format!("{ON}; x={}", u64::MAX),
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn absurd_record_times_then_off_the_edge_still_obeys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("dr.state");
    let dns = DnsServer::start().await;
    dns.publish(ON);
    let t = Builder::quic()
        .dns(
            &dns,
            &format!("state_file = {:?}\n", state.display().to_string()),
        )
        .also_client(BOB)
        .start()
        .await;
    t.wait_mode(DrMode::On).await;
    let m = t.edge_metrics.clone();
    let ok = move || m.dr_trigger_lookups.with_label_values(&["ok"]).get();
    for text in absurd_records() {
        // Two lookups of it: the trigger task went round its loop since.
        let before = ok();
        dns.publish(&text);
        common::eventually(
            &format!("two lookups of {text}"),
            Duration::from_secs(10),
            || ok() >= before + 2,
        )
        .await;
        assert_eq!(
            t.mode(),
            DrMode::On,
            "{text}: t= never comes, x= never ends"
        );
        assert_eq!(
            socks_reply(t.user(BOB).socks, DR_HOST, t.app_port()).await,
            SERVED
        );
    }
    let kept = std::fs::read_to_string(&state).expect("state file");
    assert!(kept.contains(&format!("x={}", u64::MAX)), "{kept}");

    dns.publish(OFF);
    t.wait_mode(DrMode::Off).await;
    assert_eq!(
        socks_reply(t.user(BOB).socks, DR_HOST, t.app_port()).await,
        DR_INACTIVE
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_state_file_with_an_absurd_end_restores_and_still_follows_dns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("dr.state");
    let extra = format!("state_file = {:?}\n", state.display().to_string());
    let absurd = format!("{ON}; x={}", u64::MAX);
    let dns = DnsServer::start().await;
    dns.publish(&absurd);
    let w = Watcher::start(&dns, Role::Edge, &extra);
    w.wait_mode(DrMode::On, Duration::from_secs(5)).await;
    common::eventually("state file written", Duration::from_secs(5), || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&absurd))
    })
    .await;
    drop(w);

    // Restarted with DNS silent: on from the state file, and the task lives.
    dns.set(Answer::Silent);
    let w = Watcher::start(&dns, Role::Edge, &extra);
    assert_eq!(w.mode(), DrMode::On, "restored");
    w.wait_lookups("timeout", 0, 1).await;
    dns.publish(OFF);
    w.wait_mode(DrMode::Off, Duration::from_secs(5)).await;
}

/// The `file:` trigger takes what `lifeboat dns-record` prints: the record
/// text alone (`--txt`), or the zone line pasted as it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_trigger_takes_dns_record_output_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, want) in [
        (
            &["--name", "_dr.example.com", "--mode", "test", "--txt"][..],
            DrMode::Test,
        ),
        (
            &["--name", "_dr.example.com", "--mode", "on"][..],
            DrMode::On,
        ),
    ] {
        let out = dns_record_cli(args);
        let path = dir.path().join("dr.txt");
        std::fs::write(&path, &out).expect("write trigger file");
        let metrics = std::sync::Arc::new(lifeboat::metrics::Metrics::new("edge"));
        let stop = tokio_util::sync::CancellationToken::new();
        let mode = lifeboat::dr::trigger::start(
            Some(&lifeboat::dr::Trigger::File(path)),
            metrics,
            stop.clone(),
        )
        .expect("file trigger");
        assert_eq!(*mode.borrow(), want, "from {out:?}");
        stop.cancel();
    }
}

/// Nothing outside: the DNS server goes silent and a trust file becomes
/// unreadable while DR is on. The edge stays on, keeps the trust it had,
/// and serves the running flow and new ones (nobody scrapes it, either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_outside_an_edge_in_on_keeps_serving() {
    let dns = DnsServer::start().await;
    dns.publish(ON);
    let t = Builder::quic().dns(&dns, "").also_client(BOB).start().await;
    t.wait_mode(DrMode::On).await;
    let port = t.app_port();
    let mut running = EchoFlow::open(t.user(BOB).socks, port).await;
    running.ping(10_000).await.expect("echo before");

    dns.set(Answer::Silent);
    let ca = t.dir.path().join("pki/ca.pem");
    std::fs::write(&ca, b"not a certificate").expect("spoil ca.pem");
    // Several polls (1 s) and trust-file checks (2 s) go by.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(t.mode(), DrMode::On);
    running
        .ping(10_000)
        .await
        .expect("the running flow goes on");
    assert_eq!(socks_reply(t.user(BOB).socks, DR_HOST, port).await, SERVED);
    assert_eq!(
        socks_reply(t.user(ALICE).socks, DR_HOST, port).await,
        SERVED
    );
}
