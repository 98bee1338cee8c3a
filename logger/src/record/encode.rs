//! Enrichment and encoding of records as Elastic Common Schema documents.
//!
//! Per stream, everything that does not change between records (container,
//! Mesos ids, labels, operator fields) is serialised once; a record costs its
//! timestamp, message, `log` object and, for JSON lines, the merged fields.
//!
//! In [`BinaryMode::Base64`] a record whose `message` is not exactly its
//! bytes also carries them in `log.original_bytes` (see [`StreamEncoder::encode`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;

use super::json::{push_str, raw_as_str, Field, Fields, ObjectScanner};
use super::multiline::Record;
use super::time::{parse_leading_timestamp, TsFormatter};
use super::Stream;

/// ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "8.11.0";

pub use rein_log_module::proto::{BinaryMode, SourceMeta};

/// Encoding settings: the operator's, and the container's binary mode.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Written as `host.name`.
    pub host_name: Option<String>,
    /// Operator fields merged at the top level of every document.
    pub extra_fields: serde_json::Map<String, serde_json::Value>,
    /// `max_timestamp_past`: how far before its receive time a record's own
    /// timestamp is trusted (it picks the dated index). Older: the record
    /// gets its receive time and keeps its own in `log.original_timestamp`.
    pub max_ts_past_ms: i64,
    /// `max_timestamp_future`: the same, after the receive time.
    pub max_ts_future_ms: i64,
    /// The container's `rein.log.binary`: text only, or exact bytes in records.
    pub binary: BinaryMode,
}

/// Default of `max_timestamp_past`: one day.
pub const DEFAULT_TS_PAST_MS: i64 = 24 * 3600 * 1000;
/// Default of `max_timestamp_future`: five minutes.
pub const DEFAULT_TS_FUTURE_MS: i64 = 5 * 60 * 1000;

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            host_name: None,
            extra_fields: serde_json::Map::new(),
            max_ts_past_ms: DEFAULT_TS_PAST_MS,
            max_ts_future_ms: DEFAULT_TS_FUTURE_MS,
            binary: BinaryMode::Text,
        }
    }
}

impl EncodeOptions {
    /// These settings for a container that chose `mode` (`rein.log.binary`).
    #[must_use]
    pub fn with_binary(&self, mode: BinaryMode) -> Self {
        EncodeOptions {
            binary: mode,
            ..self.clone()
        }
    }
}

/// Top-level names the logger writes itself; JSON-line fields with these
/// names (or dotted names under them) are moved under `json`.
const RESERVED: &[&str] = &[
    "@timestamp",
    "message",
    "log",
    "stream",
    "container",
    "mesos",
    "service",
    "labels",
    "host",
    "ecs",
    "json",
    "agent",
    "event",
];
const MESSAGE_KEYS: &[&str] = &["message", "msg"];
const LEVEL_KEYS: &[&str] = &["level", "lvl", "severity", "loglevel", "log.level"];
const TIME_KEYS: &[&str] = &["@timestamp", "timestamp", "time", "ts"];

/// Encodes the records of one stream of one container.
#[derive(Debug)]
pub struct StreamEncoder {
    log_head: Vec<u8>,
    tail: Vec<u8>,
    extra_keys: Vec<String>,
    id_prefix: Vec<u8>,
    ts: TsFormatter,
    max_past_ms: i64,
    max_future_ms: i64,
    binary: BinaryMode,
    /// Scratch for base64 text.
    b64: String,
    /// Where the last document encoded holds `log_head` and `tail` (offsets
    /// in its `out`).
    cuts: (usize, usize),
    json: JsonScratch,
}

/// Buffers reused by every JSON line of a stream.
#[derive(Debug, Default)]
struct JsonScratch {
    scanner: ObjectScanner,
    /// Members moved under `json` (their names are the logger's own).
    nested: Vec<u8>,
}

/// What [`BinaryMode::Base64`] adds to a record's `log` object (nothing in text mode).
#[derive(Clone, Copy, Debug, Default)]
struct Exact<'a> {
    /// The record's bytes, when `message` is not exactly them.
    original: Option<&'a [u8]>,
    invalid_utf8: bool,
    unterminated: bool,
}

/// A record's time: the one its index is chosen by, and the task's own
/// when that was refused as too far from the receive time.
#[derive(Clone, Copy, Debug)]
struct RecordTime {
    ms: i64,
    refused: Option<i64>,
}

fn push_kv_str(out: &mut Vec<u8>, first: &mut bool, k: &str, v: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    push_str(out, k.as_bytes());
    out.push(b':');
    push_str(out, v.as_bytes());
}

/// 64-bit FNV-1a: stable across builds and platforms (used in record ids).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl StreamEncoder {
    /// Precomputes the constant parts of every document of this stream.
    pub fn new(meta: &SourceMeta, stream: Stream, opts: &EncodeOptions) -> Self {
        let cid = meta.container_id();
        let mut log_head = b"\"log\":{\"file\":{\"path\":".to_vec();
        push_str(
            &mut log_head,
            meta.sandbox
                .join(stream.name())
                .to_string_lossy()
                .as_bytes(),
        );
        log_head.extend_from_slice(b"},\"offset\":");

        let mut t = Vec::with_capacity(512);
        t.extend_from_slice(b",\"stream\":");
        push_str(&mut t, stream.name().as_bytes());
        t.extend_from_slice(b",\"container\":{\"id\":");
        push_str(&mut t, cid.as_bytes());
        t.extend_from_slice(b"},\"mesos\":{");
        let mut first = true;
        for (name, v) in [
            ("agent", &meta.agent_id),
            ("framework", &meta.framework_id),
            ("executor", &meta.executor_id),
        ] {
            if let Some(v) = v {
                if !first {
                    t.push(b',');
                }
                first = false;
                push_str(&mut t, name.as_bytes());
                t.extend_from_slice(b":{\"id\":");
                push_str(&mut t, v.as_bytes());
                t.push(b'}');
            }
        }
        if meta.task_id.is_some() || meta.task_name.is_some() {
            if !first {
                t.push(b',');
            }
            first = false;
            t.extend_from_slice(b"\"task\":{");
            let mut f2 = true;
            if let Some(v) = &meta.task_id {
                push_kv_str(&mut t, &mut f2, "id", v);
            }
            if let Some(v) = &meta.task_name {
                push_kv_str(&mut t, &mut f2, "name", v);
            }
            t.push(b'}');
        }
        if !first {
            t.push(b',');
        }
        t.extend_from_slice(b"\"container\":{\"id\":");
        push_str(
            &mut t,
            meta.container_chain
                .last()
                .map(String::as_str)
                .unwrap_or("")
                .as_bytes(),
        );
        if meta.container_chain.len() > 1 {
            t.extend_from_slice(b",\"parent\":");
            let parent = meta.container_chain[..meta.container_chain.len() - 1].join(".");
            push_str(&mut t, parent.as_bytes());
        }
        t.extend_from_slice(b",\"chain\":[");
        for (i, c) in meta.container_chain.iter().enumerate() {
            if i > 0 {
                t.push(b',');
            }
            push_str(&mut t, c.as_bytes());
        }
        t.extend_from_slice(b"]}}");
        if let Some(name) = &meta.task_name {
            t.extend_from_slice(b",\"service\":{\"name\":");
            push_str(&mut t, name.as_bytes());
            t.push(b'}');
        }
        let mut labels: BTreeMap<String, &str> = BTreeMap::new();
        for (k, v) in meta.executor_labels.iter().chain(meta.task_labels.iter()) {
            labels.insert(k.replace('.', "_"), v);
        }
        if !labels.is_empty() {
            t.extend_from_slice(b",\"labels\":{");
            let mut f2 = true;
            for (k, v) in &labels {
                push_kv_str(&mut t, &mut f2, k, v);
            }
            t.push(b'}');
        }
        if let Some(h) = &opts.host_name {
            t.extend_from_slice(b",\"host\":{\"name\":");
            push_str(&mut t, h.as_bytes());
            t.push(b'}');
        }
        t.extend_from_slice(b",\"ecs\":{\"version\":\"");
        t.extend_from_slice(ECS_VERSION.as_bytes());
        t.extend_from_slice(b"\"}");
        let mut extra_keys = Vec::new();
        for (k, v) in &opts.extra_fields {
            if RESERVED.contains(&k.as_str()) {
                continue;
            }
            t.push(b',');
            push_str(&mut t, k.as_bytes());
            t.push(b':');
            t.extend_from_slice(v.to_string().as_bytes());
            extra_keys.push(k.clone());
        }

        let mut id_prefix = format!("{:016x}-", fnv1a64(cid.as_bytes())).into_bytes();
        id_prefix.push(stream.tag());
        id_prefix.push(b'-');
        t.shrink_to_fit();
        StreamEncoder {
            log_head,
            tail: t,
            extra_keys,
            id_prefix,
            ts: TsFormatter::default(),
            max_past_ms: opts.max_ts_past_ms.max(0),
            max_future_ms: opts.max_ts_future_ms.max(0),
            binary: opts.binary,
            b64: String::new(),
            cuts: (0, 0),
            json: JsonScratch::default(),
        }
    }

    /// The parts every document of this stream has alike: id prefix, log
    /// head, tail; and where the last document encoded holds the log head
    /// and the tail (offsets in the `out` it was encoded into).
    pub fn parts(&self) -> (&[u8], &[u8], &[u8], (usize, usize)) {
        (&self.id_prefix, &self.log_head, &self.tail, self.cuts)
    }

    /// Appends the tail, noting where.
    fn push_tail(&mut self, out: &mut Vec<u8>) {
        self.cuts.1 = out.len();
        out.extend_from_slice(&self.tail);
    }

    /// Text only, or exact bytes in records ([`EncodeOptions::binary`]).
    pub fn binary(&self) -> BinaryMode {
        self.binary
    }

    /// In base64 mode, what the record's `log` object must add for its bytes
    /// to be rebuilt exactly; `message_is_text`: `message` holds the record's
    /// text (false for a JSON line whose `message` is its `msg` field).
    fn exact<'a>(&self, rec: &Record<'a>, message_is_text: bool) -> Exact<'a> {
        if self.binary == BinaryMode::Text {
            return Exact::default();
        }
        let invalid_utf8 = std::str::from_utf8(rec.exact).is_err();
        // `exact` is `text` plus the `\r`s dropped: equal lengths, equal bytes.
        let same = message_is_text && !invalid_utf8 && rec.exact.len() == rec.text.len();
        Exact {
            original: (!same).then_some(rec.exact),
            invalid_utf8,
            unterminated: !rec.terminated,
        }
    }

    /// Encodes the records of one log file of the container
    /// (`rein.log.files`): `log.file.path` relative to the sandbox,
    /// `log.file.tag` the task's tag for it, `stream` `"file"`, and ids
    /// `<container hash>-f<n>-<offset>`, where `n` numbers the files the
    /// container's shipper state has followed (a truncated file is a new one).
    pub fn for_file(
        meta: &SourceMeta,
        rel_path: &[u8],
        tag: &str,
        n: u64,
        opts: &EncodeOptions,
    ) -> Self {
        let mut e = Self::new(meta, Stream::File, opts);
        let mut head = b"\"log\":{\"file\":{\"path\":".to_vec();
        push_str(&mut head, rel_path);
        head.extend_from_slice(b",\"tag\":");
        push_str(&mut head, tag.as_bytes());
        head.extend_from_slice(b"},\"offset\":");
        e.log_head = head;
        let cid = meta.container_id();
        e.id_prefix = format!("{:016x}-f{n}-", fnv1a64(cid.as_bytes())).into_bytes();
        e
    }

    /// The record's own time if it lies within the accepted skew of its
    /// receive time, else the receive time: a task never picks an index date.
    fn bound_time(&self, own: Option<i64>, read_ms: i64) -> RecordTime {
        match own {
            Some(t)
                if t >= read_ms.saturating_sub(self.max_past_ms)
                    && t <= read_ms.saturating_add(self.max_future_ms) =>
            {
                RecordTime {
                    ms: t,
                    refused: None,
                }
            }
            Some(t) => RecordTime {
                ms: read_ms,
                refused: Some(t),
            },
            None => RecordTime {
                ms: read_ms,
                refused: None,
            },
        }
    }

    /// Appends the record's document id: stable for a given container,
    /// stream and stream offset, so a resent record never duplicates.
    pub fn push_id(&self, offset: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id_prefix);
        let mut b = itoa_u64(offset);
        out.extend_from_slice(b.as_bytes_mut());
    }

    fn is_reserved(&self, key: &str) -> bool {
        let top = &key[..key.bytes().position(|b| b == b'.').unwrap_or(key.len())];
        RESERVED.contains(&top) || self.extra_keys.iter().any(|k| k == top)
    }

    /// Appends the record as one JSON document to `out`; returns its
    /// timestamp (from the line if it has one, else `read_ms`).
    ///
    /// In base64 mode, `log.original_bytes` holds (standard base64, padded)
    /// the record's exact bytes ([`Record::exact`]) whenever `message` is not
    /// exactly them: bytes that are not UTF-8 (also flagged `invalid_utf8`),
    /// a `\r` dropped before a `\n`, a JSON line whose `message` is its
    /// `msg`/`message` field. A record not followed by a `\n` in the stream
    /// is flagged `unterminated`.
    pub fn encode(&mut self, rec: &Record<'_>, read_ms: i64, out: &mut Vec<u8>) -> i64 {
        if let Some(ms) = self.encode_if_json(rec, read_ms, out) {
            return ms;
        }
        let (own, rest) = match parse_leading_timestamp(rec.text) {
            Some((ms, n)) => (Some(ms), &rec.text[n..]),
            None => (None, rec.text),
        };
        let time = self.bound_time(own, read_ms);
        let level = detect_level(rest);
        out.extend_from_slice(b"{\"@timestamp\":\"");
        self.ts.push(time.ms, out);
        out.extend_from_slice(b"\",\"message\":");
        push_str(out, rec.text);
        out.push(b',');
        let exact = self.exact(rec, true);
        self.push_log(rec, level.map(str::as_bytes), time, exact, out);
        self.push_tail(out);
        out.push(b'}');
        time.ms
    }

    /// The `log` object. `log.flags` lists what was done to the record:
    /// `multiline` (lines joined, count in `log.lines`), `split` (a part of
    /// an overlong line, position in `log.split`), `timestamp_refused` (its
    /// own time, kept in `log.original_timestamp`, was outside the skew);
    /// in base64 mode also `invalid_utf8` and `unterminated` (see [`Self::encode`]).
    fn push_log(
        &mut self,
        rec: &Record<'_>,
        level: Option<&[u8]>,
        t: RecordTime,
        exact: Exact<'_>,
        out: &mut Vec<u8>,
    ) {
        self.cuts.0 = out.len();
        out.extend_from_slice(&self.log_head);
        out.extend_from_slice(itoa_u64(rec.offset).as_bytes_mut());
        if let Some(l) = level {
            out.extend_from_slice(b",\"level\":");
            push_str(out, l);
        }
        let flags = [
            (rec.lines > 1, &b"\"multiline\""[..]),
            (rec.split.is_some(), b"\"split\""),
            (t.refused.is_some(), b"\"timestamp_refused\""),
            (exact.invalid_utf8, b"\"invalid_utf8\""),
            (exact.unterminated, b"\"unterminated\""),
        ];
        if flags.iter().any(|f| f.0) {
            out.extend_from_slice(b",\"flags\":[");
            let mut first = true;
            for (_, name) in flags.iter().filter(|f| f.0) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(name);
            }
            out.push(b']');
        }
        if rec.lines > 1 {
            out.extend_from_slice(b",\"lines\":");
            out.extend_from_slice(itoa_u64(u64::from(rec.lines)).as_bytes_mut());
        }
        if let Some(own) = t.refused {
            out.extend_from_slice(b",\"original_timestamp\":\"");
            self.ts.push(own, out);
            out.push(b'"');
        }
        if let Some(s) = rec.split {
            out.extend_from_slice(b",\"split\":{\"part\":");
            out.extend_from_slice(itoa_u64(u64::from(s.index)).as_bytes_mut());
            out.extend_from_slice(if s.last {
                b",\"last\":true}"
            } else {
                b",\"last\":false}"
            });
        }
        if let Some(bytes) = exact.original {
            self.b64.clear();
            base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut self.b64);
            out.extend_from_slice(b",\"original_bytes\":\"");
            out.extend_from_slice(self.b64.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }

    /// Encodes the record as a JSON line if it is a JSON object, else `None`.
    fn encode_if_json(&mut self, rec: &Record<'_>, read_ms: i64, out: &mut Vec<u8>) -> Option<i64> {
        // Taken out while its fields are borrowed (empty buffers: no allocation).
        let mut json = std::mem::take(&mut self.json);
        let ms = json
            .scanner
            .scan(rec.text)
            .map(|fields| self.encode_json(rec, &fields, &mut json.nested, read_ms, out));
        self.json = json;
        ms
    }

    fn encode_json(
        &mut self,
        rec: &Record<'_>,
        fields: &Fields<'_>,
        nested: &mut Vec<u8>,
        read_ms: i64,
        out: &mut Vec<u8>,
    ) -> i64 {
        // The members the logger reads, by rank in TIME_KEYS, MESSAGE_KEYS, LEVEL_KEYS.
        let mut times = [None; TIME_KEYS.len()];
        let mut msgs = [None; MESSAGE_KEYS.len()];
        let mut levels = [None; LEVEL_KEYS.len()];
        for f in fields.iter() {
            let rank = |keys: &[&str]| keys.iter().position(|k| *k == f.key);
            if let Some(r) = rank(TIME_KEYS) {
                times[r] = Some(f);
            } else if let Some(r) = rank(MESSAGE_KEYS) {
                msgs[r] = Some(f);
            } else if let Some(r) = rank(LEVEL_KEYS) {
                levels[r] = Some(f);
            }
        }
        let ts = first_read(&times, |f| json_time(f.raw));
        let msg = first_read(&msgs, Field::as_str);
        let level = first_read(&levels, Field::as_str);
        let used = [
            ts.map(|t| t.1),
            msg.as_ref().map(|m| m.1),
            level.as_ref().map(|l| l.1),
        ];
        let ts = ts.map(|t| t.0);
        let msg = msg.map(|m| m.0);
        let level = level.map(|(s, _)| {
            normalize_level(&s).map_or_else(|| Cow::Owned(s.to_lowercase()), Cow::Borrowed)
        });
        let time = self.bound_time(ts, read_ms);
        out.extend_from_slice(b"{\"@timestamp\":\"");
        self.ts.push(time.ms, out);
        out.extend_from_slice(b"\",\"message\":");
        push_str(out, msg.as_deref().map(str::as_bytes).unwrap_or(rec.text));
        out.push(b',');
        let exact = self.exact(rec, msg.is_none());
        self.push_log(rec, level.as_deref().map(str::as_bytes), time, exact, out);
        self.push_tail(out);
        nested.clear();
        for f in fields.iter() {
            if used.contains(&Some(f.key)) {
                continue;
            }
            let dst = if self.is_reserved(f.key) {
                &mut *nested
            } else {
                &mut *out
            };
            dst.push(b',');
            f.push_key(dst);
            dst.push(b':');
            // Raw text as the task wrote it (pretty-printed: newlines): compacted.
            f.push_value(dst);
        }
        if !nested.is_empty() {
            out.extend_from_slice(b",\"json\":{");
            out.extend_from_slice(&nested[1..]);
            out.push(b'}');
        }
        out.push(b'}');
        time.ms
    }
}

/// The first of `members` (in rank order) that `read` makes something of, and its key.
fn first_read<'a, T>(
    members: &[Option<Field<'a>>],
    read: impl Fn(&Field<'a>) -> Option<T>,
) -> Option<(T, &'a str)> {
    members
        .iter()
        .flatten()
        .find_map(|f| read(f).map(|v| (v, f.key)))
}

// The value is finite and positive; out-of-range floats saturate, which is fine for a time.
#[allow(clippy::cast_possible_truncation)]
fn json_time(raw: &str) -> Option<i64> {
    if let Some(s) = raw_as_str(raw) {
        return parse_leading_timestamp(s.as_bytes())
            .filter(|(_, n)| *n == s.len())
            .map(|t| t.0);
    }
    let n: f64 = raw.parse().ok()?;
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    // Seconds before ~2286, milliseconds after.
    Some(if n < 1e10 {
        (n * 1000.0) as i64
    } else {
        n as i64
    })
}

/// Small stack buffer for integer formatting.
struct Itoa {
    buf: [u8; 20],
    start: usize,
}

impl Itoa {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Appends `v` in decimal, zero-padded to `width` digits, without allocating
/// (index dates are built this way for every record of every request).
pub(crate) fn push_u64_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut d = itoa_u64(v);
    let digits = d.as_bytes_mut();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

fn itoa_u64(mut v: u64) -> Itoa {
    let mut buf = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    Itoa { buf, start: i }
}

fn normalize_level(word: &str) -> Option<&'static str> {
    let b = word.as_bytes();
    if b.len() > 8 {
        return None;
    }
    let mut up = [0u8; 8];
    for (d, s) in up.iter_mut().zip(b) {
        *d = s.to_ascii_uppercase();
    }
    Some(match &up[..b.len()] {
        b"TRACE" => "trace",
        b"DEBUG" | b"DBG" => "debug",
        b"INFO" | b"NOTICE" => "info",
        b"WARN" | b"WARNING" => "warn",
        b"ERROR" | b"ERR" => "error",
        b"FATAL" | b"CRITICAL" | b"CRIT" | b"PANIC" | b"SEVERE" => "fatal",
        _ => return None,
    })
}

/// Finds a log level near the start of a plain-text line: an upper-case word
/// (`ERROR`, `WARN`, ...) or any-case after `level=` or inside `[...]`.
pub fn detect_level(text: &[u8]) -> Option<&'static str> {
    let t = &text[..text.len().min(80)];
    let mut i = 0;
    while i < t.len() {
        if !t[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let start = i;
        while i < t.len() && t[i].is_ascii_alphabetic() {
            i += 1;
        }
        let w = &t[start..i];
        if w.len() < 3 || w.len() > 8 {
            continue;
        }
        let upper = w.iter().all(u8::is_ascii_uppercase);
        let marked = start > 0 && matches!(t[start - 1], b'=' | b'[' | b'<');
        if upper || marked {
            // SAFETY-free: w is ASCII letters only.
            if let Some(l) = normalize_level(std::str::from_utf8(w).unwrap_or("")) {
                return Some(l);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(detect_level(b"2024 ERROR something"), Some("error"));
        assert_eq!(detect_level(b"I have info for you"), None);
        assert_eq!(detect_level(b"ts=1 level=warning msg=x"), Some("warn"));
        assert_eq!(detect_level(b"[debug] x"), Some("debug"));
        assert_eq!(detect_level(b"plain text"), None);
    }

    fn encode_one(text: &[u8], lines: u32, read_ms: i64) -> (serde_json::Value, i64) {
        let meta = SourceMeta {
            container_chain: vec!["c".into()],
            task_labels: vec![("a\nb".into(), "v\"\n".into())],
            ..Default::default()
        };
        let mut e = StreamEncoder::new(&meta, Stream::Stdout, &EncodeOptions::default());
        let rec = Record {
            offset: 0,
            text,
            exact: text,
            terminated: true,
            lines,
            split: None,
        };
        let mut out = Vec::new();
        let ts = e.encode(&rec, read_ms, &mut out);
        assert!(
            !out.contains(&b'\n') && !out.contains(&b'\r'),
            "raw line break in {}",
            String::from_utf8_lossy(&out)
        );
        let v = serde_json::from_slice(&out)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out)));
        (v, ts)
    }

    #[test]
    fn pretty_printed_json_becomes_one_line() {
        let pretty = b"{\n  \"msg\": \"hello\",\n  \"ctx\": {\n    \"a\": [\n      1,\n      2\n    ]\r\n  },\n  \"log\" : {\"x\": \"y\"}\n}";
        let (v, _) = encode_one(pretty, 7, 1000);
        assert_eq!(v["message"], "hello");
        assert_eq!(v["ctx"]["a"][1], 2);
        assert_eq!(v["json"]["log"]["x"], "y");
        assert_eq!(v["log"]["flags"][0], "multiline");
    }

    #[test]
    fn every_byte_value_encodes_to_one_valid_line() {
        for b in 0..=255u8 {
            for text in [
                vec![b],
                vec![b'x', b, b'y'],
                format!("{{\"k\":\"a{}b\"}}", char::from(b)).into_bytes(),
                [b"{\"k\":".as_slice(), &[b], b"1}"].concat(),
                [b"{\"k\":\"".as_slice(), &[b], b"\"}"].concat(),
            ] {
                encode_one(&text, 1, 1000);
            }
        }
    }

    #[test]
    fn flags_are_one_array() {
        let meta = SourceMeta::default();
        let mut e = StreamEncoder::new(&meta, Stream::Stdout, &EncodeOptions::default());
        let rec = Record {
            offset: 0,
            text: b"2020-01-01T00:00:00Z x",
            exact: b"2020-01-01T00:00:00Z x",
            terminated: true,
            lines: 3,
            split: Some(super::super::SplitPart {
                index: 1,
                last: true,
            }),
        };
        let mut out = Vec::new();
        e.encode(&rec, 1_714_564_800_000, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches("\"flags\"").count(), 1, "{s}");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v["log"]["flags"],
            serde_json::json!(["multiline", "split", "timestamp_refused"])
        );
    }

    #[test]
    fn a_task_cannot_pick_the_index_date() {
        let now = 1_714_564_800_000; // 2024-05-01T12:00:00Z
                                     // Within the skew: the record's own time.
        let (v, ts) = encode_one(b"2024-05-01T11:00:00Z ok", 1, now);
        assert_eq!(ts, now - 3_600_000);
        assert!(v["log"].get("original_timestamp").is_none());
        // Far past, far future, JSON time fields: the receive time, own time kept.
        for line in [
            &b"1999-01-01T00:00:00Z old"[..],
            b"2024-05-01T12:10:00Z too far ahead",
            br#"{"@timestamp":"2190-01-01T00:00:00Z","msg":"x"}"#,
            br#"{"ts":1,"msg":"x"}"#,
        ] {
            let (v, ts) = encode_one(line, 1, now);
            assert_eq!(ts, now, "{}", String::from_utf8_lossy(line));
            assert_eq!(v["@timestamp"], "2024-05-01T12:00:00.000Z");
            assert!(v["log"]["original_timestamp"].is_string(), "{v}");
            assert_eq!(v["log"]["flags"], serde_json::json!(["timestamp_refused"]));
        }
    }

    #[test]
    fn ids_are_stable() {
        let meta = SourceMeta {
            container_chain: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let e = StreamEncoder::new(&meta, Stream::Stderr, &EncodeOptions::default());
        let mut id = Vec::new();
        e.push_id(12345, &mut id);
        assert_eq!(
            String::from_utf8(id).unwrap(),
            format!("{:016x}-e-12345", fnv1a64(b"a.b"))
        );
        // Golden value: ids must never change between versions.
        assert_eq!(fnv1a64(b"root.child"), 0x894d_0750_1e7f_8bc1);
    }
}

#[cfg(test)]
#[path = "encode_json_tests.rs"]
mod json_tests;
