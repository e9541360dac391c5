//! Ping/pong bookkeeping: RTT from echoed timestamps and liveness from the
//! number of pings still unanswered. Times are on the caller's monotonic
//! clock; the peer's clock is never trusted. The wire carries milliseconds,
//! but the `_us` calls keep the sub-millisecond part locally, so a LAN link
//! does not read as 0 ms.

use crate::proto::data::{Ping, Pong};
use std::collections::VecDeque;

/// Replies to a peer's Ping.
pub fn pong_for(ping: &Ping) -> Pong {
    Pong {
        timestamp_ms: ping.timestamp_ms,
    }
}

/// Tracks outstanding pings and the measured RTT for one peer.
#[derive(Debug, Clone)]
pub struct Latency {
    /// (wire timestamp in ms, sub-millisecond part in µs) per ping.
    outstanding: VecDeque<(u64, u16)>,
    miss_limit: usize,
    last_rtt_ms: Option<f64>,
    smoothed_rtt_ms: Option<f64>,
}

impl Latency {
    /// A tracker that declares the peer dead once `miss_limit` pings are
    /// unanswered. The outstanding list is bounded by that limit.
    pub fn new(miss_limit: usize) -> Self {
        let miss_limit = miss_limit.max(1);
        Self {
            outstanding: VecDeque::with_capacity(miss_limit),
            miss_limit,
            last_rtt_ms: None,
            smoothed_rtt_ms: None,
        }
    }

    /// A new miss limit (a reload of `netd.ping_miss_limit`): pings already
    /// unanswered count against it, so a lower limit may declare the peer
    /// dead at the next keepalive. The outstanding list stays bounded by it.
    pub fn set_miss_limit(&mut self, miss_limit: usize) {
        self.miss_limit = miss_limit.max(1);
        while self.outstanding.len() > self.miss_limit {
            self.outstanding.pop_front();
        }
    }

    /// Records a ping sent at `now_ms` and returns it.
    pub fn ping(&mut self, now_ms: u64) -> Ping {
        self.ping_at(now_ms, 0)
    }

    /// Records a ping sent at `now_us` (microseconds) and returns it.
    pub fn ping_us(&mut self, now_us: u64) -> Ping {
        self.ping_at(now_us / 1000, (now_us % 1000) as u16)
    }

    fn ping_at(&mut self, ms: u64, frac_us: u16) -> Ping {
        if self.outstanding.len() >= self.miss_limit {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((ms, frac_us));
        Ping { timestamp_ms: ms }
    }

    /// Handles a Pong received at `now_ms`. Returns the RTT if the pong
    /// answers a ping we sent; pongs for unknown timestamps are ignored.
    /// Answering one ping also clears every older one: the peer is alive.
    pub fn pong(&mut self, pong: &Pong, now_ms: u64) -> Option<f64> {
        self.pong_at(pong, now_ms, 0)
    }

    /// [`Latency::pong`] with the receive time in microseconds.
    pub fn pong_us(&mut self, pong: &Pong, now_us: u64) -> Option<f64> {
        self.pong_at(pong, now_us / 1000, (now_us % 1000) as u16)
    }

    fn pong_at(&mut self, pong: &Pong, now_ms: u64, now_frac_us: u16) -> Option<f64> {
        let idx = self
            .outstanding
            .iter()
            .position(|&(t, _)| t == pong.timestamp_ms)?;
        let sent_frac_us = self.outstanding[idx].1;
        self.outstanding.drain(..=idx);
        let whole = now_ms.saturating_sub(pong.timestamp_ms) as f64;
        let frac = (f64::from(now_frac_us) - f64::from(sent_frac_us)) / 1000.0;
        let rtt = (whole + frac).max(0.0);
        self.last_rtt_ms = Some(rtt);
        // RFC 6298-style smoothing (alpha = 1/8) so one slow pong does not
        // swing the figure operators see.
        self.smoothed_rtt_ms = Some(match self.smoothed_rtt_ms {
            None => rtt,
            Some(s) => s + (rtt - s) / 8.0,
        });
        Some(rtt)
    }

    /// Unanswered pings.
    pub fn missed(&self) -> usize {
        self.outstanding.len()
    }

    /// True when `miss_limit` pings in a row went unanswered.
    pub fn is_dead(&self) -> bool {
        self.outstanding.len() >= self.miss_limit
    }

    /// The most recent RTT.
    pub fn last_rtt_ms(&self) -> Option<f64> {
        self.last_rtt_ms
    }

    /// The smoothed RTT.
    pub fn smoothed_rtt_ms(&self) -> Option<f64> {
        self.smoothed_rtt_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_from_echoed_timestamp() {
        let mut l = Latency::new(3);
        let p = l.ping(1000);
        let pong = pong_for(&p);
        assert_eq!(l.pong(&pong, 1012), Some(12.0));
        assert_eq!(l.last_rtt_ms(), Some(12.0));
        assert_eq!(l.smoothed_rtt_ms(), Some(12.0));
        let p2 = l.ping(2000);
        assert_eq!(l.pong(&pong_for(&p2), 2020), Some(20.0));
        assert_eq!(l.smoothed_rtt_ms(), Some(13.0));
        assert_eq!(l.missed(), 0);
    }

    #[test]
    fn sub_millisecond_rtt_is_kept() {
        let mut l = Latency::new(3);
        let p = l.ping_us(5_000_250);
        assert_eq!(p.timestamp_ms, 5_000);
        let rtt = l.pong_us(&pong_for(&p), 5_000_650).unwrap();
        assert!((rtt - 0.4).abs() < 1e-9, "{rtt}");
        // Across a millisecond boundary.
        let p = l.ping_us(7_000_900);
        let rtt = l.pong_us(&pong_for(&p), 7_001_200).unwrap();
        assert!((rtt - 0.3).abs() < 1e-9, "{rtt}");
    }

    #[test]
    fn unknown_and_duplicate_pongs_ignored() {
        let mut l = Latency::new(3);
        let p = l.ping(10);
        assert_eq!(l.pong(&Pong { timestamp_ms: 9 }, 20), None);
        assert!(l.pong(&pong_for(&p), 20).is_some());
        assert_eq!(l.pong(&pong_for(&p), 30), None);
    }

    #[test]
    fn dead_after_miss_limit_and_bounded() {
        let mut l = Latency::new(3);
        l.ping(1);
        l.ping(2);
        assert!(!l.is_dead());
        l.ping(3);
        assert!(l.is_dead());
        for t in 4..100 {
            l.ping(t);
        }
        assert_eq!(l.missed(), 3);
        // A late answer to the newest ping revives the peer.
        assert_eq!(l.pong(&Pong { timestamp_ms: 99 }, 105), Some(6.0));
        assert!(!l.is_dead());
    }
}
