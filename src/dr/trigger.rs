//! The async side of DR mode: reads the trigger (a fixed mode, a file, or
//! DNS), applies the record's time window, and publishes the mode on a
//! `watch` channel. Every transition is logged and counted here, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::record::{self, Record};
use super::{DrMode, Trigger};
use crate::metrics::Metrics;

/// How often a file trigger is re-read (it is local and cheap).
const FILE_POLL: Duration = Duration::from_secs(1);

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Publish `new` if it differs from the current mode; log and count it.
pub fn apply(tx: &watch::Sender<DrMode>, new: DrMode, metrics: &Metrics) {
    let old = *tx.borrow();
    if old == new {
        return;
    }
    metrics
        .dr_transitions
        .with_label_values(&[old.as_str(), new.as_str()])
        .inc();
    metrics.set_dr_mode(new);
    if new == DrMode::On {
        info!("DR mode is activated!");
    }
    info!(from = old.as_str(), to = new.as_str(), "DR mode changed");
    let _ = tx.send(new);
}

/// Start following `trigger`. `None` means the role follows the edge's
/// decision (clients and connectors without a trigger act as `on`).
pub fn start(
    trigger: Option<&Trigger>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<watch::Receiver<DrMode>> {
    match trigger {
        None => {
            // No trigger of its own: the role follows the edge's decision and
            // announces nothing (the activation message belongs to a trigger).
            let (tx, rx) = watch::channel(DrMode::On);
            metrics.set_dr_mode(DrMode::On);
            std::mem::forget(tx);
            Ok(rx)
        }
        Some(Trigger::Static(m)) => Ok(fixed(*m, &metrics)),
        Some(Trigger::File(p)) => {
            let (tx, rx) = watch::channel(DrMode::Off);
            metrics.set_dr_mode(DrMode::Off);
            let mut last = None;
            poll_file(p, &tx, &metrics, &mut last);
            tokio::spawn(file_loop(p.clone(), tx, metrics, stop, last));
            Ok(rx)
        }
        Some(Trigger::Dns(name)) => anyhow::bail!(
            "[dr] trigger `dns:{name}`: DNS triggers are not available in this build yet; use `file:PATH` or `static:MODE`"
        ),
    }
}

fn fixed(mode: DrMode, metrics: &Metrics) -> watch::Receiver<DrMode> {
    let (tx, rx) = watch::channel(DrMode::Off);
    metrics.set_dr_mode(DrMode::Off);
    apply(&tx, mode, metrics);
    // Keep the sender alive for the life of the process: receivers treat a
    // closed channel as "no more changes", which is what a fixed mode means.
    std::mem::forget(tx);
    rx
}

/// Outcome of one read of a trigger source, for logging once per condition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Ok(Record),
    Unreadable(String),
    Malformed(String),
}

fn poll_file(
    path: &Path,
    tx: &watch::Sender<DrMode>,
    metrics: &Metrics,
    last: &mut Option<Condition>,
) {
    let cond = match std::fs::read_to_string(path) {
        Err(e) => Condition::Unreadable(e.to_string()),
        Ok(text) => match record::parse(text.trim()) {
            Ok(r) => Condition::Ok(r),
            Err(e) => Condition::Malformed(e.to_string()),
        },
    };
    let result = match &cond {
        Condition::Ok(_) => "ok",
        Condition::Unreadable(_) => "error",
        Condition::Malformed(_) => "malformed",
    };
    metrics
        .dr_trigger_lookups
        .with_label_values(&[result])
        .inc();
    if last.as_ref() != Some(&cond) {
        match &cond {
            Condition::Ok(r) => {
                info!(file = %path.display(), mode = r.mode.as_str(), applies = r.applies, "DR trigger read")
            }
            Condition::Unreadable(e) => {
                warn!(file = %path.display(), "DR trigger unreadable, mode unchanged: {e}")
            }
            Condition::Malformed(e) => {
                warn!(file = %path.display(), "DR trigger malformed, mode unchanged: {e}")
            }
        }
    }
    if let Condition::Ok(r) = &cond {
        metrics.dr_last_good_lookup.set(unix_now() as f64);
        if let Some(mode) = r.mode_at(unix_now()) {
            apply(tx, mode, metrics);
        }
    }
    *last = Some(cond);
}

async fn file_loop(
    path: PathBuf,
    tx: watch::Sender<DrMode>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    mut last: Option<Condition>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL) => {}
            _ = stop.cancelled() => return,
        }
        poll_file(&path, &tx, &metrics, &mut last);
    }
}
