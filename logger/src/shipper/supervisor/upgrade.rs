//! In-place upgrade (SIGUSR2): the supervisor `exec`s the binary on disk,
//! same pid, keeping the listening socket, the worker (still its child) and
//! every pipe; their descriptor numbers cross the `exec` in one environment
//! variable, `listen=N [pid=P control=C] key=A,B[,C,D] ...`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use super::process::{set_cloexec, WorkerProc};
use super::table::Table;
use super::STATE_VAR;

fn take_fd(n: &str) -> Option<OwnedFd> {
    let fd: i32 = n.parse().ok()?;
    // SAFETY: the descriptor was left open for us by the previous image of this
    // process (see `exec_upgrade`); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(fd.as_fd(), true);
    Some(fd)
}

/// Parses the state left by [`exec_upgrade`] (no worker while its start
/// was being retried).
pub(super) fn restore(state: &str) -> Option<(OwnedFd, Option<WorkerProc>, Table)> {
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
    let w = pid
        .zip(control)
        .map(|(pid, control)| WorkerProc::adopted(pid, control));
    Some((listen?, w, table))
}

/// Replaces this process's image with the binary on disk, keeping the pid,
/// the socket, the worker (still our child) and every pipe. Returns only on
/// failure, with why.
pub(super) fn exec_upgrade(
    exe: &Path,
    cfg_path: &Path,
    listen: &OwnedFd,
    w: Option<&WorkerProc>,
    table: &Table,
) -> std::io::Error {
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
        set_cloexec(fd.as_fd(), false);
    }
    let err = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(cfg_path)
        .env(STATE_VAR, state)
        .exec();
    for fd in &keep {
        set_cloexec(fd.as_fd(), true);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
