//! What the worker tells a running sink: stop, or end the current wait and
//! try again now (a setting it reads changed). Every wait of a sink (its
//! retry backoff, a full dead-letter file, a failing disk buffer) goes
//! through [`Control::wait`], so a shutdown never waits for a backoff to run
//! out: a condition variable wakes the waiter at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a [`Control::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The whole delay passed.
    Elapsed,
    /// [`Control::interrupt`]: go on at once.
    Interrupted,
    /// [`Control::stop`]: the sink must return.
    Stopped,
}

/// Stop and interrupt requests of one sink thread.
#[derive(Debug, Default)]
pub struct Control {
    stopped: AtomicBool,
    /// An interrupt not yet consumed by a wait.
    interrupted: Mutex<bool>,
    woken: Condvar,
}

impl Control {
    /// A control with nothing requested.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.interrupted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the sink to stop; a wait in progress returns at once.
    pub fn stop(&self) {
        let _g = self.lock();
        self.stopped.store(true, Ordering::SeqCst);
        self.woken.notify_all();
    }

    /// Ends the current wait (or the next one, if none is in progress) at
    /// once without stopping: a setting the sink reads (credentials, the
    /// dead-letter file) changed, and the next attempt should not wait.
    pub fn interrupt(&self) {
        *self.lock() = true;
        self.woken.notify_all();
    }

    /// True once [`Control::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The stop flag, for loops that only test it (never set it directly:
    /// a waiter would not be woken).
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.stopped
    }

    /// Waits `d`, less if stopped or interrupted (an interrupt is consumed).
    pub fn wait(&self, d: Duration) -> Wake {
        let end = Instant::now().checked_add(d);
        let mut g = self.lock();
        loop {
            if self.is_stopped() {
                return Wake::Stopped;
            }
            if std::mem::take(&mut *g) {
                return Wake::Interrupted;
            }
            let left = match end {
                Some(end) => match end.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Wake::Elapsed,
                },
                // Beyond what an Instant holds: in practice forever.
                None => Duration::from_secs(3600),
            };
            g = self
                .woken
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_stop_ends_a_long_wait_at_once() {
        let c = Arc::new(Control::new());
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            (c2.wait(Duration::from_secs(600)), start.elapsed())
        });
        // Whether the stop comes before or during the wait, it ends it.
        std::thread::sleep(Duration::from_millis(20));
        c.stop();
        let (wake, took) = t.join().unwrap();
        assert_eq!(wake, Wake::Stopped);
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(c.is_stopped() && c.stop_flag().load(Ordering::SeqCst));
        // Stopped for good: every later wait returns at once.
        assert_eq!(c.wait(Duration::from_secs(600)), Wake::Stopped);
    }

    #[test]
    fn an_interrupt_ends_one_wait_and_is_not_lost() {
        let c = Arc::new(Control::new());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait(Duration::from_secs(600)));
        std::thread::sleep(Duration::from_millis(20));
        c.interrupt();
        assert_eq!(t.join().unwrap(), Wake::Interrupted);
        // Before any wait: the next one returns at once, the one after waits.
        c.interrupt();
        assert_eq!(c.wait(Duration::from_secs(600)), Wake::Interrupted);
        assert_eq!(c.wait(Duration::from_millis(5)), Wake::Elapsed);
        assert!(!c.is_stopped());
    }

    #[test]
    fn an_undisturbed_wait_lasts_its_delay() {
        let c = Control::new();
        let start = Instant::now();
        assert_eq!(c.wait(Duration::from_millis(30)), Wake::Elapsed);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(c.wait(Duration::ZERO), Wake::Elapsed);
    }
}
