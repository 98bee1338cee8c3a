//! The worker process: started from the binary on disk with the listening
//! socket and its end of the control channel, signalled, reaped.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{SupervisorError, STATE_VAR};

/// A running worker and the supervisor's end of its control channel.
pub(super) struct WorkerProc {
    pub(super) pid: i32,
    pub(super) control: OwnedFd,
    pub(super) started: Instant,
    /// False once the worker's end of the channel is closed.
    pub(super) open: bool,
}

impl WorkerProc {
    /// A worker known by its pid and channel (after an in-place upgrade).
    pub(super) fn adopted(pid: i32, control: OwnedFd) -> WorkerProc {
        WorkerProc {
            pid,
            control,
            started: Instant::now(),
            open: true,
        }
    }
}

/// Sets or clears close-on-exec (cleared only around starting a process
/// that must inherit the descriptor).
pub(super) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) {
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags));
}

/// Raises the soft descriptor limit to the hard one (2 pipes per container).
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard);
        }
    }
}

/// Reaps the worker if it exited; returns how.
pub(super) fn try_wait(pid: i32) -> Option<String> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("signal {}", sig as i32)),
        Ok(WaitStatus::Exited(_, code)) => Some(format!("exit {code}")),
        Ok(_) => None,
        Err(_) => Some("gone".into()),
    }
}

/// Blocks until `pid` (a child just killed) is reaped.
pub(super) fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), None);
}

/// Sends `sig` to a worker of this shipper (or an orphaned one).
pub(super) fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Whether `exe` can be started: checked before a SIGHUP ends the running
/// worker, so that a binary missing in the middle of an upgrade leaves it running.
pub(super) fn executable(exe: &Path) -> Result<(), SupervisorError> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(exe).map_err(|e| SupervisorError::io(exe.display(), e))?;
    let x = nix::unistd::access(exe, nix::unistd::AccessFlags::X_OK).is_ok();
    if m.is_file() && x && m.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(SupervisorError::NotExecutable(exe.to_path_buf()))
    }
}

/// Starts `exe worker --config cfg_path` with the listening socket and a
/// new control channel; records its pid in `state_dir/worker.pid`.
pub(super) fn spawn(
    exe: &Path,
    cfg_path: &Path,
    listen: &OwnedFd,
    state_dir: &Path,
) -> Result<WorkerProc, SupervisorError> {
    use std::os::fd::AsFd;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SupervisorError::sys("socketpair", e))?;
    set_cloexec(theirs.as_fd(), false);
    set_cloexec(listen.as_fd(), false);
    let child = Command::new(exe)
        .arg("worker")
        .arg("--config")
        .arg(cfg_path)
        .env("REIN_SHIPPER_LISTEN_FD", listen.as_raw_fd().to_string())
        .env("REIN_SHIPPER_CONTROL_FD", theirs.as_raw_fd().to_string())
        .env_remove(STATE_VAR)
        .spawn();
    set_cloexec(listen.as_fd(), true);
    drop(theirs);
    let child = child.map_err(|source| SupervisorError::Start {
        exe: exe.to_path_buf(),
        source,
    })?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // Reaped with waitpid(2) (the handle is not needed; dropping it neither
    // kills nor waits).
    drop(child);
    let _ = crate::private::write_atomic(&state_dir.join("worker.pid"), pid.to_string().as_bytes());
    Ok(WorkerProc::adopted(pid, ours))
}

#[cfg(test)]
mod tests {
    use super::*;

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
