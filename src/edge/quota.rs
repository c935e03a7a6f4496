//! Per-identity quotas (`[limits] max_tunnels_per_identity`,
//! `max_flows_per_identity`): one certificate, stolen or misbehaving,
//! cannot take every tunnel or flow slot of the edge from everyone else.
//! Counts live in a map keyed by SPIFFE id; a guard gives its unit back on
//! drop and the entry goes when it reaches zero, so the map holds only
//! identities with something open.

use std::sync::Arc;

use dashmap::DashMap;

/// What one identity holds.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    tunnels: usize,
    flows: usize,
}

/// Which count a guard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tunnel,
    Flow,
}

/// The per-identity counts of one edge.
#[derive(Default)]
pub struct Quotas {
    held: DashMap<Arc<str>, Held>,
}

/// One unit of an identity's quota, given back on drop.
pub struct QuotaGuard {
    quotas: Arc<Quotas>,
    id: Arc<str>,
    kind: Kind,
}

impl Quotas {
    /// Take one `kind` for `id` if it holds fewer than `max`.
    /// `id` is shared, not copied: a flow costs no allocation here.
    pub fn take(self: &Arc<Self>, id: &Arc<str>, kind: Kind, max: usize) -> Option<QuotaGuard> {
        let mut e = self.held.entry(Arc::clone(id)).or_default();
        let n = match kind {
            Kind::Tunnel => &mut e.tunnels,
            Kind::Flow => &mut e.flows,
        };
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(e);
        Some(QuotaGuard {
            quotas: Arc::clone(self),
            id: Arc::clone(id),
            kind,
        })
    }

    /// Identities holding anything (for tests and debugging).
    /// (Also used per connector tunnel: a client identity's share of it.)
    pub fn identities(&self) -> usize {
        self.held.len()
    }
}

impl QuotaGuard {
    /// The identity this unit is counted for.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let empty = match self.quotas.held.get_mut(&self.id) {
            Some(mut e) => {
                let n = match self.kind {
                    Kind::Tunnel => &mut e.tunnels,
                    Kind::Flow => &mut e.flows,
                };
                *n = n.saturating_sub(1);
                *e == Held::default()
            }
            None => false,
        };
        if empty {
            self.quotas
                .held
                .remove_if(&self.id, |_, h| *h == Held::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_identity_and_gives_back_on_drop() {
        let q = Arc::new(Quotas::default());
        let (a_id, b_id): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let a: Vec<_> = (0..3)
            .filter_map(|_| q.take(&a_id, Kind::Flow, 2))
            .collect();
        assert_eq!(a.len(), 2, "a third flow of `a` is over its quota");
        let b = q.take(&b_id, Kind::Flow, 2);
        assert!(b.is_some(), "another identity is not affected");
        let t = q.take(&a_id, Kind::Tunnel, 1);
        assert!(t.is_some(), "tunnels and flows are counted apart");
        assert!(q.take(&a_id, Kind::Tunnel, 1).is_none());
        drop(a);
        assert!(q.take(&a_id, Kind::Flow, 2).is_some());
        drop((b, t));
        assert_eq!(q.identities(), 0, "entries go when nothing is held");
    }
}
