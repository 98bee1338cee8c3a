//! Benchmarks (ignored by default; run in release):
//!
//! ```text
//! cargo test --release -p rein-logger --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `throughput`: a container (GNU `yes`, then our load generator) writing
//!   200-byte lines flat out for 2 s, to a plain file and through the logger:
//!   sink `none` (splice into the sandbox file only); sink `elasticsearch`
//!   down, every line parsed, encoded and buffered, with the default settings
//!   (the parser takes idle CPU only during a burst), with the parser always
//!   competing, and with a 64 MiB lag bound (the parse rate throttles the
//!   container: the sustained case).
//! - `sustained`: `REIN_BENCH_CONTAINERS` containers (default 4, our load
//!   generator) writing 200-byte lines flat out for `REIN_BENCH_SECS`
//!   (default 20) through a parse-bound logger (lag bound 64 MiB, sink down,
//!   every line parsed, encoded and buffered; the buffer drops its oldest
//!   segments past `REIN_BENCH_BUFFER`, default 4 GiB): MB/s parsed+buffered per container and in total
//!   (from the counters, after a 2 s warm-up), and the worker's CPU.
//! - `rss_1000_containers`: the worker's and supervisor's RSS with 1,000 live containers.
//! - `prepare_latency`: the module's `prepare` (the registration round trip to
//!   the worker) one container at a time: p50 / p90 / p99.
//!
//! `REIN_BENCH_EXTRA` (settings separated by `;`) is added to the shipper's
//! settings of `throughput` and `sustained`; `REIN_SHIPPER_BIN` runs another
//! build of `rein-log-shipper` (to compare two builds in one run).

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::shipper::{spec, Shipper};

fn loadgen_rate(stdout: Stdio, report: &std::path::Path, secs: &str) -> f64 {
    let st = Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
        .args(["--seconds", secs, "--size", "200", "--report"])
        .arg(report)
        .stdout(stdout)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(report)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The stand-in container: our load generator (64 KiB writes, reports its
/// rate) or GNU `yes` with a 200-byte line (8 KiB writes; the writer of the
/// anchor figures), whose rate is read from `/proc/PID/io` before it is killed.
#[derive(Clone, Copy)]
enum Writer {
    Loadgen,
    Yes,
}

fn write_rate(writer: Writer, stdout: Stdio, report: &std::path::Path, secs: &str) -> f64 {
    match writer {
        Writer::Loadgen => loadgen_rate(stdout, report, secs),
        Writer::Yes => {
            let line = "y".repeat(199);
            let mut child = Command::new("yes")
                .arg(line)
                .stdout(stdout)
                .spawn()
                .unwrap();
            let t = std::time::Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs.parse().unwrap()));
            let io = std::fs::read_to_string(format!("/proc/{}/io", child.id())).unwrap();
            let took = t.elapsed().as_secs_f64();
            let _ = child.kill();
            let _ = child.wait();
            let wchar: f64 = io
                .lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            wchar / took
        }
    }
}

/// Bytes of the disk-buffer segments (`*.wal`) under `dir`.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => wal_bytes(&p),
                Ok(_) if p.extension().is_some_and(|x| x == "wal") => {
                    e.metadata().map(|m| m.len()).unwrap_or(0)
                }
                _ => 0,
            }
        })
        .sum()
}

/// Waits until the parser has caught up; the seconds it took, or `None`.
fn catch_up(sh: &Shipper, limit: Duration) -> Option<f64> {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        // Counters are written every second: wait for a fresh zero.
        std::thread::sleep(Duration::from_millis(250));
        let c = sh.counters();
        if c["reader"]["unparsed_bytes"].as_u64() == Some(0)
            && t.elapsed() > Duration::from_millis(1100)
        {
            return Some(t.elapsed().as_secs_f64());
        }
    }
    None
}

#[test]
#[ignore]
fn throughput() {
    let d = tempfile::tempdir().unwrap();
    let secs_owned = std::env::var("REIN_BENCH_SECS").unwrap_or_else(|_| "2".into());
    let secs = secs_owned.as_str();
    let configs = [
        (
            "logger, sink none (splice to sandbox file)",
            "none",
            "",
            false,
        ),
        (
            "logger, sink elasticsearch (down), every line parsed, defaults",
            "elasticsearch",
            "es_url = http://127.0.0.1:9\nbuffer_max_bytes = 20GiB\n",
            true,
        ),
        (
            "logger, same, parser always competing (parser_burst_bytes 0B)",
            "elasticsearch",
            "es_url = http://127.0.0.1:9\nbuffer_max_bytes = 20GiB\nparser_burst_bytes = 0B\n",
            true,
        ),
        (
            "logger, same, parse-bound (max_unparsed_bytes 64MiB)",
            "elasticsearch",
            "es_url = http://127.0.0.1:9\nbuffer_max_bytes = 20GiB\nmax_unparsed_bytes = 64MiB\n",
            false,
        ),
    ];
    // REIN_BENCH_ONLY=yes|loadgen[:N] runs one writer (and only config N).
    let only = std::env::var("REIN_BENCH_ONLY").unwrap_or_default();
    let (only_writer, only_config) = only.split_once(':').unwrap_or((only.as_str(), ""));
    let mut lines = Vec::new();
    for (wname, writer) in [
        ("GNU yes", Writer::Yes),
        ("rein-log-loadgen", Writer::Loadgen),
    ] {
        if !only_writer.is_empty() && !wname.ends_with(only_writer) {
            continue;
        }
        let plain = std::fs::File::create(d.path().join("plain.out")).unwrap();
        let file_rate = write_rate(writer, Stdio::from(plain), &d.path().join("r0"), secs);
        let _ = std::fs::remove_file(d.path().join("plain.out"));
        lines.push(format!("{wname}, 200-byte lines flat out for {secs} s:"));
        lines.push(format!(
            "  {:<66} {:>7.1} MB/s",
            "plain file",
            file_rate / 1e6
        ));
        for (i, (label, sink, conf, wait)) in configs.iter().enumerate() {
            if !only_config.is_empty() && only_config != i.to_string() {
                continue;
            }
            let sd = d.path().join(format!("run{i}"));
            std::fs::create_dir_all(&sd).unwrap();
            let mut sh = Shipper::start(&sd, &format!("{conf}{}\n", bench_extra()));
            let m = sh.module();
            let io = m
                .prepare(&spec(
                    "bench",
                    &sd.join("sandbox"),
                    &[("rein.log.sink", sink)],
                ))
                .unwrap();
            assert!(io.shipped);
            let rate = write_rate(writer, Stdio::from(io.stdout), &sd.join("r"), secs);
            drop(io.stderr);
            let mut note = String::new();
            if *sink == "none" {
                sh.wait_idle(Duration::from_secs(120));
            } else {
                let r = sh.counters()["reader"].clone();
                let read = r["bytes_read"].as_u64().unwrap_or(0) as f64;
                let unparsed = r["unparsed_bytes"].as_u64().unwrap_or(0) as f64;
                note = format!(
                    "; at the end {:.0} of {:.0} MB parsed",
                    (read - unparsed) / 1e6,
                    read / 1e6
                );
                if *wait {
                    match catch_up(&sh, Duration::from_secs(120)) {
                        Some(t) => note.push_str(&format!(", all parsed {t:.1} s later")),
                        None => note.push_str(", not all parsed 120 s later"),
                    }
                }
                let r = sh.counters()["reader"].clone();
                let parsed = r["bytes_read"].as_u64().unwrap_or(0)
                    - r["unparsed_bytes"].as_u64().unwrap_or(0);
                sh.stop();
                note.push_str(&format!(
                    "; disk buffer {:.2} B per parsed byte",
                    wal_bytes(&sd) as f64 / parsed.max(1) as f64
                ));
            }
            let _ = std::fs::remove_dir_all(&sd);
            lines.push(format!(
                "  {label:<66} {:>7.1} MB/s {:>5.1}% of the plain file{note}",
                rate / 1e6,
                100.0 * rate / file_rate
            ));
        }
    }
    for l in lines {
        println!("{l}");
    }
}

/// The value of the environment variable `name`, or `default` when unset
/// or not a `T`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `REIN_BENCH_EXTRA`: shipper settings added to every configuration.
fn bench_extra() -> String {
    std::env::var("REIN_BENCH_EXTRA")
        .unwrap_or_default()
        .replace(';', "\n")
}

/// The worker's CPU time so far, in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<f64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<f64>() / hz
}

/// Bytes parsed so far (read minus unparsed), from the next counters file
/// the worker writes (every second), with when it was written.
fn fresh_parsed(state: &std::path::Path) -> (std::time::SystemTime, u64) {
    let path = state.join("counters.json");
    let mtime = || std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let before = mtime();
    let t = std::time::Instant::now();
    while mtime() == before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = common::shipper::counters_in(state);
    let r = &c["reader"];
    let parsed = r["bytes_read"].as_u64().unwrap_or(0) - r["unparsed_bytes"].as_u64().unwrap_or(0);
    (mtime().unwrap_or_else(std::time::SystemTime::now), parsed)
}

#[test]
#[ignore]
fn sustained() {
    let d = tempfile::tempdir().unwrap();
    let secs = env_or("REIN_BENCH_SECS", 20.0_f64).max(5.0);
    let k: usize = env_or("REIN_BENCH_CONTAINERS", 4);
    // 4 GiB fills within the run: the oldest segments are then dropped (the
    // sink never answers). A larger bound measures the run without drops.
    let bound = env_or("REIN_BENCH_BUFFER", "4GiB".to_string());
    let sd = d.path().join("state");
    std::fs::create_dir_all(&sd).unwrap();
    let mut sh = Shipper::start(
        &sd,
        &format!(
            "es_url = http://127.0.0.1:9\nbuffer_max_bytes = {bound}\nbuffer_full_policy = drop_oldest\n\
             max_unparsed_bytes = 64MiB\n{}\n",
            bench_extra()
        ),
    );
    let m = sh.module();
    let worker = sh.worker_pid();
    let secs_arg = secs.to_string();
    let writers: Vec<_> = (0..k)
        .map(|i| {
            let io = m
                .prepare(&spec(
                    &format!("c{i}"),
                    &d.path().join(format!("s{i}")),
                    &[("rein.log.sink", "elasticsearch")],
                ))
                .unwrap();
            assert!(io.shipped);
            let report = d.path().join(format!("r{i}"));
            let secs = secs_arg.clone();
            std::thread::spawn(move || {
                let r = loadgen_rate(Stdio::from(io.stdout), &report, &secs);
                drop(io.stderr);
                r
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let state = sd.join("state");
    let (t0, p0) = fresh_parsed(&state);
    let cpu0 = cpu_secs(worker);
    // The last counters file written while every container still writes.
    std::thread::sleep(Duration::from_secs_f64(secs - 4.0));
    let (t1, p1) = fresh_parsed(&state);
    let cpu1 = cpu_secs(worker);
    let rates: Vec<f64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let took = t1
        .duration_since(t0)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    let c = sh.counters();
    sh.stop();
    let per: Vec<String> = rates.iter().map(|r| format!("{:.1}", r / 1e6)).collect();
    println!(
        "{k} containers, 200-byte lines flat out for {secs} s, parse-bound (max_unparsed_bytes 64MiB), parser_threads {}:",
        c["reader"]["parser_threads"]
    );
    println!(
        "  parsed+buffered {:>7.1} MB/s in total ({:.2} M lines/s) over {took:.1} s; per container (written) {} MB/s; worker CPU {:.2} cores",
        (p1 - p0) as f64 / took / 1e6,
        (p1 - p0) as f64 / took / 200e6,
        per.join(" / "),
        (cpu1 - cpu0) / took
    );
}

#[test]
#[ignore]
fn rss_1000_containers() {
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\n");
    let m = sh.module();
    let mut fds: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    for i in 0..1000 {
        let sandbox = d.path().join(format!("s{i}"));
        let io = m.prepare(&spec(&format!("c{i}"), &sandbox, &[])).unwrap();
        assert!(io.shipped, "container {i}");
        fds.push((io.stdout, io.stderr));
    }
    // Every container writes a few lines on both streams.
    for round in 0..5 {
        for (i, (o, e)) in fds.iter().enumerate() {
            let mut o = std::fs::File::from(o.try_clone().unwrap());
            let mut e = std::fs::File::from(e.try_clone().unwrap());
            writeln!(o, "container {i} round {round} {}", "x".repeat(150)).unwrap();
            writeln!(e, "container {i} round {round} error {}", "y".repeat(140)).unwrap();
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let worker = rss_kib(sh.worker_pid());
    let sup = rss_kib(sh.child.id() as i32);
    let c = sh.counters();
    println!(
        "1000 live containers: worker RSS {:.1} MiB, supervisor RSS {:.1} MiB ({} containers live, {} lines read)",
        worker as f64 / 1024.0,
        sup as f64 / 1024.0,
        c["reader"]["containers_live"],
        c["reader"]["lines_read"]
    );
    assert_eq!(c["reader"]["containers_live"], 1000);
    drop(fds);
    sh.wait_idle(Duration::from_secs(30));
}

/// `prepare_latency`: the module's `prepare` (pipes, the registration round
/// trip to the worker, which saves it and attaches the streams) one container
/// at a time, as the agent calls it: p50 / p99 over `REIN_BENCH_N` (default 500).
#[test]
#[ignore]
fn prepare_latency() {
    let n: usize = env_or("REIN_BENCH_N", 500);
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(d.path(), "es_url = http://127.0.0.1:9\n");
    let m = sh.module();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let sandbox = d.path().join(format!("s{i}"));
        std::fs::create_dir_all(&sandbox).unwrap();
        let t = std::time::Instant::now();
        let io = m.prepare(&spec(&format!("c{i}"), &sandbox, &[])).unwrap();
        times.push(t.elapsed());
        assert!(io.shipped, "container {i}");
        drop(io);
        // Paced like launches: the worker goes idle between them.
        std::thread::sleep(Duration::from_millis(2));
    }
    times.sort();
    let us = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "logger prepare, {n} containers one at a time: p50 {:.0} us  p90 {:.0} us  p99 {:.0} us",
        us(0.5),
        us(0.9),
        us(0.99)
    );
    sh.wait_idle(Duration::from_secs(30));
}
