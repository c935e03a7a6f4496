//! The watcher task: sleeps until the next poll or time edge, looks the
//! record up, feeds the machine and publishes the mode (spread by jitter).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::source::Source;
use super::{apply, now, state, unix_now};
use crate::dr::machine::{later, Condition, Lookup, LookupResult, Machine, Output};
use crate::dr::DrMode;
use crate::metrics::Metrics;

/// The watcher task's state.
pub(super) struct Shell {
    machine: Machine,
    tx: watch::Sender<DrMode>,
    metrics: Arc<Metrics>,
    state_file: Option<PathBuf>,
    jitter: Duration,
    /// Set after the first lookup: from then on changes are spread.
    settled: bool,
    /// A mode change waiting for its random delay.
    spreading: Option<(DrMode, Instant)>,
}

impl Shell {
    pub(super) fn new(
        machine: Machine,
        tx: watch::Sender<DrMode>,
        metrics: Arc<Metrics>,
        state_file: Option<PathBuf>,
        jitter: Duration,
    ) -> Self {
        Self {
            machine,
            tx,
            metrics,
            state_file,
            jitter,
            settled: false,
            spreading: None,
        }
    }

    pub(super) async fn run(mut self, source: Source, stop: CancellationToken) {
        loop {
            let poll = self.machine.poll_timeout();
            let wake = self.timer().map_or(poll, |t| t.min(poll));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.cancelled() => return,
            }
            if !self.machine.poll_due(Instant::now()) {
                self.handle(None);
                continue;
            }
            // A slow lookup (a silent server: up to `timeout`) must not
            // delay a `t=`/`x=` edge or a spread change meanwhile.
            let lookup = source.lookup();
            tokio::pin!(lookup);
            let done = loop {
                let timer = self.timer();
                tokio::select! {
                    l = &mut lookup => break l,
                    _ = sleep_until_opt(timer) => self.handle(None),
                    _ = stop.cancelled() => return,
                }
            };
            self.handle(Some(done));
        }
    }

    /// The next time edge other than a poll: a record's `t=`/`x=` or the
    /// end of a spread delay.
    fn timer(&self) -> Option<Instant> {
        let spread = self.spreading.map(|(_, at)| at);
        match (self.machine.poll_edge(), spread) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Feed the machine (a lookup, or just the time) and act on its output.
    pub(super) fn handle(&mut self, lookup: Option<Lookup>) {
        let now = now();
        let out = match lookup {
            Some(l) => self.machine.handle_lookup(now, l),
            None => self.machine.handle_timeout(now),
        };
        self.report(&out);
        self.publish(now.at);
        if out.result.is_some() {
            self.settled = true;
        }
    }

    /// Publish the machine's mode: at once at start-up or with no jitter,
    /// otherwise after a random delay in [0, jitter] (no stampede).
    fn publish(&mut self, now: Instant) {
        let want = self.machine.mode();
        let applied = *self.tx.borrow();
        if want == applied {
            self.spreading = None;
        } else if !self.settled || self.jitter.is_zero() {
            self.spreading = None;
            apply(&self.tx, want, &self.metrics);
        } else if self.spreading.map(|(m, _)| m) != Some(want) {
            let delay = rand::thread_rng().gen_range(Duration::ZERO..=self.jitter);
            info!(
                to = want.as_str(),
                delay_ms = delay.as_millis() as u64,
                "DR mode change spread"
            );
            self.spreading = Some((want, later(now, delay).unwrap_or(now)));
        }
        if let Some((mode, at)) = self.spreading {
            if now >= at {
                self.spreading = None;
                apply(&self.tx, mode, &self.metrics);
            }
        }
    }

    fn report(&self, out: &Output) {
        if let Some(result) = out.result {
            self.metrics
                .dr_trigger_lookups
                .with_label_values(&[result.as_str()])
                .inc();
            if result == LookupResult::Ok {
                self.metrics.dr_last_good_lookup.set(unix_now() as f64);
                self.metrics.dr_mode_known.set(1);
            }
        }
        if let Some(c) = &out.changed {
            log_condition(c, self.machine.mode());
        }
        if let (Some(path), Some(record)) = (&self.state_file, &out.persist) {
            if let Err(e) = state::write_state(path, record) {
                warn!(file = %path.display(), "DR state file not written: {e}");
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One line per change of condition (never one per poll). Everything that
/// came from outside (record text, parser and resolver messages quoting it)
/// is a `Debug` field: escaped and quoted, so no control character in a TXT
/// record or file reaches the log raw.
fn log_condition(c: &Condition, mode: DrMode) {
    let mode = mode.as_str();
    match c {
        Condition::InEffect { text } => info!(record = ?text, mode, "DR trigger record in effect"),
        Condition::Scheduled { text, start } => {
            info!(record = ?text, start, mode, "DR trigger record scheduled: it applies from its t=")
        }
        Condition::NxDomain => warn!(
            mode,
            "DR trigger lookup: no such name (NXDOMAIN), mode unchanged"
        ),
        Condition::NoData => warn!(
            mode,
            "DR trigger lookup: no TXT record at the name, mode unchanged"
        ),
        Condition::ServFail => warn!(mode, "DR trigger lookup: SERVFAIL, mode unchanged"),
        Condition::Timeout => warn!(mode, "DR trigger lookup timed out, mode unchanged"),
        Condition::Failed(e) => warn!(mode, error = ?e, "DR trigger lookup failed, mode unchanged"),
        Condition::Malformed(e) => {
            warn!(mode, reason = ?e, "DR trigger record malformed, mode unchanged")
        }
        Condition::Ignored(why) => {
            warn!(mode, reason = ?why.to_string(), "DR trigger record ignored, mode unchanged")
        }
    }
}
