//! The module's side of one conversation with the shipper: connect, send,
//! wait for the answer, all within one deadline. Every step is non-blocking
//! (a shipper that stopped accepting fills its backlog, and a blocking
//! `connect` would then wait forever), so a wedged shipper costs a launch at
//! most the time left to its deadline.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, UnixAddr};

use crate::proto::{self, Registration, Reply, Request};

/// Why the shipper did not take a container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// It did not answer in time (wedged, stopped or overloaded): later
    /// launches should not wait for it again.
    #[error("no answer within {0:?}: {1}")]
    Timeout(Duration, &'static str),
    /// It is not there (no socket, refused, wrong owner, connection lost).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// It answered with an error.
    #[error("refused: {0}")]
    Refused(String),
}

/// Gap between attempts while the shipper's backlog is full.
const BACKLOG_RETRY: Duration = Duration::from_millis(5);

/// A connected socket to the shipper whose owner was checked, or why not.
fn open(socket_path: &Path, deadline: Instant, limit: Duration) -> Result<OwnedFd, HandoffError> {
    let unreachable = |e: String| HandoffError::Unreachable(e);
    let s = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| unreachable(e.to_string()))?;
    let addr = UnixAddr::new(socket_path).map_err(|e| unreachable(e.to_string()))?;
    loop {
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => continue,
            // A unix socket's backlog is full: the shipper is not accepting.
            Err(Errno::EAGAIN) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(HandoffError::Timeout(limit, "its socket's backlog is full"));
                }
                std::thread::sleep(BACKLOG_RETRY.min(deadline - now));
            }
            Err(e) => return Err(unreachable(format!("connect: {e}"))),
        }
    }
    // The pipes carry the container's output: only to a shipper run by root
    // (or by our own user), whoever could bind a socket at this path.
    crate::peercred::check_server(s.as_fd()).map_err(|e| unreachable(e.to_string()))?;
    Ok(s)
}

/// Waits for `events` on `fd` until `deadline`; false when it passed.
fn wait(fd: BorrowedFd<'_>, events: PollFlags, deadline: Instant) -> Result<bool, Errno> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) if Instant::now() >= deadline => return Ok(false),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends one message (and `fds`) and returns the answer, by `deadline`.
fn exchange(
    s: &OwnedFd,
    msg: &[u8],
    fds: &[RawFd],
    deadline: Instant,
    limit: Duration,
) -> Result<Vec<u8>, HandoffError> {
    let lost = |what: &str, e: Errno| HandoffError::Unreachable(format!("{what}: {e}"));
    loop {
        match proto::send_with_fds(s.as_fd(), msg, fds) {
            Ok(()) => break,
            Err(Errno::EAGAIN) => {
                if !wait(s.as_fd(), PollFlags::POLLOUT, deadline).map_err(|e| lost("send", e))? {
                    return Err(HandoffError::Timeout(limit, "its socket took nothing"));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(lost("send", e)),
        }
    }
    if !wait(s.as_fd(), PollFlags::POLLIN, deadline).map_err(|e| lost("recv", e))? {
        return Err(HandoffError::Timeout(limit, "it took the request"));
    }
    let (reply, extra) = proto::recv_with_fds(s.as_fd()).map_err(|e| lost("recv", e))?;
    drop(extra);
    if reply.is_empty() {
        return Err(HandoffError::Unreachable(
            "it closed the connection without answering".into(),
        ));
    }
    Ok(reply)
}

/// Sends the registration and the read ends to the shipper and waits for its
/// "ok", all by `start + limit`.
pub fn register(
    socket_path: &Path,
    reg: &Registration,
    out_r: &OwnedFd,
    err_r: &OwnedFd,
    limit: Duration,
) -> Result<(), HandoffError> {
    let deadline = Instant::now() + limit;
    let msg = Request::Register(Box::new(reg.clone()))
        .encode()
        .map_err(|e| HandoffError::Unreachable(e.to_string()))?;
    let s = open(socket_path, deadline, limit)?;
    let reply = exchange(
        &s,
        &msg,
        &[out_r.as_raw_fd(), err_r.as_raw_fd()],
        deadline,
        limit,
    )?;
    match Reply::decode(&reply) {
        Reply::Ok => Ok(()),
        Reply::Error(why) => Err(HandoffError::Refused(why)),
    }
}

/// Asks the shipper whether it answers, within `limit`: `Ok` for any answer
/// (an older shipper refuses the probe, which proves it alive as well).
pub fn probe(socket_path: &Path, limit: Duration) -> Result<(), HandoffError> {
    let deadline = Instant::now() + limit;
    let s = open(socket_path, deadline, limit)?;
    exchange(&s, proto::PROBE, &[], deadline, limit).map(drop)
}
