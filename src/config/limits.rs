//! `[limits]`: every resource bound, each with a safe default. The README's
//! config reference repeats these defaults; keep them in step.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// Every bound the data path enforces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Tunnels (client and connector connections) an edge holds at once. Default 10000.
    pub max_tunnels: usize,
    /// Flows a process carries at once; the excess is refused. Default 100000.
    pub max_flows: usize,
    /// Concurrent flows on one tunnel (QUIC stream credit). Default 1024.
    pub max_flows_per_tunnel: u32,
    /// Handshakes in progress on an edge; the excess is shed before any crypto. Default 256.
    pub max_handshakes_inflight: usize,
    /// Largest CONNECT preamble. Default 8192.
    pub preamble_bytes: usize,
    /// A flow must send its whole preamble within this. Default 10s.
    #[serde(with = "duration")]
    pub preamble_timeout: Duration,
    /// A tunnel handshake must finish within this. Default 10s.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// A tunnel silent this long is dead; keepalives go at a third of it. Default 30s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// The connector's TCP connect to the app. Default 10s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// On SIGTERM, running flows may finish for this long. Default 30s.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Per-flow receive window (bytes buffered per direction per flow). Default 1 MiB.
    pub flow_window: u32,
    /// Per-tunnel receive window (bytes buffered for all flows of a tunnel).
    /// Default 16 MiB. A flow whose reader stalls holds at most its own
    /// `flow_window` of it, so one slow reader never stalls the others; only
    /// more than `tunnel_window / flow_window` stalled flows at once slow the
    /// rest. 0 removes the cap (`max_flows_per_tunnel * flow_window`), which
    /// lets a sender burst past what the receiver's UDP buffer holds.
    pub tunnel_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tunnels: 10_000,
            max_flows: 100_000,
            max_flows_per_tunnel: 1024,
            max_handshakes_inflight: 256,
            preamble_bytes: 8 * 1024,
            preamble_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            flow_window: 1024 * 1024,
            tunnel_window: 16 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The tunnel-wide window in effect: the configured cap, or every flow's
    /// window added up (saturating).
    pub fn effective_tunnel_window(&self) -> u64 {
        if self.tunnel_window != 0 {
            return u64::from(self.tunnel_window);
        }
        u64::from(self.flow_window).saturating_mul(u64::from(self.max_flows_per_tunnel))
    }

    /// Keepalive period derived from the idle timeout.
    pub fn keepalive(&self) -> Duration {
        (self.idle_timeout / 3).max(Duration::from_millis(100))
    }

    /// The first out-of-range value, as (key, why).
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        let nonzero: [(&'static str, usize); 5] = [
            ("max_tunnels", self.max_tunnels),
            ("max_flows", self.max_flows),
            ("max_flows_per_tunnel", self.max_flows_per_tunnel as usize),
            ("max_handshakes_inflight", self.max_handshakes_inflight),
            ("preamble_bytes", self.preamble_bytes),
        ];
        for (key, v) in nonzero {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.preamble_bytes > 1024 * 1024 {
            return Err(("preamble_bytes", "must be at most 1048576".into()));
        }
        if self.idle_timeout < Duration::from_millis(300) {
            return Err(("idle_timeout", "must be at least 300ms".into()));
        }
        if self.flow_window < 16 * 1024 {
            return Err(("flow_window", "must be at least 16384".into()));
        }
        if self.tunnel_window != 0 && self.tunnel_window < self.flow_window {
            return Err((
                "tunnel_window",
                "must be 0 (no tunnel-wide cap) or at least flow_window".into(),
            ));
        }
        Ok(())
    }
}
