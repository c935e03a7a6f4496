//! A flow's handles: the per-segment counters resolved once per compiled
//! config, and the guard that keeps `lifeboat_flows_active` and
//! `lifeboat_flows_closed_total{reason}` right on every way out of a flow.

use prometheus::{IntCounter, IntGauge};

use super::{Metrics, CLOSE_REASONS, NO_SEGMENT};
use crate::refusal::Refusal;

impl Metrics {
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
