//! The parser half of a stream: follows the sandbox file (and the rotated
//! files it has not finished) from a checkpointed offset, feeding the
//! stream's pipeline; a parse turn cut short by a panic is rewound.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use super::{now_ms, Segment, StreamCheckpoint, StreamShared};
use crate::record::{Encoded, PipelineMark, StreamPipeline};

/// Parser half of a stream.
#[derive(Debug)]
pub struct ParseStream {
    /// Shared with the reader half.
    pub shared: Arc<StreamShared>,
    /// Parser (`None` for the `none` sink: nothing is parsed).
    pub pipeline: Option<StreamPipeline>,
    /// The file being parsed.
    pub seg: Segment,
    /// Files after it, oldest first (received from the reader).
    pub(super) later: VecDeque<Segment>,
    pub(super) later_rx: Receiver<Segment>,
    /// Bytes of it parsed so far.
    pub off: u64,
    /// Final records emitted after EOF.
    pub done: bool,
}

/// Where a stream's parse turn started: enough to put the stream back there
/// when the turn was cut short by a panic (see [`ParseStream::rewind`]).
#[derive(Clone, Debug)]
pub struct TurnStart {
    seg: Segment,
    later: VecDeque<Segment>,
    off: u64,
    done: bool,
    pipeline: Option<PipelineMark>,
}

impl ParseStream {
    /// The checkpoint of what has been turned into buffered records.
    pub fn checkpoint(&self) -> StreamCheckpoint {
        let consumed = self.seg.base + self.off;
        let safe = self
            .pipeline
            .as_ref()
            .map_or(consumed, |p| p.safe_offset(consumed));
        StreamCheckpoint {
            inode: self.seg.inode,
            offset: safe.saturating_sub(self.seg.base),
            base: self.seg.base,
        }
    }

    /// Where a parse turn starts: see [`ParseStream::rewind`].
    pub fn turn_start(&self) -> TurnStart {
        TurnStart {
            seg: self.seg.clone(),
            later: self.later.clone(),
            off: self.off,
            done: self.done,
            pipeline: self.pipeline.as_ref().map(StreamPipeline::mark),
        }
    }

    /// Puts the stream back where its turn started, after a panic cut the
    /// turn short. The records that turn made are the caller's to discard:
    /// the next turn makes them again (same bytes, same ids), so each reaches
    /// the buffer once. Files received during the turn stay queued behind the
    /// turn's own; a pending multiline record is rebuilt from the file (`buf`
    /// is the read window; a record that rebuilding completes, which only a
    /// partial line flushed inside the pending record can cause, goes to
    /// `out`: it was never emitted). If that read fails, the stream resumes
    /// at the pending record instead (its lines are counted twice in
    /// `lines_read`, nothing is lost or buffered twice).
    pub fn rewind(
        &mut self,
        start: TurnStart,
        buf: &mut [u8],
        out: &mut dyn FnMut(Encoded<'_>),
    ) -> std::io::Result<()> {
        let mut files = start.later;
        for s in std::iter::once(&self.seg).chain(self.later.iter()) {
            let known = std::iter::once(&start.seg)
                .chain(files.iter())
                .any(|k| Arc::ptr_eq(&k.file, &s.file));
            if !known {
                files.push_back(s.clone());
            }
        }
        self.seg = start.seg;
        self.later = files;
        self.off = start.off;
        self.done = start.done;
        let mut res = Ok(());
        if let (Some(p), Some(mark)) = (self.pipeline.as_mut(), start.pipeline) {
            let (seg, off) = (&self.seg, self.off);
            res = p.rewind(&mark, |p| {
                // A record never spans two files: the pending one starts in this one.
                let from = mark.pending.unwrap_or(0).saturating_sub(seg.base).min(off);
                replay(p, seg, from, off, buf, out)
            });
            if res.is_err() {
                self.off = mark
                    .pending
                    .map_or(self.off, |o| o.saturating_sub(self.seg.base));
            }
        }
        self.shared
            .parsed
            .store(self.seg.base + self.off, Ordering::Release);
        res
    }

    /// End of the current file as far as the reader wrote it, and whether it
    /// is final (a newer file follows).
    fn end(&mut self) -> (u64, bool) {
        // `written` first: if it counts bytes of a newer file, the reader sent
        // that file before (release/acquire), so the receive below sees it.
        let written = self.shared.written.load(Ordering::Acquire);
        self.later.extend(self.later_rx.try_iter());
        match self.later.front() {
            Some(n) => (
                self.seg.end.unwrap_or(n.base.saturating_sub(self.seg.base)),
                true,
            ),
            None => (written.saturating_sub(self.seg.base), false),
        }
    }

    /// Parses up to about `budget` bytes past the parse offset, following
    /// rotated files; a trailing partial line of the current file is emitted
    /// only with `flush`. Returns the bytes consumed.
    pub fn parse(
        &mut self,
        buf: &mut [u8],
        budget: u64,
        flush: bool,
        out: &mut dyn FnMut(Encoded<'_>),
    ) -> std::io::Result<u64> {
        crate::fault::point("parser");
        let now = Instant::now();
        let ms = now_ms();
        let mut done = 0u64;
        loop {
            let (end, last_of_file) = self.end();
            match self.pipeline.as_mut() {
                None => {
                    done += end.saturating_sub(self.off);
                    self.off = end.max(self.off);
                }
                Some(p) => {
                    while self.off < end && done < budget {
                        let want = usize::try_from(end - self.off)
                            .unwrap_or(usize::MAX)
                            .min(buf.len());
                        self.seg.file.read_exact_at(&mut buf[..want], self.off)?;
                        let at_end = self.off + want as u64 == end;
                        let used = p.feed(
                            &buf[..want],
                            self.seg.base + self.off,
                            (flush || last_of_file) && at_end,
                            now,
                            ms,
                            out,
                        );
                        self.off += used as u64;
                        done += used as u64;
                        // `used < want` only means the window ended inside a line: read
                        // on from there. Nothing used means a partial last line (lines
                        // longer than the buffer cannot occur: the framer splits them).
                        if used == 0 {
                            break;
                        }
                    }
                }
            }
            if last_of_file && self.off >= end {
                // A record never spans two files.
                if let Some(p) = self.pipeline.as_mut() {
                    p.poll(now, ms, true, out);
                }
                if let Some(n) = self.later.pop_front() {
                    self.seg = n;
                    self.off = 0;
                }
                if done < budget {
                    continue;
                }
            }
            break;
        }
        self.shared
            .parsed
            .store(self.seg.base + self.off, Ordering::Release);
        Ok(done)
    }

    /// Bytes written to the current file past the parse offset (a partial
    /// line once the parser has caught up), or 0 while older files remain.
    pub fn unparsed_in_current(&mut self) -> u64 {
        match self.end() {
            (_, true) => 0,
            (end, false) => end.saturating_sub(self.off),
        }
    }

    /// True when every byte written so far, in every file, is parsed.
    pub fn fully_parsed(&mut self) -> bool {
        let (end, later_files) = self.end();
        !later_files && self.off >= end
    }

    /// Emits a multiline record whose timeout passed (or all, with `force`).
    pub fn poll(&mut self, force: bool, out: &mut dyn FnMut(Encoded<'_>)) {
        if let Some(p) = self.pipeline.as_mut() {
            p.poll(Instant::now(), now_ms(), force, out);
        }
    }

    /// True while the framer is in the middle of a split line.
    pub fn in_split(&self) -> bool {
        self.pipeline.as_ref().is_some_and(StreamPipeline::in_split)
    }
}

/// Feeds `p` the bytes `from..to` of `seg` again (see
/// [`StreamPipeline::rewind`]). A trailing partial line is fed as flushed:
/// the parse that consumed it up to `to` had flushed it.
fn replay(
    p: &mut StreamPipeline,
    seg: &Segment,
    from: u64,
    to: u64,
    buf: &mut [u8],
    out: &mut dyn FnMut(Encoded<'_>),
) -> std::io::Result<()> {
    let (now, ms) = (Instant::now(), now_ms());
    let mut pos = from;
    while pos < to {
        let want = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        seg.file.read_exact_at(&mut buf[..want], pos)?;
        let last = pos + want as u64 == to;
        let used = p.feed(&buf[..want], seg.base + pos, last, now, ms, out);
        pos += used as u64;
        if used == 0 {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write_all;
    use super::super::{open, Splice};
    use super::*;
    use crate::record::Stream;
    use crate::sandbox::SandboxDir;

    /// Every record of `text` as (offset, message) and the lines framed,
    /// parsed in turns of at most `budget` bytes; the turns listed in
    /// `cut` panic after their first record and are rewound.
    fn parse_in_turns(text: &[u8], budget: u64, cut: &[usize]) -> (Vec<(u64, String)>, u64) {
        use crate::record::{EncodeOptions, MultilineConfig, SourceMeta, StartRule};
        let d = tempfile::tempdir().unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let dir = Arc::new(SandboxDir::open(d.path()).unwrap());
        let ml = MultilineConfig {
            rule: StartRule::Indented,
            max_lines: 4,
            max_bytes: 200,
            timeout: std::time::Duration::from_secs(60),
        };
        let pipeline = StreamPipeline::new(
            &SourceMeta::default(),
            Stream::Stdout,
            &EncodeOptions::default(),
            32,
            Some(ml),
        );
        let (mut st, mut ps) =
            open(Stream::Stdout, dir, d.path(), r, Some(pipeline), None, None).unwrap();
        write_all(&w, text);
        drop(w);
        while st.splice(1 << 20).unwrap() != Splice::Eof {}
        let mut got = Vec::new();
        let keep = |got: &mut Vec<(u64, String)>, e: Encoded<'_>| {
            let v: serde_json::Value = serde_json::from_slice(e.doc).unwrap();
            got.push((e.offset, v["message"].as_str().unwrap().to_string()));
        };
        let mut buf = vec![0u8; 64];
        let mut turn = 0;
        while !ps.fully_parsed() {
            let start = ps.turn_start();
            if cut.contains(&turn) {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ps.parse(&mut buf, budget, true, &mut |_| panic!("cut"))
                }));
                assert!(res.is_err(), "turn {turn} made no record");
                ps.rewind(start, &mut buf, &mut |e| keep(&mut got, e))
                    .unwrap();
            } else {
                ps.parse(&mut buf, budget, true, &mut |e| keep(&mut got, e))
                    .unwrap();
            }
            turn += 1;
        }
        ps.poll(true, &mut |e| keep(&mut got, e));
        (got, ps.pipeline.as_ref().unwrap().lines)
    }

    #[test]
    fn a_turn_cut_by_a_panic_is_rewound_and_makes_each_record_once() {
        let mut text = Vec::new();
        for i in 0..40 {
            text.extend_from_slice(format!("start {i}\n").as_bytes());
            for k in 0..i % 4 {
                text.extend_from_slice(format!("  at frame {k}\n").as_bytes());
            }
            if i % 7 == 3 {
                // Split into pieces by the 32-byte line limit.
                text.extend_from_slice(format!("long {i} {}\n", "y".repeat(90)).as_bytes());
            }
            if i % 5 == 0 {
                text.push(b'\n');
            }
        }
        let (want, lines) = parse_in_turns(&text, 1 << 20, &[]);
        assert!(want.len() > 40);
        for cut in [vec![0], vec![3, 4, 9], (0..60).step_by(2).collect()] {
            let (got, got_lines) = parse_in_turns(&text, 40, &cut);
            assert_eq!(got, want, "turns cut: {cut:?}");
            assert_eq!(got_lines, lines, "lines framed, turns cut: {cut:?}");
        }
    }
}
