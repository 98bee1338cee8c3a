//! The local protocol between the module (in the agent), the shipper's
//! supervisor and its worker: one `SOCK_SEQPACKET` message per request, file
//! descriptors passed with `SCM_RIGHTS`. No task-supplied string is ever
//! interpreted by a shell, written to a config file or put on a command line.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::record::SourceMeta;

/// Largest message (registration JSON) accepted.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Which sink a container's records go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Elasticsearch `_bulk`.
    Elasticsearch,
    /// Kafka.
    Kafka,
    /// Redis Streams.
    Redis,
    /// Sandbox files only.
    None,
}

impl SinkKind {
    /// Parses the label value.
    pub fn parse(s: &str) -> Option<SinkKind> {
        match s {
            "elasticsearch" => Some(SinkKind::Elasticsearch),
            "kafka" => Some(SinkKind::Kafka),
            "redis" => Some(SinkKind::Redis),
            "none" => Some(SinkKind::None),
            _ => None,
        }
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Elasticsearch => "elasticsearch",
            SinkKind::Kafka => "kafka",
            SinkKind::Redis => "redis",
            SinkKind::None => "none",
        }
    }
}

/// Multiline settings as sent to the shipper (already checked against caps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultilineSpec {
    /// `None`: the built-in `indented` rule; `Some`: a start-of-record pattern.
    pub pattern: Option<String>,
    /// Lines per record at most.
    pub max_lines: u32,
    /// Bytes per record at most.
    pub max_bytes: u64,
    /// Flush timeout, milliseconds.
    pub timeout_ms: u64,
}

/// Per-container choices (labels / variables within operator caps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOptions {
    /// Destination.
    pub sink: SinkKind,
    /// Index pattern or topic; empty for the shipper's default.
    pub route: String,
    /// Multiline joining, if asked for.
    pub multiline: Option<MultilineSpec>,
    /// Bytes per second read from the container at most (0: unlimited).
    pub rate_limit: u64,
}

/// A container registration: sent by the module with the read ends of the
/// container's stdout and stderr pipes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Protocol version (1).
    pub version: u32,
    /// Flat, reversible file name of the container id (state directory name).
    pub key: String,
    /// Metadata attached to every record.
    pub meta: SourceMeta,
    /// Choices.
    pub options: ContainerOptions,
    /// Sandbox directory (where `stdout`/`stderr` are written and rotated).
    pub sandbox: PathBuf,
}

/// A close-on-exec `SOCK_SEQPACKET` unix socket (the module's connection and
/// the shipper's listening socket: one message per registration).
pub fn seqpacket_socket() -> nix::Result<OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Sends `data` with `fds` attached.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(data)];
    if fds.is_empty() {
        sendmsg::<()>(sock.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)?;
    } else {
        let cmsg = [ControlMessage::ScmRights(fds)];
        sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    }
    Ok(())
}

/// Receives one message and the descriptors attached to it (close-on-exec).
/// An empty message with no descriptors means the peer closed.
pub fn recv_with_fds(sock: BorrowedFd<'_>) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed this descriptor in our table for us;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    buf.truncate(n);
    Ok((buf, fds))
}

/// Waits until `fd` is readable, at most `timeout`. Returns false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> nix::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
