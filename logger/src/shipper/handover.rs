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
//! 1. `Listen` with the listening socket (the same socket keeps serving:
//!    registrations waiting in its backlog are kept),
//! 2. `Hold(key)` per container with the same descriptors the supervisor
//!    holds for it (both pipes, then the staging pipes' read ends),
//! 3. `Done`; and waits for `ok`.
//!
//! (Messages are [`Control`]s; see `control` for their wire form.)
//!
//! After `ok` the worker stops reading at once and exits as on SIGTERM
//! (offsets saved, sinks stopped). The new supervisor waits for it to be gone
//! before starting its own worker, which adopts every container like after a
//! restart: no pipe has two readers, none is without a holder at any time.
//! Only a process of the supervisor's own user can hand over (`SO_PEERCRED`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{accept4, bind, connect, listen, Backlog, SockFlag, UnixAddr};
use nix::sys::stat::{umask, Mode};

use crate::peercred::Peer;
use crate::proto::{self, Control, DecodeError, Reply};

/// How often an orphaned worker looks for a new supervisor.
pub const OFFER_INTERVAL: Duration = Duration::from_millis(250);

/// How long each side waits for the other's next message.
const STEP: Duration = Duration::from_secs(10);

/// Why a handover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A socket call on the handover socket failed.
    #[error("{call} {}: {source}", path.display())]
    Socket {
        /// The call.
        call: &'static str,
        /// The handover socket.
        path: PathBuf,
        /// Cause.
        source: Errno,
    },
    /// Sending or receiving failed, or the peer's credentials are unreadable.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: Errno,
    },
    /// The peer is another user's process.
    #[error("peer {0} is not of our user")]
    NotOurUser(Peer),
    /// The peer said nothing in time.
    #[error("no {0} within {STEP:?}")]
    Silent(&'static str),
    /// The first message did not carry the listening socket.
    #[error("the first message must carry the listening socket")]
    NoListenSocket,
    /// The worker closed the connection before `done`.
    #[error("the worker closed the handover")]
    Closed,
    /// A message out of place or not understood.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// A container came with a number of descriptors no worker sends.
    #[error("{0} descriptors for one container")]
    Descriptors(usize),
    /// The new supervisor refused.
    #[error("the new supervisor answered {0:?}")]
    Refused(String),
}

impl From<DecodeError> for HandoverError {
    fn from(e: DecodeError) -> Self {
        HandoverError::Unexpected(e.to_string())
    }
}

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

fn expect_same_user(sock: BorrowedFd<'_>) -> Result<Peer, HandoverError> {
    let p = crate::peercred::peer(sock).map_err(|source| HandoverError::Io {
        what: "SO_PEERCRED",
        source,
    })?;
    if p.uid != nix::unistd::geteuid().as_raw() {
        return Err(HandoverError::NotOurUser(p));
    }
    Ok(p)
}

fn recv_within(
    sock: BorrowedFd<'_>,
    what: &'static str,
) -> Result<(Vec<u8>, Vec<OwnedFd>), HandoverError> {
    let io = |source| HandoverError::Io { what, source };
    if !proto::wait_readable(sock, STEP).map_err(io)? {
        return Err(HandoverError::Silent(what));
    }
    proto::recv_with_fds(sock).map_err(io)
}

/// Worker side: hands the listening socket and every container's
/// descriptors to a new supervisor if one is waiting. `Ok(false)`: none is
/// (try again later); `Ok(true)`: it took everything, stop reading and exit.
pub fn offer(
    state_dir: &Path,
    listen: BorrowedFd<'_>,
    containers: &[(String, Vec<RawFd>)],
) -> Result<bool, HandoverError> {
    let path = socket_path(state_dir);
    let socket_err = |call, source| HandoverError::Socket {
        call,
        path: path.clone(),
        source,
    };
    let addr = UnixAddr::new(&path).map_err(|e| socket_err("address", e))?;
    let sock = proto::seqpacket_socket().map_err(|e| socket_err("socket", e))?;
    match connect(sock.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::ENOENT | Errno::ECONNREFUSED) => return Ok(false),
        Err(e) => return Err(socket_err("connect", e)),
    }
    expect_same_user(sock.as_fd())?;
    let send = |msg: Control, fds: &[RawFd]| {
        proto::send_with_fds(sock.as_fd(), &msg.encode(), fds).map_err(|source| HandoverError::Io {
            what: "sending",
            source,
        })
    };
    send(Control::Listen, &[listen.as_raw_fd()])?;
    for (key, fds) in containers {
        send(Control::Hold(key.clone()), fds)?;
    }
    send(Control::Done, &[])?;
    let (reply, _) = recv_within(sock.as_fd(), "reply")?;
    match Reply::decode(&reply) {
        Reply::Ok => Ok(true),
        Reply::Error(why) => Err(HandoverError::Refused(why)),
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
    pub fn bind(state_dir: &Path) -> Result<Listener, HandoverError> {
        use std::os::unix::fs::MetadataExt;
        let path = socket_path(state_dir);
        let socket_err = |call, source| HandoverError::Socket {
            call,
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&path);
        let addr = UnixAddr::new(&path).map_err(|e| socket_err("address", e))?;
        let sock = proto::seqpacket_socket().map_err(|e| socket_err("socket", e))?;
        // The supervisor has one thread here: nothing else is created under this umask.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = bind(sock.as_raw_fd(), &addr);
        umask(old);
        bound.map_err(|e| socket_err("bind", e))?;
        listen(&sock, Backlog::new(4).unwrap_or(Backlog::MAXCONN))
            .map_err(|e| socket_err("listen", e))?;
        let m = std::fs::metadata(&path)
            .map_err(|e| socket_err("stat", Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        Ok(Listener {
            sock,
            path,
            ino: (m.dev(), m.ino()),
        })
    }

    /// Waits up to `wait` for an orphaned worker and takes everything it
    /// holds. `Ok(None)`: nobody came.
    pub fn receive(&self, wait: Duration) -> Result<Option<Received>, HandoverError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if !proto::wait_readable(self.sock.as_fd(), left.min(Duration::from_secs(1))).map_err(
                |source| HandoverError::Io {
                    what: "waiting for a worker",
                    source,
                },
            )? {
                continue;
            }
            let Ok(fd) = accept4(self.sock.as_raw_fd(), SockFlag::SOCK_CLOEXEC) else {
                continue;
            };
            // SAFETY: a new descriptor from accept4, owned by nobody else.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            match take(conn.as_fd()) {
                Ok(r) => {
                    let _ = proto::send_with_fds(conn.as_fd(), &Reply::Ok.encode(), &[]);
                    return Ok(Some(r));
                }
                Err(e) => {
                    tracing::error!("handover refused: {e}");
                    let reply = Reply::Error(e.to_string()).encode();
                    let _ = proto::send_with_fds(conn.as_fd(), &reply, &[]);
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

fn take(conn: BorrowedFd<'_>) -> Result<Received, HandoverError> {
    let peer = expect_same_user(conn)?;
    let (msg, mut fds) = recv_within(conn, "listening socket")?;
    if !matches!(Control::decode(&msg), Ok(Control::Listen)) || fds.len() != 1 {
        return Err(HandoverError::NoListenSocket);
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
            Ok(_) => return Err(HandoverError::Closed),
            Err(e) => return Err(e),
        };
        match Control::decode(&msg)? {
            Control::Done => return Ok(r),
            Control::Hold(key) if matches!(fds.len(), 2 | 4) => r.containers.push((key, fds)),
            Control::Hold(_) => return Err(HandoverError::Descriptors(fds.len())),
            other => return Err(HandoverError::Unexpected(format!("{other:?}"))),
        }
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
