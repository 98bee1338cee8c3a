//! Single-pass scanner of a JSON object line: validates the whole line as
//! JSON and yields its top-level members as (key, raw value) slices of the
//! line, sorted by key, the last of duplicate keys kept. No allocation per
//! line once the scanner's buffers have grown (an escaped key costs one).
//!
//! It accepts exactly what `serde_json` accepts as a map of string keys to
//! raw values (a key's escapes decoded by `serde_json` itself, so a lone
//! surrogate in a key refuses the line as there): the differential tests
//! (`differential_tests.rs`) hold it to that.

use std::borrow::Cow;

use super::push_compact;

/// One top-level member: where its key and raw value are.
#[derive(Clone, Copy, Debug)]
struct Member {
    /// The key's bytes: inside its quotes in the line, or, when it has
    /// escapes, decoded in the scanner's `keys`.
    key: (usize, usize),
    key_decoded: bool,
    /// The key's first 8 bytes, big-endian, zero-padded: orders most keys
    /// without looking at them again.
    prefix: u64,
    /// The value's raw text in the line (no surrounding whitespace).
    value: (usize, usize),
    /// The value holds whitespace between tokens or a `\u` escape: it is
    /// written through [`push_compact`], else copied as is.
    compact: bool,
}

/// Reusable buffers for scanning JSON object lines.
#[derive(Debug, Default)]
pub struct ObjectScanner {
    members: Vec<Member>,
    /// Decoded escaped keys.
    keys: String,
    /// Open containers of the value being scanned (`{` or `[`).
    stack: Vec<u8>,
}

/// A JSON object line's top-level members, sorted by key, duplicates
/// resolved to the last one (what a map filled in line order holds).
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    text: &'a str,
    keys: &'a str,
    members: &'a [Member],
}

/// One top-level member of a JSON object line.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    /// The key, escapes decoded.
    pub key: &'a str,
    key_decoded: bool,
    /// The value as the task wrote it (valid JSON, possibly pretty-printed).
    pub raw: &'a str,
    compact: bool,
}

impl<'a> Field<'a> {
    /// The string inside the value, if it is a string.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        super::raw_as_str(self.raw)
    }

    /// Appends the key as a JSON string.
    pub fn push_key(&self, out: &mut Vec<u8>) {
        if self.key_decoded {
            super::push_str(out, self.key.as_bytes());
        } else {
            // Written without escapes in the line: nothing to escape.
            out.push(b'"');
            out.extend_from_slice(self.key.as_bytes());
            out.push(b'"');
        }
    }

    /// Appends the value on one line (see [`push_compact`]).
    pub fn push_value(&self, out: &mut Vec<u8>) {
        if self.compact {
            push_compact(out, self.raw.as_bytes());
        } else {
            out.extend_from_slice(self.raw.as_bytes());
        }
    }
}

impl<'a> Fields<'a> {
    fn field(&self, m: &Member) -> Field<'a> {
        Field {
            key: if m.key_decoded {
                &self.keys[m.key.0..m.key.1]
            } else {
                &self.text[m.key.0..m.key.1]
            },
            key_decoded: m.key_decoded,
            raw: &self.text[m.value.0..m.value.1],
            compact: m.compact,
        }
    }

    /// The members in key order.
    pub fn iter(&self) -> impl Iterator<Item = Field<'a>> + '_ {
        self.members.iter().map(|m| self.field(m))
    }

    /// The member named `key`.
    pub fn get(&self, key: &str) -> Option<Field<'a>> {
        let i = self
            .members
            .binary_search_by(|m| self.field(m).key.cmp(key))
            .ok()?;
        Some(self.field(&self.members[i]))
    }

    /// How many distinct keys.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No member at all (`{}`).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// `k`'s first 8 bytes as a big-endian number, zero-padded: keys whose
/// prefixes differ compare as their prefixes do.
fn prefix(k: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = k.len().min(8);
    p[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(p)
}

/// Index of the first byte at or after `i` that is not JSON whitespace.
#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Bytes that end a run of plain string bytes: `"`, `\` and control bytes.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The index of the first `"`, `\` or control byte at or after `j` (or
/// the end), eight bytes at a time.
#[inline]
fn plain_run_end(b: &[u8], mut j: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(j..j + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // High bit set in a byte that is (below it, possibly spuriously
        // after) a zero of `x`: the lowest one is exact.
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let stops = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if stops != 0 {
            return j + (stops.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    while j < b.len() && !STRING_STOP[b[j] as usize] {
        j += 1;
    }
    j
}

/// The string starting at the quote `b[i]`: the index after its closing
/// quote, whether it has escapes, and whether one is a `\u` escape.
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool, bool)> {
    let (mut escaped, mut unicode) = (false, false);
    let mut j = i + 1;
    loop {
        j = plain_run_end(b, j);
        match *b.get(j)? {
            b'"' => return Some((j + 1, escaped, unicode)),
            b'\\' => {
                escaped = true;
                match *b.get(j + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                    b'u' => {
                        let hex = b.get(j + 2..j + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        unicode = true;
                        j += 6;
                    }
                    _ => return None,
                }
            }
            // A raw control byte.
            _ => return None,
        }
    }
}

/// The number starting at `b[i]` (`-`, or a digit): the index after it.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b[i] == b'-' {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let e = digits(i + 1);
        if e == i + 1 {
            return None;
        }
        i = e;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let e = digits(i);
        if e == i {
            return None;
        }
        i = e;
    }
    // A leading zero must not be followed by a digit ("01"): the next byte
    // is checked by the caller, which expects a separator there.
    Some(i)
}

impl ObjectScanner {
    /// Parses `text` as one JSON object if it looks like one (`{...}` after
    /// trimming ASCII whitespace) and is valid JSON, else `None`.
    pub fn scan<'s>(&'s mut self, text: &'s [u8]) -> Option<Fields<'s>> {
        let t = text.trim_ascii();
        if t.len() < 2 || t[0] != b'{' || t[t.len() - 1] != b'}' {
            return None;
        }
        let s = std::str::from_utf8(t).ok()?;
        let b = s.as_bytes();
        self.members.clear();
        self.keys.clear();
        let mut i = ws(b, 1);
        if b.get(i) == Some(&b'}') {
            i += 1;
        } else {
            loop {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let (end, escaped, _) = string_end(b, i)?;
                let (key, key_decoded) = if escaped {
                    // Rare: serde_json decodes it, as it decides what a key is.
                    let k: String = serde_json::from_str(&s[i..end]).ok()?;
                    let start = self.keys.len();
                    self.keys.push_str(&k);
                    ((start, self.keys.len()), true)
                } else {
                    ((i + 1, end - 1), false)
                };
                i = ws(b, end);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(b, i + 1);
                let (value_end, compact) = self.value_end(b, i)?;
                let key_bytes = if key_decoded {
                    &self.keys.as_bytes()[key.0..key.1]
                } else {
                    &b[key.0..key.1]
                };
                self.members.push(Member {
                    key,
                    key_decoded,
                    prefix: prefix(key_bytes),
                    value: (i, value_end),
                    compact,
                });
                i = ws(b, value_end);
                match b.get(i) {
                    Some(b',') => i = ws(b, i + 1),
                    Some(b'}') => {
                        i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if i != b.len() {
            return None;
        }
        let keys = self.keys.as_bytes();
        let key_of = |m: &Member| {
            let src = if m.key_decoded { keys } else { b };
            &src[m.key.0..m.key.1]
        };
        // Stable: equal keys stay in line order, and the last one is kept.
        self.members.sort_by(|x, y| {
            x.prefix
                .cmp(&y.prefix)
                .then_with(|| key_of(x).cmp(key_of(y)))
        });
        self.members.dedup_by(|later, kept| {
            let same = later.prefix == kept.prefix && key_of(later) == key_of(kept);
            if same {
                *kept = *later;
            }
            same
        });
        Some(Fields {
            text: s,
            keys: &self.keys,
            members: &self.members,
        })
    }

    /// The JSON value starting at `b[i]`: the index after it, and whether
    /// it must be compacted (whitespace between tokens, a `\u` escape).
    /// Iterative: nesting depth costs stack space of one byte a level.
    fn value_end(&mut self, b: &[u8], mut i: usize) -> Option<(usize, bool)> {
        self.stack.clear();
        let mut compact = false;
        loop {
            // One value at `i`.
            match *b.get(i)? {
                b'"' => {
                    let (end, _, unicode) = string_end(b, i)?;
                    compact |= unicode;
                    i = end;
                }
                open @ (b'{' | b'[') => {
                    let close = if open == b'{' { b'}' } else { b']' };
                    let j = ws(b, i + 1);
                    compact |= j != i + 1;
                    if b.get(j) == Some(&close) {
                        i = j + 1;
                    } else {
                        self.stack.push(open);
                        i = j;
                        if open == b'{' {
                            i = member_key(b, i, &mut compact)?;
                        }
                        continue;
                    }
                }
                b'-' | b'0'..=b'9' => {
                    i = number_end(b, i)?;
                    // "01": a digit after a leading zero.
                    if b.get(i).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                }
                b't' => i = literal_end(b, i, b"true")?,
                b'f' => i = literal_end(b, i, b"false")?,
                b'n' => i = literal_end(b, i, b"null")?,
                _ => return None,
            }
            // After a value: close containers until one continues with `,`.
            loop {
                let Some(&open) = self.stack.last() else {
                    return Some((i, compact));
                };
                let j = ws(b, i);
                compact |= j != i;
                match *b.get(j)? {
                    b',' => {
                        i = ws(b, j + 1);
                        compact |= i != j + 1;
                        if open == b'{' {
                            i = member_key(b, i, &mut compact)?;
                        }
                        break;
                    }
                    b'}' if open == b'{' => {
                        self.stack.pop();
                        i = j + 1;
                    }
                    b']' if open == b'[' => {
                        self.stack.pop();
                        i = j + 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// A nested object's `"key" :` at `b[i]`: the index of its value.
fn member_key(b: &[u8], i: usize, compact: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (end, _, unicode) = string_end(b, i)?;
    *compact |= unicode;
    let colon = ws(b, end);
    if b.get(colon) != Some(&b':') {
        return None;
    }
    let v = ws(b, colon + 1);
    *compact |= colon != end || v != colon + 1;
    Some(v)
}

fn literal_end(b: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    (b.get(i..i + lit.len())? == lit).then_some(i + lit.len())
}
