//! rein-logger: a Mesos `ContainerLogger` that ships every line of every
//! container as structured records, through a per-agent shipper with a disk
//! buffer, to Elasticsearch (and keeps writing the sandbox files).

pub mod breaker;
pub mod fallback;
pub mod fault;
pub mod handoff;
pub mod http;
pub mod module;
pub mod peercred;
pub mod private;
pub mod proto;
pub mod record;
pub mod redact;
pub mod sandbox;
pub mod shipper;
pub mod sink;
pub mod wal;
pub mod walrec;
