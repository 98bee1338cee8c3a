//! Tests of the whole buffer through its public API (the fault-injection
//! ones in `faults`).

mod concurrency;
mod faults;
mod meta;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::format::{frame_header, seg_path, HDR};
use super::*;

pub(super) fn cfg(dir: &Path, max: u64, policy: FullPolicy) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1024,
        max_bytes: max,
        fsync_interval: Duration::from_millis(10),
        policy,
    }
}

pub(super) fn rec(i: u32) -> Vec<u8> {
    format!("record-{i:06}-{}", "p".repeat(40)).into_bytes()
}

pub(super) fn drain(w: &Wal) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    loop {
        let b = w.read_batch(7, 1 << 20, Duration::ZERO).unwrap();
        if b.is_empty() {
            return all;
        }
        all.extend(b.iter().map(<[u8]>::to_vec));
        w.ack(b.end, b.len() as u64).unwrap();
    }
}

/// A buffer reopened in `dir` ships records `0..n`, none corrupt.
pub(super) fn reopened_ships(dir: &Path, n: u32) {
    let w = Wal::open(cfg(dir, 1 << 20, FullPolicy::Pause)).unwrap();
    assert_eq!(drain(&w), (0..n).map(rec).collect::<Vec<_>>());
    assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
}

pub(super) fn seg_lens(d: &Path) -> u64 {
    fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

pub(super) fn frames(n: u32) -> u64 {
    (0..n).map(|i| (HDR + rec(i).len()) as u64).sum()
}

pub(super) fn segments(d: &Path) -> usize {
    fs::read_dir(d)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wal")
        })
        .count()
}

#[test]
fn append_read_ack_and_replay() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    for i in 0..100 {
        w.push(&rec(i));
    }
    w.commit().unwrap();
    // Read 10 records, acknowledge them, then "crash" (drop) and reopen.
    let b = w.read_batch(10, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(b.len(), 10);
    assert_eq!(b.get(0), &rec(0)[..]);
    w.ack(b.end, 10).unwrap();
    let b2 = w.read_batch(5, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(b2.get(0), &rec(10)[..]);
    drop(w);
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    let got = drain(&w);
    // Unacknowledged records are replayed (10..100), acknowledged ones are not.
    assert_eq!(got.len(), 90);
    assert_eq!(got[0], rec(10));
    assert_eq!(got[89], rec(99));
    // Segments were rolled at 1 KiB and deleted once acknowledged.
    let segs = segments(d.path());
    assert!(segs <= 2, "{segs} segments left");
}

#[test]
fn framed_batches_read_back_like_single_pushes() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    let mut batch = Vec::new();
    for i in 0..30 {
        Wal::frame_into(&mut batch, |b| b.extend_from_slice(&rec(i)));
    }
    w.push_framed(&batch, 30);
    w.push(&rec(30));
    w.commit().unwrap();
    assert_eq!(w.stats.appended_records.load(Ordering::Relaxed), 31);
    drop(w);
    // After a reopen the frames' checksums are verified: all 31 come back.
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    let got = drain(&w);
    assert_eq!(got, (0..31).map(rec).collect::<Vec<_>>());
    assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 0);
}

#[test]
fn torn_tail_is_cut_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    for i in 0..5 {
        w.push(&rec(i));
    }
    w.commit().unwrap();
    drop(w);
    // Simulate a crash in the middle of a write: half a frame at the end.
    let seg = seg_path(d.path(), 1);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    let r = rec(5);
    f.write_all(&frame_header(&r)).unwrap();
    f.write_all(&r[..10]).unwrap();
    drop(f);
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 1);
    w.push(&rec(6));
    w.commit().unwrap();
    let got = drain(&w);
    assert_eq!(got, vec![rec(0), rec(1), rec(2), rec(3), rec(4), rec(6)]);
}

/// Writes records 0..40 (one closed segment), changes the segment with
/// `edit` (given the bytes and the length of a frame), and reads back all
/// that a reopened buffer ships.
fn ship_with_corrupt_segment(edit: impl FnOnce(&mut [u8], usize)) -> (Vec<Vec<u8>>, u64) {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    for i in 0..40 {
        w.push(&rec(i));
    }
    w.commit().unwrap();
    drop(w);
    let seg = seg_path(d.path(), 1);
    let mut data = fs::read(&seg).unwrap();
    edit(&mut data, HDR + rec(0).len());
    fs::write(&seg, &data).unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    let got = drain(&w);
    (got, w.stats.corrupt_records.load(Ordering::Relaxed))
}

#[test]
fn bad_checksum_in_closed_segment_is_skipped_and_counted() {
    // Flip a byte inside the 3rd record of the first segment.
    let (got, corrupt) = ship_with_corrupt_segment(|data, frame| data[2 * frame + HDR + 3] ^= 0xff);
    assert_eq!(got.len(), 39);
    assert!(!got.contains(&rec(2)));
    assert_eq!(corrupt, 1);
}

#[test]
fn a_frame_running_past_a_closed_segments_end_is_skipped_and_counted() {
    // The 3rd record claims more than is left of its segment: the rest is skipped.
    let (got, corrupt) = ship_with_corrupt_segment(|data, frame| {
        data[2 * frame..2 * frame + 4].copy_from_slice(&5000u32.to_le_bytes());
    });
    assert_eq!(got, [rec(0), rec(1)]);
    assert_eq!(corrupt, 1);
}

#[test]
fn pause_policy_reports_full() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 2048, FullPolicy::Pause)).unwrap();
    let mut i = 0;
    while !w.is_full() {
        w.push(&rec(i));
        w.commit().unwrap();
        i += 1;
    }
    assert!(i > 10);
    assert!(w.bytes() <= 2048 + 70);
    // Shipping frees space again.
    let got = drain(&w);
    assert_eq!(got.len(), i as usize);
    assert!(!w.is_full());
    assert_eq!(w.stats.dropped_records.load(Ordering::Relaxed), 0);
}

#[test]
fn drop_oldest_counts_every_lost_record() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 4096, FullPolicy::DropOldest)).unwrap();
    let n = 1000u32;
    for i in 0..n {
        w.push(&rec(i));
        w.commit().unwrap();
    }
    assert!(w.bytes() <= 4096);
    let got = drain(&w);
    let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
    assert!(dropped > 0);
    // Nothing is lost silently: shipped + counted as dropped = appended.
    assert_eq!(got.len() as u64 + dropped, u64::from(n));
    // What is left is the newest, in order.
    assert_eq!(*got.last().unwrap(), rec(n - 1));
    let first = String::from_utf8(got[0].clone()).unwrap();
    assert_eq!(
        first,
        String::from_utf8(rec(u32::try_from(dropped).unwrap())).unwrap()
    );
}

#[test]
fn drop_oldest_while_a_batch_is_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 4096, FullPolicy::DropOldest)).unwrap();
    for i in 0..30 {
        w.push(&rec(i));
    }
    w.commit().unwrap();
    let inflight = w.read_batch(5, 1 << 20, Duration::ZERO).unwrap();
    for i in 30..300 {
        w.push(&rec(i));
        w.commit().unwrap();
    }
    // The in-flight batch is still acknowledged (it was shipped).
    w.ack(inflight.end, 5).unwrap();
    let got = drain(&w);
    let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
    assert_eq!(5 + got.len() as u64 + dropped, 300);
}

#[test]
fn zeroed_tail_is_cut_not_read_as_records() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    for i in 0..3 {
        w.push(&rec(i));
    }
    w.commit().unwrap();
    drop(w);
    // What a file system can leave of writes it never wrote back: zeros.
    let seg = seg_path(d.path(), 1);
    let f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.set_len(frames(3) + 4096).unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), frames(3));
    assert_eq!(w.stats.corrupt_records.load(Ordering::Relaxed), 1);
    assert_eq!(drain(&w), (0..3).map(rec).collect::<Vec<_>>());
}

#[test]
fn failed_cursor_save_deletes_no_segment_and_a_restart_replays() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    for i in 0..60 {
        w.push(&rec(i));
        w.commit().unwrap();
    }
    let segs = || segments(d.path());
    let before = segs();
    assert!(before > 2);
    // The cursor cannot be saved (a directory where its temporary file goes).
    fs::create_dir(d.path().join("cursor.tmp")).unwrap();
    let b = w.read_batch(50, 1 << 20, Duration::ZERO).unwrap();
    assert!(w.ack(b.end, b.len() as u64).is_err());
    assert_eq!(
        segs(),
        before,
        "a segment went before the cursor passing it was saved"
    );
    drop(w);
    fs::remove_dir(d.path().join("cursor.tmp")).unwrap();
    // Shipped records come again (at least once), none is missing.
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    assert_eq!(drain(&w), (0..60).map(rec).collect::<Vec<_>>());
}

#[test]
fn a_segment_no_sink_reached_is_counted_as_dropped_without_reading_it_back() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 2048, FullPolicy::DropOldest)).unwrap();
    let mut i = 0;
    while segments(d.path()) < 2 {
        w.push(&rec(i));
        w.commit().unwrap();
        i += 1;
    }
    let first = seg_path(d.path(), 1);
    let bytes = fs::read(&first).unwrap();
    let in_first = Wal::frames(&bytes).count() as u64;
    assert!(in_first > 0);
    // Read back, the segment would now count no record at all.
    fs::write(&first, vec![0u8; bytes.len()]).unwrap();
    // Up to the first drop only (the next segments hold as many records).
    while first.exists() {
        w.push(&rec(i));
        w.commit().unwrap();
        i += 1;
        assert!(i < 1000, "nothing was dropped");
    }
    assert_eq!(
        w.stats.dropped_records.load(Ordering::Relaxed),
        in_first,
        "the records the ledger counted when they were written"
    );
}

#[test]
fn writeback_starts_every_step_without_a_sync() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 1 << 30, FullPolicy::Pause);
    c.segment_bytes = 64 << 20;
    c.fsync_interval = Duration::from_secs(3600);
    let w = Wal::open(c).unwrap();
    let step = super::durability::WRITEBACK_STEP;
    let big = vec![b'y'; 256 << 10];
    let mut written = 0;
    while written < 3 * step {
        w.push(&big);
        w.commit().unwrap();
        written += big.len() as u64;
    }
    let wr = w.writer();
    assert!(wr.synced < step, "nothing asked for a sync yet");
    assert!(
        wr.flushing >= 2 * step && wr.flushing <= wr.len,
        "writeback started up to {} of {}",
        wr.flushing,
        wr.len
    );
}
