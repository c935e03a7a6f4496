//! `lifeboat check -c FILE`: load, validate and compile a config and report
//! what is reachable in DR (and, for what is not, why).

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{self, ClientConfig, ConfigError, ConnectorConfig, EdgeConfig};

/// Which role a config file is for, told from its keys.
fn role_of(path: &Path, text: &str) -> Result<&'static str, ConfigError> {
    let v: toml::Table = config::parse_str(path, text)?;
    let listen = v.get("listen").and_then(|l| l.as_table());
    let has = |k: &str| listen.is_some_and(|l| l.contains_key(k));
    if v.contains_key("segment") || has("quic") || has("tls") {
        Ok("edge")
    } else if has("socks") || has("http") || v.contains_key("forward") {
        Ok("client")
    } else if v.contains_key("edges") {
        Ok("connector")
    } else {
        Err(ConfigError::new(path, "", "cannot tell the role: an edge config has [listen] quic/tls, a connector or client config has `edges`"))
    }
}

/// Validate `path` and return the report to print.
pub fn run(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
    let mut out = String::new();
    match role_of(path, &text)? {
        "edge" => {
            let cfg: EdgeConfig = config::from_text(path, &text)?;
            let matcher = config::compile_segments(&cfg, path, &text)?;
            let _ = writeln!(
                out,
                "{}: valid edge config ({} DR segments)",
                path.display(),
                matcher.segments().len()
            );
            let _ = writeln!(
                out,
                "{:<20} {:<40} {:<16} DR connector groups",
                "segment", "matches", "tcp ports"
            );
            for seg in &cfg.segments {
                let what = seg
                    .domains
                    .iter()
                    .chain(&seg.cidrs)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",");
                let ports = seg.tcp_ports.join(",");
                match matcher.segments().iter().find(|s| s.name == seg.name) {
                    Some(s) => {
                        let _ = writeln!(
                            out,
                            "{:<20} {:<40} {:<16} {}",
                            seg.name,
                            what,
                            ports,
                            s.connector_groups.join(",")
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{:<20} {:<40} {:<16} not reachable in DR: `dr = false`",
                            seg.name, what, ports
                        );
                    }
                }
            }
        }
        "connector" => {
            let cfg: ConnectorConfig = config::from_text(path, &text)?;
            let _ = writeln!(
                out,
                "{}: valid connector config; edges {:?}",
                path.display(),
                cfg.edges
            );
        }
        _ => {
            let cfg: ClientConfig = config::from_text(path, &text)?;
            let _ = writeln!(
                out,
                "{}: valid client config; edges {:?}",
                path.display(),
                cfg.edges
            );
        }
    }
    Ok(out)
}
