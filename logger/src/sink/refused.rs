//! Answers of a destination that a sink refused (too large, malformed,
//! truncated, slow, unusable): counted per reason and logged at most once per
//! interval, so a server answering garbage in a tight retry loop neither goes
//! unnoticed nor floods the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http::Refusal;

/// Least time between two log lines about refused answers of one sink.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of refused answers, per reason, and the log limiter.
#[derive(Debug, Default)]
pub struct ResponseRefusals {
    by_reason: [AtomicU64; Refusal::ALL.len()],
    log: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

fn slot(r: Refusal) -> usize {
    Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

impl ResponseRefusals {
    /// Counts one refused answer and logs it unless one was logged less than
    /// `LOG_INTERVAL` ago (the next line says how many were not).
    pub fn record(&self, sink: &str, refusal: Refusal, records: usize, detail: &str) {
        self.by_reason[slot(refusal)].fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        drop(log);
        tracing::warn!(
            sink,
            reason = refusal.name(),
            records,
            suppressed,
            "refused the answer of the destination; the records stay buffered and are resent: {detail}"
        );
    }

    /// Refused answers for `refusal`.
    pub fn get(&self, refusal: Refusal) -> u64 {
        self.by_reason[slot(refusal)].load(Ordering::Relaxed)
    }

    /// Refused answers, all reasons.
    pub fn total(&self) -> u64 {
        Refusal::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_refusal_per_reason() {
        let r = ResponseRefusals::default();
        for _ in 0..3 {
            r.record("elasticsearch", Refusal::TooLarge, 10, "x");
        }
        r.record("elasticsearch", Refusal::Slow, 10, "y");
        assert_eq!(r.get(Refusal::TooLarge), 3);
        assert_eq!(r.get(Refusal::Slow), 1);
        assert_eq!(r.get(Refusal::Malformed), 0);
        assert_eq!(r.total(), 4);
        assert_eq!(r.log.lock().unwrap().suppressed, 3);
    }
}
