//! The targets of a drill: `--target`s and the exact names of an edge
//! config's DR segments, each named by its segment.

use crate::config::{self, ConfigError, EdgeConfig};
use crate::preamble::Dest;
use crate::segments::{Lookup, Matcher};

use super::{Args, Target};

/// The first port of each `tcp_ports` entry (`"443"`, `"8000-8080"`).
pub(super) fn first_ports(entries: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for e in entries {
        let low = e.split('-').next().unwrap_or("").trim();
        if let Ok(p) = low.parse::<u16>() {
            if p != 0 && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Targets from an edge config: each exact (not wildcard) name of each DR
/// segment, with each of its ports. Segments matched only by address or
/// wildcard give none; they are named in the returned notes.
pub fn targets_from_edge(cfg: &EdgeConfig) -> (Vec<Dest>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for seg in cfg.segments.iter().filter(|s| s.dr) {
        let ports = first_ports(&seg.tcp_ports);
        let mut any = false;
        for name in seg.domains.iter().filter(|d| !d.starts_with('*')) {
            for &port in &ports {
                if let Ok(d) = Dest::parse(&format!("{name}:{port}")) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                    any = true;
                }
            }
        }
        if !any {
            notes.push(format!(
                "segment `{}` has no exact name to test; give it a --target",
                seg.name
            ));
        }
    }
    (out, notes)
}

/// The segment an edge config's matcher gives `dest`, if any.
fn segment_of(matcher: Option<&Matcher>, dest: &Dest) -> Option<String> {
    match matcher?.lookup(dest) {
        Lookup::Hit(s) => Some(s.name.clone()),
        Lookup::WrongPort(_) | Lookup::Miss => None,
    }
}

/// The targets of a drill: `--target`s, then the edge config's, each once,
/// with segments named by the edge config when given.
pub fn plan(args: &Args) -> anyhow::Result<(Vec<Target>, Vec<String>)> {
    let mut dests = args.targets.clone();
    let mut notes = Vec::new();
    let mut matcher = None;
    if let Some(path) = &args.edge_config {
        let (cfg, text) = config::load_with_text::<EdgeConfig>(path)?;
        matcher = Some(config::compile_segments(&cfg, path, &text)?);
        let (more, n) = targets_from_edge(&cfg);
        notes.extend(n);
        for d in more {
            if !dests.contains(&d) {
                dests.push(d);
            }
        }
    }
    if dests.is_empty() {
        return Err(ConfigError {
            file: args.edge_config.clone().unwrap_or_else(|| args.config.clone()),
            key: String::new(),
            line: None,
            message: "nothing to test: give --target HOST:PORT or --edge-config with DR segments that have exact names".into(),
        }
        .into());
    }
    let targets = dests
        .into_iter()
        .map(|dest| Target {
            segment: segment_of(matcher.as_ref(), &dest),
            dest,
        })
        .collect();
    Ok((targets, notes))
}
