//! Containers the module could not hand to the shipper (see
//! `crate::fallback`): they write their sandbox `stdout`/`stderr` directly.
//! A thread of the worker reads the module's records every [`ROUND`]: it
//! names each new one in a warning (container, sandbox, reason) and counts
//! them (`fallback_containers`, a gauge; `fallback_reported`), and it ships
//! their lines: it follows the two files the module created, through
//! descriptors opened relative to the sandbox and only where the name still
//! holds that very file (`SandboxDir::open_ours`: the task owns those names
//! and may replace them, so a name is never followed), parses them like any
//! stream into the container's disk buffer, and saves its offsets
//! (`<state_dir>/fallback/<key>.json`) only after the records are synced.
//! When no process holds a file open for writing any more (a read lease can
//! be taken) and it is parsed to its end, the container is done: its record
//! goes (`fallback_shipped`). A record whose sandbox is gone is removed
//! (`fallback_records_removed`). Record ids are made from stream offsets as
//! for any container, so what a restarted worker sends again is no duplicate
//! in Elasticsearch.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::counters::{
    Counters, FALLBACK_CONTAINERS, FALLBACK_FILES_LOST, FALLBACK_RECORDS_REMOVED,
    FALLBACK_REPORTED, FALLBACK_SHIPPED,
};
use super::logfiles::{self, FileEncoding, FileSources, FileTarget, FilesCheckpoint};
use super::stream::now_ms;
use super::ShipperConfig;
use crate::fallback::{dir_for, list, FallbackRecord};
use crate::proto::SinkKind;
use crate::record::{Encoded, Stream, StreamPipeline};
use crate::sandbox::SandboxDir;
use crate::wal::Wal;

/// How often the records are read and the files followed.
pub const ROUND: Duration = Duration::from_millis(500);
/// How long after a failure to follow a container's files it is tried again.
const RETRY: Duration = Duration::from_secs(30);
/// Bytes parsed per stream and round at most.
const TURN: u64 = 4 << 20;

/// Offsets saved for a container being shipped.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// Safe stream offsets (everything before is in the disk buffer) of
    /// stdout and stderr.
    offsets: [u64; 2],
    /// The container's log files (`rein.log.files`), if it names any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<FilesCheckpoint>,
}

#[derive(Debug)]
struct TailStream {
    stream: Stream,
    /// `None`: the file is gone or replaced (its lines are not shipped).
    file: Option<File>,
    pipeline: StreamPipeline,
    /// Consumed by the framer.
    off: u64,
    /// Size at the last look, and when it last grew.
    size: u64,
    grew: Instant,
    done: bool,
}

#[derive(Debug)]
struct Tail {
    /// The container's sink's buffer (`None`: its own lines go nowhere, only
    /// log files with a sink of their own are shipped).
    wal: Option<Arc<Wal>>,
    cid: Vec<u8>,
    route: Vec<u8>,
    streams: Vec<TailStream>,
    /// Its log files, followed as for an attached container.
    files: Option<FileSources>,
    /// Disk buffers of log files with a sink of their own.
    file_wals: Vec<Arc<Wal>>,
    progress: PathBuf,
    record: PathBuf,
    /// Records were queued but not yet durable: offsets wait for them.
    unsaved: bool,
}

struct Pickup {
    cfg: ShipperConfig,
    wals: Vec<(SinkKind, Arc<Wal>)>,
    counters: Arc<Counters>,
    reported: BTreeSet<String>,
    tails: BTreeMap<String, Tail>,
    /// Containers whose files could not be opened, and when.
    failed: BTreeMap<String, Instant>,
    /// Files found no longer at their name (container, stream index).
    lost: BTreeSet<(String, usize)>,
    buf: Vec<u8>,
    framed: Vec<u8>,
    /// A stream had more than one turn to parse in the last round.
    busy: bool,
}

/// Why a fallen-back container's files could not be opened (retried later).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct OpenError {
    /// The directory or file.
    what: String,
    /// Why.
    source: std::io::Error,
}

/// Starts the thread; it ends with the worker (`worker::STOP`).
pub fn start(
    cfg: &ShipperConfig,
    wals: Vec<(SinkKind, Arc<Wal>)>,
    counters: Arc<Counters>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut p = Pickup {
        cfg: cfg.clone(),
        wals,
        counters,
        reported: BTreeSet::new(),
        tails: BTreeMap::new(),
        failed: BTreeMap::new(),
        lost: BTreeSet::new(),
        buf: Vec::new(),
        framed: Vec::new(),
        busy: false,
    };
    std::thread::Builder::new()
        .name("fallback".into())
        .spawn(move || {
            while !super::worker::STOP.load(Ordering::Relaxed) {
                p.busy = false;
                p.round();
                // A backlog is caught up without pause; otherwise one look per round.
                if !p.busy {
                    std::thread::sleep(ROUND);
                }
            }
        })
}

/// True while some process has `f` open for writing: a read lease cannot be
/// taken then. The lease is held for an instant; a task opening its file for
/// writing in that instant breaks it, and the kernel then signals us: with
/// `SIGURG` (ignored by default), set before each lease because removing a
/// lease resets it to `SIGIO`, which would end the worker. Where that or the
/// lease is refused, the file is taken as written (followed until its
/// sandbox is gone).
fn has_writers(f: &File) -> bool {
    if read_lease(f, true) {
        read_lease(f, false);
        return false;
    }
    true
}

/// Takes (`on`) or releases a read lease on `f`; true if done.
fn read_lease(f: &File, on: bool) -> bool {
    /// `F_SETSIG` of Linux (every architecture; not in the libc crate).
    const F_SETSIG: libc::c_int = 10;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor `f` owns.
    unsafe {
        if on {
            libc::fcntl(fd, F_SETSIG, libc::SIGURG) == 0
                && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
        } else {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) == 0
        }
    }
}

impl Pickup {
    fn round(&mut self) {
        let mut present = 0u64;
        let mut seen = BTreeSet::new();
        for (path, rec) in list(&dir_for(&self.cfg.socket)) {
            if std::fs::symlink_metadata(&rec.sandbox)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                self.forget(&rec.key);
                if std::fs::remove_file(&path).is_ok() {
                    FALLBACK_RECORDS_REMOVED.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        container = rec.key,
                        "the sandbox of a fallen-back container is gone: its record is removed"
                    );
                }
                continue;
            }
            present += 1;
            seen.insert(rec.key.clone());
            if self.reported.insert(rec.key.clone()) {
                FALLBACK_REPORTED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    container = rec.key,
                    sandbox = %rec.sandbox.display(),
                    at_ms = rec.at_ms,
                    "container not handed to the shipper at launch ({}): its sandbox files are followed from here (shipped if its sink is configured)",
                    rec.reason
                );
            }
            let retry_due = self
                .failed
                .get(&rec.key)
                .is_none_or(|t| t.elapsed() >= RETRY);
            if !self.tails.contains_key(&rec.key) && retry_due {
                match self.open(&path, &rec) {
                    Ok(Some(t)) => {
                        self.failed.remove(&rec.key);
                        self.tails.insert(rec.key.clone(), t);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if self
                            .failed
                            .insert(rec.key.clone(), Instant::now())
                            .is_none()
                        {
                            tracing::warn!(
                                container = rec.key,
                                "following its files: {e} (tried again every {RETRY:?})"
                            );
                        }
                    }
                }
            }
        }
        // Records removed by hand are no longer followed.
        self.tails.retain(|k, _| seen.contains(k));
        FALLBACK_CONTAINERS.store(present, Ordering::Relaxed);
        let keys: Vec<String> = self.tails.keys().cloned().collect();
        for key in keys {
            if self.follow(&key) {
                present -= 1;
                FALLBACK_CONTAINERS.store(present, Ordering::Relaxed);
            }
        }
    }

    /// Drops what is kept of a container whose record goes.
    fn forget(&mut self, key: &str) {
        self.failed.remove(key);
        self.reported.remove(key);
        self.lost.retain(|(k, _)| k != key);
        if let Some(mut t) = self.tails.remove(key) {
            if let Some(f) = t.files.as_mut() {
                f.release();
            }
            let _ = std::fs::remove_file(t.progress);
        }
    }

    /// Opens the container's files where their names still hold them;
    /// `None` when its records go nowhere (sink `none` or not configured).
    fn open(&mut self, path: &Path, rec: &FallbackRecord) -> Result<Option<Tail>, OpenError> {
        let reg = &rec.registration;
        let wal = self
            .wals
            .iter()
            .find(|(k, _)| *k == reg.options.sink)
            .map(|(_, w)| w.clone());
        if wal.is_none() && !logfiles::own_sink_runs(&reg.options.files, &self.wals) {
            return Ok(None);
        }
        let dir = self.cfg.state_dir.join("fallback");
        crate::private::create_dir(&dir).map_err(|source| OpenError {
            what: dir.display().to_string(),
            source,
        })?;
        let progress = dir.join(format!("{}.json", rec.key));
        let saved: Progress = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let sandbox = SandboxDir::open(&rec.sandbox).map_err(|source| OpenError {
            what: format!("sandbox {}", rec.sandbox.display()),
            source,
        })?;
        let multiline = reg
            .options
            .multiline
            .as_ref()
            .and_then(super::worker::multiline_config);
        let sandbox = Arc::new(sandbox);
        let encode = self.cfg.encode.with_binary(reg.options.binary);
        let (files, file_wals) = logfiles::for_container(
            reg,
            FileEncoding {
                meta: reg.meta.clone(),
                encode: encode.clone(),
                max_line: self.cfg.max_line_bytes,
                multiline: multiline.clone(),
            },
            wal.is_some(),
            &self.wals,
            sandbox.clone(),
            saved.files.clone(),
            self.counters.log_files.clone(),
        );
        let mut streams = Vec::with_capacity(2);
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let file = sandbox
                .open_ours(stream.name(), rec.files[i], false)
                .map_err(|source| OpenError {
                    what: stream.name().to_string(),
                    source,
                })?;
            // Counted once per file, however often the container is reopened.
            if file.is_none() && self.lost.insert((rec.key.clone(), i)) {
                FALLBACK_FILES_LOST.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    container = rec.key,
                    "its {} is no longer the file the module created (removed or replaced by the task): not shipped",
                    stream.name()
                );
            }
            streams.push(TailStream {
                stream,
                done: file.is_none(),
                file,
                pipeline: StreamPipeline::new(
                    &reg.meta,
                    stream,
                    &encode,
                    self.cfg.max_line_bytes,
                    multiline.clone(),
                ),
                off: saved.offsets[i],
                size: 0,
                grew: Instant::now(),
            });
        }
        Ok(Some(Tail {
            wal,
            cid: reg.meta.container_id().into_bytes(),
            route: reg.options.route.clone().into_bytes(),
            streams,
            files,
            file_wals,
            progress,
            record: path.to_path_buf(),
            unsaved: false,
        }))
    }

    /// Parses what is new in the container's files; true once it is done.
    fn follow(&mut self, key: &str) -> bool {
        let Some(t) = self.tails.get_mut(key) else {
            return false;
        };
        // A full buffer (policy `pause`) waits: the files keep the lines.
        if t.wal.iter().chain(t.file_wals.iter()).any(|w| w.is_full()) {
            return false;
        }
        let (flush_after, read_ms) = (self.cfg.partial_flush, now_ms());
        let mut records = 0u64;
        // Records of log files with a sink of their own, per extra buffer.
        let mut extra: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut lines = 0u64;
        let mut moved = false;
        for s in &mut t.streams {
            let Some(f) = s.file.as_ref().filter(|_| !s.done) else {
                continue;
            };
            // Writers are looked for before the size: bytes written after
            // this look are then still read below.
            let ended = !has_writers(f);
            let size = match f.metadata() {
                Ok(m) => m.len(),
                Err(e) => {
                    tracing::warn!(container = key, "{}: {e}", s.stream.name());
                    continue;
                }
            };
            if size > s.size {
                s.grew = Instant::now();
            }
            s.size = size;
            let need = s.pipeline.window_needed().max(256 * 1024);
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
            let before = s.pipeline.lines;
            let (cid, route, stream) = (&t.cid, &t.route, s.stream);
            let framed = &mut self.framed;
            let mut emit = |e: Encoded<'_>| {
                crate::walrec::frame_encoded(framed, stream, cid, route, &e);
                records += 1;
            };
            let stop = s.off + TURN;
            while s.off < size.min(stop) {
                let want = usize::try_from(size - s.off).unwrap_or(usize::MAX);
                let n = match f.read_at(&mut self.buf[..want.min(need)], s.off) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(container = key, "{}: {e}", s.stream.name());
                        break;
                    }
                };
                // A trailing line without newline waits for `partial_flush`
                // of silence, or the end.
                let last = s.off + n as u64 >= size;
                let flush = last && (ended || s.grew.elapsed() >= flush_after);
                let used = s.pipeline.feed(
                    &self.buf[..n],
                    s.off,
                    flush,
                    Instant::now(),
                    read_ms,
                    &mut emit,
                );
                if used == 0 {
                    break;
                }
                s.off += used as u64;
                moved = true;
            }
            self.busy |= s.off >= stop && s.off < size;
            s.pipeline.poll(Instant::now(), read_ms, false, &mut emit);
            if ended && s.off >= size {
                s.pipeline.poll(Instant::now(), read_ms, true, &mut emit);
                s.done = true;
                moved = true;
            }
            lines += s.pipeline.lines - before;
        }
        if let Some(fs) = t.files.as_mut() {
            let need = fs.window_needed();
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
            extra.resize_with(t.file_wals.len(), Default::default);
            let (cid, framed, extra) = (&t.cid, &mut self.framed, &mut extra);
            let mut emit = logfiles::records(|to: &FileTarget, e: Encoded<'_>| {
                let (bytes, n) = match to.wal {
                    Some(i) => {
                        let (b, n) = &mut extra[i];
                        (b, n)
                    }
                    None => (&mut *framed, &mut records),
                };
                crate::walrec::frame_encoded(bytes, Stream::File, cid, &to.route, &e);
                *n += 1;
            });
            if t.streams.iter().all(|s| s.done) {
                // The container ended: its files are read to their end.
                moved |= !fs.done;
                fs.finish(&mut self.buf, &mut emit);
            } else {
                moved |= fs.round(&mut self.buf, TURN, &mut emit);
                fs.timers(&mut self.buf, flush_after, &mut emit);
            }
            // A newly numbered file is read once the progress names it.
            moved |= fs.unsaved_numbers();
            lines += fs.take_lines();
        }
        if records > 0 {
            if let Some(w) = &t.wal {
                w.push_framed_vec(&mut self.framed, records);
            }
            self.framed.clear();
        }
        let mut extra_records = 0;
        for ((bytes, n), w) in extra.iter().zip(&t.file_wals) {
            if *n > 0 {
                w.push_framed(bytes, *n);
                extra_records += n;
            }
        }
        if !moved && records + extra_records == 0 && !t.unsaved {
            return false;
        }
        // Read once: the buffer keeps queued records until it can write them
        // (a full or failing disk stalls, never drops).
        self.counters.lines_read.fetch_add(lines, Ordering::Relaxed);
        t.unsaved = true;
        // Offsets are saved only behind records that are in the buffer for
        // good; until then a restart reads them again (same ids).
        let durable = t.wal.iter().chain(t.file_wals.iter()).try_for_each(|w| {
            w.commit().and_then(|n| {
                // Counted by whoever writes them (the parser shares the buffer).
                self.counters
                    .records_buffered
                    .fetch_add(n, Ordering::Relaxed);
                w.sync()
            })
        });
        if let Err(e) = durable {
            // The buffer logs its failures itself, rate-limited.
            tracing::debug!(
                container = key,
                "disk buffer: {e}; offsets kept until the buffer writes again"
            );
            return false;
        }
        t.unsaved = false;
        let p = Progress {
            offsets: [0, 1].map(|i| t.streams[i].pipeline.safe_offset(t.streams[i].off)),
            files: t.files.as_ref().map(FileSources::checkpoint),
        };
        let saved = serde_json::to_vec(&p)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::private::write_atomic(&t.progress, &b));
        if let Err(e) = saved {
            tracing::warn!(container = key, "{}: {e}", t.progress.display());
            return false;
        }
        if let (Some(fs), Some(cp)) = (t.files.as_mut(), p.files.as_ref()) {
            fs.saved(cp);
        }
        if !t.streams.iter().all(|s| s.done) || t.files.as_ref().is_some_and(|f| !f.done) {
            return false;
        }
        let _ = std::fs::remove_file(&t.record);
        let _ = std::fs::remove_file(&t.progress);
        FALLBACK_SHIPPED.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            container = key,
            "a fallen-back container ended: its sandbox files are parsed to their end"
        );
        self.forget(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task opening its file for writing while the lease is held: the
    /// break signal must not end the process, every time (the second lease
    /// comes after a removal, which resets the signal).
    #[test]
    fn lease_breaks_do_not_kill_the_process() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("stdout");
        std::fs::write(&path, b"x\n").unwrap();
        let f = File::open(&path).unwrap();
        for _ in 0..2 {
            assert!(!has_writers(&f), "nobody writes");
            let p = path.clone();
            let writer = std::thread::spawn(move || {
                std::fs::OpenOptions::new().append(true).open(p).unwrap()
            });
            // Hold the lease has_writers takes while the writer's open breaks it.
            let leased = read_lease(&f, true);
            std::thread::sleep(Duration::from_millis(200));
            if leased {
                read_lease(&f, false);
            }
            let w = writer.join().unwrap();
            assert!(has_writers(&f), "a writer holds it");
            drop(w);
        }
        assert!(!has_writers(&f));
    }
}
