//! Reconnect delays: exponential with full jitter, so many connectors that
//! lost the same peer do not come back in lockstep.

use std::time::Duration;

/// Exponential backoff state for one connector.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// Delays start at `min_ms` and double up to `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        let min_ms = min_ms.max(1);
        Self {
            min_ms,
            max_ms: max_ms.max(min_ms),
            attempt: 0,
        }
    }

    /// The next delay. `random` is any uniformly random u32 (the caller owns
    /// the randomness so this stays deterministic under test). The delay is
    /// drawn from [ceiling/2, ceiling] so it never collapses to zero.
    pub fn next_delay(&mut self, random: u32) -> Duration {
        let ceiling = self
            .min_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = ceiling - half;
        let jitter = (u64::from(random) * (span + 1)) >> 32;
        Duration::from_millis(half + jitter)
    }

    /// Called after a connection that worked, so the next failure starts small.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(100, 1000);
        let ceilings = [100u64, 200, 400, 800, 1000, 1000];
        for c in ceilings {
            let lo = b.clone().next_delay(0).as_millis() as u64;
            let hi = b.clone().next_delay(u32::MAX).as_millis() as u64;
            assert_eq!(lo, c / 2);
            assert_eq!(hi, c);
            b.next_delay(12345);
        }
        b.reset();
        assert_eq!(b.next_delay(u32::MAX).as_millis(), 100);
    }
}
