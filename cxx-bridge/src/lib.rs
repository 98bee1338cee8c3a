//! The bridge between the Mesos C++ shim and the rein modules.
//!
//! Every entry point returns at once: the work is queued to the module instance's
//! mailbox and run, one call at a time, on Rust-owned worker threads (one per module
//! instance, shared so that a chain of calls hands over without a wake-up: see
//! `pool`), so no libprocess thread ever blocks and the module needs no locks (the
//! logger's `prepare` runs on a small pool of its own, so that launches never queue
//! behind one waiting for the shipper); each call runs inside `catch_unwind`, and
//! its outcome completes the shim's promise.
//! A panic becomes a failed future naming the module and the call; it never
//! crosses into the agent.

mod actor;
mod agent;
mod bridge;
mod convert;
mod early;
mod isolator;
mod isolators_ahead;
mod launch;
mod log;
mod logger;
mod logger_ahead;
mod pool;
#[cfg(feature = "probe")]
mod probe;

pub use actor::{flush_removals, Completer, Outcome};
pub use agent::install_mesos_enums;
pub use bridge::ffi::*;
pub use isolator::{create_isolator, IsolatorHandle};
pub use isolators_ahead::counts as early_isolator_prepares;
pub use log::install_log_sink;
pub use logger::{create_logger, LoggerHandle, PREPARE_THREADS};
pub use logger_ahead::counts as early_logger_registrations;
