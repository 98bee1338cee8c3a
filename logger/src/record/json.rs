//! Minimal, fast JSON string writing, and JSON object lines read by
//! [`ObjectScanner`].

use std::borrow::Cow;

mod object;
pub use object::{Field, Fields, ObjectScanner};

#[cfg(test)]
pub(crate) mod differential_tests;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 0: copy as is; b'u': \u00XX; other: backslash + that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

fn escape_valid(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if e == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.push(b'\\');
            out.push(e);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends `s` as a JSON string (quoted). Invalid UTF-8 becomes U+FFFD.
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    match std::str::from_utf8(s) {
        Ok(_) => escape_valid(out, s),
        Err(_) => escape_valid(out, String::from_utf8_lossy(s).as_bytes()),
    }
    out.push(b'"');
}

fn hex4(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// Appends the JSON text `raw` on one line: whitespace between tokens is
/// dropped (pretty-printed values keep no raw newline), raw control bytes
/// inside strings are escaped and unpaired UTF-16 surrogate escapes become
/// U+FFFD. Every sink's framing relies on a document being exactly one line
/// of valid JSON, whatever the task wrote: this is the only way a task's JSON
/// text reaches a document.
pub fn push_compact(out: &mut Vec<u8>, raw: &[u8]) {
    let mut i = 0;
    let mut in_str = false;
    while i < raw.len() {
        let b = raw[i];
        if !in_str {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_str = true;
                    out.push(b);
                }
                // Not valid between tokens: never copied, so it cannot break a frame.
                0..=0x1f => {}
                _ => out.push(b),
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_str = false;
                out.push(b);
                i += 1;
            }
            b'\\' if raw.get(i + 1) == Some(&b'u') => {
                let Some(u) = hex4(&raw[(i + 2).min(raw.len())..]) else {
                    // What follows is copied as plain characters.
                    out.extend_from_slice(b"\\ufffd");
                    i += 2;
                    continue;
                };
                let paired_low = raw.get(i + 6) == Some(&b'\\')
                    && raw.get(i + 7) == Some(&b'u')
                    && hex4(&raw[(i + 8).min(raw.len())..])
                        .is_some_and(|l| (0xdc00..0xe000).contains(&l));
                match u {
                    0xd800..=0xdbff if paired_low => {
                        out.extend_from_slice(&raw[i..i + 12]);
                        i += 12;
                    }
                    0xd800..=0xdfff => {
                        out.extend_from_slice(b"\\ufffd");
                        i += 6;
                    }
                    _ => {
                        out.extend_from_slice(&raw[i..i + 6]);
                        i += 6;
                    }
                }
            }
            b'\\' => {
                match raw.get(i + 1) {
                    Some(&e) if b"\"\\/bfnrt".contains(&e) => out.extend_from_slice(&[b, e]),
                    _ => out.extend_from_slice(b"\\\\"),
                }
                i += 2;
            }
            0..=0x1f => {
                escape_valid(out, &raw[i..=i]);
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    if in_str {
        out.push(b'"');
    }
}

/// `doc` as one line: borrowed when it has no CR/LF (every document this
/// version encodes), compacted otherwise (records buffered by older versions).
pub fn one_line(doc: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr2(b'\n', b'\r', doc).is_none() {
        return Cow::Borrowed(doc);
    }
    let mut out = Vec::with_capacity(doc.len());
    push_compact(&mut out, doc);
    Cow::Owned(out)
}

/// The string inside a raw JSON value, if it is a string (`None` when its
/// escapes do not decode to UTF-8: a lone surrogate).
pub fn raw_as_str(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.starts_with('"') {
        return None;
    }
    if !raw.as_bytes().contains(&b'\\') {
        return Some(Cow::Borrowed(&raw[1..raw.len() - 1]));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut o = Vec::new();
        push_str(&mut o, b"a\"b\\c\n\x01\xffz");
        assert_eq!(
            std::str::from_utf8(&o).unwrap(),
            "\"a\\\"b\\\\c\\n\\u0001\u{fffd}z\""
        );
    }

    #[test]
    fn parses_objects_only() {
        let mut sc = ObjectScanner::default();
        let f = sc.scan(br#" {"b":1,"a":"x\"y","c":{"d":[1,2]}} "#).unwrap();
        assert_eq!(f.iter().map(|f| f.key).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(f.get("a").unwrap().as_str().unwrap(), "x\"y");
        assert_eq!(f.get("c").unwrap().raw, r#"{"d":[1,2]}"#);
        assert!(sc.scan(b"{not json}").is_none());
        assert!(sc.scan(b"[1,2]").is_none());
    }

    #[test]
    fn compacts_pretty_json_to_one_valid_line() {
        let pretty = b"{\n  \"a\" : [ 1,\r\n 2 ],\n\t\"b\": \"x y\\n\\u00e9\\ud83d\\ude00\"\n}";
        let mut o = Vec::new();
        push_compact(&mut o, pretty);
        assert_eq!(
            std::str::from_utf8(&o).unwrap(),
            r#"{"a":[1,2],"b":"x y\n\u00e9\ud83d\ude00"}"#
        );
        // Lone surrogates, raw control bytes in strings, a bad escape.
        for raw in [
            &br#""\ud800x""#[..],
            br#""\udc00""#,
            b"\"a\x01\x1fb\"",
            br#""\q""#,
            br#""\u12""#,
            b"\"unterminated",
        ] {
            o.clear();
            push_compact(&mut o, raw);
            assert!(!o.contains(&b'\n'), "{o:?}");
            serde_json::from_slice::<serde_json::Value>(&o)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&o)));
        }
        assert!(matches!(one_line(b"{\"a\":1}"), Cow::Borrowed(_)));
        assert_eq!(&*one_line(b"{\n\"a\":1\n}"), b"{\"a\":1}");
    }
}
