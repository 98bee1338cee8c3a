//! Sinks: they read batches from a disk buffer and acknowledge them only once
//! every record is either stored by the destination or written to the
//! dead-letter file. Each sink implements [`Sink`] (its destination's
//! protocol); the delivery loop, the route policy, the backoff and the
//! counters are the same for all (`deliver`).

pub mod backoff;
pub mod control;
pub mod deadletter;
pub mod deadletter_limits;
pub mod deadletter_shares;
pub mod deliver;
pub mod error;
pub mod es;
pub mod es_answer;
pub mod es_auth;
pub mod es_sink;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kafka_config;
pub mod nats;
pub mod nats_config;
pub mod nats_conn;
pub mod nats_proto;
#[cfg(feature = "redis")]
pub mod redis;
pub mod redis_config;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod refused;
pub mod route;
pub mod route_table;
#[cfg(feature = "s3")]
pub mod s3;
pub mod s3_config;
pub mod s3_key;
pub mod s3_object;
pub mod s3_shipped;
#[cfg(feature = "s3")]
pub mod s3_store;
pub mod s3_uploads;

use std::sync::atomic::AtomicU64;

pub use control::{Control, Wake};
pub use deliver::{decode_batch, Delivery, ShipError, Sink, SinkCore};
pub use error::SinkError;

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records stored by the destination (including ones it already had).
    pub shipped: AtomicU64,
    /// Records the destination already had (a resend after a crash or a lost response).
    pub duplicates: AtomicU64,
    /// Record sends repeated after 429/5xx or a failed request.
    pub retried: AtomicU64,
    /// Records given to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Of those, records not written because the file was full and
    /// `dead_letter_full_policy` is `drop`.
    pub dead_letter_dropped: AtomicU64,
    /// Of those, records not written because their container had used its
    /// share of the file (`max_dead_letter_bytes_per_container`).
    pub dead_letter_over_share: AtomicU64,
    /// 1 while the dead-letter file is full (the sink waits under `pause`).
    pub dead_letter_full: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that failed as a whole (connection, timeout, 429, 5xx, ...).
    pub failed_requests: AtomicU64,
    /// Per route (index, topic, stream): failure state and counters.
    pub routes: route::RouteTable,
    // Answers of the destination refused (too large, malformed, truncated,
    // slow, unusable): the batch was resent, never acknowledged on them.
    /// Refused answers per reason.
    pub responses_refused: refused::ResponseRefusals,
}
