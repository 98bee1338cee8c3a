//! Multiline joining (stack traces) with size limits and a flush timeout.

use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::frame::{Line, SplitPart};

/// How to recognise the first line of a record; other lines are continuations.
#[derive(Clone, Debug)]
pub enum StartRule {
    /// A line matching this expression starts a record.
    Pattern(Regex),
    /// Built-in rule for stack traces: a line is a continuation when it starts
    /// with a space or tab, or with `Caused by:`, `...`, `at `, or `}`.
    Indented,
}

impl StartRule {
    fn is_start(&self, line: &[u8]) -> bool {
        match self {
            StartRule::Pattern(re) => re.is_match(line),
            StartRule::Indented => {
                !matches!(line.first(), Some(b' ' | b'\t' | b'}'))
                    && !line.starts_with(b"Caused by:")
                    && !line.starts_with(b"...")
                    && !line.starts_with(b"at ")
            }
        }
    }
}

/// Multiline settings (per container, from labels within operator caps).
#[derive(Clone, Debug)]
pub struct MultilineConfig {
    /// Start-of-record rule.
    pub rule: StartRule,
    /// A record is emitted once it holds this many lines.
    pub max_lines: u32,
    /// A record is emitted before it would exceed this many bytes.
    pub max_bytes: usize,
    /// A pending record is emitted when no line arrived for this long.
    pub timeout: Duration,
}

/// One log record: a single line, a piece of an overlong line, or joined lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Stream offset of the first byte (the basis of the record's id).
    pub offset: u64,
    /// The text (joined lines are separated by `\n`).
    pub text: &'a [u8],
    /// The record's exact bytes in the stream: `text` with every `\r` its
    /// lines lost before their `\n` (equal to `text` when none did).
    pub exact: &'a [u8],
    /// True when a `\n` followed the record's last byte (see [`Line::terminated`]).
    pub terminated: bool,
    /// Number of lines joined (1 for a plain line).
    pub lines: u32,
    /// Set for pieces of an overlong line.
    pub split: Option<SplitPart>,
}

impl<'a> Record<'a> {
    /// The record of one line (or one piece of a split line).
    pub fn of_line(line: &Line<'a>) -> Self {
        Record {
            offset: line.offset,
            text: line.bytes,
            exact: line.exact,
            terminated: line.terminated,
            lines: 1,
            split: line.split,
        }
    }
}

/// Joins continuation lines into the preceding record.
#[derive(Debug)]
pub struct Multiline {
    cfg: MultilineConfig,
    buf: Vec<u8>,
    /// The pending record's exact bytes, kept only from the first line whose
    /// exact bytes differ from its text (`\r\n`): `buf` is them otherwise.
    exact: Vec<u8>,
    exact_differs: bool,
    offset: u64,
    lines: u32,
    terminated: bool,
    last: Option<Instant>,
}

impl Multiline {
    /// A joiner with the given settings.
    pub fn new(cfg: MultilineConfig) -> Self {
        Multiline {
            cfg,
            buf: Vec::new(),
            exact: Vec::new(),
            exact_differs: false,
            offset: 0,
            lines: 0,
            terminated: true,
            last: None,
        }
    }

    /// Offset of the pending (not yet emitted) record, if any: the checkpoint
    /// of a stream must not move past it.
    pub fn pending_offset(&self) -> Option<u64> {
        (self.lines > 0).then_some(self.offset)
    }

    /// Feeds one line; emits the records it completes.
    pub fn push(&mut self, line: Line<'_>, now: Instant, f: &mut impl FnMut(Record<'_>)) {
        if line.split.is_some() {
            self.flush(f);
            f(Record::of_line(&line));
            return;
        }
        let cont = self.lines > 0 && !self.cfg.rule.is_start(line.bytes);
        let fits = self.lines < self.cfg.max_lines
            && self.buf.len() + 1 + line.bytes.len() <= self.cfg.max_bytes;
        if cont && fits {
            self.buf.push(b'\n');
            self.buf.extend_from_slice(line.bytes);
            self.lines += 1;
        } else {
            self.flush(f);
            self.buf.extend_from_slice(line.bytes);
            self.offset = line.offset;
            self.lines = 1;
        }
        self.keep_exact(&line);
        self.terminated = line.terminated;
        self.last = Some(now);
        if self.lines >= self.cfg.max_lines {
            self.flush(f);
        }
    }

    /// Appends `line`'s exact bytes once they differ from the text (after
    /// its text was appended to `buf`).
    fn keep_exact(&mut self, line: &Line<'_>) {
        if self.exact_differs {
            if self.lines > 1 {
                self.exact.push(b'\n');
            }
            self.exact.extend_from_slice(line.exact);
        } else if line.exact.len() != line.bytes.len() {
            let before = self.buf.len() - line.bytes.len();
            self.exact.extend_from_slice(&self.buf[..before]);
            self.exact.extend_from_slice(line.exact);
            self.exact_differs = true;
        }
    }

    /// Emits the pending record if no line arrived within the timeout.
    pub fn poll(&mut self, now: Instant, f: &mut impl FnMut(Record<'_>)) {
        if let Some(last) = self.last {
            if self.lines > 0 && now.duration_since(last) >= self.cfg.timeout {
                self.flush(f);
            }
        }
    }

    /// Forgets the pending record without emitting it (a rewind reads its
    /// lines again).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.exact.clear();
        self.exact_differs = false;
        self.lines = 0;
        self.last = None;
    }

    /// Emits the pending record now.
    pub fn flush(&mut self, f: &mut impl FnMut(Record<'_>)) {
        if self.lines > 0 {
            f(Record {
                offset: self.offset,
                text: &self.buf,
                exact: if self.exact_differs {
                    &self.exact
                } else {
                    &self.buf
                },
                terminated: self.terminated,
                lines: self.lines,
                split: None,
            });
            self.buf.clear();
            self.exact.clear();
            self.exact_differs = false;
            self.lines = 0;
            self.last = None;
            if self.buf.capacity() > 64 * 1024 {
                self.buf = Vec::new();
            }
            if self.exact.capacity() > 64 * 1024 {
                self.exact = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rule: StartRule) -> MultilineConfig {
        MultilineConfig {
            rule,
            max_lines: 4,
            max_bytes: 1000,
            timeout: Duration::from_millis(50),
        }
    }

    fn feed(m: &mut Multiline, lines: &[&str], now: Instant) -> Vec<(u64, String, u32)> {
        let mut out = Vec::new();
        let mut off = 0u64;
        for l in lines {
            m.push(
                Line {
                    offset: off,
                    bytes: l.as_bytes(),
                    exact: l.as_bytes(),
                    terminated: true,
                    split: None,
                },
                now,
                &mut |r| {
                    out.push((
                        r.offset,
                        String::from_utf8_lossy(r.text).into_owned(),
                        r.lines,
                    ))
                },
            );
            off += l.len() as u64 + 1;
        }
        out
    }

    #[test]
    fn joins_java_stack_trace_and_times_out() {
        let mut m = Multiline::new(cfg(StartRule::Indented));
        let t0 = Instant::now();
        let got = feed(
            &mut m,
            &[
                "Exception in main",
                "\tat a.b(C.java:1)",
                "Caused by: x",
                "next record",
            ],
            t0,
        );
        assert_eq!(
            got,
            vec![(
                0,
                "Exception in main\n\tat a.b(C.java:1)\nCaused by: x".into(),
                3
            )]
        );
        assert_eq!(m.pending_offset(), Some(49));
        let mut out = Vec::new();
        m.poll(t0 + Duration::from_millis(10), &mut |r| out.push(r.lines));
        assert!(out.is_empty());
        m.poll(t0 + Duration::from_millis(60), &mut |r| out.push(r.lines));
        assert_eq!(out, vec![1]);
        assert_eq!(m.pending_offset(), None);
    }

    #[test]
    fn pattern_and_limits() {
        let re = Regex::new(r"^\d{4}-").unwrap();
        let mut m = Multiline::new(cfg(StartRule::Pattern(re)));
        let got = feed(
            &mut m,
            &["2024- a", "b", "c", "d", "e", "2024- f"],
            Instant::now(),
        );
        // max_lines = 4: the record is emitted at 4 lines, "e" starts a new one.
        assert_eq!(
            got,
            vec![(0, "2024- a\nb\nc\nd".into(), 4), (14, "e".into(), 1)]
        );
    }
}
