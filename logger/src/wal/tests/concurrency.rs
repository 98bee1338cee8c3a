//! The reader, the writer and the cursor file apart: a read holds no
//! writer's lock, neither waits for a cursor save, and a producer and a sink
//! running at once account for every record.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::super::*;
use super::{cfg, rec};

#[test]
fn a_read_does_not_wait_for_the_writers_lock() {
    let d = tempfile::tempdir().unwrap();
    let w = Arc::new(Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap());
    for i in 0..40 {
        w.push(&rec(i));
    }
    w.commit().unwrap();
    // The writer's lock held as by a long write or a full file system.
    let held = w.writer();
    let (tx, rx) = mpsc::channel();
    let r = w.clone();
    let t = thread::spawn(move || {
        let b = r.read_batch(100, 1 << 20, Duration::ZERO).unwrap();
        r.ack(b.end, b.len() as u64).unwrap();
        tx.send(b.len()).unwrap();
    });
    let got = rx.recv_timeout(Duration::from_secs(30));
    drop(held);
    t.join().unwrap();
    assert_eq!(got, Ok(40), "a read or an ack waited for the writer");
}

#[test]
fn a_commit_and_a_read_do_not_wait_for_a_cursor_save() {
    let d = tempfile::tempdir().unwrap();
    let w = Arc::new(Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap());
    // The cursor file's lock held as by a save on a slow file system.
    let held = w.saved.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    let r = w.clone();
    let t = thread::spawn(move || {
        for i in 0..5 {
            r.push(&rec(i));
        }
        r.commit().unwrap();
        let b = r.read_batch(100, 1 << 20, Duration::ZERO).unwrap();
        tx.send(b.len()).unwrap();
    });
    let got = rx.recv_timeout(Duration::from_secs(30));
    drop(held);
    t.join().unwrap();
    assert_eq!(got, Ok(5), "a commit or a read waited for the cursor file");
}

/// One producer committing record by record while one sink reads and
/// acknowledges: every record is shipped in order or counted as dropped.
fn producer_and_sink(policy: FullPolicy, max: u64) {
    let d = tempfile::tempdir().unwrap();
    let w = Arc::new(Wal::open(cfg(d.path(), max, policy)).unwrap());
    let n = 3000u32;
    let p = w.clone();
    let producer = thread::spawn(move || {
        for i in 0..n {
            let deadline = Instant::now() + Duration::from_secs(60);
            while p.is_full() {
                assert!(Instant::now() < deadline, "the sink never made room");
                thread::yield_now();
            }
            p.push(&rec(i));
            p.commit().unwrap();
        }
        p.sync().unwrap();
    });
    let mut shipped: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b = w
            .read_batch(13, 1 << 20, Duration::from_millis(20))
            .unwrap();
        for r in b.iter() {
            let s = std::str::from_utf8(r).unwrap();
            shipped.push(s[7..13].parse().unwrap());
        }
        w.ack(b.end, b.len() as u64).unwrap();
        let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
        if shipped.len() as u64 + dropped == u64::from(n) && producer.is_finished() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shipped {} dropped {dropped} appended {} corrupt {}",
            shipped.len(),
            w.stats.appended_records.load(Ordering::Relaxed),
            w.stats.corrupt_records.load(Ordering::Relaxed)
        );
    }
    producer.join().unwrap();
    assert!(
        shipped.windows(2).all(|p| p[0] < p[1]),
        "in order, once each"
    );
    assert_eq!(shipped.last(), Some(&(n - 1)));
    assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
    assert!(w
        .read_batch(10, 1 << 20, Duration::ZERO)
        .unwrap()
        .is_empty());
    if policy == FullPolicy::Pause {
        assert_eq!(shipped.len() as u64, u64::from(n));
    }
}

#[test]
fn a_producer_and_a_sink_at_once_ship_every_record_once_in_order() {
    producer_and_sink(FullPolicy::Pause, 8 << 10);
}

#[test]
fn a_producer_and_a_sink_at_once_under_drop_oldest_count_every_lost_record() {
    producer_and_sink(FullPolicy::DropOldest, 4096);
}

#[test]
fn a_drop_saving_the_cursor_holds_back_no_other_producer() {
    let d = tempfile::tempdir().unwrap();
    let w = Arc::new(Wal::open(cfg(d.path(), 2048, FullPolicy::DropOldest)).unwrap());
    let mut i = 0;
    while super::segments(d.path()) < 2 {
        w.push(&rec(i));
        w.commit().unwrap();
        i += 1;
    }
    // The cursor file's lock held as by a save on a slow file system: the
    // first drop (it moves the cursor off the dropped segment) waits in it.
    let held = w.saved.lock().unwrap();
    let a = {
        let w = w.clone();
        thread::spawn(move || {
            while w.ledger().drops == 0 {
                w.push(&rec(i));
                w.commit().unwrap();
                i += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.ledger().drops == 0 {
        assert!(Instant::now() < deadline, "nothing was dropped");
        thread::yield_now();
    }
    let (tx, rx) = mpsc::channel();
    let b = {
        let w = w.clone();
        thread::spawn(move || {
            w.push(b"another producer");
            tx.send(w.commit().unwrap()).unwrap();
        })
    };
    let got = rx.recv_timeout(Duration::from_secs(30));
    drop(held);
    a.join().unwrap();
    b.join().unwrap();
    assert_eq!(got, Ok(1), "a commit waited for another's cursor save");
    assert!(
        !seg_path_exists(d.path(), 1),
        "the dropped segment is deleted"
    );
}

fn seg_path_exists(dir: &std::path::Path, seq: u64) -> bool {
    super::super::format::seg_path(dir, seq).exists()
}
