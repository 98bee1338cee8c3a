//! `rein-log-loadgen`: a stand-in container for tests and benchmarks. Writes
//! numbered lines to stdout (and every K-th to stderr), optionally paced.
//! Exits 32 if a write fails with EPIPE (the failure the logger must never
//! cause), 1 on any other write error.
//!
//! ```text
//! rein-log-loadgen --lines N [--size 200] [--rate LINES_PER_S] [--stderr-every K] [--prefix P]
//! rein-log-loadgen --seconds S [--size 200] --report FILE   # flat out; writes bytes/s to FILE
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn fail(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        eprintln!("rein-log-loadgen: EPIPE");
        std::process::exit(32);
    }
    eprintln!("rein-log-loadgen: {e}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = opt(&args, "--size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let prefix = opt(&args, "--prefix").unwrap_or_else(|| "line".into());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if let Some(secs) = opt(&args, "--seconds").and_then(|v| v.parse::<f64>().ok()) {
        let mut line = vec![b'x'; size];
        line[size - 1] = b'\n';
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..1000 {
                out.write_all(&line).unwrap_or_else(|e| fail(e));
            }
            bytes += 1000 * size as u64;
        }
        out.flush().unwrap_or_else(|e| fail(e));
        let rate = bytes as f64 / start.elapsed().as_secs_f64();
        if let Some(r) = opt(&args, "--report") {
            let _ = std::fs::write(r, format!("{rate:.0}\n"));
        }
        return;
    }
    let lines: u64 = opt(&args, "--lines")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rate: f64 = opt(&args, "--rate")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let err_every: u64 = opt(&args, "--stderr-every")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut err = std::io::stderr();
    let start = Instant::now();
    let mut line = String::with_capacity(size + 1);
    for i in 0..lines {
        line.clear();
        line.push_str(&format!("{prefix} seq={i} "));
        while line.len() < size.saturating_sub(1) {
            line.push('x');
        }
        line.push('\n');
        if err_every > 0 && i % err_every == err_every - 1 {
            out.flush().unwrap_or_else(|e| fail(e));
            err.write_all(line.as_bytes()).unwrap_or_else(|e| fail(e));
        } else {
            out.write_all(line.as_bytes()).unwrap_or_else(|e| fail(e));
        }
        if rate > 0.0 && i % 50 == 49 {
            out.flush().unwrap_or_else(|e| fail(e));
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    out.flush().unwrap_or_else(|e| fail(e));
}
