//! Exponential backoff with jitter, and the one wait between attempts of
//! every sink: interrupted at once by a stop or an interrupt of its
//! [`Control`].

use std::time::Duration;

use super::control::{Control, Wake};

/// Backoff state: `base * 2^attempt`, capped at `max`, each delay drawn in
/// [50%, 100%] of that (so sinks retrying together spread out).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// A backoff starting at `base`, never longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Self::with_seed(base, max, u64::from(seed))
    }

    /// The same with a chosen jitter seed (tests).
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        cap.mul_f64(frac)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Waits the next delay, or less if `control` stops or interrupts it.
    pub fn wait(&mut self, control: &Control) -> Wake {
        control.wait(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        // Capped for good, however many attempts.
        for _ in 0..100 {
            let x = b.next_delay();
            assert!(
                x >= Duration::from_secs(1) && x <= Duration::from_secs(2),
                "{x:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay_and_varies() {
        for seed in 0..200u64 {
            let mut b = Backoff::with_seed(Duration::from_millis(64), Duration::from_secs(1), seed);
            for attempt in 0..10u32 {
                let full = (Duration::from_millis(64) * (1 << attempt)).min(Duration::from_secs(1));
                let d = b.next_delay();
                assert!(
                    d >= full / 2 && d <= full,
                    "seed {seed} attempt {attempt}: {d:?} of {full:?}"
                );
            }
        }
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(1), 7);
        let distinct: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| b.next_delay()).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn a_wait_is_cut_short_by_a_stop() {
        let c = Arc::new(Control::new());
        let mut b = Backoff::new(Duration::from_secs(300), Duration::from_secs(300));
        let c2 = c.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c2.stop();
        });
        let start = Instant::now();
        assert_eq!(b.wait(&c), Wake::Stopped);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        stopper.join().unwrap();
    }

    #[test]
    fn a_wait_is_cut_short_by_an_interrupt() {
        let c = Control::new();
        let mut b = Backoff::new(Duration::from_secs(300), Duration::from_secs(300));
        c.interrupt();
        let start = Instant::now();
        assert_eq!(b.wait(&c), Wake::Interrupted);
        assert!(start.elapsed() < Duration::from_secs(10));
        let mut short = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
        assert_eq!(short.wait(&c), Wake::Elapsed);
    }
}
