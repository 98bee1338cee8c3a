//! The shipper beside a widely used peer, Debian's rsyslog (`imfile` +
//! `omelasticsearch`), on the same workload in the same run (ignored by
//! default; run in release):
//!
//! ```text
//! cargo test --release -p rein-logger --test peer -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `cpu_per_gb_vs_rsyslog`: a writer puts the same N 200-byte lines
//!   (`peer seq=<n> xxx…`) flat out into a container's stdout, which our
//!   shipper splices into the sandbox file, parses, encodes, buffers on disk
//!   and ships; and into a file rsyslogd follows. Both deliver to the same
//!   kind of fast Elasticsearch `_bulk` endpoint (`common/bulk_counter.rs`,
//!   its CPU counted for neither). Per shipper: lines/s delivered, CPU
//!   seconds (user + system of the shipper's own processes: our supervisor and
//!   worker; rsyslogd) per GB of lines delivered, peak RSS, documents,
//!   duplicates, missing. Ours must deliver every line exactly once (the
//!   bench fails otherwise); rsyslog's losses are reported.
//! - `confirm_osmem`: both against osmem-server (an ES-compatible server,
//!   too slow for throughput), a small run: both deliver every line.
//!
//! Environment: `REIN_PEER_LINES` (default 1,000,000), `REIN_PEER_ROUNDS`
//! (default 1; the shippers alternate in every round),
//! `REIN_PEER_RSYSLOG_WORKERS` (default 1), `REIN_PEER_RSYSLOG_BATCH`
//! (default 2000), `REIN_PEER_STALL_SECS` (default 60: a shipper that
//! delivers nothing more for that long has finished or is stuck),
//! `REIN_PEER_ONLY` (`rein`, `rein-plain`, `rsyslog`, comma-separated: the
//! contenders run), `REIN_PEER_PERF=1` (a `perf record` of our shipper while it
//! works; its top symbols printed; `REIN_PEER_PERF_DATA=<dir>` keeps the data).

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

#[path = "common/bulk_counter.rs"]
mod bulk_counter;
mod common;
#[path = "common/proc_usage.rs"]
mod proc_usage;
#[path = "common/rsyslog.rs"]
mod rsyslog;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulk_counter::{BulkCounter, Delivery};
use common::shipper::{spec, Shipper};
use rsyslog::{Rsyslog, Tuning};

const LINE: u64 = 200;
const PREFIX: &str = "peer";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The contenders.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// Our shipper with its defaults (gzip bodies).
    Rein,
    /// Our shipper with `es_gzip = false` (plain bodies, as rsyslog sends).
    ReinPlain,
    /// rsyslogd with imfile and omelasticsearch.
    Rsyslog,
}

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Peer::Rein => "rein-log-shipper (defaults, gzip)",
            Peer::ReinPlain => "rein-log-shipper (es_gzip = false)",
            Peer::Rsyslog => "rsyslogd 8.2302 imfile+omelasticsearch",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Peer::Rein => "rein",
            Peer::ReinPlain => "rein-plain",
            Peer::Rsyslog => "rsyslog",
        }
    }
}

/// One shipper's figures in one round.
struct Figures {
    peer: Peer,
    secs: f64,
    cpu: f64,
    peak_rss_kib: u64,
    delivery: Delivery,
    docs: u64,
    id_conflicts: u64,
    requests: u64,
    wire_bytes: u64,
    /// Our worker's CPU per thread name (empty for rsyslog).
    threads: Vec<(String, f64)>,
}

impl Figures {
    fn lines_per_s(&self) -> f64 {
        self.delivery.delivered as f64 / self.secs
    }

    fn cpu_per_gb(&self) -> f64 {
        self.cpu / (self.delivery.delivered as f64 * LINE as f64 / 1e9)
    }
}

/// The writer: `lines` numbered 200-byte lines flat out to `out`.
fn write_lines(out: Stdio, lines: u64) {
    let st = Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
        .args(["--lines", &lines.to_string(), "--size", &LINE.to_string()])
        .args(["--prefix", PREFIX])
        .stdin(Stdio::null())
        .stdout(out)
        .status()
        .expect("run rein-log-loadgen");
    assert!(st.success(), "the writer failed: {st}");
}

/// Waits until `es` holds every line `PREFIX seq=0..lines`, or nothing new
/// arrived for `stall`; the delivery then.
fn wait_delivered(es: &BulkCounter, lines: u64, stall: Duration) -> Delivery {
    let mut last = (0, Instant::now());
    loop {
        let (docs, d) = es.with(|c| (c.docs, c.delivery(PREFIX, lines)));
        if d.delivered == lines {
            return d;
        }
        if docs != last.0 {
            last = (docs, Instant::now());
        } else if last.1.elapsed() > stall {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `count` lines of prefix `prefix` arrived (a warm-up).
fn wait_lines(es: &BulkCounter, prefix: &str, count: u64, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while es.with(|c| c.delivery(prefix, count).delivered) < count {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(peer: Peer, es: &BulkCounter, t0: Instant, cpu: f64, rss: u64, d: Delivery) -> Figures {
    es.with(|c| Figures {
        peer,
        secs: c
            .last_doc
            .map_or(f64::NAN, |t| t.duration_since(t0).as_secs_f64()),
        cpu,
        peak_rss_kib: rss,
        delivery: d,
        docs: c.docs,
        id_conflicts: c.id_conflicts,
        requests: c.requests,
        wire_bytes: c.wire_bytes,
        threads: Vec::new(),
    })
}

/// Our shipper: a container writing `lines` into its stdout.
fn run_rein(peer: Peer, dir: &Path, lines: u64, stall: Duration) -> Figures {
    let es = BulkCounter::start();
    let gzip = if peer == Peer::ReinPlain {
        "es_gzip = false\n"
    } else {
        ""
    };
    let mut sh = Shipper::start(dir, &format!("es_url = http://{}\n{gzip}", es.addr));
    let (sup, worker) = (sh.child.id() as i32, sh.worker_pid());
    let cpu0 = proc_usage::cpu_seconds(sup) + proc_usage::cpu_seconds(worker);
    let m = sh.module();
    let io = m
        .prepare(&spec(
            "peer",
            &dir.join("sandbox"),
            &[("rein.log.sink", "elasticsearch")],
        ))
        .expect("prepare the container");
    assert!(io.shipped, "the shipper did not take the container");
    let perf = Profile::start(&[sup, worker], dir);
    let t0 = Instant::now();
    write_lines(Stdio::from(io.stdout), lines);
    drop(io.stderr);
    let d = wait_delivered(&es, lines, stall);
    let cpu = proc_usage::cpu_seconds(sup) + proc_usage::cpu_seconds(worker) - cpu0;
    if let Some(p) = perf {
        p.report(peer.label());
    }
    let rss = proc_usage::peak_rss_kib(sup) + proc_usage::peak_rss_kib(worker);
    let threads = proc_usage::thread_cpu_seconds(worker);
    // Every record acknowledged: nothing more will be sent, so the counts
    // below are final (a late resend would show as a duplicate or 409).
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.delivered == lines && acked(&sh) < lines && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = es.with(|c| c.delivery(PREFIX, lines));
    let counters = sh.counters();
    let restarted = sh.worker_pid() != worker;
    sh.stop();
    let mut f = finish(peer, &es, t0, cpu, rss, d);
    f.threads = threads;
    let ok = f.delivery.delivered == lines
        && f.delivery.duplicates == 0
        && f.delivery.unexpected == 0
        && f.docs == lines
        && !restarted;
    assert!(
        ok,
        "{}: not every line exactly once: {:?}, {} documents stored, {} id conflicts, \
         worker restarted: {restarted}; counters {counters}",
        peer.label(),
        f.delivery,
        f.docs,
        f.id_conflicts
    );
    f
}

/// `perf record` of our shipper's processes while it works, when
/// `REIN_PEER_PERF=1` (and perf is installed): the top symbols are printed.
struct Profile {
    child: std::process::Child,
    data: std::path::PathBuf,
}

impl Profile {
    fn start(pids: &[i32], dir: &Path) -> Option<Profile> {
        if std::env::var("REIN_PEER_PERF").ok().as_deref() != Some("1") {
            return None;
        }
        let perf = common::find_bin("REIN_PERF", "perf")?;
        let data = dir.join("perf.data");
        let list: Vec<String> = pids.iter().map(i32::to_string).collect();
        let child = Command::new(perf)
            .args(["record", "-F", "499", "-g", "-o"])
            .arg(&data)
            .args(["-p", &list.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(Profile { child, data })
    }

    fn report(mut self, label: &str) {
        // SIGINT: perf writes its data and exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        // REIN_PEER_PERF_DATA=<dir>: keep the profile for `perf report -i`.
        if let Some(keep) = std::env::var_os("REIN_PEER_PERF_DATA") {
            let to = Path::new(&keep).join(format!(
                "perf-{}.data",
                label.replace([' ', '(', ')', '=', ','], "")
            ));
            let _ = std::fs::copy(&self.data, to);
        }
        let out = Command::new(common::find_bin("REIN_PERF", "perf").unwrap())
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--percent-limit",
                "0.7",
                "-i",
            ])
            .arg(&self.data)
            .output();
        if let Ok(o) = out {
            println!("perf profile of {label} (self time):");
            for l in String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(40)
            {
                println!("  {l}");
            }
        }
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Records the shipper's disk buffers acknowledged (from its counters file).
fn acked(sh: &Shipper) -> u64 {
    sh.counters()["buffers"]
        .as_object()
        .map(|b| b.values().filter_map(|v| v["acked_records"].as_u64()).sum())
        .unwrap_or(0)
}

/// rsyslogd following a file the writer appends `lines` to.
fn run_rsyslog(dir: &Path, lines: u64, stall: Duration, t: &Tuning) -> Figures {
    let es = BulkCounter::start();
    let mut rs = Rsyslog::start(dir, es.addr.port(), t);
    // A warm-up line: rsyslogd is following the file and shipping.
    std::fs::write(&rs.input, b"warm seq=0 up\n").unwrap();
    let err = dir.join("rsyslogd.err");
    wait_lines(
        &es,
        "warm",
        1,
        Duration::from_secs(30),
        "rsyslogd shipped nothing",
    );
    let cpu0 = proc_usage::cpu_seconds(rs.pid());
    let out = std::fs::OpenOptions::new()
        .append(true)
        .open(&rs.input)
        .unwrap();
    let t0 = Instant::now();
    write_lines(Stdio::from(out), lines);
    let d = wait_delivered(&es, lines, stall);
    let cpu = proc_usage::cpu_seconds(rs.pid()) - cpu0;
    let rss = proc_usage::peak_rss_kib(rs.pid());
    rs.stop();
    let mut f = finish(Peer::Rsyslog, &es, t0, cpu, rss, d);
    f.docs -= 1; // the warm-up line
    if f.delivery.delivered < lines {
        eprintln!(
            "rsyslogd delivered {} of {lines} lines; its stderr: {}",
            f.delivery.delivered,
            std::fs::read_to_string(err).unwrap_or_default()
        );
    }
    f
}

fn row(f: &Figures) -> String {
    format!(
        "{:<40} {:>9.0} {:>7.2} {:>8.2} {:>7.1} {:>9} {:>5} {:>7} {:>5} {:>6} {:>8.1}",
        f.peer.label(),
        f.lines_per_s(),
        f.cpu,
        f.cpu_per_gb(),
        f.peak_rss_kib as f64 / 1024.0,
        f.docs,
        f.delivery.duplicates,
        f.delivery.missing,
        f.id_conflicts,
        f.requests,
        f.wire_bytes as f64 / 1e6,
    )
}

const HEADER: &str = "shipper                                    lines/s   CPU s CPU s/GB RSS MiB      docs  dups missing   409 reqs  wire MB";

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

#[test]
#[ignore = "benchmark"]
fn cpu_per_gb_vs_rsyslog() {
    if let Some(why) = rsyslog::missing() {
        common::skip("cpu_per_gb_vs_rsyslog", &why);
        return;
    }
    let lines = env_u64("REIN_PEER_LINES", 1_000_000);
    let rounds = env_u64("REIN_PEER_ROUNDS", 1).max(1);
    let stall = Duration::from_secs(env_u64("REIN_PEER_STALL_SECS", 60));
    let tuning = Tuning {
        workers: env_u64("REIN_PEER_RSYSLOG_WORKERS", 1) as u32,
        batch: env_u64("REIN_PEER_RSYSLOG_BATCH", 2000) as u32,
        ..Tuning::default()
    };
    let only = std::env::var("REIN_PEER_ONLY").unwrap_or_default();
    let peers: Vec<Peer> = [Peer::Rein, Peer::ReinPlain, Peer::Rsyslog]
        .into_iter()
        .filter(|p| only.is_empty() || only.split(',').any(|o| o == p.key()))
        .collect();
    println!(
        "{lines} lines of {LINE} bytes ({:.0} MB) per shipper, {rounds} round(s); rsyslog: {tuning:?}",
        (lines * LINE) as f64 / 1e6
    );
    let mut all: Vec<Figures> = Vec::new();
    for round in 0..rounds {
        println!("round {}:\n{HEADER}", round + 1);
        // Alternate the order so neither always runs on a warmer page cache.
        let mut order = peers.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for p in order {
            let d = tempfile::tempdir().unwrap();
            let f = match p {
                Peer::Rsyslog => run_rsyslog(d.path(), lines, stall, &tuning),
                _ => run_rein(p, d.path(), lines, stall),
            };
            println!("{}", row(&f));
            all.push(f);
        }
    }
    println!("\nsummary over {rounds} round(s) (min-max):");
    for p in [Peer::Rein, Peer::ReinPlain] {
        let Some(f) = all.iter().rfind(|f| f.peer == p) else {
            continue;
        };
        let total: f64 = f.threads.iter().map(|t| t.1).sum();
        println!("  {}: the worker's CPU by thread (last round):", p.label());
        for (name, s) in &f.threads {
            println!(
                "    {name:<18} {s:>6.2} s ({:.0} %)",
                100.0 * s / total.max(1e-9)
            );
        }
    }
    for p in &peers {
        let mine: Vec<&Figures> = all.iter().filter(|f| f.peer == *p).collect();
        let (l0, l1) = min_max(&mine.iter().map(|f| f.lines_per_s()).collect::<Vec<_>>());
        let (c0, c1) = min_max(&mine.iter().map(|f| f.cpu_per_gb()).collect::<Vec<_>>());
        let (r0, r1) = min_max(
            &mine
                .iter()
                .map(|f| f.peak_rss_kib as f64 / 1024.0)
                .collect::<Vec<_>>(),
        );
        println!(
            "  {:<40} {l0:.0}-{l1:.0} lines/s, {c0:.1}-{c1:.1} CPU s/GB, peak RSS {r0:.0}-{r1:.0} MiB",
            p.label()
        );
    }
    // rsyslog's CPU per GB over ours, per round (side by side in one round).
    for p in [Peer::Rein, Peer::ReinPlain] {
        let ratios: Vec<f64> = (0..rounds as usize)
            .filter_map(|r| {
                let per_round = peers.len();
                let round = &all[r * per_round..(r + 1) * per_round];
                let ours = round.iter().find(|f| f.peer == p)?;
                let theirs = round.iter().find(|f| f.peer == Peer::Rsyslog)?;
                Some(theirs.cpu_per_gb() / ours.cpu_per_gb())
            })
            .collect();
        if !ratios.is_empty() {
            let (a, b) = min_max(&ratios);
            println!("  rsyslog CPU per GB / {}: {a:.2}-{b:.2}x", p.label());
        }
    }
}

/// Sequence numbers of `peer seq=N` messages: (distinct, extra copies, others).
fn seq_tally(messages: &[String]) -> (usize, usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let (mut dups, mut other) = (0, 0);
    for m in messages {
        match m
            .strip_prefix("peer seq=")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) if seen.insert(n) => {}
            Some(_) => dups += 1,
            None => other += 1,
        }
    }
    (seen.len(), dups, other)
}

/// Waits until `index` of `es` holds `want` documents (or `limit` passed).
fn wait_count(es: &common::EsServer, index: &str, want: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let n = es.count(index);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "benchmark"]
fn confirm_osmem() {
    if let Some(why) = rsyslog::missing() {
        common::skip("confirm_osmem", &why);
        return;
    }
    let Some(es) = common::EsServer::start_or_skip("confirm_osmem") else {
        return;
    };
    let lines = env_u64("REIN_PEER_OSMEM_LINES", 3000).min(10_000);
    let limit = Duration::from_secs(60 + lines / 100);

    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(
        d.path(),
        &format!("es_url = http://{}\nes_index = rein-peer\n", es.addr),
    );
    let m = sh.module();
    let io = m
        .prepare(&spec(
            "peer",
            &d.path().join("sandbox"),
            &[("rein.log.sink", "elasticsearch")],
        ))
        .expect("prepare the container");
    write_lines(Stdio::from(io.stdout), lines);
    drop(io.stderr);
    let ours = wait_count(&es, "rein-peer", lines, limit);
    sh.stop();

    let d2 = tempfile::tempdir().unwrap();
    let t = Tuning {
        index: "rsyslog-peer",
        ..Tuning::default()
    };
    let mut rs = Rsyslog::start(d2.path(), es.addr.port(), &t);
    let out = std::fs::OpenOptions::new()
        .append(true)
        .open(&rs.input)
        .unwrap();
    write_lines(Stdio::from(out), lines);
    let theirs = wait_count(&es, "rsyslog-peer", lines, limit);
    rs.stop();

    let (a, b) = (es.messages("rein-peer"), es.messages("rsyslog-peer"));
    let (ta, tb) = (seq_tally(&a), seq_tally(&b));
    println!("osmem-server, {lines} lines of {LINE} bytes each:");
    println!("  shipper                                  docs  distinct lines  dups  other");
    for (label, n, t) in [
        (Peer::Rein.label(), ours, ta),
        (Peer::Rsyslog.label(), theirs, tb),
    ] {
        println!("  {label:<40} {n:>5} {:>15} {:>5} {:>6}", t.0, t.1, t.2);
    }
    assert_eq!(
        (ours, ta),
        (lines, (lines as usize, 0, 0)),
        "our shipper: every line exactly once"
    );
    assert_eq!(
        (theirs, tb),
        (lines, (lines as usize, 0, 0)),
        "rsyslog: every line once"
    );
}
