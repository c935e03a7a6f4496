//! Rate-limited warnings: floods are counted, not logged per event.

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
