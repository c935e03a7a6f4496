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
    /// Tunnels one identity (a client or connector certificate) may hold at
    /// an edge. Default 8.
    pub max_tunnels_per_identity: usize,
    /// Flows one client identity may have at an edge at once (QUIC streams
    /// and TLS flow connections). Default 4096.
    pub max_flows_per_identity: usize,
    /// Concurrent flows on one client tunnel (QUIC stream credit). Default 1024.
    pub max_flows_per_tunnel: u32,
    /// Concurrent flows on one connector tunnel: the stream credit a
    /// connector gives its edge, and what the edge counts on. Set the same
    /// on edges and connectors. One client identity may hold at most half of
    /// a connector tunnel's flows, so one user cannot take a connector from
    /// the others; larger than `max_flows_per_tunnel`, so one client tunnel
    /// alone never fills it. Default 4096.
    pub max_flows_per_connector_tunnel: u32,
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
    /// TLS: a new connection must send its ClientHello within this before it
    /// may hold a handshake slot. Default 3s.
    #[serde(with = "duration")]
    pub client_hello_timeout: Duration,
    /// A tunnel silent this long is dead; keepalives go at a third of it. Default 30s.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// The edge closes a flow (any transport) when nothing moved either way
    /// for this long; 0 keeps silent flows as long as their tunnel lives.
    /// Default 1h.
    #[serde(with = "duration")]
    pub flow_idle_timeout: Duration,
    /// The connector's TCP connect to the app. Default 10s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// On SIGTERM, running flows may finish for this long. Default 30s.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Bytes the edge may hold buffered for flows whose readers stall (a
    /// stalled flow counts as two `flow_window`s: the window it receives
    /// into and the one it sends into); beyond it the flows stalled longest
    /// are closed (`flows_closed{reason="stalled"}`). Default 512 MiB.
    pub memory_budget: u64,
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
            max_tunnels_per_identity: 8,
            max_flows_per_identity: 4096,
            max_flows_per_tunnel: 1024,
            max_flows_per_connector_tunnel: 4096,
            max_handshakes_inflight: 256,
            preamble_bytes: 8 * 1024,
            preamble_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            flow_idle_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            memory_budget: 512 * 1024 * 1024,
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

    /// Every duration key with its range, as (key, value, least, most).
    /// The README's config reference lists the same ranges.
    fn durations(&self) -> [(&'static str, Duration, Duration, Duration); 7] {
        [
            ("preamble_timeout", self.preamble_timeout, MS_100, MIN_10),
            ("handshake_timeout", self.handshake_timeout, MS_100, MIN_10),
            (
                "client_hello_timeout",
                self.client_hello_timeout,
                MS_100,
                MIN_10,
            ),
            ("idle_timeout", self.idle_timeout, MS_300, HOUR),
            (
                "flow_idle_timeout",
                self.flow_idle_timeout,
                Duration::ZERO,
                7 * DAY,
            ),
            ("connect_timeout", self.connect_timeout, MS_100, MIN_10),
            ("drain_timeout", self.drain_timeout, Duration::ZERO, HOUR),
        ]
    }

    /// Every count and size key with its range, as (key, value, least, most).
    fn sizes(&self) -> [(&'static str, u64, u64, u64); 10] {
        [
            (
                "memory_budget",
                self.memory_budget,
                4 * MIB,
                1024 * 1024 * MIB,
            ),
            (
                "max_tunnels_per_identity",
                self.max_tunnels_per_identity as u64,
                1,
                1_000_000,
            ),
            (
                "max_flows_per_identity",
                self.max_flows_per_identity as u64,
                1,
                10_000_000,
            ),
            ("max_tunnels", self.max_tunnels as u64, 1, 1_000_000),
            ("max_flows", self.max_flows as u64, 1, 10_000_000),
            (
                "max_flows_per_tunnel",
                self.max_flows_per_tunnel.into(),
                1,
                100_000,
            ),
            (
                "max_flows_per_connector_tunnel",
                self.max_flows_per_connector_tunnel.into(),
                1,
                1_000_000,
            ),
            (
                "max_handshakes_inflight",
                self.max_handshakes_inflight as u64,
                1,
                100_000,
            ),
            ("preamble_bytes", self.preamble_bytes as u64, 256, MIB),
            ("flow_window", self.flow_window.into(), 16 * 1024, 256 * MIB),
        ]
    }

    /// The first out-of-range value, as (key, why).
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, v, least, most) in self.sizes() {
            if !(least..=most).contains(&v) {
                return Err((key, format!("{v} is out of range: {least} to {most}")));
            }
        }
        for (key, v, least, most) in self.durations() {
            check_duration(v, least, most).map_err(|why| (key, why))?;
        }
        if self.tunnel_window != 0 && !(self.flow_window..=GIB).contains(&self.tunnel_window) {
            return Err((
                "tunnel_window",
                format!(
                    "{} is out of range: 0 (no tunnel-wide cap) or flow_window ({}) to {GIB}",
                    self.tunnel_window, self.flow_window
                ),
            ));
        }
        Ok(())
    }
}

const MIB: u64 = 1024 * 1024;
const GIB: u32 = 1024 * 1024 * 1024;
const MS_100: Duration = Duration::from_millis(100);
const MS_300: Duration = Duration::from_millis(300);
const MIN_10: Duration = Duration::from_secs(600);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `Err(why)` when `v` lies outside `least..=most`; durations are printed
/// the way they are written in the config.
pub(crate) fn check_duration(v: Duration, least: Duration, most: Duration) -> Result<(), String> {
    if (least..=most).contains(&v) {
        return Ok(());
    }
    let show = |d: Duration| humantime::format_duration(d).to_string();
    Err(format!(
        "{} is out of range: {} to {}",
        show(v),
        show(least),
        show(most)
    ))
}
