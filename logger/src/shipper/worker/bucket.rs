//! A container's rate limit (`rate_limit`, bytes per second): a token bucket
//! refilled by elapsed time, holding at most one second of tokens or 64 KiB,
//! whichever is more (so that a low rate still moves whole lines).

use std::time::Instant;

/// Tokens never held beyond this, whatever the rate.
const MIN_CAPACITY: f64 = 65536.0;

/// A token bucket of bytes.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket of `rate` bytes per second; `None` for no limit (0).
    #[allow(clippy::cast_precision_loss)] // rates are far below 2^52
    pub(super) fn for_rate(rate: u64) -> Option<Bucket> {
        (rate > 0).then(|| Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        })
    }

    /// Adds the tokens earned since the last refill.
    pub(super) fn refill(&mut self) {
        self.refill_at(Instant::now());
    }

    fn refill_at(&mut self, now: Instant) {
        let cap = self.rate.max(MIN_CAPACITY);
        self.tokens = (self.tokens
            + self.rate * now.saturating_duration_since(self.last).as_secs_f64())
        .min(cap);
        self.last = now;
    }

    /// Whole bytes that may move now.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // non-negative, floored
    pub(super) fn available(&self) -> u64 {
        self.tokens.max(0.0) as u64
    }

    /// Takes `n` bytes (the last splice may overdraw: the next refills pay it back).
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_rate_means_no_bucket() {
        assert!(Bucket::for_rate(0).is_none());
    }

    #[test]
    fn tokens_refill_with_time_up_to_one_second_or_64_kib() {
        let mut b = Bucket::for_rate(1000).unwrap();
        let t0 = b.last;
        assert_eq!(b.available(), 1000);
        b.take(1500);
        assert_eq!(b.available(), 0, "an overdraft is paid back first");
        b.refill_at(t0 + Duration::from_millis(500));
        assert_eq!(b.available(), 0);
        b.refill_at(t0 + Duration::from_secs(2));
        assert_eq!(b.available(), 1500);
        b.refill_at(t0 + Duration::from_secs(600));
        assert_eq!(b.available(), 65536, "a slow rate may hold 64 KiB");
        let mut fast = Bucket::for_rate(1 << 20).unwrap();
        let t = fast.last;
        fast.refill_at(t + Duration::from_secs(60));
        assert_eq!(fast.available(), 1 << 20, "one second of tokens at most");
    }
}
