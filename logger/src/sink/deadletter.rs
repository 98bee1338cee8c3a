//! The dead-letter file: records a destination refused for good (a 4xx other
//! than 429), one JSON line each with the reason, `fsync`ed before the
//! buffer is acknowledged. Nothing is dropped silently.
//!
//! The file is private (0600, see [`crate::private`]) and bounded: a task
//! whose records are refused on purpose must not fill the shipper's disk.
//! At `max_dead_letter_bytes` the [`DeadLetterFullPolicy`] applies: `pause`
//! (default) writes nothing more and makes [`DeadLetter::flush`] fail, so the
//! sink stops acknowledging its buffer (records wait there; nothing is lost)
//! until the operator moves the file away (it is then started anew) or
//! raises the bound; `drop` keeps shipping and counts every refused record
//! not written (`dead_letter_dropped`, logged).
//!
//! Each container has a share of the file (`max_dead_letter_bytes_per_container`):
//! one tenant refusing records on purpose must not fill it and pause the sink
//! for everyone. Beyond its share a container's refused records are not
//! written but counted (`dead_letter_over_share`) and logged once per
//! container; other containers' records keep their room. The shares are
//! rebuilt from the file when it is opened (every line starts with its
//! container id), so a restarted worker keeps them; at most
//! [`MAX_TRACKED_CONTAINERS`] are tracked in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::deadletter_shares::{read_shares, share_of, Shares, CONTAINER_PREFIX};
use super::SinkStats;
use crate::private;
use crate::record::json::push_str;

pub use super::deadletter_limits::{
    limits, set_limits, DeadLetterFullPolicy, DeadLetterLimits, UnknownPolicy,
    DEFAULT_MAX_BYTES_PER_CONTAINER,
};
pub use super::deadletter_shares::MAX_TRACKED_CONTAINERS;

/// Appends refused records to a file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    limits: DeadLetterLimits,
    stats: Arc<SinkStats>,
    file: Option<(File, u64)>,
    buf: Vec<u8>,
    /// Records queued in `buf`.
    queued: u64,
    /// Container (its id as escaped in the file) and length of each queued line.
    queue: std::collections::VecDeque<(Vec<u8>, u64)>,
    /// Share used per container in the open file; `None` until it is read.
    shares: Option<Shares>,
    /// Length to cut the file back to before the next write (a failed write
    /// whose cut failed too).
    cut_to: Option<u64>,
}

impl DeadLetter {
    /// A dead-letter file at `path` (opened on first use), bounded by the
    /// process's [`limits`].
    pub fn new(path: &Path, stats: Arc<SinkStats>) -> Self {
        Self::with_limits(path, limits(), stats)
    }

    /// A dead-letter file with its own bound.
    pub fn with_limits(path: &Path, limits: DeadLetterLimits, stats: Arc<SinkStats>) -> Self {
        DeadLetter {
            path: path.to_path_buf(),
            limits,
            stats,
            file: None,
            buf: Vec::new(),
            queued: 0,
            queue: std::collections::VecDeque::new(),
            shares: None,
            cut_to: None,
        }
    }

    /// Queues one refused record of `container`, unless the container has
    /// used its share of the file (then it is counted in
    /// `dead_letter_over_share` and logged once per container).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        sink: &str,
        target: &str,
        container: &[u8],
        id: &[u8],
        status: u16,
        reason: &[u8],
        doc: &[u8],
    ) {
        if self.shares.is_none() {
            // Reads the shares of the file as it is (an error is reported by `flush`).
            let _ = self.file();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let start = self.buf.len();
        let b = &mut self.buf;
        // The container first: the shares are read back from the line starts.
        b.extend_from_slice(b"{\"container\":");
        push_str(b, container);
        let key = b[start + CONTAINER_PREFIX.len()..b.len() - 1].to_vec();
        b.extend_from_slice(format!(",\"dead_lettered_at_ms\":{now},\"sink\":").as_bytes());
        push_str(b, sink.as_bytes());
        b.extend_from_slice(b",\"target\":");
        push_str(b, target.as_bytes());
        b.extend_from_slice(b",\"_id\":");
        push_str(b, id);
        b.extend_from_slice(format!(",\"status\":{status},\"reason\":").as_bytes());
        push_str(b, reason);
        b.extend_from_slice(b",\"document\":");
        push_str(b, doc);
        b.extend_from_slice(b"}\n");
        let len = (self.buf.len() - start) as u64;
        let share = self.limits.max_bytes_per_container;
        let shares = self.shares.get_or_insert_with(HashMap::new);
        let s = share_of(shares, &key);
        // A share as large as the file is no share: the file's bound alone.
        if share < self.limits.max_bytes && s.bytes + len > share {
            self.buf.truncate(start);
            s.over += 1;
            self.stats
                .dead_letter_over_share
                .fetch_add(1, Ordering::Relaxed);
            if !s.logged {
                s.logged = true;
                tracing::error!(
                    path = %self.path.display(),
                    container = %String::from_utf8_lossy(container),
                    first_id = %String::from_utf8_lossy(id),
                    max_dead_letter_bytes_per_container = share,
                    "container used its share of the dead-letter file: its further refused \
                     records are counted (dead_letter_over_share), not written; their lines \
                     stay in its sandbox stdout/stderr files while rotation keeps them (the \
                     record id names the stream and byte offset); other containers keep theirs"
                );
            }
            return;
        }
        s.bytes += len;
        self.queue.push_back((key, len));
        self.queued += 1;
    }

    /// Bytes of `container`'s records in the file and queued (0 if untracked).
    pub fn share_used(&self, container: &[u8]) -> u64 {
        let mut key = Vec::new();
        push_str(&mut key, container);
        let key = &key[1..key.len() - 1];
        self.shares
            .as_ref()
            .and_then(|m| m.get(key))
            .map_or(0, |s| s.bytes)
    }

    /// The open file and its size; reopened when the operator moved or
    /// truncated it (that is how a full file is emptied).
    fn file(&mut self) -> std::io::Result<()> {
        if let Some((f, _)) = &self.file {
            let ours = f.metadata()?;
            let moved = std::fs::symlink_metadata(&self.path)
                .map_or(true, |m| m.ino() != ours.ino() || m.dev() != ours.dev());
            if moved {
                self.file = None;
                self.cut_to = None;
            } else if let Some((f, size)) = &mut self.file {
                if let Some(len) = self.cut_to.filter(|&l| l < ours.len()) {
                    f.set_len(len)?;
                }
                self.cut_to = None;
                *size = f.metadata()?.len();
            }
        }
        if self.file.is_none() {
            if let Some(d) = self.path.parent() {
                private::create_parents(d)?;
            }
            let f = private::open_append(&self.path)?;
            let size = f.metadata()?.len();
            let mut shares = read_shares(&self.path, &f)?;
            // What is queued counts against the new file too.
            for (k, len) in &self.queue {
                share_of(&mut shares, k).bytes += len;
            }
            self.shares = Some(shares);
            self.file = Some((f, size));
        }
        Ok(())
    }

    /// Writes and `fsync`s the queued records, as many whole records as the
    /// bound leaves room for. Under `pause`, an error while records remain
    /// (the caller retries later; its batch stays unacknowledged); under
    /// `drop`, the rest are counted in `dead_letter_dropped` and logged.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let max = self.limits.max_bytes;
        self.file()?;
        let (f, size) = self.file.as_mut().expect("opened");
        let room = usize::try_from(max.saturating_sub(*size)).unwrap_or(usize::MAX);
        // The longest prefix of whole lines that fits.
        let fit = if self.buf.len() <= room {
            self.buf.len()
        } else {
            self.buf[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        if fit > 0 {
            if let Err(e) = f.write_all(&self.buf[..fit]).and_then(|()| f.sync_data()) {
                // Nothing is taken as written: part of it may be in the file (a
                // short write) or, after a failed sync, not really on disk. Cut
                // back to the last whole line; the records are written again by
                // the retry (their batch stays unacknowledged until then).
                if let Err(t) = f.set_len(*size) {
                    tracing::warn!(path = %self.path.display(), "cutting back a failed write: {t}");
                    // Cut before the next write (see `file`).
                    self.cut_to = Some(*size);
                }
                return Err(e);
            }
            *size += fit as u64;
        }
        let lines = memchr::memchr_iter(b'\n', &self.buf[..fit]).count();
        self.buf.drain(..fit);
        self.queued -= lines as u64;
        self.queue.drain(..lines);
        if self.buf.is_empty() {
            self.stats.dead_letter_full.store(0, Ordering::Relaxed);
            return Ok(());
        }
        self.stats.dead_letter_full.store(1, Ordering::Relaxed);
        match self.limits.policy {
            DeadLetterFullPolicy::Pause => Err(std::io::Error::other(format!(
                "full ({} records wait; max_dead_letter_bytes = {max}): the sink waits until the file is moved away or the bound raised",
                self.queued
            ))),
            DeadLetterFullPolicy::Drop => {
                self.stats
                    .dead_letter_dropped
                    .fetch_add(self.queued, Ordering::Relaxed);
                tracing::error!(
                    path = %self.path.display(),
                    dropped = self.queued,
                    max_dead_letter_bytes = max,
                    "dead-letter file full: refused records dropped (dead_letter_full_policy = drop)"
                );
                // Not written: no longer part of anyone's share.
                let shares = self.shares.get_or_insert_with(HashMap::new);
                for (k, len) in self.queue.drain(..) {
                    let s = share_of(shares, &k);
                    s.bytes = s.bytes.saturating_sub(len);
                }
                self.buf.clear();
                self.queued = 0;
                Ok(())
            }
        }
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn add(d: &mut DeadLetter, n: usize) {
        for i in 0..n {
            // One container each: these tests are about the file's bound.
            let c = format!("c{i}");
            d.add(
                "es",
                "idx",
                c.as_bytes(),
                format!("id{i}").as_bytes(),
                400,
                b"bad",
                b"{}",
            );
        }
    }

    fn lines(p: &Path) -> usize {
        std::fs::read(p).map_or(0, |b| memchr::memchr_iter(b'\n', &b).count())
    }

    #[test]
    fn pause_writes_what_fits_and_waits_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl/dead.ndjson");
        let stats = Arc::new(SinkStats::default());
        let limits = DeadLetterLimits {
            max_bytes: 1000,
            policy: DeadLetterFullPolicy::Pause,
            max_bytes_per_container: 1000,
        };
        let mut d = DeadLetter::with_limits(&p, limits, stats.clone());
        add(&mut d, 30);
        let e = d.flush().unwrap_err();
        assert!(e.to_string().contains("max_dead_letter_bytes"), "{e}");
        let written = lines(&p);
        assert!(written > 0 && written < 30, "{written}");
        assert!(std::fs::metadata(&p).unwrap().len() <= 1000);
        assert_eq!(stats.dead_letter_full.load(Ordering::Relaxed), 1);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Still full: nothing more, still an error.
        assert!(d.flush().is_err());
        // The operator moves the file away: the rest goes to a new one.
        let mut total = 0;
        for i in 0..30 {
            total += lines(&p);
            std::fs::rename(&p, dir.path().join(format!("moved.{i}"))).unwrap();
            if d.flush().is_ok() {
                break;
            }
        }
        assert_eq!(total + lines(&p), 30);
        assert_eq!(stats.dead_letter_full.load(Ordering::Relaxed), 0);
        assert_eq!(stats.dead_letter_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn drop_counts_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dead.ndjson");
        std::fs::write(&p, "x".repeat(900) + "\n").unwrap();
        let stats = Arc::new(SinkStats::default());
        let limits = DeadLetterLimits {
            max_bytes: 1000,
            policy: DeadLetterFullPolicy::Drop,
            max_bytes_per_container: 1000,
        };
        let mut d = DeadLetter::with_limits(&p, limits, stats.clone());
        add(&mut d, 10);
        d.flush().unwrap();
        let written = lines(&p) - 1;
        let dropped = stats.dead_letter_dropped.load(Ordering::Relaxed);
        assert_eq!(written as u64 + dropped, 10);
        assert!(dropped >= 9, "{dropped}");
        assert!(std::fs::metadata(&p).unwrap().len() <= 1000);
    }

    #[test]
    fn each_container_has_its_share_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dead.ndjson");
        // A line written before lines led with their container: counted in
        // the file's bound only.
        std::fs::write(&p, "{\"sink\":\"es\"}\n").unwrap();
        let limits = DeadLetterLimits {
            max_bytes: 100_000,
            policy: DeadLetterFullPolicy::Pause,
            max_bytes_per_container: 2000,
        };
        let stats = Arc::new(SinkStats::default());
        let mut d = DeadLetter::with_limits(&p, limits, stats.clone());
        let hostile = "hostile \"\\ id\n";
        for i in 0..100 {
            d.add(
                "es",
                "i",
                hostile.as_bytes(),
                format!("h{i}").as_bytes(),
                403,
                b"x",
                b"{}",
            );
        }
        d.add("es", "i", b"victim", b"v0", 403, b"x", b"{}");
        d.flush().unwrap();
        let over = stats.dead_letter_over_share.load(Ordering::Relaxed);
        let text = std::fs::read_to_string(&p).unwrap();
        let hostile_lines = text.lines().filter(|l| l.contains("\"h")).count() as u64;
        assert_eq!(hostile_lines + over, 100);
        assert!(over > 50, "{over}");
        assert!(d.share_used(hostile.as_bytes()) <= 2000);
        assert_eq!(text.lines().filter(|l| l.contains("\"v0\"")).count(), 1);
        for l in text.lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(
                v["container"] == hostile || v["container"] == "victim",
                "{l}"
            );
        }
        // A new worker reads the shares back from the file.
        let used = d.share_used(hostile.as_bytes());
        let stats2 = Arc::new(SinkStats::default());
        let mut d2 = DeadLetter::with_limits(&p, limits, stats2.clone());
        d2.add("es", "i", hostile.as_bytes(), b"h-again", 403, b"x", b"{}");
        d2.add("es", "i", b"other", b"o0", 403, b"x", b"{}");
        d2.flush().unwrap();
        assert_eq!(d2.share_used(hostile.as_bytes()), used);
        assert_eq!(stats2.dead_letter_over_share.load(Ordering::Relaxed), 1);
        assert!(std::fs::read_to_string(&p).unwrap().contains("\"o0\""));
        // Moved away by the operator: every container starts a new share.
        std::fs::rename(&p, dir.path().join("old")).unwrap();
        d2.add("es", "i", b"other", b"o1", 403, b"x", b"{}");
        d2.flush().unwrap();
        d2.add("es", "i", hostile.as_bytes(), b"h-new", 403, b"x", b"{}");
        d2.flush().unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("h-new"));
    }

    /// Time to read the shares of a full default-size file back (worker start).
    /// `cargo test --release -p rein-logger --lib -- --ignored --nocapture share_scan`
    #[test]
    #[ignore]
    fn share_scan_of_a_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dead.ndjson");
        let doc = format!("{{\"message\":\"{}\"}}", "x".repeat(400));
        {
            let mut d = DeadLetter::new(&p, Arc::new(SinkStats::default()));
            let mut n = 0u64;
            while n < 1 << 30 {
                for c in 0..64 {
                    let c = format!("parent-1.c{c}");
                    d.add("es", "i", c.as_bytes(), b"id", 403, b"x", doc.as_bytes());
                }
                d.flush().unwrap();
                n = std::fs::metadata(&p).unwrap().len();
                if d.share_used(b"parent-1.c0") + 2000 > DEFAULT_MAX_BYTES_PER_CONTAINER {
                    break;
                }
            }
        }
        let size = std::fs::metadata(&p).unwrap().len();
        let t = std::time::Instant::now();
        let mut d = DeadLetter::new(&p, Arc::new(SinkStats::default()));
        d.add("es", "i", b"x", b"id", 403, b"x", b"{}");
        eprintln!("read the shares of {size} bytes in {:?}", t.elapsed());
        assert!(d.share_used(b"parent-1.c1") > 0);
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let p = dir.path().join("dead.ndjson");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let mut d = DeadLetter::new(&p, Arc::new(SinkStats::default()));
        add(&mut d, 1);
        assert!(d.flush().is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }
}
