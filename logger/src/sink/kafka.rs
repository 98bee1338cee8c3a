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
use super::SinkStats;
use crate::wal::{Batch, Wal};
use crate::walrec::WalRecord;

pub use super::kafka_config::KafkaConfig;

#[derive(Default)]
struct Deliveries {
    results: Mutex<Vec<(usize, Option<KafkaError>)>>,
}

impl ClientContext for Deliveries {}

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

/// Errors the broker will answer the same way forever.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
        )
    )
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
            .set("linger.ms", "5");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let producer: BaseProducer<Deliveries> =
            cc.create_with_context(Deliveries::default()).map_err(|e| {
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
                            if permanent(&e) {
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
            for (i, e) in refused {
                reported[i] = true;
                if let Some(r) = recs[i] {
                    self.dead_letter(&r, &e);
                }
            }
            for (i, err) in results {
                reported[i] = true;
                match err {
                    None => {
                        self.stats.shipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(e) if permanent(&e) => {
                        if let Some(r) = recs[i] {
                            self.dead_letter(&r, &e);
                        }
                    }
                    Some(e) => {
                        tracing::warn!("kafka delivery failed, will resend: {e}");
                        failed.push(i);
                    }
                }
            }
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

    fn dead_letter(&mut self, r: &WalRecord<'_>, e: &KafkaError) {
        let topic = if r.route.is_empty() {
            self.cfg.topic.clone()
        } else {
            String::from_utf8_lossy(r.route).into_owned()
        };
        self.dead
            .add("kafka", &topic, r.id, 0, e.to_string().as_bytes(), r.doc);
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
