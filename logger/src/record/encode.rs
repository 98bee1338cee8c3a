//! Enrichment and encoding of records as Elastic Common Schema documents.
//!
//! Per stream, everything that does not change between records (container,
//! Mesos ids, labels, operator fields) is serialised once; a record costs its
//! timestamp, message, `log` object and, for JSON lines, the merged fields.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::json::{self, push_str, raw_as_str};
use super::multiline::Record;
use super::time::{parse_leading_timestamp, TsFormatter};
use super::Stream;

/// ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "8.11.0";

/// What the logger knows about a container; sent to the shipper at `prepare`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// Container id chain, root first (`["root", "child"]`).
    pub container_chain: Vec<String>,
    /// Mesos agent id.
    pub agent_id: Option<String>,
    /// Framework id.
    pub framework_id: Option<String>,
    /// Executor id.
    pub executor_id: Option<String>,
    /// Task id.
    pub task_id: Option<String>,
    /// Task name.
    pub task_name: Option<String>,
    /// ExecutorInfo labels.
    pub executor_labels: Vec<(String, String)>,
    /// TaskInfo labels (win over executor labels with the same key).
    pub task_labels: Vec<(String, String)>,
    /// The container's sandbox directory.
    pub sandbox: PathBuf,
}

impl SourceMeta {
    /// `root.child` form of the container id.
    pub fn container_id(&self) -> String {
        self.container_chain.join(".")
    }
}

/// Operator-level encoding settings.
#[derive(Clone, Debug, Default)]
pub struct EncodeOptions {
    /// Written as `host.name`.
    pub host_name: Option<String>,
    /// Operator fields merged at the top level of every document.
    pub extra_fields: serde_json::Map<String, serde_json::Value>,
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
        let top = key.split('.').next().unwrap_or(key);
        RESERVED.contains(&top) || self.extra_keys.iter().any(|k| k == top)
    }

    /// Appends the record as one JSON document to `out`; returns its
    /// timestamp (from the line if it has one, else `read_ms`).
    pub fn encode(&mut self, rec: &Record<'_>, read_ms: i64, out: &mut Vec<u8>) -> i64 {
        if let Some(fields) = json::parse_object(rec.text) {
            return self.encode_json(rec, &fields, read_ms, out);
        }
        let (ts, rest) = match parse_leading_timestamp(rec.text) {
            Some((ms, n)) => (ms, &rec.text[n..]),
            None => (read_ms, rec.text),
        };
        let level = detect_level(rest);
        out.extend_from_slice(b"{\"@timestamp\":\"");
        self.ts.push(ts, out);
        out.extend_from_slice(b"\",\"message\":");
        push_str(out, rec.text);
        out.push(b',');
        self.push_log(rec, level.map(str::as_bytes), out);
        out.extend_from_slice(&self.tail);
        out.push(b'}');
        ts
    }

    fn push_log(&self, rec: &Record<'_>, level: Option<&[u8]>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.log_head);
        out.extend_from_slice(itoa_u64(rec.offset).as_bytes_mut());
        if let Some(l) = level {
            out.extend_from_slice(b",\"level\":");
            push_str(out, l);
        }
        if rec.lines > 1 {
            out.extend_from_slice(b",\"flags\":[\"multiline\"],\"lines\":");
            out.extend_from_slice(itoa_u64(u64::from(rec.lines)).as_bytes_mut());
        }
        if let Some(s) = rec.split {
            out.extend_from_slice(b",\"flags\":[\"split\"],\"split\":{\"part\":");
            out.extend_from_slice(itoa_u64(u64::from(s.index)).as_bytes_mut());
            out.extend_from_slice(if s.last {
                b",\"last\":true}"
            } else {
                b",\"last\":false}"
            });
        }
        out.push(b'}');
    }

    fn encode_json(
        &mut self,
        rec: &Record<'_>,
        fields: &json::Fields<'_>,
        read_ms: i64,
        out: &mut Vec<u8>,
    ) -> i64 {
        let mut ts = None;
        let mut msg = None;
        let mut level = None;
        let mut used: [Option<&str>; 3] = [None; 3];
        for k in TIME_KEYS {
            if let Some(v) = fields.get(*k) {
                if let Some(t) = json_time(v) {
                    ts = Some(t);
                    used[0] = Some(k);
                    break;
                }
            }
        }
        for k in MESSAGE_KEYS {
            if let Some(s) = fields.get(*k).and_then(|v| raw_as_str(v)) {
                msg = Some(s);
                used[1] = Some(k);
                break;
            }
        }
        for k in LEVEL_KEYS {
            if let Some(s) = fields.get(*k).and_then(|v| raw_as_str(v)) {
                level = Some(
                    normalize_level(&s)
                        .map(str::to_string)
                        .unwrap_or(s.to_lowercase()),
                );
                used[2] = Some(k);
                break;
            }
        }
        let ts = ts.unwrap_or(read_ms);
        out.extend_from_slice(b"{\"@timestamp\":\"");
        self.ts.push(ts, out);
        out.extend_from_slice(b"\",\"message\":");
        push_str(out, msg.as_deref().map(str::as_bytes).unwrap_or(rec.text));
        out.push(b',');
        self.push_log(rec, level.as_deref().map(str::as_bytes), out);
        out.extend_from_slice(&self.tail);
        let mut nested = Vec::new();
        for (k, v) in fields {
            if used.contains(&Some(k.as_ref())) {
                continue;
            }
            let dst = if self.is_reserved(k) {
                &mut nested
            } else {
                &mut *out
            };
            dst.push(b',');
            push_str(dst, k.as_bytes());
            dst.push(b':');
            dst.extend_from_slice(v.get().as_bytes());
        }
        if !nested.is_empty() {
            out.extend_from_slice(b",\"json\":{");
            out.extend_from_slice(&nested[1..]);
            out.push(b'}');
        }
        out.push(b'}');
        ts
    }
}

// The value is finite and positive; out-of-range floats saturate, which is fine for a time.
#[allow(clippy::cast_possible_truncation)]
fn json_time(v: &serde_json::value::RawValue) -> Option<i64> {
    if let Some(s) = raw_as_str(v) {
        return parse_leading_timestamp(s.as_bytes())
            .filter(|(_, n)| *n == s.len())
            .map(|t| t.0);
    }
    let n: f64 = v.get().parse().ok()?;
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
