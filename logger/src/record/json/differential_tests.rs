//! The object scanner against `serde_json` (a map of string keys to raw
//! values, what JSON lines were parsed with before the scanner) over random
//! and adversarial lines: both must refuse the same lines and yield the same
//! members, and a member's value must come out as `push_compact` writes it.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::{push_compact, ObjectScanner};

/// The reference: what `serde_json` makes of the line.
fn reference(text: &[u8]) -> Option<Vec<(String, String)>> {
    let t = text.trim_ascii();
    if t.len() < 2 || t[0] != b'{' || t[t.len() - 1] != b'}' {
        return None;
    }
    let s = std::str::from_utf8(t).ok()?;
    let m: BTreeMap<String, &RawValue> = serde_json::from_str(s).ok()?;
    Some(
        m.into_iter()
            .map(|(k, v)| (k, v.get().to_string()))
            .collect(),
    )
}

/// Asserts the scanner agrees with the reference on `line`.
pub(crate) fn check(sc: &mut ObjectScanner, line: &[u8]) {
    let want = reference(line);
    let got = sc.scan(line).map(|f| {
        f.iter()
            .map(|f| {
                let mut direct = Vec::new();
                f.push_value(&mut direct);
                let mut compacted = Vec::new();
                push_compact(&mut compacted, f.raw.as_bytes());
                assert_eq!(
                    direct,
                    compacted,
                    "value {:?} of {:?}",
                    f.raw,
                    String::from_utf8_lossy(line)
                );
                (f.key.to_string(), f.raw.to_string())
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(got, want, "line {:?}", String::from_utf8_lossy(line));
}

/// xorshift64*: a fixed sequence, so a failure is reproducible.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

const KEYS: &[&str] = &[
    "@timestamp",
    "timestamp",
    "time",
    "ts",
    "message",
    "msg",
    "level",
    "lvl",
    "severity",
    "loglevel",
    "log.level",
    "log",
    "log.file",
    "json",
    "host",
    "labels.x",
    "container",
    "ecs",
    "cluster",
    "cluster.name",
    "path",
    "status",
    "user",
    "",
    "a",
    "é",
    "\u{1F600}",
];

const STRINGS: &[&str] = &[
    "",
    "x",
    "request served",
    "2024-05-01T12:00:00Z",
    "2024-05-01T11:59:00.123+00:00",
    "2024-05-01 12:00:00",
    "1999-01-01T00:00:00Z",
    "2024-05-01T12:00:00Zjunk",
    "INFO",
    "Warn",
    "err",
    "İNFO",
    "verbose",
    "\\\"quoted\\\"",
    "back\\\\slash",
    "tab\\tnew\\nline",
    "\\u00e9t\\u00E9",
    "\\ud83d\\ude00",
    "lone \\ud800 high",
    "lone \\udc00 low",
    "\\ud800\\u0041",
    "\\u0000nul",
    "sl\\/ash",
    "é ü \u{1F600}",
    "\\b\\f\\r",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "200",
    "1714564800",
    "1714564800.5",
    "1714564800123",
    "1e400",
    "-1e400",
    "123456789012345678901234567890",
    "0.5e-3",
    "1E+2",
    "2.5E-2",
    "1e9",
    "9999999999",
    "10000000000",
];

/// A random key, its quotes included; sometimes escaped.
fn key(r: &mut Rng, out: &mut String) {
    let k = r.pick(KEYS);
    out.push('"');
    match r.below(10) {
        0 if !k.is_empty() => {
            // The first character escaped as \u: the same key decoded.
            let c = k.chars().next().unwrap_or('a');
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
            out.push_str(&k[c.len_utf8()..]);
        }
        1 => out.push_str(r.pick(&["\\\"", "\\\\", "\\ud800", "\\n", "a\\/b"])),
        _ => out.push_str(k),
    }
    out.push('"');
}

fn ws(r: &mut Rng, out: &mut String, pretty: bool) {
    if pretty {
        out.push_str(r.pick(&["", " ", "\n  ", "\t", "\r\n", "  "]));
    }
}

fn value(r: &mut Rng, out: &mut String, depth: usize, pretty: bool) {
    let kind = if depth > 3 { r.below(5) } else { r.below(8) };
    match kind {
        0 | 1 => {
            out.push('"');
            out.push_str(r.pick(STRINGS));
            out.push('"');
        }
        2 => out.push_str(r.pick(NUMBERS)),
        3 => out.push_str(r.pick(&["true", "false", "null"])),
        4 => out.push_str(r.pick(&["{}", "[]", "[ ]", "{ }"])),
        5 | 6 => {
            out.push('[');
            for i in 0..r.below(4) {
                if i > 0 {
                    out.push(',');
                }
                ws(r, out, pretty);
                value(r, out, depth + 1, pretty);
                ws(r, out, pretty);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            for i in 0..r.below(4) {
                if i > 0 {
                    out.push(',');
                }
                ws(r, out, pretty);
                key(r, out);
                ws(r, out, pretty);
                out.push(':');
                ws(r, out, pretty);
                value(r, out, depth + 1, pretty);
            }
            ws(r, out, pretty);
            out.push('}');
        }
    }
}

/// A random JSON object line, often with duplicate and reserved keys.
pub(crate) fn object_line(r: &mut Rng) -> Vec<u8> {
    let pretty = r.below(4) == 0;
    let mut s = String::from(r.pick(&["", " ", "\t", "\x0c"]));
    s.push('{');
    for i in 0..r.below(9) {
        if i > 0 {
            s.push(',');
        }
        ws(r, &mut s, pretty);
        key(r, &mut s);
        ws(r, &mut s, pretty);
        s.push(':');
        ws(r, &mut s, pretty);
        value(r, &mut s, 0, pretty);
        ws(r, &mut s, pretty);
    }
    s.push('}');
    s.push_str(r.pick(&["", " ", "\r", "\x0c"]));
    s.into_bytes()
}

/// `line` damaged the way broken output and attacks damage lines.
pub(crate) fn mutate(r: &mut Rng, mut line: Vec<u8>) -> Vec<u8> {
    if line.is_empty() {
        return line;
    }
    let at = r.below(line.len());
    match r.below(9) {
        0 => line.truncate(at),
        1 => line.insert(at, r.pick(b"{}[]\",:\\ \n\x00\x1f\xff\xc3\x80-0e.tfn")),
        2 => {
            line.remove(at);
        }
        3 => line[at] = r.pick(b"\xff\x01\"\\0.,}"),
        4 => {
            // A trailing comma.
            let end = line.iter().rposition(|&b| b == b'}').unwrap_or(0);
            line.insert(end, b',');
        }
        5 => line.splice(at..at, b"01".iter().copied()).for_each(drop),
        6 => line.splice(at..at, b"\\u12".iter().copied()).for_each(drop),
        7 => line.extend_from_slice(b"{}"),
        _ => line.splice(at..at, "\u{e9}".bytes()).for_each(drop),
    }
    line
}

/// Nested `depth` times in arrays and objects, alternately.
fn deep(depth: usize) -> String {
    let mut s = String::from("{\"d\":");
    for i in 0..depth {
        s.push_str(if i % 2 == 0 { "[" } else { "{\"k\":" });
    }
    s.push('1');
    for i in (0..depth).rev() {
        s.push(if i % 2 == 0 { ']' } else { '}' });
    }
    s.push('}');
    s
}

#[test]
fn adversarial_lines_match_serde_json() {
    let mut sc = ObjectScanner::default();
    let fixed: &[&[u8]] = &[
        b"{}",
        b" { } ",
        b"{\"a\":1}",
        b"{\"a\":1,}",
        b"{,\"a\":1}",
        b"{\"a\" 1}",
        b"{\"a\":}",
        b"{\"a\":1}}",
        b"{\"a\":1} {\"b\":2}",
        b"{\"a\":01}",
        b"{\"a\":-}",
        b"{\"a\":1.}",
        b"{\"a\":.5}",
        b"{\"a\":1e}",
        b"{\"a\":1e+}",
        b"{\"a\":+1}",
        b"{\"a\":0x10}",
        b"{\"a\":NaN}",
        b"{\"a\":Infinity}",
        b"{\"a\":tru}",
        b"{\"a\":nulll}",
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\x7f\"}",
        b"{\"a\":\"\\x\"}",
        b"{\"a\":\"\\u12g4\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"\\ud800\":1}",
        b"{\"\\udc00\":1}",
        b"{\"\\ud83d\\ude00\":1}",
        b"{\"\\u0000\":1}",
        b"{\"a\":\"\xff\"}",
        b"{\"\xc3\xa9\":\"\xe2\x82\"}",
        b"{\"a\":1,\"a\":2,\"b\":3,\"a\":4}",
        b"{\"msg\":\"x\",\"m\\u0073g\":\"y\"}",
        b"{\"a\":[1,2,]}",
        b"{\"a\":{\"b\":1,}}",
        b"{\"a\":{1:2}}",
        b"{\"a\":{\"b\"}}",
        b"{\"a\":[}",
        b"{\"a\":{]}",
        b"{\"a\"\x0c:1}",
        b"\x0c{\"a\":1}\x0c",
        b"{\"a\":1\x0c}",
        b"{\n\"a\"\n:\n[\n1\n,\n2\n]\n}",
        b"{\"a\":\"x\"\"y\"}",
        b"{\"a\":[1 2]}",
        b"{\"a\":{\"b\":1 \"c\":2}}",
        b"{\"a\"",
        b"{\"a",
        b"{\"}",
        b"{}}",
        b"{{}}",
    ];
    for line in fixed {
        check(&mut sc, line);
    }
    for depth in [1, 2, 100, 126, 127, 128, 129, 1000, 10_000] {
        let line = deep(depth);
        check(&mut sc, line.as_bytes());
        // Unclosed by one.
        check(&mut sc, &line.as_bytes()[..line.len() - 2]);
    }
}

#[test]
fn random_lines_match_serde_json() {
    let mut sc = ObjectScanner::default();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut valid, mut total) = (0, 0);
    for _ in 0..40_000 {
        let line = object_line(&mut r);
        for line in [line.clone(), mutate(&mut r, line)] {
            total += 1;
            valid += usize::from(reference(&line).is_some());
            check(&mut sc, &line);
        }
    }
    // Both kinds are exercised.
    assert!(
        valid > total / 4 && valid < total * 9 / 10,
        "{valid} of {total} valid"
    );
}
