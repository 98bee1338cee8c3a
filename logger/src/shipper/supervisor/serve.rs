//! The supervisor's loop with one worker: starting it (retried with backoff)
//! and handing it every container, reading its messages, restarting it on
//! SIGHUP or when it exits, stopping it on SIGTERM, and handling whatever it
//! sent before it ended.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::process::{executable, reap, signal, spawn, try_wait, WorkerProc};
use super::stats::SupervisorStats;
use super::table::{handle, Handled, Table};
use super::{signals, upgrade, SupervisorError};
use crate::proto::{self, Control};
use crate::shipper::ShipperConfig;

/// Delay before retry `attempt` (0, 1, ...): 100 ms doubling, at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(9)).min(Duration::from_secs(30))
}

/// How long a worker asked to stop may take before SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long a control message may wait for the worker to make room.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a worker could not be handed the containers.
#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    /// SIGTERM came meanwhile.
    #[error("stopping")]
    Stopping,
    /// The worker closed its end (it died).
    #[error("the worker closed its channel")]
    Closed,
    /// The worker read nothing for [`SEND_TIMEOUT`].
    #[error("the worker took nothing for {SEND_TIMEOUT:?}")]
    Stalled,
    /// Sending failed.
    #[error("{0}")]
    Send(Errno),
}

pub(super) enum Ended {
    /// Exited by itself after running this long.
    Exited(Duration),
    /// Stopped for a restart (SIGHUP).
    Restart,
    /// Stopped for good (SIGTERM).
    Stop,
}

pub(super) struct Supervisor<'a> {
    pub(super) cfg: &'a ShipperConfig,
    pub(super) exe: PathBuf,
    pub(super) cfg_path: PathBuf,
    pub(super) listen: OwnedFd,
    pub(super) table: Table,
    pub(super) stats: SupervisorStats,
    pub(super) saved: Instant,
}

impl Supervisor<'_> {
    pub(super) fn save(&mut self) {
        self.stats.containers_held = self.table.len() as u64;
        self.saved = Instant::now();
        self.stats.save(&self.cfg.state_dir);
    }

    fn record_error(&mut self, e: &str) {
        self.stats.last_error = e.to_string();
        self.stats.last_error_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.save();
    }

    fn upgrade(&mut self, w: Option<&WorkerProc>) {
        let e = upgrade::exec_upgrade(&self.exe, &self.cfg_path, &self.listen, w, &self.table);
        tracing::error!(exe = %self.exe.display(), "in-place upgrade failed ({e}); carrying on");
        self.record_error(&format!(
            "in-place upgrade from {}: {e}",
            self.exe.display()
        ));
    }

    /// Applies one message of the worker, counting what it refused.
    fn handle(&mut self, msg: &[u8], fds: Vec<OwnedFd>) {
        if handle(&mut self.table, msg, fds) == Handled::Refused {
            self.stats.messages_refused += 1;
        }
    }

    /// Starts a worker and hands it every container, retrying with backoff
    /// for as long as it takes. `None`: SIGTERM came first.
    pub(super) fn start_worker(&mut self) -> Option<WorkerProc> {
        let mut attempt = 0u32;
        loop {
            if signals::stopping() {
                return None;
            }
            match self.try_start() {
                Ok(w) => {
                    self.stats.worker_starts += 1;
                    self.stats.worker_pid = w.pid;
                    self.save();
                    tracing::info!(pid = w.pid, containers = self.table.len(), "worker started");
                    return Some(w);
                }
                Err(e) => {
                    let d = backoff(attempt);
                    attempt += 1;
                    self.stats.worker_pid = 0;
                    tracing::error!(
                        attempt,
                        retry_in = ?d,
                        containers = self.table.len(),
                        "cannot start the worker: {e}; every container pipe stays held (containers block once their pipe is full)"
                    );
                    self.record_error(&e.to_string());
                    if self.idle(d) {
                        attempt = 0;
                    }
                }
            }
        }
    }

    /// Waits `d` with no worker, serving signals. True if SIGHUP asked for
    /// an immediate retry.
    pub(super) fn idle(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if signals::stopping() {
                return false;
            }
            if signals::take_restart() {
                return true;
            }
            if signals::take_upgrade() {
                self.upgrade(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn try_start(&mut self) -> Result<WorkerProc, SupervisorError> {
        let mut w = spawn(&self.exe, &self.cfg_path, &self.listen, &self.cfg.state_dir)
            .inspect_err(|_| self.stats.spawn_failures += 1)?;
        match self.send_adoptions(&mut w) {
            Ok(()) => Ok(w),
            Err(source) => {
                // The containers stay in the table: the next worker gets them all.
                self.stats.adoption_failures += 1;
                signal(w.pid, Signal::SIGKILL);
                reap(w.pid);
                self.drain(&mut w);
                Err(SupervisorError::Adoption { pid: w.pid, source })
            }
        }
    }

    /// Sends `Adopt` for every container, then `Done`. Reads the worker's
    /// messages meanwhile (it answers each adoption with a `Hold`), so that
    /// neither side can block the other with a full queue.
    fn send_adoptions(&mut self, w: &mut WorkerProc) -> Result<(), AdoptionError> {
        let msgs: Vec<(Vec<u8>, Vec<RawFd>)> = self
            .table
            .iter()
            .map(|(key, fds)| {
                (
                    Control::Adopt(key.clone()).encode(),
                    fds.iter().map(AsRawFd::as_raw_fd).collect(),
                )
            })
            .chain(std::iter::once((Control::Done.encode(), Vec::new())))
            .collect();
        for (msg, fds) in msgs {
            let deadline = Instant::now() + SEND_TIMEOUT;
            loop {
                match proto::send_with_fds_nowait(w.control.as_fd(), &msg, &fds) {
                    Ok(()) => break,
                    Err(Errno::EINTR) => continue,
                    Err(_) if signals::stopping() => return Err(AdoptionError::Stopping),
                    Err(Errno::EAGAIN) if Instant::now() < deadline => {
                        if !self.serve_while_blocked(w) {
                            return Err(AdoptionError::Closed);
                        }
                    }
                    Err(Errno::EAGAIN) => return Err(AdoptionError::Stalled),
                    Err(e) => return Err(AdoptionError::Send(e)),
                }
            }
        }
        Ok(())
    }

    /// Waits until the channel takes a message again, handling what the
    /// worker sent meanwhile. False once the worker's end is closed.
    fn serve_while_blocked(&mut self, w: &mut WorkerProc) -> bool {
        let mut fds = [PollFd::new(
            w.control.as_fd(),
            PollFlags::POLLIN | PollFlags::POLLOUT,
        )];
        let readable = matches!(poll(&mut fds, PollTimeout::from(100u8)), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if readable {
            self.read_control(w, Duration::ZERO);
        }
        w.open
    }

    /// Handles at most one message of the worker, waiting up to `wait`.
    fn read_control(&mut self, w: &mut WorkerProc, wait: Duration) {
        if !w.open {
            std::thread::sleep(wait.max(Duration::from_millis(20)));
            return;
        }
        if !proto::wait_readable(w.control.as_fd(), wait).unwrap_or(false) {
            return;
        }
        match proto::recv_with_fds(w.control.as_fd()) {
            Ok((msg, fds)) if msg.is_empty() && fds.is_empty() => w.open = false,
            Ok((msg, fds)) => self.handle(&msg, fds),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => w.open = false,
        }
    }

    /// After the worker is gone: handles everything it sent before dying,
    /// up to the end of the channel (a registration whose `Hold` is still
    /// queued must not be lost: its pipes are in that message only).
    fn drain(&mut self, w: &mut WorkerProc) {
        let mut n = 0u64;
        while w.open {
            if !proto::wait_readable(w.control.as_fd(), Duration::from_secs(2)).unwrap_or(false) {
                // Only a process the worker started could keep its end open.
                tracing::error!(
                    pid = w.pid,
                    "the dead worker's channel is still open; leaving it"
                );
                break;
            }
            match proto::recv_with_fds(w.control.as_fd()) {
                Ok((msg, fds)) if msg.is_empty() && fds.is_empty() => w.open = false,
                Ok((msg, fds)) => {
                    n += 1;
                    self.handle(&msg, fds);
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => w.open = false,
            }
        }
        if n > 0 {
            tracing::info!(
                pid = w.pid,
                messages = n,
                "handled the messages the worker sent before it ended"
            );
            self.stats.messages_after_exit += n;
        }
        self.save();
    }

    /// SIGTERM to the worker (SIGKILL after a grace period), serving its
    /// channel until it is gone.
    fn stop_worker(&mut self, w: &mut WorkerProc) {
        signal(w.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        let mut killed = false;
        while try_wait(w.pid).is_none() {
            if !killed && Instant::now() > deadline {
                tracing::error!(
                    pid = w.pid,
                    "the worker did not stop within {STOP_GRACE:?}: SIGKILL"
                );
                signal(w.pid, Signal::SIGKILL);
                killed = true;
            }
            self.read_control(w, Duration::from_millis(20));
        }
        self.drain(w);
    }

    /// Runs with worker `w` until it ends or is asked to.
    pub(super) fn serve(&mut self, mut w: WorkerProc) -> Ended {
        // A SIGHUP while the binary is not executable: retried at this time.
        let mut deferred: Option<(Instant, u32)> = None;
        loop {
            self.read_control(&mut w, Duration::from_millis(200));
            if signals::take_upgrade() {
                self.upgrade(Some(&w));
            }
            if signals::stopping() {
                self.stop_worker(&mut w);
                return Ended::Stop;
            }
            let asked = signals::take_restart();
            if asked || deferred.is_some_and(|(at, _)| Instant::now() >= at) {
                match executable(&self.exe) {
                    Ok(()) => {
                        tracing::info!(
                            pid = w.pid,
                            "restarting the worker from {}",
                            self.exe.display()
                        );
                        self.stop_worker(&mut w);
                        return Ended::Restart;
                    }
                    Err(e) => {
                        let attempt = deferred.map_or(0, |(_, n)| n + 1);
                        let d = backoff(attempt + 3);
                        self.stats.restarts_deferred += 1;
                        tracing::error!(
                            retry_in = ?d,
                            "not restarting the worker: {e}; the running worker stays"
                        );
                        self.record_error(&format!("restart put off: {e}"));
                        deferred = Some((Instant::now() + d, attempt));
                    }
                }
            }
            if let Some(status) = try_wait(w.pid) {
                tracing::error!(pid = w.pid, %status, "worker exited; restarting it");
                self.stats.worker_exits += 1;
                self.stats.worker_pid = 0;
                self.drain(&mut w);
                self.record_error(&format!("worker {} exited: {status}", w.pid));
                return Ended::Exited(w.started.elapsed());
            }
            if self.saved.elapsed() >= Duration::from_secs(1)
                && self.stats.containers_held != self.table.len() as u64
            {
                self.save();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_retries_back_off_to_thirty_seconds() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(9), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
