//! Attacks of a task on the sinks' shared state, performed for real against
//! an ES-compatible server (osmem-server), through the fault proxy where the
//! server cannot misbehave by itself:
//! * filling the dead-letter file on purpose (records to an index that
//!   refuses them for good) so that it is full and the sink pauses for every
//!   container: each container has a share of the file;
//! * a route answering per-item 503/429 forever while other routes of the
//!   same requests are stored, holding the batch in flight: the route is
//!   failed per `route_failure`.
//!
//! Each test fails if the attack works: a victim's records must all arrive.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::shipper::{spec, Shipper};
use common::sinks::{buffer, run_until, victims_es_config};
use common::{fill_wal, is_root, skip, EsServer};
use rein_logger::sink::deadletter::{self, DeadLetterFullPolicy, DeadLetterLimits};
use rein_logger::sink::es::{EsConfig, EsSink};
use rein_logger::sink::SinkStats;
use rein_logger::wal::Wal;

const NO_OSMEM: &str = "osmem-server not installed (pip install osmem-server==0.1.6)";
/// The dead-letter bound of the sink-level tests (one per test process).
const FILE_BYTES: u64 = 512 << 10;
const SHARE_BYTES: u64 = 64 << 10;

fn limits() {
    deadletter::set_limits(DeadLetterLimits {
        max_bytes: FILE_BYTES,
        policy: DeadLetterFullPolicy::Pause,
        max_bytes_per_container: SHARE_BYTES,
    });
    assert_eq!(deadletter::limits().max_bytes_per_container, SHARE_BYTES);
}

fn wal(dir: &Path) -> Arc<Wal> {
    buffer(dir, 4 << 20, 512 << 20)
}

/// Runs the sink until `until` or `limit`; returns the stats and the
/// largest `dead_letter_full` seen while it ran.
fn run_es(
    cfg: EsConfig,
    w: Arc<Wal>,
    until: impl Fn(&SinkStats) -> bool,
    limit: Duration,
) -> (Arc<SinkStats>, u64) {
    let full = AtomicU64::new(0);
    let watch = |s: &SinkStats| {
        full.fetch_max(load(&s.dead_letter_full), Ordering::Relaxed);
        until(s)
    };
    let stats = run_until(|s| EsSink::new(cfg, s).unwrap(), &w, watch, limit);
    full.fetch_max(load(&stats.dead_letter_full), Ordering::Relaxed);
    (stats, full.into_inner())
}

/// Dead-letter lines per container, and their bytes.
fn dead_by_container(p: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for l in std::fs::read_to_string(p).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let e = m
            .entry(v["container"].as_str().unwrap().to_string())
            .or_insert((0, 0));
        e.0 += 1;
        e.1 += l.len() as u64 + 1;
    }
    m
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Three attacker containers send far more refused records than the whole
/// dead-letter file holds, interleaved with a victim whose records are
/// stored and a second victim whose few records are refused too: the sink
/// never pauses, every victim record is stored or dead-lettered, each
/// attacker stays within its share, across a restart of the sink.
#[test]
fn a_tenant_filling_the_dead_letter_file_never_pauses_the_sink() {
    let Some(es) = EsServer::start() else {
        return skip(
            "a_tenant_filling_the_dead_letter_file_never_pauses_the_sink",
            NO_OSMEM,
        );
    };
    limits();
    let blocked = "attacker-2024.05.01";
    es.block_writes(blocked);
    let d = tempfile::tempdir().unwrap();
    let dl = d.path().join("dead-letter.ndjson");
    let w = wal(d.path());
    let attackers = ["attacker-a", "attacker-b", "attacker-c"];
    // Each attacker alone: ~500 B a dead-letter line, 3000 records, three
    // times the whole file.
    let (rounds, per_round, victims_per_round, refused_victim) = (10, 300, 30, 3);
    for r in 0..rounds {
        for a in attackers {
            fill_wal(&w, a, "attacker-%Y.%m.%d", r * per_round, per_round);
        }
        fill_wal(&w, "victim", "", r * victims_per_round, victims_per_round);
        fill_wal(
            &w,
            "victim-refused",
            "attacker-%Y.%m.%d",
            r * refused_victim,
            refused_victim,
        );
    }
    let attacker_total = (attackers.len() * rounds * per_round) as u64;
    let victims = (rounds * victims_per_round) as u64;
    let refused_victims = (rounds * refused_victim) as u64;
    let total = attacker_total + victims + refused_victims;
    let start = Instant::now();
    let (stats, full) = run_es(
        victims_es_config(es.addr, d.path()),
        w.clone(),
        |s| load(&s.shipped) + load(&s.dead_lettered) >= total,
        Duration::from_secs(120),
    );
    let took = start.elapsed();
    let by = dead_by_container(&dl);
    let report = format!("{took:?} full={full} {stats:?} {by:?}");
    eprintln!("{report}");
    assert_eq!(full, 0, "the sink paused: {report}");
    assert_eq!(es.count("victims-2024.05.01"), victims, "{report}");
    assert_eq!(load(&stats.shipped), victims, "{report}");
    assert_eq!(
        load(&stats.dead_lettered),
        attacker_total + refused_victims,
        "{report}"
    );
    assert_eq!(
        by.get("victim-refused").map(|e| e.0),
        Some(refused_victims),
        "the other container's refused records are all written: {report}"
    );
    let mut written = 0;
    for a in attackers {
        let (n, bytes) = by.get(a).copied().unwrap_or_default();
        assert!(n > 0 && bytes <= SHARE_BYTES, "{a}: {report}");
        written += n;
    }
    assert_eq!(
        written + load(&stats.dead_letter_over_share),
        attacker_total,
        "every attacker record written or counted: {report}"
    );
    assert!(std::fs::metadata(&dl).unwrap().len() <= FILE_BYTES);
    assert_eq!(load(&stats.dead_letter_dropped), 0);

    // A new sink (a restarted worker) reads the shares back from the file:
    // the attackers' next records are over their share at once, a new
    // container's are written.
    for a in attackers {
        fill_wal(&w, a, "attacker-%Y.%m.%d", rounds * per_round, per_round);
    }
    fill_wal(&w, "newcomer", "attacker-%Y.%m.%d", 0, 5);
    fill_wal(
        &w,
        "victim",
        "",
        rounds * victims_per_round,
        victims_per_round,
    );
    let more = (attackers.len() * per_round + 5 + victims_per_round) as u64;
    let (stats2, full2) = run_es(
        victims_es_config(es.addr, d.path()),
        w.clone(),
        |s| load(&s.shipped) + load(&s.dead_lettered) >= more,
        Duration::from_secs(120),
    );
    let by2 = dead_by_container(&dl);
    let report = format!("full={full2} {stats2:?} {by2:?}");
    eprintln!("{report}");
    assert_eq!(full2, 0, "{report}");
    assert_eq!(
        es.count("victims-2024.05.01"),
        victims + victims_per_round as u64
    );
    for a in attackers {
        assert_eq!(by2[a], by[a], "{a} wrote past its share after a restart");
    }
    assert_eq!(
        load(&stats2.dead_letter_over_share),
        (attackers.len() * per_round) as u64,
        "{report}"
    );
    assert_eq!(by2.get("newcomer").map(|e| e.0), Some(5), "{report}");
}

/// One route answers per-item 503 (then 429) forever while the victim's
/// route in the same requests is stored: the victim ships, the route is
/// failed per `route_failure` (counted, dead-lettered), and recovers once
/// the index accepts records again.
#[test]
fn a_route_failing_per_item_forever_is_contained_to_its_route() {
    let Some(es) = EsServer::start() else {
        return skip(
            "a_route_failing_per_item_forever_is_contained_to_its_route",
            NO_OSMEM,
        );
    };
    limits();
    let proxy = Proxy::start(es.addr, None);
    for (round, status, route) in [(0usize, 503u16, "red-a"), (1, 429, "red-b")] {
        let red = &format!("{route}-2024.05.01");
        let pattern = format!("{route}-%Y.%m.%d");
        proxy.set_always(Fault::PartialIndex {
            index: "red-".into(),
            status,
        });
        let d = tempfile::tempdir().unwrap();
        let w = wal(d.path());
        let (n, rounds) = (40, 10);
        let base = round * n * rounds;
        for r in 0..rounds {
            fill_wal(&w, "victim", "", base + r * n, n);
            fill_wal(&w, "attacker", &pattern, base + r * n, n);
        }
        let each = (n * rounds) as u64;
        let start = Instant::now();
        let (stats, _) = run_es(
            victims_es_config(proxy.addr, d.path()),
            w.clone(),
            |s| load(&s.shipped) + load(&s.dead_lettered) >= 2 * each,
            Duration::from_secs(90),
        );
        let took = start.elapsed();
        let routes = stats.routes.snapshot();
        let report = format!("{status}: {took:?} {stats:?} {routes:?}");
        eprintln!("{report}");
        assert_eq!(
            es.count("victims-2024.05.01"),
            ((round + 1) * n * rounds) as u64,
            "every victim record stored: {report}"
        );
        assert_eq!(load(&stats.dead_lettered), each, "{report}");
        assert_eq!(routes[red].failing, 1, "{report}");
        assert_eq!(routes[red].dead_lettered, each, "{report}");
        assert!(routes[red].stalled > 0, "{report}");
        assert_eq!(routes["victims-2024.05.01"].stalled, 0, "{report}");
        // Three attempts once, then each failure is final.
        assert!(took < Duration::from_secs(30), "{report}");
        let dl = std::fs::read_to_string(d.path().join("dead-letter.ndjson")).unwrap();
        // Written, or beyond the attacker's share of the file and counted.
        assert_eq!(
            dl.lines().count() as u64 + load(&stats.dead_letter_over_share),
            each,
            "{report}"
        );
        assert!(dl
            .lines()
            .all(|l| l.contains(&format!("per-item {status}")) && l.contains(red)));
        assert_eq!(es.count(red), 0);

        // The index heals: the route's next record is stored, it recovers.
        proxy.set_always(Fault::Pass);
        fill_wal(&w, "attacker", &pattern, base + n * rounds, 10);
        let (stats, _) = run_es(
            victims_es_config(proxy.addr, d.path()),
            w.clone(),
            |s| load(&s.shipped) >= 10,
            Duration::from_secs(30),
        );
        let routes = stats.routes.snapshot();
        assert_eq!(routes[red].shipped, 10, "{routes:?}");
        assert_eq!(routes[red].failing, 0, "{routes:?}");
        assert_eq!(es.count(red), 10);
    }
}

/// Errors of the destination as a whole are not one route's: a whole
/// request answered 503 or 429, and requests where every item gets a
/// per-item 429, are resent until stored, with nothing dead-lettered and no
/// route failed.
#[test]
fn whole_destination_transient_errors_stay_a_sink_wide_retry() {
    let Some(es) = EsServer::start() else {
        return skip(
            "whole_destination_transient_errors_stay_a_sink_wide_retry",
            NO_OSMEM,
        );
    };
    limits();
    let proxy = Proxy::start(es.addr, None);
    for _ in 0..4 {
        proxy.push(Fault::Status(503));
        proxy.push(Fault::Status(429));
        proxy.push(Fault::Partial {
            every: 1,
            status: 429,
        });
        proxy.push(Fault::Partial {
            every: 1,
            status: 503,
        });
    }
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let n = 50;
    for r in 0..4 {
        fill_wal(&w, "a", "", r * n, n);
        fill_wal(&w, "b", "team-b-%Y.%m.%d", r * n, n);
    }
    let total = (8 * n) as u64;
    let (stats, _) = run_es(
        victims_es_config(proxy.addr, d.path()),
        w.clone(),
        |s| load(&s.shipped) + load(&s.dead_lettered) >= total,
        Duration::from_secs(90),
    );
    let routes = stats.routes.snapshot();
    let report = format!("{stats:?} {routes:?} {:?}", proxy.seen().len());
    eprintln!("{report}");
    assert_eq!(load(&stats.shipped), total, "{report}");
    assert_eq!(load(&stats.dead_lettered), 0, "{report}");
    assert!(load(&stats.retried) > 0, "{report}");
    assert!(
        routes.values().all(|r| r.failing == 0 && r.stalled == 0),
        "{report}"
    );
    assert_eq!(es.count("victims-2024.05.01"), total / 2);
    assert_eq!(es.count("team-b-2024.05.01"), total / 2);
}

/// Through a real shipper: an attacker task (user 65534 when run as root)
/// writes thousands of lines to a write-blocked index of today with a small
/// dead-letter file; a victim beside it ships every line, the sink never
/// pauses, the attacker is held to its share and every byte it wrote is
/// still in its sandbox file.
#[test]
fn shipper_keeps_a_victim_shipping_while_a_tenant_fills_the_dead_letter_file() {
    let Some(es) = EsServer::start() else {
        return skip(
            "shipper_keeps_a_victim_shipping_while_a_tenant_fills_the_dead_letter_file",
            NO_OSMEM,
        );
    };
    let today = common::today();
    es.block_writes(&format!("attacker-{today}"));
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(
        d.path(),
        &format!(
            "es_url = http://{}\nes_index = victims-%Y.%m.%d\nes_gzip = false\nes_backoff_max = 300ms\nes_batch_records = 100\nroute_failure = dead_letter_after:3\npartial_flush = 300ms\nmax_dead_letter_bytes = 256KiB\nmax_dead_letter_bytes_per_container = 32KiB",
            es.addr
        ),
    );
    let module = sh.module();
    let attacker_box = d.path().join("attacker");
    let victim = module
        .prepare(&spec(
            "victim",
            &d.path().join("victim"),
            &[("rein.log.sink", "elasticsearch")],
        ))
        .unwrap();
    let attacker_spec = spec(
        "attacker",
        &attacker_box,
        &[
            ("rein.log.sink", "elasticsearch"),
            ("rein.log.index", "attacker-%Y.%m.%d"),
        ],
    );
    let attacker = module.prepare(&attacker_spec).unwrap();
    // A second write end of the attacker's stdout, for lines after a worker crash.
    let later = attacker.stdout.try_clone().unwrap();
    // The attacker's task: 4000 lines of 200 bytes (800 KB, three times the
    // file), as an unprivileged user when we can.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"));
    cmd.args(["--lines", "4000", "--size", "200", "--prefix", "attack"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(attacker.stdout))
        .stderr(std::process::Stdio::from(attacker.stderr));
    if is_root() {
        use std::os::unix::process::CommandExt;
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(65534).gid(65534);
    } else {
        eprintln!("not root: the attacker runs as the test's user");
    }
    let mut task = cmd.spawn().unwrap();
    // The task holds the only write ends now.
    drop(cmd);
    let n = 500u64;
    let mut v = std::fs::File::from(victim.stdout);
    for i in 0..n {
        writeln!(v, "victim line {i}").unwrap();
    }
    drop((v, victim.stderr));
    assert!(task.wait().unwrap().success());
    let victims_index = format!("victims-{today}");
    let sink =
        |c: &serde_json::Value, k: &str| c["sinks"]["elasticsearch"][k].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut paused = 0;
    let acked = |c: &serde_json::Value| {
        let b = &c["buffers"]["elasticsearch"];
        b["acked_records"].as_u64() == b["appended_records"].as_u64()
    };
    loop {
        let c = sh.counters();
        paused = paused.max(sink(&c, "dead_letter_full"));
        if es.count(&victims_index) >= n && sink(&c, "dead_lettered") >= 4000 && acked(&c) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "victim {} of {n}; {c}",
            es.count(&victims_index)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = sh.counters();
    eprintln!("{c}");
    let dl = sh.state.join("dead-letter/elasticsearch.ndjson");
    let by = dead_by_container(&dl);
    // The worker crashes; the new one reads the shares back from the file:
    // the attacker's next lines are over its share at once.
    sh.kill_worker();
    // Counters restart with the worker: read only the new one's.
    let _ = std::fs::remove_file(sh.state.join("counters.json"));
    let mut f = std::fs::File::from(later);
    for i in 0..100 {
        writeln!(f, "attack after the crash {i}").unwrap();
    }
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(60);
    let c2 = loop {
        let c2 = sh.counters();
        if sink(&c2, "dead_lettered") >= 100 && acked(&c2) {
            break c2;
        }
        assert!(Instant::now() < deadline, "after the crash: {c2}");
        std::thread::sleep(Duration::from_millis(100));
    };
    sh.wait_idle(Duration::from_secs(60));
    sh.stop();
    eprintln!("{c2}");
    assert_eq!(sink(&c2, "dead_letter_over_share"), 100, "{c2}");
    assert_eq!(
        dead_by_container(&dl),
        by,
        "written past its share after a crash"
    );
    assert_eq!(paused, 0, "the sink paused: {c}");
    assert_eq!(sink(&c, "dead_letter_full"), 0, "{c}");
    assert_eq!(es.count(&victims_index), n, "every victim line once: {c}");
    let written: u64 = by.values().map(|e| e.0).sum();
    let bytes: u64 = by.values().map(|e| e.1).sum();
    assert!(bytes <= 32 << 10, "over its share: {by:?}");
    assert_eq!(
        written + sink(&c, "dead_letter_over_share"),
        4000,
        "{c} {by:?}"
    );
    assert!(sink(&c, "dead_letter_over_share") > 3000, "{c}");
    // Not lost: the task's every line is in its sandbox file.
    let kept = common::shipper::sandbox_stream(&attacker_box, "stdout");
    let lines = kept
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"attack"))
        .count();
    assert_eq!(lines, 4100);
}
