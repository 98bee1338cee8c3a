//! A parser thread: follows the sandbox files of its containers behind the
//! reader (which only splices), turns lines into records in the disk buffers,
//! and saves checkpoints behind synced records. A container is parsed by one
//! thread of the pool (`parser_pool`) for its whole life, so its streams'
//! order, checkpoints and panic rewind are this thread's alone; the disk
//! buffers are shared. A container writing faster than its thread parses is
//! throttled only when its unparsed bytes reach `max_unparsed_bytes` (the
//! reader stops reading its pipe).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use super::parse_job::{save_checkpoint, Checkpoint, ParseJob, RecordTags};

use super::counters::Counters;
use super::logfiles::{FileOut, FileSources, FileTarget};
use super::stream::{mono_ms, ParseStream, TurnStart};
use crate::record::{Encoded, Stream, StreamPipeline};
use crate::wal::Wal;

/// Bytes parsed per stream before the next stream's turn.
const TURN: u64 = 1 << 20;
/// Initial read window; it grows to the longest line a stream may frame
/// (`max_line_bytes` + newline, 8 MiB at most) the first time one needs it.
const WINDOW: usize = 256 * 1024;
/// Scratch memory an idle thread keeps (its read window and batches shrink
/// back to this; a busy turn grows the batch to several MiB).
const KEEP: usize = 64 * 1024;
/// Idle this long, a thread gives its scratch memory back.
const TRIM_AFTER: Duration = Duration::from_secs(1);
/// How often timers (partial lines, multiline timeouts, EOF) are looked at.
const TIMERS: Duration = Duration::from_millis(50);

/// Counts lines parsed, in the worker's total and the thread's own.
fn count_lines(counters: &Counters, mine: &AtomicU64, n: u64) {
    if n > 0 {
        counters.lines_read.fetch_add(n, Ordering::Relaxed);
        mine.fetch_add(n, Ordering::Relaxed);
    }
}

/// Records framed for a disk buffer, handed over once per stream turn (one
/// lock instead of one per record).
#[derive(Debug, Default)]
struct Framed {
    bytes: Vec<u8>,
    records: u64,
}

impl Framed {
    /// Hands the batch to `wal` (counted once written, by [`commit`]).
    fn flush(&mut self, wal: Option<&Wal>) {
        if let Some(w) = wal {
            w.push_framed_vec(&mut self.bytes, self.records);
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records = 0;
    }

    /// Gives back what a busy turn grew beyond [`KEEP`] (once the thread is
    /// idle: every parser thread keeps its own batches).
    fn trim(&mut self) {
        self.bytes.shrink_to(KEEP);
    }
}

/// The stream whose turn is under way (its records are in [`Framed`] until
/// the turn ends).
#[derive(Debug)]
struct Turn {
    job: usize,
    stream: usize,
    start: TurnStart,
}

/// Writes what `wal` has queued; true when it is all written. A failure is
/// counted and logged by the buffer, which keeps the records queued: the
/// streams feeding it are held back until a retry succeeds.
fn commit(wal: &Wal, counters: &Counters) -> bool {
    counted(wal.commit(), counters)
}

/// The same after a turn: while another parser thread writes to `wal`, it
/// writes these records too and this one goes on parsing.
fn commit_or_leave(wal: &Wal, counters: &Counters) -> bool {
    counted(wal.commit_or_leave(), counters)
}

fn counted(written: Result<u64, crate::wal::WalError>, counters: &Counters) -> bool {
    match written {
        Ok(n) => {
            counters.records_buffered.fetch_add(n, Ordering::Relaxed);
            true
        }
        Err(_) => false,
    }
}

/// Builds the per-record sink of a stream: frames each record into `framed`
/// (only when `buffered`: else records go nowhere).
fn emitter<'a>(
    framed: &'a mut Framed,
    buffered: bool,
    tags: &'a RecordTags,
    stream: Stream,
) -> impl FnMut(Encoded<'_>) + 'a {
    move |e: Encoded<'_>| {
        if buffered {
            let (cid, route) = (&tags.cid, &tags.route);
            crate::walrec::frame_encoded(&mut framed.bytes, stream, cid, route, &e);
            framed.records += 1;
            crate::fault::point("parser_record");
        }
    }
}

/// The record sink of a container's log files: each file's records are
/// framed for their buffer and handed to it once the file's read is done.
struct FileEmit<'a> {
    main: &'a mut Framed,
    extra: &'a mut [Framed],
    cid: &'a [u8],
    wal: Option<&'a Wal>,
    file_wals: &'a [Arc<Wal>],
    /// Records handed over.
    made: u64,
}

impl FileOut for FileEmit<'_> {
    fn record(&mut self, to: &FileTarget, e: Encoded<'_>) {
        let framed = match to.wal {
            Some(i) => &mut self.extra[i],
            None => &mut *self.main,
        };
        crate::walrec::frame_encoded(&mut framed.bytes, Stream::File, self.cid, &to.route, &e);
        framed.records += 1;
        crate::fault::point("parser_record");
    }

    fn file_done(&mut self) {
        self.made += self.main.records + self.extra.iter().map(|x| x.records).sum::<u64>();
        self.main.flush(self.wal);
        for (x, w) in self.extra.iter_mut().zip(self.file_wals) {
            x.flush(Some(w));
        }
    }
}

/// Settings of the parser thread.
#[derive(Debug, Clone)]
pub struct ParserConfig {
    /// A line without newline is parsed after this much silence.
    pub partial_flush: Duration,
    /// How often checkpoints are saved (after a buffer sync).
    pub checkpoint_interval: Duration,
}

/// One running parser thread; [`super::parser_pool::ParserPool`] holds them.
#[derive(Debug)]
pub struct Parser {
    /// New containers (a channel: the reader never waits for this thread,
    /// which may run under `SCHED_IDLE`).
    inbox: Sender<ParseJob>,
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicI32>,
    /// Containers handed over and not finished yet.
    live: Arc<AtomicUsize>,
    /// Lines this thread parsed (its liveness).
    lines: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

struct Ctx {
    /// The thread's place in the pool (its share of the gauges).
    index: usize,
    cfg: ParserConfig,
    wals: Vec<Arc<Wal>>,
    counters: Arc<Counters>,
    inbox: Receiver<ParseJob>,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    lines: Arc<AtomicU64>,
    jobs: Vec<ParseJob>,
    buf: Vec<u8>,
    framed: Framed,
    /// Records of log files with a sink of their own, per extra buffer.
    framed_extra: Vec<Framed>,
    /// Set from a stream's turn start until its records are handed to its
    /// buffer: after a panic, where that stream is put back.
    turn: Option<Turn>,
    /// When a failed checkpoint save was last logged.
    checkpoint_error_logged: Option<Instant>,
}

impl Parser {
    /// Starts parser thread `index` (named `parser-<index>`); `wals` are
    /// every sink's buffer (synced before checkpoints).
    pub fn start(
        index: usize,
        cfg: ParserConfig,
        wals: Vec<Arc<Wal>>,
        counters: Arc<Counters>,
    ) -> std::io::Result<Parser> {
        let (inbox, inbox_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(AtomicU64::new(0));
        let mut ctx = Ctx {
            index,
            cfg,
            wals,
            counters,
            inbox: inbox_rx,
            stop: stop.clone(),
            live: live.clone(),
            lines: lines.clone(),
            jobs: Vec::new(),
            buf: vec![0u8; WINDOW],
            framed: Framed::default(),
            framed_extra: Vec::new(),
            turn: None,
            checkpoint_error_logged: None,
        };
        let tid = Arc::new(AtomicI32::new(0));
        let tid_set = tid.clone();
        let name = format!("parser-{index}");
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                tid_set.store(super::parser_sched::current_tid(), Ordering::Release);
                // A panic restarts the loop with every stream where it was;
                // the other parser threads go on meanwhile.
                let (counters, stop) = (ctx.counters.clone(), ctx.stop.clone());
                super::threads::contain(&name, &counters.thread_panics_parser, &stop, |again| {
                    if again {
                        ctx.after_panic();
                    }
                    ctx.run();
                });
            })?;
        Ok(Parser {
            inbox,
            stop,
            tid,
            live,
            lines,
            thread: Some(thread),
        })
    }

    /// The thread's id (0 until it has started).
    pub fn tid(&self) -> libc::pid_t {
        self.tid.load(Ordering::Acquire)
    }

    /// Containers it follows (handed over, not finished).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Lines it parsed so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Hands a container over.
    pub fn add(&self, job: ParseJob) {
        self.live.fetch_add(1, Ordering::Relaxed);
        // The thread only goes away at `stop`, after the last `add`.
        let _ = self.inbox.send(job);
        self.wake();
    }

    /// New bytes were written.
    pub fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Asks the thread to stop where it is (see [`Parser::join`]).
    pub fn ask_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    /// Waits for the thread, which syncs the buffers and saves every
    /// checkpoint before it ends (a restarted worker parses on from there).
    pub fn join(&mut self) {
        self.ask_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Ctx {
    /// Makes the state consistent again after a panic. Outside a stream's
    /// turn it is (the records of earlier turns are queued in their own
    /// buffers). Inside one, the records that turn made so far are dropped
    /// (they must not reach the buffer of whichever job comes next) and the
    /// stream is put back where the turn started: its next turn makes them
    /// again, once, for its own buffer; its lines are counted then. A panic
    /// in here leaves `turn` set, so the next try starts over from the same
    /// point.
    fn after_panic(&mut self) {
        self.framed.clear();
        self.framed_extra.iter_mut().for_each(Framed::clear);
        for j in &mut self.jobs {
            if let Some(f) = j.files.as_mut() {
                f.rewind();
                j.dirty = true;
            }
        }
        let Some(t) = self.turn.as_ref() else {
            return;
        };
        let (ji, si, start) = (t.job, t.stream, t.start.clone());
        if let Some(j) = self.jobs.get_mut(ji).filter(|j| si < j.streams.len()) {
            j.dirty = true;
            let s = &mut j.streams[si];
            let mut emit = emitter(&mut self.framed, j.wal.is_some(), &j.tags, s.shared.stream);
            if let Err(e) = s.rewind(start, &mut self.buf, &mut emit) {
                tracing::error!(
                    container = j.key,
                    "rebuilding a pending record after a panic: {e}"
                );
            }
            drop(emit);
            self.framed.flush(j.wal.as_deref());
            tracing::warn!(
                container = j.key,
                stream = s.shared.stream.name(),
                "the parse turn cut short by the panic is parsed again"
            );
        }
        self.turn = None;
    }

    /// Shrinks the scratch buffers back once nothing is left to parse.
    fn trim(&mut self) {
        if self.framed.bytes.capacity() > KEEP {
            self.framed.trim();
        }
        self.framed_extra.iter_mut().for_each(Framed::trim);
        if self.buf.len() > WINDOW {
            self.buf.truncate(WINDOW);
            self.buf.shrink_to_fit();
        }
    }

    fn run(&mut self) {
        let mut last_checkpoint = Instant::now();
        let mut last_timers = Instant::now();
        let mut idle_since: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            self.jobs.extend(self.inbox.try_iter());
            let busy = !stopping && self.parse_round();
            let mut finishing = false;
            if last_timers.elapsed() >= TIMERS {
                finishing = self.timers();
                last_timers = Instant::now();
            }
            let since = last_checkpoint.elapsed();
            // A log file newly numbered is read once a checkpoint names it:
            // saved without waiting for the whole interval.
            let numbered = since >= TIMERS.min(self.cfg.checkpoint_interval)
                && self
                    .jobs
                    .iter()
                    .any(|j| j.files.as_ref().is_some_and(FileSources::unsaved_numbers));
            if stopping || finishing || numbered || since >= self.cfg.checkpoint_interval {
                self.checkpoint(stopping);
                last_checkpoint = Instant::now();
            }
            if stopping {
                return;
            }
            if busy {
                idle_since = None;
            } else {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= TRIM_AFTER {
                    self.trim();
                }
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
    }

    /// Runs `f` on every stream with the stream's record sink; `f` gets the
    /// read buffer, whether the job's disk buffer is full (or stalled by a
    /// failing write: the stream must not move on) and the job's key, and
    /// says whether it changed the stream. The records go to the buffer after
    /// each stream (committed after each job: a full buffer's bound is
    /// overshot by one turn at most), and the lines are counted.
    fn each_stream(
        &mut self,
        mut f: impl FnMut(&mut ParseStream, &mut [u8], bool, &str, &mut dyn FnMut(Encoded<'_>)) -> bool,
    ) {
        let mut stalled = 0;
        let mut retried: Vec<Arc<Wal>> = Vec::new();
        for (ji, j) in self.jobs.iter_mut().enumerate() {
            if let Some(w) = j.wal.as_ref().filter(|w| w.is_stalled()) {
                // Retries the held-back write (once a round, once its backoff
                // passed) before anything new is parsed.
                if !retried.iter().any(|r| Arc::ptr_eq(r, w)) {
                    retried.push(w.clone());
                    if w.retry_due() {
                        commit(w, &self.counters);
                    }
                }
            }
            let held = j.wal.as_ref().is_some_and(|w| w.is_stalled());
            if held {
                stalled += j.streams.iter().filter(|s| !s.done).count() as u64;
            }
            let full = held || j.wal.as_ref().is_some_and(|w| w.is_full());
            let buffered = j.wal.is_some();
            for (si, s) in j.streams.iter_mut().enumerate() {
                // A window shorter than a whole line (split at `max_line_bytes`) would
                // end inside an overlong line and never be consumed: the stream would
                // stall for good. One buffer, as large as the largest line bound.
                let need = s.pipeline.as_ref().map_or(0, StreamPipeline::window_needed);
                if self.buf.len() < need {
                    self.buf.resize(need, 0);
                }
                let before = s.pipeline.as_ref().map_or(0, |p| p.lines);
                self.turn = Some(Turn {
                    job: ji,
                    stream: si,
                    start: s.turn_start(),
                });
                let mut emit = emitter(&mut self.framed, buffered, &j.tags, s.shared.stream);
                j.dirty |= f(s, &mut self.buf, full, &j.key, &mut emit);
                drop(emit);
                self.framed.flush(j.wal.as_deref());
                let after = s.pipeline.as_ref().map_or(0, |p| p.lines);
                count_lines(&self.counters, &self.lines, after - before);
                self.turn = None;
            }
            if let Some(w) = j.wal.as_ref().filter(|_| !held) {
                commit_or_leave(w, &self.counters);
            }
        }
        self.counters
            .buffer_stall
            .note(self.index, stalled, &self.counters);
    }

    /// One turn of every stream; true if anything was parsed.
    fn parse_round(&mut self) -> bool {
        let mut busy = false;
        self.each_stream(|s, buf, full, key, emit| {
            // A full buffer (policy `pause`) stops parsing; the reader stops reading.
            if full || s.done {
                return false;
            }
            let eof = s.shared.eof.load(Ordering::Acquire);
            let mut dirty = false;
            match s.parse(buf, TURN, eof, emit) {
                Ok(n) if n > 0 => {
                    busy = true;
                    dirty = true;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(container = key, "reading back: {e}"),
            }
            if eof && s.fully_parsed() {
                s.poll(true, emit);
                s.done = true;
                dirty = true;
            }
            dirty
        });
        busy | self.files_round(|f, buf, out| f.round(buf, TURN, out))
    }

    /// Runs `f` on every container's log files with a record sink framing
    /// each record with its route; a container whose streams are all done
    /// gets its files finished (read to the end). True if anything was read.
    fn files_round(
        &mut self,
        mut f: impl FnMut(&mut FileSources, &mut [u8], &mut dyn FileOut) -> bool,
    ) -> bool {
        let mut busy = false;
        for j in &mut self.jobs {
            let Some(files) = j.files.as_mut() else {
                continue;
            };
            let held = j
                .wal
                .iter()
                .chain(j.file_wals.iter())
                .any(|w| w.is_stalled() || w.is_full());
            if held || files.done {
                continue;
            }
            let need = files.window_needed();
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
            self.framed_extra
                .resize_with(j.file_wals.len(), Framed::default);
            let mut out = FileEmit {
                main: &mut self.framed,
                extra: &mut self.framed_extra,
                cid: &j.tags.cid,
                wal: j.wal.as_deref(),
                file_wals: &j.file_wals,
                made: 0,
            };
            let did = if j.streams.iter().all(|s| s.done) {
                files.finish(&mut self.buf, &mut out);
                // Not busy while a file waits for its number to be saved.
                !files.unsaved_numbers()
            } else {
                f(files, &mut self.buf, &mut out)
            };
            out.file_done();
            let made = out.made;
            count_lines(&self.counters, &self.lines, files.take_lines());
            if did || made > 0 || files.unsaved_numbers() {
                j.dirty = true;
            }
            if made > 0 {
                for w in j.wal.iter().chain(j.file_wals.iter()) {
                    commit_or_leave(w, &self.counters);
                }
            }
            busy |= did;
        }
        busy
    }

    /// Partial lines after `partial_flush` of silence, multiline timeouts;
    /// true if a container finished.
    fn timers(&mut self) -> bool {
        let now = mono_ms();
        let flush_ms = u64::try_from(self.cfg.partial_flush.as_millis()).unwrap_or(u64::MAX);
        self.each_stream(|s, buf, full, _, emit| {
            // A line without newline is shipped after `partial_flush` of silence,
            // but never while bytes wait in the pipe (the reader was held back).
            let idle = now.saturating_sub(s.shared.last_data_ms.load(Ordering::Relaxed));
            let mut dirty = false;
            if !full
                && !s.done
                && idle >= flush_ms
                && !s.shared.pipe_waiting.load(Ordering::Relaxed)
                && s.unparsed_in_current() > 0
            {
                let _ = s.parse(buf, TURN, true, emit);
                dirty = true;
            }
            s.poll(false, emit);
            dirty
        });
        let flush = self.cfg.partial_flush;
        self.files_round(|f, buf, out| {
            f.timers(buf, flush, out);
            false
        });
        self.jobs.iter().any(ParseJob::all_done)
    }

    /// Records first, then the offsets that point past them; finished
    /// containers are handed back to the reader. A container whose buffer
    /// could not write or sync everything keeps its last checkpoint (a
    /// restart parses again from there; the records have deterministic ids),
    /// and so does one whose checkpoint could not be saved: `saved`, which
    /// decides which rotated files are kept, only moves with a saved file.
    fn checkpoint(&mut self, all: bool) {
        let mut durable = Vec::with_capacity(self.wals.len());
        for w in &self.wals {
            // `sync` logs and counts its failures (rate-limited). A stalled
            // buffer is not durable; it is tried only once its backoff passed.
            durable.push(w.retry_due() && commit(w, &self.counters) && w.sync().is_ok());
        }
        let wals = &self.wals;
        let is_durable = |w: &Arc<Wal>| {
            wals.iter()
                .position(|x| Arc::ptr_eq(x, w))
                .is_none_or(|i| durable[i])
        };
        for j in &mut self.jobs {
            if !(j.dirty || all)
                || !j.wal.as_ref().is_none_or(is_durable)
                || !j.file_wals.iter().all(is_durable)
            {
                continue;
            }
            match save_checkpoint(&j.dir, &j.streams, j.files.as_ref()) {
                Ok(saved) => {
                    j.dirty = false;
                    if let (Some(f), Some(cp)) = (j.files.as_mut(), saved.files.as_ref()) {
                        f.saved(cp);
                    }
                    for s in &j.streams {
                        let cp = s.checkpoint();
                        s.shared.saved.store(cp.base + cp.offset, Ordering::Release);
                    }
                }
                Err(e) => {
                    self.counters
                        .checkpoint_save_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if self
                        .checkpoint_error_logged
                        .is_none_or(|t| t.elapsed() >= crate::wal::LOG_EVERY)
                    {
                        self.checkpoint_error_logged = Some(Instant::now());
                        tracing::error!(
                            container = j.key,
                            "checkpoint not saved (retried; nothing is deleted on its account): {e}"
                        );
                    }
                }
            }
        }
        self.jobs.retain_mut(|j| {
            let done = !j.dirty && j.all_done();
            if done {
                if let Some(f) = j.files.as_mut() {
                    f.release();
                }
                j.finished.store(true, Ordering::Release);
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
            !done
        });
    }
}
