//! The DR trigger record: `v=1; b=on|test|off; k=zpa|all` plus optional
//! `t=` (start), `x=` (end) and `s=` (Ed25519 signature, last tag). Pure:
//! text in, [`Record`] out; the time checks take `now` as an argument, the
//! signature check takes the key. [`encode`] writes what [`parse`] reads.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::DrMode;

/// A parsed trigger record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub mode: DrMode,
    /// `k=`: whether the record applies to us (`zpa` or `all`).
    pub applies: bool,
    /// `t=`: unix seconds before which the record does not apply.
    pub start: Option<u64>,
    /// `x=`: unix seconds after which the mode is `off`.
    pub end: Option<u64>,
    /// `s=`: the signature, still base64, and the signed prefix of the text.
    pub signature: Option<(String, String)>,
}

/// Why a record text was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error("no `v=1` tag")]
    NoVersion,
    #[error("unsupported version `v={0}`")]
    Version(String),
    #[error("no `b=` tag")]
    NoMode,
    #[error("`b={0}` is not on, test or off")]
    BadMode(String),
    #[error("`{0}=` is not a unix time")]
    BadTime(&'static str),
    #[error("`s=` must be the last tag")]
    SignatureNotLast,
    #[error("tag `{0}` appears twice")]
    Duplicate(String),
}

/// Why a record's `s=` does not count.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the record carries no `s=` signature")]
    Missing,
    #[error("`s=` is not the base64 of a 64-byte Ed25519 signature")]
    Encoding,
    #[error("the signature does not verify with the configured key")]
    Invalid,
}

/// `k=`: which products a record we write applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Zpa,
    All,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zpa => "zpa",
            Self::All => "all",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zpa" => Ok(Self::Zpa),
            "all" => Ok(Self::All),
            other => Err(format!("`{other}` is not a record kind (zpa or all)")),
        }
    }
}

/// The fields of a record to write with [`encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub mode: DrMode,
    pub kind: Kind,
    pub start: Option<u64>,
    pub end: Option<u64>,
}

/// Record text for `spec`, tags separated by `"; "`. With `key`, a last
/// `s=` tag signs every byte before it (the guide's generator's layout).
pub fn encode(spec: &Spec, key: Option<&SigningKey>) -> String {
    let mut text = format!("v=1; b={}; k={}", spec.mode, spec.kind.as_str());
    if let Some(t) = spec.start {
        text.push_str(&format!("; t={t}"));
    }
    if let Some(x) = spec.end {
        text.push_str(&format!("; x={x}"));
    }
    if let Some(key) = key {
        text.push_str("; ");
        let sig = key.sign(text.as_bytes());
        text.push_str("s=");
        text.push_str(&BASE64.encode(sig.to_bytes()));
    }
    text
}

/// Parse record text (a TXT record's character-strings already joined).
pub fn parse(text: &str) -> Result<Record, RecordError> {
    let mut version = None;
    let mut mode = None;
    let mut kind = None;
    let mut start = None;
    let mut end = None;
    let mut signature = None;
    // Known tags seen so far, compared case-insensitively (`V=1; v=1` repeats `v`).
    let mut seen: Vec<String> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let trimmed = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
        if trimmed.is_empty() {
            break;
        }
        let tag_start = text.len() - trimmed.len();
        let len = trimmed
            .find(|c: char| c == ';' || c.is_whitespace())
            .unwrap_or(trimmed.len());
        let tag = &trimmed[..len];
        rest = &trimmed[len..];
        if signature.is_some() {
            return Err(RecordError::SignatureNotLast);
        }
        let Some((k, v)) = tag.split_once('=') else {
            continue; // not a tag; ignored like unknown tags
        };
        let k_lower = k.to_ascii_lowercase();
        if ["v", "b", "k", "t", "x", "s"].contains(&k_lower.as_str()) {
            if seen.contains(&k_lower) {
                return Err(RecordError::Duplicate(k_lower));
            }
            seen.push(k_lower.clone());
        }
        match k_lower.as_str() {
            "v" => version = Some(v),
            "b" => mode = Some(v),
            "k" => kind = Some(v),
            "t" => start = Some(v.parse().map_err(|_| RecordError::BadTime("t"))?),
            "x" => end = Some(v.parse().map_err(|_| RecordError::BadTime("x"))?),
            "s" => signature = Some((v.to_string(), text[..tag_start].to_string())),
            _ => {}
        }
    }
    match version {
        None => return Err(RecordError::NoVersion),
        Some("1") => {}
        Some(v) => return Err(RecordError::Version(v.to_string())),
    }
    let mode = match mode {
        None => return Err(RecordError::NoMode),
        Some(m) => m
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| RecordError::BadMode(m.to_string()))?,
    };
    let applies =
        kind.is_none_or(|k| k.eq_ignore_ascii_case("zpa") || k.eq_ignore_ascii_case("all"));
    Ok(Record {
        mode,
        applies,
        start,
        end,
        signature,
    })
}

impl Record {
    /// The mode this record asks for at `now` (unix seconds): `None` before `t`
    /// (the record does not apply yet), `off` after `x`.
    pub fn mode_at(&self, now: u64) -> Option<DrMode> {
        if !self.applies {
            return None;
        }
        if self.start.is_some_and(|t| now < t) {
            return None;
        }
        if self.end.is_some_and(|x| now >= x) {
            return Some(DrMode::Off);
        }
        Some(self.mode)
    }

    /// Check `s=` against `key` over the exact bytes before the tag.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), SignatureError> {
        let (sig, signed) = self.signature.as_ref().ok_or(SignatureError::Missing)?;
        let raw = BASE64.decode(sig).map_err(|_| SignatureError::Encoding)?;
        let bytes: [u8; 64] = raw.try_into().map_err(|_| SignatureError::Encoding)?;
        key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_records() {
        let r = parse("v=1;b=on;k=zpa").unwrap();
        assert_eq!(r.mode, DrMode::On);
        assert!(r.applies);
        assert_eq!(parse("v=1 b=test k=all").unwrap().mode, DrMode::Test);
        assert_eq!(
            parse(" v=1; b=off; k=zpa; foo=bar ").unwrap().mode,
            DrMode::Off
        );
        assert!(!parse("v=1;b=on;k=zia").unwrap().applies);
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("b=on;k=zpa"), Err(RecordError::NoVersion));
        assert_eq!(parse("v=2;b=on"), Err(RecordError::Version("2".into())));
        assert_eq!(parse("v=1;k=zpa"), Err(RecordError::NoMode));
        assert_eq!(
            parse("v=1;b=maybe"),
            Err(RecordError::BadMode("maybe".into()))
        );
        assert_eq!(parse("v=1;b=on;t=soon"), Err(RecordError::BadTime("t")));
        assert_eq!(parse("v=1;s=abc;b=on"), Err(RecordError::SignatureNotLast));
        assert_eq!(
            parse("v=1;b=on;b=off"),
            Err(RecordError::Duplicate("b".into()))
        );
    }

    #[test]
    fn duplicate_tags_differing_only_in_case() {
        assert_eq!(
            parse("V=1;v=1;b=on"),
            Err(RecordError::Duplicate("v".into()))
        );
        assert_eq!(
            parse("v=1;b=on;B=off"),
            Err(RecordError::Duplicate("b".into()))
        );
    }

    #[test]
    fn time_window() {
        let r = parse("v=1;b=on;k=zpa;t=100;x=200").unwrap();
        assert_eq!(r.mode_at(99), None);
        assert_eq!(r.mode_at(100), Some(DrMode::On));
        assert_eq!(r.mode_at(199), Some(DrMode::On));
        assert_eq!(r.mode_at(200), Some(DrMode::Off));
    }

    #[test]
    fn signature_covers_the_prefix() {
        let r = parse("v=1;b=on;k=zpa;t=5;s=QUJD").unwrap();
        let (sig, signed) = r.signature.unwrap();
        assert_eq!(sig, "QUJD");
        assert_eq!(signed, "v=1;b=on;k=zpa;t=5;");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_reads_what_encode_writes(
            mode in 0..3usize,
            all: bool,
            start: Option<u64>,
            end: Option<u64>,
            seed: Option<u8>,
        ) {
            let spec = Spec {
                mode: DrMode::ALL[mode],
                kind: if all { Kind::All } else { Kind::Zpa },
                start,
                end,
            };
            let k = seed.map(key);
            let text = encode(&spec, k.as_ref());
            let r = parse(&text).unwrap();
            proptest::prop_assert_eq!((r.mode, r.applies, r.start, r.end), (spec.mode, true, start, end));
            if let Some(k) = k {
                proptest::prop_assert_eq!(r.verify(&k.verifying_key()), Ok(()));
            }
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn encode_round_trips_and_verifies() {
        let spec = Spec {
            mode: DrMode::Test,
            kind: Kind::All,
            start: Some(1_700_000_000),
            end: Some(1_700_003_600),
        };
        let text = encode(&spec, Some(&key(1)));
        assert!(text.starts_with("v=1; b=test; k=all; t=1700000000; x=1700003600; s="));
        let r = parse(&text).unwrap();
        assert_eq!(r.mode, DrMode::Test);
        assert_eq!((r.start, r.end), (spec.start, spec.end));
        assert_eq!(r.verify(&key(1).verifying_key()), Ok(()));
        assert_eq!(
            r.verify(&key(2).verifying_key()),
            Err(SignatureError::Invalid)
        );
        let unsigned = encode(&spec, None);
        assert_eq!(unsigned, "v=1; b=test; k=all; t=1700000000; x=1700003600");
        assert_eq!(
            parse(&unsigned).unwrap().verify(&key(1).verifying_key()),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn any_changed_byte_breaks_the_signature() {
        let spec = Spec {
            mode: DrMode::On,
            kind: Kind::Zpa,
            start: Some(42),
            end: None,
        };
        let text = encode(&spec, Some(&key(3)));
        let vk = key(3).verifying_key();
        let cut = text.find("s=").unwrap();
        // Same tags, different bytes: a space dropped, a mode flipped.
        for forged in [
            text.replacen("; ", ";", 1),
            text.replacen("b=on", "b=off", 1),
            text.replacen("t=42", "t=43", 1),
        ] {
            let r = parse(&forged).unwrap();
            assert_eq!(r.verify(&vk), Err(SignatureError::Invalid), "{forged}");
        }
        let bad_b64 = format!("{}s=!!!", &text[..cut]);
        assert_eq!(
            parse(&bad_b64).unwrap().verify(&vk),
            Err(SignatureError::Encoding)
        );
        let short = format!("{}s=QUJD", &text[..cut]);
        assert_eq!(
            parse(&short).unwrap().verify(&vk),
            Err(SignatureError::Encoding)
        );
    }
}

/// The record text of a pasted zone-file line (`NAME [TTL] [IN] TXT "..."
/// "..."`, as `lifeboat dns-record` prints it): its character-strings
/// joined, `\"`, `\\` and `\DDD` unescaped. `None` when `line` is not a
/// TXT zone line (then it is taken as the record text itself).
pub fn from_zone_line(text: &str) -> Option<String> {
    // A pasted zone snippet may hold other records (the edges' A records).
    text.lines().find_map(txt_line)
}

fn txt_line(line: &str) -> Option<String> {
    let mut rest = line.trim();
    // TXT within the first four words: name, TTL, class, type.
    for _ in 0..4 {
        let end = rest.find(|c: char| c.is_ascii_whitespace())?;
        let (word, tail) = rest.split_at(end);
        rest = tail.trim_start();
        if word.eq_ignore_ascii_case("TXT") {
            return character_strings(rest);
        }
    }
    None
}

/// `"a" "b"` → `ab`, unescaping as zone files do.
fn character_strings(text: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    let mut any = false;
    while let Some(b) = bytes.next() {
        match b {
            b if b.is_ascii_whitespace() => continue,
            b'"' => any = true,
            _ => return None,
        }
        loop {
            match bytes.next()? {
                b'"' => break,
                b'\\' => {
                    let c = bytes.next()?;
                    if c.is_ascii_digit() {
                        let digits = [c, bytes.next()?, bytes.next()?];
                        let n = digits.iter().try_fold(0u16, |n, d| {
                            d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
                        })?;
                        out.push(u8::try_from(n).ok()?);
                    } else {
                        out.push(c);
                    }
                }
                b => out.push(b),
            }
        }
    }
    if !any {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod zone_line_tests {
    use super::from_zone_line;

    #[test]
    fn a_pasted_zone_line_gives_its_record_text() {
        let line =
            "_lifeboat-dr.example.com. 60 IN TXT \"v=1; b=on; \" \"k=zpa; s=\\\"x\\\\\\059\"\n";
        assert_eq!(
            from_zone_line(line).as_deref(),
            Some("v=1; b=on; k=zpa; s=\"x\\;")
        );
        assert_eq!(
            from_zone_line("name TXT \"v=1; b=off; k=zpa\"").as_deref(),
            Some("v=1; b=off; k=zpa")
        );
    }

    #[test]
    fn record_text_and_broken_lines_are_not_zone_lines() {
        assert_eq!(from_zone_line("v=1; b=on; k=zpa"), None);
        assert_eq!(from_zone_line("name 60 IN TXT unquoted"), None);
        assert_eq!(from_zone_line("name 60 IN TXT \"open"), None);
        assert_eq!(from_zone_line("name 60 IN A 192.0.2.1"), None);
    }
}
