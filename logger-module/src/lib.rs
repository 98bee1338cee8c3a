//! rein-log-module: the part of the rein container logger that runs inside
//! the Mesos agent. `LoggerModule::prepare` hands a container's pipes to the
//! per-agent shipper (rein-logger) over its unix socket, or falls back to
//! sandbox files. Nothing here ships records: the agent loads no TLS, HTTP
//! client, compression or disk buffer.

pub mod breaker;
pub mod control;
pub mod fallback;
pub mod file_spec;
pub mod handoff;
pub mod module;
pub mod peercred;
pub mod private;
pub mod proto;
pub mod route;
pub mod sandbox;
pub mod settings;
