//! One stream's pipeline: framing -> optional multiline -> encoding.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use super::encode::{BinaryMode, EncodeOptions, SourceMeta, StreamEncoder};
use super::frame::Framer;
use super::multiline::{Multiline, MultilineConfig, Record};
use super::Stream;

/// A record ready for the disk buffer.
#[derive(Clone, Copy, Debug)]
pub struct Encoded<'a> {
    /// Stream offset of the record's first byte.
    pub offset: u64,
    /// Record timestamp, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Deterministic document id.
    pub id: &'a [u8],
    /// The ECS JSON document.
    pub doc: &'a [u8],
    /// The parts every document of the stream has alike, and where `doc`
    /// holds them (`None`: not known).
    pub parts: Option<DocParts<'a>>,
}

/// The parts every document of a stream has alike (the disk buffer holds
/// them once per segment, see [`crate::walrec`]) and where a document holds them.
#[derive(Clone, Copy, Debug)]
pub struct DocParts<'a> {
    /// Start of every id.
    pub id_prefix: &'a [u8],
    /// The `log` object's start, up to its `"offset":`.
    pub log_head: &'a [u8],
    /// The fields after the `log` object.
    pub tail: &'a [u8],
    /// Offset of `log_head` in the document.
    pub head_at: usize,
    /// Offset of `tail` in the document.
    pub tail_at: usize,
    /// The first record of a run (one call of [`StreamPipeline::feed`] or
    /// [`StreamPipeline::poll`]), whose records go to one buffer together:
    /// the run's meta frame goes before it.
    pub fresh: bool,
    /// The run's meta key, kept here by the framer of its first record.
    pub key: &'a AtomicU64,
}

/// Where a pipeline stands between two calls, cheap to take: a pending
/// multiline record is not copied (its lines are still in the stream's file,
/// from `pending` on, and a rewind reads them again).
#[derive(Clone, Copy, Debug)]
pub struct PipelineMark {
    part: u32,
    lines: u64,
    empty_lines: u64,
    /// Stream offset of the pending multiline record, if any.
    pub pending: Option<u64>,
}

/// Per-stream parsing state. Memory is a few hundred bytes plus a pending
/// multiline record; unconsumed bytes stay in the spool (sandbox) file.
#[derive(Debug)]
pub struct StreamPipeline {
    framer: Framer,
    multiline: Option<Multiline>,
    enc: StreamEncoder,
    /// [`BinaryMode::Base64`]: every line is a record and none is joined to
    /// the line that follows without a `\n` between them, so the records
    /// rebuild the stream exactly.
    exact: bool,
    doc: Vec<u8>,
    id: Vec<u8>,
    /// The next record is the first of its run (see [`DocParts::fresh`]).
    fresh: bool,
    /// The run's meta key (see [`DocParts::key`]).
    meta_key: AtomicU64,
    /// Empty lines not shipped (text mode; they stay in the sandbox file).
    pub empty_lines: u64,
    /// Lines framed (pieces of split lines count once each).
    pub lines: u64,
}

impl StreamPipeline {
    /// A pipeline for one stream of one container.
    pub fn new(
        meta: &SourceMeta,
        stream: Stream,
        opts: &EncodeOptions,
        max_line: usize,
        multiline: Option<MultilineConfig>,
    ) -> Self {
        Self::with_encoder(StreamEncoder::new(meta, stream, opts), max_line, multiline)
    }

    /// The same with an encoder made by the caller (a log file's).
    pub fn with_encoder(
        enc: StreamEncoder,
        max_line: usize,
        multiline: Option<MultilineConfig>,
    ) -> Self {
        StreamPipeline {
            framer: Framer::new(max_line),
            multiline: multiline.map(Multiline::new),
            exact: enc.binary() == BinaryMode::Base64,
            enc,
            doc: Vec::new(),
            id: Vec::new(),
            fresh: true,
            meta_key: AtomicU64::new(0),
            empty_lines: 0,
            lines: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        enc: &mut StreamEncoder,
        doc: &mut Vec<u8>,
        id: &mut Vec<u8>,
        (fresh, key): (&mut bool, &AtomicU64),
        rec: &Record<'_>,
        read_ms: i64,
        out: &mut (impl FnMut(Encoded<'_>) + ?Sized),
    ) {
        doc.clear();
        id.clear();
        let ts_ms = enc.encode(rec, read_ms, doc);
        enc.push_id(rec.offset, id);
        let (id_prefix, log_head, tail, (head_at, tail_at)) = enc.parts();
        out(Encoded {
            offset: rec.offset,
            ts_ms,
            id,
            doc,
            parts: Some(DocParts {
                id_prefix,
                log_head,
                tail,
                head_at,
                tail_at,
                fresh: std::mem::take(fresh),
                key,
            }),
        });
    }

    /// Parses `buf` (starting at stream offset `base`); returns bytes consumed.
    /// `flush` also emits a trailing partial line (end of stream / timeout).
    pub fn feed(
        &mut self,
        buf: &[u8],
        base: u64,
        flush: bool,
        now: Instant,
        read_ms: i64,
        out: &mut (impl FnMut(Encoded<'_>) + ?Sized),
    ) -> usize {
        let StreamPipeline {
            framer,
            multiline,
            enc,
            exact,
            doc,
            id,
            fresh,
            meta_key,
            empty_lines,
            lines,
        } = self;
        *fresh = true;
        framer.frame(buf, base, flush, |line| {
            *lines += 1;
            if line.bytes.is_empty() && line.split.is_none() && !*exact {
                *empty_lines += 1;
                return;
            }
            match multiline {
                Some(m) => {
                    let mut f = |r: Record<'_>| {
                        Self::emit(enc, doc, id, (fresh, meta_key), &r, read_ms, out)
                    };
                    m.push(line, now, &mut f);
                    // The line's newline is not there yet: what follows it
                    // belongs to the same line, never after a joining `\n`.
                    if *exact && !line.terminated {
                        m.flush(&mut f);
                    }
                }
                None => Self::emit(
                    enc,
                    doc,
                    id,
                    (fresh, meta_key),
                    &Record::of_line(&line),
                    read_ms,
                    out,
                ),
            }
        })
    }

    /// Emits a multiline record whose flush timeout has passed (`force`: now).
    pub fn poll(
        &mut self,
        now: Instant,
        read_ms: i64,
        force: bool,
        out: &mut (impl FnMut(Encoded<'_>) + ?Sized),
    ) {
        let StreamPipeline {
            multiline,
            enc,
            doc,
            id,
            fresh,
            meta_key,
            ..
        } = self;
        *fresh = true;
        if let Some(m) = multiline {
            let mut f =
                |r: Record<'_>| Self::emit(enc, doc, id, (fresh, meta_key), &r, read_ms, out);
            if force {
                m.flush(&mut f)
            } else {
                m.poll(now, &mut f)
            }
        }
    }

    /// The offset up to which everything has been emitted, given that the
    /// framer consumed up to `consumed`: a restart resumes parsing there.
    pub fn safe_offset(&self, consumed: u64) -> u64 {
        match self.multiline.as_ref().and_then(Multiline::pending_offset) {
            Some(p) => p.min(consumed),
            None => consumed,
        }
    }

    /// Where the pipeline stands (see [`StreamPipeline::rewind`]).
    pub fn mark(&self) -> PipelineMark {
        PipelineMark {
            part: self.framer.part(),
            lines: self.lines,
            empty_lines: self.empty_lines,
            pending: self.multiline.as_ref().and_then(Multiline::pending_offset),
        }
    }

    /// Puts the pipeline back to `mark`, whatever a call cut short by a panic
    /// left half-updated. `replay` must feed again, through the given
    /// pipeline, the stream's bytes from `mark.pending` to where the mark was
    /// taken (it is not called when no record was pending): the lines of the
    /// pending record are joined again. The line counters are the mark's
    /// afterwards, so no line is counted twice.
    pub fn rewind<E>(
        &mut self,
        mark: &PipelineMark,
        replay: impl FnOnce(&mut Self) -> Result<(), E>,
    ) -> Result<(), E> {
        self.framer.resume_part(0);
        if let Some(m) = self.multiline.as_mut() {
            m.discard();
        }
        let res = match mark.pending {
            Some(_) => replay(self),
            None => Ok(()),
        };
        self.framer.resume_part(mark.part);
        self.lines = mark.lines;
        self.empty_lines = mark.empty_lines;
        res
    }

    /// True while a multiline record is pending.
    pub fn has_pending(&self) -> bool {
        self.multiline
            .as_ref()
            .is_some_and(|m| m.pending_offset().is_some())
    }

    /// Smallest read window with which [`StreamPipeline::feed`] always
    /// consumes something (see [`Framer::window_needed`]).
    pub fn window_needed(&self) -> usize {
        self.framer.window_needed()
    }

    /// True while the framer is in the middle of a split line.
    pub fn in_split(&self) -> bool {
        self.framer.in_split()
    }
}
