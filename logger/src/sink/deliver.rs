//! The one delivery loop of every sink. A sink ([`Sink`]) only knows its
//! destination: what a record's target is, which routes it can never use,
//! and how to send records once, saying what became of each
//! ([`Delivery`]). Everything else is here, the same for every sink: reading
//! batches from the disk buffer, dead-lettering records that cannot be
//! decoded or routed, the route policy (`route_failure`), counters, the
//! backoff between attempts (interrupted at once by a stop), the dead-letter
//! file's `fsync`, and the acknowledgement once every record of a batch is
//! stored or dead-lettered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::control::{Control, Wake};
use super::deadletter::DeadLetter;
use super::route::{BatchRoutes, RouteFailure};
use super::SinkStats;
use crate::wal::{Batch, Wal};
use crate::walrec::WalRecord;

/// What became of one record in one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Stored by the destination.
    Stored,
    /// The destination already had it (a resend after a crash or a lost answer).
    Duplicate,
    /// Not stored this time (a per-record 429 or 5xx, a broker or server
    /// error retrying may cure): resent, unless its route keeps failing
    /// while others of the batch are stored (`route_failure`).
    Transient {
        /// Status of the answer (0: none).
        status: u16,
        /// Why, for logs and the dead-letter file.
        reason: String,
    },
    /// Its route (index, topic, stream) refuses it for good: resent until
    /// `route_failure` gives up on the route, then dead-lettered.
    RouteRefused {
        /// Status of the answer (0: none).
        status: u16,
        /// Why.
        reason: String,
    },
    /// The record itself can never be stored: to the dead-letter file.
    Dead {
        /// Status of the answer (0: none).
        status: u16,
        /// Why.
        reason: String,
    },
    /// No answer for it (the request failed as a whole, or stopped before
    /// it): resent after a backoff.
    Resend,
    /// Not sent in this attempt (the sink sends part of the records at a
    /// time): sent next, without waiting.
    Unsent,
}

/// Why shipping a batch ended before it was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShipError {
    /// The shipper is stopping; the batch is resent after the restart.
    #[error("stopping")]
    Stopped,
}

/// The part every sink has alike: counters, dead-letter file, backoff,
/// route policy and batch size.
#[derive(Debug)]
pub struct SinkCore {
    /// Name in logs, counters and dead-letter lines.
    pub name: &'static str,
    /// Counters.
    pub stats: Arc<SinkStats>,
    /// Records the destination can never accept.
    pub dead: DeadLetter,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// What becomes of a route that refuses records for good.
    pub route_failure: RouteFailure,
    /// Records per batch read from the disk buffer.
    pub batch_records: usize,
    /// Bytes per batch.
    pub batch_bytes: usize,
}

impl SinkCore {
    /// Writes `r` (going to `target`) to the dead-letter file, counted.
    fn dead_letter(&mut self, target: &str, r: &WalRecord<'_>, status: u16, reason: &str) {
        self.dead.add(
            self.name,
            target,
            r.container,
            r.id,
            status,
            reason.as_bytes(),
            r.doc,
        );
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Longest wait before trying the dead-letter file again (it is full until
/// the operator moves it away: checked at least this often).
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// Wait after an error of the disk buffer.
const BUFFER_RETRY: Duration = Duration::from_secs(1);

/// A destination the shipper delivers records to.
pub trait Sink: Send {
    /// The shared part (counters, dead-letter file, backoff, policy).
    fn core(&self) -> &SinkCore;
    /// The same, to change.
    fn core_mut(&mut self) -> &mut SinkCore;
    /// Why a buffered route can never be used by this sink (the rules of
    /// `prepare`, checked again: the route may predate a rule).
    fn check_route(&self, route: &[u8]) -> Result<(), String>;
    /// The target of a record (index, topic, stream): its route or the default.
    fn target(&self, r: &WalRecord<'_>) -> String;
    /// A new batch begins: state kept for one batch starts anew.
    fn start_batch(&mut self) {}
    /// One attempt at storing `records`: what became of each, in order (a
    /// missing outcome counts as [`Delivery::Resend`]). Counts its requests
    /// (`requests`, `failed_requests`) and the answers it refused.
    fn send(&mut self, records: &[WalRecord<'_>]) -> Vec<Delivery>;
    /// The sink thread ends: finish what is in flight.
    fn shutdown(&mut self) {}

    /// Counters.
    fn stats(&self) -> &Arc<SinkStats> {
        &self.core().stats
    }

    /// Ships batches from `wal` until `control` stops it.
    fn run(&mut self, wal: &Wal, control: &Control)
    where
        Self: Sized,
    {
        run(self, wal, control);
    }

    /// Sends one batch until every record is stored or dead-lettered;
    /// [`ShipError::Stopped`] if stopped first (the batch is then sent again
    /// after a restart, and recognised by the destination).
    fn ship(&mut self, batch: &Batch, control: &Control) -> Result<(), ShipError>
    where
        Self: Sized,
    {
        ship(self, batch, control)
    }
}

/// Decodes a batch's records. One that cannot be decoded would fail the same
/// way at every resend: it goes to the dead-letter file, counted.
pub fn decode_batch<'a>(
    batch: &'a Batch,
    sink: &str,
    dead: &mut DeadLetter,
    stats: &SinkStats,
) -> Vec<WalRecord<'a>> {
    let mut out = Vec::with_capacity(batch.len());
    for (i, raw) in batch.iter().enumerate() {
        match WalRecord::decode(raw) {
            Some(r) => out.push(r),
            None => {
                dead.add(
                    sink,
                    "",
                    b"",
                    b"",
                    0,
                    b"undecodable disk-buffer record",
                    batch.get(i),
                );
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out
}

/// The loop of every sink thread: reads a batch from the disk buffer, ships
/// it and acknowledges it, until `control` stops it.
pub fn run<S: Sink>(sink: &mut S, wal: &Wal, control: &Control) {
    let (name, records, bytes) = {
        let c = sink.core();
        (c.name, c.batch_records, c.batch_bytes)
    };
    while !control.is_stopped() {
        let batch = match wal.read_batch(records, bytes, Duration::from_millis(200)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{name} sink: {e}");
                control.wait(BUFFER_RETRY);
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        if ship(sink, &batch, control).is_err() {
            break;
        }
        crate::fault::point("sink");
        if let Err(e) = wal.ack(batch.end, batch.len() as u64) {
            tracing::error!("{name} sink: {e}");
        }
    }
    sink.shutdown();
}

/// Sends one batch until every record is stored or dead-lettered.
pub fn ship<S: Sink>(sink: &mut S, batch: &Batch, control: &Control) -> Result<(), ShipError> {
    let recs = {
        let c = sink.core_mut();
        decode_batch(batch, c.name, &mut c.dead, &c.stats)
    };
    let targets: Vec<String> = recs.iter().map(|r| sink.target(r)).collect();
    let checks: Vec<Result<(), String>> = recs.iter().map(|r| sink.check_route(r.route)).collect();
    let mut pending = Vec::with_capacity(recs.len());
    {
        let c = sink.core_mut();
        for (i, check) in checks.into_iter().enumerate() {
            match check {
                Ok(()) => pending.push(i),
                // A route no destination can have (buffered before a rule
                // existed): to the dead-letter file at once.
                Err(e) => {
                    c.dead_letter(&targets[i], &recs[i], 0, &format!("refused route: {e}"));
                    let route = String::from_utf8_lossy(recs[i].route);
                    c.stats.routes.invalid(c.name, &route, &e);
                }
            }
        }
    }
    // Routes stored while shipping this batch: evidence that a route failing
    // transiently all along is its own problem, not the destination's.
    let mut routes = BatchRoutes::<(usize, u16)>::default();
    let mut sending = Vec::with_capacity(pending.len());
    sink.start_batch();
    while !pending.is_empty() {
        if control.is_stopped() {
            return Err(ShipError::Stopped);
        }
        sending.clear();
        sending.extend(pending.iter().map(|&i| recs[i]));
        let mut outcomes = sink.send(&sending);
        outcomes.resize(pending.len(), Delivery::Resend);
        let c = sink.core_mut();
        let policy = c.route_failure;
        let (mut again, mut unsent) = (Vec::new(), Vec::new());
        let mut reason: Option<String> = None;
        for (&i, outcome) in pending.iter().zip(outcomes) {
            let (r, target) = (&recs[i], &targets[i]);
            match outcome {
                Delivery::Stored => {
                    c.stats.shipped.fetch_add(1, Ordering::Relaxed);
                    c.stats.routes.stored(c.name, target);
                    routes.stored(target);
                }
                Delivery::Duplicate => {
                    c.stats.shipped.fetch_add(1, Ordering::Relaxed);
                    c.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    routes.stored(target);
                }
                Delivery::Transient {
                    status,
                    reason: why,
                } => {
                    reason.get_or_insert_with(|| why.clone());
                    routes.transient(target.clone(), || why, (i, status));
                }
                Delivery::RouteRefused {
                    status,
                    reason: why,
                } => {
                    let refused = if status == 0 {
                        why.clone()
                    } else {
                        format!("{status} {why}")
                    };
                    if c.stats.routes.refused(c.name, target, policy, &refused) {
                        c.dead_letter(target, r, status, &why);
                    } else {
                        reason.get_or_insert(refused);
                        again.push(i);
                    }
                }
                Delivery::Dead {
                    status,
                    reason: why,
                } => c.dead_letter(target, r, status, &why),
                Delivery::Resend => again.push(i),
                Delivery::Unsent => unsent.push(i),
            }
        }
        // A route failing while others of the batch are stored is that
        // route's problem (route policy); when nothing was stored, the whole
        // destination is busy: resend everything.
        let (dead, resend) = routes.settle(&c.stats.routes, c.name, policy);
        for ((i, status), why) in dead {
            c.dead_letter(&targets[i], &recs[i], status, &why);
        }
        again.extend(resend.into_iter().map(|(i, _)| i));
        again.sort_unstable();
        again.dedup();
        let retry = again.len();
        again.extend(unsent);
        again.sort_unstable();
        pending = again;
        if retry == 0 {
            c.backoff.reset();
            continue;
        }
        c.stats.retried.fetch_add(retry as u64, Ordering::Relaxed);
        tracing::warn!(
            sink = c.name,
            records = retry,
            "records not stored this time ({}); will resend",
            reason.as_deref().unwrap_or("no answer")
        );
        if c.backoff.wait(control) == Wake::Stopped {
            return Err(ShipError::Stopped);
        }
    }
    let c = sink.core_mut();
    while let Err(e) = c.dead.flush() {
        tracing::error!(
            sink = c.name,
            "dead-letter file {}: {e}",
            c.dead.path().display()
        );
        let wait = c.backoff.next_delay().min(DEAD_LETTER_RETRY);
        if control.wait(wait) == Wake::Stopped {
            return Err(ShipError::Stopped);
        }
    }
    Ok(())
}
