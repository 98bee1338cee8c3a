//! Settings of the Kafka sink (module-independent, so the shipper's settings
//! parse whether or not the sink is compiled in).

use std::path::PathBuf;
use std::time::Duration;

use crate::redact;

/// Settings of the Kafka sink (shipper keys `kafka_*`). `Debug` hides the
/// values of secret properties (`sasl.password`, ...; see [`crate::redact`]).
#[derive(Clone)]
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

impl KafkaConfig {
    /// Values of the secret properties, to scrub from librdkafka's messages.
    pub fn secrets(&self) -> Vec<String> {
        self.properties
            .iter()
            .filter(|(k, _)| redact::is_secret_name(k))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("compression", &self.compression)
            .field("message_timeout", &self.message_timeout)
            .field("batch_records", &self.batch_records)
            .field("batch_bytes", &self.batch_bytes)
            .field("backoff_max", &self.backoff_max)
            .field("dead_letter", &self.dead_letter)
            .field("properties", &redact::pairs(&self.properties))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret_properties() {
        let c = KafkaConfig {
            brokers: "b:9093".into(),
            topic: "t".into(),
            compression: "none".into(),
            message_timeout: Duration::from_secs(1),
            batch_records: 1,
            batch_bytes: 1,
            backoff_max: Duration::from_secs(1),
            dead_letter: "/d".into(),
            properties: vec![
                ("security.protocol".into(), "sasl_ssl".into()),
                ("sasl.password".into(), "hunter2".into()),
                ("sasl.jaas.config".into(), "x password=\"hunter3\"".into()),
            ],
            route_failure: crate::sink::route::DEFAULT_ROUTE_FAILURE,
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("sasl_ssl"));
        assert_eq!(c.secrets().len(), 2);
    }
}
