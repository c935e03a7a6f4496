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
//!
//! The types live here; `compile` builds a [`Matcher`] and `lookup` reads it.

mod compile;
mod error;
mod fxhash;
mod lookup;
mod name;
pub mod reference;
mod spec;
mod table;

use std::fmt;

pub use error::SegmentError;
pub use spec::{normalize_idn, Cidr, DomainPattern, Ports};
use table::Table;

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

/// Table key of an IPv4 prefix: `[len, network bytes...]`.
fn v4_key(net: u32, len: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = len;
    k[1..].copy_from_slice(&net.to_be_bytes());
    k
}

/// Table key of an IPv6 prefix: `[len, network bytes...]`.
fn v6_key(net: u128, len: u8) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = len;
    k[1..].copy_from_slice(&net.to_be_bytes());
    k
}

/// Marks length `n` in a 256-bit set (wildcard suffix lengths).
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
