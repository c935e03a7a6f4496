//! Semantic checks after parsing: references, DR reachability, limits. Each
//! error names the key and, best effort, the line it stands on.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::limits::check_duration;
use super::locate::Locator;
use super::{ConfigError, DrSection, EdgeConfig, Limits};
use crate::segments::{Matcher, SegmentError, SegmentSpec};

/// An error at `key`, with the line found in `text`.
pub(crate) fn at(file: &Path, text: &str, key: String, message: String) -> ConfigError {
    let line = Locator::new(text).line(&key);
    ConfigError {
        file: file.to_path_buf(),
        key,
        line,
        message,
    }
}

/// Checks shared by connector and client.
pub(super) fn agent(
    edges: &[String],
    limits: &Limits,
    dr: &DrSection,
    file: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    if edges.is_empty() {
        return Err(at(
            file,
            text,
            "edges".into(),
            "at least one edge address is required".into(),
        ));
    }
    for e in edges {
        if crate::preamble::Dest::parse(e).is_err() {
            return Err(at(
                file,
                text,
                "edges".into(),
                format!("`{e}` is not host:port"),
            ));
        }
    }
    check_limits(limits, file, text)?;
    check_dr(dr, file, text)
}

/// TCP listeners (key, address) must not share an address: the second bind
/// would fail at start. Port 0 is a fresh port each time; an unspecified
/// address (`0.0.0.0`, `[::]`) takes its port on every address.
pub(super) fn distinct_listeners(
    listeners: impl IntoIterator<Item = (String, SocketAddr)>,
    file: &Path,
    text: &str,
) -> Result<(), ConfigError> {
    let mut seen: Vec<(String, SocketAddr)> = Vec::new();
    for (key, addr) in listeners {
        let clash = seen.iter().find(|(_, a)| {
            a.port() != 0
                && a.port() == addr.port()
                && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
        });
        if let Some((first, a)) = clash {
            let line = Locator::new(text).line(first);
            return Err(at(
                file,
                text,
                key,
                format!(
                    "`{addr}` clashes with `{first} = \"{a}\"`{}: two listeners cannot share an address",
                    line.map(|l| format!(" (line {l})")).unwrap_or_default()
                ),
            ));
        }
        seen.push((key, addr));
    }
    Ok(())
}

fn check_limits(limits: &Limits, file: &Path, text: &str) -> Result<(), ConfigError> {
    limits
        .check()
        .map_err(|(key, why)| at(file, text, format!("limits.{key}"), why))
}

/// `[dr]` durations and their ranges (the README's config reference lists
/// the same): a poll faster than the machine's one-second floor is a
/// mistake, and anything beyond these is one too.
fn check_dr(dr: &DrSection, file: &Path, text: &str) -> Result<(), ConfigError> {
    const SEC: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let ranges = [
        ("poll_interval", dr.poll_interval, SEC, DAY),
        ("jitter", dr.jitter, Duration::ZERO, HOUR),
        ("cert_grace", dr.cert_grace, Duration::ZERO, 30 * DAY),
    ];
    for (key, v, least, most) in ranges {
        let Some(v) = v else { continue };
        check_duration(v, least, most).map_err(|why| at(file, text, format!("dr.{key}"), why))?;
    }
    Ok(())
}

pub(super) fn edge(cfg: &EdgeConfig, file: &Path, text: &str) -> Result<(), ConfigError> {
    if cfg.trust_domain.is_empty() {
        return Err(at(
            file,
            text,
            "trust_domain".into(),
            "must not be empty".into(),
        ));
    }
    if cfg.listen.quic.is_none() && cfg.listen.tls.is_none() {
        return Err(at(
            file,
            text,
            "listen".into(),
            "an edge needs `quic` or `tls` (or both)".into(),
        ));
    }
    if cfg.dr.trigger.is_none() {
        return Err(at(
            file,
            text,
            "dr.trigger".into(),
            "an edge needs a DR trigger (`dns:NAME`, `file:PATH` or `static:on|test|off`)".into(),
        ));
    }
    let tcp = [
        ("listen.tls", cfg.listen.tls),
        ("listen.admin", cfg.listen.admin),
    ];
    distinct_listeners(
        tcp.iter()
            .filter_map(|(k, a)| Some(((*k).to_owned(), (*a)?))),
        file,
        text,
    )?;
    check_limits(&cfg.limits, file, text)?;
    check_dr(&cfg.dr, file, text)?;
    compile_segments(cfg, file, text).map(|_| ())
}

/// Resolve DR segments to the DR connector groups serving them and compile the matcher.
pub fn compile_segments(cfg: &EdgeConfig, file: &Path, text: &str) -> Result<Matcher, ConfigError> {
    let mut groups: HashMap<&str, bool> = HashMap::new();
    for (i, g) in cfg.connector_groups.iter().enumerate() {
        if groups.insert(g.name.as_str(), g.dr).is_some() {
            return Err(at(
                file,
                text,
                format!("connector_group[{i}].name"),
                format!("connector group `{}` is defined twice", g.name),
            ));
        }
    }
    let mut servers: HashMap<&str, &[String]> = HashMap::new();
    for (i, s) in cfg.server_groups.iter().enumerate() {
        for cg in &s.connector_groups {
            if !groups.contains_key(cg.as_str()) {
                return Err(at(
                    file,
                    text,
                    format!("server_group[{i}].connector_groups"),
                    format!(
                        "server group `{}` names connector group `{cg}`, which is not defined",
                        s.name
                    ),
                ));
            }
        }
        if servers
            .insert(s.name.as_str(), s.connector_groups.as_slice())
            .is_some()
        {
            return Err(at(
                file,
                text,
                format!("server_group[{i}].name"),
                format!("server group `{}` is defined twice", s.name),
            ));
        }
    }
    let mut specs = Vec::new();
    let mut names = HashSet::new();
    for (i, seg) in cfg.segments.iter().enumerate() {
        if !names.insert(seg.name.as_str()) {
            return Err(at(
                file,
                text,
                format!("segment[{i}].name"),
                format!("segment `{}` is defined twice", seg.name),
            ));
        }
        let mut serving = Vec::new();
        for sg in &seg.server_groups {
            let Some(cgs) = servers.get(sg.as_str()) else {
                return Err(at(
                    file,
                    text,
                    format!("segment[{i}].server_groups"),
                    format!(
                        "segment `{}` names server group `{sg}`, which is not defined",
                        seg.name
                    ),
                ));
            };
            for cg in cgs.iter() {
                if groups.get(cg.as_str()) == Some(&true) && !serving.contains(cg) {
                    serving.push(cg.clone());
                }
            }
        }
        if !seg.dr {
            continue;
        }
        if serving.is_empty() {
            return Err(at(
                file,
                text,
                format!("segment[{i}].server_groups"),
                no_dr_group(cfg, seg),
            ));
        }
        specs.push(SegmentSpec {
            name: seg.name.clone(),
            domains: seg.domains.clone(),
            cidrs: seg.cidrs.clone(),
            tcp_ports: seg.tcp_ports.clone(),
            connector_groups: serving,
        });
    }
    Matcher::compile(&specs).map_err(|e| segment_error(cfg, file, text, &e))
}

/// A [`SegmentError`] as a [`ConfigError`] at the segment's entry: for a
/// bad value `segment[i].domains[j]`, for a duplicate claim the later
/// segment's entry, with the line of the earlier one in the message.
fn segment_error(cfg: &EdgeConfig, file: &Path, text: &str, e: &SegmentError) -> ConfigError {
    let (seg_name, what) = e.culprit();
    let index = |name: Option<&str>| {
        cfg.segments
            .iter()
            .position(|s| Some(s.name.as_str()) == name)
    };
    let i = index(seg_name).unwrap_or(0);
    let key = match e.item() {
        Some(item) => format!("segment[{i}].{what}[{item}]"),
        None => format!("segment[{i}].{what}"),
    };
    let mut message = e.to_string();
    if let SegmentError::Duplicate { first, .. } = e {
        if let Some(j) = index(Some(first)) {
            let line = Locator::new(text).line(&format!("segment[{j}]"));
            message.push_str(&format!("; `{first}` is segment[{j}]"));
            if let Some(l) = line {
                message.push_str(&format!(" at line {l}"));
            }
        }
    }
    at(file, text, key, message)
}

/// Why a DR segment reaches no DR connector group, naming what it does reach.
fn no_dr_group(cfg: &EdgeConfig, seg: &super::SegmentConfig) -> String {
    let head = format!("DR segment `{}` reaches no DR connector group", seg.name);
    if seg.server_groups.is_empty() {
        return format!("{head}: it has no server groups (add one whose connector groups include a `dr = true` one)");
    }
    let mut reached = Vec::new();
    for sg in &seg.server_groups {
        let cgs = cfg
            .server_groups
            .iter()
            .find(|s| &s.name == sg)
            .map(|s| s.connector_groups.as_slice())
            .unwrap_or_default();
        if cgs.is_empty() {
            reached.push(format!("server group `{sg}` has no connector groups"));
        } else {
            reached.push(format!(
                "server group `{sg}` reaches {} (not `dr = true`)",
                cgs.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    format!(
        "{head} through its server groups: {}; a DR segment needs a server group with a `dr = true` connector group",
        reached.join("; ")
    )
}
