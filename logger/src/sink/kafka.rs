//! The Kafka sink: key = container id (one partition per container, so its
//! records stay in order), metadata as headers, `acks=all`, idempotent
//! producer. A record is never given up by timeout: until every record of a
//! batch is acknowledged by the broker the batch stays in the disk buffer;
//! failed records are produced again after a backoff. Only records the broker
//! can never accept (too large, invalid) go to the dead-letter file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::backoff::Backoff;
use super::deadletter::DeadLetter;
use super::route;
use super::SinkStats;
use crate::http::Refusal;
use crate::wal::{Batch, Wal};
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
    dead: DeadLetter,
    backoff: Backoff,
    /// Counters.
    pub stats: Arc<SinkStats>,
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
    pub fn new(cfg: KafkaConfig, stats: Arc<SinkStats>) -> Result<KafkaSink, String> {
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
            .map_err(|e| {
                // librdkafka quotes a refused value: it may be a password.
                let e = crate::redact::scrub(&e.to_string(), &cfg.secrets());
                format!("kafka producer: {e}")
            })?;
        Ok(KafkaSink {
            dead: DeadLetter::new(&cfg.dead_letter, stats.clone()),
            backoff: Backoff::new(Duration::from_millis(100), cfg.backoff_max),
            producer,
            cfg,
            stats,
        })
    }

    /// Ships batches from `wal` until `stop` is set.
    pub fn run(&mut self, wal: &Wal, stop: &AtomicBool) {
        let (records, bytes) = (self.cfg.batch_records, self.cfg.batch_bytes);
        super::run_batches("kafka", wal, stop, records, bytes, |batch, stop| {
            self.ship(batch, stop)
        });
    }

    /// Produces one batch until every record is acknowledged or dead-lettered;
    /// false if stopped first (the batch is then sent again after a restart).
    pub fn ship(&mut self, batch: &Batch, stop: &AtomicBool) -> bool {
        let (recs, mut pending) = super::decode_batch(batch, "kafka", &mut self.dead, &self.stats);
        let default_topic = self.cfg.topic.clone();
        // A route no topic can have (buffered before a rule existed): at once.
        pending.retain(|&i| {
            let Some(r) = recs[i] else { return false };
            match route::check_kafka_topic(r.route) {
                Ok(()) => true,
                Err(e) => {
                    let why = format!("refused route: {e}");
                    self.dead.add(
                        "kafka",
                        &self.topic_of(&r),
                        r.container,
                        r.id,
                        0,
                        why.as_bytes(),
                        r.doc,
                    );
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.stats.routes.invalid("kafka", &self.topic_of(&r), &e);
                    false
                }
            }
        });
        // Topics stored in this batch (see `route::BatchRoutes`).
        let mut batch_routes = route::BatchRoutes::default();
        while !pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.producer
                .context()
                .results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let mut sent = 0usize;
            let mut failed: Vec<usize> = Vec::new();
            let mut refused: Vec<(usize, KafkaError)> = Vec::new();
            for &i in &pending {
                let Some(r) = recs[i] else { continue };
                let topic = if r.route.is_empty() {
                    default_topic.as_str()
                } else {
                    std::str::from_utf8(r.route).unwrap_or(&default_topic)
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
                        Ok(()) => {
                            sent += 1;
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            rec = back;
                            self.producer.poll(Duration::from_millis(50));
                        }
                        Err((e, _)) => {
                            if classify(&e) != ErrorClass::Transient {
                                refused.push((i, e));
                            } else {
                                tracing::warn!("kafka produce: {e}");
                                failed.push(i);
                            }
                            break;
                        }
                    }
                }
            }
            // Every sent record gets exactly one delivery report (success, or an error
            // after message.timeout.ms at the latest).
            let deadline = Instant::now() + self.cfg.message_timeout + Duration::from_secs(30);
            loop {
                let done = self
                    .producer
                    .context()
                    .results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len();
                if done >= sent || Instant::now() > deadline {
                    break;
                }
                self.producer.poll(Duration::from_millis(50));
            }
            let results = std::mem::take(
                &mut *self
                    .producer
                    .context()
                    .results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            let mut reported = vec![false; recs.len()];
            let outcomes = refused
                .into_iter()
                .map(|(i, e)| (i, Some(e)))
                .chain(results);
            for (i, err) in outcomes {
                reported[i] = true;
                let Some(r) = recs[i] else { continue };
                match err {
                    None => {
                        self.stats.shipped.fetch_add(1, Ordering::Relaxed);
                        let topic = self.topic_of(&r);
                        self.stats.routes.stored("kafka", &topic);
                        batch_routes.stored(&topic);
                    }
                    Some(e) => match classify(&e) {
                        ErrorClass::Record => self.dead_letter(&r, &e),
                        ErrorClass::Route => {
                            let topic = self.topic_of(&r);
                            let policy = self.cfg.route_failure;
                            let why = e.to_string();
                            if self.stats.routes.refused("kafka", &topic, policy, &why) {
                                self.dead_letter(&r, &e);
                            } else {
                                failed.push(i);
                            }
                        }
                        ErrorClass::Transient => {
                            tracing::warn!("kafka delivery failed, will resend: {e}");
                            batch_routes.transient(self.topic_of(&r), || e.to_string(), i);
                        }
                    },
                }
            }
            // A topic failing while others of the batch are stored is that
            // topic's problem (route policy); else the broker's: resend.
            let policy = self.cfg.route_failure;
            let (dead, resend) = batch_routes.settle(&self.stats.routes, "kafka", policy);
            for (i, why) in dead {
                if let Some(r) = recs[i] {
                    self.dead_letter_why(&r, &why);
                }
            }
            failed.extend(resend);
            // Sent but never reported (cannot happen before the deadline): resend.
            for &i in &pending {
                if !reported[i] && !failed.contains(&i) && recs[i].is_some() {
                    failed.push(i);
                }
            }
            failed.sort_unstable();
            failed.dedup();
            // Records refused at send() and not reported are in `failed` too.
            pending = failed;
            if !pending.is_empty() {
                self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .retried
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                let d = self.backoff.next_delay();
                let end = Instant::now() + d;
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            } else {
                self.backoff.reset();
            }
        }
        while let Err(e) = self.dead.flush() {
            tracing::error!("dead-letter file {}: {e}", self.dead.path().display());
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        true
    }

    fn topic_of(&self, r: &WalRecord<'_>) -> String {
        if r.route.is_empty() {
            self.cfg.topic.clone()
        } else {
            String::from_utf8_lossy(r.route).into_owned()
        }
    }

    fn dead_letter(&mut self, r: &WalRecord<'_>, e: &KafkaError) {
        self.dead_letter_why(r, &e.to_string());
    }

    fn dead_letter_why(&mut self, r: &WalRecord<'_>, why: &str) {
        let topic = self.topic_of(r);
        self.dead
            .add("kafka", &topic, r.container, r.id, 0, why.as_bytes(), r.doc);
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
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
