//! Who is at the other end of the shipper's socket. Each side asks the
//! kernel (`SO_PEERCRED`, `SO_PEERGROUPS`): credentials taken at `connect`
//! and `listen` time, which the peer cannot forge. The shipper serves only
//! root, its own user and members of the operator's `socket_group`; the
//! module hands a container's pipes only to a shipper run by root or by its
//! own user, so a process that got hold of the socket path cannot read
//! other tenants' output either way.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Why a peer is refused, or `socket_group` unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The kernel did not say who the peer is.
    #[error("SO_PEERCRED: {0}")]
    Credentials(Errno),
    /// A module's peer that may not hand the shipper containers.
    #[error("peer {peer} is not root{}", group.map_or_else(String::new, |g| format!(" nor in socket_group {g}")))]
    NotAllowed {
        /// Who connected.
        peer: Peer,
        /// The operator's `socket_group`.
        group: Option<u32>,
    },
    /// The process serving the socket is not the shipper.
    #[error("the socket is served by {0}, not by root: not the log shipper")]
    NotShipper(Peer),
    /// `socket_group` names no group.
    #[error("no group named `{0}`")]
    NoGroup(String),
    /// The group database could not be read.
    #[error("looking up group `{name}`: {source}")]
    GroupLookup {
        /// The name looked up.
        name: String,
        /// Cause.
        source: Errno,
    },
}

/// Credentials of a socket's peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id at connect/listen time.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups (empty where the kernel cannot tell).
    pub groups: Vec<u32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} uid {} gid {}", self.pid, self.uid, self.gid)
    }
}

/// Reads the peer's credentials from a connected unix socket.
pub fn peer(sock: BorrowedFd<'_>) -> nix::Result<Peer> {
    let cred = getsockopt(&sock, PeerCredentials)?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(sock),
    })
}

/// Supplementary groups of the peer (`SO_PEERGROUPS`, Linux 4.13).
fn peer_groups(sock: BorrowedFd<'_>) -> Vec<u32> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * 4).unwrap_or(0);
        // SAFETY: getsockopt into a buffer of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = usize::try_from(len).unwrap_or(0) / 4;
        if r == 0 {
            groups.truncate(n);
            return groups;
        }
        // ERANGE: `len` says how much is needed.
        if Errno::last() == Errno::ERANGE && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Vec::new();
    }
}

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The shipper's check of a connecting module: root, the shipper's own user
/// (a shipper run unprivileged, as in tests) or a member of `group`.
pub fn check_client(sock: BorrowedFd<'_>, group: Option<u32>) -> Result<Peer, PeerError> {
    let p = peer(sock).map_err(PeerError::Credentials)?;
    let in_group = group.is_some_and(|g| p.gid == g || p.groups.contains(&g));
    if p.uid == 0 || p.uid == own_uid() || in_group {
        Ok(p)
    } else {
        Err(PeerError::NotAllowed { peer: p, group })
    }
}

/// The module's check of the shipper it connected to: run by root or by the
/// module's own user. Anything else is not the shipper, whatever the path.
pub fn check_server(sock: BorrowedFd<'_>) -> Result<Peer, PeerError> {
    let p = peer(sock).map_err(PeerError::Credentials)?;
    if p.uid == 0 || p.uid == own_uid() {
        Ok(p)
    } else {
        Err(PeerError::NotShipper(p))
    }
}

/// Resolves `socket_group`: a group name from the group database or a number.
pub fn resolve_group(name: &str) -> Result<u32, PeerError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(PeerError::NoGroup(name.into())),
        Err(source) => Err(PeerError::GroupLookup {
            name: name.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn both_ends_see_this_process() {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let p = peer(a.as_fd()).unwrap();
        assert_eq!(p.pid, i32::try_from(std::process::id()).unwrap());
        assert_eq!(p.uid, own_uid());
        assert!(check_client(b.as_fd(), None).is_ok());
        assert!(check_server(a.as_fd()).is_ok());
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(resolve_group("0"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-rein").is_err());
    }
}
