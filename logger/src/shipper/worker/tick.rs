//! The reader's periodic work (every 50 ms): re-arming pipes no longer
//! blocked, finished containers removed, the parser threads' scheduling class;
//! every second the pending state, the reserve, thread liveness and the
//! counters file.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{control, epoll, sinks, Worker};
use crate::shipper::counters;
use crate::shipper::parser_sched::{self, ParserMode};
use crate::sink::SinkStats;

impl Worker {
    pub(super) fn tick(&mut self) {
        self.retry_old_stages();
        let mut finished = Vec::new();
        let max_lag = self.cfg.max_unparsed_bytes;
        // Per parser thread: the largest lag of its streams.
        let mut most_behind = vec![0u64; self.parser.len()];
        for (&id, c) in self.containers.iter_mut() {
            c.paused = c.buffer_full(&self.counters);
            if let Some(b) = c.bucket.as_mut() {
                b.refill();
            }
            let limited = c.bucket.as_ref().is_some_and(|b| b.available() == 0);
            for (i, st) in c.streams.iter_mut().enumerate() {
                let lag = st.shared.lag();
                if let Some(m) = most_behind.get_mut(c.parser) {
                    *m = (*m).max(lag);
                }
                let blocked = c.paused
                    || limited
                    || lag >= max_lag
                    || st.stalled_now()
                    || c.old_stages.is_some();
                if let Some(p) = st.pipe.as_ref().filter(|_| !st.armed && !blocked) {
                    if self.epoll.add(p, epoll::pipe_token(id, i)).is_ok() {
                        st.armed = true;
                    }
                }
                // Tells the parser whether a partial line may still be completed.
                if let Some(p) = &st.pipe {
                    st.shared
                        .pipe_waiting
                        .store(pipe_pending(p) > 0, Ordering::Relaxed);
                }
            }
            if c.streams.iter().all(|s| s.pipe.is_none()) && c.finished.load(Ordering::Acquire) {
                finished.push(id);
            }
        }
        for (i, lag) in most_behind.into_iter().enumerate() {
            self.schedule_parser(i, lag);
        }
        for id in finished {
            if let Some(c) = self.containers.remove(&id) {
                self.keys.remove(&c.key);
                control::send_del(&self.control, &c.key);
                let _ = std::fs::remove_dir_all(&c.dir);
                self.counters
                    .containers_live
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.last_counters.elapsed() >= Duration::from_secs(1) {
            self.save_pending_state();
            self.reserve.top_up();
            self.check_threads();
            self.write_counters();
            self.last_counters = Instant::now();
        }
    }

    /// Idle-only parsing during a burst, full competition beyond it: each
    /// parser thread by the lag of its own containers.
    fn schedule_parser(&mut self, i: usize, most_behind: u64) {
        let tid = self.parser.threads()[i].tid();
        if tid == 0 {
            return;
        }
        let Some(mode) = self.burst[i].observe(most_behind, Instant::now()) else {
            return;
        };
        if let Err(e) = parser_sched::apply(tid, mode) {
            tracing::warn!(thread = i, "parser scheduling {mode:?}: {e}");
        }
        tracing::debug!(thread = i, most_behind, "parser scheduling: {mode:?}");
        let idle = self
            .burst
            .iter()
            .filter(|b| b.mode() == ParserMode::Idle)
            .count();
        self.counters
            .parser_idle
            .store(idle as u64, Ordering::Relaxed);
        if mode == ParserMode::Normal {
            self.counters
                .parser_promotions
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Liveness: sink threads (see [`sinks::check`]) and each parser thread:
    /// any stream it should be parsing moved, or its lines.
    fn check_threads(&mut self) {
        let limit = self.cfg.thread_stall_timeout;
        sinks::check(&mut self.sinks, &self.counters, limit);
        let n = self.parser.len();
        let mut progress: Vec<u64> = self.parser.threads().iter().map(|p| p.lines()).collect();
        let mut work = vec![false; n];
        for c in self
            .containers
            .values()
            .filter(|c| !c.paused && c.parser < n)
        {
            for st in &c.streams {
                let p = &mut progress[c.parser];
                *p = p.wrapping_add(st.shared.parsed.load(Ordering::Relaxed));
                work[c.parser] |= st.shared.lag() > 0;
            }
        }
        for (i, live) in self.parser_live.iter_mut().enumerate() {
            live.observe(
                progress[i],
                work[i],
                limit,
                &self.counters.thread_stalls_parser,
            );
        }
    }

    pub(super) fn write_counters(&mut self) {
        let unparsed: u64 = self
            .containers
            .values()
            .flat_map(|c| c.streams.iter())
            .map(|s| s.shared.lag())
            .sum();
        self.counters
            .unparsed_bytes
            .store(unparsed, Ordering::Relaxed);
        let buffers: Vec<(&str, &crate::wal::WalStats)> = self
            .sinks
            .iter()
            .map(|(k, s)| (k.name(), s.wal.stats.as_ref()))
            .collect();
        let sinks: Vec<(&str, &SinkStats)> = self
            .sinks
            .iter()
            .map(|(k, s)| (k.name(), s.stats.as_ref()))
            .collect();
        let v = counters::snapshot(&self.counters, &buffers, &sinks);
        // Logged when it starts and stops failing, not every second.
        match counters::write(&self.cfg.state_dir, &v) {
            Err(e) if !self.counters_failing => {
                tracing::warn!("writing counters: {e}");
                self.counters_failing = true;
            }
            Ok(()) if self.counters_failing => {
                tracing::info!("writing counters again");
                self.counters_failing = false;
            }
            _ => {}
        }
    }
}

/// Bytes waiting in a pipe.
fn pipe_pending(p: &OwnedFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer we pass.
    if unsafe { libc::ioctl(p.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return 0;
    }
    n
}
