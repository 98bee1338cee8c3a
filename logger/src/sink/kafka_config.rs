//! Settings of the Kafka sink (module-independent, so the shipper's settings
//! parse whether or not the sink is compiled in).

use std::path::PathBuf;
use std::time::Duration;

/// Settings of the Kafka sink (shipper keys `kafka_*`).
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `kafka_brokers`: bootstrap servers, `host:port,host:port`.
    pub brokers: String,
    /// `kafka_topic`: default topic (default `rein-logs`).
    pub topic: String,
    /// `kafka_compression`: `none` (default), `gzip`, `lz4`, `zstd`, `snappy`.
    pub compression: String,
    /// `kafka_message_timeout`: librdkafka's delivery timeout per attempt (default 30s);
    /// a timed-out record is produced again, never dropped.
    pub message_timeout: Duration,
    /// `kafka_batch_records` / `kafka_batch_bytes`: records per batch from the buffer.
    pub batch_records: usize,
    /// Bytes per batch.
    pub batch_bytes: usize,
    /// `kafka_backoff_max`: longest delay between attempts.
    pub backoff_max: Duration,
    /// `kafka_dead_letter`: records the broker can never accept.
    pub dead_letter: PathBuf,
    /// `kafka_properties`: extra librdkafka settings (`key=value;key=value`, e.g. TLS/SASL).
    pub properties: Vec<(String, String)>,
    /// `route_failure`: what becomes of the records of a topic that refuses them for good.
    pub route_failure: super::route::RouteFailure,
}
