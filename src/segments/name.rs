//! A destination name made ready for the tables in one pass: validated by
//! exactly the rules of [`check_name`](crate::preamble::check_name) (the
//! reference matcher uses that), ASCII-lowercased only when it has an upper
//! case letter (names from the preamble are lowercase already).

use crate::preamble::{MAX_LABEL, MAX_NAME};

const INVALID: u8 = 0;
const LOWER: u8 = 1;
const UPPER: u8 = 2;
const DIGIT: u8 = 3;
const HYPHEN: u8 = 4;
const OTHER: u8 = 5; // '_'
const DOT: u8 = 6;

const CLASS: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_lowercase() {
            LOWER
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_digit() {
            DIGIT
        } else if c == b'-' {
            HYPHEN
        } else if c == b'_' {
            OTHER
        } else if c == b'.' {
            DOT
        } else {
            INVALID
        };
        b += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    CLASS.get(usize::from(b)).copied().unwrap_or(INVALID)
}

/// Whether `name[start..end]` is a valid label.
#[inline]
fn label_ok(name: &[u8], start: usize, end: usize) -> bool {
    let len = end.saturating_sub(start);
    (1..=MAX_LABEL).contains(&len)
        && name.get(start).is_some_and(|&b| b != b'-')
        && end
            .checked_sub(1)
            .and_then(|i| name.get(i))
            .is_some_and(|&b| b != b'-')
}

/// Positions of the dots of a name (at most [`MAX_NAME`] bytes), as bits.
#[derive(Default)]
pub(super) struct Dots([u64; 4]);

impl Dots {
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// The positions, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(k, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    64 * k + bit
                })
            })
        })
    }
}

/// `name` (trailing dot already removed) validated and lowercased, in
/// `name` itself or in `buf`, and where its dots are; `None` when
/// `check_name` would refuse it. `buf` starts `None` (no 253-byte fill on
/// the common, lowercase path).
#[inline]
pub(super) fn normalize<'b>(
    name: &'b [u8],
    buf: &'b mut Option<[u8; MAX_NAME]>,
    dots: &mut Dots,
) -> Option<&'b [u8]> {
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let mut upper = false;
    let mut start = 0;
    for (i, &b) in name.iter().enumerate() {
        match class(b) {
            INVALID => return None,
            UPPER => upper = true,
            DOT => {
                if !label_ok(name, start, i) {
                    return None;
                }
                dots.set(i);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !label_ok(name, start, name.len()) {
        return None;
    }
    let last = name.get(start..)?;
    let hex = last.len() > 2
        && last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case(b"0x"))
        && last
            .get(2..)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
    if hex || last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !upper {
        return Some(name);
    }
    let out = buf.insert([0u8; MAX_NAME]).get_mut(..name.len())?;
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::preamble::check_name;

    fn agrees(name: &[u8]) {
        let mut buf = None;
        let mut dots = Dots::default();
        let got = normalize(name, &mut buf, &mut dots).map(<[u8]>::to_vec);
        if got.is_some() {
            let want: Vec<usize> = (0..name.len()).filter(|&i| name[i] == b'.').collect();
            assert_eq!(dots.iter().collect::<Vec<_>>(), want);
        }
        let want = check_name(name).ok().map(|()| name.to_ascii_lowercase());
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(name));
    }

    #[test]
    fn edges_agree_with_check_name() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}b", "a.".repeat(126));
        for n in [
            "",
            ".",
            "a",
            "A.B",
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a-.b",
            "a.-b",
            "a_b.c",
            "a b",
            "x.1",
            "x.0x1f",
            "x.0X",
            "x.0xg",
            "1a.b2",
            "123",
            "a.b.c.d.e",
            "\u{e9}.x",
            &long_label,
            &long_name,
            "a.0x",
            "a.0x1",
            "Ab-Cd.EF",
        ] {
            agrees(n.as_bytes());
        }
    }

    proptest! {
        #[test]
        fn agrees_with_check_name(name in "[a-zA-Z0-9._x -]{0,80}") {
            agrees(name.as_bytes());
        }

        #[test]
        fn agrees_on_bytes(name in prop::collection::vec(any::<u8>(), 0..300)) {
            agrees(&name);
        }
    }
}
