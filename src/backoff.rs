//! Jittered exponential backoff for reconnects: never gives up, never
//! synchronises a fleet (each wait is drawn from the upper half of the
//! current step).

use std::time::Duration;

use rand::Rng;

/// Backoff state of one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, step: 0 }
    }

    /// The default for tunnels: 100 ms doubling up to 30 s.
    pub fn tunnel() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// The ceiling of the next wait (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.step.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next wait: uniform in [ceiling/2, ceiling].
    pub fn next_delay(&mut self) -> Duration {
        let c = self.ceiling();
        self.step = self.step.saturating_add(1);
        let half = c / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// A uniformly random delay in `[0, max]`, spreading a fleet's reactions.
pub fn spread(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    rand::thread_rng().gen_range(Duration::ZERO..=max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_in_range() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..40 {
            let c = b.ceiling();
            assert!(c >= last_ceiling);
            assert!(c <= Duration::from_secs(2));
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            last_ceiling = c;
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
