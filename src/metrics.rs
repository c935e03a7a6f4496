//! Prometheus metrics: one [`Metrics`] per role instance, each with its own
//! registry (tests run several roles in one process). Every series with a
//! fixed label set exists from start-up; labels come only from fixed words
//! and config names, never from users, addresses or ports.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use crate::dr_mode::DrMode;
use crate::refusal::Refusal;

/// Label value for flows refused before any segment matched.
pub const NO_SEGMENT: &str = "-";

/// Flow setup histogram buckets, 50 µs to 10 s.
const SETUP_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Handshake results counted in `lifeboat_handshakes_total{result}`.
pub const HANDSHAKE_RESULTS: &[&str] = &[
    "ok",
    "unknown-ca",
    "expired",
    "not-yet-valid",
    "revoked",
    "wrong-role",
    "foreign-trust-domain",
    "no-identity",
    "bad-certificate",
    "no-certificate",
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

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("lifeboat_{name}"), help)
}

/// Registers each metric it is given in one registry.
struct Reg<'a>(&'a Registry);

impl Reg<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: prometheus::Result<M>) -> M {
        let m = m.expect("metric definitions are static and valid");
        self.0
            .register(Box::new(m.clone()))
            .expect("metric names are unique");
        m
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(opts(name, help), labels))
    }

    fn int_gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(opts(name, help), labels))
    }
}

impl Metrics {
    /// Build and register every metric; `role` is "edge", "connector" or "client".
    pub fn new(role: &'static str) -> Self {
        let m = Self::register(Registry::new());
        m.create_fixed_series(role);
        m.unregister_not_for(role);
        // process_* (CPU, memory, file descriptors, start time), as every
        // Prometheus client library exports them.
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            m.registry
                .register(Box::new(pc))
                .expect("process_* names are unique");
        }
        m
    }

    /// Every metric, registered in `registry`.
    fn register(registry: Registry) -> Self {
        let r = Reg(&registry);
        let flow_bytes = r.counters(
            "flow_bytes_total",
            "Payload bytes by segment and direction",
            &["segment", "direction"],
        );
        let agent_bytes = AgentBytes {
            up: flow_bytes.with_label_values(&[NO_SEGMENT, "up"]),
            down: flow_bytes.with_label_values(&[NO_SEGMENT, "down"]),
        };
        let flows_closed = r.counters(
            "flows_closed_total",
            "Established flows closed, by reason",
            &["reason"],
        );
        let closed_by_reason = CLOSE_REASONS
            .iter()
            .map(|r| flows_closed.with_label_values(&[r]))
            .collect();
        Self {
            dr_mode: r.int_gauges("dr_mode", "1 for the current DR mode", &["mode"]),
            dr_trigger_lookups: r.counters(
                "dr_trigger_lookups_total",
                "DR trigger lookups by result",
                &["result"],
            ),
            dr_last_good_lookup: r.add(Gauge::with_opts(opts(
                "dr_trigger_last_success_timestamp_seconds",
                "Unix time of the last successful DR trigger lookup",
            ))),
            tunnels_active: r.int_gauges(
                "tunnels_active",
                "Tunnels up, by peer role and transport",
                &["role", "transport"],
            ),
            handshakes: r.counters(
                "handshakes_total",
                "Tunnel handshakes by peer role, transport and result",
                &["role", "transport", "result"],
            ),
            flows_active: r.add(IntGauge::with_opts(opts("flows_active", "Flows in progress"))),
            flows_total: r.counters(
                "flows_total",
                "Flows by segment and result (ok or a Lifeboat-Error word)",
                &["segment", "result"],
            ),
            flow_bytes,
            flow_setup: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "lifeboat_flow_setup_seconds",
                    "Time from a flow's preamble to its answer",
                )
                .buckets(SETUP_BUCKETS.to_vec()),
            )),
            connectors_connected: r.int_gauges(
                "connectors_connected",
                "Connector tunnels up, by connector group",
                &["group"],
            ),
            config_reloads: r.counters(
                "config_reloads_total",
                "Config reloads by result",
                &["result"],
            ),
            segment_ready: r.int_gauges(
                "segment_ready",
                "1 when a connector of a group serving the DR segment is connected",
                &["segment"],
            ),
            dr_transitions: r.counters(
                "dr_transitions_total",
                "DR mode transitions",
                &["from", "to"],
            ),
            flows_closed,
            closed_by_reason,
            agent_bytes,
            transport_fallbacks: r.counters(
                "transport_fallbacks_total",
                "Tunnels that fell back from QUIC to TLS",
                &["role"],
            ),
            cert_expiry: r.add(GaugeVec::new(
                opts(
                    "cert_expiry_timestamp_seconds",
                    "notAfter of our certificate and the CA",
                ),
                &["cert"],
            )),
            build_info: r.int_gauges("build_info", "Build information", &["version"]),
            ready: r.add(IntGauge::with_opts(opts(
                "ready",
                "1 when the role is ready (what /readyz answers)",
            ))),
            dr_mode_known: r.add(IntGauge::with_opts(opts(
                "dr_mode_known",
                "1 once the DR mode is known: a fixed trigger, a restored state file or a good lookup",
            ))),
            cert_grace_accepted: r.add(IntCounter::with_opts(opts(
                "cert_grace_accepted_total",
                "Client handshakes accepted with a certificate expired within [dr] cert_grace while DR was on",
            ))),
            registry,
        }
    }

    /// Every series with a fixed label set, at 0 (`build_info` at 1), so it
    /// exists from start-up.
    fn create_fixed_series(&self, role: &str) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for mode in DrMode::ALL {
            self.dr_mode.with_label_values(&[mode.as_str()]).set(0);
            for to in DrMode::ALL {
                if to != mode {
                    self.dr_transitions
                        .with_label_values(&[mode.as_str(), to.as_str()]);
                }
            }
        }
        for r in [
            "ok",
            "timeout",
            "servfail",
            "nxdomain",
            "malformed",
            "ignored",
            "error",
        ] {
            self.dr_trigger_lookups.with_label_values(&[r]);
        }
        for (peer, transport) in [
            ("client", "quic"),
            ("client", "tls"),
            ("connector", "quic"),
            ("connector", "tls"),
            ("edge", "quic"),
            ("edge", "tls"),
        ] {
            self.tunnels_active.with_label_values(&[peer, transport]);
            for r in HANDSHAKE_RESULTS {
                self.handshakes.with_label_values(&[peer, transport, r]);
            }
        }
        for r in ["ok", "error", "refused"] {
            self.config_reloads.with_label_values(&[r]);
        }
        self.transport_fallbacks.with_label_values(&[role]);
        self.flows_total.with_label_values(&[NO_SEGMENT, "ok"]);
        for w in Refusal::ALL {
            self.flows_total.with_label_values(&[NO_SEGMENT, w.word()]);
        }
    }

    /// Series that mean nothing for this role are not exported; their
    /// handles still work, unregistered. A connector has no DR mode (it
    /// serves in every mode) and only the edge accepts expired client
    /// certificates under `[dr] cert_grace`.
    fn unregister_not_for(&self, role: &str) {
        let not_here: Vec<Box<dyn prometheus::core::Collector>> = match role {
            "connector" => vec![
                Box::new(self.dr_mode.clone()),
                Box::new(self.dr_trigger_lookups.clone()),
                Box::new(self.dr_last_good_lookup.clone()),
                Box::new(self.dr_transitions.clone()),
                Box::new(self.dr_mode_known.clone()),
                Box::new(self.cert_grace_accepted.clone()),
            ],
            "client" => vec![Box::new(self.cert_grace_accepted.clone())],
            _ => Vec::new(),
        };
        for c in not_here {
            let _ = self.registry.unregister(c);
        }
    }

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

    /// The per-segment handles, resolved once per compiled config.
    pub fn segment(&self, name: &str) -> SegmentMetrics {
        SegmentMetrics {
            ok: self.flows_total.with_label_values(&[name, "ok"]),
            refused: Refusal::ALL.map(|w| self.flows_total.with_label_values(&[name, w.word()])),
            bytes_up: self.flow_bytes.with_label_values(&[name, "up"]),
            bytes_down: self.flow_bytes.with_label_values(&[name, "down"]),
            ready: self.segment_ready.with_label_values(&[name]),
        }
    }

    /// The counter for a refusal before any segment matched.
    pub fn refused_unmatched(&self, r: Refusal) -> IntCounter {
        self.flows_total.with_label_values(&[NO_SEGMENT, r.word()])
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

/// Handles for one segment, so the hot path never formats a label.
#[derive(Clone)]
pub struct SegmentMetrics {
    pub ok: IntCounter,
    pub refused: [IntCounter; Refusal::ALL.len()],
    pub bytes_up: IntCounter,
    pub bytes_down: IntCounter,
    pub ready: IntGauge,
}

impl SegmentMetrics {
    pub fn refusal(&self, r: Refusal) -> &IntCounter {
        let i = Refusal::ALL.iter().position(|&x| x == r).unwrap_or(0);
        &self.refused[i]
    }
}

/// One flow in `lifeboat_flows_active`, from [`Metrics::flow`] until it is
/// dropped, on every path out of the flow's task; a flow that was spliced
/// also counts its end in `lifeboat_flows_closed_total{reason}` through
/// [`close`](Self::close). A refused flow just drops it.
#[must_use = "dropping the guard ends the flow"]
pub struct FlowGuard<'a> {
    metrics: &'a Metrics,
}

impl Metrics {
    /// A flow starts: counted in `lifeboat_flows_active` while the guard lives.
    pub fn flow(&self) -> FlowGuard<'_> {
        self.flows_active.inc();
        FlowGuard { metrics: self }
    }
}

impl FlowGuard<'_> {
    /// The spliced flow ended for `reason` (a `CLOSE_REASONS` word, from
    /// `splice::End::reason`); it leaves `lifeboat_flows_active` too.
    pub fn close(self, reason: &str) {
        let m = self.metrics;
        match CLOSE_REASONS.iter().position(|r| *r == reason) {
            Some(i) => m.closed_by_reason[i].inc(),
            None => m.flows_closed.with_label_values(&[reason]).inc(),
        }
    }
}

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        self.metrics.flows_active.dec();
    }
}

/// Rate limit for per-event warnings (a refused flow, an unreachable app):
/// at most `per_window` lines per `window`; the rest are only counted, and
/// the next line let through says how many were held back. Floods stay
/// visible in the metrics, not in the log.
pub struct LogGate {
    per_window: u32,
    window: std::time::Duration,
    state: std::sync::Mutex<GateState>,
}

struct GateState {
    start: Option<std::time::Instant>,
    used: u32,
    held: u64,
}

impl LogGate {
    pub const fn new(per_window: u32, window: std::time::Duration) -> Self {
        Self {
            per_window,
            window,
            state: std::sync::Mutex::new(GateState {
                start: None,
                used: 0,
                held: 0,
            }),
        }
    }

    /// `Some(held back since the last line)` if a line may be written now.
    pub fn allow(&self, now: std::time::Instant) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.start.is_none_or(|t| now.duration_since(t) >= self.window) {
            s.start = Some(now);
            s.used = 0;
        }
        if s.used < self.per_window {
            s.used += 1;
            Some(std::mem::take(&mut s.held))
        } else {
            s.held += 1;
            None
        }
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

#[cfg(test)]
mod gate_tests {
    use super::LogGate;
    use std::time::{Duration, Instant};

    #[test]
    fn lets_a_few_lines_through_per_window_and_counts_the_rest() {
        let gate = LogGate::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(gate.allow(t0), Some(0));
        assert_eq!(gate.allow(t0), Some(0));
        assert_eq!(gate.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(gate.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(gate.allow(t0 + Duration::from_secs(10)), Some(0));
    }
}

#[cfg(test)]
mod flow_guard_tests {
    use super::Metrics;

    #[test]
    fn every_path_out_leaves_flows_active_and_a_close_counts_its_reason() {
        let m = Metrics::new("edge");
        let refused = m.flow();
        let spliced = m.flow();
        assert_eq!(m.flows_active.get(), 2);
        drop(refused);
        assert_eq!(m.flows_active.get(), 1);
        spliced.close("idle");
        assert_eq!(m.flows_active.get(), 0);
        assert_eq!(m.flows_closed.with_label_values(&["idle"]).get(), 1);
        assert_eq!(m.flows_closed.with_label_values(&["done"]).get(), 0);
    }
}
