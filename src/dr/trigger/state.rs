//! `[dr] state_file`: the last accepted record, so a restarted process
//! comes back in the mode it had and replay protection holds.

use std::path::Path;

use tracing::{info, warn};

use crate::dr::machine::{Machine, Now};

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
pub(super) fn restore(machine: &mut Machine, now: Now, path: &Path) -> bool {
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

pub(super) fn write_state(path: &Path, record: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let parsed = crate::dr::record::parse(record).ok();
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
