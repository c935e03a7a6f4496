//! The async side of DR mode: reads the trigger (a fixed mode, a file, or a
//! DNS TXT record through hickory-resolver), feeds what it read to the pure
//! [`Machine`], and publishes the mode on a `watch` channel. It owns the
//! clocks, the resolver, the state file and the random spread; every
//! transition is logged and counted here, once, in [`apply`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, ResolveErrorKind, TokioResolver};
use rand::Rng as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::machine::{later, Condition, Lookup, LookupResult, Machine, Now, Output, Settings};
use super::{key, DrMode, Trigger};
use crate::config::{ConfigError, DnsSection, DrSection};
use crate::metrics::Metrics;
use crate::trust::Role;

/// How often a file trigger is re-read by default (it is local and cheap).
const FILE_POLL: Duration = Duration::from_secs(1);
/// `[dr] poll_interval` defaults, as in the guide.
const AGENT_POLL: Duration = Duration::from_secs(30);
const CLIENT_POLL: Duration = Duration::from_secs(200);
/// `[dr] jitter` default for connectors and clients (the edge: 0).
const AGENT_JITTER: Duration = Duration::from_secs(5);
/// The resolver's per-query timeout is the poll interval within these bounds.
const QUERY_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const QUERY_TIMEOUT_MAX: Duration = Duration::from_secs(5);

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
            let source = Source::Dns {
                name: fqdn(name)?,
                resolver: Box::new(resolver(dns, poll)?),
                timeout: query_timeout(poll) * 3,
            };
            (source, poll)
        }
    };
    let key = match &dr.signing_key {
        None => None,
        Some(path) => Some(load_key(path)?),
    };
    let now = now();
    let mut machine = Machine::new(Settings { poll_interval, key }, now);
    if let Some(path) = &dr.state_file {
        if restore(&mut machine, now, path) {
            metrics.dr_mode_known.set(1);
        }
    }
    // A restored mode is where this process starts, not a transition: it is
    // logged by `restore` as `DR mode restored: <mode>` and not counted, so
    // restarting edges during DR never looks like an activation.
    let (tx, rx) = watch::channel(machine.mode());
    metrics.set_dr_mode(machine.mode());
    let mut shell = Shell {
        machine,
        tx,
        metrics,
        state_file: dr.state_file.clone(),
        jitter: dr.jitter.unwrap_or_else(|| default_jitter(role)),
        settled: false,
        spreading: None,
    };
    if let Source::File(path) = &source {
        // A file is read at once, so the mode is known before the role binds.
        let lookup = read_file(path);
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

/// `dns:NAME` as an absolute name, so no search domain is ever appended.
fn fqdn(name: &str) -> anyhow::Result<Name> {
    // Checked when the config was parsed (`Trigger::from_str`).
    let mut n = Name::from_str(name)
        .map_err(|e| anyhow::anyhow!("[dr] trigger `dns:{name}`: not a DNS name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

fn load_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(path, "dr.signing_key", format!("cannot read: {e}")))?;
    key::parse_public_key(&text).map_err(|e| config_error(path, "dr.signing_key", e.to_string()))
}

fn query_timeout(poll: Duration) -> Duration {
    poll.clamp(QUERY_TIMEOUT_MIN, QUERY_TIMEOUT_MAX)
}

/// A resolver that asks afresh every time (we schedule by TTL ourselves):
/// `[dns] nameservers` over UDP and TCP, or the system's configuration.
fn resolver(dns: &DnsSection, poll: Duration) -> anyhow::Result<TokioResolver> {
    let mut builder = crate::dns::builder(&dns.nameservers).map_err(|e| {
        anyhow::anyhow!("[dr] trigger: cannot read the system resolver configuration ({e}); set [dns] nameservers")
    })?;
    crate::dns::configure(&mut builder, query_timeout(poll));
    Ok(builder.build())
}

/// Where the record text comes from.
enum Source {
    Dns {
        resolver: Box<TokioResolver>,
        name: Name,
        /// Bound on one whole lookup (all servers, both transports).
        timeout: Duration,
    },
    File(PathBuf),
}

impl Source {
    async fn lookup(&self) -> Lookup {
        match self {
            Self::File(p) => read_file(p),
            Self::Dns {
                resolver,
                name,
                timeout,
            } => {
                resolver.clear_cache();
                match tokio::time::timeout(*timeout, resolver.txt_lookup(name.clone())).await {
                    Err(_) => Lookup::Timeout,
                    Ok(Ok(answer)) => {
                        let mut texts = Vec::new();
                        let mut ttl = u32::MAX;
                        for r in answer.as_lookup().record_iter() {
                            if let RData::TXT(txt) = r.data() {
                                let joined: Vec<u8> = txt.txt_data().concat();
                                texts.push(String::from_utf8_lossy(&joined).into_owned());
                                ttl = ttl.min(r.ttl());
                            }
                        }
                        if texts.is_empty() {
                            return Lookup::NoData;
                        }
                        Lookup::Found {
                            texts,
                            ttl: Some(Duration::from_secs(ttl.into())),
                        }
                    }
                    Ok(Err(e)) => lookup_error(&e),
                }
            }
        }
    }
}

fn lookup_error(e: &ResolveError) -> Lookup {
    let ResolveErrorKind::Proto(p) = e.kind() else {
        return Lookup::Failed(e.to_string());
    };
    match p.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => Lookup::NxDomain,
            ResponseCode::NoError => Lookup::NoData,
            ResponseCode::ServFail => Lookup::ServFail,
            other => Lookup::Failed(format!("the server answered {other}")),
        },
        ProtoErrorKind::Timeout => Lookup::Timeout,
        ProtoErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Lookup::Timeout,
        _ => Lookup::Failed(e.to_string()),
    }
}

fn read_file(path: &Path) -> Lookup {
    match std::fs::read_to_string(path) {
        Err(e) => Lookup::Failed(format!("{}: {e}", path.display())),
        // The record text (`lifeboat dns-record --txt`), or a zone line pasted
        // as it is published (`lifeboat dns-record`).
        Ok(text) => Lookup::Found {
            texts: vec![crate::dr::record::from_zone_line(&text)
                .unwrap_or_else(|| text.trim_end_matches(['\r', '\n']).to_string())],
            ttl: None,
        },
    }
}

/// The state file: the last accepted record, TOML, written atomically.
#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    /// For people reading the file; `record` is what counts.
    mode: String,
    #[serde(default)]
    t: Option<u64>,
    record: String,
}

/// Restore the machine from the state file; whether it was restored.
fn restore(machine: &mut Machine, now: Now, path: &Path) -> bool {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            warn!(file = %path.display(), "DR state file unreadable, starting in off: {e}");
            return false;
        }
    };
    // The file's text (and so the parser's message quoting it) is logged
    // escaped: a newline in it must not forge a log line.
    let state: State = match toml::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            warn!(file = %path.display(), error = ?e.to_string(), "DR state file malformed, starting in off");
            return false;
        }
    };
    match machine.restore(now, &state.record) {
        Ok(_) => {
            info!(
                file = %path.display(),
                record = ?state.record,
                "DR mode restored: {}",
                machine.mode()
            );
            true
        }
        Err(e) => {
            warn!(file = %path.display(), record = ?state.record, reason = ?e.to_string(), "DR state file not restored, starting in off");
            false
        }
    }
}

fn write_state(path: &Path, record: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let parsed = super::record::parse(record).ok();
    let state = State {
        mode: parsed.as_ref().map_or("?", |r| r.mode.as_str()).to_string(),
        t: parsed.and_then(|r| r.start),
        record: record.to_string(),
    };
    let body = toml::to_string(&state).map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    writeln!(
        tmp,
        "# lifeboat DR state: the last accepted trigger record. Written by lifeboat."
    )?;
    tmp.write_all(body.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The watcher task's state.
struct Shell {
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
    async fn run(mut self, source: Source, stop: CancellationToken) {
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
    fn handle(&mut self, lookup: Option<Lookup>) {
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
            if let Err(e) = write_state(path, record) {
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
