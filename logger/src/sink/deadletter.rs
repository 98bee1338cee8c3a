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

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use super::SinkStats;
use crate::private;
use crate::record::json::push_str;

/// What happens to refused records once the dead-letter file is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterFullPolicy {
    /// The sink waits (stops acknowledging its buffer) until there is room.
    Pause,
    /// Refused records beyond the bound are counted and logged, not written.
    Drop,
}

impl std::str::FromStr for DeadLetterFullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause" => Ok(DeadLetterFullPolicy::Pause),
            "drop" => Ok(DeadLetterFullPolicy::Drop),
            _ => Err(format!("`{s}` is not one of pause, drop")),
        }
    }
}

/// Bound of every dead-letter file (shipper settings `max_dead_letter_bytes`,
/// `dead_letter_full_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Largest size of one dead-letter file.
    pub max_bytes: u64,
    /// What happens beyond it.
    pub policy: DeadLetterFullPolicy,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            max_bytes: 1 << 30,
            policy: DeadLetterFullPolicy::Pause,
        }
    }
}

static LIMITS: OnceLock<DeadLetterLimits> = OnceLock::new();

/// Sets the bound of every dead-letter file of this process (the worker does
/// it once from its settings, before any sink starts). Later calls are ignored.
pub fn set_limits(l: DeadLetterLimits) {
    let _ = LIMITS.set(l);
}

/// The bound in force ([`DeadLetterLimits::default`] unless set).
pub fn limits() -> DeadLetterLimits {
    LIMITS.get().copied().unwrap_or_default()
}

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
        }
    }

    /// Queues one refused record.
    pub fn add(
        &mut self,
        sink: &str,
        target: &str,
        id: &[u8],
        status: u16,
        reason: &[u8],
        doc: &[u8],
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let b = &mut self.buf;
        b.extend_from_slice(format!("{{\"dead_lettered_at_ms\":{now},\"sink\":").as_bytes());
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
        self.queued += 1;
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
            } else if let Some((_, size)) = &mut self.file {
                *size = ours.len();
            }
        }
        if self.file.is_none() {
            if let Some(d) = self.path.parent() {
                private::create_parents(d)?;
            }
            let f = private::open_append(&self.path)?;
            let size = f.metadata()?.len();
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
            f.write_all(&self.buf[..fit])?;
            f.sync_data()?;
            *size += fit as u64;
        }
        let written = memchr::memchr_iter(b'\n', &self.buf[..fit]).count() as u64;
        self.buf.drain(..fit);
        self.queued -= written;
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
            d.add("es", "idx", format!("id{i}").as_bytes(), 400, b"bad", b"{}");
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
