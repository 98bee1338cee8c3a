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
use super::route::{BadRoute, BatchRoutes, RouteFailure};
use super::SinkStats;
use crate::wal::{Batch, Wal};
use crate::walrec::{Expander, WalRecord};

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

impl Delivery {
    /// Not stored for a reason retrying may cure (the request, or this
    /// record, failed this time).
    pub fn is_failure(&self) -> bool {
        matches!(self, Delivery::Resend | Delivery::Transient { .. })
    }
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
    /// The shared part of sink `name`: counters `stats`, the dead-letter
    /// file at `dead_letter`, `backoff` between attempts, the route policy
    /// and the batch size read from the disk buffer (records, bytes).
    pub fn new(
        name: &'static str,
        stats: Arc<SinkStats>,
        dead_letter: &std::path::Path,
        backoff: Backoff,
        route_failure: RouteFailure,
        (batch_records, batch_bytes): (usize, usize),
    ) -> Self {
        SinkCore {
            name,
            dead: DeadLetter::new(dead_letter, stats.clone()),
            stats,
            backoff,
            route_failure,
            batch_records,
            batch_bytes,
        }
    }

    /// Counts a request that failed as a whole, or whose answer leaves
    /// records to resend (see [`Delivery::is_failure`]).
    pub fn count_failed_request(&self) {
        self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
    }

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
    fn check_route(&self, route: &[u8]) -> Result<(), BadRoute>;
    /// The target of a record (index, topic, stream): its route or the default.
    fn target(&self, r: &WalRecord<'_>) -> String;
    /// A new batch begins: state kept for one batch starts anew.
    fn start_batch(&mut self) {}
    /// Before each read of `wal`: a sink that wants fuller batches (an object
    /// store) waits here for more records, returning at once when `control`
    /// stops it.
    fn before_read(&mut self, _wal: &Wal, _control: &Control) {}
    /// The batch is done (every record stored or dead-lettered, the
    /// dead-letter file synced) and is about to be acknowledged.
    fn before_ack(&mut self) {}
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

/// Decodes a batch's records into `records`, each whole (a compact record
/// expanded with its meta: the same document whatever form the disk buffer
/// holds it in). One that cannot be decoded (corrupt, or without its meta)
/// would fail the same way at every resend: it goes to the dead-letter
/// file as stored, counted.
pub fn decode_batch<'a>(
    batch: &Batch,
    records: &'a mut Expander,
    sink: &str,
    dead: &mut DeadLetter,
    stats: &SinkStats,
) -> Vec<WalRecord<'a>> {
    records.clear();
    records.push_batch(batch, |i, e| {
        tracing::warn!(sink, "{e}: to the dead-letter file");
        dead.add(
            sink,
            "",
            b"",
            b"",
            0,
            e.to_string().as_bytes(),
            batch.get(i),
        );
        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    });
    records.records()
}

/// The loop of every sink thread: reads a batch from the disk buffer, ships
/// it and acknowledges it, until `control` stops it.
pub fn run<S: Sink>(sink: &mut S, wal: &Wal, control: &Control) {
    let (name, records, bytes) = {
        let c = sink.core();
        (c.name, c.batch_records, c.batch_bytes)
    };
    while !control.is_stopped() {
        sink.before_read(wal, control);
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
        sink.before_ack();
        crate::fault::point("sink");
        if let Err(e) = wal.ack(batch.end, batch.len() as u64) {
            tracing::error!("{name} sink: {e}");
        }
    }
    sink.shutdown();
}

/// Sends one batch until every record is stored or dead-lettered.
pub fn ship<S: Sink>(sink: &mut S, batch: &Batch, control: &Control) -> Result<(), ShipError> {
    let mut whole = Expander::default();
    let recs = {
        let c = sink.core_mut();
        decode_batch(batch, &mut whole, c.name, &mut c.dead, &c.stats)
    };
    let targets: Vec<String> = recs.iter().map(|r| sink.target(r)).collect();
    let checks: Vec<Result<(), BadRoute>> =
        recs.iter().map(|r| sink.check_route(r.route)).collect();
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
                    c.stats.routes.invalid(c.name, &route, &e.to_string());
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::Stream;
    use crate::sink::deadletter::DeadLetterLimits;
    use crate::sink::route::RouteError;
    use crate::wal::{FullPolicy, WalConfig};
    use crate::walrec::tests::differential::{both, Owned};
    use std::collections::VecDeque;
    use std::time::Instant;

    /// A destination answering from a script, one list of outcomes per
    /// attempt (all stored once the script is used up), recording what it
    /// was sent.
    struct Fake {
        core: SinkCore,
        script: VecDeque<Vec<Delivery>>,
        sent: Vec<Vec<String>>,
        /// Every record stored, whole.
        stored: Vec<Owned>,
    }

    impl Fake {
        fn new(dir: &std::path::Path, backoff: Duration, script: Vec<Vec<Delivery>>) -> Self {
            let stats = Arc::new(SinkStats::default());
            Fake {
                core: SinkCore {
                    name: "fake",
                    dead: DeadLetter::with_limits(
                        &dir.join("dead.ndjson"),
                        DeadLetterLimits::default(),
                        stats.clone(),
                    ),
                    backoff: Backoff::new(backoff, backoff),
                    route_failure: RouteFailure::DeadLetterAfterAttempts(2),
                    batch_records: 100,
                    batch_bytes: 1 << 20,
                    stats,
                },
                script: script.into(),
                sent: Vec::new(),
                stored: Vec::new(),
            }
        }

        fn count(&self, f: fn(&SinkStats) -> &std::sync::atomic::AtomicU64) -> u64 {
            f(&self.core.stats).load(Ordering::Relaxed)
        }
    }

    impl Sink for Fake {
        fn core(&self) -> &SinkCore {
            &self.core
        }
        fn core_mut(&mut self) -> &mut SinkCore {
            &mut self.core
        }
        fn check_route(&self, route: &[u8]) -> Result<(), BadRoute> {
            if route == b"forbidden" {
                Err(BadRoute::Rule(RouteError::TopicDots))
            } else {
                Ok(())
            }
        }
        fn target(&self, r: &WalRecord<'_>) -> String {
            if r.route.is_empty() {
                "default".into()
            } else {
                String::from_utf8_lossy(r.route).into_owned()
            }
        }
        fn send(&mut self, records: &[WalRecord<'_>]) -> Vec<Delivery> {
            self.sent.push(
                records
                    .iter()
                    .map(|r| String::from_utf8_lossy(r.id).into_owned())
                    .collect(),
            );
            let out = self
                .script
                .pop_front()
                .unwrap_or_else(|| vec![Delivery::Stored; records.len()]);
            for (r, d) in records.iter().zip(&out) {
                if *d == Delivery::Stored {
                    self.stored.push(Owned::from(*r));
                }
            }
            out
        }
    }

    /// A buffer holding one record per route (`id` = its index), and the batch read from it.
    fn batch(dir: &std::path::Path, routes: &[&str]) -> Batch {
        let w = Wal::open(WalConfig {
            dir: dir.join("buffer"),
            segment_bytes: 1 << 20,
            max_bytes: 16 << 20,
            fsync_interval: Duration::from_secs(1),
            policy: FullPolicy::Pause,
        })
        .unwrap();
        for (i, route) in routes.iter().enumerate() {
            let id = i.to_string();
            let mut p = Vec::new();
            WalRecord {
                stream: Stream::Stdout,
                ts_ms: 1,
                id: id.as_bytes(),
                container: b"c",
                route: route.as_bytes(),
                doc: b"{}",
            }
            .encode_into(&mut p);
            w.push(&p);
        }
        w.push(b"\xffnot a record");
        w.commit().unwrap();
        w.read_batch(1000, 1 << 20, Duration::ZERO).unwrap()
    }

    fn transient() -> Delivery {
        Delivery::Transient {
            status: 503,
            reason: "busy".into(),
        }
    }

    /// The lines of the dead-letter file `dead.ndjson` in `dir`.
    pub(crate) fn dead_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("dead.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn every_outcome_is_counted_and_only_failures_are_resent() {
        let d = tempfile::tempdir().unwrap();
        let b = batch(d.path(), &["", "", "", "", "forbidden"]);
        let mut s = Fake::new(
            d.path(),
            Duration::from_millis(1),
            vec![vec![
                Delivery::Stored,
                Delivery::Duplicate,
                Delivery::Dead {
                    status: 400,
                    reason: "mapping".into(),
                },
                transient(),
            ]],
        );
        s.ship(&b, &Control::new()).unwrap();
        // The forbidden route and the undecodable record were never sent.
        assert_eq!(s.sent, [vec!["0", "1", "2", "3"], vec!["3"]]);
        let c = |f| s.count(f);
        assert_eq!(c(|s| &s.shipped), 3, "{:?}", s.core.stats);
        assert_eq!(c(|s| &s.duplicates), 1);
        assert_eq!(c(|s| &s.retried), 1);
        assert_eq!(c(|s| &s.dead_lettered), 3);
        let dead = dead_lines(d.path());
        let reasons: Vec<&str> = dead.iter().map(|l| l["reason"].as_str().unwrap()).collect();
        assert_eq!(
            reasons,
            [
                "undecodable disk-buffer record",
                "refused route: `.` and `..` are not topic names",
                "mapping"
            ]
        );
        assert_eq!(dead[2]["status"], 400);
        assert_eq!(dead[2]["target"], "default");
    }

    #[test]
    fn unsent_records_go_next_without_a_backoff() {
        let d = tempfile::tempdir().unwrap();
        let b = batch(d.path(), &["", "", ""]);
        let mut s = Fake::new(
            d.path(),
            Duration::from_secs(300),
            vec![vec![Delivery::Stored, Delivery::Unsent, Delivery::Unsent]],
        );
        let start = Instant::now();
        s.ship(&b, &Control::new()).unwrap();
        assert!(start.elapsed() < Duration::from_secs(60));
        assert_eq!(s.sent, [vec!["0", "1", "2"], vec!["1", "2"]]);
        assert_eq!(s.count(|s| &s.retried), 0);
    }

    #[test]
    fn a_route_refusing_for_good_is_dead_lettered_after_its_bound() {
        let d = tempfile::tempdir().unwrap();
        let b = batch(d.path(), &["ok", "blocked"]);
        let refused = || Delivery::RouteRefused {
            status: 403,
            reason: "write block".into(),
        };
        let mut s = Fake::new(
            d.path(),
            Duration::from_millis(1),
            vec![vec![Delivery::Stored, refused()], vec![refused()]],
        );
        s.ship(&b, &Control::new()).unwrap();
        assert_eq!(s.sent.len(), 2);
        assert!(s.core.stats.routes.is_failing("blocked"));
        let dead = dead_lines(d.path());
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(dead[1]["target"], "blocked");
        assert_eq!(dead[1]["reason"], "write block");
    }

    #[test]
    fn a_route_failing_beside_stored_ones_is_dead_lettered_after_its_bound() {
        let d = tempfile::tempdir().unwrap();
        let b = batch(d.path(), &["ok", "red"]);
        let mut s = Fake::new(
            d.path(),
            Duration::from_millis(1),
            vec![vec![Delivery::Stored, transient()], vec![transient()]],
        );
        s.ship(&b, &Control::new()).unwrap();
        let dead = dead_lines(d.path());
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(dead[1]["status"], 503);
        assert!(dead[1]["reason"]
            .as_str()
            .unwrap()
            .contains("route_failure"));
    }

    #[test]
    fn a_stop_ends_the_backoff_at_once_and_the_batch_is_not_done() {
        let d = tempfile::tempdir().unwrap();
        let b = batch(d.path(), &[""]);
        let mut s = Fake::new(
            d.path(),
            Duration::from_secs(300),
            vec![vec![Delivery::Resend]; 10],
        );
        let c = Arc::new(Control::new());
        let c2 = c.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.stop();
        });
        let start = Instant::now();
        assert_eq!(s.ship(&b, &c), Err(ShipError::Stopped));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
        stopper.join().unwrap();
        assert_eq!(s.sent.len(), 1);
        // Interrupted instead: the next attempt follows at once.
        let c = Control::new();
        c.interrupt();
        let mut s = Fake::new(
            d.path(),
            Duration::from_secs(300),
            vec![vec![Delivery::Resend]],
        );
        s.ship(&b, &c).unwrap();
        assert_eq!(s.sent.len(), 2);
    }

    /// Pushes `framed` (whole frames) to `w` in pieces of `frames` frames,
    /// committing each.
    fn push_in_pieces(w: &Wal, framed: &[u8], frames: usize) {
        let payloads: Vec<&[u8]> = Wal::frames(framed).collect();
        for piece in payloads.chunks(frames) {
            let mut buf = Vec::new();
            let mut records = 0;
            for p in piece {
                Wal::frame_into(&mut buf, |out| out.extend_from_slice(p));
                records += u64::from(crate::wal::meta_key(p).is_none());
            }
            w.push_framed(&buf, records);
            w.commit().unwrap();
        }
    }

    #[test]
    fn every_record_is_delivered_whole_from_compact_frames_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let (_, compact, want) = both(300);
        let cfg = WalConfig {
            dir: d.path().join("buffer"),
            segment_bytes: 16 << 10,
            max_bytes: 1 << 30,
            fsync_interval: Duration::from_secs(1),
            policy: FullPolicy::Pause,
        };
        let mut s = Fake::new(d.path(), Duration::from_millis(1), vec![]);
        let c = Control::new();
        let mut restarts = 0;
        {
            let w = Wal::open(cfg.clone()).unwrap();
            push_in_pieces(&w, &compact, 37);
        }
        loop {
            // A restart after every two batches: reads start mid-segment.
            let w = Wal::open(cfg.clone()).unwrap();
            let mut empty = false;
            for _ in 0..2 {
                let b = w.read_batch(53, 1 << 20, Duration::ZERO).unwrap();
                if b.is_empty() {
                    empty = true;
                    break;
                }
                s.ship(&b, &c).unwrap();
                w.ack(b.end, b.len() as u64).unwrap();
            }
            w.sync().unwrap();
            assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 0);
            if empty {
                break;
            }
            restarts += 1;
        }
        assert!(restarts > 10, "{restarts}");
        assert_eq!(s.count(|s| &s.dead_lettered), 0);
        assert_eq!(s.stored.len(), want.len());
        for (got, want) in s.stored.iter().zip(&want) {
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&want.doc));
        }
    }

    #[test]
    fn a_record_without_its_meta_is_dead_lettered() {
        let d = tempfile::tempdir().unwrap();
        let w = Wal::open(WalConfig {
            dir: d.path().join("buffer"),
            segment_bytes: 1 << 20,
            max_bytes: 16 << 20,
            fsync_interval: Duration::from_secs(1),
            policy: FullPolicy::Pause,
        })
        .unwrap();
        let mut p = Vec::new();
        crate::walrec::CompactRecord {
            stream: Stream::Stdout,
            ts_head: false,
            key: 7,
            ts_ms: 1,
            id_suffix: b"1",
            head_at: 0,
            tail_at: 0,
            body: b"{}",
        }
        .encode_into(&mut p);
        w.push(&p);
        w.commit().unwrap();
        let b = w.read_batch(10, 1 << 20, Duration::ZERO).unwrap();
        let mut s = Fake::new(d.path(), Duration::from_millis(1), vec![]);
        s.ship(&b, &Control::new()).unwrap();
        assert!(s.sent.is_empty());
        assert_eq!(s.count(|s| &s.dead_lettered), 1);
        assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 1);
        let dead = dead_lines(d.path());
        assert_eq!(
            dead[0]["reason"],
            "disk-buffer record without its meta frame (key 0000000000000007)"
        );
    }
}
