//! Log files a task names in its sandbox (`rein.log.files`), followed by the
//! parser thread beside the container's stdout and stderr, with the same
//! guarantees: offsets are checkpointed only behind synced records, record
//! ids are deterministic (`<container>-f<n>-<offset>`), and nothing is read
//! twice or skipped silently across restarts.
//!
//! * Files are found by a scan of the globs every [`SCAN_EVERY`] (and at the
//!   container's end), bounded by the operator's caps: entries looked at per
//!   directory, files followed at once, bytes of existing content read.
//! * A file is known by its identity (device, inode) and a fingerprint of its
//!   first bytes. Rotation by rename: the renamed file is read to its end
//!   through the descriptor held open, then retired once no matching name
//!   holds it and it stayed unchanged for [`RETIRE_IDLE`]; the new file at
//!   the name is a new one. Rotation by truncation (`copytruncate`): the
//!   bytes not read yet are taken from the copy when a file in the same
//!   directory starts with the same bytes and is long enough, and the
//!   truncated inode is followed as a new file from its start.
//! * A file's number (in its record ids) is given in the order files are
//!   found, which a restarted worker need not repeat: a newly numbered file
//!   is read only once a saved checkpoint names it with its number
//!   ([`FileSources::saved`]), so no record of it exists under a number a
//!   restart could give to another file.
//! * Every access goes through [`open`]: no symlink, FIFO, device, other
//!   file system or other owner's file is ever opened or followed.

mod follow;
pub mod open;

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use follow::{same_start, FileCheckpoint, Followed, Step, PREFIX};
use open::{Ident, Opened, Rules};

use crate::proto::{FileCaps, FileMultiline, FileSpec, SinkKind, SourceMeta};
use crate::record::{EncodeOptions, Encoded, MultilineConfig, StreamEncoder, StreamPipeline};
use crate::sandbox::SandboxDir;
use crate::shipper::stream::mono_ms;
use crate::wal::Wal;

/// How often the globs are scanned.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
/// A file no matching name holds any more is retired after this long unchanged.
pub const RETIRE_IDLE: Duration = Duration::from_secs(5);
/// Retired files remembered (so a name matching one again does not ship it twice).
const RETIRED_KEPT: usize = 64;
/// Refused objects remembered per container (each is counted once).
const REFUSED_KEPT: usize = 256;

/// Counters of every container's log files (in the worker's counters).
#[derive(Debug, Default)]
pub struct FileCounters {
    /// Files followed now (a gauge).
    pub followed: AtomicU64,
    /// Files found (new identities, truncated files included).
    pub found: AtomicU64,
    /// Followed files renamed or removed away from their name (rotations).
    pub rotated: AtomicU64,
    /// Files found truncated.
    pub truncations: AtomicU64,
    /// Of those, whose unread bytes were read from their copy.
    pub copies_recovered: AtomicU64,
    /// Bytes written to a truncated file and not read before the truncation,
    /// with no copy found (lost).
    pub truncated_bytes_lost: AtomicU64,
    /// Bytes of a file's existing content skipped when it was found
    /// (beyond `log_file_max_backlog`).
    pub backlog_bytes_skipped: AtomicU64,
    /// Matching names not followed because the container follows
    /// `max_log_files` already.
    pub over_cap: AtomicU64,
    /// Directories with more than `max_log_dir_entries` entries (the rest unread).
    pub dirs_over_cap: AtomicU64,
    /// Matching objects refused (symlink, FIFO, device, directory, other
    /// owner, other file system).
    pub refused: AtomicU64,
    /// Files in a checkpoint not found again after a restart (removed while
    /// no worker ran): their unread bytes are lost.
    pub lost: AtomicU64,
    /// Read errors (retried).
    pub read_errors: AtomicU64,
}

impl FileCounters {
    /// The counters as `(name, value)`, named as in `counters.json`.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("log_files_followed", l(&self.followed)),
            ("log_files_found", l(&self.found)),
            ("log_files_rotated", l(&self.rotated)),
            ("log_file_truncations", l(&self.truncations)),
            ("log_file_copies_recovered", l(&self.copies_recovered)),
            (
                "log_file_truncated_bytes_lost",
                l(&self.truncated_bytes_lost),
            ),
            (
                "log_file_backlog_bytes_skipped",
                l(&self.backlog_bytes_skipped),
            ),
            ("log_files_over_cap", l(&self.over_cap)),
            ("log_file_dirs_over_cap", l(&self.dirs_over_cap)),
            ("log_files_refused", l(&self.refused)),
            ("log_files_lost", l(&self.lost)),
            ("log_file_read_errors", l(&self.read_errors)),
        ]
    }
}

/// What `checkpoint.json` keeps of a container's log files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesCheckpoint {
    /// Number the next file found gets.
    pub next_n: u64,
    /// Files followed.
    pub files: Vec<FileCheckpoint>,
    /// Files retired (read to their end).
    pub retired: Vec<FileCheckpoint>,
}

/// How a container's files are turned into records.
#[derive(Debug, Clone)]
pub struct FileEncoding {
    /// The container's metadata.
    pub meta: SourceMeta,
    /// Operator encoding settings.
    pub encode: EncodeOptions,
    /// Longest line framed.
    pub max_line: usize,
    /// The container's multiline setting.
    pub multiline: Option<MultilineConfig>,
}

/// Where a container's file records go: [`FileOut::record`] for each, and
/// [`FileOut::file_done`] once a file's records of this turn are all made
/// (the caller hands them to the buffers then: a panic cut short the read
/// of that file only, which [`FileSources::rewind`] puts back).
pub trait FileOut {
    /// One record and its target.
    fn record(&mut self, to: &FileTarget, e: Encoded<'_>);
    /// The records of the file read last are complete.
    fn file_done(&mut self);
}

/// A [`FileOut`] made of a closure (records handed over as they come).
pub struct Records<F>(F);

/// Wraps `f` as a [`FileOut`].
pub fn records<F: FnMut(&FileTarget, Encoded<'_>)>(f: F) -> Records<F> {
    Records(f)
}

impl<F: FnMut(&FileTarget, Encoded<'_>)> FileOut for Records<F> {
    fn record(&mut self, to: &FileTarget, e: Encoded<'_>) {
        (self.0)(to, e);
    }

    fn file_done(&mut self) {}
}

/// Where one `rein.log.files` entry's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// Index of its disk buffer among the container's extra ones (`None`:
    /// the container's own).
    pub wal: Option<usize>,
    /// Index, topic or stream (empty: the sink's default).
    pub route: Vec<u8>,
}

/// Each entry's target: a file with a sink of its own goes to that sink's
/// buffer (added to `extra` once) with its route or that sink's default; one
/// naming a sink this shipper does not run goes with the container's
/// records (logged), so nothing is lost.
pub fn targets(
    specs: &[FileSpec],
    container_route: &[u8],
    sinks: &[(SinkKind, Arc<Wal>)],
    extra: &mut Vec<Arc<Wal>>,
) -> Vec<FileTarget> {
    specs
        .iter()
        .map(|s| {
            let own = s.sink.and_then(|k| {
                let w = sinks.iter().find(|(kind, _)| *kind == k).map(|(_, w)| w);
                if w.is_none() {
                    tracing::warn!(
                        tag = s.tag,
                        sink = k.name(),
                        "a log file's sink is not configured in this shipper: its records go with the container's"
                    );
                }
                w
            });
            match own {
                Some(w) => {
                    let i = extra.iter().position(|x| Arc::ptr_eq(x, w)).unwrap_or_else(|| {
                        extra.push(w.clone());
                        extra.len() - 1
                    });
                    FileTarget {
                        wal: Some(i),
                        route: s.route.clone().unwrap_or_default().into_bytes(),
                    }
                }
                None => FileTarget {
                    wal: None,
                    route: s
                        .route
                        .as_ref()
                        .filter(|_| s.sink.is_none())
                        .map_or_else(|| container_route.to_vec(), |r| r.clone().into_bytes()),
                },
            }
        })
        .collect()
}

/// True when one of `files` names a sink of its own that this shipper runs.
pub fn own_sink_runs(files: &[FileSpec], sinks: &[(SinkKind, Arc<Wal>)]) -> bool {
    files
        .iter()
        .filter_map(|f| f.sink)
        .any(|k| sinks.iter().any(|(w, _)| *w == k))
}

/// A registered container's log files (`None` when it names none, or when
/// none of their records would go anywhere: its own sink is not run here
/// and no file names one that is), and the buffers of the files with a
/// sink of their own. `enc` is the container's encoding, `own_wal` whether
/// its sink runs here, `sinks` every sink this shipper runs.
#[allow(clippy::too_many_arguments)]
pub fn for_container(
    reg: &crate::proto::Registration,
    enc: FileEncoding,
    own_wal: bool,
    sinks: &[(SinkKind, Arc<Wal>)],
    dir: Arc<SandboxDir>,
    cp: Option<FilesCheckpoint>,
    counters: Arc<FileCounters>,
) -> (Option<FileSources>, Vec<Arc<Wal>>) {
    let files = &reg.options.files;
    let mut extra = Vec::new();
    if files.is_empty() || !(own_wal || own_sink_runs(files, sinks)) {
        return (None, extra);
    }
    let to = targets(files, reg.options.route.as_bytes(), sinks, &mut extra);
    let f = FileSources::new(
        files.clone(),
        to,
        reg.options.file_caps,
        enc,
        dir,
        cp,
        counters,
    );
    (Some(f), extra)
}

/// A container's log files.
#[derive(Debug)]
pub struct FileSources {
    specs: Vec<FileSpec>,
    /// Where each spec's records go.
    to: Vec<FileTarget>,
    caps: FileCaps,
    enc: FileEncoding,
    dir: Arc<SandboxDir>,
    rules: Rules,
    files: Vec<Followed>,
    retired: VecDeque<FileCheckpoint>,
    /// From a checkpoint: files to take back at the first scan.
    resume: Vec<FileCheckpoint>,
    next_n: u64,
    /// `next_n` of the last saved checkpoint: a file numbered from it on is not
    /// read until a saved checkpoint names its number (a restarted worker may find
    /// the new files in another order and number them otherwise).
    saved_n: u64,
    last_scan: Option<Instant>,
    refused_seen: HashSet<Ident>,
    over_cap_noted: bool,
    counters: Arc<FileCounters>,
    /// The file whose read is under way and where its records stood (see
    /// [`FileSources::rewind`]).
    turn: Option<(usize, u64, u64)>,
    /// Lines framed since last taken.
    lines: u64,
    /// Read to the end and flushed after the container ended.
    pub done: bool,
}

/// One name a scan matched.
struct Match {
    spec: usize,
    rel: Vec<u8>,
    /// Descriptor of its directory, and its name there.
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    id: Ident,
}

impl FileSources {
    /// A container's files (`to`: where each spec's records go, see [`targets`]); `cp` is what a
    /// previous worker checkpointed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        specs: Vec<FileSpec>,
        to: Vec<FileTarget>,
        caps: FileCaps,
        enc: FileEncoding,
        dir: Arc<SandboxDir>,
        cp: Option<FilesCheckpoint>,
        counters: Arc<FileCounters>,
    ) -> FileSources {
        let rules = Rules {
            dev: dir.dev(),
            owner: dir.owner(),
        };
        let cp = cp.unwrap_or_default();
        FileSources {
            specs,
            to,
            caps,
            enc,
            dir,
            rules,
            files: Vec::new(),
            retired: cp.retired.into_iter().collect(),
            resume: cp.files,
            next_n: cp.next_n,
            saved_n: cp.next_n,
            last_scan: None,
            refused_seen: HashSet::new(),
            over_cap_noted: false,
            counters,
            turn: None,
            lines: 0,
            done: false,
        }
    }

    /// The checkpoint: followed files at their safe offsets; files still to
    /// be taken back stay as they were.
    pub fn checkpoint(&self) -> FilesCheckpoint {
        let mut files: Vec<FileCheckpoint> = self
            .files
            .iter()
            .map(|f| f.checkpoint(&self.specs[f.spec].tag))
            .collect();
        files.extend(self.resume.iter().cloned());
        FilesCheckpoint {
            next_n: self.next_n,
            files,
            retired: self.retired.iter().cloned().collect(),
        }
    }

    /// True when a file waits for a saved checkpoint naming its number
    /// before it is read: the caller saves one soon.
    pub fn unsaved_numbers(&self) -> bool {
        self.files.iter().any(|f| f.n >= self.saved_n)
    }

    /// `cp`, taken by [`Self::checkpoint`], is saved for good: the files
    /// numbered before it was taken (all it names) may be read. A file
    /// read before its number is saved could be found again by a restarted
    /// worker after another new one and be numbered otherwise: the lines
    /// read of it would then be shipped again under other ids.
    pub fn saved(&mut self, cp: &FilesCheckpoint) {
        self.saved_n = self.saved_n.max(cp.next_n);
    }

    /// Lines framed since the last call.
    pub fn take_lines(&mut self) -> u64 {
        std::mem::take(&mut self.lines)
    }

    fn pipeline(&self, spec: usize, rel: &[u8], n: u64) -> StreamPipeline {
        let s = &self.specs[spec];
        let ml = match &s.multiline {
            FileMultiline::Inherit => self.enc.multiline.clone(),
            FileMultiline::Off => None,
            FileMultiline::Indented(spec) => crate::shipper::worker::multiline_config(spec),
        };
        let enc = StreamEncoder::for_file(&self.enc.meta, rel, &s.tag, n, &self.enc.encode);
        StreamPipeline::with_encoder(enc, self.enc.max_line, ml)
    }

    /// The longest read window a file's pipeline needs.
    pub fn window_needed(&self) -> usize {
        self.files
            .iter()
            .map(|f| f.pipeline.window_needed())
            .max()
            .unwrap_or(0)
    }

    /// One turn: a scan when due, then up to `budget` bytes of each file;
    /// `out` gets each record with its route. True if anything was read.
    pub fn round(&mut self, buf: &mut [u8], budget: u64, out: &mut dyn FileOut) -> bool {
        if self.done {
            return false;
        }
        if self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            self.scan(buf);
        }
        let mut busy = false;
        for i in 0..self.files.len() {
            busy |= self.read_one(i, buf, budget, false, out) > 0;
        }
        self.retire_idle(buf, out);
        busy
    }

    /// Partial lines after `partial_flush` of silence, multiline timeouts.
    pub fn timers(&mut self, buf: &mut [u8], partial_flush: Duration, out: &mut dyn FileOut) {
        if self.done {
            return;
        }
        let flush_ms = u64::try_from(partial_flush.as_millis()).unwrap_or(u64::MAX);
        let now = mono_ms();
        for i in 0..self.files.len() {
            let f = &self.files[i];
            if f.unread() > 0 && now.saturating_sub(f.grew_ms) >= flush_ms {
                self.read_one(i, buf, u64::MAX, true, out);
            }
            let f = &mut self.files[i];
            let route = &self.to[f.spec];
            f.poll(false, &mut |e| out.record(route, e));
            out.file_done();
        }
    }

    /// The container ended: one last scan, every file read to its end, partial
    /// lines and pending records emitted.
    pub fn finish(&mut self, buf: &mut [u8], out: &mut dyn FileOut) {
        if self.done {
            return;
        }
        self.scan(buf);
        // A truncation found here adds its copy at the end: read too.
        let mut i = 0;
        while i < self.files.len() {
            while self.read_one(i, buf, u64::MAX, true, out) > 0 {}
            let f = &mut self.files[i];
            let route = &self.to[f.spec];
            f.poll(true, &mut |e| out.record(route, e));
            out.file_done();
            i += 1;
        }
        // A file numbered here is read by a later call, once saved.
        self.done = !self.unsaved_numbers();
    }

    /// Reads file `i`; handles a truncation. Returns the bytes consumed.
    fn read_one(
        &mut self,
        i: usize,
        buf: &mut [u8],
        budget: u64,
        flush: bool,
        out: &mut dyn FileOut,
    ) -> u64 {
        if self.files[i].n >= self.saved_n {
            return 0;
        }
        let f = &mut self.files[i];
        self.turn = Some((i, f.n, f.pipeline.safe_offset(f.off)));
        let route = &self.to[f.spec];
        let before = f.pipeline.lines;
        let res = f.read(buf, budget, flush, &mut |e| out.record(route, e));
        self.lines += f.pipeline.lines - before;
        let n = match res {
            Ok(Step::Read(n)) => n,
            Ok(Step::Truncated) => {
                self.truncated(i, out);
                1
            }
            Err(e) => {
                self.counters.read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    path = %String::from_utf8_lossy(&self.files[i].rel),
                    "reading a log file: {e} (retried)"
                );
                0
            }
        };
        self.turn = None;
        out.file_done();
        n
    }

    /// After a panic cut a read short: the file is put back where its
    /// records stood (its pending record is made again from the file). The
    /// caller drops the records of the cut turn.
    pub fn rewind(&mut self) {
        let Some((i, n, safe)) = self.turn.take() else {
            return;
        };
        let Some(f) = self.files.get(i).filter(|f| f.n == n) else {
            return;
        };
        let pipeline = self.pipeline(f.spec, &f.rel, n);
        let f = &mut self.files[i];
        f.pipeline = pipeline;
        f.off = safe;
    }

    /// File `i` is shorter than what was read of it: what was not read yet
    /// is read from its copy if one is found (followed under the file's old
    /// number from where it stood); the inode is then a new file.
    fn truncated(&mut self, i: usize, out: &mut dyn FileOut) {
        self.counters.truncations.fetch_add(1, Ordering::Relaxed);
        let f = &self.files[i];
        let (spec, cp, unread) = (f.spec, f.checkpoint(&self.specs[f.spec].tag), f.unread());
        if !self.follow_copy(spec, &cp) {
            // Nothing more of the old content can be read: its pending record goes.
            let route = &self.to[spec];
            self.files[i].poll(true, &mut |e| out.record(route, e));
            self.count_truncation_loss(&cp.path, unread);
        }
        let n = self.next_n;
        self.next_n += 1;
        self.counters.found.fetch_add(1, Ordering::Relaxed);
        let pipeline = self.pipeline(spec, &cp.path, n);
        let f = &mut self.files[i];
        f.n = n;
        f.off = 0;
        f.prefix.clear();
        f.seen_size = 0;
        f.pipeline = pipeline;
    }

    fn count_truncation_loss(&self, rel: &[u8], unread: u64) {
        if unread > 0 {
            self.counters
                .truncated_bytes_lost
                .fetch_add(unread, Ordering::Relaxed);
        }
        tracing::warn!(
            path = %String::from_utf8_lossy(rel),
            bytes_known_unread = unread,
            "log file truncated and no copy of it found: what was not read of it is lost"
        );
    }

    /// Follows the copy of the truncated file `cp` (see [`Self::find_copy`])
    /// from `cp.offset` under its number; false if there is none.
    fn follow_copy(&mut self, spec: usize, cp: &FileCheckpoint) -> bool {
        let Some(tf) = self.find_copy(&cp.path, cp.offset, &cp.prefix) else {
            return false;
        };
        self.counters
            .copies_recovered
            .fetch_add(1, Ordering::Relaxed);
        self.start(spec, cp.clone(), tf, false);
        true
    }

    /// Starts following `tf` as the file `at` says (number, path where it
    /// was found, offset, first bytes), for entry `spec`.
    fn start(&mut self, spec: usize, at: FileCheckpoint, tf: open::TaskFile, present: bool) {
        let pipeline = self.pipeline(spec, &at.path, at.n);
        self.counters.followed.fetch_add(1, Ordering::Relaxed);
        self.files.push(Followed {
            n: at.n,
            spec,
            rel: at.path,
            id: tf.id,
            file: tf.file,
            off: at.offset,
            prefix: at.prefix,
            pipeline,
            seen_size: at.offset,
            grew_ms: mono_ms(),
            seen_mtime: (0, 0),
            present,
        });
    }

    /// A file in `rel`'s directory, not followed, beginning with `prefix` and
    /// at least `off` long: a truncated file's copy.
    fn find_copy(&self, rel: &[u8], off: u64, prefix: &[u8]) -> Option<open::TaskFile> {
        if prefix.is_empty() {
            return None;
        }
        let (dir, _) = self.open_parent(rel)?;
        let (names, _) = open::list(dir.as_fd(), self.caps.max_dir_entries as usize).ok()?;
        for name in names {
            let Ok(Some(st)) = open::stat_at(dir.as_fd(), &name) else {
                continue;
            };
            let id = (st.st_dev, st.st_ino);
            if open::refusal(&st, self.rules, false).is_some()
                || u64::try_from(st.st_size).unwrap_or(0) < off
                || self.files.iter().any(|f| f.id == id)
            {
                continue;
            }
            if let Ok(Opened::Yes(tf)) = open::open_file(dir.as_fd(), &name, self.rules) {
                let start = follow::read_prefix(&tf.file, tf.size).unwrap_or_default();
                if start.len() as u64 >= (prefix.len() as u64).min(tf.size)
                    && same_start(&start, prefix)
                {
                    return Some(tf);
                }
            }
        }
        None
    }

    /// The directory holding `rel` and its last component.
    fn open_parent(&self, rel: &[u8]) -> Option<(OwnedFd, Vec<u8>)> {
        let mut comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        let name = comps.pop()?.to_vec();
        let mut fd = self.dir.as_fd().try_clone_to_owned().ok()?;
        for c in comps {
            match open::open_dir(fd.as_fd(), c, self.rules) {
                Ok(Opened::Yes(d)) => fd = d,
                _ => return None,
            }
        }
        Some((fd, name))
    }

    fn remember_retired(&mut self, cp: FileCheckpoint) {
        self.retired.retain(|r| r.id() != cp.id());
        if self.retired.len() == RETIRED_KEPT {
            self.retired.pop_front();
        }
        self.retired.push_back(cp);
    }

    /// Files no matching name holds, read to their end and unchanged for
    /// [`RETIRE_IDLE`]: their last partial line and pending record are
    /// emitted and they are closed.
    fn retire_idle(&mut self, buf: &mut [u8], out: &mut dyn FileOut) {
        let idle_ms = u64::try_from(RETIRE_IDLE.as_millis()).unwrap_or(u64::MAX);
        let now = mono_ms();
        let mut i = 0;
        while i < self.files.len() {
            let f = &self.files[i];
            let stale =
                !f.present && f.n < self.saved_n && now.saturating_sub(f.grew_ms) >= idle_ms;
            if stale && self.read_one(i, buf, u64::MAX, true, out) == 0 {
                let f = &mut self.files[i];
                let route = &self.to[f.spec];
                f.poll(true, &mut |e| out.record(route, e));
                out.file_done();
                let f = self.files.swap_remove(i);
                let cp = f.checkpoint(&self.specs[f.spec].tag);
                self.remember_retired(cp);
                self.counters.followed.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            i += 1;
        }
    }

    /// Finds the files the globs match now.
    fn scan(&mut self, buf: &mut [u8]) {
        self.last_scan = Some(Instant::now());
        let mut found = Vec::new();
        let Some(root) = self.root_fd() else {
            return;
        };
        for spec in 0..self.specs.len() {
            let glob = self.specs[spec].glob.clone();
            let comps: Vec<&[u8]> = glob.as_bytes().split(|&b| b == b'/').collect();
            self.walk(spec, &comps, root.clone(), Vec::new(), &mut found);
        }
        for f in &mut self.files {
            let was = f.present;
            f.present = found.iter().any(|m| m.id == f.id);
            if was && !f.present {
                self.counters.rotated.fetch_add(1, Ordering::Relaxed);
            }
        }
        for m in found {
            if self.files.iter().any(|f| f.id == m.id) {
                continue;
            }
            self.take(m, buf);
        }
        self.take_back_unmatched();
    }

    fn root_fd(&self) -> Option<Arc<OwnedFd>> {
        self.dir.as_fd().try_clone_to_owned().ok().map(Arc::new)
    }

    fn refused(&mut self, id: Ident, rel: &[u8], why: open::Refused) {
        if self.refused_seen.len() < REFUSED_KEPT && self.refused_seen.insert(id) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                sandbox = %self.dir.path().display(),
                path = %String::from_utf8_lossy(rel),
                "a name matching rein.log.files is not followed: {}",
                why.name()
            );
        }
    }

    /// Matches `comps` under `dir` (at `rel`), depth first.
    fn walk(
        &mut self,
        spec: usize,
        comps: &[&[u8]],
        dir: Arc<OwnedFd>,
        rel: Vec<u8>,
        found: &mut Vec<Match>,
    ) {
        let Some((&pat, rest)) = comps.split_first() else {
            return;
        };
        let wild = pat.contains(&b'*') || pat.contains(&b'?');
        let names = if wild {
            match open::list(dir.as_fd(), self.caps.max_dir_entries as usize) {
                Ok((names, more)) => {
                    if more {
                        self.counters.dirs_over_cap.fetch_add(1, Ordering::Relaxed);
                    }
                    names
                }
                Err(_) => return,
            }
        } else {
            vec![pat.to_vec()]
        };
        for name in names {
            if wild && !crate::file_spec::component_matches(pat, &name) {
                continue;
            }
            if rel.is_empty() && crate::file_spec::is_stream_file(&name) {
                continue;
            }
            let mut path = rel.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let Ok(Some(st)) = open::stat_at(dir.as_fd(), &name) else {
                continue;
            };
            let id = (st.st_dev, st.st_ino);
            if rest.is_empty() {
                match open::refusal(&st, self.rules, false) {
                    Some(why) => self.refused(id, &path, why),
                    None => found.push(Match {
                        spec,
                        rel: path,
                        dir: dir.clone(),
                        name,
                        id,
                    }),
                }
            } else {
                match open::open_dir(dir.as_fd(), &name, self.rules) {
                    Ok(Opened::Yes(sub)) => self.walk(spec, rest, Arc::new(sub), path, found),
                    Ok(Opened::Refused(why)) => self.refused(id, &path, why),
                    _ => {}
                }
            }
        }
    }

    /// Starts following a matched name: a file taken back from the
    /// checkpoint or the retired list, a truncated file's copy, or a new one.
    fn take(&mut self, m: Match, buf: &mut [u8]) {
        if self.files.len() >= self.caps.max_files as usize {
            if !self.over_cap_noted {
                self.over_cap_noted = true;
                self.counters.over_cap.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    sandbox = %self.dir.path().display(),
                    path = %String::from_utf8_lossy(&m.rel),
                    max = self.caps.max_files,
                    "the container follows max_log_files already: further log files are not followed"
                );
            }
            return;
        }
        let tf = match open::open_file(m.dir.as_fd(), &m.name, self.rules) {
            Ok(Opened::Yes(tf)) => tf,
            Ok(Opened::Refused(why)) => return self.refused(m.id, &m.rel, why),
            _ => return,
        };
        let prefix = follow::read_prefix(&tf.file, tf.size).unwrap_or_default();
        // Known before: from the checkpoint, or retired (a name matching it again).
        let known = self
            .resume
            .iter()
            .position(|c| c.id() == tf.id)
            .map(|i| self.resume.swap_remove(i))
            .or_else(|| {
                let i = self.retired.iter().position(|c| c.id() == tf.id)?;
                self.retired.remove(i)
            });
        let (n, off, rel) = match known {
            Some(c)
                if tf.size >= c.offset
                    && (same_start(&c.prefix, &prefix) || c.prefix.is_empty()) =>
            {
                (c.n, c.offset, c.path)
            }
            other => {
                if let Some(c) = other {
                    // Truncated (or its inode reused) while not followed: the
                    // old content's unread bytes are in its copy, if anywhere.
                    self.counters.truncations.fetch_add(1, Ordering::Relaxed);
                    if !self.follow_copy(m.spec, &c) {
                        self.count_truncation_loss(&c.path, 0);
                    }
                }
                let n = self.next_n;
                self.next_n += 1;
                self.counters.found.fetch_add(1, Ordering::Relaxed);
                (n, self.backlog_start(&tf, &m.rel, buf), m.rel.clone())
            }
        };
        let at = FileCheckpoint {
            n,
            path: rel,
            offset: off,
            prefix,
            ..FileCheckpoint::default()
        };
        self.start(m.spec, at, tf, true);
    }

    /// Where reading a newly found file starts: its beginning, or past the
    /// first line end in its last `log_file_max_backlog` bytes (the skipped
    /// bytes counted and logged).
    fn backlog_start(&self, tf: &open::TaskFile, rel: &[u8], buf: &mut [u8]) -> u64 {
        let max = self.caps.max_backlog;
        if tf.size <= max {
            return 0;
        }
        let mut at = tf.size - max;
        // The first line end at or after `at`: no record starts mid-line.
        if let Ok(got) = std::os::unix::fs::FileExt::read_at(&tf.file, buf, at - 1) {
            if let Some(p) = memchr::memchr(b'\n', &buf[..got]) {
                at = at - 1 + p as u64 + 1;
            }
        }
        self.counters
            .backlog_bytes_skipped
            .fetch_add(at, Ordering::Relaxed);
        tracing::warn!(
            path = %String::from_utf8_lossy(rel),
            skipped = at,
            "a log file found with more than log_file_max_backlog bytes: its oldest bytes are not shipped"
        );
        at
    }

    /// After the first scan, checkpointed files no matching name holds any
    /// more (rotated while no worker ran) are looked for in their directory
    /// by identity and read to their end; those not found are counted lost.
    fn take_back_unmatched(&mut self) {
        for c in std::mem::take(&mut self.resume) {
            let found = self.open_parent(&c.path).and_then(|(dir, _)| {
                let (names, _) =
                    open::list(dir.as_fd(), self.caps.max_dir_entries as usize).ok()?;
                names.into_iter().find_map(|name| {
                    let st = open::stat_at(dir.as_fd(), &name).ok()??;
                    if (st.st_dev, st.st_ino) != c.id() {
                        return None;
                    }
                    match open::open_file(dir.as_fd(), &name, self.rules).ok()? {
                        Opened::Yes(tf) => Some(tf),
                        _ => None,
                    }
                })
            });
            let spec = self.specs.iter().position(|s| s.tag == c.tag);
            match (found, spec) {
                (Some(tf), Some(spec)) if tf.size >= c.offset => {
                    let prefix = follow::read_prefix(&tf.file, tf.size).unwrap_or_default();
                    self.start(spec, FileCheckpoint { prefix, ..c }, tf, false);
                }
                (_, Some(spec)) if self.follow_copy(spec, &c) => {}
                _ => {
                    self.counters.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        sandbox = %self.dir.path().display(),
                        path = %String::from_utf8_lossy(&c.path),
                        "a followed log file was rotated away and removed while no worker ran: what was not read of it is lost"
                    );
                }
            }
        }
    }

    /// Files followed now.
    pub fn followed(&self) -> usize {
        self.files.len()
    }

    /// Stops following (the container is forgotten): the gauge goes down.
    pub fn release(&mut self) {
        let n = self.files.len() as u64;
        self.counters.followed.fetch_sub(n, Ordering::Relaxed);
        self.files.clear();
    }
}

#[cfg(test)]
mod tests;
