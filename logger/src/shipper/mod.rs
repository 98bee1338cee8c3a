//! The per-agent shipper: a tiny supervisor that never restarts and keeps a
//! duplicate of every container pipe's read end, and a worker (restartable,
//! upgradable) that splices each pipe into the sandbox file, parses from the
//! file with checkpointed offsets, appends records to the disk buffer and
//! runs the sinks. See the README for the design and its failure cases.

pub mod config;
pub mod counters;
pub mod fallback;
pub mod handover;
pub mod logfiles;
pub mod own_cgroup;
pub mod parse_job;
pub mod parser;
pub mod parser_pool;
pub mod parser_sched;
pub mod registration;
pub mod reserve;
pub mod stream;
pub mod supervisor;
pub mod threads;
pub mod worker;

pub use config::ShipperConfig;
