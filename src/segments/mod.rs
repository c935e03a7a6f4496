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
//! [`Matcher::lookup`]. Both allocate nothing: a name is validated in one
//! pass (and lowercased into a stack buffer only if it has capitals), and
//! each key kind lives in one frozen SwissTable whose entry leads to a
//! single arena record holding the key and its claimants' port ranges
//! (`table`): a hit costs about the cache misses of a plain
//! `HashMap<String, _>`.
//!
//! Compile-time errors name the segment and the value: malformed domain or
//! CIDR (a CIDR with host bits set is refused, with the network it probably
//! meant), a bad or reversed port range, an empty port list, a duplicate
//! segment name, and two segments claiming the same exact name, wildcard or
//! prefix with overlapping ports. A segment with neither domains nor CIDRs is
//! accepted and matches nothing (`lifeboat check` can report it).

mod error;
mod fxhash;
mod name;
pub mod reference;
mod spec;
mod table;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::preamble::{Dest, Host, MAX_NAME};

pub use error::SegmentError;
use fxhash::FxBuild;
use spec::{canonical_ip, mask4, mask6, CidrError};
pub use spec::{normalize_idn, Cidr, DomainPattern, Ports};
use table::{Record, Table, TooLarge};

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

/// Segment indices claiming one key while compiling, in config order, with
/// pairwise disjoint ports.
type Claim = Vec<u32>;

/// The compiled matcher. Build once per config; [`Matcher::lookup`] is
/// allocation-free.
#[derive(Debug, Default)]
pub struct Matcher {
    segments: Vec<Segment>,
    /// Exact names; wildcard suffixes (`hr.corp.example` for
    /// `*.hr.corp.example`).
    exact: Table,
    wild: Table,
    /// Bit `n` set when some wildcard suffix is `n` bytes long: most suffixes
    /// of a query are skipped without hashing.
    wild_lens: [u64; 4],
    /// Prefixes keyed `[len, network bytes...]`, with the lengths in use,
    /// longest first.
    v4: Table,
    v4_lens: Vec<u8>,
    v6: Table,
    v6_lens: Vec<u8>,
}

/// Which table a key was found in.
#[derive(Clone, Copy)]
enum Kind {
    Exact,
    Wildcard,
    V4,
    V6,
}

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

    /// The segment for `dest` under the module's rules. Allocation-free;
    /// never panics, whatever `dest` holds (an invalid name is a miss).
    #[inline]
    pub fn lookup(&self, dest: &Dest) -> Lookup<'_> {
        let mut buf = None;
        match self.find(dest, &mut buf) {
            Some((rec, _)) => self.pick(rec, dest.port),
            None => Lookup::Miss,
        }
    }

    /// [`Matcher::lookup`], also saying which configured key decided it
    /// (`None` for a miss). Allocation-free too.
    pub fn explain(&self, dest: &Dest) -> (Lookup<'_>, Option<MatchKey<'_>>) {
        let mut buf = None;
        let Some((rec, kind)) = self.find(dest, &mut buf) else {
            return (Lookup::Miss, None);
        };
        let text = || std::str::from_utf8(rec.key).unwrap_or_default();
        let key = match kind {
            Kind::Exact => MatchKey::Exact(text()),
            Kind::Wildcard => MatchKey::Wildcard(text()),
            Kind::V4 => {
                let (len, net) = rec.key.split_first().unwrap_or((&0, &[]));
                let mut a = [0u8; 4];
                a.copy_from_slice(net.get(..4).unwrap_or(&[0; 4]));
                MatchKey::Prefix(Cidr::V4 {
                    net: u32::from_be_bytes(a),
                    len: *len,
                })
            }
            Kind::V6 => {
                let (len, net) = rec.key.split_first().unwrap_or((&0, &[]));
                let mut a = [0u8; 16];
                a.copy_from_slice(net.get(..16).unwrap_or(&[0; 16]));
                MatchKey::Prefix(Cidr::V6 {
                    net: u128::from_be_bytes(a),
                    len: *len,
                })
            }
        };
        (self.pick(rec, dest.port), Some(key))
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

    #[inline]
    fn find<'a>(
        &'a self,
        dest: &Dest,
        buf: &mut Option<[u8; MAX_NAME]>,
    ) -> Option<(Record<'a>, Kind)> {
        match &dest.host {
            Host::Name(name) => self.find_name(name, buf),
            Host::Ip(ip) => self.find_ip(*ip),
        }
    }

    #[inline]
    fn find_name<'a>(
        &'a self,
        name: &str,
        buf: &mut Option<[u8; MAX_NAME]>,
    ) -> Option<(Record<'a>, Kind)> {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        let mut dots = name::Dots::default();
        let name = name::normalize(name, buf, &mut dots)?;
        if let Some(rec) = self.exact.get(name, table::hash(name)) {
            return Some((rec, Kind::Exact));
        }
        if self.wild.is_empty() {
            return None;
        }
        // Proper suffixes starting after each dot, longest first.
        for i in dots.iter() {
            let suffix = name.get(i + 1..)?;
            if has_bit(&self.wild_lens, suffix.len()) {
                if let Some(rec) = self.wild.get(suffix, table::hash(suffix)) {
                    return Some((rec, Kind::Wildcard));
                }
            }
        }
        None
    }

    #[inline]
    fn find_ip(&self, ip: IpAddr) -> Option<(Record<'_>, Kind)> {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4_lens.iter().find_map(|&len| {
                    let key = v4_key(mask4(a, len), len);
                    self.v4.get(&key, table::hash(&key)).map(|r| (r, Kind::V4))
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6_lens.iter().find_map(|&len| {
                    let key = v6_key(mask6(a, len), len);
                    self.v6.get(&key, table::hash(&key)).map(|r| (r, Kind::V6))
                })
            }
        }
    }

    #[inline]
    fn pick(&self, rec: Record<'_>, port: u16) -> Lookup<'_> {
        match rec.pick(port) {
            Some(Ok(i)) => self
                .segments
                .get(i as usize)
                .map_or(Lookup::Miss, Lookup::Hit),
            Some(Err(i)) => self
                .segments
                .get(i as usize)
                .map_or(Lookup::Miss, Lookup::WrongPort),
            None => {
                debug_assert!(false, "malformed table record");
                Lookup::Miss
            }
        }
    }
}

fn v4_key(net: u32, len: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = len;
    k[1..].copy_from_slice(&net.to_be_bytes());
    k
}

fn v6_key(net: u128, len: u8) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = len;
    k[1..].copy_from_slice(&net.to_be_bytes());
    k
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
