//! A token bucket over an injected clock: the one rate rule behind privd's
//! audit bound and netd's limit on a link's control messages. Counted in
//! millionths of a token so that integer arithmetic loses nothing between
//! calls that come microseconds apart.

use std::time::Instant;

const UNIT: u64 = 1_000_000;

/// At most `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u64,
    per_second: u64,
    micro_tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        let (burst, per_second) = (u64::from(burst), u64::from(per_second));
        TokenBucket {
            burst,
            per_second,
            micro_tokens: burst * UNIT,
            last: now,
        }
    }

    /// Takes one token if there is one (`true`), after refilling for the
    /// time since the last call; a clock that goes back refills nothing.
    pub fn take(&mut self, now: Instant) -> bool {
        let micros = now.saturating_duration_since(self.last).as_micros();
        let refill = u64::try_from(micros)
            .unwrap_or(u64::MAX)
            .saturating_mul(self.per_second);
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(refill)
            .min(self.burst * UNIT);
        self.last = self.last.max(now);
        match self.micro_tokens.checked_sub(UNIT) {
            Some(left) => {
                self.micro_tokens = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_then_refill_to_burst_only() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 10, t0);
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3);
        // 10 per second: one every 100 ms, also when asked every millisecond.
        let mut got = 0;
        for ms in 1..=1000 {
            got += usize::from(b.take(t0 + Duration::from_millis(ms)));
        }
        assert_eq!(got, 10);
        // An hour of quiet gives the burst back, no more.
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(t1)).count(), 3);
        // Time going back costs nothing and grants nothing.
        assert!(!b.take(t0));
        assert!(b.take(t1 + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_is_the_burst_once() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 0, t0);
        let later = t0 + Duration::from_secs(86_400);
        assert_eq!((0..5).filter(|_| b.take(later)).count(), 2);
    }
}
