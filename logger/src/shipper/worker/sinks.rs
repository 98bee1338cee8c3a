//! The worker's sinks: each with its disk buffer, its counters and its own
//! thread, contained (a panicking sink is built again and reads on from its
//! buffer's acknowledged cursor) and restarted if its thread ends.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::WorkerError;
use crate::proto::SinkKind;
use crate::shipper::counters::Counters;
use crate::shipper::threads::{self, Liveness};
use crate::shipper::ShipperConfig;
use crate::sink::es::EsSink;
use crate::sink::{Control, Sink, SinkStats};
use crate::wal::{Wal, WalConfig};

/// Starts a sink's thread (again), with a new sink.
struct SinkSpawner(Box<dyn Fn() -> std::io::Result<JoinHandle<()>> + Send>);

impl std::fmt::Debug for SinkSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkSpawner")
    }
}

/// One running sink.
#[derive(Debug)]
pub(super) struct SinkHandle {
    pub(super) wal: Arc<Wal>,
    pub(super) stats: Arc<SinkStats>,
    stop: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    spawn: SinkSpawner,
    live: Liveness,
}

impl SinkHandle {
    /// Moves whenever the sink sends, fails or acknowledges anything.
    fn progress(&self) -> u64 {
        let s = &self.stats;
        [
            &s.requests,
            &s.failed_requests,
            &s.retried,
            &s.dead_lettered,
            &self.wal.stats.acked_records,
        ]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
    }

    /// Records appended in this run and neither acknowledged nor dropped yet.
    fn has_work(&self) -> bool {
        let w = &self.wal.stats;
        let done = w.acked_records.load(Ordering::Relaxed)
            + w.dropped_records.load(Ordering::Relaxed)
            + w.corrupt_records.load(Ordering::Relaxed);
        w.appended_records.load(Ordering::Relaxed) > done
    }
}

/// The configured sinks, in a fixed order.
pub(super) type Sinks = Vec<(SinkKind, SinkHandle)>;

/// Starts every sink the configuration names, each with its kind and thread name.
pub(super) fn start_all(cfg: &ShipperConfig, c: &Arc<Counters>) -> Result<Sinks, WorkerError> {
    let mut sinks = Vec::new();
    let es = (SinkKind::Elasticsearch, "es-sink");
    sinks.extend(start(
        cfg,
        es,
        cfg.es.as_ref(),
        c,
        EsSink::new,
        EsSink::run,
    )?);
    #[cfg(feature = "kafka")]
    {
        use crate::sink::kafka::KafkaSink as K;
        let kafka = (SinkKind::Kafka, "kafka-sink");
        sinks.extend(start(cfg, kafka, cfg.kafka.as_ref(), c, K::new, K::run)?);
    }
    #[cfg(feature = "redis")]
    {
        use crate::sink::redis::RedisSink as R;
        let redis = (SinkKind::Redis, "redis-sink");
        sinks.extend(start(cfg, redis, cfg.redis.as_ref(), c, R::new, R::run)?);
    }
    {
        use crate::sink::nats::NatsSink as N;
        let nats = (SinkKind::Nats, "nats-sink");
        sinks.extend(start(cfg, nats, cfg.nats.as_ref(), c, N::new, N::run)?);
    }
    #[cfg(feature = "s3")]
    {
        use crate::sink::s3::S3Sink as S;
        let s3 = (SinkKind::S3, "s3-sink");
        sinks.extend(start(cfg, s3, cfg.s3.as_ref(), c, S::new, S::run)?);
    }
    Ok(sinks)
}

/// Opens a sink's disk buffer, builds the sink of configuration `sink_cfg`
/// (none: not configured) with its counters and runs it on a thread named
/// `thread`, contained: after a panic the sink is built again by `new` and
/// reads on from its buffer's acknowledged cursor.
fn start<C, S, E>(
    cfg: &ShipperConfig,
    (kind, thread): (SinkKind, &'static str),
    sink_cfg: Option<&C>,
    counters: &Arc<Counters>,
    new: fn(C, Arc<SinkStats>) -> Result<S, E>,
    run: fn(&mut S, &Wal, &Control),
) -> Result<Option<(SinkKind, SinkHandle)>, WorkerError>
where
    C: Clone + Send + Sync + 'static,
    S: Sink + 'static,
    E: std::fmt::Display + 'static,
{
    let Some(sink_cfg) = sink_cfg.cloned() else {
        return Ok(None);
    };
    let make = move |stats| new(sink_cfg.clone(), stats);
    let wal = Wal::open(WalConfig {
        dir: cfg.state_dir.join("buffer").join(kind.name()),
        segment_bytes: cfg.buffer_segment_bytes,
        max_bytes: cfg.buffer_max_bytes,
        fsync_interval: cfg.buffer_fsync_interval,
        policy: cfg.buffer_full_policy,
    })
    .map(Arc::new)
    .map_err(|e| WorkerError::Buffer {
        sink: kind.name(),
        reason: e.to_string(),
    })?;
    let stats = Arc::new(SinkStats::default());
    // A configuration the sink refuses stops the worker here, at start.
    let first = make(stats.clone()).map_err(|e| WorkerError::Sink {
        sink: kind.name(),
        reason: e.to_string(),
    })?;
    let first = Arc::new(Mutex::new(Some(first)));
    let make = Arc::new(make);
    let stop = Arc::new(Control::new());
    let spawn = {
        let (wal, stats, stop, counters) =
            (wal.clone(), stats.clone(), stop.clone(), counters.clone());
        move || {
            let (w, st, s, c, m) = (
                wal.clone(),
                stats.clone(),
                stop.clone(),
                counters.clone(),
                make.clone(),
            );
            let mut sink = first
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            std::thread::Builder::new()
                .name(thread.into())
                .spawn(move || {
                    threads::contain(thread, &c.thread_panics_sink, s.stop_flag(), |again| {
                        if again || sink.is_none() {
                            // A panic may have left it in the middle of a request: a new one.
                            sink = None;
                            match m(st.clone()) {
                                Ok(new) => sink = Some(new),
                                Err(e) => {
                                    tracing::error!(thread, "building the sink: {e}");
                                    return;
                                }
                            }
                        }
                        if let Some(sink) = sink.as_mut() {
                            run(sink, &w, &s);
                        }
                    });
                })
        }
    };
    let t = spawn().map_err(|source| WorkerError::Setup {
        what: "a sink thread",
        source,
    })?;
    Ok(Some((
        kind,
        SinkHandle {
            wal,
            stats,
            stop,
            thread: Some(t),
            spawn: SinkSpawner(Box::new(spawn)),
            live: Liveness::new(thread),
        },
    )))
}

/// Liveness: a sink thread that ended is started again; a thread without
/// progress for `limit` while it has work is reported.
pub(super) fn check(sinks: &mut Sinks, counters: &Counters, limit: std::time::Duration) {
    for (kind, s) in sinks.iter_mut() {
        if s.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
            counters.thread_restarts.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                sink = kind.name(),
                "the sink thread ended; starting it again"
            );
            match (s.spawn.0)() {
                Ok(t) => s.thread = Some(t),
                Err(e) => tracing::error!(sink = kind.name(), "sink thread: {e}"),
            }
        }
        let (progress, work) = (s.progress(), s.has_work());
        s.live
            .observe(progress, work, limit, &counters.thread_stalls_sink);
    }
}

/// Stops every sink and waits for its thread.
pub(super) fn stop_all(sinks: &mut Sinks) {
    for (_, s) in sinks.iter_mut() {
        s.stop.stop();
        s.wal.wake();
    }
    for (_, s) in sinks.iter_mut() {
        if let Some(t) = s.thread.take() {
            let _ = t.join();
        }
    }
}
