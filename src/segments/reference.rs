//! A plain linear scan implementing the same matching rules as
//! [`Matcher::lookup`](super::Matcher::lookup), written for obviousness, not
//! speed: the oracle for property tests and the baseline for benches. It
//! allocates; never use it on the data path.

use super::{DomainPattern, Lookup, Segment};
use crate::preamble::{check_name, Dest, Host};

/// How specific a matching key is; greater is more specific. Keys of
/// different kinds never compete (a name matches only domains, an IP only
/// CIDRs), so the classes only need to be ordered within a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Score {
    Prefix(u8),
    Wildcard(usize),
    Exact,
}

/// Linear-scan lookup over compiled segments (as from
/// [`Matcher::segments`](super::Matcher::segments)).
pub fn lookup<'a>(segments: &'a [Segment], dest: &Dest) -> Lookup<'a> {
    let scores: Vec<Option<Score>> = match &dest.host {
        Host::Name(name) => {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            if check_name(name.as_bytes()).is_err() {
                return Lookup::Miss;
            }
            segments
                .iter()
                .map(|s| s.domains.iter().filter_map(|d| name_score(d, &name)).max())
                .collect()
        }
        Host::Ip(ip) => segments
            .iter()
            .map(|s| {
                s.cidrs
                    .iter()
                    .filter(|c| c.contains(*ip))
                    .map(|c| Score::Prefix(c.prefix_len()))
                    .max()
            })
            .collect(),
    };
    let Some(best) = scores.iter().flatten().max().copied() else {
        return Lookup::Miss;
    };
    // Equal best scores mean the same key: the same name, the same suffix,
    // or the same network of the same length.
    let claimants: Vec<&Segment> = segments
        .iter()
        .zip(&scores)
        .filter(|(_, s)| **s == Some(best))
        .map(|(seg, _)| seg)
        .collect();
    if let Some(hit) = claimants.iter().find(|s| s.ports.contains(dest.port)) {
        return Lookup::Hit(hit);
    }
    claimants
        .first()
        .map_or(Lookup::Miss, |s| Lookup::WrongPort(s))
}

fn name_score(pattern: &DomainPattern, name: &str) -> Option<Score> {
    match pattern {
        DomainPattern::Exact(n) => (n == name).then_some(Score::Exact),
        DomainPattern::Wildcard(suffix) => {
            let dotted = format!(".{suffix}");
            (name.len() > dotted.len() && name.ends_with(&dotted))
                .then_some(Score::Wildcard(suffix.len()))
        }
    }
}
