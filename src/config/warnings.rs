//! Warnings: an edge config that is valid but probably not what the
//! operator meant. Each names the segment, the key and the line, like a
//! [`ConfigError`](super::ConfigError), but does not stop the edge.
//! `lifeboat check` prints them; the edge logs them when it loads a config.
//!
//! - A non-DR segment is unreachable while DR is on (refused
//!   `not-dr-segment`); the warning says whether it could be served (its
//!   server groups reach a DR connector group), whether its values would
//!   compile as a DR segment, and whether some of its names or prefixes are
//!   reachable anyway, through a broader DR segment.
//! - A DR segment with neither domains nor CIDRs matches nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate::Locator;
use super::{EdgeConfig, SegmentConfig};
use std::net::IpAddr;

use crate::preamble::{Dest, Host};
use crate::segments::{Cidr, DomainPattern, Lookup, MatchKey, Matcher, Segment, SegmentSpec};

/// How many "reachable anyway" entries one warning lists.
const SHADOW_LIST: usize = 3;

/// A legal but suspicious part of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    /// Dotted key path, e.g. `segment[2]`.
    pub key: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The segment it is about.
    pub segment: String,
    pub kind: WarningKind,
    pub message: String,
}

/// What a [`ConfigWarning`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// The segment cannot be reached while DR is on; the message says why.
    Unreachable,
    /// Entries of a non-DR segment are reachable in DR anyway, through a
    /// broader DR segment.
    ReachableAnyway,
    /// A more specific DR key refuses ports that a broader DR segment
    /// serves for the same addresses (most specific wins).
    HidesPorts,
    /// `[dr] trigger = "dns:..."` without `signing_key`: whoever can forge
    /// one DNS answer can switch DR on or off.
    UnsignedTrigger,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": key `{}`: {}", self.key, self.message)
    }
}

/// The DR connector groups a segment reaches through its server groups, in
/// config order, deduplicated. Unknown names are skipped (validation
/// refuses them).
pub fn dr_connector_groups(cfg: &EdgeConfig, seg: &SegmentConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for sg in &seg.server_groups {
        let Some(s) = cfg.server_groups.iter().find(|s| &s.name == sg) else {
            continue;
        };
        for cg in &s.connector_groups {
            let dr = cfg.connector_groups.iter().any(|g| &g.name == cg && g.dr);
            if dr && !out.contains(cg) {
                out.push(cg.clone());
            }
        }
    }
    out
}

/// Warnings for a config that validated and compiled to `matcher`.
pub fn edge_warnings(
    cfg: &EdgeConfig,
    matcher: &Matcher,
    file: &Path,
    text: &str,
) -> Vec<ConfigWarning> {
    let mut w = Warnings {
        file,
        locator: Locator::new(text),
        out: Vec::new(),
    };
    if matches!(cfg.dr.trigger, Some(crate::dr_mode::Trigger::Dns(_)))
        && cfg.dr.signing_key.is_none()
    {
        w.push(
            "dr.trigger".into(),
            "-",
            WarningKind::UnsignedTrigger,
            "the DNS trigger is not signed: whoever can forge one DNS answer for its name \
             can switch DR on or off here; set `[dr] signing_key` (lifeboat dns-record keygen)"
                .into(),
        );
    }
    for (i, seg) in cfg.segments.iter().enumerate() {
        if !seg.dr {
            non_dr_segment(&mut w, cfg, matcher, i, seg);
        } else if seg.domains.is_empty() && seg.cidrs.is_empty() {
            w.push(
                format!("segment[{i}]"),
                &seg.name,
                WarningKind::Unreachable,
                format!(
                    "DR segment `{}` has no domains and no cidrs: it matches nothing",
                    seg.name
                ),
            );
        }
    }
    let index: std::collections::HashMap<&str, usize> = cfg
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let hidden = super::shadow::hidden_ports(
        matcher,
        |name| index.get(name).copied(),
        |key| w.locator.line(key),
    );
    for h in hidden {
        w.push(h.key, &h.segment, WarningKind::HidesPorts, h.message);
    }
    w.out
}

/// The warnings of one file, each placed on its key's line.
struct Warnings<'a> {
    file: &'a Path,
    locator: Locator<'a>,
    out: Vec<ConfigWarning>,
}

impl Warnings<'_> {
    fn push(&mut self, key: String, segment: &str, kind: WarningKind, message: String) {
        self.out.push(ConfigWarning {
            file: self.file.to_path_buf(),
            line: self.locator.line(&key),
            key,
            segment: segment.to_owned(),
            kind,
            message,
        });
    }
}

/// A non-DR segment (`segment[i]`): unreachable while DR is on, and why;
/// then the entries of it that broader DR segments serve anyway.
fn non_dr_segment(
    w: &mut Warnings<'_>,
    cfg: &EdgeConfig,
    matcher: &Matcher,
    i: usize,
    seg: &SegmentConfig,
) {
    let serving = dr_connector_groups(cfg, seg);
    let mut why = format!(
        "segment `{}` is not a DR segment (`dr = false`): unreachable while DR is on \
         (refused 403 not-dr-segment)",
        seg.name
    );
    if !serving.is_empty() {
        why.push_str(&format!(
            "; its server groups reach DR connector group(s) {}: set `dr = true` to serve it in DR",
            serving.join(", ")
        ));
    } else if seg.server_groups.is_empty() {
        why.push_str("; it has no server groups either");
    } else {
        why.push_str("; its server groups reach no DR connector group either");
    }
    let spec = SegmentSpec {
        name: seg.name.clone(),
        domains: seg.domains.clone(),
        cidrs: seg.cidrs.clone(),
        tcp_ports: seg.tcp_ports.clone(),
        connector_groups: serving,
    };
    let alone = match Matcher::compile(std::slice::from_ref(&spec)) {
        Ok(m) => Some(m),
        Err(e) => {
            why.push_str(&format!("; as a DR segment it would be refused: {e}"));
            None
        }
    };
    // `dr` absent means false: the line is then the segment's header.
    w.push(
        format!("segment[{i}].dr"),
        &seg.name,
        WarningKind::Unreachable,
        why,
    );
    let shadows = alone.map_or_else(Vec::new, |alone| reachable_anyway(matcher, &alone));
    if let Some(first) = shadows.first() {
        let key = first.0.replace("{i}", &i.to_string());
        let msg = reachable_anyway_message(&seg.name, &shadows);
        w.push(key, &seg.name, WarningKind::ReachableAnyway, msg);
    }
}

/// "non-DR segment `name`: these entries are reachable in DR through
/// broader DR segments: ..." listing at most [`SHADOW_LIST`] of `shadows`.
fn reachable_anyway_message(name: &str, shadows: &[(String, String)]) -> String {
    let mut msg = format!(
        "non-DR segment `{name}`: {} reachable in DR through broader DR segments: ",
        if shadows.len() == 1 {
            "this entry is"
        } else {
            "these entries are"
        }
    );
    let list: Vec<String> = shadows
        .iter()
        .take(SHADOW_LIST)
        .map(|s| s.1.clone())
        .collect();
    msg.push_str(&list.join("; "));
    if shadows.len() > SHADOW_LIST {
        msg.push_str(&format!("; and {} more", shadows.len() - SHADOW_LIST));
    }
    msg
}

/// Entries of the (compiled, alone) non-DR segment that the DR matcher
/// serves anyway, on some of the same ports, through a key covering them:
/// `(key path with {i} for the segment index, description)`.
fn reachable_anyway(dr: &Matcher, alone: &Matcher) -> Vec<(String, String)> {
    let Some(seg) = alone.segments().first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (j, d) in seg.domains.iter().enumerate() {
        let found = match d {
            DomainPattern::Exact(n) => probe(dr, seg, Host::Name(n.clone()), |_| true),
            // A DR wildcard on the same or a shorter suffix covers every
            // name under ours.
            DomainPattern::Wildcard(s) => probe(
                dr,
                seg,
                Host::Name(format!("x.{s}")),
                |k| matches!(k, MatchKey::Wildcard(w) if s == w || s.ends_with(&format!(".{w}"))),
            ),
        };
        if let Some(via) = found {
            out.push((format!("segment[{{i}}].domains[{j}]"), format!("{d} {via}")));
        }
    }
    for (j, c) in seg.cidrs.iter().enumerate() {
        let (ip, len) = match *c {
            Cidr::V4 { net, len } => (IpAddr::from(net.to_be_bytes()), len),
            Cidr::V6 { net, len } => (IpAddr::from(net.to_be_bytes()), len),
        };
        let found = probe(
            dr,
            seg,
            Host::Ip(ip),
            |k| matches!(k, MatchKey::Prefix(p) if p.prefix_len() <= len),
        );
        if let Some(via) = found {
            out.push((format!("segment[{{i}}].cidrs[{j}]"), format!("{c} {via}")));
        }
    }
    out
}

/// Whether `host` on one of `seg`'s ports goes to a DR segment through a
/// key that `covers` accepts; says which.
fn probe(
    dr: &Matcher,
    seg: &Segment,
    host: Host,
    covers: impl Fn(MatchKey<'_>) -> bool,
) -> Option<String> {
    let mut dest = Dest { host, port: 0 };
    for &(lo, _) in seg.ports.ranges() {
        dest.port = lo;
        let (found, key) = dr.explain(&dest);
        let key = key.filter(|k| covers(*k))?;
        let (Lookup::Hit(s) | Lookup::WrongPort(s)) = found else {
            return None;
        };
        if s.ports.overlaps(&seg.ports) {
            return Some(format!(
                "via DR segment `{}` ({key}, ports {})",
                s.name, s.ports
            ));
        }
    }
    None
}
