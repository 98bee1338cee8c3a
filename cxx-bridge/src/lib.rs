//! The bridge between the Mesos C++ shim and the rein modules.
//!
//! Every entry point returns at once: the work is queued to a Rust-owned thread per
//! module instance (so no libprocess thread ever blocks and the module needs no
//! locks; the logger's `prepare` runs on a small pool instead, so that launches
//! never queue behind one waiting for the shipper), run inside `catch_unwind`, and
//! its outcome completes the shim's promise.
//! A panic becomes a failed future naming the module and the call; it never
//! crosses into the agent.

mod actor;
mod agent;
mod bridge;
mod convert;
mod isolator;
mod launch;
mod log;
mod logger;
#[cfg(feature = "probe")]
mod probe;

pub use actor::{Completer, Outcome};
pub use agent::install_mesos_enums;
pub use bridge::ffi::*;
pub use isolator::{create_isolator, IsolatorHandle};
pub use log::install_log_sink;
pub use logger::{create_logger, LoggerHandle};
