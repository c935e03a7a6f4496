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
