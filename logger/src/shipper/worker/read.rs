//! The splice loop: a readable container pipe is moved into its sandbox
//! file, within the container's rate limit, its fair share of one wake-up,
//! the parser's allowed lag and the disk buffer's room; files are rotated
//! at a line end once past the rotation size.

use std::sync::atomic::Ordering;

use super::container::Container;
use super::{epoll, Worker};
use crate::shipper::counters::Counters;
use crate::shipper::stream::Splice;

/// The most moved by one splice.
const SPLICE_CHUNK: u64 = 1 << 20;
/// The most moved from one pipe per wake-up: other pipes get their turn.
const FAIR_SHARE: u64 = 4 << 20;

impl Container {
    /// True while the container's disk buffer is full; logged and counted
    /// when reading pauses for it.
    pub(super) fn buffer_full(&self, counters: &Counters) -> bool {
        let full = self.wal.as_ref().is_some_and(|w| w.is_full());
        if full && !self.paused {
            counters.buffer_full_pauses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                container = self.key,
                "disk buffer full: reading paused (the container blocks when its pipe fills)"
            );
        }
        full
    }
}

impl Worker {
    /// Moves what the pipe of `token` holds into its sandbox file.
    pub(super) fn read(&mut self, token: u64) {
        let (id, idx) = epoll::pipe_of(token);
        let Some(c) = self.containers.get_mut(&id) else {
            return;
        };
        if c.old_stages.is_some() {
            // Older bytes first: not read until the tick has written them out.
            let st = &mut c.streams[idx];
            if let Some(p) = st.pipe.as_ref().filter(|_| st.armed) {
                let _ = self.epoll.remove(p);
                st.armed = false;
            }
            return;
        }
        let rotate_max = self.cfg.rotate_max_bytes;
        let max_lag = self.cfg.max_unparsed_bytes;
        let mut moved = 0u64;
        let mut eof = false;
        let mut limited = false;
        let mut lagging = false;
        let mut stalled = false;
        loop {
            if c.buffer_full(&self.counters) {
                c.paused = true;
            }
            if c.paused {
                break;
            }
            let st = &mut c.streams[idx];
            if st.shared.lag() >= max_lag {
                self.counters
                    .unparsed_pauses
                    .fetch_add(1, Ordering::Relaxed);
                lagging = true;
                break;
            }
            let allow = c.bucket.as_mut().map_or(SPLICE_CHUNK, |b| {
                b.refill();
                b.available().min(SPLICE_CHUNK)
            });
            if allow == 0 {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                limited = true;
                break;
            }
            // Parsed streams are rotated at a line end only (a record never spans files).
            let res = if st.shared.parses {
                st.splice_for_rotation(&self.scratch, &mut self.peek, allow, rotate_max)
            } else {
                let r = st.splice(allow);
                st.rotate_due = st.file_len >= rotate_max;
                r
            };
            let step = match res {
                Ok(Splice::Moved(n)) => n,
                Ok(Splice::Empty) => break,
                Ok(Splice::Eof) => {
                    eof = true;
                    break;
                }
                Err(e) => {
                    // Never close the stream for it: the container would get EPIPE
                    // once the supervisor lets go. Its pipe waits; retried later.
                    let d = st.stall();
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %st.path.display(), "writing the sandbox file: {e}; retrying in {d:?} (the container blocks once its pipe is full)");
                    stalled = true;
                    break;
                }
            };
            if st.stalled.take().is_some() {
                tracing::info!(path = %st.path.display(), "writing the sandbox file again");
            }
            moved += step;
            if let Some(b) = c.bucket.as_mut() {
                b.take(step);
            }
            if st.rotate_due {
                match st.rotate(self.cfg.rotate_keep) {
                    Ok(()) => {
                        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(path = %st.path.display(), "rotation failed: {e}"),
                }
                self.parser.wake(c.parser);
            }
            if moved >= FAIR_SHARE {
                break;
            }
        }
        self.parser.wake(c.parser);
        let st = &mut c.streams[idx];
        // Blocked (rate limit, full buffer, parser too far behind) or finished: stop
        // watching until the next tick re-arms. A stream that only used up its fair
        // share stays armed: level-triggered epoll reports it again after the others.
        if (eof || limited || lagging || stalled || c.paused) && st.armed {
            if let Some(p) = &st.pipe {
                let _ = self.epoll.remove(p);
            }
            st.armed = false;
        }
        self.counters.bytes_read.fetch_add(moved, Ordering::Relaxed);
        if eof {
            st.pipe = None;
            st.shared.pipe_waiting.store(false, Ordering::Relaxed);
            st.shared.eof.store(true, Ordering::Release);
            self.parser.wake(c.parser);
        }
    }
}
