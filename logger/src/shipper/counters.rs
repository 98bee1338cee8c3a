//! Counters of the worker, written every second to `counters.json` and
//! `metrics.prom` (Prometheus text format, for a textfile collector) in the
//! state directory; `rein-log-shipper stats` prints them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::sink::SinkStats;
use crate::wal::WalStats;

/// Streams held back by a failing disk buffer, as each parser thread last
/// saw its own: `buffer_stalled_streams` is their sum, and
/// `buffer_stalled_ms` runs while any thread has one.
#[derive(Debug, Default)]
pub struct StallGauge {
    inner: Mutex<StallShares>,
}

#[derive(Debug, Default)]
struct StallShares {
    per_thread: Vec<u64>,
    since: Option<Instant>,
}

impl StallGauge {
    /// Parser thread `thread` now holds back `streams` streams.
    pub fn note(&self, thread: usize, streams: u64, c: &Counters) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.per_thread.len() <= thread {
            g.per_thread.resize(thread + 1, 0);
        }
        g.per_thread[thread] = streams;
        let total: u64 = g.per_thread.iter().sum();
        let now = Instant::now();
        if let Some(t) = g.since.take() {
            let ms = u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX);
            c.buffer_stalled_ms.fetch_add(ms, Ordering::Relaxed);
        }
        if total > 0 {
            g.since = Some(now);
        }
        c.buffer_stalled_streams.store(total, Ordering::Relaxed);
    }
}

/// Reader-side counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Containers currently attached.
    pub containers_live: AtomicU64,
    /// Containers registered since the worker started (including adopted ones).
    pub containers_registered: AtomicU64,
    /// Bytes read from container pipes (spliced into sandbox files).
    pub bytes_read: AtomicU64,
    /// Lines read (pieces of split lines count each).
    pub lines_read: AtomicU64,
    /// Records appended to a disk buffer.
    pub records_buffered: AtomicU64,
    /// Empty lines (kept in the sandbox file, not shipped).
    pub empty_lines: AtomicU64,
    /// Times reading was paused because a disk buffer was full.
    pub buffer_full_pauses: AtomicU64,
    /// Times a stream's pipe was left unread because its unparsed bytes
    /// reached `max_unparsed_bytes`.
    pub unparsed_pauses: AtomicU64,
    /// Bytes in sandbox files not parsed yet, all streams (a gauge).
    pub unparsed_bytes: AtomicU64,
    /// Times a container was throttled by its rate limit.
    pub rate_limited: AtomicU64,
    /// Sandbox file rotations.
    pub rotations: AtomicU64,
    /// Registrations refused.
    pub registrations_refused: AtomicU64,
    /// Connections refused for their peer's credentials (not root, not
    /// the shipper's user, not in `socket_group`).
    pub connections_refused: AtomicU64,
    /// Failed writes of sandbox files (the stream waits and retries).
    pub write_errors: AtomicU64,
    /// Parser threads running on idle CPU only (a gauge; 0 while all compete).
    pub parser_idle: AtomicU64,
    /// Parser threads (a gauge: `parser_threads`).
    pub parser_threads: AtomicU64,
    /// Times a parser thread was switched to compete for CPU (a burst outgrew
    /// `parser_burst_bytes` or `parser_burst_time`).
    pub parser_promotions: AtomicU64,

    // Thread containment and adoption (see `threads.rs` and the worker's
    // `attach`/`adopt`).
    /// Panics of the parser thread (it was restarted, state kept).
    pub thread_panics_parser: AtomicU64,
    /// Panics of sink threads (each was rebuilt from its buffer's cursor).
    pub thread_panics_sink: AtomicU64,
    /// Stalls of the parser: no progress for `thread_stall_timeout` with
    /// bytes to parse.
    pub thread_stalls_parser: AtomicU64,
    /// Stalls of sink threads: no request and no acknowledgement for
    /// `thread_stall_timeout` with records to ship.
    pub thread_stalls_sink: AtomicU64,
    /// Sink threads found ended and started again.
    pub thread_restarts: AtomicU64,
    /// Failed saves of a container's registration or first checkpoint (the
    /// container stays attached; retried every second).
    pub state_save_errors: AtomicU64,
    /// Containers whose state is not saved yet (a gauge).
    pub containers_state_unsaved: AtomicU64,
    /// Adopted containers whose `registration.json` was unreadable (taken
    /// back from the copy, or into sandbox files only).
    pub registrations_unreadable: AtomicU64,
    /// Adopted containers that could not be taken back and were released
    /// to the supervisor (their sandbox is gone).
    pub containers_released: AtomicU64,

    // Disk buffer faults (full or read-only `state_dir`, I/O errors).
    /// Streams held back because their disk buffer cannot write or sync (a gauge).
    pub buffer_stalled_streams: AtomicU64,
    /// Milliseconds during which any stream was held back so.
    pub buffer_stalled_ms: AtomicU64,
    /// Each parser thread's share of `buffer_stalled_streams`.
    pub buffer_stall: StallGauge,
    /// Checkpoint saves that failed (the previous checkpoint stays in force).
    pub checkpoint_save_errors: AtomicU64,
    /// Log files of the containers (`rein.log.files`).
    pub log_files: std::sync::Arc<super::logfiles::FileCounters>,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Snapshot as JSON.
pub fn snapshot(
    c: &Counters,
    buffers: &[(&str, &WalStats)],
    sinks: &[(&str, &SinkStats)],
) -> serde_json::Value {
    let mut b = serde_json::Map::new();
    for (name, s) in buffers {
        b.insert(
            name.to_string(),
            serde_json::json!({
                "appended_records": load(&s.appended_records),
                "acked_records": load(&s.acked_records),
                "dropped_records": load(&s.dropped_records),
                "corrupt_records": load(&s.corrupt_records),
                "buffer_bytes": load(&s.buffer_bytes),
                "fsyncs": load(&s.fsyncs),
                "write_errors": load(&s.write_errors),
                "write_stalls": load(&s.write_stalls),
                "sync_errors": load(&s.sync_errors),
                "stalled": load(&s.stalled),
                "in_flight_records": load(&s.in_flight_records),
                "dropped_in_flight": load(&s.dropped_in_flight),
            }),
        );
    }
    let mut k = serde_json::Map::new();
    let mut routes = serde_json::Map::new();
    for (name, s) in sinks {
        for (route, r) in s.routes.snapshot() {
            routes.insert(
                format!("{name}/{route}"),
                serde_json::json!({
                    "shipped": r.shipped,
                    "refused": r.refused,
                    "dead_lettered": r.dead_lettered,
                    "failing": r.failing,
                    "stalled": r.stalled,
                }),
            );
        }
        k.insert(
            name.to_string(),
            serde_json::json!({
                "shipped": load(&s.shipped),
                "duplicates": load(&s.duplicates),
                "retried": load(&s.retried),
                "dead_lettered": load(&s.dead_lettered),
                "dead_letter_dropped": load(&s.dead_letter_dropped),
                "dead_letter_over_share": load(&s.dead_letter_over_share),
                "dead_letter_full": load(&s.dead_letter_full),
                "requests": load(&s.requests),
                "failed_requests": load(&s.failed_requests),
            }),
        );
        // Refused answers of the destination, in total and per reason.
        if let Some(sink) = k.get_mut(*name) {
            sink["responses_refused"] = s.responses_refused.total().into();
            for r in crate::http::Refusal::ALL {
                sink[format!("responses_refused_{}", r.name())] = s.responses_refused.get(r).into();
            }
        }
    }
    let mut v = serde_json::json!({
        "reader": {
            "containers_live": load(&c.containers_live),
            "containers_registered": load(&c.containers_registered),
            "bytes_read": load(&c.bytes_read),
            "lines_read": load(&c.lines_read),
            "records_buffered": load(&c.records_buffered),
            "empty_lines": load(&c.empty_lines),
            "buffer_full_pauses": load(&c.buffer_full_pauses),
            "unparsed_pauses": load(&c.unparsed_pauses),
            "unparsed_bytes": load(&c.unparsed_bytes),
            "rate_limited": load(&c.rate_limited),
            "rotations": load(&c.rotations),
            "registrations_refused": load(&c.registrations_refused),
            "connections_refused": load(&c.connections_refused),
            "write_errors": load(&c.write_errors),
            "parser_idle": load(&c.parser_idle),
            "parser_promotions": load(&c.parser_promotions),
            "parser_threads": load(&c.parser_threads),
            "sandbox_objects_refused": crate::sandbox::objects_refused(),
            // Thread containment and adoption.
            "thread_panics_parser": load(&c.thread_panics_parser),
            "thread_panics_sink": load(&c.thread_panics_sink),
            "thread_stalls_parser": load(&c.thread_stalls_parser),
            "thread_stalls_sink": load(&c.thread_stalls_sink),
            "thread_restarts": load(&c.thread_restarts),
            "state_save_errors": load(&c.state_save_errors),
            "containers_state_unsaved": load(&c.containers_state_unsaved),
            "registrations_unreadable": load(&c.registrations_unreadable),
            "containers_released": load(&c.containers_released),
            "buffer_stalled_streams": load(&c.buffer_stalled_streams),
            "buffer_stalled_ms": load(&c.buffer_stalled_ms),
            "checkpoint_save_errors": load(&c.checkpoint_save_errors),
            "fallback_containers": load(&FALLBACK_CONTAINERS),
            "fallback_reported": load(&FALLBACK_REPORTED),
            "fallback_records_removed": load(&FALLBACK_RECORDS_REMOVED),
            "fallback_shipped": load(&FALLBACK_SHIPPED),
            "fallback_files_lost": load(&FALLBACK_FILES_LOST),
        },
        "buffers": b,
        "sinks": k,
        "routes": routes,
    });
    for (name, n) in c.log_files.fields() {
        v["reader"][name] = n.into();
    }
    v
}

/// Prometheus text format of a snapshot.
pub fn prometheus(v: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(r) = v["reader"].as_object() {
        for (k, n) in r {
            out.push_str(&format!("rein_log_{k} {n}\n"));
        }
    }
    for (group, label) in [("buffers", "buffer"), ("sinks", "sink")] {
        if let Some(m) = v[group].as_object() {
            for (name, fields) in m {
                for (k, n) in fields.as_object().into_iter().flatten() {
                    out.push_str(&format!("rein_log_{label}_{k}{{{label}=\"{name}\"}} {n}\n"));
                }
            }
        }
    }
    // Routes: `sink/target`, labelled with both (quotes and backslashes escaped).
    if let Some(m) = v["routes"].as_object() {
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        for (name, fields) in m {
            let (sink, route) = name.split_once('/').unwrap_or((name, ""));
            for (k, n) in fields.as_object().into_iter().flatten() {
                out.push_str(&format!(
                    "rein_log_route_{k}{{sink=\"{}\",route=\"{}\"}} {n}\n",
                    esc(sink),
                    esc(route)
                ));
            }
        }
    }
    out
}

/// Writes `counters.json` and `metrics.prom` atomically.
pub fn write(dir: &Path, v: &serde_json::Value) -> std::io::Result<()> {
    for (name, body) in [
        ("counters.json", v.to_string() + "\n"),
        ("metrics.prom", prometheus(v)),
    ] {
        crate::private::write_atomic(&dir.join(name), body.as_bytes())?;
    }
    Ok(())
}

// Containers the module could not hand to the shipper (they write their
// sandbox files directly): followed from the module's records by
// `shipper::fallback`.

/// Records of fallen-back containers whose sandbox still exists (a gauge).
pub static FALLBACK_CONTAINERS: AtomicU64 = AtomicU64::new(0);
/// Fallen-back containers named in a warning by this worker.
pub static FALLBACK_REPORTED: AtomicU64 = AtomicU64::new(0);
/// Records removed because the container's sandbox was gone.
pub static FALLBACK_RECORDS_REMOVED: AtomicU64 = AtomicU64::new(0);
/// Fallen-back containers whose files were parsed to their end after the
/// container ended (their record is then removed).
pub static FALLBACK_SHIPPED: AtomicU64 = AtomicU64::new(0);
/// Files of fallen-back containers no longer at their name (removed or
/// replaced by the task): their lines are not shipped.
pub static FALLBACK_FILES_LOST: AtomicU64 = AtomicU64::new(0);
