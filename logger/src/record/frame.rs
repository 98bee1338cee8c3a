//! Line framing across reads, with overlong lines split into marked parts.

/// Position of a piece of an overlong line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPart {
    /// 0-based index of the piece within the original line.
    pub index: u32,
    /// True for the final piece (the one that ended with the newline).
    pub last: bool,
}

/// One line (without its `\n` or `\r\n`), or one piece of an overlong line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// Offset of the first byte in the stream (counted from the container's start).
    pub offset: u64,
    /// The bytes of the line.
    pub bytes: &'a [u8],
    /// The line's exact bytes: `bytes` and the `\r` dropped before its `\n`, if any.
    pub exact: &'a [u8],
    /// True when a `\n` followed `exact` in the stream (false for a piece of a
    /// split line but the last, and for a line emitted by a flush before its
    /// newline arrived).
    pub terminated: bool,
    /// Set when the line was longer than the limit and was split.
    pub split: Option<SplitPart>,
}

/// Frames a byte stream into lines. Keeps only the split counter between
/// calls: the caller keeps unconsumed bytes (in the spool file) and passes
/// them again with the next read.
#[derive(Debug)]
pub struct Framer {
    max_line: usize,
    part: u32,
}

/// Largest index `<= at` that is not inside a UTF-8 sequence (so split pieces stay valid text).
fn utf8_floor(b: &[u8], at: usize) -> usize {
    let mut i = at;
    while i > 0 && i < b.len() && (b[i] & 0xC0) == 0x80 && at - i < 4 {
        i -= 1;
    }
    if i == 0 {
        at
    } else {
        i
    }
}

impl Framer {
    /// A framer that splits lines longer than `max_line` bytes (at least 16).
    pub fn new(max_line: usize) -> Self {
        Framer {
            max_line: max_line.max(16),
            part: 0,
        }
    }

    /// Bytes a caller's read window must hold for every call to make
    /// progress: a line of `max_line` bytes and its newline. A smaller window
    /// ending inside an overlong line would be consumed by nothing, forever.
    pub fn window_needed(&self) -> usize {
        self.max_line + 1
    }

    /// True while the previous call ended in the middle of a split line.
    pub fn in_split(&self) -> bool {
        self.part > 0
    }

    /// The next piece's index while in a split line (0: at a line start).
    pub(super) fn part(&self) -> u32 {
        self.part
    }

    /// Puts the framer back at a piece index taken with [`Framer::part`].
    pub(super) fn resume_part(&mut self, part: u32) {
        self.part = part;
    }

    /// Emits every complete line of `buf` (whose first byte is at stream offset
    /// `base`) and returns how many bytes were consumed. With `flush`, a trailing
    /// line without newline is emitted too (end of stream or flush timeout).
    pub fn frame(
        &mut self,
        buf: &[u8],
        base: u64,
        flush: bool,
        mut f: impl FnMut(Line<'_>),
    ) -> usize {
        let mut pos = 0usize;
        let len = buf.len();
        while pos < len {
            let window = (len - pos).min(self.max_line + 1);
            match memchr::memchr(b'\n', &buf[pos..pos + window]) {
                Some(i) => {
                    let exact = &buf[pos..pos + i];
                    let line = match exact {
                        [rest @ .., b'\r'] => rest,
                        _ => exact,
                    };
                    let split = self.take_last_part();
                    f(Line {
                        offset: base + pos as u64,
                        bytes: line,
                        exact,
                        terminated: true,
                        split,
                    });
                    pos += i + 1;
                }
                None if window > self.max_line => {
                    let cut = utf8_floor(&buf[pos..], self.max_line);
                    let piece = &buf[pos..pos + cut];
                    f(Line {
                        offset: base + pos as u64,
                        bytes: piece,
                        exact: piece,
                        terminated: false,
                        split: Some(SplitPart {
                            index: self.part,
                            last: false,
                        }),
                    });
                    self.part += 1;
                    pos += cut;
                }
                None => {
                    if flush {
                        let split = self.take_last_part();
                        f(Line {
                            offset: base + pos as u64,
                            bytes: &buf[pos..],
                            exact: &buf[pos..],
                            terminated: false,
                            split,
                        });
                        pos = len;
                    }
                    break;
                }
            }
        }
        pos
    }

    fn take_last_part(&mut self) -> Option<SplitPart> {
        if self.part > 0 {
            let p = SplitPart {
                index: self.part,
                last: true,
            };
            self.part = 0;
            Some(p)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        fr: &mut Framer,
        chunks: &[&[u8]],
        flush_last: bool,
    ) -> Vec<(u64, String, Option<SplitPart>)> {
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut base = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            pending.extend_from_slice(c);
            let flush = flush_last && i == chunks.len() - 1;
            let used = fr.frame(&pending, base, flush, |l| {
                out.push((
                    l.offset,
                    String::from_utf8_lossy(l.bytes).into_owned(),
                    l.split,
                ))
            });
            pending.drain(..used);
            base += used as u64;
        }
        out
    }

    #[test]
    fn frames_across_reads() {
        let mut fr = Framer::new(1024);
        let got = run(&mut fr, &[b"hel", b"lo\nwor", b"ld\r\n\npartial"], false);
        assert_eq!(
            got,
            vec![
                (0, "hello".into(), None),
                (6, "world".into(), None),
                (13, "".into(), None)
            ]
        );
        let got = run(&mut Framer::new(1024), &[b"a\nb"], true);
        assert_eq!(got, vec![(0, "a".into(), None), (2, "b".into(), None)]);
    }

    #[test]
    fn splits_overlong_lines_with_marker() {
        let mut fr = Framer::new(16);
        let line = "0123456789abcdefXYZ0123456789abcdef!";
        let got = run(
            &mut fr,
            &[&line.as_bytes()[..10], &line.as_bytes()[10..], b"\nok\n"],
            false,
        );
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0],
            (
                0,
                "0123456789abcdef".into(),
                Some(SplitPart {
                    index: 0,
                    last: false
                })
            )
        );
        assert_eq!(
            got[1],
            (
                16,
                "XYZ0123456789abc".into(),
                Some(SplitPart {
                    index: 1,
                    last: false
                })
            )
        );
        assert_eq!(
            got[2],
            (
                32,
                "def!".into(),
                Some(SplitPart {
                    index: 2,
                    last: true
                })
            )
        );
        assert_eq!(got[3], (37, "ok".into(), None));
    }

    #[test]
    fn exact_limit_is_not_split() {
        let got = run(&mut Framer::new(16), &[b"0123456789abcdef\n"], false);
        assert_eq!(got, vec![(0, "0123456789abcdef".into(), None)]);
    }

    #[test]
    fn split_respects_utf8() {
        // 15 ASCII bytes then a 2-byte char: the cut moves before the char.
        let s = "aaaaaaaaaaaaaaaé and more text\n";
        let got = run(&mut Framer::new(16), &[s.as_bytes()], false);
        assert_eq!(got[0].1, "aaaaaaaaaaaaaaa");
        assert_eq!(got[1].1, "é and more text");
        assert!(got.iter().all(|g| !g.1.contains('\u{fffd}')));
    }
}
