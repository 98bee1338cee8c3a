//! Benchmark (ignored by default; run in release) of what the disk buffer
//! receives per input byte, and the parse + encode + buffer rate on one
//! core, with records framed whole (version 1, every record carrying its
//! container's constant parts) and compact (version 2, the parts once per
//! segment in a meta frame), alternated round by round in one run; then the
//! sink side's read + decode rate of each.
//!
//! ```text
//! cargo test --release -p rein-logger --test bench_buffer -- --ignored --nocapture
//! ```
//!
//! `REIN_BENCH_LINES` (default 400000) lines of 200 bytes per round,
//! `REIN_BENCH_ROUNDS` (default 5) rounds.

#![allow(clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use rein_logger::record::{EncodeOptions, SourceMeta, Stream, StreamPipeline};
use rein_logger::wal::{FullPolicy, Wal, WalConfig};
use rein_logger::walrec::{frame_encoded, Expander, WalRecord};

fn input(lines: usize, json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines * 201);
    for i in 0..lines {
        let mut l = if json {
            format!(
                "{{\"time\":\"2024-05-01T12:00:{:02}.{:03}Z\",\"level\":\"info\",\"msg\":\"request served\",\"path\":\"/api/v1/items/{i}\",\"pad\":\"",
                i % 60,
                i % 1000
            )
        } else {
            format!(
                "2024-05-01T12:00:{:02}.{:03}Z INFO  [http-worker-{}] GET /api/v1/items/{i} status=200 ",
                i % 60,
                i % 1000,
                i % 16
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

/// A container as the shipper sees a typical one (ids, labels, sandbox).
fn meta() -> SourceMeta {
    SourceMeta {
        container_chain: vec!["4b1c6a2e-7f1d-4c55-9f0e-2c9d0c3a1b2f".into()],
        agent_id: Some("a3f1c2d4-5e6f-4a1b-8c9d-0e1f2a3b4c5d-S1".into()),
        framework_id: Some("b7e2d1c0-1234-4abc-9def-0123456789ab-0001".into()),
        executor_id: Some("web.4b1c6a2e-7f1d-11ee-9f0e-2c9d0c3a1b2f".into()),
        task_id: Some("web.4b1c6a2e-7f1d-11ee-9f0e-2c9d0c3a1b2f".into()),
        task_name: Some("web".into()),
        executor_labels: vec![("team".into(), "payments".into())],
        task_labels: vec![
            ("tier".into(), "frontend".into()),
            ("version".into(), "2024.05.1".into()),
        ],
        sandbox: "/var/lib/mesos/slaves/a3f1c2d4-5e6f-4a1b-8c9d-0e1f2a3b4c5d-S1/frameworks/b7e2d1c0-1234-4abc-9def-0123456789ab-0001/executors/web.4b1c6a2e-7f1d-11ee-9f0e-2c9d0c3a1b2f/runs/latest".into(),
    }
}

fn wal(dir: &std::path::Path) -> Wal {
    Wal::open(WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 64 << 20,
        max_bytes: 64 << 30,
        fsync_interval: Duration::from_millis(200),
        policy: FullPolicy::Pause,
    })
    .unwrap()
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Parses, encodes, frames and buffers `data` (64 KiB reads, one push and
/// commit per read, as the parser does); returns (seconds, buffer bytes).
fn produce(dir: &std::path::Path, data: &[u8], compact: bool) -> (f64, u64) {
    let w = wal(dir);
    let opts = EncodeOptions {
        host_name: Some("agent-1.example.com".into()),
        ..Default::default()
    };
    let mut p = StreamPipeline::new(&meta(), Stream::Stdout, &opts, 16 * 1024, None);
    let cid = b"4b1c6a2e-7f1d-4c55-9f0e-2c9d0c3a1b2f";
    let mut framed = Vec::new();
    let start = Instant::now();
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + 64 * 1024).min(data.len());
        let mut n = 0;
        let used = p.feed(
            &data[pos..end],
            pos as u64,
            false,
            Instant::now(),
            1_714_564_800_000,
            &mut |e| {
                n += 1;
                if compact {
                    frame_encoded(&mut framed, Stream::Stdout, cid, b"", &e);
                } else {
                    Wal::frame_into(&mut framed, |out| {
                        WalRecord {
                            stream: Stream::Stdout,
                            ts_ms: e.ts_ms,
                            id: e.id,
                            container: cid,
                            route: b"",
                            doc: e.doc,
                        }
                        .encode_into(out);
                    });
                }
            },
        );
        assert!(used > 0);
        pos += used;
        if compact {
            w.push_framed_vec(&mut framed, n);
        } else {
            w.push_framed(&framed, n);
            framed.clear();
        }
        w.commit().unwrap();
    }
    w.sync().unwrap();
    (start.elapsed().as_secs_f64(), disk_bytes(dir))
}

/// Reads the buffer in `dir` back as a sink does (batches, whole records);
/// returns (seconds, records, document bytes).
fn consume(dir: &std::path::Path) -> (f64, u64, u64) {
    let w = wal(dir);
    let start = Instant::now();
    let (mut n, mut bytes) = (0, 0);
    let mut x = Expander::default();
    loop {
        let b = w.read_batch(10_000, 8 << 20, Duration::ZERO).unwrap();
        if b.is_empty() {
            break;
        }
        for r in x.expand(&b) {
            n += 1;
            bytes += r.doc.len() as u64;
        }
        w.ack(b.end, b.len() as u64).unwrap();
    }
    (start.elapsed().as_secs_f64(), n, bytes)
}

fn span(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}-{max:.0}")
}

#[test]
#[ignore]
fn buffer_bytes_and_rate_whole_vs_compact() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (lines, rounds) = (
        env("REIN_BENCH_LINES", 400_000),
        env("REIN_BENCH_ROUNDS", 5),
    );
    for json in [false, true] {
        let data = input(lines, json);
        let mb = data.len() as f64 / 1e6;
        let mut rates = [Vec::new(), Vec::new()];
        let mut reads = [Vec::new(), Vec::new()];
        let mut per_byte = [0.0; 2];
        let mut docs = [0; 2];
        for _ in 0..rounds {
            for (k, compact) in [false, true].into_iter().enumerate() {
                let d = tempfile::tempdir().unwrap();
                let (secs, disk) = produce(d.path(), &data, compact);
                rates[k].push(mb / secs);
                per_byte[k] = disk as f64 / data.len() as f64;
                let (rsecs, n, bytes) = consume(d.path());
                assert_eq!(n, lines as u64);
                reads[k].push(mb / rsecs);
                docs[k] = bytes;
            }
        }
        assert_eq!(docs[0], docs[1], "the same documents come back");
        let kind = if json { "JSON" } else { "plain" };
        for (k, name) in ["whole (v1)", "compact (v2)"].iter().enumerate() {
            println!(
                "{lines} {kind} lines of 200 B, {name:<13}: disk buffer {:.2} B per input byte; \
                 parse+encode+buffer {} MB/s of input on one core; read+decode {} MB/s ({rounds} rounds, min-max)",
                per_byte[k],
                span(&rates[k]),
                span(&reads[k]),
            );
        }
    }
}
