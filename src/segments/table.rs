//! The frozen lookup tables of a compiled [`Matcher`](super::Matcher): one
//! hash table per key kind, built once, read without allocating and with as
//! few cache misses as a plain `HashMap<String, _>`.
//!
//! Layout: a `hashbrown::HashTable` of `u32` offsets (SwissTable control
//! bytes: a miss rarely leaves them) into one byte `arena` where each key's
//! record is
//!
//! ```text
//! key_len u8, key bytes, claimants u16 LE, then per claimant (config order):
//!   segment u32 LE, ranges u16 LE, ranges x (lo u16 LE, hi u16 LE)
//! ```
//!
//! so a hit touches one place in the arena holding the key and the port
//! ranges that decide it: no per-key allocation, no pointer to a segment to
//! chase before the answer is known. Every read is bounds-checked (`get`);
//! a malformed arena (a bug) reads as a miss.

use hashbrown::HashTable;

/// Hashes a byte string, Fx-style, a word at a time, finished as
/// rustc-hash 2 does: the multiply mixes upwards, so the well-mixed top bits
/// are rotated down to where the table takes its bucket index.
#[inline]
pub(super) fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(5) ^ word(c)).wrapping_mul(K);
    }
    let rest = chunks.remainder().len();
    if rest > 0 {
        // The last 8 bytes, overlapping the words already taken (no
        // variable-length copy); short keys a byte at a time.
        let tail = match bytes.len().checked_sub(8).and_then(|at| bytes.get(at..)) {
            Some(last) => word(last),
            None => bytes
                .iter()
                .rev()
                .fold(0u64, |w, &b| (w << 8) | u64::from(b)),
        };
        h = (h.rotate_left(5) ^ tail).wrapping_mul(K);
    }
    h.rotate_left(26)
}

/// A frozen table from byte keys to claimant segments and their ports.
#[derive(Default)]
pub(super) struct Table {
    index: HashTable<u32>,
    arena: Box<[u8]>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("keys", &self.index.len())
            .field("arena_bytes", &self.arena.len())
            .finish()
    }
}

/// One claimant while building: its segment and its merged port ranges.
pub(super) type Claimant<'a> = (u32, &'a [(u16, u16)]);

/// Why a table could not be built (only at absurd sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooLarge;

/// The key stored at `off`, and the rest of its record.
fn key_at(arena: &[u8], off: u32) -> Option<(&[u8], &[u8])> {
    let rec = arena.get(off as usize..)?;
    let (&n, rest) = rec.split_first()?;
    let n = usize::from(n);
    Some((rest.get(..n)?, rest.get(n..)?))
}

impl Table {
    /// Builds the table from `(key, claimants)` pairs; keys are distinct and
    /// at most 255 bytes, claimants non-empty.
    pub(super) fn build<'a, I, C>(entries: I) -> Result<Self, TooLarge>
    where
        I: ExactSizeIterator<Item = (&'a [u8], C)>,
        C: IntoIterator<Item = Claimant<'a>>,
    {
        let len = entries.len();
        let mut offsets = Vec::with_capacity(len);
        let mut arena = Vec::with_capacity(len * 32);
        for (key, claimants) in entries {
            offsets.push((u32::try_from(arena.len()).map_err(|_| TooLarge)?, hash(key)));
            arena.push(u8::try_from(key.len()).map_err(|_| TooLarge)?);
            arena.extend_from_slice(key);
            let count_at = arena.len();
            arena.extend_from_slice(&[0, 0]);
            let mut count = 0u16;
            for (seg, ranges) in claimants {
                count = count.checked_add(1).ok_or(TooLarge)?;
                arena.extend_from_slice(&seg.to_le_bytes());
                let n = u16::try_from(ranges.len()).map_err(|_| TooLarge)?;
                arena.extend_from_slice(&n.to_le_bytes());
                for &(lo, hi) in ranges {
                    arena.extend_from_slice(&lo.to_le_bytes());
                    arena.extend_from_slice(&hi.to_le_bytes());
                }
            }
            arena
                .get_mut(count_at..count_at + 2)
                .ok_or(TooLarge)?
                .copy_from_slice(&count.to_le_bytes());
        }
        let mut index = HashTable::with_capacity(len);
        let rehash = |&off: &u32| key_at(&arena, off).map_or(0, |(k, _)| hash(k));
        for (off, h) in offsets {
            index.insert_unique(h, off, rehash);
        }
        Ok(Self {
            index,
            arena: arena.into_boxed_slice(),
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The record of `key`, whose [`hash`] is `h`.
    #[inline]
    pub(super) fn get(&self, key: &[u8], h: u64) -> Option<Record<'_>> {
        let arena = &self.arena;
        let &off = self
            .index
            .find(h, |&off| key_at(arena, off).is_some_and(|(k, _)| k == key))?;
        let (key, claims) = key_at(arena, off)?;
        Some(Record { key, claims })
    }
}

/// A key found in a [`Table`], with its claimants.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    pub(super) key: &'a [u8],
    claims: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(s);
    Some(u32::from_le_bytes(w))
}

impl Record<'_> {
    /// The claimant whose ports hold `port` (`Ok`), or else the first
    /// claimant (`Err`). `None` only for a malformed record.
    #[inline]
    pub(super) fn pick(&self, port: u16) -> Option<Result<u32, u32>> {
        let b = self.claims;
        let count = u16_at(b, 0)?;
        let mut at = 2;
        let mut first = None;
        for _ in 0..count {
            let seg = u32_at(b, at)?;
            let n = usize::from(u16_at(b, at + 4)?);
            let ranges = b.get(at + 6..at + 6 + 4 * n)?;
            // Merged, ascending ranges: the first whose `hi` reaches `port`
            // decides.
            let k = partition_point(n, |k| u16_at(ranges, 4 * k + 2).is_some_and(|hi| hi < port));
            if k < n && u16_at(ranges, 4 * k).is_some_and(|lo| lo <= port) {
                return Some(Ok(seg));
            }
            first.get_or_insert(seg);
            at += 6 + 4 * n;
        }
        first.map(Err)
    }
}

/// The first index in `0..n` for which `pred` is false (`pred` true on a
/// prefix).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_get() {
        let r1: &[(u16, u16)] = &[(22, 22), (443, 443), (8000, 8080)];
        let r2: &[(u16, u16)] = &[(80, 80)];
        let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
        let t = Table::build(keys.iter().enumerate().map(|(i, k)| {
            let claims: Vec<Claimant<'_>> = if i % 2 == 0 {
                vec![(i as u32, r1)]
            } else {
                vec![(i as u32, r1), (7, r2)]
            };
            (k.as_slice(), claims)
        }))
        .unwrap();
        for (i, k) in keys.iter().enumerate() {
            let r = t.get(k, hash(k)).unwrap();
            assert_eq!(r.key, k.as_slice());
            assert_eq!(r.pick(443), Some(Ok(i as u32)));
            assert_eq!(r.pick(8080), Some(Ok(i as u32)));
            assert_eq!(r.pick(8081), Some(Err(i as u32)));
            assert_eq!(
                r.pick(80),
                Some(if i % 2 == 0 { Err(i as u32) } else { Ok(7) })
            );
        }
        assert!(t.get(b"nope", hash(b"nope")).is_none());
        let empty = Table::default();
        assert!(empty.is_empty() && empty.get(b"k1", hash(b"k1")).is_none());
        assert_ne!(hash(b"abcdefgh"), hash(b"abcdefgh\0"));
    }
}
