//! When the parser thread may take CPU from the containers.
//!
//! A container writing flat out keeps one core busy and the reader splicing its
//! pipe keeps most of another; a parser competing with them takes its share from
//! the container. The sandbox file already holds every byte, so a burst does not
//! need to be parsed while it happens: the parser runs under `SCHED_IDLE` (only
//! on CPU nobody else wants) while the lag is small and young, and competes like
//! any thread once a stream's unparsed bytes reach `parser_burst_bytes` or the
//! parser has been behind for `parser_burst_time`. It drops back to idle once it
//! has caught up. The reader, which always runs, makes the decision at its tick,
//! so a starved parser is promoted even when it cannot run itself.

use std::time::{Duration, Instant};

/// The parser thread's scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParserMode {
    /// `SCHED_IDLE`: runs only on otherwise idle CPU.
    Idle,
    /// `SCHED_OTHER`, nice 0: shares CPU like any thread.
    Normal,
}

/// The operator's settings (`parser_burst_bytes`, `parser_burst_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstPolicy {
    /// A stream this far behind makes the parser compete; 0 disables idle mode.
    pub bytes: u64,
    /// Behind for this long makes the parser compete.
    pub time: Duration,
}

/// What the reader remembers between ticks.
#[derive(Debug)]
pub struct BurstState {
    policy: BurstPolicy,
    mode: ParserMode,
    behind_since: Option<Instant>,
}

impl BurstState {
    /// Starts in `Normal` (the thread's default scheduling).
    pub fn new(policy: BurstPolicy) -> BurstState {
        BurstState {
            policy,
            mode: ParserMode::Normal,
            behind_since: None,
        }
    }

    /// The mode now in force.
    pub fn mode(&self) -> ParserMode {
        self.mode
    }

    /// Called at every tick with the largest unparsed byte count of any stream;
    /// returns the new mode when it changes.
    pub fn observe(&mut self, max_lag: u64, now: Instant) -> Option<ParserMode> {
        let want = if self.policy.bytes == 0 {
            ParserMode::Normal
        } else if max_lag == 0 {
            self.behind_since = None;
            ParserMode::Idle
        } else {
            let since = *self.behind_since.get_or_insert(now);
            if max_lag >= self.policy.bytes || now.duration_since(since) >= self.policy.time {
                ParserMode::Normal
            } else {
                // Still behind but within the burst allowance: keep the mode
                // (a promoted parser stays promoted until it has caught up).
                self.mode
            }
        };
        if want == self.mode {
            None
        } else {
            self.mode = want;
            Some(want)
        }
    }
}

/// The calling thread's id, for [`apply`] from another thread.
pub fn current_tid() -> libc::pid_t {
    nix::unistd::gettid().as_raw()
}

/// Sets the scheduling policy of thread `tid` of this process (`nix` does
/// not wrap `sched_setscheduler`).
pub fn apply(tid: libc::pid_t, mode: ParserMode) -> std::io::Result<()> {
    let policy = match mode {
        ParserMode::Idle => libc::SCHED_IDLE,
        ParserMode::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param living across the call; a tid that
    // is gone yields ESRCH, nothing else is touched.
    let r = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn policy() -> BurstPolicy {
        BurstPolicy {
            bytes: 256 * MIB,
            time: Duration::from_secs(5),
        }
    }

    #[test]
    fn caught_up_parser_goes_idle_and_a_small_young_lag_keeps_it_there() {
        let t0 = Instant::now();
        let mut s = BurstState::new(policy());
        assert_eq!(s.observe(0, t0), Some(ParserMode::Idle));
        assert_eq!(s.observe(10 * MIB, t0 + Duration::from_secs(1)), None);
        assert_eq!(s.observe(200 * MIB, t0 + Duration::from_secs(4)), None);
        assert_eq!(s.mode(), ParserMode::Idle);
    }

    #[test]
    fn a_large_lag_promotes_at_once() {
        let t0 = Instant::now();
        let mut s = BurstState::new(policy());
        s.observe(0, t0);
        assert_eq!(s.observe(256 * MIB, t0), Some(ParserMode::Normal));
    }

    #[test]
    fn an_old_lag_promotes_and_only_catching_up_demotes() {
        let t0 = Instant::now();
        let mut s = BurstState::new(policy());
        s.observe(0, t0);
        assert_eq!(s.observe(MIB, t0 + Duration::from_millis(50)), None);
        assert_eq!(
            s.observe(MIB, t0 + Duration::from_millis(5050)),
            Some(ParserMode::Normal)
        );
        // Still behind, even by little: stays promoted.
        assert_eq!(s.observe(1, t0 + Duration::from_secs(6)), None);
        assert_eq!(
            s.observe(0, t0 + Duration::from_secs(7)),
            Some(ParserMode::Idle)
        );
        // The clock restarts with the next lag.
        assert_eq!(s.observe(MIB, t0 + Duration::from_secs(8)), None);
        assert_eq!(s.mode(), ParserMode::Idle);
    }

    #[test]
    fn zero_bytes_disables_idle_mode() {
        let mut s = BurstState::new(BurstPolicy {
            bytes: 0,
            time: Duration::from_secs(5),
        });
        assert_eq!(s.observe(0, Instant::now()), None);
        assert_eq!(s.mode(), ParserMode::Normal);
    }

    /// Runs `body` with the id of a live thread of this process; returns
    /// that thread's own view of its policy at the end.
    fn on_a_thread(body: impl FnOnce(libc::pid_t)) -> libc::c_int {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            done_rx.recv().unwrap();
            // SAFETY: querying the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        });
        body(rx.recv().unwrap());
        done_tx.send(()).unwrap();
        t.join().unwrap()
    }

    fn sched_policy(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: querying a live thread of this process.
        unsafe { libc::sched_getscheduler(tid) }
    }

    #[test]
    fn apply_sets_the_policy_of_another_thread() {
        let last = on_a_thread(|tid| {
            apply(tid, ParserMode::Idle).unwrap();
            assert_eq!(sched_policy(tid), libc::SCHED_IDLE);
        });
        assert_eq!(last, libc::SCHED_IDLE);
    }

    #[test]
    #[ignore = "needs root"]
    fn leaving_idle_works_with_the_shippers_privileges() {
        // Leaving SCHED_IDLE needs root (or RLIMIT_NICE), as the shipper has.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP leaving_idle_works_with_the_shippers_privileges: needs root");
            return;
        }
        let last = on_a_thread(|tid| {
            apply(tid, ParserMode::Idle).unwrap();
            apply(tid, ParserMode::Normal).unwrap();
            assert_eq!(sched_policy(tid), libc::SCHED_OTHER);
            apply(tid, ParserMode::Idle).unwrap();
        });
        assert_eq!(last, libc::SCHED_IDLE);
    }
}
