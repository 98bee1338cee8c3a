//! What the net_cls isolator reports: each error names the container, file or
//! parameter and the reason.

use std::io;
use std::path::PathBuf;

use rein_core::ContainerId;

/// A net_cls failure of the isolator's own (kernel and parameter errors keep
/// their own types).
#[derive(Debug, thiserror::Error)]
pub enum NetClsError {
    /// `prepare()` twice for one container.
    #[error("container {0} was already prepared")]
    AlreadyPrepared(ContainerId),
    /// A call for a container that was never prepared.
    #[error("unknown container {0}")]
    UnknownContainer(ContainerId),
    /// The container's cgroup v2 id (its directory's inode) could not be read.
    #[error("reading {}: {source}", path.display())]
    CgroupId {
        /// The cgroup's directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Shaping by cgroup with neither hierarchy mounted.
    #[error(
        "egress shaping by cgroup needs a net_cls or a cgroup2 hierarchy; \
         neither is mounted (per {})",
        mountinfo.display()
    )]
    NoHierarchyToShape {
        /// The mountinfo file read.
        mountinfo: PathBuf,
    },
    /// No net_cls hierarchy, and none to be mounted.
    #[error(
        "no net_cls hierarchy is mounted (per {}); mount one or set mount_net_cls=true",
        mountinfo.display()
    )]
    NoNetCls {
        /// The mountinfo file read.
        mountinfo: PathBuf,
    },
    /// Steps of a container's teardown that failed (the others were done).
    #[error("{}", .0.join("; "))]
    Teardown(Vec<String>),
}
