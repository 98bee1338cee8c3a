//! Meta frames: each segment holds the metas its records name, before
//! them; the reader learns them wherever it starts; they are never records.

use std::collections::HashSet;

use super::*;
use crate::record::Stream;
use crate::walrec::{CompactRecord, ExpandError, Expander, Meta, WalRecord};

const META_OF: Meta<'static> = Meta {
    id_prefix: b"0011223344556677-o-",
    container: b"root.c",
    route: b"",
    log_head: b"\"log\":{\"file\":{\"path\":\"/a/long/sandbox/path/stdout\"},\"offset\":",
    tail: b",\"stream\":\"stdout\",\"container\":{\"id\":\"c\"},\"labels\":{\"a\":\"b\"}",
};

/// Frames record `i` naming `key` into `buf`.
fn compact(buf: &mut Vec<u8>, key: u64, i: u32) {
    let body = format!("{{\"message\":\"record {i} {}\",}}", "m".repeat(30));
    let suffix = i.to_string();
    Wal::frame_into(buf, |out| {
        CompactRecord {
            stream: Stream::Stdout,
            ts_head: false,
            key,
            ts_ms: i64::from(i),
            id_suffix: suffix.as_bytes(),
            head_at: body.len() - 2,
            tail_at: body.len() - 1,
            body: body.as_bytes(),
        }
        .encode_into(out)
    });
}

/// The whole document of record `i`.
fn doc(i: u32) -> Vec<u8> {
    let mut x = Expander::default();
    let mut buf = Vec::new();
    let key = META_OF.frame_into(&mut buf);
    compact(&mut buf, key, i);
    x.push_frames(&buf).unwrap();
    x.records()[0].doc.to_vec()
}

/// Pushes a run: its meta frame and records `from..to`, then commits.
fn push_run(w: &Wal, from: u32, to: u32) -> u64 {
    let mut buf = Vec::new();
    let key = META_OF.frame_into(&mut buf);
    for i in from..to {
        compact(&mut buf, key, i);
    }
    w.push_framed(&buf, u64::from(to - from));
    w.commit().unwrap();
    key
}

/// Pushes records `from..to` naming `key` without a meta frame (the rest
/// of a run), one commit each.
fn push_rest(w: &Wal, key: u64, from: u32, to: u32) {
    for i in from..to {
        let mut buf = Vec::new();
        compact(&mut buf, key, i);
        w.push_framed_vec(&mut buf, 1);
        assert!(buf.is_empty());
        w.commit().unwrap();
    }
}

/// Reads every record left, acknowledging; returns their (ts, doc).
fn drain_whole(w: &Wal, max: usize) -> Vec<(i64, Vec<u8>)> {
    let mut all = Vec::new();
    let mut x = Expander::default();
    loop {
        let b = w.read_batch(max, 1 << 20, Duration::ZERO).unwrap();
        if b.is_empty() {
            return all;
        }
        all.extend(x.expand(&b).iter().map(|r| (r.ts_ms, r.doc.to_vec())));
        w.ack(b.end, b.len() as u64).unwrap();
    }
}

fn want(range: std::ops::Range<u32>) -> Vec<(i64, Vec<u8>)> {
    range.map(|i| (i64::from(i), doc(i))).collect()
}

/// Per segment file, in order: its frames' first bytes and meta keys.
fn segment_frames(dir: &Path) -> Vec<Vec<(u8, Option<u64>)>> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let data = fs::read(p).unwrap();
            Wal::frames(&data)
                .map(|f| (f[0], format::meta_key(f).or(format::meta_ref(f))))
                .collect()
        })
        .collect()
}

#[test]
fn a_meta_frame_goes_once_per_segment_and_again_in_the_next() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    let key = push_run(&w, 0, 5);
    push_rest(&w, key, 5, 60);
    // A second run of the same container: its meta frame again.
    push_run(&w, 60, 62);
    let segs = segment_frames(d.path());
    assert!(segs.len() >= 4, "{} segments", segs.len());
    for (n, frames) in segs.iter().enumerate() {
        let mut have = HashSet::new();
        for &(tag, k) in frames {
            match tag {
                format::META => {
                    have.insert(k.unwrap());
                }
                format::META_REF => assert!(
                    have.contains(&k.unwrap()),
                    "segment {n}: a record before its meta: {frames:?}"
                ),
                t => panic!("frame {t}"),
            }
        }
        let metas = frames.iter().filter(|f| f.0 == format::META).count();
        // Once per segment, and once per run.
        assert!(metas <= 2, "segment {n}: {frames:?}");
    }
    assert_eq!(w.stats.appended_records.load(Ordering::Relaxed), 62);
    assert_eq!(drain_whole(&w, 7), want(0..62));
    assert_eq!(w.stats.acked_records.load(Ordering::Relaxed), 62);
    assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 0);
}

#[test]
fn a_reader_starting_mid_segment_learns_the_metas_before_it() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 1 << 20, FullPolicy::Pause);
    c.segment_bytes = 1 << 20;
    {
        let w = Wal::open(c.clone()).unwrap();
        let key = push_run(&w, 0, 10);
        push_rest(&w, key, 10, 20);
        let b = w.read_batch(5, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(b.len(), 5);
        w.ack(b.end, 5).unwrap();
        w.sync().unwrap();
    }
    // A restart: the read starts at the cursor, in the middle of the segment.
    let w = Wal::open(c).unwrap();
    assert_eq!(drain_whole(&w, 4), want(5..20));
    assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 0);
}

#[test]
fn version_1_and_version_2_records_mixed_in_one_buffer() {
    let d = tempfile::tempdir().unwrap();
    let v1 = |i: u32| {
        let mut p = Vec::new();
        let id = format!("v1-{i}");
        WalRecord {
            stream: Stream::Stderr,
            ts_ms: i64::from(i),
            id: id.as_bytes(),
            container: b"old",
            route: b"r",
            doc: &doc(i),
        }
        .encode_into(&mut p);
        p
    };
    {
        // What an older shipper left in the buffer.
        let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
        for i in 0..10 {
            w.push(&v1(i));
        }
        w.commit().unwrap();
    }
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    push_run(&w, 10, 20);
    w.push(&v1(20));
    w.commit().unwrap();
    let mut got = Vec::new();
    let mut x = Expander::default();
    loop {
        let b = w.read_batch(6, 1 << 20, Duration::ZERO).unwrap();
        if b.is_empty() {
            break;
        }
        for r in x.expand(&b) {
            got.push((r.ts_ms, r.id.to_vec(), r.container.to_vec(), r.doc.to_vec()));
        }
        w.ack(b.end, b.len() as u64).unwrap();
    }
    assert_eq!(got.len(), 21);
    for (i, (ts, id, cid, d)) in got.iter().enumerate() {
        let i = u32::try_from(i).unwrap();
        assert_eq!(*ts, i64::from(i));
        assert_eq!(*d, doc(i));
        if (10..20).contains(&i) {
            assert_eq!(*id, format!("0011223344556677-o-{i}").into_bytes());
            assert_eq!(cid, b"root.c");
        } else {
            assert_eq!(*id, format!("v1-{i}").into_bytes());
            assert_eq!(cid, b"old");
        }
    }
}

#[test]
fn a_record_without_its_meta_is_counted_once_and_handed_over() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 1 << 20, FullPolicy::Pause)).unwrap();
    push_run(&w, 0, 2);
    // A record naming a meta no frame holds (corruption).
    push_rest(&w, 0xdead, 2, 3);
    push_run(&w, 3, 4);
    for _ in 0..2 {
        // Read twice (not acknowledged): counted once.
        let b = w.read_batch(100, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(b.len(), 4);
        let mut x = Expander::default();
        let mut failed = Vec::new();
        x.push_batch(&b, |i, e| failed.push((i, e)));
        assert_eq!(failed, [(2, ExpandError::MissingMeta(0xdead))]);
        assert_eq!(x.len(), 3);
    }
    assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 1);
}

#[test]
fn meta_frames_are_not_counted_as_dropped_records() {
    let d = tempfile::tempdir().unwrap();
    let w = Wal::open(cfg(d.path(), 3000, FullPolicy::DropOldest)).unwrap();
    let mut key = 0;
    for run in 0..20 {
        key = push_run(&w, run * 5, run * 5 + 5);
    }
    push_rest(&w, key, 100, 110);
    let left = drain_whole(&w, 1000);
    let dropped = w.stats.dropped_records.load(Ordering::Relaxed);
    assert_eq!(dropped + left.len() as u64, 110, "dropped {dropped}");
    assert_eq!(left, want(110 - u32::try_from(left.len()).unwrap()..110));
    assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 0);
}

#[test]
fn a_reader_starting_megabytes_into_a_segment_learns_every_meta_before_it() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 1 << 30, FullPolicy::Pause);
    c.segment_bytes = 64 << 20;
    let other = Meta {
        container: b"root.other",
        ..META_OF
    };
    let (a, b);
    {
        let w = Wal::open(c.clone()).unwrap();
        a = push_run(&w, 0, 10);
        // Past a read window of frames naming `a` ...
        let mut buf = Vec::new();
        for i in 10..30_000 {
            compact(&mut buf, a, i);
        }
        w.push_framed(&buf, 29_990);
        // ... the meta frame of another container.
        let mut buf = Vec::new();
        b = other.frame_into(&mut buf);
        compact(&mut buf, b, 30_000);
        w.push_framed(&buf, 1);
        w.commit().unwrap();
        // Acknowledged up to there.
        loop {
            let batch = w.read_batch(10_000, 64 << 20, Duration::ZERO).unwrap();
            w.ack(batch.end, batch.len() as u64).unwrap();
            if batch.end.off >= w.writer().len {
                break;
            }
        }
        w.sync().unwrap();
    }
    let w = Wal::open(c).unwrap();
    push_rest(&w, b, 30_001, 30_002);
    push_rest(&w, a, 30_002, 30_003);
    let got = drain_whole(&w, 100);
    assert_eq!(got, want(30_001..30_003));
    assert_eq!(w.stats.missing_meta.load(Ordering::Relaxed), 0);
}

#[test]
fn a_batch_byte_bound_counts_records_made_whole() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 1 << 20, FullPolicy::Pause);
    c.segment_bytes = 1 << 20;
    let w = Wal::open(c).unwrap();
    let key = push_run(&w, 0, 100);
    let all = w.read_batch(1000, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(all.len(), 100);
    let meta = all.meta(key).unwrap().len();
    let whole: usize = all.iter().map(|p| p.len() + meta).sum();
    assert_eq!(all.bytes(), whole);
    // Records 0..10 are alike in size: ten of them fill a bound of ten.
    let one = all.get(0).len() + meta;
    let b = w.read_batch(1000, 10 * one, Duration::ZERO).unwrap();
    assert_eq!(b.len(), 10, "{} of {} bytes", b.bytes(), 10 * one);
}
