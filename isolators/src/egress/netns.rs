//! Reaching a container's own network namespace through its pid.
//!
//! Packets lose their classid when they cross the veth out of a container's
//! namespace, so such containers are shaped on their own devices, inside the
//! namespace. A netlink socket stays bound to the namespace it was created in, so
//! the socket is made on a short-lived thread that joins the namespace; the
//! isolator's own thread never changes namespace.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use super::netlink::Netlink;

/// Identifies a network namespace (device and inode of its nsfs file).
pub type NetnsId = (u64, u64);

/// The calling thread's network namespace.
pub fn current_netns() -> io::Result<NetnsId> {
    let m = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((m.dev(), m.ino()))
}

/// The network namespace of `pid`.
pub fn netns_of(pid: i32) -> io::Result<NetnsId> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok((m.dev(), m.ino()))
}

/// Opens the network namespace of `pid` (the handle keeps the namespace alive).
pub fn open_netns(pid: i32) -> io::Result<File> {
    File::open(format!("/proc/{pid}/ns/net"))
}

/// A netlink socket inside the namespace `ns`, subscribed to `groups`.
pub fn netlink_in(ns: &File, groups: u32) -> io::Result<Netlink> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Netlink::open_groups(groups)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}
