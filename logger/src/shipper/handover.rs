//! Handover of an orphaned worker to a new supervisor.
//!
//! When the supervisor dies (`kill -9`, a crash), its worker keeps running and
//! is then the only reader of every container pipe. A supervisor started
//! afterwards (systemd `Restart=always`) finds the modules' socket still
//! served (by that worker) and, instead of refusing to start, binds a private
//! socket in the state directory (`handover.sock`, the directory is 0700)
//! and waits for the worker. A worker whose supervisor channel reached EOF
//! tries that socket every [`OFFER_INTERVAL`]; once connected it sends:
//!
//! 1. `listen` with the listening socket (the same socket keeps serving:
//!    registrations waiting in its backlog are kept),
//! 2. `add\n<key>` per container with the same descriptors the supervisor
//!    holds for it (both pipes, then the staging pipes' read ends),
//! 3. `done`; and waits for `ok`.
//!
//! After `ok` the worker stops reading at once and exits as on SIGTERM
//! (offsets saved, sinks stopped). The new supervisor waits for it to be gone
//! before starting its own worker, which adopts every container like after a
//! restart: no pipe has two readers, none is without a holder at any time.
//! Only a process of the supervisor's own user can hand over (`SO_PEERCRED`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::proto;

/// How often an orphaned worker looks for a new supervisor.
pub const OFFER_INTERVAL: Duration = Duration::from_millis(250);

/// How long each side waits for the other's next message.
const STEP: Duration = Duration::from_secs(10);

/// The private socket a new supervisor listens on for an orphaned worker.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

/// What a new supervisor got from an orphaned worker.
pub struct Received {
    /// The modules' listening socket.
    pub listen: OwnedFd,
    /// The orphaned worker's pid (from the kernel, not from the message).
    pub pid: i32,
    /// `(key, descriptors)` per container, as in the supervisor's table.
    pub containers: Vec<(String, Vec<OwnedFd>)>,
}

fn own_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn expect_same_user(sock: BorrowedFd<'_>) -> Result<crate::peercred::Peer, String> {
    let p = crate::peercred::peer(sock).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    if p.uid != own_uid() {
        return Err(format!("peer {p} is not of our user"));
    }
    Ok(p)
}

fn recv_within(sock: BorrowedFd<'_>, what: &str) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    if !proto::wait_readable(sock, STEP).map_err(|e| e.to_string())? {
        return Err(format!("no {what} within {STEP:?}"));
    }
    proto::recv_with_fds(sock).map_err(|e| format!("{what}: {e}"))
}

/// Worker side: hands the listening socket and every container's
/// descriptors to a new supervisor if one is waiting. `Ok(false)`: none is
/// (try again later); `Ok(true)`: it took everything, stop reading and exit.
pub fn offer(
    state_dir: &Path,
    listen: BorrowedFd<'_>,
    containers: &[(String, Vec<RawFd>)],
) -> Result<bool, String> {
    let path = socket_path(state_dir);
    let addr = nix::sys::socket::UnixAddr::new(&path).map_err(|e| e.to_string())?;
    let sock = proto::seqpacket_socket().map_err(|e| e.to_string())?;
    match nix::sys::socket::connect(sock.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => return Ok(false),
        Err(e) => return Err(format!("connect {}: {e}", path.display())),
    }
    expect_same_user(sock.as_fd())?;
    let send = |msg: &[u8], fds: &[RawFd]| {
        proto::send_with_fds(sock.as_fd(), msg, fds).map_err(|e| format!("sending: {e}"))
    };
    send(b"listen", &[listen.as_raw_fd()])?;
    for (key, fds) in containers {
        send(format!("add\n{key}").as_bytes(), fds)?;
    }
    send(b"done", &[])?;
    let (reply, _) = recv_within(sock.as_fd(), "reply")?;
    if reply == b"ok" {
        Ok(true)
    } else {
        Err(format!(
            "the new supervisor answered {:?}",
            String::from_utf8_lossy(&reply)
        ))
    }
}

/// The handover socket of this supervisor; removed on drop if still ours.
pub struct Listener {
    sock: OwnedFd,
    path: PathBuf,
    ino: (u64, u64),
}

impl Listener {
    /// Binds `state_dir/handover.sock` (0600), replacing a stale one.
    pub fn bind(state_dir: &Path) -> Result<Listener, String> {
        use std::os::unix::fs::MetadataExt;
        let path = socket_path(state_dir);
        let _ = std::fs::remove_file(&path);
        let addr = nix::sys::socket::UnixAddr::new(&path).map_err(|e| e.to_string())?;
        let sock = proto::seqpacket_socket().map_err(|e| e.to_string())?;
        // SAFETY: umask(2) cannot fail; the supervisor has one thread here.
        let old = unsafe { libc::umask(0o177) };
        let bound = nix::sys::socket::bind(sock.as_raw_fd(), &addr);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        bound.map_err(|e| format!("bind {}: {e}", path.display()))?;
        nix::sys::socket::listen(
            &sock,
            nix::sys::socket::Backlog::new(4).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
        )
        .map_err(|e| format!("listen: {e}"))?;
        let m = std::fs::metadata(&path).map_err(|e| e.to_string())?;
        Ok(Listener {
            sock,
            path,
            ino: (m.dev(), m.ino()),
        })
    }

    /// Waits up to `wait` for an orphaned worker and takes everything it
    /// holds. `Ok(None)`: nobody came.
    pub fn receive(&self, wait: Duration) -> Result<Option<Received>, String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if !proto::wait_readable(self.sock.as_fd(), left.min(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            // SAFETY: accept4 on our listening socket; the result is checked and owned below.
            let fd = unsafe {
                libc::accept4(
                    self.sock.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                continue;
            }
            // SAFETY: a new descriptor from accept4, owned by nobody else.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            match take(conn.as_fd()) {
                Ok(r) => {
                    let _ = proto::send_with_fds(conn.as_fd(), b"ok", &[]);
                    return Ok(Some(r));
                }
                Err(e) => {
                    tracing::error!("handover refused: {e}");
                    let _ =
                        proto::send_with_fds(conn.as_fd(), format!("error: {e}").as_bytes(), &[]);
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Another supervisor started meanwhile may have replaced the file.
        if std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn take(conn: BorrowedFd<'_>) -> Result<Received, String> {
    let peer = expect_same_user(conn)?;
    let (msg, mut fds) = recv_within(conn, "listening socket")?;
    if msg != b"listen" || fds.len() != 1 {
        return Err("the first message must carry the listening socket".into());
    }
    let mut r = Received {
        listen: fds.remove(0),
        pid: peer.pid,
        containers: Vec::new(),
    };
    loop {
        let (msg, fds) = match recv_within(conn, "container") {
            Ok((msg, fds)) if !(msg.is_empty() && fds.is_empty()) => (msg, fds),
            // The worker died in the middle: what came is all that is left of
            // those pipes, keep it (refusing would close them).
            Ok(_) | Err(_) if died(r.pid) => {
                tracing::error!(
                    pid = r.pid,
                    containers = r.containers.len(),
                    "the orphaned worker died during the handover; keeping what it handed over"
                );
                return Ok(r);
            }
            Ok(_) => return Err("the worker closed the handover".into()),
            Err(e) => return Err(e),
        };
        if msg == b"done" {
            return Ok(r);
        }
        let Some(key) = msg.strip_prefix(b"add\n") else {
            return Err(format!(
                "unexpected message {:?}",
                String::from_utf8_lossy(&msg)
            ));
        };
        if !matches!(fds.len(), 2 | 4) {
            return Err(format!("{} descriptors for one container", fds.len()));
        }
        r.containers
            .push((String::from_utf8_lossy(key).into_owned(), fds));
    }
}

/// Whether `pid` ends within a second.
fn died(pid: i32) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        if ended(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether process `pid` has ended: gone, or a zombie whose threads have all
/// exited (only then are its descriptors closed; a thread group leader is a
/// zombie while other threads still exit).
pub fn ended(pid: i32) -> bool {
    let zombie = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the last `)` (the command name may hold one).
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X'),
        Err(_) => return true,
    };
    zombie && std::fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |d| d.count() <= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_waiting_supervisor_means_nothing_is_handed_over() {
        let d = tempfile::tempdir().unwrap();
        let (a, _b) = crate::module::pipe(0).unwrap();
        assert!(!offer(d.path(), a.as_fd(), &[]).unwrap());
    }

    #[test]
    fn every_descriptor_reaches_the_new_supervisor_in_order() {
        let d = tempfile::tempdir().unwrap();
        let l = Listener::bind(d.path()).unwrap();
        let dir = d.path().to_path_buf();
        let worker = std::thread::spawn(move || {
            let listen = crate::module::pipe(0).unwrap();
            let one: Vec<_> = (0..2).map(|_| crate::module::pipe(0).unwrap()).collect();
            let two: Vec<_> = (0..4).map(|_| crate::module::pipe(0).unwrap()).collect();
            let raw = |v: &Vec<(OwnedFd, OwnedFd)>| v.iter().map(|p| p.0.as_raw_fd()).collect();
            // Keep the write ends: the receiver checks what it got by reading.
            for (i, p) in one.iter().chain(&two).enumerate() {
                nix::unistd::write(&p.1, &[u8::try_from(i).unwrap()]).unwrap();
            }
            let list = vec![("a".to_string(), raw(&one)), ("b".to_string(), raw(&two))];
            let done = offer(&dir, listen.0.as_fd(), &list).unwrap();
            (done, one, two)
        });
        let r = l.receive(Duration::from_secs(10)).unwrap().unwrap();
        let (done, _one, _two) = worker.join().unwrap();
        assert!(done);
        assert_eq!(r.pid, i32::try_from(std::process::id()).unwrap());
        let keys: Vec<_> = r
            .containers
            .iter()
            .map(|(k, f)| (k.as_str(), f.len()))
            .collect();
        assert_eq!(keys, [("a", 2), ("b", 4)]);
        let mut seen = Vec::new();
        for (_, fds) in &r.containers {
            for fd in fds {
                let mut b = [0u8; 1];
                nix::unistd::read(fd.as_raw_fd(), &mut b).unwrap();
                seen.push(b[0]);
            }
        }
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
        drop(l);
        assert!(!socket_path(d.path()).exists(), "the socket is removed");
    }

    #[test]
    fn a_running_process_has_not_ended_a_missing_one_has() {
        assert!(!ended(i32::try_from(std::process::id()).unwrap()));
        assert!(ended(i32::MAX));
    }
}
