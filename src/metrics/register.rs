//! Every series of a role's registry: defined, registered, created at 0
//! where the label set is fixed, and left out where the role has no use
//! for it.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use super::{AgentBytes, Metrics, CLOSE_REASONS, HANDSHAKE_RESULTS, NO_SEGMENT, SETUP_BUCKETS};
use crate::dr_mode::DrMode;
use crate::refusal::Refusal;

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
}
