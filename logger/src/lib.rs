//! rein-logger: a Mesos `ContainerLogger` that ships every line of every
//! container as structured records, through a per-agent shipper with a disk
//! buffer, to Elasticsearch (and keeps writing the sandbox files).
//!
//! This crate is the shipper. What runs in the agent (the module, its
//! protocol, route validation, fallback records) is `rein-log-module`,
//! re-exported here at its old paths.

pub use rein_log_module::{
    breaker, fallback, file_spec, handoff, module, peercred, private, proto, route, sandbox,
};

pub mod choice;
pub mod fault;
pub mod http;
pub mod record;
pub mod redact;
pub mod shipper;
pub mod sink;
pub mod wal;
pub mod walrec;
