//! Whether the name of a `dns:NAME` trigger is one the resolver will ask for,
//! decided when the config is parsed, without a resolver type: the same
//! reading as hickory's `Name::from_str` (its relaxed parse), which the
//! trigger's shell uses later. Labels split at unescaped dots (`\c` and
//! `\DDD` octal escapes), each one IDNA (UTS 46, STD3) or `_`-led ASCII, or
//! failing that every label plain ASCII; 1 to 63 bytes a label, 255 a name.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

const MAX_LABEL: usize = 63;
/// A name's wire length: a length byte per label, the labels, the root byte.
const MAX_NAME: usize = 255;

/// Why a trigger name is not a DNS name.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("unrecognized char: {0:?}")]
    Char(char),
    #[error("malformed label: {0:?}")]
    Label(String),
    #[error("name too long ({0} bytes on the wire, at most 255)")]
    TooLong(usize),
}

/// `Ok` if `name` parses as a DNS name (see the module doc).
pub fn check(name: &str) -> Result<(), NameError> {
    if name == "." {
        return Ok(());
    }
    let labels = split(name)?;
    encoded(&labels, utf8_label).or_else(|_| encoded(&labels, ascii_label))
}

/// The labels of `name`, escapes resolved; an empty last label (a trailing
/// dot) is not one.
fn split(name: &str) -> Result<Vec<String>, NameError> {
    let mut labels = Vec::new();
    let mut label = String::new();
    // Digits of an octal escape read so far, once a `\` was seen.
    let mut escape: Option<Vec<u32>> = None;
    for ch in name.chars() {
        match escape.as_mut() {
            None if ch == '.' => labels.push(std::mem::take(&mut label)),
            None if ch == '\\' => escape = Some(Vec::new()),
            None if !ch.is_control() && !ch.is_whitespace() => label.push(ch),
            None => return Err(NameError::Char(ch)),
            Some(digits) if digits.is_empty() && !ch.is_numeric() => {
                label.push(ch);
                escape = None;
            }
            Some(_) if !ch.is_numeric() => return Err(NameError::Char(ch)),
            Some(digits) => {
                digits.push(ch.to_digit(8).ok_or(NameError::Char(ch))?);
                if let [a, b, c] = digits[..] {
                    label.push(char::from_u32(a * 64 + b * 8 + c).ok_or(NameError::Char(ch))?);
                    escape = None;
                }
            }
        }
    }
    if !label.is_empty() {
        labels.push(label);
    }
    Ok(labels)
}

/// Every label through `encode`, and the name's length checked.
fn encoded(
    labels: &[String],
    encode: fn(&str) -> Result<String, NameError>,
) -> Result<(), NameError> {
    let mut len = 1;
    for label in labels {
        len += encode(label)?.len() + 1;
        if len > MAX_NAME {
            return Err(NameError::TooLong(len));
        }
    }
    Ok(())
}

fn utf8_label(s: &str) -> Result<String, NameError> {
    if s == "*" || s.starts_with('_') {
        return ascii_label(s);
    }
    let puny = Uts46::new()
        .to_ascii(
            s.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| NameError::Label(s.to_string()))?;
    ascii_label(&puny)
}

fn ascii_label(s: &str) -> Result<String, NameError> {
    let safe = |c: char, first: bool| {
        c.is_ascii_alphanumeric() || c == '_' || c == '.' || (c == '-' && !first)
    };
    let mut chars = s.chars();
    let ok = s == "*"
        || (s.len() <= MAX_LABEL
            && chars.next().is_some_and(|c| safe(c, true) || c == '*')
            && chars.all(|c| safe(c, false)));
    if ok {
        Ok(s.to_string())
    } else {
        Err(NameError::Label(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    /// The resolver's own parse, which `check` must agree with.
    fn hickory(name: &str) -> bool {
        hickory_resolver::Name::from_str(name).is_ok()
    }

    #[test]
    fn agrees_with_the_resolver_on_the_edge_cases() {
        let long_label = "a".repeat(63);
        let cases = [
            "_dr.example.com",
            "_dr.example.com.",
            ".",
            "..",
            "a..b",
            ".a",
            "*.example",
            "a*.example",
            "-a.example",
            "a-.example",
            "a_b.example",
            "bücher.example",
            "xn--bcher-kva.example",
            "a\\.b.example",
            "a\\046b",
            "a\\000b",
            "a\\08b",
            "a\\9",
            "a\\",
            "a\\ b",
            "a b",
            "a\tb",
            "a/b",
            "☃.example",
            "_☃.example",
            "ß.example",
            "A.EXAMPLE",
        ];
        for name in cases {
            assert_eq!(super::check(name).is_ok(), hickory(name), "{name:?}");
        }
        for n in [3, 4] {
            let name = vec![long_label.as_str(); n].join(".");
            assert_eq!(
                super::check(&name).is_ok(),
                hickory(&name),
                "{n} labels of 63"
            );
        }
        let too_long = format!("{long_label}a.example");
        assert_eq!(super::check(&too_long).is_ok(), hickory(&too_long));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn agrees_with_the_resolver(name in "[a-cA_*.\\\\0-9\\- üß☃\t]{0,24}") {
            prop_assert_eq!(super::check(&name).is_ok(), hickory(&name), "{:?}", name);
        }
    }
}
