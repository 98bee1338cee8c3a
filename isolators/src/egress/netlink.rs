//! A minimal synchronous rtnetlink client: one `NETLINK_ROUTE` socket, messages
//! built attribute by attribute, replies parsed in place.
//!
//! The isolator methods are synchronous and run on one Rust-owned thread, so a
//! blocking socket is all that is needed (no async runtime). Only what the shaper
//! uses is here: requests acknowledged by the kernel, single-reply gets and dumps.
//! Kernel errors carry the extended-ack message (`NETLINK_EXT_ACK`) when there is one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// `struct nlmsghdr` size.
const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
/// The multicast group of link notifications (`RTMGRP_LINK`).
pub const RTMGRP_LINK: u32 = 1;

/// Request flags.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// Dump every object.
pub const NLM_F_DUMP: u16 = 0x300;
/// Send the result back to the requester as well (some gets only notify otherwise).
pub const NLM_F_ECHO: u16 = 0x8;
/// Replace an existing object.
pub const NLM_F_REPLACE: u16 = 0x100;
/// Fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create the object if missing.
pub const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Nested-attribute flag bit of the attribute type.
const NLA_F_NESTED: u16 = 0x8000;

/// A netlink error: the kernel's errno and its extended-ack message.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{}", ext.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
pub struct NlError {
    /// What was asked.
    pub what: String,
    /// The errno.
    #[source]
    pub source: io::Error,
    /// The kernel's extended-ack text.
    pub ext: Option<String>,
}

impl NlError {
    /// The errno, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Rounds up to the 4-byte netlink alignment.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A message under construction.
#[derive(Debug, Clone)]
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
    what: String,
}

impl Msg {
    /// A request of `ty` with `flags` (`NLM_F_REQUEST` is added); `what` names it in errors.
    pub fn new(ty: u16, flags: u16, what: impl Into<String>) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; NLMSG_HDR]);
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Self {
            buf,
            nests: Vec::new(),
            what: what.into(),
        }
    }

    fn pad(&mut self) {
        let n = align(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Appends the family header (`tcmsg`, `ifinfomsg`, ...), as raw bytes.
    pub fn header(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends an attribute.
    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// Appends a `u32` attribute.
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Appends a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(ty, &data)
    }

    /// Opens a nested attribute; close it with [`Msg::end_nest`].
    pub fn nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost nested attribute.
    pub fn end_nest(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end_nest without nest");
        let len = u16::try_from(self.buf.len() - start).expect("nested attribute over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        assert!(self.nests.is_empty(), "unclosed nested attribute");
        let len = u32::try_from(self.buf.len()).expect("netlink message over 4 GiB");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }

    /// The bytes as they would be sent with sequence number 0 (tests).
    pub fn bytes(&mut self) -> Vec<u8> {
        self.finish(0).to_vec()
    }
}

/// One reply message: its type and payload (after the netlink header).
#[derive(Debug, Clone)]
pub struct Reply {
    /// `nlmsg_type`.
    pub ty: u16,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Reads a native-endian `u16` at `at`.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Reads a native-endian `u32` at `at`.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads a native-endian `u64` at `at`.
pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Iterates the attributes in `b` as `(type without flags, data)`.
pub fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let ty = u16_at(b, at + 2)? & !NLA_F_NESTED & !0x4000;
        if len < 4 || at + len > b.len() {
            return None;
        }
        let data = &b[at + 4..at + len];
        at += align(len);
        Some((ty, data))
    })
}

/// Finds one attribute.
pub fn find_attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

/// A string attribute's value (without the NUL).
pub fn attr_string(data: &[u8]) -> String {
    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    rx: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Self::open_groups(0)
    }

    /// Opens a socket that also receives the notifications of `groups` (a bit mask
    /// of `RTMGRP_*`).
    pub fn open_groups(groups: u32) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        // nix has no options for these two: set them by hand.
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: `one` outlives the call and its size is passed. Failure only loses
            // error detail (older kernels), so it is ignored.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    std::ptr::from_ref(&one).cast(),
                    4,
                );
            }
        }
        // The kernel answers at once; a bound on the wait turns a lost reply into an
        // error instead of a hung isolator thread.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(Self {
            fd,
            seq: 0,
            rx: vec![0; 64 * 1024],
        })
    }

    /// The socket's descriptor, for poll(2).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every pending notification without waiting; returns whether one of them
    /// announced a new or changed link. An overrun (`ENOBUFS`) counts as one: the
    /// caller then rescans.
    pub fn drain_link_events(&mut self) -> bool {
        let mut seen = false;
        loop {
            let n = match self.recv_raw(MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    seen = true;
                    continue;
                }
                Err(_) => return seen,
            };
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let len = u32_at(&self.rx, at).unwrap_or_default() as usize;
                if len < NLMSG_HDR {
                    break;
                }
                seen |= u16_at(&self.rx, at + 4) == Some(RTM_NEWLINK);
                at += align(len);
            }
        }
    }

    fn send(&mut self, msg: &mut Msg) -> Result<u32, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()).map_err(|e| NlError {
            what: msg.what.clone(),
            source: e.into(),
            ext: None,
        })?;
        Ok(seq)
    }

    /// One `recv(2)` into the reply buffer with `flags`: its length.
    fn recv_raw(&mut self, flags: MsgFlags) -> nix::Result<usize> {
        recv(self.fd.as_raw_fd(), &mut self.rx, flags)
    }

    /// Receives one datagram into the reply buffer; returns its length.
    fn recv(&mut self, what: &str) -> Result<usize, NlError> {
        loop {
            match self.recv_raw(MsgFlags::empty()) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(NlError {
                        what: what.to_owned(),
                        source: e.into(),
                        ext: None,
                    })
                }
            }
        }
    }

    /// Sends `msg` and collects replies until the acknowledgement or the end of a dump.
    fn exchange(&mut self, msg: &mut Msg) -> Result<Vec<Reply>, NlError> {
        let seq = self.send(msg)?;
        let what = msg.what.clone();
        let mut out = Vec::new();
        loop {
            let n = self.recv(&what)?;
            let mut at = 0;
            while at + NLMSG_HDR <= n {
                let b = &self.rx[..n];
                let len = u32_at(b, at).unwrap_or_default() as usize;
                let ty = u16_at(b, at + 4).unwrap_or_default();
                let flags = u16_at(b, at + 6).unwrap_or_default();
                let mseq = u32_at(b, at + 8).unwrap_or_default();
                if len < NLMSG_HDR || at + len > n {
                    break;
                }
                let payload = &b[at + NLMSG_HDR..at + len];
                at += align(len);
                if mseq != seq {
                    continue; // A late answer to an earlier request.
                }
                match ty {
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(
                            payload
                                .get(0..4)
                                .and_then(|s| s.try_into().ok())
                                .unwrap_or([0; 4]),
                        );
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(NlError {
                            what,
                            source: io::Error::from_raw_os_error(-errno),
                            ext: ext_ack(payload, flags),
                        });
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(Reply {
                            ty,
                            payload: payload.to_vec(),
                        });
                    }
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement.
    pub fn request(&mut self, mut msg: Msg) -> Result<(), NlError> {
        let flags = u16_at(&msg.buf, 6).unwrap_or_default() | NLM_F_ACK;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self.exchange(&mut msg).map(|_| ())
    }

    /// Sends a get request and returns its single reply.
    pub fn get(&mut self, mut msg: Msg) -> Result<Reply, NlError> {
        let what = msg.what.clone();
        // With an acknowledgement, a kernel that answers nothing cannot leave us waiting.
        let flags = u16_at(&msg.buf, 6).unwrap_or_default() | NLM_F_ACK;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self.exchange(&mut msg)?.pop().ok_or_else(|| NlError {
            what,
            source: io::Error::from_raw_os_error(libc::ENOENT),
            ext: Some("no reply".into()),
        })
    }

    /// Sends a dump request and returns every reply.
    pub fn dump(&mut self, mut msg: Msg) -> Result<Vec<Reply>, NlError> {
        let flags = u16_at(&msg.buf, 6).unwrap_or_default() | NLM_F_DUMP;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self.exchange(&mut msg)
    }
}

/// The extended-ack message of an error reply, if any.
fn ext_ack(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // errno, then the request's header (only the header when capped), then the TLVs.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDR
    } else {
        u32_at(payload, 4).map(|l| align(l as usize))?
    };
    let tlvs = payload.get(4 + echoed..)?;
    find_attr(tlvs, NLMSGERR_ATTR_MSG).map(attr_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_attributes_with_lengths_and_padding() {
        let mut m = Msg::new(40, NLM_F_CREATE, "test");
        m.header(&[1, 2, 3]);
        m.attr_str(1, "htb");
        m.nest(2).attr_u32(5, 7).end_nest();
        let b = m.bytes();
        assert_eq!(u32_at(&b, 0).unwrap() as usize, b.len());
        assert_eq!(u16_at(&b, 4), Some(40));
        assert_eq!(u16_at(&b, 6), Some(NLM_F_CREATE | NLM_F_REQUEST));
        let body = &b[NLMSG_HDR + 4..];
        let got: Vec<(u16, Vec<u8>)> = attrs(body).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(attr_string(&got[0].1), "htb");
        assert_eq!(got[1].0, 2);
        let inner: Vec<(u16, Vec<u8>)> = attrs(&got[1].1).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(inner, vec![(5, 7u32.to_ne_bytes().to_vec())]);
    }

    #[test]
    fn attribute_walk_stops_on_truncation() {
        let b = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(attrs(&b).count(), 0);
    }
}
