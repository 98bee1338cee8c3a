//! Errors of the disk isolator, each naming the container's object and the reason.

use std::io;
use std::path::PathBuf;

use rein_core::config::ConfigError;
use rein_core::params::ParamError;
use rein_core::state::StateError;
use rein_core::ContainerId;

use super::kernel::Limits;
use super::projects::ProjectError;

/// What the disk isolator refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A label or variable of the task.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A module parameter.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// The id allocator.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// A capability drop this agent would refuse (see `rein_core::launch_policy`).
    #[error(transparent)]
    Capabilities(#[from] rein_core::launch_policy::Refusal),
    /// `prepare()` twice for one container.
    #[error("container {0} was already prepared")]
    AlreadyPrepared(ContainerId),
    /// The sandbox's filesystem could not be inspected.
    #[error("inspecting the filesystem of sandbox {}: {source}", sandbox.display())]
    Filesystem {
        /// The sandbox.
        sandbox: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Every id of the operator's range is held.
    #[error(
        "no free disk project id: all {total} ids of project_ids=[{first}-{last}] are held \
         ({live} by running containers, {awaiting_gc} by sandboxes awaiting garbage \
         collection, the rest by files still charged to them); widen the module parameter \
         project_ids or shorten the agent's --gc_delay"
    )]
    PoolExhausted {
        /// Ids in the range.
        total: u64,
        /// First id of the range.
        first: u32,
        /// Last id of the range.
        last: u32,
        /// Ids of running containers.
        live: usize,
        /// Ids of sandboxes awaiting garbage collection.
        awaiting_gc: usize,
    },
    /// Every id tried was still charged for files outside any sandbox.
    #[error(
        "no clean disk project id after {tries} tries: files outside any sandbox are charged \
         to them (see the log); widen the module parameter project_ids"
    )]
    NoCleanId {
        /// Ids tried.
        tries: usize,
    },
    /// Setting a project's limits failed.
    #[error(
        "setting limits soft={} hard={} bytes of project {project} (sandbox {}): {source}",
        limits.soft, limits.hard, sandbox.display()
    )]
    SetLimits {
        /// The project.
        project: u32,
        /// The limits.
        limits: Limits,
        /// Its sandbox.
        sandbox: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Setting the project id over a sandbox failed.
    #[error("setting project id {project} on sandbox {}: {source}", sandbox.display())]
    SetProject {
        /// The project.
        project: u32,
        /// The sandbox.
        sandbox: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Reading a project's quota failed.
    #[error("reading the quota of project {project}: {source}")]
    ReadQuota {
        /// The project.
        project: u32,
        /// The kernel's answer.
        source: io::Error,
    },
}
