//! [`Matcher::lookup`] and [`Matcher::explain`]: the most specific key
//! (exact name, longest wildcard suffix, longest prefix), then the port.
//! Allocation-free.

use std::net::IpAddr;

use crate::preamble::{Dest, Host, MAX_NAME};

use super::spec::{canonical_ip, mask4, mask6};
use super::table::{self, Record};
use super::{has_bit, name, v4_key, v6_key, Cidr, Kind, Lookup, MatchKey, Matcher, Segment};

/// Where a capitalised name is lowercased, on the stack.
type NameBuf = Option<[u8; MAX_NAME]>;

/// The table record of the key that decided, and the table it is in.
type Found<'a> = Option<(Record<'a>, Kind)>;

impl Matcher {
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
                let (len, net) = split_key(rec.key);
                MatchKey::Prefix(Cidr::V4 {
                    net: u32::from_be_bytes(net),
                    len,
                })
            }
            Kind::V6 => {
                let (len, net) = split_key(rec.key);
                MatchKey::Prefix(Cidr::V6 {
                    net: u128::from_be_bytes(net),
                    len,
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
    fn find<'a>(&'a self, dest: &Dest, buf: &mut NameBuf) -> Found<'a> {
        match &dest.host {
            Host::Name(name) => self.find_name(name, buf),
            Host::Ip(ip) => self.find_ip(*ip),
        }
    }

    #[inline]
    fn find_name<'a>(&'a self, name: &str, buf: &mut NameBuf) -> Found<'a> {
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
    fn find_ip(&self, ip: IpAddr) -> Found<'_> {
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

/// The prefix length and network bytes of a prefix table key
/// (`[len, network bytes...]`, see `v4_key`); zeros where it is short.
fn split_key<const N: usize>(key: &[u8]) -> (u8, [u8; N]) {
    let (len, net) = key.split_first().unwrap_or((&0, &[]));
    let mut a = [0u8; N];
    if let Some(bytes) = net.get(..N) {
        a.copy_from_slice(bytes);
    }
    (*len, a)
}
