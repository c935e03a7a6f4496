//! DR application segments: compile the configured DR segments once, then
//! match each flow's destination against them without allocating.
//!
//! Pure: no I/O, no clocks. The caller (config) hands in only `dr = true`
//! segments, with their DR connector groups already resolved.
//!
//! Matching rules (DESIGN.md "Configuration"):
//! - A name destination matches only domain entries; an IP literal only
//!   CIDRs. An IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`) is treated as
//!   its IPv4 address: it matches IPv4 prefixes and never IPv6 ones. Likewise
//!   an IPv4-mapped prefix in the config is compiled to its IPv4 form.
//! - The most specific *key* wins: an exact name beats any wildcard; a longer
//!   wildcard suffix beats a shorter one (`*.a.b.c` beats `*.b.c`); a longer
//!   IP prefix beats a shorter one. `*.example.com` matches `a.example.com`
//!   and `a.b.example.com`, not `example.com`. Names are compared
//!   case-insensitively and a trailing dot is ignored.
//! - Then the port decides among the segments claiming that key (several may,
//!   with disjoint ports): the one whose ports contain it is a [`Lookup::Hit`].
//!   If none does, the answer is [`Lookup::WrongPort`] naming the first such
//!   segment in config order. There is deliberately no fallback to a less
//!   specific key: a segment owning `payroll.corp.example` on 443 does not
//!   want port 22 of that host reached through a broad `*.corp.example`
//!   segment; the operator who means that lists the port on the exact entry.
//! - Internationalised names in the config are compiled to their ASCII
//!   (punycode) form ([`normalize_idn`], UTS #46); destinations arrive in
//!   that form already (the preamble accepts ASCII names only).
//!
//! [`Matcher::explain`] also says which key decided (exact, wildcard,
//! prefix), for `lifeboat check --match`; the data path calls
//! [`Matcher::lookup`]. Both allocate nothing: names are lowercased in a
//! stack buffer, tables are hashed with Fx, and a key claimed by one segment
//! (the common case) holds its index inline.
//!
//! Compile-time errors name the segment and the value: malformed domain or
//! CIDR (a CIDR with host bits set is refused, with the network it probably
//! meant), a bad or reversed port range, an empty port list, a duplicate
//! segment name, and two segments claiming the same exact name, wildcard or
//! prefix with overlapping ports. A segment with neither domains nor CIDRs is
//! accepted and matches nothing (`lifeboat check` can report it).

mod fxhash;
pub mod reference;
mod spec;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::preamble::{check_name, Dest, Host, MAX_NAME};

use fxhash::FxBuild;
use spec::{canonical_ip, mask4, mask6, CidrError};
pub use spec::{normalize_idn, Cidr, DomainPattern, Ports};

/// One DR segment as configured (after config has filtered `dr = true` and
/// resolved its DR connector groups).
#[derive(Debug, Clone)]
pub struct SegmentSpec {
    pub name: String,
    /// `payroll.corp.example`, `*.hr.corp.example`.
    pub domains: Vec<String>,
    /// `10.20.0.0/16`, `fd00:20::/32`, or a bare address.
    pub cidrs: Vec<String>,
    /// `443`, `8000-8080`.
    pub tcp_ports: Vec<String>,
    /// DR connector groups serving this segment.
    pub connector_groups: Vec<String>,
}

/// A compiled segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    /// Position in the specs given to [`Matcher::compile`]: dense `0..n`, for
    /// indexing per-segment metric handles.
    pub index: usize,
    pub connector_groups: Vec<String>,
    /// Normalised, deduplicated, in config order.
    pub domains: Vec<DomainPattern>,
    /// Normalised (host bits clear, IPv4-mapped as IPv4), deduplicated.
    pub cidrs: Vec<Cidr>,
    pub ports: Ports,
}

/// The answer for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Hit(&'a Segment),
    /// The destination's most specific key belongs to this segment, but the
    /// port lies in none of the claiming segments' ranges.
    WrongPort(&'a Segment),
    Miss,
}

/// Why the segments could not be compiled. Every variant names the segment;
/// [`SegmentError::culprit`] gives the segment and config key for locating it.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    #[error("segment name {segment:?}: {reason}")]
    BadName {
        segment: String,
        reason: &'static str,
    },
    /// `item` is the position of `value` in the segment's `domains` (and
    /// likewise for the other per-value variants).
    #[error("segment `{segment}`: bad domain `{value}`: {reason}")]
    BadDomain {
        segment: String,
        item: usize,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}`: bad CIDR `{value}`: {reason}")]
    BadCidr {
        segment: String,
        item: usize,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}`: CIDR `{value}` has host bits set (did you mean `{network}`?)")]
    CidrHostBits {
        segment: String,
        item: usize,
        value: String,
        network: String,
    },
    #[error("segment `{segment}`: bad TCP port `{value}`: {reason}")]
    BadPort {
        segment: String,
        item: usize,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}` has no TCP ports (tcp_ports is empty)")]
    EmptyPorts { segment: String },
    #[error("segment `{segment}` is defined twice")]
    DuplicateName { segment: String },
    /// `what` is e.g. `domain payroll.corp.example`, `wildcard *.hr.example`,
    /// `prefix 10.20.0.0/16`; `key` is `domains` or `cidrs`, and `item` the
    /// position of the claiming entry in `second`'s list.
    #[error("segments `{first}` and `{second}` both claim {what} on overlapping TCP ports")]
    Duplicate {
        first: String,
        second: String,
        what: String,
        key: &'static str,
        item: usize,
    },
}

impl SegmentError {
    /// The segment at fault (for a duplicate claim, the later one) and the
    /// config key holding the bad value: `name`, `domains`, `cidrs` or
    /// `tcp_ports`.
    pub fn culprit(&self) -> (Option<&str>, &'static str) {
        match self {
            Self::BadName { segment, .. } | Self::DuplicateName { segment } => {
                (Some(segment), "name")
            }
            Self::BadDomain { segment, .. } => (Some(segment), "domains"),
            Self::BadCidr { segment, .. } | Self::CidrHostBits { segment, .. } => {
                (Some(segment), "cidrs")
            }
            Self::BadPort { segment, .. } | Self::EmptyPorts { segment } => {
                (Some(segment), "tcp_ports")
            }
            Self::Duplicate { second, key, .. } => (Some(second), key),
        }
    }

    /// The position of the bad value in the culprit's list (see
    /// [`SegmentError::culprit`]), where one value is at fault.
    pub fn item(&self) -> Option<usize> {
        match self {
            Self::BadDomain { item, .. }
            | Self::BadCidr { item, .. }
            | Self::CidrHostBits { item, .. }
            | Self::BadPort { item, .. }
            | Self::Duplicate { item, .. } => Some(*item),
            Self::BadName { .. } | Self::EmptyPorts { .. } | Self::DuplicateName { .. } => None,
        }
    }
}

/// The configured key that decided a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKey<'a> {
    /// An exact name entry.
    Exact(&'a str),
    /// A wildcard entry, holding its suffix (`hr.corp.example` for
    /// `*.hr.corp.example`).
    Wildcard(&'a str),
    /// An IP prefix.
    Prefix(Cidr),
}

impl fmt::Display for MatchKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "exact name {n}"),
            Self::Wildcard(s) => write!(f, "wildcard *.{s}"),
            Self::Prefix(c) => write!(f, "prefix {c}"),
        }
    }
}

/// Segment indices claiming one key, in config order, with pairwise disjoint
/// ports. Almost always one, held inline (no allocation per key).
#[derive(Debug, Clone)]
enum Claim {
    One(u32),
    Many(Box<[u32]>),
}

impl Claim {
    fn as_slice(&self) -> &[u32] {
        match self {
            Self::One(i) => std::slice::from_ref(i),
            Self::Many(v) => v,
        }
    }

    fn push(&mut self, i: u32) {
        let mut v = self.as_slice().to_vec();
        v.push(i);
        *self = Self::Many(v.into_boxed_slice());
    }
}

/// The compiled matcher. Build once per config; [`Matcher::lookup`] is
/// allocation-free.
#[derive(Debug, Default)]
pub struct Matcher {
    segments: Vec<Segment>,
    exact: HashMap<Box<str>, Claim, FxBuild>,
    wild: HashMap<Box<str>, Claim, FxBuild>,
    /// Bit `n` set when some wildcard suffix is `n` bytes long: most suffixes
    /// of a query are skipped without hashing.
    wild_lens: [u64; 4],
    /// Per prefix length, longest first.
    v4: Vec<(u8, HashMap<u32, Claim, FxBuild>)>,
    v6: Vec<(u8, HashMap<u128, Claim, FxBuild>)>,
}

impl Matcher {
    /// Validates and compiles `specs`; [`Segment::index`] is the position in
    /// `specs`. Linear in the number of entries (hash tables throughout).
    pub fn compile(specs: &[SegmentSpec]) -> Result<Self, SegmentError> {
        let mut m = Self {
            segments: Vec::with_capacity(specs.len()),
            ..Self::default()
        };
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
            m.segments.push(seg);
            items.push(seg_items);
        }
        let mut v4: HashMap<u8, HashMap<u32, Claim, FxBuild>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, Claim, FxBuild>> = HashMap::new();
        let segments = &m.segments;
        for (seg, (domain_items, cidr_items)) in segments.iter().zip(&items) {
            for (d, &item) in seg.domains.iter().zip(domain_items) {
                let (map, key, kind) = match d {
                    DomainPattern::Exact(n) => (&mut m.exact, n, "domain"),
                    DomainPattern::Wildcard(s) => {
                        set_bit(&mut m.wild_lens, s.len());
                        (&mut m.wild, s, "wildcard")
                    }
                };
                let entry = map.entry(key.as_str().into());
                add_claim(
                    segments,
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
                        let entry = v4.entry(len).or_default().entry(net);
                        add_claim(segments, entry, seg, what, "cidrs", item)?;
                    }
                    Cidr::V6 { net, len } => {
                        let entry = v6.entry(len).or_default().entry(net);
                        add_claim(segments, entry, seg, what, "cidrs", item)?;
                    }
                }
            }
        }
        m.exact.shrink_to_fit();
        m.wild.shrink_to_fit();
        m.v4 = v4.into_iter().collect();
        m.v4.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        m.v6 = v6.into_iter().collect();
        m.v6.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        Ok(m)
    }

    /// The segment for `dest` under the module's rules. Allocation-free;
    /// never panics, whatever `dest` holds (an invalid name is a miss).
    pub fn lookup(&self, dest: &Dest) -> Lookup<'_> {
        self.explain(dest).0
    }

    /// [`Matcher::lookup`], also saying which configured key decided it
    /// (`None` for a miss). Allocation-free too.
    pub fn explain(&self, dest: &Dest) -> (Lookup<'_>, Option<MatchKey<'_>>) {
        let found = match &dest.host {
            Host::Name(name) => self.lookup_name(name),
            Host::Ip(ip) => self.lookup_ip(*ip),
        };
        match found {
            Some((claim, key)) => (self.pick(claim, dest.port), Some(key)),
            None => (Lookup::Miss, None),
        }
    }

    /// Every compiled segment, indexed by [`Segment::index`].
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segment called `name`, if any. A linear scan: not for the data
    /// path.
    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    fn lookup_name(&self, name: &str) -> Option<(&Claim, MatchKey<'_>)> {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        let mut buf = [0u8; MAX_NAME];
        let lower = buf.get_mut(..name.len())?;
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        check_name(lower).ok()?;
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some((k, c)) = self.exact.get_key_value(lower) {
            return Some((c, MatchKey::Exact(k)));
        }
        if self.wild.is_empty() {
            return None;
        }
        // Proper suffixes starting after each dot, longest first.
        for (i, b) in lower.bytes().enumerate() {
            if b != b'.' {
                continue;
            }
            let suffix = lower.get(i + 1..)?;
            if has_bit(&self.wild_lens, suffix.len()) {
                if let Some((k, c)) = self.wild.get_key_value(suffix) {
                    return Some((c, MatchKey::Wildcard(k)));
                }
            }
        }
        None
    }

    fn lookup_ip(&self, ip: IpAddr) -> Option<(&Claim, MatchKey<'_>)> {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, map)| {
                    let net = mask4(a, *len);
                    map.get(&net)
                        .map(|c| (c, MatchKey::Prefix(Cidr::V4 { net, len: *len })))
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, map)| {
                    let net = mask6(a, *len);
                    map.get(&net)
                        .map(|c| (c, MatchKey::Prefix(Cidr::V6 { net, len: *len })))
                })
            }
        }
    }

    fn pick(&self, claim: &Claim, port: u16) -> Lookup<'_> {
        let mut first = None;
        for seg in claim
            .as_slice()
            .iter()
            .filter_map(|&i| self.segments.get(i as usize))
        {
            if seg.ports.contains(port) {
                return Lookup::Hit(seg);
            }
            first.get_or_insert(seg);
        }
        debug_assert!(first.is_some(), "claims are never empty");
        first.map_or(Lookup::Miss, Lookup::WrongPort)
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
    let mut e = match entry {
        Entry::Vacant(v) => {
            v.insert(Claim::One(index));
            return Ok(());
        }
        Entry::Occupied(e) => e,
    };
    let claim = e.get_mut();
    // Within one segment, entries are deduplicated; a second entry of the
    // same segment on this key (e.g. 10.0.0.0/8 and ::ffff:10.0.0.0/104) is
    // harmless.
    if claim.as_slice().contains(&index) {
        return Ok(());
    }
    if let Some(other) = claim
        .as_slice()
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

fn set_bit(bits: &mut [u64; 4], n: usize) {
    if let Some(w) = bits.get_mut(n / 64) {
        *w |= 1 << (n % 64);
    }
}

fn has_bit(bits: &[u64; 4], n: usize) -> bool {
    bits.get(n / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
}

#[cfg(test)]
mod tests;
