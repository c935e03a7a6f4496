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

use std::collections::HashMap;
use std::net::IpAddr;

use crate::preamble::{check_name, Dest, Host, MAX_NAME};

use fxhash::FxBuild;
use spec::{canonical_ip, mask4, mask6, CidrError};
pub use spec::{Cidr, DomainPattern, Ports};

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
    #[error("segment `{segment}`: bad domain `{value}`: {reason}")]
    BadDomain {
        segment: String,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}`: bad CIDR `{value}`: {reason}")]
    BadCidr {
        segment: String,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}`: CIDR `{value}` has host bits set (did you mean `{network}`?)")]
    CidrHostBits {
        segment: String,
        value: String,
        network: String,
    },
    #[error("segment `{segment}`: bad TCP port `{value}`: {reason}")]
    BadPort {
        segment: String,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}` has no TCP ports (tcp_ports is empty)")]
    EmptyPorts { segment: String },
    #[error("segment `{segment}` is defined twice")]
    DuplicateName { segment: String },
    /// `what` is e.g. `domain payroll.corp.example`, `wildcard *.hr.example`,
    /// `prefix 10.20.0.0/16`; `key` is `domains` or `cidrs`.
    #[error("segments `{first}` and `{second}` both claim {what} on overlapping TCP ports")]
    Duplicate {
        first: String,
        second: String,
        what: String,
        key: &'static str,
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
}

/// Segment indices claiming one key, in config order, with pairwise disjoint
/// ports. Almost always one.
type Claim = Vec<usize>;

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
    /// `specs`.
    pub fn compile(specs: &[SegmentSpec]) -> Result<Self, SegmentError> {
        let mut m = Self::default();
        for (index, spec) in specs.iter().enumerate() {
            let seg = compile_one(index, spec)?;
            if m.segments.iter().any(|s| s.name == seg.name) {
                return Err(SegmentError::DuplicateName { segment: seg.name });
            }
            m.segments.push(seg);
        }
        let mut v4: HashMap<u8, HashMap<u32, Claim, FxBuild>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, Claim, FxBuild>> = HashMap::new();
        let segments = &m.segments;
        for seg in segments {
            for d in &seg.domains {
                let (map, key, kind) = match d {
                    DomainPattern::Exact(n) => (&mut m.exact, n, "domain"),
                    DomainPattern::Wildcard(s) => {
                        set_bit(&mut m.wild_lens, s.len());
                        (&mut m.wild, s, "wildcard")
                    }
                };
                let claim = map.entry(key.as_str().into()).or_default();
                add_claim(segments, claim, seg, || format!("{kind} {d}"), "domains")?;
            }
            for c in &seg.cidrs {
                let what = || format!("prefix {c}");
                match *c {
                    Cidr::V4 { net, len } => {
                        let claim = v4.entry(len).or_default().entry(net).or_default();
                        add_claim(segments, claim, seg, what, "cidrs")?;
                    }
                    Cidr::V6 { net, len } => {
                        let claim = v6.entry(len).or_default().entry(net).or_default();
                        add_claim(segments, claim, seg, what, "cidrs")?;
                    }
                }
            }
        }
        m.v4 = v4.into_iter().collect();
        m.v4.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        m.v6 = v6.into_iter().collect();
        m.v6.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        Ok(m)
    }

    /// The segment for `dest` under the module's rules. Allocation-free;
    /// never panics, whatever `dest` holds (an invalid name is a miss).
    pub fn lookup(&self, dest: &Dest) -> Lookup<'_> {
        let claim = match &dest.host {
            Host::Name(name) => self.lookup_name(name),
            Host::Ip(ip) => self.lookup_ip(*ip),
        };
        match claim {
            Some(c) => self.pick(c, dest.port),
            None => Lookup::Miss,
        }
    }

    /// Every compiled segment, indexed by [`Segment::index`].
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segment called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    fn lookup_name(&self, name: &str) -> Option<&Claim> {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        let mut buf = [0u8; MAX_NAME];
        let lower = buf.get_mut(..name.len())?;
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        check_name(lower).ok()?;
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(c) = self.exact.get(lower) {
            return Some(c);
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
                if let Some(c) = self.wild.get(suffix) {
                    return Some(c);
                }
            }
        }
        None
    }

    fn lookup_ip(&self, ip: IpAddr) -> Option<&Claim> {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask6(a, *len)))
            }
        }
    }

    fn pick(&self, claim: &Claim, port: u16) -> Lookup<'_> {
        let mut first = None;
        for seg in claim.iter().filter_map(|&i| self.segments.get(i)) {
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
fn add_claim(
    segments: &[Segment],
    claim: &mut Claim,
    seg: &Segment,
    what: impl FnOnce() -> String,
    key: &'static str,
) -> Result<(), SegmentError> {
    if claim.contains(&seg.index) {
        return Ok(());
    }
    if let Some(other) = claim
        .iter()
        .filter_map(|&i| segments.get(i))
        .find(|o| o.ports.overlaps(&seg.ports))
    {
        return Err(SegmentError::Duplicate {
            first: other.name.clone(),
            second: seg.name.clone(),
            what: what(),
            key,
        });
    }
    claim.push(seg.index);
    Ok(())
}

fn compile_one(index: usize, spec: &SegmentSpec) -> Result<Segment, SegmentError> {
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
    for p in &spec.tcp_ports {
        ranges.push(
            spec::parse_port_range(p).map_err(|reason| SegmentError::BadPort {
                segment: segment(),
                value: p.clone(),
                reason,
            })?,
        );
    }
    let ports =
        spec::merge_ports(ranges).ok_or_else(|| SegmentError::EmptyPorts { segment: segment() })?;
    let mut domains = Vec::with_capacity(spec.domains.len());
    for d in &spec.domains {
        let pat = spec::parse_domain(d).map_err(|reason| SegmentError::BadDomain {
            segment: segment(),
            value: d.clone(),
            reason,
        })?;
        if !domains.contains(&pat) {
            domains.push(pat);
        }
    }
    let mut cidrs = Vec::with_capacity(spec.cidrs.len());
    for c in &spec.cidrs {
        let cidr = spec::parse_cidr(c).map_err(|e| match e {
            CidrError::Bad(reason) => SegmentError::BadCidr {
                segment: segment(),
                value: c.clone(),
                reason,
            },
            CidrError::HostBits(net) => SegmentError::CidrHostBits {
                segment: segment(),
                value: c.clone(),
                network: net.to_string(),
            },
        })?;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(Segment {
        name: spec.name.clone(),
        index,
        connector_groups: spec.connector_groups.clone(),
        domains,
        cidrs,
        ports,
    })
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
