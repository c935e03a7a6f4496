//! Stalled flows cannot stall their neighbours. Each flow over a tunnel may
//! hold up to `flow_window` of the tunnel's window (`tunnel_window`) while
//! its reader does not read: enough such flows and the tunnel's window is
//! spent, and every other flow on it stops too. A flow whose write has been
//! blocked for [`STALL_AFTER`] counts as stalled on each tunnel it crosses;
//! when a tunnel already has as many stalled flows as its window can hold
//! while leaving one flow window for the others, the one stalled longest is
//! closed (`lifeboat_flows_closed_total{reason="stalled"}`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A write blocked this long marks its flow stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// The stalled flows of one tunnel, oldest first.
pub struct Stalls {
    /// Stalled flows this tunnel holds before the oldest is closed.
    limit: usize,
    next: AtomicU64,
    flows: Mutex<VecDeque<(u64, CancellationToken)>>,
}

impl Stalls {
    /// For a tunnel whose window holds `tunnel_window` bytes and each flow
    /// up to `flow_window`: stalled flows may hold half of it; the other
    /// half stays for the flows that move (and for those about to stall).
    pub fn new(tunnel_window: u64, flow_window: u32) -> Self {
        let fits = tunnel_window / u64::from(flow_window.max(1));
        Self {
            limit: usize::try_from(fits / 2).unwrap_or(usize::MAX).max(1),
            next: AtomicU64::new(0),
            flows: Mutex::new(VecDeque::new()),
        }
    }

    /// Stalled flows now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Note a stalled flow (`stop` closes it); the flows stalled longest
    /// are closed while the tunnel is over its limit.
    fn add(&self, stop: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut q = self.lock();
        q.push_back((id, stop));
        while q.len() > self.limit {
            if let Some((_, oldest)) = q.pop_front() {
                oldest.cancel();
            }
        }
        id
    }

    fn remove(&self, id: u64) {
        let mut q = self.lock();
        if let Some(i) = q.iter().position(|(x, _)| *x == id) {
            q.remove(i);
        }
    }
}

/// The most places a flow's stall counts: its client tunnel, its connector
/// tunnel, the edge's `memory_budget`.
const PLACES: usize = 3;

/// One flow's link to the tunnels it crosses. Made for every flow: no
/// allocation, and nothing happens until a write blocks.
pub struct FlowStalls {
    tunnels: [Option<Arc<Stalls>>; PLACES],
    /// Cancelled when a tunnel closes this flow for stalling.
    pub stop: CancellationToken,
    /// Directions blocked right now (a flow counts once while either is).
    blocked: AtomicUsize,
    ids: Mutex<[u64; PLACES]>,
}

impl FlowStalls {
    pub fn new(tunnels: [Option<Arc<Stalls>>; PLACES]) -> Self {
        Self {
            tunnels,
            stop: CancellationToken::new(),
            blocked: AtomicUsize::new(0),
            ids: Mutex::new([0; PLACES]),
        }
    }

    /// A write of this flow has been blocked for [`STALL_AFTER`]: counted
    /// stalled until the guard drops.
    pub fn stalled(&self) -> StallGuard<'_> {
        if self.blocked.fetch_add(1, Ordering::AcqRel) == 0 {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            for (t, id) in self.tunnels.iter().zip(ids.iter_mut()) {
                if let Some(t) = t {
                    *id = t.add(self.stop.clone());
                }
            }
        }
        StallGuard(self)
    }
}

/// Held while a write of a flow is stalled.
pub struct StallGuard<'a>(&'a FlowStalls);

impl Drop for StallGuard<'_> {
    fn drop(&mut self) {
        let f = self.0;
        if f.blocked.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ids = f.ids.lock().unwrap_or_else(|e| e.into_inner());
            for (t, id) in f.tunnels.iter().zip(ids.iter()) {
                if let Some(t) = t {
                    t.remove(*id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_stalled_flow_goes_when_the_window_would_be_spent() {
        // 6 flow windows per tunnel: 3 stalled flows at most.
        let tunnel = Arc::new(Stalls::new(6 << 20, 1 << 20));
        let flows: Vec<FlowStalls> = (0..4)
            .map(|_| FlowStalls::new([Some(Arc::clone(&tunnel)), None, None]))
            .collect();
        let g0 = flows[0].stalled();
        let g0b = flows[0].stalled();
        assert_eq!(tunnel.len(), 1, "a flow blocked both ways counts once");
        let _g1 = flows[1].stalled();
        let _g2 = flows[2].stalled();
        assert!(!flows[0].stop.is_cancelled());
        let _g3 = flows[3].stalled();
        assert!(
            flows[0].stop.is_cancelled(),
            "the oldest stalled flow is closed"
        );
        assert!(!flows[1].stop.is_cancelled());
        assert_eq!(tunnel.len(), 3);
        drop((g0, g0b));
        assert_eq!(tunnel.len(), 3, "a closed flow was already out");
    }

    #[test]
    fn a_flow_that_moves_again_is_no_longer_counted() {
        let tunnel = Arc::new(Stalls::new(16 << 20, 1 << 20));
        let f = FlowStalls::new([Some(Arc::clone(&tunnel)), None, None]);
        drop(f.stalled());
        assert!(tunnel.is_empty());
    }
}
