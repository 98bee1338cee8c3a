//! Running a sink of the library on a disk buffer in a thread of the test,
//! and the buffer and Elasticsearch settings the sink tests share.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rein_logger::http::Url;
use rein_logger::sink::es::{EsConfig, EsSink};
use rein_logger::sink::route::RouteFailure;
use rein_logger::sink::{Control, Sink, SinkStats};
use rein_logger::wal::{FullPolicy, Wal, WalConfig};

/// A disk buffer in `dir/buffer` that pauses when full.
pub fn buffer(dir: &Path, segment_bytes: u64, max_bytes: u64) -> Arc<Wal> {
    Arc::new(
        Wal::open(WalConfig {
            dir: dir.join("buffer"),
            segment_bytes,
            max_bytes,
            fsync_interval: Duration::from_millis(100),
            policy: FullPolicy::Pause,
        })
        .unwrap(),
    )
}

/// The sink settings of the attack tests: records to `victims-%Y.%m.%d`, a
/// route refusing three times is dead-lettered.
pub fn victims_es_config(addr: SocketAddr, dir: &Path) -> EsConfig {
    EsConfig {
        url: Url::parse(&format!("http://{addr}")).unwrap(),
        index: "victims-%Y.%m.%d".into(),
        auth_file: None,
        gzip: false,
        ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        batch_records: 100,
        batch_bytes: 1 << 20,
        timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        max_response_bytes: 1 << 20,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        dead_letter: dir.join("dead-letter.ndjson"),
        refresh: false,
        route_failure: RouteFailure::DeadLetterAfterAttempts(3),
    }
}

/// A sink shipping from a buffer in a thread; `stop` or `until` ends it.
pub struct RunningSink {
    stop: Arc<Control>,
    w: Arc<Wal>,
    h: JoinHandle<()>,
    pub stats: Arc<SinkStats>,
}

impl RunningSink {
    /// Starts the sink `new` builds on the counters it is given.
    pub fn start<S: Sink + 'static>(new: impl FnOnce(Arc<SinkStats>) -> S, w: &Arc<Wal>) -> Self {
        let stats = Arc::new(SinkStats::default());
        let stop = Arc::new(Control::new());
        let mut sink = new(stats.clone());
        let (w2, s2) = (w.clone(), stop.clone());
        let h = std::thread::spawn(move || sink.run(&w2, &s2));
        RunningSink {
            stop,
            w: w.clone(),
            h,
            stats,
        }
    }

    pub fn stat(&self, f: fn(&SinkStats) -> &AtomicU64) -> u64 {
        f(&self.stats).load(Ordering::Relaxed)
    }

    /// Whether the sink thread still runs (it ends only when stopped).
    pub fn running(&self) -> bool {
        !self.h.is_finished()
    }

    /// Stops at once (the batch in hand stays in the buffer).
    pub fn stop(self) -> Arc<SinkStats> {
        self.stop.stop();
        self.w.wake();
        self.h.join().unwrap();
        self.stats
    }

    /// Waits until `until` holds of the counters (or `limit`), then stops.
    pub fn until(self, until: impl Fn(&SinkStats) -> bool, limit: Duration) -> Arc<SinkStats> {
        let deadline = Instant::now() + limit;
        while !until(&self.stats) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop()
    }

    /// Waits until `shipped + dead_lettered >= n` (or 60 s), then stops.
    pub fn finish(self, n: u64) -> Arc<SinkStats> {
        self.until(|s| handled(s) >= n, Duration::from_secs(60))
    }
}

/// Records shipped or dead-lettered.
pub fn handled(s: &SinkStats) -> u64 {
    s.shipped.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed)
}

/// [`run_until`] of an Elasticsearch sink.
pub fn run_es(
    cfg: EsConfig,
    w: Arc<Wal>,
    until: impl Fn(&SinkStats) -> bool,
    limit: Duration,
) -> Arc<SinkStats> {
    run_until(|s| EsSink::new(cfg, s).unwrap(), &w, until, limit)
}

/// Runs the sink `new` builds (with test logging) until `until` or `limit`;
/// returns its counters.
pub fn run_until<S: Sink + 'static>(
    new: impl FnOnce(Arc<SinkStats>) -> S,
    w: &Arc<Wal>,
    until: impl Fn(&SinkStats) -> bool,
    limit: Duration,
) -> Arc<SinkStats> {
    super::init_test_logging();
    RunningSink::start(new, w).until(until, limit)
}

/// The Kafka sink's settings the tests start from: a broker on 127.0.0.1:`port`,
/// topic `rein-logs`, the dead-letter file in `dir`.
#[cfg(feature = "kafka")]
pub fn kafka_config(port: u16, dir: &Path) -> rein_logger::sink::kafka::KafkaConfig {
    rein_logger::sink::kafka::KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic: "rein-logs".into(),
        compression: "none".into(),
        message_timeout: Duration::from_millis(1500),
        batch_records: 1000,
        batch_bytes: 4 << 20,
        backoff_max: Duration::from_millis(300),
        dead_letter: dir.join("dead.ndjson"),
        properties: vec![],
        route_failure: rein_logger::sink::route::DEFAULT_ROUTE_FAILURE,
    }
}
