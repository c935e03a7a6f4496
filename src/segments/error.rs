//! Why a set of DR segments could not be compiled: each error names the
//! segment, the config key and (for one bad value) its position, so that
//! `config` can point at the line.

/// Why the segments could not be compiled. Every variant names the segment;
/// [`SegmentError::culprit`] gives the segment and config key for locating it.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    #[error("segment name {segment:?}: {reason}")]
    BadName {
        segment: String,
        reason: &'static str,
    },
    /// `item` is the position of `value` in the segment's `domains` (and
    /// likewise for the other per-value variants).
    #[error("segment `{segment}`: bad domain `{value}`: {reason}")]
    BadDomain {
        segment: String,
        item: usize,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}`: bad CIDR `{value}`: {reason}")]
    BadCidr {
        segment: String,
        item: usize,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}`: CIDR `{value}` has host bits set (did you mean `{network}`?)")]
    CidrHostBits {
        segment: String,
        item: usize,
        value: String,
        network: String,
    },
    #[error("segment `{segment}`: bad TCP port `{value}`: {reason}")]
    BadPort {
        segment: String,
        item: usize,
        value: String,
        reason: &'static str,
    },
    #[error("segment `{segment}` has no TCP ports (tcp_ports is empty)")]
    EmptyPorts { segment: String },
    #[error("segment `{segment}` is defined twice")]
    DuplicateName { segment: String },
    /// `what` is e.g. `domain payroll.corp.example`, `wildcard *.hr.example`,
    /// `prefix 10.20.0.0/16`; `key` is `domains` or `cidrs`, and `item` the
    /// position of the claiming entry in `second`'s list.
    #[error("segments `{first}` and `{second}` both claim {what} on overlapping TCP ports")]
    Duplicate {
        first: String,
        second: String,
        what: String,
        key: &'static str,
        item: usize,
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

    /// The position of the bad value in the culprit's list (see
    /// [`SegmentError::culprit`]), where one value is at fault.
    pub fn item(&self) -> Option<usize> {
        match self {
            Self::BadDomain { item, .. }
            | Self::BadCidr { item, .. }
            | Self::CidrHostBits { item, .. }
            | Self::BadPort { item, .. }
            | Self::Duplicate { item, .. } => Some(*item),
            Self::BadName { .. } | Self::EmptyPorts { .. } | Self::DuplicateName { .. } => None,
        }
    }
}
