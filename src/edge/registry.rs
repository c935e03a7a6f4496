//! The connector tunnels an edge holds, by connector group, and the choice
//! of one for a flow: fewest active flows among the connected connectors of
//! the groups that serve the segment.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

pub use crate::transport::link::Link;
use crate::trust::SpiffeId;

/// One connector tunnel.
pub struct ConnectorTunnel {
    pub id: u64,
    pub peer: SpiffeId,
    pub group: String,
    pub link: Link,
    /// Flows currently carried.
    pub active: AtomicUsize,
    /// Cancelled when a newer tunnel of the same identity replaced this one
    /// (a restarted connector: the old tunnel is dead but not yet timed out).
    pub superseded: tokio_util::sync::CancellationToken,
    /// Until when (ms on [`clock_ms`]) the tunnel is suspect: it did not
    /// acknowledge a flow in time (a frozen connector).
    pub suspect_until: AtomicU64,
    /// Its flows whose readers stopped reading (`crate::stall`).
    pub stalls: Arc<crate::stall::Stalls>,
    /// Its flows by client identity: one identity may hold at most half of
    /// the tunnel's streams ([`share_of`]), so one user cannot take a
    /// connector from everyone else.
    pub shares: Arc<super::quota::Quotas>,
}

/// How many flows one client identity may hold on one connector tunnel
/// that carries at most `capacity` (`[limits]
/// max_flows_per_connector_tunnel`).
pub fn share_of(capacity: u32) -> usize {
    usize::try_from(capacity / 2).unwrap_or(usize::MAX).max(1)
}

/// How long a connector that did not acknowledge a flow ranks last.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

use crate::splice::clock_ms;

impl ConnectorTunnel {
    pub fn is_suspect(&self) -> bool {
        self.suspect_until.load(Ordering::Relaxed) > clock_ms()
    }

    /// Rank this tunnel last for [`SUSPECT_FOR`].
    pub fn suspect(&self) {
        self.suspect_until.store(
            clock_ms() + SUSPECT_FOR.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// It answered: trust it again.
    pub fn clear_suspect(&self) {
        self.suspect_until.store(0, Ordering::Relaxed);
    }
}

/// Holds a connector's flow count up for as long as it lives.
pub struct ActiveGuard(Arc<ConnectorTunnel>);

impl ActiveGuard {
    pub fn new(t: Arc<ConnectorTunnel>) -> Self {
        t.active.fetch_add(1, Ordering::Relaxed);
        Self(t)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connector tunnels by group.
#[derive(Default)]
pub struct Registry {
    groups: DashMap<String, Vec<Arc<ConnectorTunnel>>>,
}

impl Registry {
    /// Add `t`; older tunnels of the same identity are taken out (they
    /// carry no new flow) and told so through `superseded`.
    pub fn add(&self, t: Arc<ConnectorTunnel>) {
        let mut v = self.groups.entry(t.group.clone()).or_default();
        v.retain(|old| {
            let same = old.peer == t.peer;
            if same {
                old.superseded.cancel();
            }
            !same
        });
        v.push(t);
    }

    pub fn remove(&self, group: &str, id: u64) {
        if let Some(mut v) = self.groups.get_mut(group) {
            v.retain(|t| t.id != id);
        }
    }

    /// Connected connectors of a group.
    pub fn count(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |v| v.len())
    }

    /// The least loaded live connector of any of `groups` with fewer than
    /// `capacity` flows (a full one would keep the flow waiting for a
    /// stream), skipping `exclude`.
    pub fn pick(
        &self,
        groups: &[String],
        exclude: &[u64],
        capacity: u32,
    ) -> Option<Arc<ConnectorTunnel>> {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        let mut best: Option<(usize, &Arc<ConnectorTunnel>)> = None;
        let mut refs = Vec::with_capacity(groups.len());
        for g in groups {
            if let Some(v) = self.groups.get(g) {
                refs.push(v);
            }
        }
        for v in &refs {
            for t in v.iter() {
                let active = t.active.load(Ordering::Relaxed);
                if exclude.contains(&t.id) || active >= capacity || t.link.is_closed() {
                    continue;
                }
                // A tunnel that just failed to answer ranks after every
                // answering one, whatever its load (used only if alone).
                let penalty = if t.is_suspect() { usize::MAX / 2 } else { 0 };
                let load = active.saturating_add(penalty);
                if best.is_none_or(|(l, _)| load < l) {
                    best = Some((load, t));
                }
            }
        }
        best.map(|(_, t)| Arc::clone(t))
    }
}
