//! The supervisor: binds the socket, holds a duplicate of every container
//! pipe's read end, and (re)starts the worker. It does nothing else, so it
//! has nothing to fail on; while a worker restarts, containers keep writing
//! into their pipe buffers (1 MiB each by default) and then block: they never
//! get EPIPE. SIGHUP restarts the worker from the binary on disk (upgrade),
//! SIGUSR2 replaces the supervisor in place.
//!
//! It never exits while it holds pipes (only SIGTERM ends it):
//! * a worker that cannot be started (binary missing or not executable, exec
//!   or fork failure) is retried with backoff (100 ms doubling to 30 s), each
//!   failure logged and counted in `state_dir/supervisor.json`; a SIGHUP while
//!   the binary is not executable leaves the running worker in place;
//! * when a worker ends, every message it sent is handled before it is
//!   replaced (its channel is read to the end): a registration it passed on
//!   just before dying keeps its pipes;
//! * the next worker gets every container; a worker that cannot take the
//!   list is ended and the whole list goes to the one after.
//!
//! If the supervisor itself is killed, its worker keeps reading every pipe.
//! The next supervisor finds the socket served, and the orphaned worker
//! hands it the listening socket and every container's descriptors, then
//! stops; the supervisor waits until it is gone and starts its own worker,
//! which adopts them (see `handover`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, listen, socketpair, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use serde::{Deserialize, Serialize};

use super::ShipperConfig;
use crate::proto;

static STOP: AtomicBool = AtomicBool::new(false);
static RESTART: AtomicBool = AtomicBool::new(false);
static UPGRADE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RESTART.store(true, Ordering::Relaxed);
    } else if sig == libc::SIGUSR2 {
        UPGRADE.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

fn set_cloexec(fd: &OwnedFd, on: bool) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFD,
            if on { libc::FD_CLOEXEC } else { 0 },
        )
    };
}

/// Raises the soft descriptor limit to the hard one (2 pipes per container).
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The socket's directory must not let another user replace the socket
/// (write access for group or others): refuse to start otherwise. A missing
/// directory is created 0755 (the socket's own mode is what guards it; a
/// `socket_group` member must be able to reach it).
fn check_socket_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.mode() & 0o022 != 0 || (m.uid() != 0 && m.uid() != me) {
        return Err(format!(
            "socket directory {} (mode {:o}, owner {}) can be written by other users, who could replace the socket: use a directory only root can write, such as /run/rein",
            dir.display(),
            m.mode() & 0o7777,
            m.uid()
        ));
    }
    Ok(())
}

/// Gives the socket its access: 0600 (root, or the shipper's own user,
/// only) or, with `socket_group`, 0660 and that group. Only ever widens a
/// socket bound 0600, so there is no moment when it is open to others.
pub fn set_socket_access(path: &Path, group: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(gid) => {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| format!("chown {} to group {gid}: {e}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Binds and listens on the modules' socket. The socket file is created
/// with mode 0600 (umask 0177 around `bind`), then given its group.
fn bind_socket(path: &Path, group: Option<u32>) -> Result<OwnedFd, String> {
    if let Some(d) = path.parent() {
        check_socket_dir(d)?;
    }
    let addr = UnixAddr::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.exists() {
        let probe = proto::seqpacket_socket().map_err(|e| e.to_string())?;
        if nix::sys::socket::connect(probe.as_raw_fd(), &addr).is_ok() {
            return Err(format!("{}: another shipper is listening", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    let s = proto::seqpacket_socket().map_err(|e| e.to_string())?;
    // SAFETY: umask(2) cannot fail. The supervisor has a single thread at
    // this point, so nothing else is created under this umask.
    let old = unsafe { libc::umask(0o177) };
    let bound = bind(s.as_raw_fd(), &addr);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    bound.map_err(|e| format!("bind {}: {e}", path.display()))?;
    set_socket_access(path, group)?;
    listen(&s, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| format!("listen: {e}"))?;
    Ok(s)
}

/// Makes the state directory private (0700, files 0600), tightening what an
/// older version left with the default umask.
fn secure_state_dir(dir: &Path) -> Result<(), String> {
    let n = crate::private::tighten_tree(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if n > 0 {
        tracing::info!(
            state_dir = %dir.display(),
            changed = n,
            "state directory made private (0700 directories, 0600 files)"
        );
    }
    Ok(())
}

struct WorkerProc {
    pid: i32,
    control: OwnedFd,
    started: Instant,
    open: bool,
}

/// Reaps the worker if it exited; returns how.
fn try_wait(pid: i32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid on our own child with WNOHANG; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid {
        Some(if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit {}", libc::WEXITSTATUS(status))
        })
    } else if r < 0 {
        Some("gone".into())
    } else {
        None
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) of a worker of this shipper.
    unsafe { libc::kill(pid, sig) };
}

/// Whether `exe` can be started: checked before a SIGHUP ends the running
/// worker, so that a binary missing in the middle of an upgrade leaves it running.
fn executable(exe: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let m = std::fs::metadata(exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let c = std::ffi::CString::new(exe.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: access(2) with a NUL-terminated path.
    let x = unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0;
    if m.is_file() && x && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0 {
        Ok(())
    } else {
        Err(format!("{} is not an executable file", exe.display()))
    }
}

fn spawn(
    exe: &Path,
    cfg_path: &Path,
    listen: &OwnedFd,
    state_dir: &Path,
) -> Result<WorkerProc, String> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    set_cloexec(&theirs, false);
    set_cloexec(listen, false);
    let child = Command::new(exe)
        .arg("worker")
        .arg("--config")
        .arg(cfg_path)
        .env("REIN_SHIPPER_LISTEN_FD", listen.as_raw_fd().to_string())
        .env("REIN_SHIPPER_CONTROL_FD", theirs.as_raw_fd().to_string())
        .env_remove(STATE_VAR)
        .spawn();
    set_cloexec(listen, true);
    drop(theirs);
    let child = child.map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // Reaped with waitpid(2) below (the handle is not needed; dropping it neither
    // kills nor waits).
    drop(child);
    let _ = crate::private::write_atomic(&state_dir.join("worker.pid"), pid.to_string().as_bytes());
    Ok(WorkerProc {
        pid,
        control: ours,
        started: Instant::now(),
        open: true,
    })
}

/// Environment variable carrying the supervisor's state across an in-place
/// upgrade (`exec` of the new binary, same pid, descriptors kept).
const STATE_VAR: &str = "REIN_SUPERVISOR_STATE";

/// Per container: its stdout and stderr pipes, then the worker's two staging
/// pipes (read ends) if it uses them.
type Table = BTreeMap<String, Vec<OwnedFd>>;

fn handle(table: &mut Table, msg: &[u8], fds: Vec<OwnedFd>) {
    if let Some(key) = msg.strip_prefix(b"add\n") {
        // A repeated `add` (a new worker's staging pipes) replaces the entry.
        if matches!(fds.len(), 2 | 4) {
            table.insert(String::from_utf8_lossy(key).into_owned(), fds);
        } else {
            tracing::error!(
                container = %String::from_utf8_lossy(key),
                fds = fds.len(),
                "the worker handed an unexpected number of descriptors; ignored"
            );
        }
    } else if let Some(key) = msg.strip_prefix(b"del\n") {
        table.remove(String::from_utf8_lossy(key).as_ref());
    }
}

fn take_fd(n: &str) -> Option<OwnedFd> {
    let fd: i32 = n.parse().ok()?;
    // SAFETY: the descriptor was left open for us by the previous image of this
    // process (see `exec_upgrade`); nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    set_cloexec(&fd, true);
    Some(fd)
}

/// Parses `listen=N [pid=P control=C] key=A,B[,C,D] ...` left by
/// `exec_upgrade` (no worker while its start is being retried).
fn restore(state: &str) -> Option<(OwnedFd, Option<WorkerProc>, Table)> {
    let mut listen = None;
    let mut pid = None;
    let mut control = None;
    let mut table = Table::new();
    for item in state.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=')?;
        match k {
            "listen" => listen = take_fd(v),
            "pid" => pid = v.parse().ok(),
            "control" => control = take_fd(v),
            key => {
                let fds = v.split(',').map(take_fd).collect::<Option<Vec<_>>>()?;
                table.insert(key.to_string(), fds);
            }
        }
    }
    let w = pid.zip(control).map(|(pid, control)| WorkerProc {
        pid,
        control,
        started: Instant::now(),
        open: true,
    });
    Some((listen?, w, table))
}

/// Replaces this process's image with the binary on disk, keeping the pid,
/// the socket, the worker (still our child) and every pipe. Returns only on failure.
fn exec_upgrade(
    exe: &Path,
    cfg_path: &Path,
    listen: &OwnedFd,
    w: Option<&WorkerProc>,
    table: &Table,
) -> String {
    use std::os::unix::process::CommandExt;
    let mut state = format!("listen={}", listen.as_raw_fd());
    let mut keep: Vec<&OwnedFd> = vec![listen];
    if let Some(w) = w {
        state.push_str(&format!(" pid={} control={}", w.pid, w.control.as_raw_fd()));
        keep.push(&w.control);
    }
    for (key, fds) in table {
        // Keys are container file names: no space, no `=`.
        let list: Vec<String> = fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
        state.push_str(&format!(" {key}={}", list.join(",")));
        keep.extend(fds.iter());
    }
    for fd in &keep {
        set_cloexec(fd, false);
    }
    let err = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(cfg_path)
        .env(STATE_VAR, state)
        .exec();
    for fd in &keep {
        set_cloexec(fd, true);
    }
    err.to_string()
}

/// The supervisor's own counters, in `state_dir/supervisor.json` (kept
/// across restarts of the supervisor: they count since the state directory
/// was created).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SupervisorStats {
    /// This supervisor's pid.
    pub pid: u32,
    /// The current worker's pid (0 while none runs).
    pub worker_pid: i32,
    /// Workers started.
    pub worker_starts: u64,
    /// Workers that exited without being asked to (crash, kill).
    pub worker_exits: u64,
    /// Failed attempts to start a worker (binary missing or not executable,
    /// exec or fork failure); retried with backoff, pipes held meanwhile.
    pub spawn_failures: u64,
    /// Workers ended because the list of containers could not be handed to
    /// them; the next worker gets the whole list.
    pub adoption_failures: u64,
    /// SIGHUP restarts put off because the binary on disk was not executable
    /// (the running worker stays until it is).
    pub restarts_deferred: u64,
    /// Messages of a worker handled after it died (registrations it had
    /// sent just before).
    pub messages_after_exit: u64,
    /// Orphaned workers taken over after a supervisor died.
    pub handovers: u64,
    /// Containers whose pipes this supervisor holds now.
    pub containers_held: u64,
    /// The last error, and when (seconds since the epoch).
    pub last_error: String,
    /// See `last_error`.
    pub last_error_unix: u64,
}

/// The supervisor's state file name in `state_dir`.
pub const STATS_FILE: &str = "supervisor.json";

/// Delay before retry `attempt` (0, 1, ...): 100 ms doubling, at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(9)).min(Duration::from_secs(30))
}

/// How long a new supervisor waits for an orphaned worker to hand over.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// How long a worker asked to stop may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long a control message may wait for the worker to make room.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

enum Ended {
    /// Exited by itself after running this long.
    Exited(Duration),
    /// Stopped for a restart (SIGHUP).
    Restart,
    /// Stopped for good (SIGTERM).
    Stop,
}

struct Supervisor<'a> {
    cfg: &'a ShipperConfig,
    exe: PathBuf,
    cfg_path: PathBuf,
    listen: OwnedFd,
    table: Table,
    stats: SupervisorStats,
    saved: Instant,
}

impl Supervisor<'_> {
    fn save(&mut self) {
        self.stats.containers_held = self.table.len() as u64;
        self.saved = Instant::now();
        let json = serde_json::to_vec_pretty(&self.stats).unwrap_or_default();
        if let Err(e) = crate::private::write_atomic(&self.cfg.state_dir.join(STATS_FILE), &json) {
            tracing::warn!("writing {STATS_FILE}: {e}");
        }
    }

    fn record_error(&mut self, e: &str) {
        self.stats.last_error = e.to_string();
        self.stats.last_error_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.save();
    }

    fn upgrade(&mut self, w: Option<&WorkerProc>) {
        let e = exec_upgrade(&self.exe, &self.cfg_path, &self.listen, w, &self.table);
        tracing::error!(exe = %self.exe.display(), "in-place upgrade failed ({e}); carrying on");
        self.record_error(&format!(
            "in-place upgrade from {}: {e}",
            self.exe.display()
        ));
    }

    /// Starts a worker and hands it every container, retrying with backoff
    /// for as long as it takes. `None`: SIGTERM came first.
    fn start_worker(&mut self) -> Option<WorkerProc> {
        let mut attempt = 0u32;
        loop {
            if STOP.load(Ordering::Relaxed) {
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
                    self.record_error(&e);
                    if self.idle(d) {
                        attempt = 0;
                    }
                }
            }
        }
    }

    /// Waits `d` with no worker, serving signals. True if SIGHUP asked for
    /// an immediate retry.
    fn idle(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if STOP.load(Ordering::Relaxed) {
                return false;
            }
            if RESTART.swap(false, Ordering::Relaxed) {
                return true;
            }
            if UPGRADE.swap(false, Ordering::Relaxed) {
                self.upgrade(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn try_start(&mut self) -> Result<WorkerProc, String> {
        let mut w = spawn(&self.exe, &self.cfg_path, &self.listen, &self.cfg.state_dir)
            .inspect_err(|_| self.stats.spawn_failures += 1)?;
        match self.send_adoptions(&mut w) {
            Ok(()) => Ok(w),
            Err(e) => {
                // The containers stay in the table: the next worker gets them all.
                self.stats.adoption_failures += 1;
                signal(w.pid, libc::SIGKILL);
                // SAFETY: blocking waitpid on our own child, just killed.
                unsafe { libc::waitpid(w.pid, std::ptr::null_mut(), 0) };
                self.drain(&mut w);
                Err(format!("handing the containers to worker {}: {e}", w.pid))
            }
        }
    }

    /// Sends `adopt` for every container, then `done`. Reads the worker's
    /// messages meanwhile (it answers each adoption with an `add`), so that
    /// neither side can block the other with a full queue.
    fn send_adoptions(&mut self, w: &mut WorkerProc) -> Result<(), String> {
        let msgs: Vec<(Vec<u8>, Vec<RawFd>)> = self
            .table
            .iter()
            .map(|(key, fds)| {
                (
                    format!("adopt\n{key}").into_bytes(),
                    fds.iter().map(AsRawFd::as_raw_fd).collect(),
                )
            })
            .chain(std::iter::once((b"done".to_vec(), Vec::new())))
            .collect();
        for (msg, fds) in msgs {
            let deadline = Instant::now() + SEND_TIMEOUT;
            loop {
                match send_nowait(w.control.as_fd(), &msg, &fds) {
                    Ok(()) => break,
                    Err(Errno::EINTR) => continue,
                    Err(_) if STOP.load(Ordering::Relaxed) => return Err("stopping".into()),
                    Err(Errno::EAGAIN) if Instant::now() < deadline => {
                        if !self.serve_while_blocked(w)? {
                            return Err("the worker closed its channel".into());
                        }
                    }
                    Err(Errno::EAGAIN) => {
                        return Err(format!("the worker took nothing for {SEND_TIMEOUT:?}"))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(())
    }

    /// Waits until the channel takes a message again, handling what the
    /// worker sent meanwhile. False once the worker's end is closed.
    fn serve_while_blocked(&mut self, w: &mut WorkerProc) -> Result<bool, String> {
        let mut p = libc::pollfd {
            fd: w.control.as_raw_fd(),
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 100) };
        if n > 0 && p.revents & libc::POLLIN != 0 {
            self.read_control(w, Duration::ZERO);
        }
        Ok(w.open)
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
            Ok((msg, fds)) => handle(&mut self.table, &msg, fds),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => w.open = false,
        }
    }

    /// After the worker is gone: handles everything it sent before dying,
    /// up to the end of the channel (a registration whose `add` is still
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
                    handle(&mut self.table, &msg, fds);
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
        signal(w.pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        let mut killed = false;
        while try_wait(w.pid).is_none() {
            if !killed && Instant::now() > deadline {
                tracing::error!(
                    pid = w.pid,
                    "the worker did not stop within {STOP_GRACE:?}: SIGKILL"
                );
                signal(w.pid, libc::SIGKILL);
                killed = true;
            }
            self.read_control(w, Duration::from_millis(20));
        }
        self.drain(w);
    }

    /// Runs with worker `w` until it ends or is asked to.
    fn serve(&mut self, mut w: WorkerProc) -> Ended {
        // A SIGHUP while the binary is not executable: retried at this time.
        let mut deferred: Option<(Instant, u32)> = None;
        loop {
            self.read_control(&mut w, Duration::from_millis(200));
            if UPGRADE.swap(false, Ordering::Relaxed) {
                self.upgrade(Some(&w));
            }
            if STOP.load(Ordering::Relaxed) {
                self.stop_worker(&mut w);
                return Ended::Stop;
            }
            let asked = RESTART.swap(false, Ordering::Relaxed);
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

/// Sends without blocking (`EAGAIN` when the worker's queue is full).
fn send_nowait(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(data)];
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    if fds.is_empty() {
        sendmsg::<()>(sock.as_raw_fd(), &iov, &[], flags, None)?;
    } else {
        sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(fds)],
            flags,
            None,
        )?;
    }
    Ok(())
}

/// Whether a process accepts connections on `path` (another supervisor, or
/// the orphaned worker of one that died).
fn socket_is_served(path: &Path) -> bool {
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    proto::seqpacket_socket()
        .is_ok_and(|probe| nix::sys::socket::connect(probe.as_raw_fd(), &addr).is_ok())
}

/// The socket is served although no supervisor of ours runs: takes the
/// listening socket and every container from the orphaned worker (see
/// `handover`), then waits until that worker is gone.
fn take_over(cfg: &ShipperConfig) -> Result<(OwnedFd, Table), String> {
    let l = super::handover::Listener::bind(&cfg.state_dir)?;
    tracing::warn!(
        socket = %cfg.socket.display(),
        "the socket is served already: waiting up to {HANDOVER_WAIT:?} for an orphaned worker to hand over"
    );
    let r = l.receive(HANDOVER_WAIT)?.ok_or_else(|| {
        format!(
            "{}: another shipper is listening (no orphaned worker handed over within {HANDOVER_WAIT:?})",
            cfg.socket.display()
        )
    })?;
    drop(l);
    let table: Table = r.containers.into_iter().collect();
    tracing::warn!(
        pid = r.pid,
        containers = table.len(),
        "took over the containers of the orphaned worker; waiting for it to stop"
    );
    let started = Instant::now();
    let mut killed = false;
    while !super::handover::ended(r.pid) {
        if !killed && started.elapsed() > STOP_GRACE {
            // Safe: every pipe it read is held here now.
            tracing::error!(pid = r.pid, "the orphaned worker did not stop: SIGKILL");
            signal(r.pid, libc::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((r.listen, table))
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler only stores to atomics.
        let _ = unsafe { sigaction(s, &sa) };
    }
}

/// Runs the supervisor until SIGTERM. SIGHUP restarts the worker from the
/// binary on disk; SIGUSR2 replaces the supervisor itself (exec, same pid),
/// keeping the worker and every pipe.
pub fn run(cfg_path: &Path, cfg: &ShipperConfig) -> Result<(), String> {
    raise_nofile();
    // Before a handover: a SIGTERM's default action would end this process
    // while it holds the containers' pipes.
    install_signal_handlers();
    let inherited = std::env::var(STATE_VAR).ok().and_then(|s| restore(&s));
    let mut handed_over = false;
    let (listen, mut current, table) = match inherited {
        Some((listen, w, table)) => {
            let n = std::fs::read_to_string(cfg.state_dir.join("supervisor.execs"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let _ = crate::private::write_atomic(
                &cfg.state_dir.join("supervisor.execs"),
                (n + 1).to_string().as_bytes(),
            );
            tracing::info!(
                worker = w.as_ref().map_or(0, |w| w.pid),
                containers = table.len(),
                "supervisor upgraded in place"
            );
            // A newer binary may have stricter settings or modes. Failing here
            // must not end the supervisor (its pipes would close): log it.
            if let Err(e) = secure_state_dir(&cfg.state_dir)
                .and_then(|()| set_socket_access(&cfg.socket, cfg.socket_group))
            {
                tracing::error!("after the upgrade: {e}");
            }
            (listen, w, table)
        }
        None => {
            if let Some(name) = &cfg.cgroup {
                let limits = super::own_cgroup::Limits {
                    memory_max: cfg.cgroup_memory_max,
                    cpu_max: cfg.cgroup_cpu_max.clone(),
                };
                let dirs =
                    super::own_cgroup::join(&cfg.cgroup_root, name, std::process::id(), &limits)?;
                tracing::info!(?dirs, "moved into the shipper's own cgroup");
            }
            secure_state_dir(&cfg.state_dir)?;
            if socket_is_served(&cfg.socket) {
                let (listen, table) = take_over(cfg)?;
                handed_over = true;
                if let Err(e) = set_socket_access(&cfg.socket, cfg.socket_group) {
                    tracing::error!("after the handover: {e}");
                }
                (listen, None, table)
            } else {
                (
                    bind_socket(&cfg.socket, cfg.socket_group)?,
                    None,
                    Table::new(),
                )
            }
        }
    };
    let _ = crate::private::write_atomic(
        &cfg.state_dir.join("supervisor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    let exe: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let cfg_path = std::fs::canonicalize(cfg_path).unwrap_or_else(|_| cfg_path.to_path_buf());
    let stats = std::fs::read(cfg.state_dir.join(STATS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<SupervisorStats>(&b).ok())
        .unwrap_or_default();
    let mut sup = Supervisor {
        cfg,
        exe,
        cfg_path,
        listen,
        table,
        stats,
        saved: Instant::now(),
    };
    sup.stats.pid = std::process::id();
    sup.stats.worker_pid = current.as_ref().map_or(0, |w| w.pid);
    sup.stats.handovers += u64::from(handed_over);
    sup.save();
    let mut quick_exits = 0u32;
    tracing::info!(socket = %cfg.socket.display(), "log shipper supervisor started");
    loop {
        let w = match current.take() {
            Some(w) => w,
            None => match sup.start_worker() {
                Some(w) => w,
                None => break,
            },
        };
        match sup.serve(w) {
            Ended::Stop => break,
            Ended::Restart => quick_exits = 0,
            Ended::Exited(lived) if lived < Duration::from_secs(2) => {
                sup.idle(backoff(quick_exits));
                quick_exits += 1;
            }
            Ended::Exited(_) => quick_exits = 0,
        }
    }
    tracing::info!("log shipper stopped");
    sup.stats.worker_pid = 0;
    sup.save();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
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

    #[test]
    fn state_without_a_worker_restores_the_table() {
        let (a, b) = crate::module::pipe(0).unwrap();
        let (c, d) = crate::module::pipe(0).unwrap();
        let state = format!(
            "listen={} k1={},{}",
            a.as_raw_fd(),
            b.as_raw_fd(),
            c.as_raw_fd()
        );
        // The descriptors now belong to the restored values.
        std::mem::forget((a, b, c));
        let (_listen, w, table) = restore(&state).unwrap();
        assert!(w.is_none());
        assert_eq!(table["k1"].len(), 2);
        drop(d);
    }

    #[test]
    fn a_missing_or_plain_file_is_not_executable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin");
        assert!(executable(&p).is_err());
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(executable(&p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(executable(&p).is_ok());
    }
}
