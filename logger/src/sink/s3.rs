//! The S3 sink: each batch read from the disk buffer becomes one gzip NDJSON
//! object per prefix, day and container (`s3_key` has the layout), stored
//! with a `PUT` or a multipart upload (`s3_store`). A batch waits up to
//! `s3_flush_interval` to fill, so objects are few and large.
//!
//! Exactly once: a key depends only on its first record, and a batch resent
//! after a crash is formed again from the first unacknowledged record, so
//! the upload overwrites the same keys with the same (or more) records;
//! records a restarted worker parses and buffers a second time are
//! recognised by their stream offset (`s3_shipped`) and not stored again. A
//! record is never in two objects.
//!
//! What an answer means (per object, so per prefix):
//! - 2xx: stored.
//! - no answer (connection, timeout, an answer the client refuses): resent
//!   after a backoff; the rest of the attempt is not sent (the store is down).
//! - credentials or the sink's own settings refused (401; 403
//!   `InvalidAccessKeyId`, `SignatureDoesNotMatch`, expired or invalid token,
//!   `RequestTimeTooSkewed`; 400 `AuthorizationHeaderMalformed`; 404
//!   `NoSuchBucket`; 301/307 redirects): resent, the credentials file read
//!   again, never dead-lettered (no prefix is at fault).
//! - 408, 429, 5xx, 400 `RequestTimeout`/`IncompleteBody`/`BadDigest`, and
//!   403 `AccessDenied` (a bucket policy may deny one prefix): transient;
//!   resent, and a prefix failing so while others are stored is handled by
//!   `route_failure` (dead-lettered after its bound), so it never holds
//!   the others.
//! - 413, `EntityTooLarge`, `KeyTooLongError`: the object can never be
//!   stored: its records go to the dead-letter file at once.
//! - any other 4xx: the prefix refuses it: resent until `route_failure`
//!   gives up on the prefix, then dead-lettered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::deliver::{Delivery, Sink, SinkCore};
use super::route;
use super::s3_config::{validate_s3_prefix, S3Config};
use super::s3_key::{group, SegmentCache};
use super::s3_object::encode;
use super::s3_shipped::Shipped;
use super::s3_store::{ObjectStore, PutOutcome, S3Store};
use super::{Control, SinkError, SinkStats};
use crate::wal::Wal;
use crate::walrec::WalRecord;

/// Counters of the objects themselves.
#[derive(Debug, Default)]
pub struct ObjectCounters {
    /// Objects stored.
    pub objects: AtomicU64,
    /// Of those, stored with a multipart upload.
    pub multipart: AtomicU64,
    /// Bytes of NDJSON in the objects stored.
    pub raw_bytes: AtomicU64,
    /// Bytes of the objects stored (compressed).
    pub gz_bytes: AtomicU64,
}

/// Which way an answer goes (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Stored,
    NoAnswer,
    Settings,
    Transient,
    Dead,
    RouteRefused,
}

fn classify(o: &PutOutcome) -> Class {
    let PutOutcome::Error { status, code, .. } = o else {
        return if *o == PutOutcome::Stored {
            Class::Stored
        } else {
            Class::NoAnswer
        };
    };
    match (*status, code.as_str()) {
        (401 | 301 | 307, _)
        | (
            403,
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "RequestTimeTooSkewed",
        )
        | (400, "AuthorizationHeaderMalformed" | "ExpiredToken" | "InvalidToken")
        | (404, "NoSuchBucket") => Class::Settings,
        (413, _) | (_, "EntityTooLarge" | "KeyTooLongError") => Class::Dead,
        (408 | 429 | 500..=599, _)
        | (400, "RequestTimeout" | "IncompleteBody" | "BadDigest")
        | (403, _) => Class::Transient,
        _ => Class::RouteRefused,
    }
}

/// The S3 sink over an object store (the real one: [`S3Store`]).
pub struct S3Sink<St: ObjectStore = S3Store> {
    cfg: S3Config,
    store: St,
    cache: SegmentCache,
    shipped: Shipped,
    objects: Arc<ObjectCounters>,
    core: SinkCore,
}

impl<St: ObjectStore> std::fmt::Debug for S3Sink<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("endpoint", &self.cfg.endpoint.base())
            .field("bucket", &self.cfg.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Sink<S3Store> {
    /// Checks the settings and reads the credentials (no connection is made yet).
    pub fn new(cfg: S3Config, stats: Arc<SinkStats>) -> Result<Self, SinkError> {
        let store = S3Store::new(&cfg)?;
        Self::with_store(cfg, stats, store)
    }
}

impl<St: ObjectStore> S3Sink<St> {
    /// The sink of `cfg` storing through `store`.
    pub fn with_store(cfg: S3Config, stats: Arc<SinkStats>, store: St) -> Result<Self, SinkError> {
        validate_s3_prefix(&cfg.prefix).map_err(|e| SinkError::Value {
            key: "s3_prefix",
            value: cfg.prefix.clone(),
            reason: e.to_string(),
        })?;
        Ok(S3Sink {
            core: SinkCore::new(
                "s3",
                stats,
                &cfg.dead_letter,
                Backoff::new(Duration::from_millis(100), cfg.backoff_max),
                cfg.route_failure,
                (cfg.batch_records, cfg.batch_bytes),
            ),
            store,
            cache: SegmentCache::default(),
            shipped: Shipped::load(&cfg.shipped_file),
            objects: Arc::new(ObjectCounters::default()),
            cfg,
        })
    }

    /// Counters of the objects stored.
    pub fn object_counters(&self) -> Arc<ObjectCounters> {
        self.objects.clone()
    }

    /// What becomes of the records of an object answered `o`.
    fn delivery(&mut self, key: &str, records: usize, o: PutOutcome) -> Delivery {
        let class = classify(&o);
        let (status, why) = match o {
            PutOutcome::Stored => return Delivery::Stored,
            PutOutcome::Error {
                status,
                code,
                message,
            } => (status, format!("{code} {message}").trim().to_owned()),
            PutOutcome::NoAnswer(why) => (0, why),
            PutOutcome::Refused(refusal, why) => {
                self.core
                    .stats
                    .responses_refused
                    .record("s3", refusal, records, &why);
                (0, why)
            }
        };
        self.core.count_failed_request();
        if class == Class::Settings {
            tracing::error!(
                status,
                key,
                "s3 sink: the store refuses the sink's credentials or settings ({why}); \
                 reading s3_credentials_file again and resending"
            );
            if let Err(e) = self.store.reload_credentials() {
                tracing::error!("s3 sink: {e}");
            }
        } else {
            tracing::warn!(status, key, "s3 sink: object not stored: {why}");
        }
        match class {
            Class::NoAnswer | Class::Settings => Delivery::Resend,
            Class::Transient => Delivery::Transient {
                status,
                reason: why,
            },
            Class::Dead => Delivery::Dead {
                status,
                reason: why,
            },
            Class::RouteRefused => Delivery::RouteRefused {
                status,
                reason: why,
            },
            Class::Stored => Delivery::Stored,
        }
    }
}

/// Bytes of a batch's records, made whole.
fn batch_bytes(b: &crate::wal::Batch) -> usize {
    b.bytes()
}

impl<St: ObjectStore + 'static> Sink for S3Sink<St> {
    fn core(&self) -> &SinkCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut SinkCore {
        &mut self.core
    }

    fn check_route(&self, route: &[u8]) -> Result<(), route::BadRoute> {
        route::check_s3_prefix(route)
    }

    /// The record's prefix: its route or the default.
    fn target(&self, r: &WalRecord<'_>) -> String {
        if r.route.is_empty() {
            self.cfg.prefix.clone()
        } else {
            String::from_utf8_lossy(r.route).into_owned()
        }
    }

    /// Waits until a full batch is buffered or `s3_flush_interval` has
    /// passed since records were first seen waiting.
    fn before_read(&mut self, wal: &Wal, control: &Control) {
        let (records, bytes) = (self.cfg.batch_records, self.cfg.batch_bytes);
        // A batch within one typical line of its byte bound is full.
        let full_bytes = bytes.saturating_sub(bytes / 16);
        let poll =
            (self.cfg.flush_interval / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut since: Option<Instant> = None;
        while !control.is_stopped() {
            let Ok(probe) = wal.read_batch(records, bytes, Duration::from_millis(200)) else {
                return;
            };
            if probe.is_empty() || probe.len() >= records || batch_bytes(&probe) >= full_bytes {
                return;
            }
            let first = *since.get_or_insert_with(Instant::now);
            let left = self.cfg.flush_interval.saturating_sub(first.elapsed());
            if left.is_zero() {
                return;
            }
            drop(probe);
            control.wait(left.min(poll));
        }
    }

    fn start_batch(&mut self) {
        self.shipped.start_batch();
    }

    /// The batch's records are marked stored before it is acknowledged.
    fn before_ack(&mut self) {
        if let Err(e) = self.shipped.batch_done() {
            tracing::error!(
                "s3 sink: saving {}: {e}; records parsed again after a restart may be stored twice",
                self.cfg.shipped_file.display()
            );
        }
    }

    /// One object per prefix, day and container, in order, of the records
    /// not stored before (the others are duplicates); after a request
    /// without an answer the rest is left for the next attempt.
    fn send(&mut self, all: &[WalRecord<'_>]) -> Vec<Delivery> {
        let fresh = self.shipped.fresh(all);
        let mut out = vec![Delivery::Resend; all.len()];
        let mut index = Vec::with_capacity(all.len());
        for (i, new) in fresh.iter().enumerate() {
            if *new {
                index.push(i);
            } else {
                out[i] = Delivery::Duplicate;
            }
        }
        let records: Vec<WalRecord<'_>> = index.iter().map(|&i| all[i]).collect();
        let targets: Vec<String> = records.iter().map(|r| self.target(r)).collect();
        let groups = group(&records, &targets, &mut self.cache);
        for g in groups {
            let body = encode(&records, &g.records, self.cfg.gzip_level);
            self.core.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.store.put(&g.key, &body.gz);
            let no_answer = classify(&outcome) == Class::NoAnswer;
            let d = self.delivery(&g.key, g.records.len(), outcome);
            if d == Delivery::Stored {
                let o = &self.objects;
                o.objects.fetch_add(1, Ordering::Relaxed);
                if body.gz.len() as u64 > self.cfg.part_bytes {
                    o.multipart.fetch_add(1, Ordering::Relaxed);
                }
                o.raw_bytes.fetch_add(body.raw_bytes, Ordering::Relaxed);
                o.gz_bytes
                    .fetch_add(body.gz.len() as u64, Ordering::Relaxed);
            }
            for &i in &g.records {
                out[index[i]] = d.clone();
            }
            if no_answer {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "s3_tests.rs"]
mod tests;
