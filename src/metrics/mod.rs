//! Prometheus metrics: one [`Metrics`] per role instance, each with its own
//! registry (tests run several roles in one process). Every series with a
//! fixed label set exists from start-up; labels come only from fixed words
//! and config names, never from users, addresses or ports.

mod flow;
mod gate;
mod register;

use prometheus::{
    Gauge, GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use crate::dr_mode::DrMode;

pub use flow::{FlowGuard, SegmentMetrics};
pub use gate::LogGate;

/// Label value for flows refused before any segment matched.
pub const NO_SEGMENT: &str = "-";

/// Flow setup histogram buckets, 50 µs to 10 s.
const SETUP_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Handshake results counted in `lifeboat_handshakes_total{result}`: `ok`,
/// the certificate words of [`crate::trust::WORDS`] but its `other`, then
/// the tunnel's own words (`TUNNEL_RESULTS`).
pub const HANDSHAKE_RESULTS: &[&str] = &handshake_results();

/// The handshake results that are not about the peer's certificate.
const TUNNEL_RESULTS: [&str; 11] = [
    "timeout",
    "unreachable",
    "no-welcome",
    "closed-early",
    "config",
    "going-away",
    "cert-refused",
    "shed",
    "quota",
    // The edge could not accept a TCP connection for want of a file
    // descriptor (EMFILE/ENFILE; counted under role `client`, the role is
    // not known before the ClientHello).
    "fd-limit",
    "other",
];

/// The certificate words of `trust::WORDS`: all but its last, `other`.
const CERT_RESULTS: usize = crate::trust::WORDS.len() - 1;

const fn handshake_results() -> [&'static str; 1 + CERT_RESULTS + TUNNEL_RESULTS.len()] {
    let mut out = [""; 1 + CERT_RESULTS + TUNNEL_RESULTS.len()];
    out[0] = "ok";
    let mut i = 0;
    while i < CERT_RESULTS {
        out[1 + i] = crate::trust::WORDS[i];
        i += 1;
    }
    let mut i = 0;
    while i < TUNNEL_RESULTS.len() {
        out[1 + CERT_RESULTS + i] = TUNNEL_RESULTS[i];
        i += 1;
    }
    out
}

/// Reasons counted in `lifeboat_flows_closed_total{reason}`.
pub const CLOSE_REASONS: &[&str] = &[
    "done",
    "reset",
    "error",
    "dr-narrowed",
    "cert-refused",
    "idle",
    "stalled",
    "tunnel-lost",
    "shutdown",
];

/// `lifeboat_flow_bytes_total` of the flows that carry no segment label.
pub struct AgentBytes {
    pub up: IntCounter,
    pub down: IntCounter,
}

/// All handles of one role instance.
pub struct Metrics {
    pub registry: Registry,
    pub dr_mode: IntGaugeVec,
    pub dr_trigger_lookups: IntCounterVec,
    pub dr_last_good_lookup: Gauge,
    pub tunnels_active: IntGaugeVec,
    pub handshakes: IntCounterVec,
    pub flows_active: IntGauge,
    pub flows_total: IntCounterVec,
    pub flow_bytes: IntCounterVec,
    pub flow_setup: Histogram,
    pub connectors_connected: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub segment_ready: IntGaugeVec,
    pub dr_transitions: IntCounterVec,
    pub flows_closed: IntCounterVec,
    /// `flows_closed` by [`CLOSE_REASONS`] index, resolved once (STYLE.md
    /// section 6): a flow's end costs no label lookup.
    closed_by_reason: Vec<IntCounter>,
    /// `flow_bytes{segment=""}` up and down, resolved once, for the agents
    /// (connector and client) whose flows have no segment label.
    pub agent_bytes: AgentBytes,
    pub transport_fallbacks: IntCounterVec,
    pub cert_expiry: GaugeVec,
    pub build_info: IntGaugeVec,
    /// `lifeboat_ready`: 1 when `/readyz` answers ready (refreshed by the admin listener).
    pub ready: IntGauge,
    /// `lifeboat_dr_mode_known`: 1 once the DR mode is known (a fixed
    /// trigger, a restored state file or a good lookup); sticky.
    pub dr_mode_known: IntGauge,
    /// `lifeboat_cert_grace_accepted_total`: client handshakes accepted with
    /// a certificate expired within `[dr] cert_grace` while DR was on.
    pub cert_grace_accepted: IntCounter,
}

impl Metrics {
    /// Whether the DR mode is known: marked (fixed trigger, restored state)
    /// or a trigger lookup has succeeded. Sets `lifeboat_dr_mode_known`.
    pub fn dr_mode_is_known(&self) -> bool {
        if self.dr_mode_known.get() == 0 && self.dr_last_good_lookup.get() > 0.0 {
            self.dr_mode_known.set(1);
        }
        self.dr_mode_known.get() == 1
    }

    /// The current DR mode as `lifeboat_dr_mode` shows it.
    pub fn current_dr_mode(&self) -> Option<DrMode> {
        DrMode::ALL
            .into_iter()
            .find(|m| self.dr_mode.with_label_values(&[m.as_str()]).get() == 1)
    }

    /// Tunnels up to edges (connector and client), either transport.
    pub fn edge_tunnels(&self) -> i64 {
        ["quic", "tls"]
            .iter()
            .map(|t| self.tunnels_active.with_label_values(&["edge", t]).get())
            .sum()
    }

    /// `lifeboat_cert_expiry_timestamp_seconds{cert="local"|"ca"}` from the
    /// certificates `trust` holds now.
    pub fn observe_trust(&self, trust: &crate::trust::Trust) {
        let (local, ca) = trust.expiry_unix();
        self.cert_expiry
            .with_label_values(&["local"])
            .set(local as f64);
        self.cert_expiry.with_label_values(&["ca"]).set(ca as f64);
    }

    /// Set `lifeboat_dr_mode{mode}` to 1 for `mode`, 0 for the others.
    pub fn set_dr_mode(&self, mode: DrMode) {
        for m in DrMode::ALL {
            self.dr_mode
                .with_label_values(&[m.as_str()])
                .set(i64::from(m == mode));
        }
    }

    /// Create `lifeboat_connectors_connected{group}` at 0 for the config's
    /// DR connector groups, so "a DR group with no connector" is visible
    /// (and alertable) before any connector ever connected.
    pub fn init_connector_groups<'a>(&self, groups: impl IntoIterator<Item = &'a str>) {
        for g in groups {
            self.connectors_connected.with_label_values(&[g]);
        }
    }

    /// Prometheus text exposition of the registry.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        // Encoding into a String cannot fail for well-formed metric families.
        let _ = enc.encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// The file watcher's reports: expiry gauges after a reload, and a refused
/// version counted as a failed reload (`config_reloads_total{result="error"}`).
impl crate::trust::watch::Observer for Metrics {
    fn reloaded(&self, trust: &crate::trust::Trust) {
        self.observe_trust(trust);
    }

    fn refused(&self) {
        self.config_reloads.with_label_values(&["error"]).inc();
    }
}
