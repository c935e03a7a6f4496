use std::path::Path;

use super::*;

const EDGE: &str = r#"
trust_domain = "dr.example.com"
[tls]
ca = "ca.pem"
cert = "edge1.pem"
key = "edge1.key"
[listen]
quic = "127.0.0.1:0"
[dr]
trigger = "static:on"
[limits]
idle_timeout = "5s"
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

fn path() -> &'static Path {
    Path::new("/etc/lifeboat/edge.toml")
}

#[test]
fn edge_config_loads_with_defaults_and_resolved_paths() {
    let cfg: EdgeConfig = from_text(path(), EDGE).unwrap();
    assert_eq!(cfg.tls.ca, Path::new("/etc/lifeboat/ca.pem"));
    assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(5));
    assert_eq!(cfg.limits.preamble_bytes, 8192);
    assert_eq!(cfg.dr.trigger, Some(Trigger::Static(crate::dr::DrMode::On)));
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = EDGE.replace("[limits]\n", "[limits]\nidle_timout = \"5s\"\n");
    let e = from_text::<EdgeConfig>(path(), &text).unwrap_err();
    assert_eq!(e.line, Some(12), "{e}");
    assert!(e.message.contains("idle_timout"), "{e}");
    assert!(e.key.starts_with("limits"), "{e}");
}

#[test]
fn bad_duration_is_named() {
    let text = EDGE.replace("\"5s\"", "\"five\"");
    let e = from_text::<EdgeConfig>(path(), &text).unwrap_err();
    assert_eq!(e.key, "limits.idle_timeout", "{e}");
    assert_eq!(e.line, Some(12), "{e}");
}

#[test]
fn dr_segment_without_dr_connector_group_is_refused() {
    let text = EDGE.replace(
        "dr = true\n[[server_group]]",
        "dr = false\n[[server_group]]",
    );
    let e = from_text::<EdgeConfig>(path(), &text).unwrap_err();
    assert_eq!(e.key, "segment[0].server_groups", "{e}");
    assert!(e.message.contains("reaches no DR connector group"), "{e}");
    assert_eq!(e.line, Some(24), "{e}");
}

#[test]
fn missing_server_group_is_named() {
    let text = EDGE.replace("server_groups = [\"dc1\"]", "server_groups = [\"dc9\"]");
    let e = from_text::<EdgeConfig>(path(), &text).unwrap_err();
    assert!(e.message.contains("`dc9`"), "{e}");
}

#[test]
fn bad_trigger_is_named() {
    let text = EDGE.replace("static:on", "carrier-pigeon");
    let e = from_text::<EdgeConfig>(path(), &text).unwrap_err();
    assert_eq!(e.key, "dr.trigger", "{e}");
    assert_eq!(e.line, Some(10), "{e}");
}

/// Every bounded key: (section, key, lowest accepted, highest accepted,
/// refused values). Values are TOML.
const RANGES: &[(&str, &str, &str, &str, &[&str])] = &[
    ("limits", "max_tunnels", "1", "1000000", &["0", "1000001"]),
    ("limits", "max_flows", "1", "10000000", &["0", "10000001"]),
    (
        "limits",
        "memory_budget",
        "4194304",
        "1099511627776",
        &["4194303", "1099511627777"],
    ),
    (
        "limits",
        "max_tunnels_per_identity",
        "1",
        "1000000",
        &["0", "1000001"],
    ),
    (
        "limits",
        "max_flows_per_identity",
        "1",
        "10000000",
        &["0", "10000001"],
    ),
    (
        "limits",
        "max_flows_per_tunnel",
        "1",
        "100000",
        &["0", "100001"],
    ),
    (
        "limits",
        "max_flows_per_connector_tunnel",
        "1",
        "1000000",
        &["0", "1000001"],
    ),
    (
        "limits",
        "max_handshakes_inflight",
        "1",
        "100000",
        &["0", "100001"],
    ),
    (
        "limits",
        "preamble_bytes",
        "256",
        "1048576",
        &["255", "1048577"],
    ),
    // The largest flow window is above the default tunnel window: uncapped.
    (
        "limits",
        "flow_window",
        "16384",
        "268435456\ntunnel_window = 0",
        &["16383", "268435457"],
    ),
    // 0 = no tunnel-wide cap; otherwise at least flow_window (1 MiB).
    (
        "limits",
        "tunnel_window",
        "0",
        "1073741824",
        &["1048575", "1073741825"],
    ),
    (
        "limits",
        "preamble_timeout",
        "\"100ms\"",
        "\"10m\"",
        &["\"0s\"", "\"99ms\"", "\"601s\""],
    ),
    (
        "limits",
        "handshake_timeout",
        "\"100ms\"",
        "\"10m\"",
        &["\"0s\"", "\"601s\"", "\"500000000000y\""],
    ),
    (
        "limits",
        "client_hello_timeout",
        "\"100ms\"",
        "\"10m\"",
        &["\"0s\"", "\"601s\""],
    ),
    (
        "limits",
        "idle_timeout",
        "\"300ms\"",
        "\"1h\"",
        &["\"299ms\"", "\"3601s\""],
    ),
    (
        "limits",
        "flow_idle_timeout",
        "\"0s\"",
        "\"7d\"",
        &["\"8d\""],
    ),
    (
        "limits",
        "connect_timeout",
        "\"100ms\"",
        "\"10m\"",
        &["\"0s\"", "\"601s\""],
    ),
    (
        "limits",
        "drain_timeout",
        "\"0s\"",
        "\"1h\"",
        &["\"3601s\""],
    ),
    (
        "dr",
        "poll_interval",
        "\"1s\"",
        "\"24h\"",
        &["\"0s\"", "\"999ms\"", "\"86401s\"", "\"500000000000y\""],
    ),
    ("dr", "jitter", "\"0s\"", "\"1h\"", &["\"3601s\""]),
    (
        "dr",
        "cert_grace",
        "\"0s\"",
        "\"30days\"",
        &["\"2592001s\""],
    ),
];

fn with_key(section: &str, key: &str, value: &str) -> String {
    match section {
        "limits" => EDGE.replace("idle_timeout = \"5s\"\n", &format!("{key} = {value}\n")),
        "dr" => EDGE.replace(
            "trigger = \"static:on\"\n",
            &format!("trigger = \"static:on\"\n{key} = {value}\n"),
        ),
        other => panic!("no section {other}"),
    }
}

#[test]
fn every_duration_and_size_is_bounded_and_named_with_its_line() {
    for &(section, key, least, most, refused) in RANGES {
        for ok in [least, most] {
            let text = with_key(section, key, ok);
            if let Err(e) = from_text::<EdgeConfig>(path(), &text) {
                panic!("{key} = {ok} refused: {e}");
            }
        }
        for bad in refused {
            let text = with_key(section, key, bad);
            let e = from_text::<EdgeConfig>(path(), &text).unwrap_err();
            let line = text
                .lines()
                .position(|l| l.starts_with(&format!("{key} =")))
                .map(|i| i + 1);
            assert_eq!(e.key, format!("{section}.{key}"), "{key} = {bad}: {e}");
            assert_eq!(e.line, line, "{key} = {bad}: {e}");
            assert!(e.message.contains("out of range"), "{key} = {bad}: {e}");
        }
    }
}

#[test]
fn the_bounds_hold_for_connector_and_client_configs_too() {
    let agent = "trust_domain = \"x.example\"\nedges = [\"edge.example:443\"]\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    for (extra, key) in [
        ("[limits]\nidle_timeout = \"2h\"\n", "limits.idle_timeout"),
        (
            "[dr]\npoll_interval = \"500000000000y\"\n",
            "dr.poll_interval",
        ),
        ("[dr]\njitter = \"2h\"\n", "dr.jitter"),
    ] {
        let text = format!("{agent}{extra}");
        let e = from_text::<ConnectorConfig>(path(), &text).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), (key, Some(8)), "{e}");
        let e = from_text::<ClientConfig>(path(), &text).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), (key, Some(8)), "{e}");
    }
}
