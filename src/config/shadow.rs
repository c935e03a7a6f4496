//! The "hides ports" warning: overlapping DR segments are legal and the
//! most specific key wins, so a destination matching a more specific key
//! (10.20.5.0/24, `*.b.hr.corp.example`, an exact name) is refused on every
//! port that key's segment does not list, even where a broader key's
//! segment (10.20.0.0/16, `*.hr.corp.example`) lists it. Usually an
//! oversight; the warning names both entries and their lines.
//!
//! Cost: one hash look-up per prefix length or name label of each key, so
//! 100k segments stay well under a second.

use std::collections::HashMap;

use crate::segments::{Cidr, DomainPattern, Matcher, Segment};

/// A compiled key, owned, as the matcher ranks them.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Exact(String),
    Wildcard(String),
    Prefix(Cidr),
}

/// Who claims a key: (segment, config key path of the entry).
type Claims<'m> = Vec<(&'m Segment, String)>;

/// One finding: the narrower entry (its key path), the message.
pub(super) struct Hidden {
    pub(super) key: String,
    pub(super) segment: String,
    pub(super) message: String,
}

/// Every key whose next broader key serves ports that it does not.
/// `index_of` gives a segment's position in the config; `line` the line of
/// a key path.
pub(super) fn hidden_ports(
    matcher: &Matcher,
    index_of: impl Fn(&str) -> Option<usize>,
    line: impl Fn(&str) -> Option<usize>,
) -> Vec<Hidden> {
    let mut claims: HashMap<Key, Claims<'_>> = HashMap::new();
    let mut order = Vec::new();
    for seg in matcher.segments() {
        let Some(i) = index_of(&seg.name) else {
            continue;
        };
        let domains = seg.domains.iter().enumerate().map(|(j, d)| {
            let key = match d {
                DomainPattern::Exact(n) => Key::Exact(n.clone()),
                DomainPattern::Wildcard(s) => Key::Wildcard(s.clone()),
            };
            (key, format!("segment[{i}].domains[{j}]"))
        });
        let cidrs = seg
            .cidrs
            .iter()
            .enumerate()
            .map(|(j, c)| (Key::Prefix(*c), format!("segment[{i}].cidrs[{j}]")));
        for (key, path) in domains.chain(cidrs) {
            let c = claims.entry(key.clone()).or_default();
            if c.is_empty() {
                order.push(key);
            }
            c.push((seg, path));
        }
    }
    let mut out = Vec::new();
    for key in &order {
        let Some((broader, wide)) = broader(key).find_map(|b| claims.get_key_value(&b)) else {
            continue;
        };
        let narrow = &claims[key];
        let hidden = hidden(wide, narrow);
        if hidden.is_empty() {
            continue;
        }
        let (seg, path) = &narrow[0];
        let (wseg, wpath) = &wide[0];
        let at = line(wpath)
            .map(|l| format!(" at line {l}"))
            .unwrap_or_default();
        out.push(Hidden {
            key: path.clone(),
            segment: seg.name.clone(),
            message: format!(
                "{} of DR segment `{}` hides port(s) {} that DR segment `{}` serves for {}{at}: \
                 the most specific match wins, so {} is refused (403 not-dr-segment) on them; \
                 add the ports to `{}` if they should be served",
                show(key),
                seg.name,
                fmt_ranges(&hidden),
                wseg.name,
                show(broader),
                show(key),
                seg.name,
            ),
        });
    }
    out
}

fn show(k: &Key) -> String {
    match k {
        Key::Exact(n) => n.clone(),
        Key::Wildcard(s) => format!("*.{s}"),
        Key::Prefix(c) => c.to_string(),
    }
}

/// The keys less specific than `k` that would match what `k` matches,
/// most specific first: shorter prefixes; for names, wildcards on shorter
/// suffixes (an exact name `a.b.c` is also matched by `*.b.c`, `*.c`).
fn broader(k: &Key) -> Box<dyn Iterator<Item = Key> + '_> {
    match k {
        Key::Prefix(Cidr::V4 { net, len }) => Box::new((0..*len).rev().map(move |l| {
            let mask = u32::MAX.checked_shl(32 - u32::from(l)).unwrap_or(0);
            Key::Prefix(Cidr::V4 {
                net: net & mask,
                len: l,
            })
        })),
        Key::Prefix(Cidr::V6 { net, len }) => Box::new((0..*len).rev().map(move |l| {
            let mask = u128::MAX.checked_shl(128 - u32::from(l)).unwrap_or(0);
            Key::Prefix(Cidr::V6 {
                net: net & mask,
                len: l,
            })
        })),
        Key::Exact(n) | Key::Wildcard(n) => Box::new(
            n.match_indices('.')
                .map(move |(i, _)| Key::Wildcard(n[i + 1..].to_owned())),
        ),
    }
}

/// Ports the `wide` claims serve and no `narrow` claim does. The claims
/// of one key have disjoint ports (validation), so sorting is enough.
fn hidden(wide: &Claims<'_>, narrow: &Claims<'_>) -> Vec<(u16, u16)> {
    let mut left: Vec<(u16, u16)> = wide
        .iter()
        .flat_map(|(s, _)| s.ports.ranges().iter().copied())
        .collect();
    left.sort_unstable();
    for (s, _) in narrow {
        left = minus(&left, s.ports.ranges());
    }
    left
}

/// Ports in `a` and not in `b` (both sorted, each without overlaps).
fn minus(a: &[(u16, u16)], b: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut from = u32::from(lo);
        let hi = u32::from(hi);
        for &(blo, bhi) in b {
            let (blo, bhi) = (u32::from(blo), u32::from(bhi));
            if bhi < from || blo > hi {
                continue;
            }
            if blo > from {
                out.push((from, blo - 1));
            }
            from = from.max(bhi + 1);
        }
        if from <= hi {
            out.push((from, hi));
        }
    }
    out.into_iter()
        .filter_map(|(l, h)| Some((u16::try_from(l).ok()?, u16::try_from(h).ok()?)))
        .collect()
}

fn fmt_ranges(r: &[(u16, u16)]) -> String {
    r.iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::minus;

    #[test]
    fn port_difference() {
        assert_eq!(
            minus(&[(443, 443), (8000, 8080)], &[(443, 443)]),
            [(8000, 8080)]
        );
        assert_eq!(
            minus(&[(1, 100)], &[(10, 20), (50, 60)]),
            [(1, 9), (21, 49), (61, 100)]
        );
        assert_eq!(minus(&[(1, 65535)], &[(1, 65535)]), []);
        assert_eq!(minus(&[(1, 65535)], &[(65535, 65535)]), [(1, 65534)]);
    }
}
