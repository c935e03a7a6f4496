//! What a DR mode is (`DrMode`), where it comes from (`Trigger`, the
//! `[dr] trigger` value, its name checked by `name`) and the Ed25519 key
//! files of signed triggers (`key`): the vocabulary `config`, `metrics` and
//! `dr` share. Pure, no resolver types; it depends on none of them (`dr`
//! re-exports it).

pub mod key;
pub mod name;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// The DR mode: standby, test (test users only), or active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DrMode {
    Off,
    Test,
    On,
}

impl DrMode {
    pub const ALL: [Self; 3] = [Self::Off, Self::Test, Self::On];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Test => "test",
            Self::On => "on",
        }
    }

    /// Whether a client flow of a user (test user or not) is served in this mode.
    pub fn allows(self, is_test_user: bool) -> bool {
        match self {
            Self::Off => false,
            Self::Test => is_test_user,
            Self::On => true,
        }
    }

    /// The refusal of a flow this mode does not serve (`dr-inactive` when
    /// off, `not-allowed` in test mode for a user not in the test group).
    pub fn refusal(self, is_test_user: bool) -> Option<crate::refusal::Refusal> {
        use crate::refusal::Refusal;
        match self {
            _ if self.allows(is_test_user) => None,
            Self::Off => Some(Refusal::DrInactive),
            Self::Test | Self::On => Some(Refusal::NotAllowed),
        }
    }
}

impl fmt::Display for DrMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DrMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "test" => Ok(Self::Test),
            "on" => Ok(Self::On),
            other => Err(format!("`{other}` is not a DR mode (on, test or off)")),
        }
    }
}

/// `[dr] trigger`: where the DR mode comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Poll the TXT record of this name.
    Dns(String),
    /// A fixed mode.
    Static(DrMode),
    /// A file holding the same text as the TXT record.
    File(PathBuf),
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("dns", name)) if !name.is_empty() => {
                name::check(name).map_err(|e| format!("`dns:{name}`: not a DNS name ({e})"))?;
                Ok(Self::Dns(name.to_string()))
            }
            Some(("static", mode)) => mode.parse().map(Self::Static),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            _ => Err(format!(
                "`{s}` is not a trigger: use `dns:NAME`, `static:on|test|off` or `file:PATH`"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
