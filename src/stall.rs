//! Stalled flows cannot stall their neighbours. Each flow over a tunnel may
//! hold up to `flow_window` of the tunnel's window (`tunnel_window`) while
//! its reader does not read: enough such flows and the tunnel's window is
//! spent, and every other flow on it stops too. A flow whose write has been
//! blocked for [`STALL_AFTER`] counts as stalled on each tunnel it crosses;
//! when a tunnel already has as many stalled flows as its window can hold
//! while leaving one flow window for the others, one is closed
//! (`lifeboat_flows_closed_total{reason="stalled"}`): the one stalled
//! longest of the client identity with the most stalled flows there, so a
//! user who stalls hundreds of flows loses his own, not another user's one
//! flow that was slow for a moment.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A write blocked this long marks its flow stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// One stalled flow: its number, its client identity, and how to close it.
type Stalled = (u64, Arc<str>, CancellationToken);

/// The stalled flows of one tunnel, oldest first.
pub struct Stalls {
    /// Stalled flows this tunnel holds before one is closed.
    limit: usize,
    next: AtomicU64,
    flows: Mutex<VecDeque<Stalled>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Stalled>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Note a stalled flow of client `owner` (`stop` closes it); while the
    /// tunnel is over its limit, the owner with the most stalled flows
    /// loses the one stalled longest.
    fn add(&self, owner: &Arc<str>, stop: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut q = self.lock();
        q.push_back((id, Arc::clone(owner), stop));
        while q.len() > self.limit {
            let i = oldest_of_the_most_stalled(&q);
            if let Some((_, _, stop)) = q.remove(i) {
                stop.cancel();
            }
        }
        id
    }

    fn remove(&self, id: u64) {
        let mut q = self.lock();
        if let Some(i) = q.iter().position(|(x, _, _)| *x == id) {
            q.remove(i);
        }
    }
}

/// The position in `q` (oldest first, not empty) of the oldest flow of the
/// owner with the most flows in it; ties go to the owner stalled longest.
fn oldest_of_the_most_stalled(q: &VecDeque<Stalled>) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::with_capacity(q.len());
    for (_, owner, _) in q {
        *counts.entry(owner).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    q.iter()
        .position(|(_, owner, _)| counts.get(&**owner) == Some(&most))
        .unwrap_or(0)
}

/// The most places a flow's stall counts: its client tunnel, its connector
/// tunnel, the edge's `memory_budget`.
const PLACES: usize = 3;

/// One flow's link to the tunnels it crosses. Made for every flow: no
/// allocation, and nothing happens until a write blocks.
pub struct FlowStalls {
    tunnels: [Option<Arc<Stalls>>; PLACES],
    /// The flow's client identity.
    owner: Arc<str>,
    /// Cancelled when a tunnel closes this flow for stalling.
    pub stop: CancellationToken,
    /// Directions blocked right now (a flow counts once while either is).
    blocked: AtomicUsize,
    ids: Mutex<[u64; PLACES]>,
}

impl FlowStalls {
    pub fn new(owner: Arc<str>, tunnels: [Option<Arc<Stalls>>; PLACES]) -> Self {
        Self {
            tunnels,
            owner,
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
                    *id = t.add(&self.owner, self.stop.clone());
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
            .map(|_| FlowStalls::new("bob".into(), [Some(Arc::clone(&tunnel)), None, None]))
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
    fn the_user_with_the_most_stalled_flows_loses_one_of_his() {
        // 3 stalled flows at most; alice's one stalled first.
        let tunnel = Arc::new(Stalls::new(6 << 20, 1 << 20));
        let place = || [Some(Arc::clone(&tunnel)), None, None];
        let alice = FlowStalls::new("alice".into(), place());
        let bob: Vec<FlowStalls> = (0..3)
            .map(|_| FlowStalls::new("bob".into(), place()))
            .collect();
        let _a = alice.stalled();
        let _b: Vec<_> = bob.iter().map(FlowStalls::stalled).collect();
        assert!(
            !alice.stop.is_cancelled(),
            "alice's flow is not bob's to lose"
        );
        assert!(bob[0].stop.is_cancelled(), "bob's oldest goes");
        assert!(!bob[1].stop.is_cancelled() && !bob[2].stop.is_cancelled());
        assert_eq!(tunnel.len(), 3);
    }

    #[test]
    fn a_flow_that_moves_again_is_no_longer_counted() {
        let tunnel = Arc::new(Stalls::new(16 << 20, 1 << 20));
        let f = FlowStalls::new("bob".into(), [Some(Arc::clone(&tunnel)), None, None]);
        drop(f.stalled());
        assert!(tunnel.is_empty());
    }
}
