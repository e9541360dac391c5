//! Log lines a peer can cause (its Disconnect and RoleTransition reasons,
//! warnings about what it sent) at a bounded rate per link: a peer that
//! floods us with refused announcements or role changes costs a counter,
//! not the log. Within each window a link gets [`PER_WINDOW`] lines; the
//! rest are counted and reported as one "suppressed" summary with the next
//! line after the window, or when the link goes down.

use sapper_control::LinkId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Length of one window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines per link per window.
pub const PER_WINDOW: u32 = 10;

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines of this link were dropped before it (say
    /// so first).
    Log { suppressed: u64 },
    /// Drop it (counted).
    Suppress,
}

/// One window per live link (entries go with their link: bounded by the
/// number of links).
#[derive(Default)]
pub struct PeerLog {
    links: HashMap<LinkId, Window>,
}

impl PeerLog {
    /// Whether a line about `link` may be logged at `now`.
    pub fn check(&mut self, link: LinkId, now: Instant) -> Verdict {
        let w = self.links.entry(link).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= WINDOW {
            let suppressed = std::mem::take(&mut w.suppressed);
            w.start = now;
            w.logged = 1;
            return Verdict::Log { suppressed };
        }
        if w.logged < PER_WINDOW {
            w.logged += 1;
            Verdict::Log { suppressed: 0 }
        } else {
            w.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// The link is gone: how many of its lines were suppressed and not yet
    /// reported.
    pub fn forget(&mut self, link: LinkId) -> u64 {
        self.links.remove(&link).map_or(0, |w| w.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_link_then_summarised() {
        let mut log = PeerLog::default();
        let t0 = Instant::now();
        let (a, b) = (LinkId(1), LinkId(2));
        for _ in 0..PER_WINDOW {
            assert_eq!(log.check(a, t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(log.check(a, t0 + Duration::from_secs(1)), Verdict::Suppress);
        }
        // Another link has its own budget.
        assert_eq!(log.check(b, t0), Verdict::Log { suppressed: 0 });
        // After the window, the next line carries the count.
        assert_eq!(log.check(a, t0 + WINDOW), Verdict::Log { suppressed: 1000 });
        assert_eq!(log.check(a, t0 + WINDOW), Verdict::Log { suppressed: 0 });
        // A fresh window: PER_WINDOW lines again (one already used).
        for _ in 2..PER_WINDOW {
            assert_eq!(log.check(a, t0 + WINDOW), Verdict::Log { suppressed: 0 });
        }
        assert_eq!(log.check(a, t0 + WINDOW), Verdict::Suppress);
        assert_eq!(log.forget(a), 1);
        assert_eq!(log.forget(a), 0);
        assert_eq!(log.forget(b), 0);
    }
}
