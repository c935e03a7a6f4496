//! Semantic checks after parsing: references, DR reachability, limits. Each
//! error names the key and, best effort, the line it stands on.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{ConfigError, EdgeConfig, Limits};
use crate::segments::{Matcher, SegmentError, SegmentSpec};

/// An error at `key`, with the line found by scanning `text` for it.
pub(crate) fn at(file: &Path, text: &str, key: String, message: String) -> ConfigError {
    let line = find_line(text, &key);
    ConfigError {
        file: file.to_path_buf(),
        key,
        line,
        message,
    }
}

/// Best-effort line of a key path such as `segment[2].tcp_ports` or `limits.idle_timeout`.
fn find_line(text: &str, key: &str) -> Option<usize> {
    let mut lines = text.lines().enumerate().peekable();
    let mut parts = key.split('.').peekable();
    let mut found = None;
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let last = parts.peek().is_none();
        let table_header = |l: &str| {
            let l = l.trim();
            l == format!("[[{name}]]") || l == format!("[{name}]")
        };
        let key_line = |l: &str| {
            let l = l.trim_start();
            l.strip_prefix(name)
                .is_some_and(|r| r.trim_start().starts_with('='))
        };
        let mut seen = 0usize;
        let mut hit = None;
        for (no, l) in lines.by_ref() {
            if table_header(l) {
                if index.is_none_or(|i| i == seen) {
                    hit = Some(no + 1);
                    break;
                }
                seen += 1;
            } else if key_line(l) && (last || index.is_none()) {
                hit = Some(no + 1);
                break;
            }
        }
        match hit {
            Some(n) => found = Some(n),
            None => return found,
        }
    }
    found
}

/// Checks shared by connector and client.
pub(super) fn agent(
    edges: &[String],
    limits: &Limits,
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
    check_limits(limits, file, text)
}

fn check_limits(limits: &Limits, file: &Path, text: &str) -> Result<(), ConfigError> {
    limits
        .check()
        .map_err(|(key, why)| at(file, text, format!("limits.{key}"), why))
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
    check_limits(&cfg.limits, file, text)?;
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
    let mut spec_index = Vec::new();
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
                format!(
                    "DR segment `{}` reaches no DR connector group through its server groups \
                     (a DR segment needs a server group with at least one `dr = true` connector group)",
                    seg.name
                ),
            ));
        }
        spec_index.push(i);
        specs.push(SegmentSpec {
            name: seg.name.clone(),
            domains: seg.domains.clone(),
            cidrs: seg.cidrs.clone(),
            tcp_ports: seg.tcp_ports.clone(),
            connector_groups: serving,
        });
    }
    Matcher::compile(&specs).map_err(|e| {
        let (seg_name, what) = segment_error_parts(&e);
        let i = cfg
            .segments
            .iter()
            .position(|s| Some(s.name.as_str()) == seg_name)
            .unwrap_or(0);
        at(file, text, format!("segment[{i}].{what}"), e.to_string())
    })
}

/// Which segment and which key a segment error is about.
fn segment_error_parts(e: &SegmentError) -> (Option<&str>, &'static str) {
    e.culprit()
}
