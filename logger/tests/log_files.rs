//! A task's log files (`rein.log.files`) through real `rein-log-shipper`
//! processes: two files rotated both ways (rename, copytruncate), a third
//! with a sink of its own, and stdout, worker kill -9 and restart in the
//! middle; every line of each reaches its sink's disk buffer with one id (the
//! sinks keep one copy of a resent id), with its file's path and tag. And a
//! fallen-back container's files, shipped once the shipper is back.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::shipper::{read_buffer, spec, Shipper};

fn append(p: &Path, from: u64, to: u64, what: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    for i in from..to {
        writeln!(f, "{what} seq={i} {}", "y".repeat((i % 40) as usize)).unwrap();
    }
}

/// Waits until the container's checkpoint has the file at `p` (by inode)
/// read to `len` bytes: a file is rotated only once the shipper has seen it
/// (a file created and renamed away within one scan is not followed unless
/// the glob matches its rotated name too).
fn wait_read(state: &Path, p: &Path, len: u64) {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(p).unwrap().ino();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = std::fs::read_dir(state.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("checkpoint.json")).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .any(|cp| {
                cp["files"]["files"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|f| f["ino"].as_u64() == Some(ino) && f["offset"].as_u64() >= Some(len))
            });
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} not read to {len} bytes within 60 s",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shipper whose Elasticsearch and Redis sinks are unreachable (what is
/// shipped is read back from their disk buffers) and a module allowing both.
fn shipper_with_redis(dir: &Path) -> (Shipper, rein_logger::module::LoggerModule) {
    let sh = Shipper::start(
        dir,
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms\n\
         redis_url = redis://127.0.0.1:9",
    );
    let m = sh.module_with(&[("allowed_sinks", "elasticsearch,redis,none")]);
    (sh, m)
}

/// The counters once no container is attached (they are written every
/// second: the ones after the end).
fn counters_after_the_end(sh: &Shipper) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut counters = sh.counters();
    while counters["reader"]["containers_live"] != 0 {
        assert!(std::time::Instant::now() < deadline, "{counters}");
        std::thread::sleep(Duration::from_millis(50));
        counters = sh.counters();
    }
    counters
}

/// (prefix, seq) -> (ids, tag, path) of every buffered record.
type Seen = BTreeMap<(String, u64), (Vec<String>, String, String)>;

fn seen(buffer: &Path) -> Seen {
    let mut out = Seen::new();
    read_buffer(buffer, |rec| {
        let v: serde_json::Value = serde_json::from_slice(rec.doc).unwrap();
        let msg = v["message"].as_str().unwrap();
        let mut parts = msg.split(' ');
        let prefix = parts.next().unwrap().to_string();
        let seq: u64 = parts.next().unwrap()[4..].parse().unwrap();
        let e = out.entry((prefix, seq)).or_default();
        e.0.push(String::from_utf8_lossy(rec.id).into_owned());
        e.1 = v["log"]["file"]["tag"].as_str().unwrap_or("").to_string();
        e.2 = v["log"]["file"]["path"].as_str().unwrap_or("").to_string();
    });
    out
}

/// Each of `0..n` of `prefix` is there, all its copies with one id.
fn assert_once(s: &Seen, prefix: &str, n: u64, counters: &serde_json::Value) {
    let lost: Vec<u64> = (0..n)
        .filter(|i| !s.contains_key(&(prefix.to_string(), *i)))
        .collect();
    assert!(
        lost.is_empty(),
        "{prefix}: {} of {n} lost, first {:?}; counters {counters}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    for i in 0..n {
        let ids = &s[&(prefix.to_string(), i)].0;
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "{prefix} seq={i} buffered under several ids {ids:?}: a sink would keep it twice"
        );
    }
}

#[test]
fn two_log_files_rotated_both_ways_and_stdout_arrive_once_across_worker_kills() {
    let d = tempfile::tempdir().unwrap();
    let (sh, m) = shipper_with_redis(d.path());
    let sandbox = d.path().join("sb");
    let labels = [
        ("rein.log.multiline", "off"),
        (
            "rein.log.files",
            "app=logs/*.log,gc=gc.log;multiline=off,audit=audit.log;sink=redis;route=audit-x",
        ),
    ];
    let io = m.prepare(&spec("c0", &sandbox, &labels)).unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    std::fs::create_dir(sandbox.join("logs")).unwrap();
    let mut out = File::from(io.stdout);
    let (app, gc) = (sandbox.join("logs/app.log"), sandbox.join("gc.log"));
    let audit = sandbox.join("audit.log");
    let (mut a, mut g, mut o) = (0u64, 0u64, 0u64);
    for round in 0..8u64 {
        append(&app, a, a + 400, "app");
        a += 400;
        append(&gc, g, g + 300, "gc");
        g += 300;
        append(&audit, round * 20, round * 20 + 20, "audit");
        for _ in 0..100 {
            writeln!(out, "out seq={o} stdout").unwrap();
            o += 1;
        }
        match round {
            2 | 5 => sh.kill_worker(),
            4 => sh.restart_worker(),
            _ => {}
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        // Part of the lines written before a rotation are read after it
        // (from the renamed file, or from the copy).
        wait_read(&sh.state, &app, size(&app) / 2);
        wait_read(&sh.state, &gc, size(&gc) / 2);
        append(&app, a, a + 50, "app");
        a += 50;
        append(&gc, g, g + 50, "gc");
        g += 50;
        if round % 2 == 0 {
            std::fs::rename(&app, sandbox.join(format!("logs/app.log.{round}"))).unwrap();
        }
        if round % 3 == 1 {
            std::fs::copy(&gc, sandbox.join(format!("gc.log.{round}"))).unwrap();
            File::create(&gc).unwrap();
        }
    }
    // The last lines end without a newline: flushed when the container ends.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&gc)
        .unwrap()
        .write_all(format!("gc seq={g} no newline").as_bytes())
        .unwrap();
    g += 1;
    drop(out);
    drop(io.stderr);
    sh.wait_idle(Duration::from_secs(60));
    let counters = counters_after_the_end(&sh);
    drop(sh);
    let s = seen(&d.path().join("state/buffer/elasticsearch"));
    assert_once(&s, "app", a, &counters);
    assert_once(&s, "gc", g, &counters);
    assert_once(&s, "out", o, &counters);
    let app0 = &s[&("app".to_string(), 0)];
    assert_eq!((app0.1.as_str(), app0.2.as_str()), ("app", "logs/app.log"));
    let gc0 = &s[&("gc".to_string(), 0)];
    assert_eq!((gc0.1.as_str(), gc0.2.as_str()), ("gc", "gc.log"));
    let r = &counters["reader"];
    assert_eq!(r["log_file_truncated_bytes_lost"], 0, "{counters}");
    assert_eq!(r["log_files_lost"], 0, "{counters}");
    // This worker (since the last kill) saw the last copytruncate.
    assert!(
        r["log_file_copies_recovered"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    assert_eq!(
        r["log_files_followed"], 0,
        "released at the end: {counters}"
    );
    let ids: std::collections::HashSet<&String> = s.values().map(|v| &v.0[0]).collect();
    assert_eq!(ids.len(), s.len(), "one id per line");
    // The file with a sink of its own: in that sink's buffer, on its route, only there.
    assert!(
        !s.keys().any(|k| k.0 == "audit"),
        "audit lines in the Elasticsearch buffer"
    );
    let redis = d.path().join("state/buffer/redis");
    assert_once(&seen(&redis), "audit", 160, &counters);
    let mut routes = std::collections::BTreeSet::new();
    read_buffer(&redis, |rec| {
        routes.insert(String::from_utf8_lossy(rec.route).into_owned());
    });
    assert_eq!(routes.into_iter().collect::<Vec<_>>(), ["audit-x"]);
}

/// A worker killed after it took a container back and before its parser
/// saved a checkpoint of its own: the next worker still knows the log files
/// (the one rotated away is read to its end, and a new file at the name gets
/// a new number, not the ids of the first file's lines).
#[test]
fn a_worker_killed_right_after_taking_a_container_back_keeps_its_log_files() {
    let d = tempfile::tempdir().unwrap();
    // Only a stopping worker saves its parser's checkpoint here.
    let sh = Shipper::start(
        d.path(),
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms\n\
         checkpoint_interval = 1h",
    );
    let m = sh.module();
    let sandbox = d.path().join("sb");
    let io = m
        .prepare(&spec("kb", &sandbox, &[("rein.log.files", "app=app.log")]))
        .unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    let app = sandbox.join("app.log");
    append(&app, 0, 100, "app");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sh.counters()["reader"]["log_files_found"] != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", sh.counters());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stopping worker saves the files' offsets; the new one takes the
    // container back (its counters, once written, show it attached).
    sh.restart_worker();
    let _ = std::fs::remove_file(sh.state.join("counters.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sh.counters()["reader"]["containers_live"] != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", sh.counters());
        std::thread::sleep(Duration::from_millis(20));
    }
    append(&app, 100, 150, "app");
    std::fs::rename(&app, sandbox.join("app.log.1")).unwrap();
    append(&app, 150, 200, "app");
    sh.kill_worker();
    drop(File::from(io.stdout));
    drop(io.stderr);
    sh.wait_idle(Duration::from_secs(60));
    let counters = counters_after_the_end(&sh);
    drop(sh);
    let s = seen(&d.path().join("state/buffer/elasticsearch"));
    assert_once(&s, "app", 200, &counters);
    let ids: std::collections::HashSet<&String> = s.values().map(|v| &v.0[0]).collect();
    assert_eq!(ids.len(), s.len(), "one id per line: {counters}");
}

#[test]
fn a_fallen_back_container_s_log_files_are_shipped_once_the_shipper_is_back() {
    let d = tempfile::tempdir().unwrap();
    // No shipper yet: the module falls back to sandbox files and leaves a record.
    let m = common::shipper::module_at(
        &d.path().join("shipper.sock"),
        &[("shipper_timeout", "200ms")],
    );
    let sandbox = d.path().join("sb");
    let labels = [("rein.log.files", "app=*.log")];
    let io = m.prepare(&spec("fb", &sandbox, &labels)).unwrap();
    assert!(!io.shipped);
    let app = sandbox.join("app.log");
    append(&app, 0, 500, "app");
    std::fs::rename(&app, sandbox.join("app.log.1")).unwrap();
    append(&app, 500, 700, "app");
    let mut out = File::from(io.stdout);
    writeln!(out, "out seq=0 stdout").unwrap();
    drop(out);
    drop(io.stderr);
    let sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nes_timeout = 200ms");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut counters = sh.counters();
    while counters["reader"]["fallback_shipped"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "not shipped: {counters}"
        );
        std::thread::sleep(Duration::from_millis(50));
        counters = sh.counters();
    }
    drop(sh);
    let s = seen(&d.path().join("state/buffer/elasticsearch"));
    // The file renamed before the shipper ever ran is not known to it: the
    // current one is shipped whole.
    assert_once(&s, "out", 1, &counters);
    let lost: Vec<u64> = (500..700)
        .filter(|i| !s.contains_key(&("app".to_string(), *i)))
        .collect();
    assert!(lost.is_empty(), "app lines lost: {lost:?}; {counters}");
    assert_eq!(s[&("app".to_string(), 500)].1, "app");
}

#[test]
fn a_file_with_its_own_sink_is_shipped_when_the_container_s_sink_is_none() {
    let d = tempfile::tempdir().unwrap();
    let (sh, m) = shipper_with_redis(d.path());
    let sandbox = d.path().join("sb");
    let labels = [
        ("rein.log.sink", "none"),
        ("rein.log.files", "audit=audit.log;sink=redis,app=app.log"),
    ];
    let io = m.prepare(&spec("c1", &sandbox, &labels)).unwrap();
    assert!(io.shipped);
    append(&sandbox.join("audit.log"), 0, 300, "audit");
    append(&sandbox.join("app.log"), 0, 300, "app");
    let mut out = File::from(io.stdout);
    writeln!(out, "out seq=0 stdout").unwrap();
    drop(out);
    drop(io.stderr);
    sh.wait_idle(Duration::from_secs(60));
    let counters = sh.counters();
    drop(sh);
    // The audit file in its sink; stdout and the other file stay in the sandbox only.
    let s = seen(&d.path().join("state/buffer/redis"));
    assert_once(&s, "audit", 300, &counters);
    assert_eq!(
        s.len(),
        300,
        "only the audit file's lines in the Redis buffer"
    );
    let es = seen(&d.path().join("state/buffer/elasticsearch"));
    assert!(
        es.is_empty(),
        "sink none: nothing buffered for Elasticsearch"
    );
}

#[test]
fn panics_in_the_parser_while_it_reads_log_files_lose_and_repeat_nothing() {
    let d = tempfile::tempdir().unwrap();
    // Panics before a file's read and after records were framed (of a file
    // or a stream, whichever comes): each read cut short is made again once.
    let sh = Shipper::start_env(
        d.path(),
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms",
        &[(
            "REIN_FAULT_PANIC",
            "parser_file:5,parser_file:40,parser_record:700,parser_record:2500,parser_record:5100",
        )],
    );
    let m = sh.module();
    let sandbox = d.path().join("sb");
    let labels = [("rein.log.files", "a=a.log,b=b.log,c=c.log")];
    let io = m.prepare(&spec("c2", &sandbox, &labels)).unwrap();
    assert!(io.shipped);
    let mut out = File::from(io.stdout);
    for round in 0..4u64 {
        for name in ["a", "b", "c"] {
            append(
                &sandbox.join(format!("{name}.log")),
                round * 500,
                round * 500 + 500,
                name,
            );
        }
        for i in round * 300..round * 300 + 300 {
            writeln!(out, "out seq={i} stdout").unwrap();
        }
        wait_read(&sh.state, &sandbox.join("a.log"), 1);
    }
    drop(out);
    drop(io.stderr);
    sh.wait_idle(Duration::from_secs(60));
    let counters = counters_after_the_end(&sh);
    drop(sh);
    let s = seen(&d.path().join("state/buffer/elasticsearch"));
    for name in ["a", "b", "c"] {
        assert_once(&s, name, 2000, &counters);
    }
    assert_once(&s, "out", 1200, &counters);
    let twice: Vec<_> = s
        .iter()
        .filter(|(_, v)| v.0.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        twice.is_empty(),
        "buffered twice: {:?}; {counters}",
        &twice[..twice.len().min(5)]
    );
    assert!(
        counters["reader"]["thread_panics_parser"].as_u64().unwrap() >= 3,
        "{counters}"
    );
}
