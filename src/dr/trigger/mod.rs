//! The async side of DR mode: reads the trigger (a fixed mode, a file, or a
//! DNS TXT record through hickory-resolver), feeds what it read to the pure
//! [`Machine`], and publishes the mode on a `watch` channel. It owns the
//! clocks, the resolver, the state file and the random spread; every
//! transition is logged and counted here, once, in [`apply`].//!
//! `source` reads the record text (file or DNS), `state` keeps the last
//! accepted record across restarts, `shell` is the watcher task.

mod shell;
mod source;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::machine::{Machine, Now, Settings};
use super::{key, DrMode, Trigger};
use crate::config::{ConfigError, DnsSection, DrSection};
use crate::metrics::Metrics;
use crate::trust::Role;
use shell::Shell;
use source::Source;

/// How often a file trigger is re-read by default (it is local and cheap).
const FILE_POLL: Duration = Duration::from_secs(1);
/// `[dr] poll_interval` defaults, as in the guide.
const AGENT_POLL: Duration = Duration::from_secs(30);
const CLIENT_POLL: Duration = Duration::from_secs(200);
/// `[dr] jitter` default for connectors and clients (the edge: 0).
const AGENT_JITTER: Duration = Duration::from_secs(5);

/// Time since the Unix epoch by the wall clock (zero before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Both clocks, read together: the only time the DR machine is given.
fn now() -> Now {
    Now {
        at: Instant::now(),
        unix: since_epoch(),
    }
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

/// `[dr] poll_interval` when the config leaves it out.
pub fn default_poll_interval(role: Role) -> Duration {
    match role {
        Role::Client => CLIENT_POLL,
        Role::Edge | Role::Connector => AGENT_POLL,
    }
}

/// `[dr] jitter` when the config leaves it out.
pub fn default_jitter(role: Role) -> Duration {
    match role {
        Role::Edge => Duration::ZERO,
        Role::Connector | Role::Client => AGENT_JITTER,
    }
}

/// [`start_for`] with only a trigger: edge defaults, the system resolver,
/// no signing key, no state file.
pub fn start(
    trigger: Option<&Trigger>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<watch::Receiver<DrMode>> {
    let dr = DrSection {
        trigger: trigger.cloned(),
        ..DrSection::default()
    };
    start_for(Role::Edge, &dr, &DnsSection::default(), metrics, stop)
}

/// Start following `[dr]` for a role. No trigger means the role follows the
/// edge's decision (clients and connectors without one act as `on`). With a
/// state file, the mode it holds is published before any lookup.
pub fn start_for(
    role: Role,
    dr: &DrSection,
    dns: &DnsSection,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<watch::Receiver<DrMode>> {
    let (source, poll_interval) = match &dr.trigger {
        None => return Ok(follow_edge(&metrics)),
        Some(Trigger::Static(m)) => return Ok(fixed(*m, &metrics)),
        Some(Trigger::File(p)) => (
            Source::File(p.clone()),
            dr.poll_interval.unwrap_or(FILE_POLL),
        ),
        Some(Trigger::Dns(name)) => {
            let poll = dr
                .poll_interval
                .unwrap_or_else(|| default_poll_interval(role));
            (Source::dns(name, dns, poll)?, poll)
        }
    };
    let key = match &dr.signing_key {
        None => None,
        Some(path) => Some(load_key(path)?),
    };
    let now = now();
    let mut machine = Machine::new(Settings { poll_interval, key }, now);
    if let Some(path) = &dr.state_file {
        if state::restore(&mut machine, now, path) {
            metrics.dr_mode_known.set(1);
        }
    }
    // A restored mode is where this process starts, not a transition: it is
    // logged by `restore` as `DR mode restored: <mode>` and not counted, so
    // restarting edges during DR never looks like an activation.
    let (tx, rx) = watch::channel(machine.mode());
    metrics.set_dr_mode(machine.mode());
    let jitter = dr.jitter.unwrap_or_else(|| default_jitter(role));
    let mut shell = Shell::new(machine, tx, metrics, dr.state_file.clone(), jitter);
    if let Source::File(path) = &source {
        // A file is read at once, so the mode is known before the role binds.
        let lookup = source::read_file(path);
        shell.handle(Some(lookup));
    }
    tokio::spawn(shell.run(source, stop));
    Ok(rx)
}

/// No trigger: the role has no DR mode of its own and lets every flow go to
/// the edge, which decides. Published as `on` without a transition (nothing
/// was activated here, so no `DR mode is activated!` from this role).
fn follow_edge(metrics: &Metrics) -> watch::Receiver<DrMode> {
    let (tx, rx) = watch::channel(DrMode::On);
    metrics.set_dr_mode(DrMode::On);
    metrics.dr_mode_known.set(1);
    std::mem::forget(tx);
    rx
}

fn fixed(mode: DrMode, metrics: &Metrics) -> watch::Receiver<DrMode> {
    let (tx, rx) = watch::channel(DrMode::Off);
    metrics.set_dr_mode(DrMode::Off);
    metrics.dr_mode_known.set(1);
    apply(&tx, mode, metrics);
    // Keep the sender alive for the life of the process: receivers treat a
    // closed channel as "no more changes", which is what a fixed mode means.
    std::mem::forget(tx);
    rx
}

fn config_error(file: &Path, key: &str, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        line: None,
        message,
    }
}

fn load_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(path, "dr.signing_key", format!("cannot read: {e}")))?;
    key::parse_public_key(&text).map_err(|e| config_error(path, "dr.signing_key", e.to_string()))
}
