//! Shared building blocks of the rein Mesos modules.
//!
//! Everything that more than one isolator (or the logger) needs lives here once:
//! the plain-Rust view of a Mesos container, the per-task label schema and its
//! parser, module parameters, the per-container state store used by `recover()`,
//! and the cgroupfs seam that every kernel write goes through.

pub mod atomic_file;
pub mod cgroupfs;
pub mod config;
pub mod container;
pub mod field_bytes;
pub mod isolator;
pub mod launch_policy;
pub mod params;
pub mod raw_config;
pub mod schema;
pub mod state;
pub mod terminal;
pub mod units;

pub use container::{ContainerId, ContainerSpec, Resources};
pub use isolator::{
    Isolator, LaunchInfo, Limitation, LimitationNotifier, RecoveredContainer, Statistics, Status,
};
