//! Parsing of one segment's configured values: domain patterns, CIDRs and
//! TCP port ranges, into their compiled, normalised forms.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::preamble::normalize_name;

/// A domain entry of a segment, normalised (lowercase, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// `payroll.corp.example`: that name only.
    Exact(String),
    /// `*.hr.corp.example`, holding `hr.corp.example`: every name with at
    /// least one more label in front (`a.hr…`, `a.b.hr…`), not the suffix
    /// itself.
    Wildcard(String),
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => f.write_str(n),
            Self::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// An IP prefix with no host bits set. IPv4-mapped IPv6 prefixes
/// (`::ffff:a.b.c.d/96+n`) are stored as their IPv4 form (`a.b.c.d/n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

impl Cidr {
    /// Whether `ip` lies in this prefix. An IPv4-mapped IPv6 address is
    /// treated as its IPv4 address (and so never matches an IPv6 prefix).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, canonical_ip(ip)) {
            (Self::V4 { net, len }, IpAddr::V4(a)) => mask4(u32::from(a), len) == net,
            (Self::V6 { net, len }, IpAddr::V6(a)) => mask6(u128::from(a), len) == net,
            _ => false,
        }
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        match *self {
            Self::V4 { len, .. } | Self::V6 { len, .. } => len,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4 { net, len } => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Self::V6 { net, len } => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

/// A segment's TCP ports: sorted, merged (overlapping or touching ranges
/// joined), non-empty inclusive ranges within 1..=65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    ranges: Vec<(u16, u16)>,
}

impl Ports {
    /// Binary search over the merged ranges; allocation-free.
    pub fn contains(&self, port: u16) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < port);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= port)
    }

    /// The merged inclusive ranges, ascending.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Whether some port lies in both sets.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (mut a, mut b) = (
            self.ranges.iter().peekable(),
            other.ranges.iter().peekable(),
        );
        while let (Some(&&(alo, ahi)), Some(&&(blo, bhi))) = (a.peek(), b.peek()) {
            if alo <= bhi && blo <= ahi {
                return true;
            }
            if ahi < bhi {
                a.next();
            } else {
                b.next();
            }
        }
        false
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Parses `payroll.corp.example` or `*.hr.corp.example` (case-insensitive,
/// trailing dot ignored). `*` is only allowed as the whole leftmost label,
/// and a bare `*` is refused. A name with non-ASCII characters
/// (`bücher.example`, `*.例え.jp`) is converted to its ASCII (punycode) form
/// by UTS #46 (`xn--bcher-kva.example`): destinations arrive in that form.
pub(super) fn parse_domain(s: &str) -> Result<DomainPattern, &'static str> {
    if let Some(rest) = s.strip_prefix("*.") {
        if rest.contains('*') {
            return Err("'*' is allowed only as the whole leftmost label");
        }
        return normalize_idn(rest).map(DomainPattern::Wildcard);
    }
    if s.contains('*') {
        return Err("'*' is allowed only as the whole leftmost label, as in *.example.com");
    }
    if s.starts_with('.') {
        return Err("leading dot; write *.example.com to match subdomains");
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err("an IP address; list it under cidrs");
    }
    normalize_idn(s).map(DomainPattern::Exact)
}

/// [`normalize_name`], after converting a non-ASCII name to punycode.
pub fn normalize_idn(s: &str) -> Result<String, &'static str> {
    if s.is_ascii() {
        return normalize_name(s);
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.ends_with('.') || s.starts_with('.') || s.contains("..") {
        return Err("empty label");
    }
    let ascii =
        idna::domain_to_ascii(s).map_err(|_| "not a valid internationalised domain name")?;
    if ascii.is_empty() {
        return Err("not a valid internationalised domain name");
    }
    normalize_name(&ascii)
}

/// Why a CIDR was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CidrError {
    Bad(&'static str),
    /// Host bits set; carries the network the operator probably meant.
    HostBits(Cidr),
}

/// Parses `10.20.0.0/16`, `fd00:20::/32`, or a bare address (a /32 or
/// /128). Host bits must be clear.
pub(super) fn parse_cidr(s: &str) -> Result<Cidr, CidrError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| CidrError::Bad("not an IP address or prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
            match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(CidrError::Bad("prefix length out of range")),
            }
        }
        Some(_) => return Err(CidrError::Bad("prefix length is not a number")),
    };
    let (raw, masked) = match ip {
        IpAddr::V4(a) => {
            let raw = u32::from(a);
            (
                Cidr::V4 { net: raw, len },
                Cidr::V4 {
                    net: mask4(raw, len),
                    len,
                },
            )
        }
        IpAddr::V6(a) => match (a.to_ipv4_mapped(), len.checked_sub(96)) {
            (Some(v4), Some(len)) => {
                let raw = u32::from(v4);
                (
                    Cidr::V4 { net: raw, len },
                    Cidr::V4 {
                        net: mask4(raw, len),
                        len,
                    },
                )
            }
            _ => {
                let raw = u128::from(a);
                (
                    Cidr::V6 { net: raw, len },
                    Cidr::V6 {
                        net: mask6(raw, len),
                        len,
                    },
                )
            }
        },
    };
    if raw != masked {
        return Err(CidrError::HostBits(masked));
    }
    Ok(masked)
}

/// Parses one entry of `tcp_ports`: `443` or `8000-8080` (inclusive; spaces
/// around the parts tolerated).
pub(super) fn parse_port_range(s: &str) -> Result<(u16, u16), &'static str> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (parse_port(lo)?, parse_port(hi)?),
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err("range is reversed");
    }
    Ok((lo, hi))
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a port number or range");
    }
    match s.parse::<u32>() {
        Ok(0) => Err("port 0 is not a TCP port"),
        Ok(p) => u16::try_from(p).map_err(|_| "port above 65535"),
        Err(_) => Err("port above 65535"),
    }
}

/// Sorts and merges ranges into a [`Ports`]; `None` when empty.
pub(super) fn merge_ports(mut ranges: Vec<(u16, u16)>) -> Option<Ports> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    (!merged.is_empty()).then_some(Ports { ranges: merged })
}

/// IPv4-mapped IPv6 addresses become IPv4; everything else is unchanged.
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

pub(super) fn mask4(a: u32, len: u8) -> u32 {
    a & u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

pub(super) fn mask6(a: u128, len: u8) -> u128 {
    a & u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}
