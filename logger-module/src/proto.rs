//! The local protocol between the module (in the agent), the shipper's
//! supervisor and its worker: one `SOCK_SEQPACKET` message per request, file
//! descriptors passed with `SCM_RIGHTS`. No task-supplied string is ever
//! interpreted by a shell, written to a config file or put on a command line.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};

pub use crate::control::{Control, DecodeError, Reply, Request, PROBE};
pub use crate::file_spec::{FileCaps, FileMultiline, FileSpec};

/// What the logger knows about a container; sent to the shipper at `prepare`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// Container id chain, root first (`["root", "child"]`).
    pub container_chain: Vec<String>,
    /// Mesos agent id.
    pub agent_id: Option<String>,
    /// Framework id.
    pub framework_id: Option<String>,
    /// Executor id.
    pub executor_id: Option<String>,
    /// Task id.
    pub task_id: Option<String>,
    /// Task name.
    pub task_name: Option<String>,
    /// ExecutorInfo labels.
    pub executor_labels: Vec<(String, String)>,
    /// TaskInfo labels (win over executor labels with the same key).
    pub task_labels: Vec<(String, String)>,
    /// The container's sandbox directory.
    pub sandbox: PathBuf,
}

impl SourceMeta {
    /// `root.child` form of the container id.
    pub fn container_id(&self) -> String {
        self.container_chain.join(".")
    }
}

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
    /// NATS JetStream.
    Nats,
    /// S3-compatible object storage.
    S3,
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
            "nats" => Some(SinkKind::Nats),
            "s3" => Some(SinkKind::S3),
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
            SinkKind::Nats => "nats",
            SinkKind::S3 => "s3",
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

/// A sink name this version does not know (written by a newer one) reads as
/// [`SinkKind::None`]: the container's output then goes to its sandbox files
/// only, instead of the whole registration being unreadable.
fn sink_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SinkKind, D::Error> {
    let name = String::deserialize(d)?;
    Ok(SinkKind::parse(&name).unwrap_or_else(|| {
        tracing::warn!(
            sink = name,
            "unknown sink in a registration: sandbox files only"
        );
        SinkKind::None
    }))
}

/// [`sink_or_none`] for an optional sink (a log file's own).
pub(crate) fn opt_sink_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SinkKind>, D::Error> {
    Option::<String>::deserialize(d).map(|o| {
        o.map(|name| {
            SinkKind::parse(&name).unwrap_or_else(|| {
                tracing::warn!(
                    sink = name,
                    "unknown sink of a log file in a registration: sandbox files only"
                );
                SinkKind::None
            })
        })
    })
}

/// How a record keeps bytes that its text (`message`) cannot hold exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryMode {
    /// Text only: invalid UTF-8 becomes U+FFFD, `\r` before `\n` and empty
    /// lines are dropped (the sandbox files keep every byte).
    #[default]
    Text,
    /// Every line is a record (empty ones too) and a record whose `message`
    /// is not exactly its bytes carries them, base64, in `log.original_bytes`.
    Base64,
}

impl BinaryMode {
    /// Parses the label value.
    pub fn parse(s: &str) -> Option<BinaryMode> {
        match s {
            "text" => Some(BinaryMode::Text),
            "base64" => Some(BinaryMode::Base64),
            _ => None,
        }
    }
}

/// A mode this version does not know (written by a newer one) reads as
/// [`BinaryMode::Text`], like an unknown sink reads as `none`.
fn binary_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BinaryMode, D::Error> {
    let name = String::deserialize(d)?;
    Ok(BinaryMode::parse(&name).unwrap_or_else(|| {
        tracing::warn!(binary = name, "unknown binary mode in a registration: text");
        BinaryMode::Text
    }))
}

/// Per-container choices (labels / variables within operator caps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOptions {
    /// Destination.
    #[serde(deserialize_with = "sink_or_none")]
    pub sink: SinkKind,
    /// Index pattern or topic; empty for the shipper's default.
    pub route: String,
    /// Multiline joining, if asked for.
    pub multiline: Option<MultilineSpec>,
    /// Bytes per second read from the container at most (0: unlimited).
    pub rate_limit: u64,
    /// Log files in the sandbox to follow besides stdout and stderr.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// The operator's bounds on following them.
    #[serde(default)]
    pub file_caps: FileCaps,
    /// Text or exact bytes in records (absent from older registrations: text).
    #[serde(default, deserialize_with = "binary_or_text")]
    pub binary: BinaryMode,
}

/// Major version of the registration format (the module's message and the
/// worker's `registration.json`). Within a major version fields are only
/// added, each with a serde default, and readers ignore fields they do not
/// know: a newer worker reads an older registration, an older worker of the
/// same major version a newer one. An incompatible change takes a new major
/// version.
pub const REGISTRATION_VERSION: u32 = 1;

/// A container registration: sent by the module with the read ends of the
/// container's stdout and stderr pipes; the worker keeps it as
/// `registration.json` to take the container back after a restart.
/// Fields added after version 1 must carry `#[serde(default)]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Major format version ([`REGISTRATION_VERSION`]).
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
    send(sock, data, fds, MsgFlags::MSG_NOSIGNAL)
}

/// The same, without blocking: `EAGAIN` when the peer's queue is full.
pub fn send_with_fds_nowait(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    send(
        sock,
        data,
        fds,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )
}

fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd], flags: MsgFlags) -> nix::Result<()> {
    let iov = [IoSlice::new(data)];
    if fds.is_empty() {
        sendmsg::<()>(sock.as_raw_fd(), &iov, &[], flags, None)?;
    } else {
        let cmsg = [ControlMessage::ScmRights(fds)];
        sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, flags, None)?;
    }
    Ok(())
}

/// Most descriptors one message may carry (a registration has two).
pub const MAX_FDS: usize = 8;

/// Receives one message and the descriptors attached to it (close-on-exec).
/// An empty message with no descriptors means the peer closed.
///
/// A message cut by the kernel is an error, never acted on: `EMSGSIZE` when
/// its bytes did not fit `MAX_MESSAGE` (`MSG_TRUNC`), `ETOOMANYREFS` when it
/// carried more than [`MAX_FDS`] descriptors (`MSG_CTRUNC`: the kernel closed
/// the others). Every descriptor received with it is closed before returning.
pub fn recv_with_fds(sock: BorrowedFd<'_>) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::errno::Errno;
    let mut buf = vec![0u8; MAX_MESSAGE];
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    const CMSG_WORDS: usize = 8;
    let mut cmsg = [0u64; CMSG_WORDS];
    #[allow(clippy::cast_possible_truncation)] // 32 bytes
    const FDS_BYTES: u32 = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FDS_BYTES) } as usize;
    assert!(space <= std::mem::size_of_val(&cmsg));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovec, no control).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg.as_mut_ptr().cast();
    hdr.msg_controllen = space;
    let n = loop {
        // SAFETY: `hdr` points to `buf` and `cmsg`, both alive and of the
        // lengths given, for the whole call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if let Ok(n) = usize::try_from(n) {
            break n;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    };
    // Take ownership of every descriptor the kernel installed, first: an
    // error below then closes them.
    let mut fds = Vec::new();
    let control_end = hdr.msg_controllen;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk `hdr`'s control buffer within
    // `msg_controllen` (set by the kernel, at most our buffer's size).
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
    while !c.is_null() {
        // SAFETY: `c` is a header inside the control buffer (checked by CMSG_*).
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        // SAFETY: as above; CMSG_DATA/CMSG_LEN only compute addresses and sizes.
        let (data, header) = unsafe { (libc::CMSG_DATA(c), libc::CMSG_LEN(0) as usize) };
        let offset = data as usize - cmsg.as_ptr() as usize;
        #[allow(clippy::unnecessary_cast)] // cmsg_len is not usize on every libc
        let len = (len as usize).min(control_end.saturating_sub(offset - header));
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS && len >= header {
            let count = (len - header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: `count` descriptors lie at `data`, within the buffer
                // (bounded by msg_controllen above); unaligned read of an int.
                let fd = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                if fd >= 0 {
                    // SAFETY: the kernel just installed this descriptor in our
                    // table for us; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(&hdr, c) };
    }
    if hdr.msg_flags & libc::MSG_TRUNC != 0 {
        drop(fds);
        return Err(Errno::EMSGSIZE);
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        drop(fds);
        return Err(Errno::ETOOMANYREFS);
    }
    buf.truncate(n);
    Ok((buf, fds))
}

/// True when the peer has closed the connection (a module that stopped
/// waiting for the answer): what it sent must not be acted on any more.
pub fn peer_closed(sock: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP))
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

#[cfg(test)]
mod registration_format {
    use super::*;

    const V1: &str = include_str!("../../logger/tests/fixtures/registration-v1.json");
    const V1_MULTILINE: &str =
        include_str!("../../logger/tests/fixtures/registration-v1-multiline.json");
    const V1_NEWER: &str = include_str!("../../logger/tests/fixtures/registration-v1-newer.json");

    #[test]
    fn version_1_as_written_before_reads_unchanged() {
        let r: Registration = serde_json::from_str(V1).unwrap();
        assert_eq!(r.version, REGISTRATION_VERSION);
        assert_eq!(r.key, "parent-1.c-v1");
        assert_eq!(r.options.sink, SinkKind::Elasticsearch);
        assert_eq!(r.sandbox, PathBuf::from("/SANDBOX"));
        let m: Registration = serde_json::from_str(V1_MULTILINE).unwrap();
        assert_eq!(m.options.sink, SinkKind::None);
        assert_eq!(
            m.options
                .multiline
                .as_ref()
                .and_then(|s| s.pattern.as_deref()),
            Some("^\\d")
        );
        // What this version writes reads back the same (and as version 1).
        let again: Registration = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn fields_of_a_newer_version_are_ignored() {
        let newer: Registration = serde_json::from_str(V1_NEWER).unwrap();
        let v1: Registration = serde_json::from_str(V1).unwrap();
        assert_eq!(newer, v1);
    }

    #[test]
    fn an_unknown_sink_reads_as_sandbox_files_only() {
        let s = V1.replace("\"elasticsearch\"", "\"loki\"");
        let r: Registration = serde_json::from_str(&s).unwrap();
        assert_eq!(r.options.sink, SinkKind::None);
    }

    #[test]
    fn the_binary_mode_is_text_when_absent_or_unknown() {
        let v1: Registration = serde_json::from_str(V1).unwrap();
        assert_eq!(v1.options.binary, BinaryMode::Text);
        for (mode, want) in [
            ("base64", BinaryMode::Base64),
            ("text", BinaryMode::Text),
            ("zstd", BinaryMode::Text),
        ] {
            let s = V1.replace(
                "\"rate_limit\": 0",
                &format!("\"rate_limit\": 0, \"binary\": \"{mode}\""),
            );
            let r: Registration = serde_json::from_str(&s).unwrap();
            assert_eq!(r.options.binary, want, "{s}");
        }
    }
}
