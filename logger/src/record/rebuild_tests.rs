//! Base64-mode records rebuild what a task wrote, byte for byte: every byte
//! value, invalid and overlong UTF-8, surrogates, sequences cut by a split,
//! CR LF, JSON lines, multiline; text mode is unchanged.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use super::*;
use crate::record::{
    BinaryMode, EncodeOptions, Encoded, MultilineConfig, SourceMeta, StartRule, Stream,
    StreamPipeline,
};

const READ_MS: i64 = 1_714_564_800_000;

fn meta() -> SourceMeta {
    SourceMeta {
        container_chain: vec!["root".into(), "c".into()],
        task_id: Some("t".into()),
        ..Default::default()
    }
}

fn multiline(rule: StartRule, max_lines: u32) -> MultilineConfig {
    MultilineConfig {
        rule,
        max_lines,
        max_bytes: 4096,
        timeout: Duration::from_secs(1),
    }
}

fn digit_or_brace() -> StartRule {
    StartRule::Pattern(regex::bytes::Regex::new("^[0-9{]").unwrap())
}

/// How the writer and the parser meet: the task writes `writes` bytes at a
/// time; after each write the parser reads what is there (windows of the
/// pipeline's size) and, where `flush_after(i)`, flushes a trailing partial
/// line (the shipper's flush timeout: a pending multiline record stays
/// pending). The end of the stream flushes everything.
struct Drive<'a> {
    writes: &'a [usize],
    flush_after: &'a dyn Fn(usize) -> bool,
}

const ONE_WRITE: Drive<'static> = Drive {
    writes: &[usize::MAX],
    flush_after: &|_| false,
};

/// Runs `input` through a pipeline; returns each document, checked to be one
/// line of JSON, parsed.
fn run(
    mode: Option<BinaryMode>,
    input: &[u8],
    max_line: usize,
    ml: Option<MultilineConfig>,
    drive: &Drive<'_>,
) -> Vec<Value> {
    let opts = match mode {
        Some(mode) => EncodeOptions::default().with_binary(mode),
        None => EncodeOptions::default(),
    };
    let mut p = StreamPipeline::new(&meta(), Stream::Stdout, &opts, max_line, ml);
    let window = p.window_needed() + 7;
    let now = Instant::now();
    let mut docs = Vec::new();
    let mut sink = |e: Encoded<'_>| {
        assert!(!e.doc.contains(&b'\n') && !e.doc.contains(&b'\r'));
        docs.push(
            serde_json::from_slice::<Value>(e.doc)
                .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(e.doc))),
        );
    };
    let (mut avail, mut off) = (0usize, 0usize);
    for (i, w) in drive.writes.iter().enumerate() {
        avail = avail.saturating_add(*w).min(input.len());
        let flush = avail == input.len() || (drive.flush_after)(i);
        while off < avail {
            let end = (off + window).min(avail);
            let used = p.feed(
                &input[off..end],
                off as u64,
                flush && end == avail,
                now,
                READ_MS,
                &mut sink,
            );
            off += used;
            if used == 0 {
                break;
            }
        }
        if avail == input.len() {
            break;
        }
    }
    p.poll(now, READ_MS, true, &mut sink);
    assert_eq!(off, input.len(), "a flushed end consumes everything");
    docs
}

fn base64(input: &[u8], max_line: usize, ml: Option<MultilineConfig>) -> Vec<Value> {
    run(Some(BinaryMode::Base64), input, max_line, ml, &ONE_WRITE)
}

fn assert_rebuilt(docs: &[Value], input: &[u8]) {
    let got = rebuild(docs).unwrap_or_else(|e| panic!("{e}: {docs:#?}"));
    assert_eq!(got.offset, 0);
    assert_eq!(
        got.bytes,
        input,
        "rebuilt {:?} from {docs:#?}",
        String::from_utf8_lossy(&got.bytes)
    );
}

fn flags(doc: &Value) -> Vec<&str> {
    doc["log"]["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn original(doc: &Value) -> Option<Vec<u8>> {
    doc["log"]["original_bytes"]
        .as_str()
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap())
}

#[test]
fn every_single_byte_value_is_rebuilt() {
    for b in 0..=255u8 {
        for input in [
            vec![b],
            vec![b, b'\n'],
            vec![b'a', b, b'\n', b'z'],
            vec![b, b, b, b'\n', b, b'\n'],
        ] {
            let docs = base64(&input, 64, None);
            assert_rebuilt(&docs, &input);
        }
        let docs = base64(&[b, b'\n'], 64, None);
        if b >= 0x80 {
            assert_eq!(docs.len(), 1);
            assert_eq!(flags(&docs[0]), ["invalid_utf8"], "{b:#x}");
            assert_eq!(original(&docs[0]).unwrap(), [b]);
            assert_eq!(docs[0]["message"], "\u{fffd}");
        } else if b != b'\r' && b != b'\n' {
            // Exact text: nothing added, the message is the bytes.
            assert!(docs[0]["log"].get("original_bytes").is_none(), "{b:#x}");
            assert!(docs[0]["log"].get("flags").is_none(), "{b:#x}");
            assert_eq!(docs[0]["message"].as_str().unwrap().as_bytes(), [b]);
        }
    }
}

#[test]
fn all_256_byte_values_in_one_line() {
    let all: Vec<u8> = (0..=255u8).collect();
    for terminated in [true, false] {
        let mut input = all.clone();
        if terminated {
            input.push(b'\n');
        }
        for max_line in [16, 17, 100, 1024] {
            for ml in [
                None,
                Some(multiline(StartRule::Indented, 8)),
                Some(multiline(digit_or_brace(), 3)),
            ] {
                let docs = base64(&input, max_line, ml);
                assert_rebuilt(&docs, &input);
            }
        }
    }
}

/// Invalid UTF-8 that decoders must not accept.
const INVALID: &[&[u8]] = &[
    // Lone continuation bytes, a lead byte without its continuation.
    b"\x80",
    b"\xbf\x80",
    b"\xc3\x28",
    b"\xe2\x28\xa1",
    b"\xe2\x82",
    b"\xf0\x28\x8c\xbc",
    b"\xf0\x9f\x98",
    // Overlong encodings of '/' and of NUL.
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xf0\x80\x80\xaf",
    b"\xc1\xbf",
    b"\xc0\x80",
    // UTF-16 surrogates (lone high, lone low, an encoded pair).
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xed\xa0\xbd\xed\xb2\xa9",
    // Beyond U+10FFFF; bytes never valid.
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xfe\xff",
];

#[test]
fn invalid_sequences_overlong_encodings_and_surrogates() {
    for bad in INVALID {
        assert!(std::str::from_utf8(bad).is_err());
        let line = [b"x ", *bad, b" y\n"].concat();
        let docs = base64(&line, 64, None);
        assert_eq!(docs.len(), 1);
        assert_eq!(flags(&docs[0]), ["invalid_utf8"]);
        assert_eq!(original(&docs[0]).unwrap(), &line[..line.len() - 1]);
        assert!(docs[0]["message"].as_str().unwrap().contains('\u{fffd}'));
        assert_rebuilt(&docs, &line);
    }
    let all = INVALID.join(&b'\n');
    assert_rebuilt(&base64(&all, 16, None), &all);
    assert_rebuilt(
        &base64(&all, 16, Some(multiline(digit_or_brace(), 5))),
        &all,
    );
}

#[test]
fn a_four_byte_sequence_cut_by_a_line_split() {
    let emoji = "\u{1f600}".as_bytes();
    // The cut moves before the sequence: both parts are text, nothing added.
    let input = [&[b'a'; 14][..], emoji, b"b\n"].concat();
    let docs = base64(&input, 16, None);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["message"], "a".repeat(14));
    assert_eq!(flags(&docs[0]), ["split", "unterminated"]);
    assert_eq!(docs[1]["message"], "\u{1f600}b");
    assert_eq!(flags(&docs[1]), ["split"]);
    assert!(docs.iter().all(|d| original(d).is_none()));
    assert_rebuilt(&docs, &input);
    // A sequence the cut cannot avoid (too many continuation bytes), and a
    // truncated one at the limit: each part carries its own bytes.
    for input in [
        [b"aaaaaaaaaaaa\xf0", &[0x9f; 12][..], b"\n"].concat(),
        [&[b'a'; 15][..], b"\xf0\x9f\x98", b"zz\n"].concat(),
        [&[b'a'; 13][..], emoji, emoji, emoji, emoji, emoji].concat(),
    ] {
        let docs = base64(&input, 16, None);
        assert!(docs.len() >= 2);
        assert_rebuilt(&docs, &input);
    }
}

#[test]
fn cr_lf_keeps_its_cr_in_the_original_bytes() {
    let docs = base64(b"a\r\n", 64, None);
    assert_eq!(docs[0]["message"], "a");
    assert_eq!(original(&docs[0]).unwrap(), b"a\r");
    assert!(flags(&docs[0]).is_empty());
    for input in [
        &b"\r\n"[..],
        b"\r\n\r\n\n",
        b"a\r",
        b"a\rb\r\n",
        b"\r\r\n",
        b"a\r\nb\n\r",
        b"Exception\r\n\tat x\r\n\tat y\n",
    ] {
        for ml in [None, Some(multiline(StartRule::Indented, 8))] {
            assert_rebuilt(&base64(input, 64, ml), input);
        }
    }
    // "abc\r" flushed before its "\n" arrives: an unterminated record then an empty one.
    let drive = Drive {
        writes: &[4, 1, 4],
        flush_after: &|i| i == 0,
    };
    let docs = run(Some(BinaryMode::Base64), b"abc\r\nxy\n", 64, None, &drive);
    assert_eq!(docs[0]["message"], "abc\r");
    assert_eq!(flags(&docs[0]), ["unterminated"]);
    assert_eq!(docs[1]["message"], "");
    assert_rebuilt(&docs, b"abc\r\nxy\n");
}

#[test]
fn json_lines_keep_their_exact_bytes() {
    let line = b"{ \"msg\": \"hi\",  \"b\": 1, \"log\": 2, \"t\": \"\\u00e9\xc3\xa9\" }";
    let input = [&line[..], b"\r\n"].concat();
    let docs = base64(&input, 256, None);
    assert_eq!(docs[0]["message"], "hi");
    assert_eq!(docs[0]["b"], 1);
    assert_eq!(docs[0]["json"]["log"], 2);
    assert_eq!(original(&docs[0]).unwrap(), [&line[..], b"\r"].concat());
    assert_rebuilt(&docs, &input);
    // Without a message field, `message` is the line: nothing to add.
    let docs = base64(b"{\"k\":\"v\"}\n", 256, None);
    assert_eq!(docs[0]["k"], "v");
    assert!(original(&docs[0]).is_none());
    assert_rebuilt(&docs, b"{\"k\":\"v\"}\n");
    // Pretty-printed JSON joined by multiline: one document, exact bytes.
    let pretty = b"{\n  \"msg\": \"x\",\r\n  \"n\": [1,\n 2]\n}\n{\"msg\":\"y\"}\n";
    let docs = base64(pretty, 256, Some(multiline(digit_or_brace(), 50)));
    assert_eq!(docs.len(), 2, "{docs:#?}");
    assert_eq!(docs[0]["n"][1], 2);
    assert_rebuilt(&docs, pretty);
}

#[test]
fn text_mode_is_unchanged() {
    let input = b"plain\n\n\xffbad\r\n{\"msg\":\"j\"}\npartial";
    let default = run(None, input, 64, None, &ONE_WRITE);
    let text = run(Some(BinaryMode::Text), input, 64, None, &ONE_WRITE);
    assert_eq!(default, text);
    // Empty lines dropped, U+FFFD, no added field or flag.
    let messages: Vec<&str> = text
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["plain", "\u{fffd}bad", "j", "partial"]);
    assert!(text
        .iter()
        .all(|d| d["log"].get("original_bytes").is_none() && d["log"].get("flags").is_none()));
    // A plain text line costs base64 mode nothing: the same document.
    assert_eq!(
        base64(b"2024-05-01T12:00:00Z INFO ok\n", 64, None),
        run(
            None,
            b"2024-05-01T12:00:00Z INFO ok\n",
            64,
            None,
            &ONE_WRITE
        )
    );
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> usize {
        usize::try_from(self.next() % n).unwrap_or(0)
    }
}

/// Bytes biased towards what matters: newlines, CRs, indents, JSON, UTF-8
/// lead and continuation bytes, and any byte.
fn random_stream(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"\n",
        b"\r\n",
        b"\r",
        b"a",
        b"  ",
        b"\tat x",
        b"{\"msg\":\"m\"}",
        b"{",
        b"}",
        b"7",
        "\u{1f600}".as_bytes(),
        "é".as_bytes(),
        b"\xf0\x9f",
        b"\x80",
        b"\xed\xa0\x80",
    ];
    let len = rng.below(300);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        match rng.below(3) {
            0 => out.push(rng.next().to_le_bytes()[0]),
            _ => out.extend_from_slice(PIECES[rng.below(PIECES.len() as u64)]),
        }
    }
    out
}

#[test]
fn random_streams_rebuild_exactly() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..3000 {
        let input = random_stream(&mut rng);
        let max_line = 16 + rng.below(48);
        let max_lines = 1 + u32::try_from(rng.below(6)).unwrap();
        let ml = match rng.below(3) {
            0 => None,
            1 => Some(multiline(StartRule::Indented, max_lines)),
            _ => Some(multiline(digit_or_brace(), max_lines)),
        };
        let writes: Vec<usize> = (0..8)
            .map(|_| 1 + rng.below(80))
            .chain([usize::MAX])
            .collect();
        let flush_mask = rng.next();
        let flush_after = move |i: usize| flush_mask >> (i % 64) & 1 == 1;
        let drive = Drive {
            writes: &writes,
            flush_after: &flush_after,
        };
        let docs = run(Some(BinaryMode::Base64), &input, max_line, ml, &drive);
        let got = rebuild(&docs).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(
            got.bytes, input,
            "case {case}: max_line {max_line}, writes {writes:?}, flush mask {flush_mask:#x}"
        );
    }
}

#[test]
fn missing_or_damaged_records_are_reported() {
    let input = b"one\ntwo\nthree\n";
    let mut docs = base64(input, 64, None);
    docs.remove(1);
    assert_eq!(
        rebuild(&docs),
        Err(RebuildError::Gap {
            expected: 4,
            found: 8
        })
    );
    docs[0]["log"]["original_bytes"] = Value::from("not base64!");
    assert!(matches!(
        rebuild(&docs),
        Err(RebuildError::BadBase64 { offset: 0, .. })
    ));
    assert_eq!(rebuild(&[] as &[Value]).unwrap().bytes, b"");
}
