//! Crash test of the disk buffer: a child process appends and acknowledges
//! records and is killed with SIGKILL mid-stream; the reopened buffer must
//! replay exactly the unacknowledged records, contiguous, none missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rein_logger::wal::{FullPolicy, Wal, WalConfig};

fn cfg(dir: &std::path::Path) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 256 * 1024,
        max_bytes: 1 << 30,
        fsync_interval: Duration::from_millis(50),
        policy: FullPolicy::Pause,
    }
}

fn rec(i: u64) -> Vec<u8> {
    format!("{i:012}|{}", "z".repeat(180)).into_bytes()
}

/// The process `kill_9_mid_stream_loses_nothing` kills: not a test of its
/// own (ignored, so that it never counts as one), run by its parent with
/// `--ignored --exact`.
#[test]
#[ignore = "the child process of kill_9_mid_stream_loses_nothing, run by it"]
fn wal_crash_child() {
    let Some(dir) = std::env::var_os("REIN_WAL_CHILD_DIR") else {
        panic!(
            "wal_crash_child is run by kill_9_mid_stream_loses_nothing (REIN_WAL_CHILD_DIR unset)"
        );
    };
    let w = Arc::new(Wal::open(cfg(dir.as_ref())).unwrap());
    let r = w.clone();
    std::thread::spawn(move || loop {
        let b = r
            .read_batch(500, 1 << 20, Duration::from_millis(20))
            .unwrap();
        if !b.is_empty() {
            let last = String::from_utf8_lossy(&b.get(b.len() - 1)[..12]).to_string();
            let n = last.parse::<u64>().unwrap() + 1;
            println!("acking {n}");
            r.ack(b.end, b.len() as u64).unwrap();
            println!("acked {n}");
        }
    });
    let mut i = 0u64;
    loop {
        for _ in 0..200 {
            w.push(&rec(i));
            i += 1;
        }
        w.commit().unwrap();
        println!("committed {i}");
    }
}

#[test]
fn kill_9_mid_stream_loses_nothing() {
    for round in 0..3 {
        let d = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "wal_crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("REIN_WAL_CHILD_DIR", d.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        // acked <= records really acknowledged <= acking.
        let (mut committed, mut acked, mut acking) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        let kill_after = Duration::from_millis(150 + 100 * round);
        let mut killed = false;
        // Lines already in the pipe after the kill still count: read to EOF.
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                committed = n.parse().unwrap();
            } else if let Some(n) = line.strip_prefix("acking ") {
                acking = n.parse().unwrap();
            } else if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
            }
            if !killed && start.elapsed() > kill_after && committed > 0 && acked > 0 {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                killed = true;
            }
        }
        child.wait().unwrap();
        assert!(
            killed && committed > 0,
            "round {round}: the child did not run (committed {committed}, acked {acked})"
        );
        let mut listing = Vec::new();
        for e in std::fs::read_dir(d.path()).unwrap() {
            let e = e.unwrap();
            listing.push(format!(
                "{:?} {}",
                e.file_name(),
                e.metadata().unwrap().len()
            ));
        }
        listing.sort();
        listing.push(format!(
            "cursor {:?}",
            std::fs::read_to_string(d.path().join("cursor"))
        ));
        let w = Wal::open(cfg(d.path())).unwrap();
        let mut next: Option<u64> = None;
        loop {
            let b = w.read_batch(10_000, 8 << 20, Duration::ZERO).unwrap();
            if b.is_empty() {
                break;
            }
            for r in b.iter() {
                assert_eq!(
                    r,
                    &rec(String::from_utf8_lossy(&r[..12]).parse().unwrap())[..]
                );
                let n: u64 = String::from_utf8_lossy(&r[..12]).parse().unwrap();
                match next {
                    None => assert!(
                        (acked..=acking).contains(&n),
                        "replay starts at {n}, but between {acked} and {acking} were acknowledged"
                    ),
                    Some(x) => assert_eq!(n, x, "gap or duplicate in the replay"),
                }
                next = Some(n + 1);
            }
            w.ack(b.end, b.len() as u64).unwrap();
        }
        // Nothing replayed: everything committed had been acknowledged.
        let end = next.unwrap_or(acking);
        if end < committed {
            for e in std::fs::read_dir(d.path()).unwrap() {
                let e = e.unwrap();
                eprintln!("{:?} {}", e.file_name(), e.metadata().unwrap().len());
            }
            eprintln!(
                "cursor {:?} corrupt {:?}",
                std::fs::read_to_string(d.path().join("cursor")),
                w.stats.corrupt_records
            );
            eprintln!("before replay: {listing:?}");
        }
        assert!(
            end >= committed,
            "round {round}: replay ended at {end}, {committed} were committed"
        );
        eprintln!("round {round}: committed {committed}, acked {acked}, replayed up to {end}");
    }
}
