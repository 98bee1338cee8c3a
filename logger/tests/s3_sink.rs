//! The S3 sink against a real S3-compatible server (s3rver, started per test
//! on 127.0.0.1 with its objects on disk, killed on drop), checked by
//! listing and downloading the objects: every record in exactly one gzip
//! NDJSON object under the documented key; the server killed mid-stream and
//! started again; a worker `kill -9` after an upload and before its
//! acknowledgement, and in the middle of a multipart upload; multipart
//! forced by a large batch; refused credentials counted, then fixed; TLS
//! verified against a CA file; and the real shipper with `rein.log.sink=s3`.
#![cfg(feature = "s3")]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::s3_server::{credentials_file, shipper_settings, sink_config, S3Server, MISSING};
use common::shipper::{run_loadgen, spec, Shipper};
use common::sinks::{buffer, RunningSink};
use common::{fill_wal as fill, skip};
use rein_logger::record::Stream;
use rein_logger::sink::s3::S3Sink;
use rein_logger::sink::s3_config::S3Config;
use rein_logger::wal::Wal;
use rein_logger::walrec::WalRecord;

fn wal(dir: &Path) -> Arc<Wal> {
    buffer(dir, 4 << 20, 1 << 30)
}

fn start(cfg: S3Config, w: &Arc<Wal>) -> RunningSink {
    common::init_test_logging();
    RunningSink::start(|s| S3Sink::new(cfg, s).unwrap(), w)
}

/// Waits for `cond` up to `limit`; the panic shows `what` and `state()`.
fn wait(what: &str, limit: Duration, cond: impl Fn() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: timed out; {}", state());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per `<prefix>` of the loadgen lines (`<prefix> seq=N ...`), the seq
/// numbers found in all objects, and per key its line count.
#[derive(Debug, Default)]
struct Found {
    seqs: BTreeMap<String, Vec<u64>>,
    keys: BTreeMap<String, usize>,
}

impl Found {
    fn of(srv: &S3Server) -> Found {
        let mut f = Found::default();
        for (key, lines) in srv.objects() {
            f.keys.insert(key, lines.len());
            for l in lines {
                let doc: serde_json::Value = serde_json::from_str(&l).unwrap();
                let msg = doc["message"].as_str().unwrap();
                let mut w = msg.split(' ');
                let prefix = w.next().unwrap().to_owned();
                let seq = w.next().and_then(|s| s.strip_prefix("seq=")).unwrap();
                f.seqs.entry(prefix).or_default().push(seq.parse().unwrap());
            }
        }
        f
    }

    fn count(&self, prefix: &str) -> u64 {
        self.seqs.get(prefix).map_or(0, |s| s.len() as u64)
    }

    /// Every seq `0..n` of `prefix` exactly once (in any object).
    fn check_once(&self, prefix: &str, n: u64) {
        let mut got = self.seqs.get(prefix).cloned().unwrap_or_default();
        got.sort_unstable();
        let dups = got.windows(2).filter(|w| w[0] == w[1]).count();
        got.dedup();
        assert_eq!(
            dups, 0,
            "{prefix}: {dups} records in two objects; keys {:?}",
            self.keys
        );
        assert_eq!(
            got,
            (0..n).collect::<Vec<_>>(),
            "{prefix}: every record once; keys {:?}",
            self.keys
        );
    }
}

/// s3rver, a temporary directory and a disk buffer in it (None: `test`
/// skipped visibly, s3rver is not installed).
fn setup(test: &str) -> Option<(S3Server, tempfile::TempDir, Arc<Wal>)> {
    let srv = S3Server::start_or_skip(test)?;
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    Some((srv, d, w))
}

#[test]
fn every_record_once_in_gzip_objects_under_the_documented_keys() {
    let Some((srv, d, w)) = setup("every_record_once_in_gzip_objects_under_the_documented_keys")
    else {
        return;
    };
    fill(&w, "sa", "", 0, 1500);
    fill(&w, "sb", "team-b/app", 0, 1500);
    fill(&w, "sc", "", 0, 1500);
    let stats = start(sink_config(&srv.endpoint(), d.path()), &w).finish(4500);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 4500, "{stats:?}");
    let f = Found::of(&srv);
    f.check_once("sa", 1500);
    f.check_once("sb", 1500);
    f.check_once("sc", 1500);
    // <prefix>/<yyyy>/<mm>/<dd>/<framework>/<task>/<container>/<first id>.ndjson.gz;
    // these records carry no framework or task id (`!`).
    for key in f.keys.keys() {
        let rest = key
            .strip_prefix("team-b/app/")
            .or_else(|| key.strip_prefix("rein-logs/"))
            .unwrap_or_else(|| panic!("{key}"));
        let parts: Vec<&str> = rest.split('/').collect();
        assert_eq!(parts.len(), 7, "{key}");
        assert_eq!(&parts[..3], ["2024", "05", "01"], "{key}");
        assert_eq!(&parts[3..5], ["!", "!"], "{key}");
        assert_eq!(key.starts_with("team-b/"), parts[5] == "sb", "{key}");
        assert!(parts[6].ends_with(".ndjson.gz"), "{key}");
    }
    assert!(std::fs::metadata(d.path().join("dead-letter-s3.ndjson")).is_err());
}

#[test]
fn server_killed_mid_stream_and_started_again_nothing_lost() {
    let Some((mut srv, d, w)) = setup("server_killed_mid_stream_and_started_again_nothing_lost")
    else {
        return;
    };
    let mut cfg = sink_config(&srv.endpoint(), d.path());
    cfg.batch_records = 200;
    let run = start(cfg, &w);
    fill(&w, "oa", "", 0, 1000);
    wait(
        "the first objects",
        Duration::from_secs(60),
        || run.stat(|s| &s.shipped) >= 200,
        || format!("{:?}", run.stats),
    );
    srv.stop();
    fill(&w, "oa", "", 1000, 2000);
    let failed = run.stat(|s| &s.failed_requests);
    wait(
        "failed requests while the server is down",
        Duration::from_secs(60),
        || run.stat(|s| &s.failed_requests) >= failed + 3,
        || format!("{:?}", run.stats),
    );
    srv.start_again();
    let stats = run.finish(3000);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 3000, "{stats:?}");
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0, "{stats:?}");
    Found::of(&srv).check_once("oa", 3000);
}

/// Records of ~2.6 KB of random hex (gzip halves them): `n` of them make an
/// object well over a 5 MiB part.
fn fill_incompressible(w: &Wal, container: &str, n: u64) {
    let mut rng = common::rng::Rng(0x5eed);
    let mut p = Vec::new();
    for i in 0..n {
        let hex: String = (0..128).map(|_| format!("{:016x}", rng.next())).collect();
        let doc = format!("{{\"message\":\"{container} seq={i} {hex}\"}}");
        let id = format!("{container}-o-{i}");
        p.clear();
        WalRecord {
            stream: Stream::Stdout,
            ts_ms: 1_714_564_800_000,
            id: id.as_bytes(),
            container: container.as_bytes(),
            route: b"",
            doc: doc.as_bytes(),
        }
        .encode_into(&mut p);
        w.push(&p);
    }
    w.commit().unwrap();
}

#[test]
fn a_large_batch_goes_as_a_multipart_upload() {
    let Some((srv, d, w)) = setup("a_large_batch_goes_as_a_multipart_upload") else {
        return;
    };
    fill_incompressible(&w, "mp", 6000);
    let mut cfg = sink_config(&srv.endpoint(), d.path());
    cfg.batch_records = 100_000;
    cfg.batch_bytes = 64 << 20;
    let counters = std::sync::Mutex::new(None);
    let run = RunningSink::start(
        |s| {
            let sink = S3Sink::new(cfg, s).unwrap();
            *counters.lock().unwrap() = Some(sink.object_counters());
            sink
        },
        &w,
    );
    let objects = counters.lock().unwrap().take().unwrap();
    wait(
        "6000 records stored",
        Duration::from_secs(120),
        || run.stat(|s| &s.shipped) >= 6000,
        || format!("{:?} {objects:?}", run.stats),
    );
    let stats = run.stop();
    assert_eq!(objects.objects.load(Ordering::Relaxed), 1, "{objects:?}");
    assert_eq!(objects.multipart.load(Ordering::Relaxed), 1, "{objects:?}");
    let gz = objects.gz_bytes.load(Ordering::Relaxed);
    assert!(gz > 5 << 20, "{gz} bytes: more than one part");
    let listed = srv.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(srv.parts_in_progress(), 0, "no upload left incomplete");
    assert_eq!(stats.failed_requests.load(Ordering::Relaxed), 0);
    Found::of(&srv).check_once("mp", 6000);
}

#[test]
fn refused_credentials_are_counted_then_the_fixed_file_is_read_again() {
    let Some((srv, d, w)) =
        setup("refused_credentials_are_counted_then_the_fixed_file_is_read_again")
    else {
        return;
    };
    fill(&w, "ca", "", 0, 300);
    let mut cfg = sink_config(&srv.endpoint(), d.path());
    cfg.credentials_file = credentials_file(d.path(), "NOT-A-KEY");
    let run = start(cfg, &w);
    wait(
        "refusals counted",
        Duration::from_secs(60),
        || run.stat(|s| &s.failed_requests) >= 3,
        || format!("{:?}", run.stats),
    );
    assert_eq!(run.stat(|s| &s.shipped), 0);
    assert_eq!(run.stat(|s| &s.dead_lettered), 0, "never dead-lettered");
    assert!(srv.list().is_empty());
    credentials_file(d.path(), common::s3_server::ACCESS_KEY);
    let stats = run.finish(300);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 300, "{stats:?}");
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    Found::of(&srv).check_once("ca", 300);
}

#[test]
fn tls_is_verified_against_the_ca_file() {
    if common::s3_server::s3rver_bin().is_none() {
        return skip("s3_tls_is_verified_against_the_ca_file", MISSING);
    }
    let d = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = common::openssl_cert(d.path()) else {
        return skip(
            "s3_tls_is_verified_against_the_ca_file",
            "openssl not found",
        );
    };
    let srv = S3Server::start(Some((cert, key))).unwrap();
    let w = wal(d.path());
    fill(&w, "ta", "", 0, 100);
    // The system CAs do not know this server: nothing stored, nothing lost.
    let run = start(sink_config(&srv.endpoint(), d.path()), &w);
    wait(
        "failed TLS handshakes counted",
        Duration::from_secs(60),
        || run.stat(|s| &s.failed_requests) >= 2,
        || format!("{:?}", run.stats),
    );
    let stats = run.stop();
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 0);
    let mut cfg = sink_config(&srv.endpoint(), d.path());
    cfg.ca_file = ca;
    let stats = start(cfg, &w).finish(100);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 100, "{stats:?}");
}

/// The shipper's counters of the S3 sink, for failure messages.
fn s3_counters(sh: &Shipper) -> String {
    sh.counters()["sinks"]["s3"].to_string()
}

/// Through the real shipper: a task picks the S3 sink and its prefix by label
/// (within the operator's prefixes; one outside is refused at launch). The
/// worker stalls (10 s) after its third object is stored and before the
/// batch is acknowledged, and is killed there: the new worker forms the batch again
/// from its first record and overwrites the same key, so every line is in
/// exactly one object.
#[test]
fn shipper_stores_task_lines_once_across_a_worker_kill_between_upload_and_ack() {
    let test = "shipper_stores_task_lines_once_across_a_worker_kill_between_upload_and_ack";
    let Some(srv) = S3Server::start_or_skip(test) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let settings = shipper_settings(&srv.endpoint(), d.path())
        + "s3_flush_interval = 300ms\ns3_batch_records = 500\n";
    let sh = Shipper::start_env(d.path(), &settings, &[("REIN_FAULT_STALL", "sink:3:10000")]);
    let m = sh.module_with(&[
        ("allowed_sinks", "elasticsearch,s3,none"),
        ("allowed_s3_prefixes", "team-a/"),
    ]);
    let bad = spec(
        "k0",
        &d.path().join("k0"),
        &[("rein.log.sink", "s3"), ("rein.log.s3_prefix", "team-b/x")],
    );
    let e = m.prepare(&bad).unwrap_err().to_string();
    assert!(
        e.contains("rein.log.s3_prefix") && e.contains("team-a/"),
        "{e}"
    );
    let labels = [
        ("rein.log.sink", "s3"),
        ("rein.log.s3_prefix", "team-a/app"),
    ];
    let n = 4000;
    let mut c = run_loadgen(
        &m,
        &spec("k1", &d.path().join("k1"), &labels),
        n,
        Some(2000),
        "k1",
    );
    wait(
        "three objects stored",
        Duration::from_secs(60),
        || srv.list().len() >= 3,
        || s3_counters(&sh),
    );
    // The worker is now stalled between the third upload and its acknowledgement.
    sh.kill_worker();
    assert!(c.wait().unwrap().success(), "the container saw an error");
    wait(
        "every line in an object",
        Duration::from_secs(120),
        || Found::of(&srv).count("k1") >= n,
        || format!("{} {:?}", s3_counters(&sh), Found::of(&srv).keys),
    );
    let f = Found::of(&srv);
    f.check_once("k1", n);
    for key in f.keys.keys() {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 9, "{key}");
        assert_eq!(&parts[..2], ["team-a", "app"], "{key}");
        assert_eq!(&parts[5..8], ["fw-1", "task-k1", "parent-1.k1"], "{key}");
    }
    println!("s3 sink counters after the kill: {}", s3_counters(&sh));
}

/// Through the real shipper: s3rver is killed while a container writes and
/// started again on the same port and files; every line is in exactly one
/// object.
#[test]
fn shipper_rides_out_a_store_outage() {
    let test = "shipper_rides_out_a_store_outage";
    let Some(mut srv) = S3Server::start_or_skip(test) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let settings = shipper_settings(&srv.endpoint(), d.path())
        + "s3_flush_interval = 300ms\ns3_batch_records = 500\ns3_timeout = 2s\n";
    let sh = Shipper::start(d.path(), &settings);
    let m = sh.module_with(&[("allowed_sinks", "s3,none"), ("default_sink", "s3")]);
    let n = 3000;
    let mut c = run_loadgen(
        &m,
        &spec("o1", &d.path().join("o1"), &[]),
        n,
        Some(1500),
        "o1",
    );
    wait(
        "the first object",
        Duration::from_secs(60),
        || !srv.list().is_empty(),
        || s3_counters(&sh),
    );
    srv.stop();
    let failed = |sh: &Shipper| {
        sh.counters()["sinks"]["s3"]["failed_requests"]
            .as_u64()
            .unwrap_or(0)
    };
    wait(
        "failed requests while the store is down",
        Duration::from_secs(60),
        || failed(&sh) >= 2,
        || s3_counters(&sh),
    );
    srv.start_again();
    assert!(c.wait().unwrap().success(), "the container saw an error");
    wait(
        "every line in an object",
        Duration::from_secs(120),
        || Found::of(&srv).count("o1") >= n,
        || format!("{} {:?}", s3_counters(&sh), Found::of(&srv).keys),
    );
    Found::of(&srv).check_once("o1", n);
    assert_eq!(
        sh.counters()["sinks"]["s3"]["dead_lettered"],
        0,
        "{}",
        s3_counters(&sh)
    );
}

/// A container writing ~16 MB of incompressible lines: an object of two
/// 5 MiB parts or more. The worker stalls before its second part (15 s) and
/// is killed there, mid-upload; the new worker (which stalls there too,
/// then goes on) uploads the object again under the same key, and every
/// line is in exactly one object.
#[test]
fn worker_killed_mid_multipart_upload_every_record_in_exactly_one_object() {
    let test = "worker_killed_mid_multipart_upload_every_record_in_exactly_one_object";
    let Some(srv) = S3Server::start_or_skip(test) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let settings = shipper_settings(&srv.endpoint(), d.path())
        + "s3_flush_interval = 10s\ns3_part_bytes = 5MiB\ns3_batch_bytes = 64MiB\n";
    let sh = Shipper::start_env(
        d.path(),
        &settings,
        &[("REIN_FAULT_STALL", "s3_part:2:15000")],
    );
    let m = sh.module_with(&[("allowed_sinks", "s3,none"), ("default_sink", "s3")]);
    let io = m.prepare(&spec("mk", &d.path().join("mk"), &[])).unwrap();
    let n = 6000u64;
    {
        let mut out = std::fs::File::from(io.stdout);
        let mut rng = common::rng::Rng(7);
        for i in 0..n {
            let hex: String = (0..128).map(|_| format!("{:016x}", rng.next())).collect();
            writeln!(out, "mk seq={i} {hex}").unwrap();
        }
    }
    drop(io.stderr);
    wait(
        "the first part of a multipart upload",
        Duration::from_secs(120),
        || srv.parts_in_progress() >= 1,
        || s3_counters(&sh),
    );
    // (An earlier, smaller batch may be stored already: the parser can fall
    // behind the writer past s3_flush_interval on a loaded machine.)
    let before = srv.list().len();
    sh.kill_worker();
    wait(
        "every line in an object",
        Duration::from_secs(180),
        || Found::of(&srv).count("mk") >= n,
        || format!("{} {:?}", s3_counters(&sh), Found::of(&srv).keys),
    );
    Found::of(&srv).check_once("mk", n);
    println!(
        "s3 sink counters after the kill ({before} objects stored before it): {}",
        s3_counters(&sh)
    );
}

/// A store that takes every object and keeps nothing: the sink's own cost.
struct NullStore;

impl rein_logger::sink::s3_store::ObjectStore for NullStore {
    fn put(&mut self, _key: &str, _body: &[u8]) -> rein_logger::sink::s3_store::PutOutcome {
        rein_logger::sink::s3_store::PutOutcome::Stored
    }
}

/// `n` records of 4 containers as the shipper encodes them: access-log-like
/// lines (~150 bytes, a random request id each) with a task's full metadata.
fn fill_realistic(w: &Wal, n: u64) {
    let mut rng = common::rng::Rng(42);
    for c in 0..4 {
        let container = format!("4b1c6a2e-7f1d-4c55-9f0e-2c9d0c3a1b2{c}");
        let meta = rein_logger::record::SourceMeta {
            container_chain: vec![container.clone()],
            agent_id: Some("a3f1c2d4-0000-4000-8000-00000000S1".into()),
            framework_id: Some("fw-0001".into()),
            executor_id: Some("web.executor".into()),
            task_id: Some(format!("web.{c}")),
            task_name: Some("web".into()),
            sandbox: "/var/lib/mesos/slaves/S1/frameworks/fw/executors/web/runs/latest".into(),
            ..Default::default()
        };
        let mut p = rein_logger::record::StreamPipeline::new(
            &meta,
            Stream::Stdout,
            &rein_logger::record::EncodeOptions::default(),
            16 * 1024,
            None,
        );
        let mut input = Vec::new();
        for i in 0..n / 4 {
            input.extend_from_slice(
                format!(
                    "2024-05-01T12:00:{:02}.{:03}Z INFO [http-worker-{}] GET /api/v1/items/{} status=200 user=u{} took={}ms req={:016x}{:016x}\n",
                    i % 60,
                    i % 1000,
                    i % 16,
                    rng.range(0, 1_000_000),
                    rng.range(0, 5000),
                    rng.range(1, 900),
                    rng.next(),
                    rng.next()
                )
                .as_bytes(),
            );
        }
        let mut out = common::WalAppender::new(w, &container, "");
        p.feed(
            &input,
            0,
            true,
            Instant::now(),
            1_714_564_800_000,
            &mut |e| {
                out.push(e);
            },
        );
    }
    w.commit().unwrap();
}

/// Appends every record of `from` (not acknowledged) to `to`.
fn copy_buffer(from: &Wal, to: &Wal) {
    let b = from
        .read_batch(usize::MAX, usize::MAX, Duration::ZERO)
        .unwrap();
    for r in b.iter() {
        to.push(r);
    }
    to.commit().unwrap();
}

/// Runs an S3 sink on `n` buffered records until all are stored: (seconds,
/// objects, raw bytes, compressed bytes).
fn timed<St: rein_logger::sink::s3_store::ObjectStore + 'static>(
    w: &Arc<Wal>,
    n: u64,
    new: impl FnOnce(Arc<rein_logger::sink::SinkStats>) -> S3Sink<St>,
) -> (f64, u64, u64, u64) {
    let counters = std::sync::Mutex::new(None);
    let start = Instant::now();
    let run = RunningSink::start(
        |s| {
            let sink = new(s);
            *counters.lock().unwrap() = Some(sink.object_counters());
            sink
        },
        w,
    );
    wait(
        "every record stored",
        Duration::from_secs(600),
        || run.stat(|s| &s.shipped) >= n,
        || format!("{:?}", run.stats),
    );
    let secs = start.elapsed().as_secs_f64();
    run.stop();
    let o = counters.lock().unwrap().take().unwrap();
    (
        secs,
        o.objects.load(Ordering::Relaxed),
        o.raw_bytes.load(Ordering::Relaxed),
        o.gz_bytes.load(Ordering::Relaxed),
    )
}

fn report(label: &str, n: u64, (secs, objects, raw, gz): (f64, u64, u64, u64)) {
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{label}: {n} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s NDJSON, {:.1} MB/s gzip \
         ({objects} objects, {:.1} MB -> {:.1} MB, ratio {:.1})",
        n as f64 / secs,
        mb(raw) / secs,
        mb(gz) / secs,
        mb(raw),
        mb(gz),
        raw as f64 / gz.max(1) as f64
    );
}

/// Benchmark (ignored by default; run in release):
/// `cargo test --release -p rein-logger --test s3_sink -- --ignored --nocapture s3_throughput`.
/// The sink's own cost (grouping, gzip) on one core with a store that keeps
/// nothing, then the same records into s3rver (a Node.js test server: that
/// figure is s3rver's, not the sink's).
#[test]
#[ignore = "benchmark"]
#[allow(clippy::cast_precision_loss)]
fn s3_throughput() {
    let n = 200_000u64;
    let d = tempfile::tempdir().unwrap();
    let mut cfg = sink_config("http://127.0.0.1:1", d.path());
    cfg.batch_records = 100_000;
    cfg.batch_bytes = 32 << 20;
    cfg.part_bytes = 8 << 20;
    cfg.flush_interval = Duration::from_millis(1);
    let w = wal(&d.path().join("null"));
    fill_realistic(&w, n);
    for level in [1, 6] {
        let mut c = cfg.clone();
        c.gzip_level = level;
        // Each run its own marks: the records are new to each.
        c.shipped_file = d.path().join(format!("shipped-{level}"));
        let fresh = wal(&d.path().join(format!("null-{level}")));
        copy_buffer(&w, &fresh);
        let r = timed(&fresh, n, |s| S3Sink::with_store(c, s, NullStore).unwrap());
        report(
            &format!(
                "s3 sink, gzip level {level}, store keeping nothing (the sink's cost, 1 core)"
            ),
            n,
            r,
        );
    }
    let Some(srv) = S3Server::start_or_skip("s3_throughput (into s3rver)") else {
        return;
    };
    cfg.endpoint = rein_logger::http::Url::parse(&srv.endpoint()).unwrap();
    cfg.shipped_file = d.path().join("shipped-s3rver");
    let r = timed(&w, n, |s| S3Sink::new(cfg, s).unwrap());
    report("s3 sink into s3rver on 127.0.0.1", n, r);
}

/// Manual check against an S3-compatible store that verifies presigned
/// SigV4 requests (ignored by default), e.g. MinIO or AWS S3 itself (moto's
/// authentication reads only the `Authorization` header, not presigned URLs):
/// `REIN_S3_TEST_ENDPOINT=http://127.0.0.1:PORT REIN_S3_TEST_BUCKET=logs
/// REIN_S3_TEST_KEY=... REIN_S3_TEST_SECRET=... cargo test -p rein-logger
/// --test s3_sink -- --ignored --nocapture signed_requests_against_an_external_store`.
/// One small object (a `PUT`) and one multipart upload, all accepted.
#[test]
#[ignore = "needs REIN_S3_TEST_* naming a store that checks SigV4"]
fn signed_requests_against_an_external_store() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let d = tempfile::tempdir().unwrap();
    let mut cfg = sink_config(&var("REIN_S3_TEST_ENDPOINT"), d.path());
    cfg.bucket = var("REIN_S3_TEST_BUCKET");
    cfg.credentials_file = d.path().join("cred");
    std::fs::write(
        &cfg.credentials_file,
        format!(
            "access_key_id = {}\nsecret_access_key = {}\n",
            var("REIN_S3_TEST_KEY"),
            var("REIN_S3_TEST_SECRET")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        &cfg.credentials_file,
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    cfg.batch_bytes = 64 << 20;
    cfg.batch_records = 100_000;
    let w = wal(d.path());
    fill(&w, "xs", "", 0, 100);
    fill_incompressible(&w, "xm", 6000);
    let stats = start(cfg, &w).finish(6100);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 6100, "{stats:?}");
    assert_eq!(
        stats.failed_requests.load(Ordering::Relaxed),
        0,
        "{stats:?}"
    );
}

/// A part refused by the store: the multipart upload is aborted; and an
/// upload a killed worker left in the uploads file is aborted before the
/// first object (s3rver implements no AbortMultipartUpload, so a scripted
/// server stands in: it answers the create, refuses part 1 with a 500,
/// answers DELETE with 204, and records the requests).
#[test]
fn a_failed_part_aborts_the_multipart_upload() {
    use common::http_server::{read_request, write_response};
    use rein_logger::sink::s3_store::{ObjectStore, PutOutcome, S3Store};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            while let Ok(Some((start, _, _))) = read_request(&mut r) {
                log.lock().unwrap().push(start.clone());
                let (status, body): (u16, &[u8]) = if start.starts_with("POST") {
                    (200, b"<InitiateMultipartUploadResult><UploadId>up-1</UploadId></InitiateMultipartUploadResult>")
                } else if start.starts_with("PUT") {
                    (
                        500,
                        b"<Error><Code>InternalError</Code><Message>disk</Message></Error>",
                    )
                } else {
                    (204, b"")
                };
                if write_response(&mut w, status, "X", body).is_err() {
                    break;
                }
            }
        }
    });
    let d = tempfile::tempdir().unwrap();
    let cfg = sink_config(&format!("http://127.0.0.1:{port}"), d.path());
    // An upload a killed worker left: aborted before the first object.
    std::fs::write(&cfg.uploads_file, "up-0 p/old.ndjson.gz\n").unwrap();
    let mut store = S3Store::new(&cfg).unwrap();
    let body = vec![7u8; (5 << 20) + 1];
    let outcome = store.put("p/k.ndjson.gz", &body);
    assert!(
        matches!(outcome, PutOutcome::Error { status: 500, .. }),
        "{outcome:?}"
    );
    let mut seen = seen.lock().unwrap().clone();
    let leftover = seen.remove(0);
    assert!(
        leftover.starts_with("DELETE /logs/p/old.ndjson.gz?") && leftover.contains("uploadId=up-0"),
        "{leftover}"
    );
    let methods: Vec<&str> = seen.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(methods, ["POST", "PUT", "DELETE"], "{seen:?}");
    assert_eq!(std::fs::read_to_string(&cfg.uploads_file).unwrap(), "");
    assert!(
        seen[0].contains("/logs/p/k.ndjson.gz?") && seen[0].contains("uploads"),
        "{seen:?}"
    );
    assert!(
        seen[1].contains("partNumber=1") && seen[1].contains("uploadId=up-1"),
        "{seen:?}"
    );
    assert!(seen[2].contains("uploadId=up-1"), "{seen:?}");
}

/// A task's log file (`rein.log.files`) to S3 through the real shipper, the
/// worker killed between an upload and its acknowledgement while the file
/// grows: every line is in exactly one object (a log file's records are
/// marked per file like a stream's).
#[test]
fn a_log_file_s_lines_are_stored_once_across_a_worker_kill_between_upload_and_ack() {
    let test = "a_log_file_s_lines_are_stored_once_across_a_worker_kill_between_upload_and_ack";
    let Some(srv) = S3Server::start_or_skip(test) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    // Checkpoints far apart: the killed worker's successor buffers again
    // records the store already has (they must not land in a second object).
    let settings = shipper_settings(&srv.endpoint(), d.path())
        + "s3_flush_interval = 300ms\ns3_batch_records = 500\ncheckpoint_interval = 30s\n";
    let sh = Shipper::start_env(d.path(), &settings, &[("REIN_FAULT_STALL", "sink:3:10000")]);
    let m = sh.module_with(&[("allowed_sinks", "elasticsearch,s3,none")]);
    let labels = [("rein.log.sink", "s3"), ("rein.log.files", "app=app.log")];
    let sandbox = d.path().join("f1");
    let io = m.prepare(&spec("f1", &sandbox, &labels)).unwrap();
    assert!(io.shipped);
    let app = sandbox.join("app.log");
    let write = |from: u64, to: u64| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&app)
            .unwrap();
        for i in from..to {
            writeln!(f, "f1 seq={i} {}", "z".repeat((i % 60) as usize)).unwrap();
        }
    };
    let n = 4000;
    write(0, 2000);
    wait(
        "three objects stored",
        Duration::from_secs(60),
        || srv.list().len() >= 3,
        || s3_counters(&sh),
    );
    // The worker is now stalled between the third upload and its acknowledgement.
    write(2000, 3000);
    sh.kill_worker();
    write(3000, n);
    drop((io.stdout, io.stderr));
    wait(
        "every line of the file in an object",
        Duration::from_secs(120),
        || Found::of(&srv).count("f1") >= n,
        || format!("{} {:?}", s3_counters(&sh), Found::of(&srv).keys),
    );
    Found::of(&srv).check_once("f1", n);
}
