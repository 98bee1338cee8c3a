//! Minimal, fast JSON string writing and JSON-object line parsing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

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

/// A JSON object line, its top-level keys sorted, values kept as raw text.
pub type Fields<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

/// Parses `text` as one JSON object if it looks like one (`{...}`), else `None`.
pub fn parse_object(text: &[u8]) -> Option<Fields<'_>> {
    let t = text.trim_ascii();
    if t.len() < 2 || t[0] != b'{' || t[t.len() - 1] != b'}' {
        return None;
    }
    let s = std::str::from_utf8(t).ok()?;
    serde_json::from_str::<Fields<'_>>(s).ok()
}

/// The string inside a raw JSON value, if it is a string.
pub fn raw_as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    let g = v.get();
    if !g.starts_with('"') {
        return None;
    }
    if !g.contains('\\') {
        return Some(Cow::Borrowed(&g[1..g.len() - 1]));
    }
    serde_json::from_str::<String>(g).ok().map(Cow::Owned)
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
        let f = parse_object(br#" {"b":1,"a":"x\"y","c":{"d":[1,2]}} "#).unwrap();
        assert_eq!(
            f.keys().map(|k| k.as_ref()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(raw_as_str(f["a"]).unwrap(), "x\"y");
        assert!(parse_object(b"{not json}").is_none());
        assert!(parse_object(b"[1,2]").is_none());
    }
}
