//! The audit trail: one JSON object per line on stderr, so that journald or
//! any log shipper keeps each decision as one record and a reviewer can grep
//! or `jq` it. Every request privd reads produces exactly one record.

use sapper_shared::rate::TokenBucket;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Instant, SystemTime};

/// Audit lines written at once before the rate bound applies.
const BURST: u32 = 200;
/// Audit lines per second allowed after the burst.
const PER_SECOND: u32 = 50;

/// Bounds the audit output (a token bucket), so that a caller flooding
/// privd with requests cannot flood the journal; what it leaves out is
/// counted, reported in the next line written and in the status reply.
#[derive(Debug)]
pub struct RateBound {
    bucket: TokenBucket,
    pending: u64,
    total: u64,
}

impl RateBound {
    /// A full bucket.
    pub fn new(now: Instant) -> Self {
        let bucket = TokenBucket::new(BURST, PER_SECOND, now);
        RateBound {
            bucket,
            pending: 0,
            total: 0,
        }
    }

    /// `Some(n)`: write this line, after saying that `n` were left out since
    /// the last one written; `None`: leave it out (it is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.bucket.take(now) {
            return Some(std::mem::take(&mut self.pending));
        }
        self.pending += 1;
        self.total += 1;
        None
    }

    /// Lines left out since start.
    pub fn suppressed(&self) -> u64 {
        self.total
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Authorized and carried out.
    Granted,
    /// Rejected by policy; nothing was attempted.
    Refused,
    /// Authorized, but the kernel (or privd's bookkeeping) said no.
    Failed,
}

/// One audited decision.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// From SO_PEERCRED, so not forgeable by the peer.
    pub peer_uid: u32,
    /// From SO_PEERCRED; absent if the kernel did not report one.
    pub peer_pid: Option<i32>,
    /// `connect`, `open_tun`, `route_change`, `status` or `unknown`.
    pub request: &'static str,
    /// Request parameters (peer-supplied strings are escaped by serde).
    pub params: Value,
    /// The outcome.
    pub outcome: Outcome,
    /// Why.
    pub reason: &'a str,
}

/// Renders one line (no trailing newline): `ts` and `audit` first (ts first
/// reads best in a terminal; a struct rather than json!() keeps the order),
/// then the fields of `rest`.
pub fn line(audit: bool, rest: impl Serialize, now: SystemTime) -> String {
    #[derive(Serialize)]
    struct Line<T> {
        ts: String,
        audit: bool,
        #[serde(flatten)]
        rest: T,
    }
    let ts = rfc3339(now);
    // Serializing plain strings, numbers and a Value cannot fail.
    serde_json::to_string(&Line { ts, audit, rest }).unwrap_or_default()
}

/// Operational messages (start, stop, warnings) in the same JSON-lines
/// stream, marked `"audit": false` so they are never mistaken for decisions.
pub fn operational(level: &str, msg: &str) {
    let rest = json!({ "level": level, "msg": msg });
    write_line(line(false, rest, SystemTime::now()));
}

/// `log!(level, format, args…)`: an operational line, formatted in place.
macro_rules! log {
    ($level:literal, $($msg:tt)+) => {
        $crate::audit::operational($level, &format!($($msg)+))
    };
}
pub(crate) use log;

/// One write(2) per line, so lines never interleave or tear.
pub fn write_line(mut line: String) {
    line.push('\n');
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// Shortens peer-supplied text for the log; the frame limit already bounds
/// it, this only keeps lines readable.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// UTC RFC 3339 with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
    let (h, m, s, ms) = (t.hour(), t.minute(), t.second(), t.millisecond());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn audit_line_is_one_json_object_with_every_field() {
        let mut rec = Record {
            peer_uid: 4242,
            peer_pid: Some(77),
            request: "route_change",
            params: json!({ "prefix": "10.1.0.0/16\n\"x", "add": true }),
            outcome: Outcome::Refused,
            reason: "permission denied: only netd's uid may use privd",
        };
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        let l = line(true, &rec, t);
        assert!(!l.contains('\n'), "one line even with a newline in params");
        let v: Value = serde_json::from_str(&l).unwrap();
        let want = json!({ "ts": "2024-05-01T12:00:00.123Z", "audit": true, "peer_uid": 4242,
            "peer_pid": 77, "request": "route_change", "params": rec.params,
            "outcome": "refused", "reason": rec.reason });
        assert_eq!(v, want);
        assert!(l.starts_with(r#"{"ts":"2024-05-01T12:00:00.123Z","audit":true,"peer_uid":4242,"#));
        (rec.peer_pid, rec.outcome) = (None, Outcome::Granted);
        let v: Value = serde_json::from_str(&line(true, &rec, UNIX_EPOCH)).unwrap();
        assert_eq!(
            (&v["outcome"], &v["peer_pid"]),
            (&json!("granted"), &Value::Null)
        );
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        rec.outcome = Outcome::Failed;
        assert!(line(true, &rec, UNIX_EPOCH).contains(r#""outcome":"failed""#));
        // Operational lines share the layout, marked as no decision.
        let op = line(false, json!({ "level": "info", "msg": "m" }), UNIX_EPOCH);
        assert!(op.starts_with(r#"{"ts":"1970-01-01T00:00:00.000Z","audit":false,"level""#));
    }

    #[test]
    fn rate_bound_counts_what_it_leaves_out() {
        let t0 = Instant::now();
        let mut b = RateBound::new(t0);
        for _ in 0..BURST {
            assert_eq!(b.admit(t0), Some(0));
        }
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.suppressed(), 2);
        // 100 ms later five more are allowed; the first says two were cut.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.admit(t1), Some(2));
        for _ in 1..PER_SECOND / 10 {
            assert_eq!(b.admit(t1), Some(0));
        }
        assert_eq!(b.admit(t1), None);
        // A long quiet spell refills to the burst, no further.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..BURST {
            assert!(b.admit(t2).is_some());
        }
        assert_eq!(b.admit(t2), None);
        assert_eq!(b.suppressed(), 4);
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long() {
        assert_eq!(clip("10.0.0.0/8"), "10.0.0.0/8");
        let long = "é".repeat(200);
        assert_eq!(clip(&long).chars().count(), 81);
    }
}
