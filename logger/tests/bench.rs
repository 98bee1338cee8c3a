//! Benchmarks (ignored by default; run in release):
//!
//! ```text
//! cargo test --release -p rein-logger --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `throughput`: a container writing 200-byte lines flat out, to a plain file
//!   and through the logger (sink `none`: splice into the sandbox file only;
//!   sink `elasticsearch` with the sink down: splice + parse + encode + disk buffer).
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
    for (label, sink, conf) in [
        (
            "logger, sink none (splice to sandbox file)",
            "none",
            "rotate_max_bytes = 100MiB\n",
        ),
        (
            "logger, sink elasticsearch down (splice + parse + encode + disk buffer)",
            "elasticsearch",
            "rotate_max_bytes = 100MiB\nes_url = http://127.0.0.1:9\nbuffer_max_bytes = 20GiB\n",
        ),
    ] {
        let sd = d.path().join(sink);
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
        let rate = loadgen_rate(Stdio::from(io.stdout), &sd.join("r"), secs);
        drop(io.stderr);
        sh.wait_idle(Duration::from_secs(120));
        sh.stop();
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
