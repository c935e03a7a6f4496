//! [`Matcher::compile`]: validate each segment, then put every key in its
//! table with the segments claiming it, refusing overlapping claims.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use super::fxhash::FxBuild;
use super::spec::{self, CidrError};
use super::table::{Table, TooLarge};
use super::{
    set_bit, v4_key, v6_key, Cidr, DomainPattern, Matcher, Segment, SegmentError, SegmentSpec,
};

/// Segment indices claiming one key while compiling, in config order, with
/// pairwise disjoint ports.
type Claim = Vec<u32>;

impl Matcher {
    /// Validates and compiles `specs`; [`Segment::index`] is the position in
    /// `specs`. Linear in the number of entries (hash tables throughout).
    pub fn compile(specs: &[SegmentSpec]) -> Result<Self, SegmentError> {
        let mut segments = Vec::with_capacity(specs.len());
        // Position in the spec of each (deduplicated) domain and CIDR, for
        // pointing a duplicate claim at the entry the operator wrote.
        let mut items = Vec::with_capacity(specs.len());
        let mut names: HashSet<&str, FxBuild> = HashSet::default();
        names.reserve(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            if !names.insert(spec.name.as_str()) {
                return Err(SegmentError::DuplicateName {
                    segment: spec.name.clone(),
                });
            }
            let (seg, seg_items) = compile_one(index, spec)?;
            segments.push(seg);
            items.push(seg_items);
        }
        let mut exact: HashMap<&[u8], Claim, FxBuild> = HashMap::default();
        let mut wild: HashMap<&[u8], Claim, FxBuild> = HashMap::default();
        let mut v4: HashMap<[u8; 5], Claim, FxBuild> = HashMap::default();
        let mut v6: HashMap<[u8; 17], Claim, FxBuild> = HashMap::default();
        let mut wild_lens = [0u64; 4];
        for (seg, (domain_items, cidr_items)) in segments.iter().zip(&items) {
            for (d, &item) in seg.domains.iter().zip(domain_items) {
                let (map, key, kind) = match d {
                    DomainPattern::Exact(n) => (&mut exact, n, "domain"),
                    DomainPattern::Wildcard(s) => {
                        set_bit(&mut wild_lens, s.len());
                        (&mut wild, s, "wildcard")
                    }
                };
                let entry = map.entry(key.as_bytes());
                add_claim(
                    &segments,
                    entry,
                    seg,
                    || format!("{kind} {d}"),
                    "domains",
                    item,
                )?;
            }
            for (c, &item) in seg.cidrs.iter().zip(cidr_items) {
                let what = || format!("prefix {c}");
                match *c {
                    Cidr::V4 { net, len } => {
                        let entry = v4.entry(v4_key(net, len));
                        add_claim(&segments, entry, seg, what, "cidrs", item)?;
                    }
                    Cidr::V6 { net, len } => {
                        let entry = v6.entry(v6_key(net, len));
                        add_claim(&segments, entry, seg, what, "cidrs", item)?;
                    }
                }
            }
        }
        let lens = |keys: Vec<u8>| {
            let mut l = keys;
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
            l
        };
        let v4_lens = lens(v4.keys().map(|k| k[0]).collect());
        let v6_lens = lens(v6.keys().map(|k| k[0]).collect());
        let freeze = |entries: Vec<(&[u8], &Claim)>| {
            Table::build(entries.into_iter().map(|(key, claim)| {
                let claimants = claim
                    .iter()
                    .filter_map(|&i| segments.get(i as usize).map(|s| (i, s.ports.ranges())));
                (key, claimants)
            }))
            .map_err(|TooLarge| SegmentError::BadName {
                segment: String::new(),
                reason: "the segments do not fit the matcher's tables (over 4 GiB)",
            })
        };
        let exact = freeze(exact.iter().map(|(k, c)| (*k, c)).collect())?;
        let wild = freeze(wild.iter().map(|(k, c)| (*k, c)).collect())?;
        let v4 = freeze(v4.iter().map(|(k, c)| (&k[..], c)).collect())?;
        let v6 = freeze(v6.iter().map(|(k, c)| (&k[..], c)).collect())?;
        Ok(Self {
            segments,
            exact,
            wild,
            wild_lens,
            v4,
            v4_lens,
            v6,
            v6_lens,
        })
    }
}
/// Adds `seg` to the segments claiming one key, refusing overlapping ports.
fn add_claim<K>(
    segments: &[Segment],
    entry: Entry<'_, K, Claim>,
    seg: &Segment,
    what: impl FnOnce() -> String,
    key: &'static str,
    item: usize,
) -> Result<(), SegmentError> {
    let index = u32::try_from(seg.index).map_err(|_| SegmentError::BadName {
        segment: seg.name.clone(),
        reason: "more than 4294967295 segments",
    })?;
    let claim = entry.or_default();
    // Within one segment, entries are deduplicated; a second entry of the
    // same segment on this key (e.g. 10.0.0.0/8 and ::ffff:10.0.0.0/104) is
    // harmless.
    if claim.contains(&index) {
        return Ok(());
    }
    if let Some(other) = claim
        .iter()
        .filter_map(|&i| segments.get(i as usize))
        .find(|o| o.ports.overlaps(&seg.ports))
    {
        return Err(SegmentError::Duplicate {
            first: other.name.clone(),
            second: seg.name.clone(),
            what: what(),
            key,
            item,
        });
    }
    claim.push(index);
    Ok(())
}

/// Positions in the spec of each compiled domain and CIDR.
type Items = (Vec<usize>, Vec<usize>);

fn compile_one(index: usize, spec: &SegmentSpec) -> Result<(Segment, Items), SegmentError> {
    let segment = || spec.name.clone();
    // The name travels on the wire (u8 length) and into logs and labels.
    let name_problem = if spec.name.is_empty() {
        Some("empty")
    } else if spec.name.len() > usize::from(u8::MAX) {
        Some("longer than 255 bytes")
    } else if spec.name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    if let Some(reason) = name_problem {
        return Err(SegmentError::BadName {
            segment: segment(),
            reason,
        });
    }
    let mut ranges = Vec::with_capacity(spec.tcp_ports.len());
    for (item, p) in spec.tcp_ports.iter().enumerate() {
        ranges.push(
            spec::parse_port_range(p).map_err(|reason| SegmentError::BadPort {
                segment: segment(),
                item,
                value: p.clone(),
                reason,
            })?,
        );
    }
    let ports =
        spec::merge_ports(ranges).ok_or_else(|| SegmentError::EmptyPorts { segment: segment() })?;
    let mut domains = Vec::with_capacity(spec.domains.len());
    let mut domain_items = Vec::with_capacity(spec.domains.len());
    for (item, d) in spec.domains.iter().enumerate() {
        let pat = spec::parse_domain(d).map_err(|reason| SegmentError::BadDomain {
            segment: segment(),
            item,
            value: d.clone(),
            reason,
        })?;
        if !domains.contains(&pat) {
            domains.push(pat);
            domain_items.push(item);
        }
    }
    let mut cidrs = Vec::with_capacity(spec.cidrs.len());
    let mut cidr_items = Vec::with_capacity(spec.cidrs.len());
    for (item, c) in spec.cidrs.iter().enumerate() {
        let cidr = spec::parse_cidr(c).map_err(|e| match e {
            CidrError::Bad(reason) => SegmentError::BadCidr {
                segment: segment(),
                item,
                value: c.clone(),
                reason,
            },
            CidrError::HostBits(net) => SegmentError::CidrHostBits {
                segment: segment(),
                item,
                value: c.clone(),
                network: net.to_string(),
            },
        })?;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
            cidr_items.push(item);
        }
    }
    let seg = Segment {
        name: spec.name.clone(),
        index,
        connector_groups: spec.connector_groups.clone(),
        domains,
        cidrs,
        ports,
    };
    Ok((seg, (domain_items, cidr_items)))
}
