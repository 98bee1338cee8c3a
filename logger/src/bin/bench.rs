//! `rein-log-bench`: throughput of the parse + enrich + encode pipeline on one
//! core, for 200-byte lines. Prints lines/s/core for plain-text lines and for
//! JSON lines, and with `--file` for a log file in a sandbox followed by the
//! shipper's file source (`rein.log.files`: reads, rotation checks, encoding).
//! With `--base64`, the lines are encoded in `rein.log.binary=base64` mode,
//! and lines that are not UTF-8 are measured too.
//! Per core means per second of this thread's CPU time (user + system), so
//! that a loaded machine slows the run down without skewing the figure; the
//! wall time is printed beside it. `--rounds N` runs plain and JSON lines N
//! times alternately and ends with each kind's min-max.
//! Usage: `rein-log-bench [LINES] [--json-only|--plain-only|--file] [--base64] [--rounds N]`.

use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};

use rein_logger::record::{BinaryMode, EncodeOptions, SourceMeta, Stream, StreamPipeline};

/// Every 50th byte of each line made `0xff` (never UTF-8).
fn make_binary(mut input: Vec<u8>) -> Vec<u8> {
    for (i, b) in input.iter_mut().enumerate() {
        if i % 50 == 7 && *b != b'\n' {
            *b = 0xff;
        }
    }
    input
}

fn make_input(lines: usize, json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines * 201);
    for i in 0..lines {
        let mut l = if json {
            format!(
                "{{\"time\":\"2024-05-01T12:00:{:02}.{:03}Z\",\"level\":\"info\",\"msg\":\"request served\",\"path\":\"/api/v1/items/{i}\",\"status\":200,\"user\":\"u{}\",\"pad\":\"",
                i % 60,
                i % 1000,
                i % 977
            )
        } else {
            format!(
                "2024-05-01T12:00:{:02}.{:03}Z INFO  [http-worker-{}] GET /api/v1/items/{i} status=200 user=u{} took={}ms ",
                i % 60,
                i % 1000,
                i % 16,
                i % 977,
                i % 300
            )
        };
        let close = if json { "\"}" } else { "" };
        while l.len() + close.len() < 200 {
            l.push('x');
        }
        l.push_str(close);
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

fn meta() -> SourceMeta {
    SourceMeta {
        container_chain: vec!["4b1c6a2e-7f1d-4c55-9f0e-2c9d0c3a1b2f".into()],
        agent_id: Some("a3f1c2d4-0000-4000-8000-00000000S1".into()),
        framework_id: Some("fw-0001".into()),
        executor_id: Some("web.executor".into()),
        task_id: Some("web.4b1c6a2e".into()),
        task_name: Some("web".into()),
        executor_labels: vec![("team".into(), "payments".into())],
        task_labels: vec![("tier".into(), "frontend".into())],
        sandbox: "/var/lib/mesos/slaves/S1/frameworks/fw/executors/web/runs/latest".into(),
    }
}

/// CPU time (user + system) this thread has used.
fn thread_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(tv.tv_sec()).unwrap_or(0),
            u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    t(u.user_time()) + t(u.system_time())
}

/// Encodes `input`, prints its figures and returns its lines/s/core.
fn run(input: &[u8], label: &str, mode: BinaryMode) -> f64 {
    let meta = meta();
    let opts = EncodeOptions {
        host_name: Some("agent-1".into()),
        binary: mode,
        ..Default::default()
    };
    let mut p = StreamPipeline::new(&meta, Stream::Stdout, &opts, 16 * 1024, None);
    let mut wal_like: Vec<u8> = Vec::with_capacity(8 << 20);
    let mut records = 0u64;
    let mut out_bytes = 0u64;
    let now = Instant::now();
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let mut pos = 0usize;
    while pos < input.len() {
        // 64 KiB reads, as from the spool file; a partial last line is read again next time.
        let end = (pos + 64 * 1024).min(input.len());
        let used = p.feed(
            &input[pos..end],
            pos as u64,
            false,
            now,
            1_714_564_800_000,
            &mut |e| {
                records += 1;
                // What the shipper appends to the disk buffer per record.
                wal_like.extend_from_slice(e.id);
                wal_like.extend_from_slice(e.doc);
            },
        );
        assert!(used > 0, "no progress");
        pos += used;
        if wal_like.len() > (4 << 20) {
            out_bytes += wal_like.len() as u64;
            wal_like.clear();
        }
    }
    out_bytes += wal_like.len() as u64;
    let wall = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - cpu_start).as_secs_f64().max(1e-9);
    let rate = records as f64 / cpu;
    println!(
        "{label}: {records} records of 200 bytes in {cpu:.3} s CPU ({wall:.3} s wall) = {rate:.0} lines/s/core ({:.0} MB/s/core in, {:.0} B/doc out)",
        input.len() as f64 / cpu / 1e6,
        out_bytes as f64 / records.max(1) as f64
    );
    rate
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let flag = |f: &str| args.iter().skip(2).any(|a| a == f);
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1);
    if flag("--file") {
        run_file(&make_input(n, false));
        return;
    }
    let (mode, suffix) = if flag("--base64") {
        (BinaryMode::Base64, " (base64 mode)")
    } else {
        (BinaryMode::Text, "")
    };
    let plain = (!flag("--json-only")).then(|| make_input(n, false));
    let binary = plain
        .as_ref()
        .filter(|_| mode == BinaryMode::Base64)
        .map(|p| make_binary(p.clone()));
    let json = (!flag("--plain-only")).then(|| make_input(n, true));
    let mut rates: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |label: String, rate: f64| match rates.iter_mut().find(|r| r.0 == label) {
        Some(r) => r.1.push(rate),
        None => rates.push((label, vec![rate])),
    };
    for _ in 0..rounds {
        if let Some(input) = &plain {
            let label = format!("plain-text lines{suffix}");
            record(label.clone(), run(input, &label, mode));
        }
        if let Some(input) = &binary {
            let label = "non-UTF-8 lines (base64 mode)".to_string();
            record(label.clone(), run(input, &label, mode));
        }
        if let Some(input) = &json {
            let label = format!("JSON lines{suffix}");
            record(label.clone(), run(input, &label, mode));
        }
    }
    if rounds > 1 {
        for (label, r) in &rates {
            let min = r.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.iter().copied().fold(0.0, f64::max);
            println!(
                "{label}, {rounds} rounds: {:.2}-{:.2} M lines/s/core",
                min / 1e6,
                max / 1e6
            );
        }
    }
}

/// The file source on `input` written to `app.log` in a temporary sandbox
/// (page cache: what is measured is the shipper's work, not the disk).
fn run_file(input: &[u8]) {
    use rein_logger::proto::{FileCaps, FileMultiline, FileSpec};
    use rein_logger::sandbox::SandboxDir;
    use rein_logger::shipper::logfiles::{
        records, targets, FileCounters, FileEncoding, FileSources,
    };
    use std::sync::Arc;
    let d = tempfile_dir();
    std::fs::write(d.join("app.log"), input).unwrap();
    let specs = vec![FileSpec {
        tag: "app".into(),
        glob: "*.log".into(),
        multiline: FileMultiline::Off,
        route: None,
        sink: None,
    }];
    let t = targets(&specs, b"", &[], &mut Vec::new());
    let mut fs = FileSources::new(
        specs,
        t,
        FileCaps {
            max_backlog: u64::MAX,
            ..FileCaps::default()
        },
        FileEncoding {
            meta: meta(),
            encode: EncodeOptions {
                host_name: Some("agent-1".into()),
                ..Default::default()
            },
            max_line: 16 * 1024,
            multiline: None,
        },
        Arc::new(SandboxDir::open(&d).unwrap()),
        None,
        Arc::new(FileCounters::default()),
    );
    let mut buf = vec![0u8; 256 * 1024];
    let (mut made, mut out) = (0u64, Vec::with_capacity(8 << 20));
    let start = Instant::now();
    let cpu_start = thread_cpu();
    // One turn of 1 MiB per file, as in the parser, which saves a
    // checkpoint naming a newly found file before reading it.
    loop {
        let busy = fs.round(
            &mut buf,
            1 << 20,
            &mut records(|_, e| {
                made += 1;
                out.extend_from_slice(e.id);
                out.extend_from_slice(e.doc);
                if out.len() > (4 << 20) {
                    out.clear();
                }
            }),
        );
        let held = fs.unsaved_numbers();
        fs.saved(&fs.checkpoint());
        if !busy && !held {
            break;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - cpu_start).as_secs_f64().max(1e-9);
    let _ = std::fs::remove_dir_all(&d);
    println!(
        "log file source: {made} records of 200 bytes in {cpu:.3} s CPU ({wall:.3} s wall) = {:.0} lines/s/core ({:.0} MB/s/core in)",
        made as f64 / cpu,
        input.len() as f64 / cpu / 1e6
    );
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rein-log-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
