//! The shipper end to end: real `rein-log-shipper` processes, containers
//! started through `LoggerModule::prepare`, chaos (kill -9 of the worker,
//! restarts), sandbox files and their rotation, the disk buffer's contents.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lines::{reader, wait_for};
use common::shipper::{buffered_seqs, run_container, sandbox_stream, spec, Shipper};
use common::tmpfs::Tmpfs;

/// Checks that `data` is exactly lines `prefix seq=0..n` (size 200) in order.
fn assert_lines(data: &[u8], prefix: &str, seqs: impl Iterator<Item = u64>) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    for i in seqs {
        let l = lines
            .next()
            .unwrap_or_else(|| panic!("line {i} of {prefix} missing"));
        assert!(
            l.starts_with(&format!("{prefix} seq={i} ")),
            "expected seq {i} of {prefix}, got {:.40}",
            l
        );
        assert_eq!(l.len(), 199);
    }
    assert!(lines.next().is_none(), "extra lines in the sandbox file");
}

/// Every (prefix, seq) expected appears at least once; nothing else appears.
fn assert_buffered(got: &[(String, u64)], expected: &BTreeMap<String, u64>) -> usize {
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (p, s) in got {
        let v = seen
            .entry(p.clone())
            .or_insert_with(|| vec![0; expected.get(p).copied().unwrap_or(0) as usize]);
        assert!((*s as usize) < v.len(), "unexpected record {p} seq={s}");
        v[*s as usize] += 1;
    }
    let mut dups = 0;
    for (p, n) in expected {
        let v = seen.get(p).unwrap_or_else(|| panic!("no record of {p}"));
        let lost = v.iter().filter(|c| **c == 0).count();
        eprintln!("{p}: {lost} lost of {n}");
    }
    for (p, n) in expected {
        let v = seen.get(p).unwrap_or_else(|| panic!("no record of {p}"));
        let lost: Vec<usize> = v
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == 0)
            .map(|(i, _)| i)
            .collect();
        assert!(
            lost.is_empty(),
            "{} records of {p} lost (of {n}): {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        dups += v
            .iter()
            .map(|c| (*c as usize).saturating_sub(1))
            .sum::<usize>();
    }
    dups
}

#[test]
fn sandbox_files_rotated_and_every_line_buffered() {
    let d = tempfile::tempdir().unwrap();
    // The sink is unreachable: records stay in the disk buffer, where the test reads them.
    let mut sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nrotate_max_bytes = 64KiB\nrotate_keep = 100\nes_timeout = 200ms");
    let m = sh.module();
    let sandbox = d.path().join("sandbox-a");
    let start = Instant::now();
    let mut c = run_container(
        &m,
        &spec("a", &sandbox, &[("rein.log.sink", "elasticsearch")]),
        &["--lines", "5000", "--prefix", "a", "--stderr-every", "10"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "prepare must be fast"
    );
    assert!(c.wait().unwrap().success());
    sh.wait_idle(Duration::from_secs(20));
    let stdout = sandbox_stream(&sandbox, "stdout");
    let stderr = sandbox_stream(&sandbox, "stderr");
    assert_lines(&stdout, "a", (0..5000).filter(|i| i % 10 != 9));
    assert_lines(&stderr, "a", (0..5000).filter(|i| i % 10 == 9));
    let files: Vec<_> = std::fs::read_dir(&sandbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        sandbox.join("stdout.10").exists(),
        "rotated by size: {files:?} {}",
        sh.counters()
    );
    assert!(std::fs::metadata(sandbox.join("stdout.1")).unwrap().len() <= 64 * 1024 + 200);
    let t = Instant::now();
    let mut counters = sh.counters();
    while counters["reader"]["lines_read"] != 5000 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        counters = sh.counters();
    }
    sh.stop();
    let got = buffered_seqs(&d.path().join("state/buffer/elasticsearch"));
    let dups = assert_buffered(&got, &BTreeMap::from([("a".to_string(), 5000)]));
    assert_eq!(dups, 0, "no restart, no duplicate");
    assert_eq!(counters["reader"]["lines_read"], 5000);
    assert!(counters["reader"]["rotations"].as_u64().unwrap() >= 10);
}

#[test]
fn kill_9_and_restarts_of_the_worker_lose_nothing_and_never_epipe() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nrotate_max_bytes = 256KiB\nrotate_keep = 1000\nes_timeout = 200ms\npartial_flush = 300ms");
    let m = sh.module();
    let n = 30_000u64;
    let mut kids = Vec::new();
    let mut expected = BTreeMap::new();
    for name in ["c0", "c1", "c2"] {
        let sandbox = d.path().join(name);
        let labels = [("rein.log.multiline", "off")];
        kids.push((
            name,
            sandbox.clone(),
            run_container(
                &m,
                &spec(name, &sandbox, &labels),
                &[
                    "--lines",
                    &n.to_string(),
                    "--rate",
                    "6000",
                    "--prefix",
                    name,
                ],
            ),
        ));
        expected.insert(name.to_string(), n);
    }
    // ~5 s of output at 18k lines/s in all; kill -9 the worker three times, restart it once.
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(900));
        if round == 2 {
            sh.restart_worker();
        } else {
            sh.kill_worker();
        }
    }
    for (name, _, k) in kids.iter_mut() {
        let st = k.wait().unwrap();
        assert!(
            st.success(),
            "container {name} failed ({st}): EPIPE or worse"
        );
    }
    sh.wait_idle(Duration::from_secs(30));
    for (name, sandbox, _) in &kids {
        assert_lines(&sandbox_stream(sandbox, "stdout"), name, 0..n);
    }
    std::thread::sleep(Duration::from_millis(1100));
    eprintln!("counters: {}", sh.counters());
    drop(sh);
    let got = buffered_seqs(&d.path().join("state/buffer/elasticsearch"));
    let dups = assert_buffered(&got, &expected);
    eprintln!(
        "{} records buffered for {} lines; {dups} re-read after kills (ids make them idempotent)",
        got.len(),
        3 * n
    );
}

#[test]
fn lagging_parser_keeps_unparsed_rotated_files_through_kill_9() {
    let d = tempfile::tempdir().unwrap();
    // Small files, only 1 kept, and a 1 MiB lag bound: the reader rotates far
    // ahead of the parser, which must still find every file after kill -9. Each
    // worker's parser stalls 1.5 s at its third turn, so it lags on any machine
    // (a parser faster than the writer would otherwise leave nothing to test).
    let sh = Shipper::start_env(
        d.path(),
        "es_url = http://127.0.0.1:9\nrotate_max_bytes = 16KiB\nrotate_keep = 1\nmax_unparsed_bytes = 1MiB\nes_timeout = 200ms\npartial_flush = 300ms",
        &[("REIN_FAULT_STALL", "parser:3:1500")],
    );
    let m = sh.module();
    let n = 100_000u64;
    let sandbox = d.path().join("lag");
    let mut c = run_container(
        &m,
        &spec("lag", &sandbox, &[]),
        &["--lines", &n.to_string(), "--prefix", "lag"],
    );
    // The first kill comes once the parser lags behind the reader (counters are
    // written every second); the second 1.2 s later, into the next worker's lag.
    let lagging = || reader(&sh, "unparsed_pauses") + reader(&sh, "unparsed_bytes") > 0;
    wait_for(
        &sh,
        "the parser lagging behind the reader",
        Duration::from_secs(30),
        lagging,
    );
    sh.kill_worker();
    std::thread::sleep(Duration::from_millis(1200));
    sh.kill_worker();
    let st = c.wait().unwrap();
    assert!(st.success(), "container failed ({st}): EPIPE or worse");
    sh.wait_idle(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1100));
    let counters = sh.counters();
    eprintln!("counters: {counters}");
    drop(sh);
    let got = buffered_seqs(&d.path().join("state/buffer/elasticsearch"));
    let dups = assert_buffered(&got, &BTreeMap::from([("lag".to_string(), n)]));
    eprintln!(
        "{} records for {n} lines ({dups} re-read after kills)",
        got.len()
    );
    // Once parsed, rotated files beyond rotate_keep go at the next rotations.
    let rotated = std::fs::read_dir(&sandbox)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("stdout.")
        })
        .count();
    assert!(rotated < 200, "{rotated} rotated files left");
}

#[test]
fn eof_while_the_parser_lags_across_rotations_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        "es_url = http://127.0.0.1:9\nrotate_max_bytes = 16KiB\nrotate_keep = 1\nes_timeout = 200ms",
    );
    let m = sh.module();
    let n = 50_000u64;
    let sandbox = d.path().join("eof");
    let mut c = run_container(
        &m,
        &spec("eof", &sandbox, &[]),
        &["--lines", &n.to_string(), "--prefix", "eof"],
    );
    assert!(c.wait().unwrap().success());
    // The pipe is closed now; the parser is typically still files behind.
    sh.wait_idle(Duration::from_secs(60));
    drop(sh);
    let got = buffered_seqs(&d.path().join("state/buffer/elasticsearch"));
    let dups = assert_buffered(&got, &BTreeMap::from([("eof".to_string(), n)]));
    assert_eq!(dups, 0);
}

#[test]
fn shipper_down_at_prepare_falls_back_to_sandbox_files() {
    let d = tempfile::tempdir().unwrap();
    let m = rein_logger::module::LoggerModule::new(&[
        (
            "shipper_socket".to_string(),
            d.path().join("nobody.sock").display().to_string(),
        ),
        ("shipper_timeout".to_string(), "200ms".to_string()),
    ])
    .unwrap();
    let sandbox = d.path().join("s");
    let t = Instant::now();
    let io = m.prepare(&spec("x", &sandbox, &[])).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "bounded by shipper_timeout"
    );
    assert!(!io.shipped);
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
        .args(["--lines", "100", "--prefix", "x"])
        .stdout(std::process::Stdio::from(io.stdout))
        .stderr(std::process::Stdio::from(io.stderr))
        .spawn()
        .unwrap();
    assert!(c.wait().unwrap().success());
    assert_lines(&std::fs::read(sandbox.join("stdout")).unwrap(), "x", 0..100);
}

#[test]
fn labels_are_checked_against_the_schema_and_caps() {
    let m = rein_logger::module::LoggerModule::new(&[
        (
            "shipper_socket".to_string(),
            "/nonexistent.sock".to_string(),
        ),
        ("max_rate_limit".to_string(), "1MB/s".to_string()),
        ("allowed_index_prefixes".to_string(), "team-".to_string()),
    ])
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let err = |labels: &[(&str, &str)]| {
        m.prepare(&spec("l", d.path(), labels))
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[("rein.log.sink", "kafka")]).contains("rein.log.sink"));
    assert!(err(&[("rein.log.rate_limit", "5MB/s")]).contains("cap"));
    assert!(err(&[("rein.log.index", "other-%Y")]).contains("team-"));
    assert!(err(&[("rein.log.index", "team-$(reboot)")]).contains("not allowed"));
    assert!(err(&[("rein.log.multiline.pattern", "(unclosed")]).contains("invalid pattern"));
    assert!(err(&[("rein.log.colour", "red")]).contains("not a rein setting"));
    let ok = m
        .registration(&spec(
            "l",
            d.path(),
            &[
                ("rein.log.index", "team-a-%Y.%m"),
                ("rein.log.multiline.pattern", r"^\d{4}-"),
            ],
        ))
        .unwrap();
    assert_eq!(ok.options.route, "team-a-%Y.%m");
    assert!(ok.options.multiline.is_some());
    assert!(LoggerModuleNew::bad_param());
}

struct LoggerModuleNew;
impl LoggerModuleNew {
    fn bad_param() -> bool {
        rein_logger::module::LoggerModule::new(&[("shiper_socket".to_string(), "/x".to_string())])
            .unwrap_err()
            .to_string()
            .contains("shiper_socket")
    }
}

#[test]
fn full_buffer_pauses_reading_without_loss() {
    let d = tempfile::tempdir().unwrap();
    // The parser competes for CPU from the start (it does not wait for idle
    // CPU), so the buffer fills while the container is still writing.
    let mut sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nes_timeout = 200ms\nbuffer_max_bytes = 64KiB\nbuffer_full_policy = pause\nparser_burst_bytes = 0B");
    let m = sh.module();
    let sandbox = d.path().join("p");
    let mut c = run_container(
        &m,
        &spec("p", &sandbox, &[]),
        &["--lines", "100000", "--prefix", "p"],
    );
    // 20 MB of output against a 64 KiB buffer and a dead sink: the container must block.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.try_wait().unwrap().is_none(),
        "the container should be blocked on its full pipe"
    );
    let t = Instant::now();
    let mut counters = sh.counters();
    while counters["reader"]["buffer_full_pauses"]
        .as_u64()
        .unwrap_or(0)
        == 0
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
        counters = sh.counters();
    }
    assert!(
        counters["reader"]["buffer_full_pauses"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{counters}"
    );
    assert_eq!(counters["buffers"]["elasticsearch"]["dropped_records"], 0);
    let _ = c.kill();
    let _ = c.wait();
    // Still paused (the sink is down): the rest stays in the pipe and the sandbox file.
    sh.stop();
    let got = buffered_seqs(&d.path().join("state/buffer/elasticsearch"));
    assert!(got.len() > 50);
    // What was buffered is a prefix of the output, in order, without gaps.
    for (i, (p, s)) in got.iter().enumerate() {
        assert_eq!((p.as_str(), *s), ("p", i as u64));
    }
}

#[test]
fn full_buffer_drop_oldest_counts_every_dropped_line() {
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nes_timeout = 200ms\nbuffer_max_bytes = 64KiB\nbuffer_full_policy = drop_oldest\nes_batch_records = 10");
    let m = sh.module();
    let sandbox = d.path().join("q");
    let mut c = run_container(
        &m,
        &spec("q", &sandbox, &[]),
        &["--lines", "20000", "--prefix", "q"],
    );
    assert!(
        c.wait().unwrap().success(),
        "the container is never blocked with drop_oldest"
    );
    // Waits for the condition, not for a time: every line read and written
    // to the buffer (a loaded machine only makes it later).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut counters = sh.counters();
    while !(counters["reader"]["lines_read"] == 20_000
        && counters["reader"]["records_buffered"] == 20_000)
    {
        assert!(
            Instant::now() < deadline,
            "not every line was read and buffered: {counters:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
        counters = sh.counters();
    }
    sh.wait_idle(Duration::from_secs(60));
    sh.stop();
    // The worker writes its counters once more after its last append: a
    // snapshot taken before may miss the last segment dropped.
    let counters = sh.counters();
    let buffer = &counters["buffers"]["elasticsearch"];
    let read = counters["reader"]["lines_read"].as_u64().unwrap();
    let dropped = buffer["dropped_records"].as_u64().unwrap();
    // Deleted from disk while the sink held them (in memory, still to ship).
    let in_flight = buffer["dropped_in_flight"].as_u64().unwrap();
    let got = buffered_seqs(&d.path().join("state/buffer/elasticsearch"));
    let kept = got.len() as u64;
    let all = format!("kept {kept} + dropped {dropped} + in flight {in_flight}, read {read}; counters: {counters:#}");
    assert!(dropped > 0, "{all}");
    assert_eq!(read, 20_000, "{all}");
    // Exact: each line read is kept, counted as dropped, or held by the sink.
    assert_eq!(kept + dropped + in_flight, read, "{all}");
    // What is kept is one contiguous run of the newest lines, each once.
    let first = got[0].1;
    for (i, (_, s)) in got.iter().enumerate() {
        assert_eq!(*s, first + i as u64, "gap or duplicate at {i}: {all}");
    }
    eprintln!("kept {kept} + dropped {dropped} + in flight {in_flight} = read {read}");
    // The newest lines are the ones kept.
    assert_eq!(got.last().unwrap().1, 19_999);
    // The sandbox file still has every line.
    assert_lines(&sandbox_stream(&sandbox, "stdout"), "q", 0..20_000);
}

#[test]
fn rate_limit_backs_up_into_the_container() {
    let d = tempfile::tempdir().unwrap();
    let _sh_guard;
    let sh = Shipper::start(d.path(), "");
    let m = sh.module();
    let sandbox = d.path().join("r");
    let t = Instant::now();
    // 4 MB at 1 MB/s: a 1 MB burst and the 1 MiB pipe absorb half, the rest waits for the limit.
    let mut c = run_container(
        &m,
        &spec(
            "r",
            &sandbox,
            &[("rein.log.rate_limit", "1MB/s"), ("rein.log.sink", "none")],
        ),
        &["--lines", "20000", "--prefix", "r"],
    );
    assert!(c.wait().unwrap().success());
    let took = t.elapsed();
    sh.wait_idle(Duration::from_secs(20));
    let all = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "container finished in {took:?}: not limited"
    );
    assert!(
        all >= Duration::from_millis(2500),
        "all read in {all:?}: not limited"
    );
    assert_lines(&sandbox_stream(&sandbox, "stdout"), "r", 0..20_000);
    _sh_guard = sh;
}

#[test]
fn agent_restart_and_two_module_instances() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "");
    // The first module instance starts a container, then "the agent restarts".
    let a = sh.module();
    let s1 = d.path().join("m1");
    let mut c1 = run_container(
        &a,
        &spec("m1", &s1, &[("rein.log.sink", "none")]),
        &["--lines", "3000", "--rate", "3000", "--prefix", "m1"],
    );
    drop(a);
    // Two instances in one process (the Docker containerizer makes its own).
    let b = sh.module();
    let c = sh.module();
    let s2 = d.path().join("m2");
    let s3 = d.path().join("m3");
    let mut c2 = run_container(
        &b,
        &spec("m2", &s2, &[("rein.log.sink", "none")]),
        &["--lines", "1000", "--prefix", "m2"],
    );
    let mut c3 = run_container(
        &c,
        &spec("m3", &s3, &[("rein.log.sink", "none")]),
        &["--lines", "1000", "--prefix", "m3"],
    );
    for k in [&mut c1, &mut c2, &mut c3] {
        assert!(k.wait().unwrap().success());
    }
    sh.wait_idle(Duration::from_secs(10));
    assert_lines(&sandbox_stream(&s1, "stdout"), "m1", 0..3000);
    assert_lines(&sandbox_stream(&s2, "stdout"), "m2", 0..1000);
    assert_lines(&sandbox_stream(&s3, "stdout"), "m3", 0..1000);
}

/// Root only: the supervisor and the worker run in a cgroup of their own with limits.
#[test]
#[ignore = "needs root"]
fn shipper_runs_in_its_own_cgroup() {
    let name = "shipper_runs_in_its_own_cgroup";
    if !common::is_root() {
        return common::skip(name, "needs root");
    }
    let root = std::path::Path::new("/sys/fs/cgroup");
    let v2 = root.join("cgroup.controllers").exists();
    if !v2 && !root.join("memory/cgroup.procs").exists() {
        return common::skip(name, "no cgroup v2 root and no v1 memory hierarchy");
    }
    let cg = format!("rein-log-test-{}", std::process::id());
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(
        d.path(),
        &format!("cgroup = {cg}\ncgroup_memory_max = 256MiB\ncgroup_cpu_max = 100000 100000"),
    );
    let own = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let sup = own(sh.child.id() as i32);
    let worker = own(sh.worker_pid());
    sh.stop();
    let dirs: Vec<std::path::PathBuf> = if v2 {
        vec![root.join(&cg)]
    } else {
        ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .map(|c| root.join(c).join(&cg))
            .filter(|p| p.exists())
            .collect()
    };
    let limit = if v2 {
        std::fs::read_to_string(root.join(&cg).join("memory.max")).unwrap()
    } else {
        std::fs::read_to_string(root.join("memory").join(&cg).join("memory.limit_in_bytes"))
            .unwrap()
    };
    for dir in &dirs {
        let _ = std::fs::remove_dir(dir);
    }
    assert!(
        sup.contains(&format!("/{cg}\n")),
        "supervisor cgroups: {sup}"
    );
    assert!(
        worker.contains(&format!("/{cg}\n")),
        "worker cgroups: {worker}"
    );
    assert_eq!(limit.trim(), (256u64 << 20).to_string());
}

/// Labels reach the worker: multiline joining, JSON merge, per-task index; a line
/// without newline is shipped after `partial_flush`.
#[test]
fn labels_drive_parsing_in_the_shipper() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(
        d.path(),
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms",
    );
    let m = sh.module();
    let labels = [
        ("rein.log.multiline", "indented"),
        ("rein.log.index", "team-x-%Y"),
    ];
    let io = m
        .prepare(&spec("ml", &d.path().join("ml"), &labels))
        .unwrap();
    assert!(io.shipped);
    let mut out = std::fs::File::from(io.stdout);
    out.write_all(b"Exception in main\n\tat a.B(C.java:1)\n\tat d.E(F.java:2)\n{\"msg\":\"json line\",\"level\":\"WARN\",\"user\":\"u1\"}\nno newline yet").unwrap();
    // The partial line is shipped after partial_flush although the stream stays open.
    let t = Instant::now();
    let mut n = 0;
    while n < 3 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        n = sh.counters()["buffers"]["elasticsearch"]["appended_records"]
            .as_u64()
            .unwrap_or(0);
    }
    assert_eq!(n, 3, "joined trace, JSON line, partial line");
    drop(out);
    drop(io.stderr);
    sh.wait_idle(Duration::from_secs(10));
    sh.stop();
    // Decode the buffered records.
    let copy = tempfile::tempdir().unwrap();
    let buf = d.path().join("state/buffer/elasticsearch");
    for e in std::fs::read_dir(&buf).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
    }
    let w = rein_logger::wal::Wal::open(rein_logger::wal::WalConfig {
        dir: copy.path().to_path_buf(),
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
        fsync_interval: Duration::from_secs(1),
        policy: rein_logger::wal::FullPolicy::Pause,
    })
    .unwrap();
    let b = w.read_batch(100, 1 << 20, Duration::ZERO).unwrap();
    let mut whole = rein_logger::walrec::Expander::default();
    let recs: Vec<(String, serde_json::Value)> = whole
        .expand(&b)
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.route.to_vec()).unwrap(),
                serde_json::from_slice(r.doc).unwrap(),
            )
        })
        .collect();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|(route, _)| route == "team-x-%Y"));
    assert_eq!(
        recs[0].1["message"],
        "Exception in main\n\tat a.B(C.java:1)\n\tat d.E(F.java:2)"
    );
    assert_eq!(recs[0].1["log"]["lines"], 3);
    assert_eq!(recs[1].1["message"], "json line");
    assert_eq!(recs[1].1["log"]["level"], "warn");
    assert_eq!(recs[1].1["user"], "u1");
    assert_eq!(recs[2].1["message"], "no newline yet");
}

/// SIGUSR2: the supervisor replaces itself with the binary on disk (same pid), keeping
/// the socket, the worker and every pipe; a later worker kill is still lossless.
#[test]
fn supervisor_upgrades_in_place_keeping_every_pipe() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "");
    let m = sh.module();
    let sandbox = d.path().join("u");
    let mut c = run_container(
        &m,
        &spec("u", &sandbox, &[("rein.log.sink", "none")]),
        &["--lines", "4000", "--rate", "1500", "--prefix", "u"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let sup = sh.child.id() as i32;
    let worker = sh.worker_pid();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(sup, libc::SIGUSR2) };
    let t = Instant::now();
    while std::fs::read_to_string(sh.state.join("supervisor.execs"))
        .ok()
        .as_deref()
        != Some("1")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "no in-place upgrade");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(sup, 0) }, 0, "same supervisor pid");
    assert_eq!(sh.worker_pid(), worker, "the worker kept running");
    // The upgraded supervisor still holds the pipes: a worker kill loses nothing.
    sh.kill_worker();
    assert!(c.wait().unwrap().success(), "no EPIPE");
    sh.wait_idle(Duration::from_secs(20));
    assert_lines(&sandbox_stream(&sandbox, "stdout"), "u", 0..4000);
    // A new registration works through the upgraded supervisor.
    let mut c2 = run_container(
        &m,
        &spec("u2", &d.path().join("u2"), &[("rein.log.sink", "none")]),
        &["--lines", "10", "--prefix", "v"],
    );
    assert!(c2.wait().unwrap().success());
}

/// The scheduling policy of the worker's parser thread (field 41 of its
/// `/proc/.../stat`: 0 SCHED_OTHER, 5 SCHED_IDLE).
fn parser_policy(worker: i32) -> Option<u32> {
    for t in std::fs::read_dir(format!("/proc/{worker}/task")).ok()? {
        let t = t.ok()?.path();
        if std::fs::read_to_string(t.join("comm")).ok()?.trim() == "parser-0" {
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            return after.split(' ').nth(41 - 3)?.parse().ok();
        }
    }
    None
}

/// True while process `pid` sleeps in write(2) or writev(2) (its pipe is full).
fn blocked_writing(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let sleeping = stat
        .rfind(')')
        .is_some_and(|i| stat[i + 1..].trim_start().starts_with('S'));
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let nr = syscall.split(' ').next().unwrap_or("");
    sleeping && (nr == libc::SYS_write.to_string() || nr == libc::SYS_writev.to_string())
}

#[test]
#[ignore = "needs root"]
fn parser_takes_idle_cpu_until_a_burst_outgrows_its_allowance() {
    // Leaving SCHED_IDLE needs root (or an RLIMIT_NICE), as the shipper runs.
    if !common::is_root() {
        common::skip(
            "parser_takes_idle_cpu_until_a_burst_outgrows_its_allowance",
            "needs root",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A full buffer (sink down) stops the parser behind the reader: it stays
    // behind for longer than parser_burst_time.
    let sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\nes_timeout = 200ms\nbuffer_max_bytes = 64KiB\nparser_burst_time = 500ms\nparser_threads = 1");
    let worker = sh.worker_pid();
    wait_for(&sh, "the idle parser", Duration::from_secs(5), || {
        parser_policy(worker) == Some(5)
    });
    wait_for(&sh, "parser_idle = 1", Duration::from_secs(5), || {
        sh.counters()["reader"]["parser_idle"] == 1
    });
    let m = sh.module();
    let io = m.prepare(&spec("burst", &d.path().join("b"), &[])).unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    // The worker stopped while the container fills its pipe: once it runs again
    // the reader moves the whole pipe at once, far ahead of the parser, which
    // then stops behind it at the full buffer, however loaded the machine is
    // (reading as slowly as the container writes, the parser could keep up until
    // the buffer filled, leaving nothing behind to promote it for).
    // SAFETY: kill(2) of the shipper's worker, a process of this test.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let mut c = Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
        .args(["--lines", "50000", "--prefix", "b"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr))
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !blocked_writing(c.id()) {
        if t.elapsed() > Duration::from_secs(60) {
            // SAFETY: as above.
            unsafe { libc::kill(worker, libc::SIGCONT) };
            panic!("the container never filled its pipe");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(worker, libc::SIGCONT) };
    // A loaded machine may take long to fill the buffer: generous.
    wait_for(&sh, "the promoted parser", Duration::from_secs(60), || {
        parser_policy(worker) == Some(0)
    });
    wait_for(&sh, "parser_promotions", Duration::from_secs(5), || {
        let r = &sh.counters()["reader"];
        r["parser_promotions"].as_u64() >= Some(1) && r["parser_idle"] == 0
    });
    assert!(sh.counters()["reader"]["unparsed_bytes"].as_u64() > Some(0));
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
#[ignore = "needs root"]
fn full_sandbox_disk_makes_the_container_wait_never_epipe_and_loses_nothing() {
    if !common::is_root() {
        common::skip(
            "full_sandbox_disk_makes_the_container_wait_never_epipe_and_loses_nothing",
            "needs root (mounts a tmpfs)",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sandbox = d.path().join("sandbox");
    let fs = Tmpfs::mount_opts(&sandbox, "size=1m");
    let sh = Shipper::start(d.path(), "rotate_max_bytes = 256KiB\nrotate_keep = 1000");
    let m = sh.module();
    // 3 MB of output into a 1 MiB sandbox.
    let mut c = run_container(
        &m,
        &spec("full", &sandbox, &[("rein.log.sink", "none")]),
        &["--lines", "15000", "--prefix", "f"],
    );
    let t = Instant::now();
    while sh.counters()["reader"]["write_errors"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(t.elapsed() < Duration::from_secs(20), "no write error seen");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        c.try_wait().unwrap().is_none(),
        "the container should wait on its full pipe"
    );
    fs.resize("16m");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the container never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the container saw an error: {status:?}");
    sh.wait_idle(Duration::from_secs(30));
    let text = String::from_utf8(sandbox_stream(&sandbox, "stdout")).unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("seq="))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..15000).collect::<Vec<u64>>());
    drop(sh);
}
