//! What a run reports: flow and arrival figures, refusals and handshakes by
//! word, as numbers (`--json`) and as lines for a person.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Arrivals, Run, Tally};
use crate::metrics::HANDSHAKE_RESULTS;

/// What happened.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub flows_ok: u64,
    pub flows_failed: u64,
    pub seconds: f64,
    pub flows_per_second: f64,
    pub setup_p50_us: f64,
    pub setup_p90_us: f64,
    pub setup_p99_us: f64,
    pub setup_max_us: f64,
    pub bytes: u64,
    pub megabits_per_second: f64,
    /// Flows that failed for good, by `Lifeboat-Error` word.
    pub refusals: BTreeMap<String, u64>,
    /// Clients that arrived at once.
    pub clients: u64,
    /// Clients whose first flow succeeded.
    pub clients_served: u64,
    /// From the arrival until every client was served; `None` when some
    /// never were within the run's time.
    pub all_served_seconds: Option<f64>,
    /// When clients were served, from the arrival: median and 99th percentile.
    pub served_p50_ms: f64,
    pub served_p99_ms: f64,
    /// Tunnels up (handshakes the edge accepted) until every client was
    /// served (or the arrival phase ended), and per second of it.
    pub handshakes_ok: u64,
    pub handshakes_per_second: f64,
    /// Handshakes that failed, by result word (`shed`, `timeout`, ...),
    /// each retried by its client.
    pub handshakes_refused: BTreeMap<String, u64>,
    /// First-flow attempts that failed and were retried, by word.
    pub retried: BTreeMap<String, u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flows: {} ok, {} failed in {:.2} s ({:.0} flows/s)",
            self.flows_ok, self.flows_failed, self.seconds, self.flows_per_second
        )?;
        writeln!(
            f,
            "flow setup: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
            self.setup_p50_us, self.setup_p90_us, self.setup_p99_us, self.setup_max_us
        )?;
        if self.bytes > 0 {
            writeln!(
                f,
                "received: {} bytes ({:.0} Mbit/s)",
                self.bytes, self.megabits_per_second
            )?;
        }
        words(f, "refused", &self.refusals)?;
        let all = match self.all_served_seconds {
            Some(s) => format!("all served within {s:.2} s"),
            None => format!(
                "{} never served",
                self.clients.saturating_sub(self.clients_served)
            ),
        };
        writeln!(
            f,
            "clients: {} arriving at once, {} served, {all} (served p50 {:.0} ms, p99 {:.0} ms)",
            self.clients, self.clients_served, self.served_p50_ms, self.served_p99_ms
        )?;
        writeln!(
            f,
            "handshakes: {} tunnels up during the arrival ({:.0} /s)",
            self.handshakes_ok, self.handshakes_per_second
        )?;
        words(f, "handshake refused", &self.handshakes_refused)?;
        if self.handshakes_refused.contains_key("quota") && self.clients > 1 {
            writeln!(
                f,
                "(every client presents the config's one certificate: for a stampede, raise the \
                 edge's [limits] max_tunnels_per_identity above --clients)"
            )?;
        }
        words(f, "first flow retried", &self.retried)
    }
}

/// A line `<what> <word>: <n>` per word of `counts`.
fn words(
    f: &mut std::fmt::Formatter<'_>,
    what: &str,
    counts: &BTreeMap<String, u64>,
) -> std::fmt::Result {
    for (word, n) in counts {
        writeln!(f, "{what} {word}: {n}")?;
    }
    Ok(())
}

/// The report of a finished run that took `secs`.
pub(super) fn report(run: &Run, mut t: Tally, mut a: Arrivals, secs: f64) -> Report {
    t.setups.sort();
    a.served_at.sort();
    let clients = run.opts.clients as u64;
    let all_served = a.served_at.len() as u64 == clients;
    // The arrival: until the last client was served, else the whole run.
    let arrival_secs = match (all_served, a.served_at.last()) {
        (true, Some(last)) => last.as_secs_f64(),
        _ => secs,
    };
    let handshakes_ok = a.handshakes_ok.unwrap_or_else(|| run.handshakes("ok"));
    let handshakes_refused: BTreeMap<String, u64> = HANDSHAKE_RESULTS
        .iter()
        .filter(|r| **r != "ok")
        .map(|r| (r.to_string(), run.handshakes(r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    Report {
        flows_ok: t.setups.len() as u64,
        flows_failed: t.failed,
        seconds: secs,
        flows_per_second: t.setups.len() as f64 / secs,
        setup_p50_us: percentile(&t.setups, 0.50) * 1e6,
        setup_p90_us: percentile(&t.setups, 0.90) * 1e6,
        setup_p99_us: percentile(&t.setups, 0.99) * 1e6,
        setup_max_us: percentile(&t.setups, 1.0) * 1e6,
        bytes: t.bytes,
        megabits_per_second: t.bytes as f64 * 8.0 / secs / 1e6,
        refusals: t.refusals,
        clients,
        clients_served: a.served_at.len() as u64,
        all_served_seconds: all_served.then_some(arrival_secs),
        served_p50_ms: percentile(&a.served_at, 0.50) * 1e3,
        served_p99_ms: percentile(&a.served_at, 0.99) * 1e3,
        handshakes_ok,
        handshakes_per_second: handshakes_ok as f64 / arrival_secs.max(1e-3),
        handshakes_refused,
        retried: a.retried,
    }
}

/// The `q` quantile of sorted `v`, in seconds (0 when empty).
fn percentile(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::percentile;

    #[test]
    fn percentiles_of_sorted_durations() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), 0.051);
        assert_eq!(percentile(&v, 1.0), 0.1);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
