//! Containment and liveness of the worker's threads. The parser thread and
//! every sink thread run under [`contain`]: a panic is logged with its
//! message, counted, and the thread's work starts again after a backoff, with
//! its state intact (the parser keeps its streams; a sink is rebuilt and
//! re-reads its disk buffer from the acknowledged cursor, so nothing acked is
//! lost and nothing unacked is skipped). [`Liveness`] is the main loop's view
//! of a thread from outside: a thread that makes no progress while it has
//! work is reported once per stall. A panic of the main loop itself ends the
//! worker process, which the supervisor restarts.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// First delay before a restart; doubled per panic up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long without a panic resets the backoff.
const STABLE: Duration = Duration::from_secs(60);

/// The message of a panic payload.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Logs every panic (thread, location, message) through the log instead of
/// bare stderr.
pub fn install_panic_log() {
    std::panic::set_hook(Box::new(|info| {
        let t = std::thread::current();
        tracing::error!(thread = t.name().unwrap_or("unnamed"), "{info}");
    }));
}

/// Sleeps `d`, or less once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Runs `body` on this thread until it returns with `stop` set. `body` gets
/// `true` when it runs again after a panic (rebuild what a panic may have
/// left half-done). A panic is counted in `panics`; a return while `stop` is
/// not set is a bug of the thread's loop and is restarted the same way.
pub fn contain(name: &str, panics: &AtomicU64, stop: &AtomicBool, mut body: impl FnMut(bool)) {
    let mut backoff = FIRST_BACKOFF;
    let mut again = false;
    loop {
        let started = Instant::now();
        let res = catch_unwind(AssertUnwindSafe(|| body(again)));
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if started.elapsed() >= STABLE {
            backoff = FIRST_BACKOFF;
        }
        match res {
            Ok(()) => tracing::error!(
                thread = name,
                "the thread's loop ended while the worker runs; restarting it in {backoff:?}"
            ),
            Err(p) => {
                panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    thread = name,
                    "panic: {}; restarting in {backoff:?} (state kept)",
                    panic_message(p.as_ref())
                );
            }
        }
        sleep_unless(stop, backoff);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        again = true;
    }
}

/// A thread's progress as seen from the main loop.
#[derive(Debug)]
pub struct Liveness {
    name: &'static str,
    last: u64,
    since: Instant,
    stalled: bool,
}

impl Liveness {
    /// A watch of the thread `name`.
    pub fn new(name: &'static str) -> Liveness {
        Liveness {
            name,
            last: 0,
            since: Instant::now(),
            stalled: false,
        }
    }

    /// `progress` is any counter the thread moves while it works; `has_work`
    /// whether it should be moving. After `limit` without a move while it
    /// has work, the stall is logged and counted in `stalls` (once per stall).
    /// Returns true while stalled.
    pub fn observe(
        &mut self,
        progress: u64,
        has_work: bool,
        limit: Duration,
        stalls: &AtomicU64,
    ) -> bool {
        if progress != self.last || !has_work {
            if self.stalled {
                tracing::warn!(thread = self.name, "moving again after a stall");
            }
            self.last = progress;
            self.since = Instant::now();
            self.stalled = false;
        } else if !self.stalled && self.since.elapsed() >= limit {
            self.stalled = true;
            stalls.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                thread = self.name,
                "no progress for {:?} with work pending: the thread is stalled",
                self.since.elapsed()
            );
        }
        self.stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_body_runs_again_with_its_state_and_is_counted() {
        let panics = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let mut runs = Vec::new();
        contain("t", &panics, &stop, |again| {
            runs.push(again);
            if runs.len() < 3 {
                panic!("boom {}", runs.len());
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(runs, [false, true, true]);
        assert_eq!(panics.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_stall_is_counted_once_and_cleared_by_progress() {
        let stalls = AtomicU64::new(0);
        let mut l = Liveness::new("t");
        let limit = Duration::from_millis(20);
        assert!(!l.observe(1, true, limit, &stalls));
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.observe(1, true, limit, &stalls));
        assert!(l.observe(1, true, limit, &stalls));
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
        assert!(!l.observe(2, true, limit, &stalls));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!l.observe(2, false, limit, &stalls), "no work: no stall");
    }
}
