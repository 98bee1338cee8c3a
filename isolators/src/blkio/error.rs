//! Errors of the blkio isolator, each naming the cgroup, device or setting and the
//! reason.

use std::path::PathBuf;

use rein_core::cgroupfs::CgroupError;
use rein_core::config::ConfigError;
use rein_core::params::ParamError;
use rein_core::state::StateError;
use rein_core::ContainerId;

/// What the blkio isolator refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum BlkioError {
    /// A cgroup file or directory.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// A label or variable of the task.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A module parameter.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A cgroup outside the hierarchy it should be in.
    #[error("{} is outside the hierarchy {}", path.display(), root.display())]
    OutsideHierarchy {
        /// The cgroup.
        path: PathBuf,
        /// The hierarchy's mount point.
        root: PathBuf,
    },
    /// cgroup v2 without the io controller.
    #[error(
        "the io controller is not available in {} (cgroup.controllers: '{available}'); \
         is it bound to a cgroup v1 hierarchy?",
        path.display()
    )]
    IoUnavailable {
        /// The cgroup.
        path: PathBuf,
        /// What its `cgroup.controllers` lists.
        available: String,
    },
    /// A weight was asked for and the kernel offers no weight file.
    #[error(
        "blkio.weight was asked for, but the kernel offers neither {files} in {} \
         (v1 needs the BFQ scheduler or CFQ on the device; v2 needs io.cost or BFQ)",
        path.display()
    )]
    NoWeightFile {
        /// The cgroup.
        path: PathBuf,
        /// The files looked for.
        files: &'static str,
    },
    /// A recovered container's cgroup, made by Mesos, vanished.
    #[error("the container's blkio cgroup is gone")]
    CgroupGone,
    /// `prepare()` twice for one container.
    #[error("container {0} was already prepared")]
    AlreadyPrepared(ContainerId),
    /// `isolate()` for a container never prepared.
    #[error("unknown container {0}")]
    UnknownContainer(ContainerId),
    /// No hierarchy fits the operator's `cgroup_version`.
    #[error(
        "no usable hierarchy for cgroup_version={wanted}: need a v1 blkio hierarchy or a \
         cgroup2 hierarchy offering io (per {})",
        mountinfo.display()
    )]
    NoHierarchy {
        /// The parameter's value.
        wanted: String,
        /// The mount table read.
        mountinfo: PathBuf,
    },
}
