//! The DR trigger record: `v=1; b=on|test|off; k=zpa|all` plus optional
//! `t=` (start), `x=` (end) and `s=` (Ed25519 signature, last tag). Pure:
//! text in, [`Record`] out; the time checks take `now` as an argument.

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

/// Parse record text (a TXT record's character-strings already joined).
pub fn parse(text: &str) -> Result<Record, RecordError> {
    let mut version = None;
    let mut mode = None;
    let mut kind = None;
    let mut start = None;
    let mut end = None;
    let mut signature = None;
    let mut seen: Vec<&str> = Vec::new();
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
            if seen.contains(&k) {
                return Err(RecordError::Duplicate(k_lower));
            }
            seen.push(k);
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
}
