//! Benchmarks (ignored by default; run in release):
//!
//! ```text
//! cargo test --release -p rein-logger --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `throughput`: a container writing 200-byte lines flat out, to a plain file
//!   and through the logger (sink `none`: splice into the sandbox file only;
//!   sink `elasticsearch` with the sink down: splice, and the parser thread
//!   following the files (parse + encode + disk buffer) with a large lag bound,
//!   then with a 64 MiB one, where the parse rate throttles the container).
//! - `rss_1000_containers`: the worker's and supervisor's RSS with 1,000 live containers.

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

#[test]
#[ignore]
fn throughput() {
    let d = tempfile::tempdir().unwrap();
    let secs_owned = std::env::var("REIN_BENCH_SECS").unwrap_or_else(|_| "3".into());
    let secs = secs_owned.as_str();
    let plain = std::fs::File::create(d.path().join("plain.out")).unwrap();
    let file_rate = loadgen_rate(Stdio::from(plain), &d.path().join("r0"), secs);
    let _ = std::fs::remove_file(d.path().join("plain.out"));
    let mut results = vec![("plain file", file_rate)];
    let mut notes = Vec::new();
    for (label, sink, conf) in [
        (
            "logger, sink none (splice to sandbox file)",
            "none",
            "rotate_max_bytes = 100MiB\n",
        ),
        (
            "logger, sink elasticsearch down, parser following (max_unparsed_bytes 8GiB)",
            "elasticsearch",
            "rotate_max_bytes = 100MiB\nes_url = http://127.0.0.1:9\nbuffer_max_bytes = 20GiB\nmax_unparsed_bytes = 8GiB\n",
        ),
        (
            "logger, sink elasticsearch down, parse-bound (max_unparsed_bytes 64MiB)",
            "elasticsearch",
            "rotate_max_bytes = 100MiB\nes_url = http://127.0.0.1:9\nbuffer_max_bytes = 20GiB\nmax_unparsed_bytes = 64MiB\n",
        ),
    ] {
        let sd = d.path().join(format!("run{}", results.len()));
        std::fs::create_dir_all(&sd).unwrap();
        let mut sh = Shipper::start(&sd, conf);
        let m = sh.module();
        let io = m
            .prepare(&spec(
                "bench",
                &sd.join("sandbox"),
                &[("rein.log.sink", sink)],
            ))
            .unwrap();
        assert!(io.shipped);
        let t = std::time::Instant::now();
        let rate = loadgen_rate(Stdio::from(io.stdout), &sd.join("r"), secs);
        drop(io.stderr);
        if sink == "none" {
            sh.wait_idle(Duration::from_secs(120));
        } else {
            // Stop without waiting for the parser to catch up (it would resume
            // from its checkpoint after a restart); the counters say how far it got.
            let took = t.elapsed().as_secs_f64();
            sh.stop();
            let all = sh.counters();
            let r = &all["reader"];
            let read = r["bytes_read"].as_u64().unwrap_or(0) as f64;
            let unparsed = r["unparsed_bytes"].as_u64().unwrap_or(0) as f64;
            notes.push(format!(
                "{label}: parsed {:.0} MB ({:.2} M lines, {:.1} MB/s) of {:.0} MB in {took:.1} s; {:.0} MB left to parse",
                (read - unparsed) / 1e6,
                r["lines_read"].as_u64().unwrap_or(0) as f64 / 1e6,
                (read - unparsed) / 1e6 / took,
                read / 1e6,
                unparsed / 1e6
            ));
        }
        let _ = std::fs::remove_dir_all(&sd);
        results.push((label, rate));
    }
    println!("container writing 200-byte lines flat out for {secs} s:");
    for (label, rate) in &results {
        println!(
            "  {label:<75} {:>8.1} MB/s  {:>5.1}% of the plain file",
            rate / 1e6,
            100.0 * rate / file_rate
        );
    }
    for n in notes {
        println!("  {n}");
    }
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
