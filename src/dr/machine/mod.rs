//! The DR mode machine, shared by edge, connector and client. Sans-IO: it
//! takes lookup outcomes and instants ([`Now`]), and answers with the mode,
//! what to count, what to log (once per change of condition), what to keep
//! in the state file, and when it wants to be called again
//! ([`Machine::poll_timeout`]). No clock, socket, file or randomness in
//! here: `trigger.rs` resolves, sleeps, writes and spreads.
//!
//! Rules (DESIGN.md "DR mode"):
//! - a failed lookup (timeout, SERVFAIL, NXDOMAIN, no TXT) or a malformed
//!   record never changes the mode;
//! - a record whose `k=` is not ours is ignored; with a signing key, so is
//!   one without `t=`, without a valid `s=`, or with a `t=` older than the
//!   last accepted record's (a replay);
//! - an accepted record whose `t=` is in the future is *scheduled*: it takes
//!   effect at `t` without a new lookup (a later lookup can replace it); one
//!   past its `x=` means `off`, also without a new lookup;
//! - polls come every `poll_interval`, sooner when the TTL is shorter, never
//!   more often than [`MIN_POLL`];
//! - time arithmetic never overflows: a `t=`/`x=` further ahead than
//!   [`HORIZON`] (up to `u64::MAX` seconds) is an edge that never comes, so
//!   such a record is scheduled forever, or in effect with no end, until a
//!   later record replaces it.

use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use super::record::{self, Record, SignatureError};
use super::DrMode;

#[cfg(test)]
mod tests;

/// The shortest time between two lookups, whatever the TTL says.
pub const MIN_POLL: Duration = Duration::from_secs(1);

/// How far ahead the machine schedules anything: an edge further away than
/// this never comes. 100 years, far inside what an `Instant` represents.
pub const HORIZON: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d` for a `d` within [`HORIZON`] (larger ones are cut to it); `None`
/// only where the platform's `Instant` cannot represent that (never on
/// Linux), which callers treat as "never".
pub fn later(at: Instant, d: Duration) -> Option<Instant> {
    at.checked_add(d.min(HORIZON))
}

/// The machine's notion of now: a monotonic instant for timers and the wall
/// clock for the record's `t=`/`x=`, read together by the caller (the
/// trigger's shell, `trigger::now`; tests and fuzzers step their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub at: Instant,
    /// Time since the Unix epoch.
    pub unix: Duration,
}

impl Now {
    /// `self` moved on by `d` on both clocks (tests and callers that step
    /// time); `d` is cut to [`HORIZON`].
    pub fn after(self, d: Duration) -> Self {
        let d = d.min(HORIZON);
        Self {
            at: later(self.at, d).unwrap_or(self.at),
            unix: self.unix.saturating_add(d),
        }
    }

    fn secs(self) -> u64 {
        self.unix.as_secs()
    }

    /// The instant at which the wall clock reads `unix_secs` (now if past);
    /// `None` (never) beyond [`HORIZON`].
    fn instant_of(self, unix_secs: u64) -> Option<Instant> {
        let ahead = Duration::from_secs(unix_secs).saturating_sub(self.unix);
        if ahead > HORIZON {
            return None;
        }
        later(self.at, ahead)
    }
}

/// What the machine is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[dr] poll_interval` (the role's default already applied).
    pub poll_interval: Duration,
    /// `[dr] signing_key`: when set, only signed records with `t=` count.
    pub key: Option<VerifyingKey>,
}

/// The outcome of one lookup of the trigger, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The TXT record set: one text per record (its character-strings
    /// joined) and the smallest TTL (`None` for sources without one).
    Found {
        texts: Vec<String>,
        ttl: Option<Duration>,
    },
    NxDomain,
    /// The name exists but has no TXT record.
    NoData,
    ServFail,
    Timeout,
    /// Anything else (refused, network error, unreadable file).
    Failed(String),
}

/// `lifeboat_dr_trigger_lookups_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupResult {
    Ok,
    Timeout,
    ServFail,
    NxDomain,
    Malformed,
    Ignored,
    Error,
}

impl LookupResult {
    pub const ALL: [Self; 7] = [
        Self::Ok,
        Self::Timeout,
        Self::ServFail,
        Self::NxDomain,
        Self::Malformed,
        Self::Ignored,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::ServFail => "servfail",
            Self::NxDomain => "nxdomain",
            Self::Malformed => "malformed",
            Self::Ignored => "ignored",
            Self::Error => "error",
        }
    }
}

/// Why a well-formed record was not accepted.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    #[error("`k=` names another product (neither zpa nor all)")]
    NotForUs,
    #[error("the record is not signed and [dr] signing_key is set")]
    Unsigned,
    #[error("the signed record has no `t=` (needed against replays)")]
    NoStart,
    #[error("{0}")]
    BadSignature(SignatureError),
    #[error("replayed: `t={t}` is older than the last accepted record's `t={last}`")]
    Replayed { t: u64, last: u64 },
}

/// What the last lookup showed; logged when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// This record is accepted and in effect.
    InEffect {
        text: String,
    },
    /// This record is accepted and takes effect at `start`.
    Scheduled {
        text: String,
        start: u64,
    },
    NxDomain,
    NoData,
    ServFail,
    Timeout,
    Failed(String),
    Malformed(String),
    Ignored(Ignored),
}

impl Condition {
    pub fn result(&self) -> LookupResult {
        match self {
            Self::InEffect { .. } | Self::Scheduled { .. } => LookupResult::Ok,
            Self::NxDomain | Self::NoData => LookupResult::NxDomain,
            Self::ServFail => LookupResult::ServFail,
            Self::Timeout => LookupResult::Timeout,
            Self::Failed(_) => LookupResult::Error,
            Self::Malformed(_) => LookupResult::Malformed,
            Self::Ignored(_) => LookupResult::Ignored,
        }
    }
}

/// A change of the decided mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: DrMode,
    pub to: DrMode,
}

/// What one call decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The lookup's result (for `handle_lookup` only).
    pub result: Option<LookupResult>,
    /// The lookup's condition, when it differs from the previous lookup's.
    pub changed: Option<Condition>,
    pub transition: Option<Transition>,
    /// The accepted record changed: keep this text in the state file.
    pub persist: Option<String>,
}

/// Why a state file's record was not restored.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    #[error("malformed record: {0}")]
    Malformed(record::RecordError),
    #[error("{0}")]
    Ignored(Ignored),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    text: String,
    record: Record,
}

/// The mode machine. See the module comment for its rules.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    mode: DrMode,
    /// The record in effect (also the replay floor: its `t=`).
    accepted: Option<Accepted>,
    /// An accepted record waiting for its `t=`.
    scheduled: Option<Accepted>,
    next_poll: Instant,
    /// The last `Now` seen, to turn wall-clock edges into instants.
    clock: Now,
    condition: Option<Condition>,
}

impl Machine {
    /// A machine in mode `off` that wants a lookup right away.
    pub fn new(settings: Settings, now: Now) -> Self {
        Self {
            settings,
            mode: DrMode::Off,
            accepted: None,
            scheduled: None,
            next_poll: now.at,
            clock: now,
            condition: None,
        }
    }

    /// The decided mode.
    pub fn mode(&self) -> DrMode {
        self.mode
    }

    /// The text of the record in effect, if any.
    pub fn accepted(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.text.as_str())
    }

    /// Restore the last accepted record (from the state file) before any
    /// lookup: its mode (or `off` past its `x=`) and its `t=` as the replay
    /// floor. With a signing key the record must still verify. A record whose
    /// `t=` is still ahead (the clock went back, or the file was edited) is
    /// scheduled, not accepted: it must not raise the replay floor early.
    pub fn restore(&mut self, now: Now, text: &str) -> Result<Option<Transition>, RestoreError> {
        let record = record::parse(text).map_err(RestoreError::Malformed)?;
        self.check(&record).map_err(RestoreError::Ignored)?;
        let accepted = Accepted {
            text: text.to_string(),
            record,
        };
        if accepted.record.start.is_some_and(|t| now.secs() < t) {
            self.scheduled = Some(accepted);
        } else {
            self.accepted = Some(accepted);
        }
        self.clock = now;
        Ok(self.evaluate(now).0)
    }

    /// When the machine next wants a call: the next poll, a scheduled
    /// record's `t=`, or the accepted record's `x=`.
    pub fn poll_timeout(&self) -> Instant {
        self.poll_edge()
            .map_or(self.next_poll, |edge| edge.min(self.next_poll))
    }

    /// The next time edge that changes the mode without a lookup: a
    /// scheduled record's `t=` or the accepted record's future `x=`, if
    /// within [`HORIZON`].
    pub fn poll_edge(&self) -> Option<Instant> {
        let now = self.clock.secs();
        let start = self.scheduled.as_ref().and_then(|s| s.record.start);
        let end = self
            .accepted
            .as_ref()
            .and_then(|a| a.record.end)
            .filter(|&x| x > now);
        [start, end]
            .into_iter()
            .flatten()
            .filter_map(|e| self.clock.instant_of(e))
            .min()
    }

    /// Whether a lookup is due at `at`.
    pub fn poll_due(&self, at: Instant) -> bool {
        at >= self.next_poll
    }

    /// Time passed: apply a scheduled record or an `x=`.
    pub fn handle_timeout(&mut self, now: Now) -> Output {
        self.clock = now;
        let (transition, persist) = self.evaluate(now);
        Output {
            transition,
            persist,
            ..Output::default()
        }
    }

    /// A lookup finished at `now`.
    pub fn handle_lookup(&mut self, now: Now, lookup: Lookup) -> Output {
        self.clock = now;
        let interval = self.settings.poll_interval.max(MIN_POLL);
        let wait = match &lookup {
            Lookup::Found { ttl: Some(ttl), .. } => interval.min((*ttl).max(MIN_POLL)),
            _ => interval,
        };
        // `wait` is at most `poll_interval` (a day at most, `[dr]`'s bound).
        self.next_poll = later(now.at, wait).unwrap_or(now.at);

        let (condition, mut persist) = self.classify(now, lookup);
        let (transition, promoted) = self.evaluate(now);
        if promoted.is_some() {
            persist = promoted;
        }
        let result = condition.result();
        let changed = (self.condition.as_ref() != Some(&condition)).then(|| condition.clone());
        self.condition = Some(condition);
        Output {
            result: Some(result),
            changed,
            transition,
            persist,
        }
    }

    /// The checks a record must pass to be accepted (not its timing).
    fn check(&self, r: &Record) -> Result<(), Ignored> {
        if !r.applies {
            return Err(Ignored::NotForUs);
        }
        let Some(key) = &self.settings.key else {
            return Ok(());
        };
        if r.signature.is_none() {
            return Err(Ignored::Unsigned);
        }
        let Some(t) = r.start else {
            return Err(Ignored::NoStart);
        };
        r.verify(key).map_err(Ignored::BadSignature)?;
        if let Some(last) = self.accepted.as_ref().and_then(|a| a.record.start) {
            if t < last {
                return Err(Ignored::Replayed { t, last });
            }
        }
        Ok(())
    }

    /// Turn a lookup into a condition, accepting or scheduling its record.
    fn classify(&mut self, now: Now, lookup: Lookup) -> (Condition, Option<String>) {
        let texts = match lookup {
            Lookup::Found { texts, .. } => texts,
            Lookup::NxDomain => return (Condition::NxDomain, None),
            Lookup::NoData => return (Condition::NoData, None),
            Lookup::ServFail => return (Condition::ServFail, None),
            Lookup::Timeout => return (Condition::Timeout, None),
            Lookup::Failed(e) => return (Condition::Failed(e), None),
        };
        // Other TXT records may share the name (site verification and the
        // like): those that are not trigger records are skipped; two
        // different trigger records are ambiguous.
        let mut found: Option<(String, Record)> = None;
        let mut first_error = None;
        for text in texts {
            match record::parse(&text) {
                Ok(r) => match &found {
                    Some((t, _)) if *t != text => {
                        return (
                            Condition::Malformed(
                                "two different trigger records at the name".into(),
                            ),
                            None,
                        );
                    }
                    _ => found = Some((text, r)),
                },
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((text, record)) = found else {
            let why = first_error.map_or_else(|| "empty TXT record".into(), |e| e.to_string());
            return (Condition::Malformed(why), None);
        };
        if let Err(why) = self.check(&record) {
            return (Condition::Ignored(why), None);
        }
        let accepted = Accepted { text, record };
        if let Some(t) = accepted.record.start.filter(|&t| now.secs() < t) {
            let cond = Condition::Scheduled {
                text: accepted.text.clone(),
                start: t,
            };
            self.scheduled = Some(accepted);
            return (cond, None);
        }
        // What the name says now replaces anything scheduled earlier.
        self.scheduled = None;
        let cond = Condition::InEffect {
            text: accepted.text.clone(),
        };
        if self.accepted.as_ref() == Some(&accepted) {
            return (cond, None);
        }
        let persist = Some(accepted.text.clone());
        self.accepted = Some(accepted);
        (cond, persist)
    }

    /// Promote a due scheduled record, then decide the mode at `now`.
    fn evaluate(&mut self, now: Now) -> (Option<Transition>, Option<String>) {
        let mut persist = None;
        let due = self
            .scheduled
            .as_ref()
            .and_then(|s| s.record.start)
            .is_some_and(|t| now.secs() >= t);
        if due {
            if let Some(s) = self.scheduled.take() {
                persist = Some(s.text.clone());
                self.accepted = Some(s);
            }
        }
        let target = self
            .accepted
            .as_ref()
            .and_then(|a| a.record.mode_at(now.secs()))
            .unwrap_or(self.mode);
        let transition = (target != self.mode).then_some(Transition {
            from: self.mode,
            to: target,
        });
        self.mode = target;
        (transition, persist)
    }
}
