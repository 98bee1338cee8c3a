//! The Kafka sink: key = container id (one partition per container, so its
//! records stay in order), metadata as headers, `acks=all`, idempotent
//! producer. A record is never given up by timeout: until every record of a
//! batch is acknowledged by the broker the batch stays in the disk buffer;
//! failed records are produced again after a backoff. Only records the broker
//! can never accept (too large, invalid) go to the dead-letter file.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::backoff::Backoff;
use super::deliver::{Delivery, Sink, SinkCore};
use super::route;
use super::{SinkError, SinkStats};
use crate::http::Refusal;
use crate::walrec::WalRecord;

pub use super::kafka_config::KafkaConfig;

struct Deliveries {
    results: Mutex<Vec<(usize, Option<KafkaError>)>>,
    stats: Arc<SinkStats>,
}

impl ClientContext for Deliveries {
    /// librdkafka's connection-level errors. A broker answer it refused (a
    /// size prefix over `receive.message.max.bytes`, a frame it cannot
    /// parse) is counted like the other sinks' refused answers; librdkafka
    /// drops the connection and the records are produced again.
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::BadMessage) {
            let refusal = if reason.contains("Invalid response size") {
                Refusal::TooLarge
            } else {
                Refusal::Malformed
            };
            self.stats
                .responses_refused
                .record("kafka", refusal, 0, reason);
        } else {
            tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, r: &DeliveryResult<'_>, idx: Box<usize>) {
        let err = r.as_ref().err().map(|(e, _)| e.clone());
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((*idx, err));
    }
}

/// What a produce error means for the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorClass {
    /// The record itself can never be accepted (too large, invalid).
    Record,
    /// Its topic refuses every record for good (unknown with auto-create
    /// off, invalid, not authorised): up to the route policy.
    Route,
    /// Anything else: resent after a backoff.
    Transient,
}

fn classify(e: &KafkaError) -> ErrorClass {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord,
        ) => ErrorClass::Record,
        Some(
            RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => ErrorClass::Route,
        _ => ErrorClass::Transient,
    }
}

/// The Kafka sink.
pub struct KafkaSink {
    cfg: KafkaConfig,
    producer: BaseProducer<Deliveries>,
    core: SinkCore,
}

/// `receive.message.max.bytes` unless `kafka_properties` sets it: room for
/// the metadata of a large cluster, far below what a hostile size prefix asks.
pub const KAFKA_MAX_RESPONSE_BYTES: u64 = 64 << 20;

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.cfg.brokers)
            .finish()
    }
}

impl KafkaSink {
    /// Creates the producer (no connection is made yet).
    pub fn new(cfg: KafkaConfig, stats: Arc<SinkStats>) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                cfg.message_timeout.as_millis().to_string(),
            )
            .set("compression.type", &cfg.compression)
            .set("linger.ms", "5")
            // The largest answer accepted from a broker: a bigger size prefix
            // is refused before anything is allocated, and the connection
            // dropped (librdkafka's default is 100 MB).
            .set(
                "receive.message.max.bytes",
                KAFKA_MAX_RESPONSE_BYTES.to_string(),
            )
            // A missing topic (auto-create off) fails its records as "unknown topic",
            // a route refusal, before they would time out (a transient error).
            .set(
                "topic.metadata.propagation.max.ms",
                (cfg.message_timeout.as_millis() / 2)
                    .clamp(1000, 30_000)
                    .to_string(),
            );
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let producer: BaseProducer<Deliveries> = cc
            .create_with_context(Deliveries {
                results: Mutex::default(),
                stats: stats.clone(),
            })
            .map_err(|e| SinkError::Client {
                key: "kafka_properties",
                // librdkafka quotes a refused value: it may be a password.
                reason: format!(
                    "kafka producer: {}",
                    crate::redact::scrub(&e.to_string(), &cfg.secrets())
                ),
            })?;
        Ok(KafkaSink {
            core: SinkCore::new(
                "kafka",
                stats,
                &cfg.dead_letter,
                Backoff::new(Duration::from_millis(100), cfg.backoff_max),
                cfg.route_failure,
                (cfg.batch_records, cfg.batch_bytes),
            ),
            producer,
            cfg,
        })
    }

    fn results(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Option<KafkaError>)>> {
        self.producer
            .context()
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `r` (record `i` of the attempt) to the producer, waiting while
    /// its queue is full. Sent: `None`; else what became of it.
    fn produce(&self, i: usize, r: &WalRecord<'_>) -> Option<Delivery> {
        let topic = if r.route.is_empty() {
            self.cfg.topic.as_str()
        } else {
            std::str::from_utf8(r.route).unwrap_or(&self.cfg.topic)
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "rein.id",
                value: Some(r.id),
            })
            .insert(Header {
                key: "rein.container",
                value: Some(r.container),
            })
            .insert(Header {
                key: "rein.stream",
                value: Some(r.stream.name()),
            });
        let mut rec = BaseRecord::with_opaque_to(topic, Box::new(i))
            .key(r.container)
            .payload(r.doc)
            .headers(headers)
            .timestamp(r.ts_ms);
        loop {
            match self.producer.send(rec) {
                Ok(()) => return None,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) if classify(&e) == ErrorClass::Transient => {
                    tracing::warn!("kafka produce: {e}");
                    return Some(Delivery::Resend);
                }
                Err((e, _)) => return Some(delivery(Some(&e))),
            }
        }
    }
}

/// What a delivery report (or a produce error) means for the record.
fn delivery(err: Option<&KafkaError>) -> Delivery {
    let Some(e) = err else {
        return Delivery::Stored;
    };
    let reason = e.to_string();
    match classify(e) {
        ErrorClass::Record => Delivery::Dead { status: 0, reason },
        ErrorClass::Route => Delivery::RouteRefused { status: 0, reason },
        ErrorClass::Transient => Delivery::Transient { status: 0, reason },
    }
}

impl Sink for KafkaSink {
    fn core(&self) -> &SinkCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut SinkCore {
        &mut self.core
    }

    fn check_route(&self, route: &[u8]) -> Result<(), route::BadRoute> {
        route::check_kafka_topic(route)
    }

    fn target(&self, r: &WalRecord<'_>) -> String {
        if r.route.is_empty() {
            self.cfg.topic.clone()
        } else {
            String::from_utf8_lossy(r.route).into_owned()
        }
    }

    /// Produces every record, then waits for their delivery reports.
    fn send(&mut self, records: &[WalRecord<'_>]) -> Vec<Delivery> {
        self.core.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.results().clear();
        // Not reported (cannot happen before the deadline): resent.
        let mut out = vec![Delivery::Resend; records.len()];
        let mut sent = 0usize;
        for (i, r) in records.iter().enumerate() {
            match self.produce(i, r) {
                None => sent += 1,
                Some(d) => out[i] = d,
            }
        }
        // Every sent record gets exactly one delivery report (success, or an error
        // after message.timeout.ms at the latest).
        let deadline = Instant::now() + self.cfg.message_timeout + Duration::from_secs(30);
        while self.results().len() < sent && Instant::now() <= deadline {
            self.producer.poll(Duration::from_millis(50));
        }
        for (i, err) in std::mem::take(&mut *self.results()) {
            if let Some(slot) = out.get_mut(i) {
                *slot = delivery(err.as_ref());
            }
        }
        if out.iter().any(Delivery::is_failure) {
            self.core.count_failed_request();
        }
        out
    }

    /// Delivers what the producer still holds (records of a batch not yet
    /// acknowledged are produced again after a restart anyway).
    fn shutdown(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            ErrorClass::Record
        );
        for c in [
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(classify(&e(c)), ErrorClass::Route, "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert_eq!(classify(&e(c)), ErrorClass::Transient, "{c:?}");
        }
    }
}
