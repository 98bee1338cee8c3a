//! What the S3 sink has already stored, across worker restarts.
//!
//! A restarted worker parses again from its last checkpoint, so records
//! already in the disk buffer (and maybe already stored) are buffered a
//! second time with the same ids. Elasticsearch and Redis recognise a
//! resent id; an object store cannot, and a record buffered twice would land
//! in two objects. The S3 sink therefore keeps, per container stream, the
//! highest stream offset it has stored or dead-lettered (a record id is
//! `<hash of the container>-<stream tag>-<stream offset>`, and offsets only
//! grow: no id is ever reused), and drops a record at or below it as a
//! duplicate. The marks are saved (written, synced, renamed into place)
//! after a batch is done and before it is acknowledged: a crash before the
//! save re-forms the batch with the same marks, so its objects get the same
//! keys and are overwritten; a crash after it finds the batch's records
//! marked and stores none again. A log file's records (`-f<n>-<offset>`) are
//! marked per file the same way. Records with ids of another form are
//! deduplicated within a batch only (the same id twice).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::walrec::WalRecord;

/// Container streams remembered; beyond, those updated longest ago are
/// forgotten (a stream that has not shipped for that long is not replayed).
pub const MAX_MARKS: usize = 20_000;

/// The stream part and the offset of a record id: `<16 hex>-<o|e>` of
/// `<16 hex>-<o|e>-<digits>` (stdout, stderr), or `<16 hex>-f<n>` of
/// `<16 hex>-f<n>-<digits>` (the container's log file number `n`, whose
/// offsets only grow too: a truncated file is a new number).
pub fn split_id(id: &[u8]) -> Option<(&[u8], u64)> {
    if id.len() < 20 || id[16] != b'-' {
        return None;
    }
    if !id[..16]
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let is_digits = |d: &[u8]| !d.is_empty() && d.len() <= 19 && d.iter().all(u8::is_ascii_digit);
    let stream_end = match id[17] {
        b'o' | b'e' => 18,
        b'f' => 18 + id[18..].iter().position(|&b| b == b'-')?,
        _ => return None,
    };
    if id.get(stream_end) != Some(&b'-') || (id[17] == b'f' && !is_digits(&id[18..stream_end])) {
        return None;
    }
    let digits = &id[stream_end + 1..];
    if !is_digits(digits) {
        return None;
    }
    let offset = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((&id[..stream_end], offset))
}

/// The marks: per container stream, the highest offset done, and when it
/// was last raised (a batch count).
#[derive(Debug)]
pub struct Shipped {
    path: PathBuf,
    marks: HashMap<Vec<u8>, (u64, u64)>,
    batch: u64,
    /// The highest offsets of the batch in flight.
    pending: HashMap<Vec<u8>, u64>,
}

impl Shipped {
    /// The marks saved at `path` (none if it is missing or unreadable: the
    /// sink then only risks storing a replayed record twice, never losing one).
    pub fn load(path: &Path) -> Shipped {
        let mut marks = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    let mut f = line.split(' ');
                    if let (Some(k), Some(Ok(o)), Some(Ok(b))) = (
                        f.next(),
                        f.next().map(str::parse::<u64>),
                        f.next().map(str::parse::<u64>),
                    ) {
                        marks.insert(k.as_bytes().to_vec(), (o, b));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(
                "s3 sink: {}: {e}; records parsed again after a restart may be stored twice",
                path.display()
            ),
        }
        let batch = marks.values().map(|m| m.1).max().unwrap_or(0);
        Shipped {
            path: path.to_path_buf(),
            marks,
            batch,
            pending: HashMap::new(),
        }
    }

    /// For each record, whether it is new: not at or below its stream's mark,
    /// not an id seen earlier in `records`. Every record counts towards the
    /// batch's marks ([`Shipped::batch_done`] saves them).
    pub fn fresh(&mut self, records: &[WalRecord<'_>]) -> Vec<bool> {
        let mut seen: HashSet<&[u8]> = HashSet::with_capacity(records.len());
        let mut running: HashMap<&[u8], u64> = HashMap::new();
        records
            .iter()
            .map(|r| {
                if !seen.insert(r.id) {
                    return false;
                }
                let Some((stream, offset)) = split_id(r.id) else {
                    return true;
                };
                let pending = self.pending.entry(stream.to_vec()).or_insert(0);
                *pending = (*pending).max(offset);
                let mark = running
                    .entry(stream)
                    .or_insert_with(|| self.marks.get(stream).map_or(0, |m| m.0 + 1));
                if offset < *mark {
                    return false;
                }
                *mark = offset + 1;
                true
            })
            .collect()
    }

    /// A new batch: the marks of an unfinished one are dropped.
    pub fn start_batch(&mut self) {
        self.pending.clear();
    }

    /// Every record of the batch is stored or dead-lettered: its marks are
    /// raised and saved.
    pub fn batch_done(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.batch += 1;
        for (k, o) in self.pending.drain() {
            let m = self.marks.entry(k).or_insert((o, 0));
            *m = (m.0.max(o), self.batch);
        }
        if self.marks.len() > MAX_MARKS {
            let mut by_age: Vec<u64> = self.marks.values().map(|m| m.1).collect();
            by_age.sort_unstable();
            let cut = by_age[self.marks.len() - MAX_MARKS];
            self.marks.retain(|_, m| m.1 >= cut);
        }
        self.save()
    }

    fn save(&self) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(self.marks.len() * 48);
        for (k, (o, b)) in &self.marks {
            text.extend_from_slice(k);
            let _ = writeln!(text, " {o} {b}");
        }
        let tmp = self.path.with_extension("tmp");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Stream;

    fn rec(id: &[u8]) -> WalRecord<'_> {
        WalRecord {
            stream: Stream::Stdout,
            ts_ms: 0,
            id,
            container: b"c",
            route: b"",
            doc: b"{}",
        }
    }

    #[test]
    fn ids_of_the_stream_and_file_forms_only() {
        assert_eq!(
            split_id(b"0123456789abcdef-o-42"),
            Some((&b"0123456789abcdef-o"[..], 42))
        );
        assert_eq!(
            split_id(b"0123456789abcdef-f12-7"),
            Some((&b"0123456789abcdef-f12"[..], 7))
        );
        for bad in [
            &b"0123456789abcdef-x-42"[..],
            b"0123456789abcdef-f-42",
            b"0123456789abcdef-fx-42",
            b"0123456789abcdef-f12-",
            b"0123456789abcdef-f12",
            b"0123456789abcdeF-o-42",
            b"0123456789abcdef-o-",
            b"0123456789abcdef-o-4a",
            b"short-o-1",
        ] {
            assert_eq!(split_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn replays_are_dropped_within_a_batch_and_after_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s3-shipped");
        let a = |n: u32| format!("0000000000000001-o-{n}").into_bytes();
        let ids: Vec<Vec<u8>> = [10, 20, 30, 20, 30, 40]
            .iter()
            .map(|&n| a(n))
            .chain([b"other-id".to_vec(), b"other-id".to_vec()])
            .collect();
        let recs: Vec<WalRecord<'_>> = ids.iter().map(|i| rec(i)).collect();
        let mut s = Shipped::load(&path);
        s.start_batch();
        assert_eq!(
            s.fresh(&recs),
            [true, true, true, false, false, true, true, false]
        );
        // Not saved: a restart sees the same records as new.
        let mut again = Shipped::load(&path);
        again.start_batch();
        assert!(again.fresh(&recs[..3]).iter().all(|f| *f));
        s.batch_done().unwrap();
        let mut after = Shipped::load(&path);
        after.start_batch();
        let next = [a(40), a(41)];
        let next: Vec<WalRecord<'_>> = next.iter().map(|i| rec(i)).collect();
        assert_eq!(after.fresh(&next), [false, true]);
    }
}
