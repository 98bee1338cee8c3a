//! Object keys of the S3 sink, and which records share an object.
//!
//! A batch's records are grouped by prefix (the route), UTC day and
//! container, in batch order; each group is one object:
//!
//! `<prefix>/<yyyy>/<mm>/<dd>/<framework id>/<task id>/<container id>/<first record id>.ndjson.gz`
//!
//! (the executor id where the container has no task id). The key depends
//! only on the group's first record, so a batch formed again from the first
//! unacknowledged record after a crash gives every object the same key, and
//! its upload overwrites the earlier one: each record ends up in exactly one
//! object. Ids are the task's bytes: each becomes one key segment of
//! `[A-Za-z0-9._-]`, any other byte (and a segment of dots only) written
//! `!XX` (hex), an empty or missing id `!`, a segment over 128 bytes cut and
//! ended with `!h` and a hash of the whole id, so a segment is never `/`,
//! `.` or `..` and distinct ids stay distinct.

use std::collections::HashMap;
use std::fmt::Write;

use serde::Deserialize;

use crate::record::encode::fnv1a64;
use crate::record::time::ymd;
use crate::walrec::WalRecord;

/// Longest key segment made from an id.
pub const MAX_SEGMENT: usize = 128;

/// Containers whose key segments are remembered (beyond, forgotten at once).
const MAX_CACHED: usize = 4096;

/// Appends `raw` as one key segment (see the module's documentation).
pub fn push_segment(out: &mut String, raw: &[u8]) {
    if raw.is_empty() {
        out.push('!');
        return;
    }
    let dots = raw.iter().all(|&b| b == b'.');
    let start = out.len();
    for &b in raw {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !dots) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "!{b:02X}");
        }
    }
    if out.len() - start > MAX_SEGMENT {
        // Cut before an escape rather than through it.
        let mut cut = start + MAX_SEGMENT - 18;
        let bytes = out.as_bytes();
        if bytes[cut - 1] == b'!' {
            cut -= 1;
        } else if bytes[cut - 2] == b'!' {
            cut -= 2;
        }
        out.truncate(cut);
        let _ = write!(out, "!h{:016x}", fnv1a64(raw));
    }
}

/// The ids a record's document carries (`mesos.framework.id`,
/// `mesos.task.id`, `mesos.executor.id`).
#[derive(Deserialize, Default)]
struct Doc<'a> {
    #[serde(borrow, default)]
    mesos: Mesos<'a>,
}

#[derive(Deserialize, Default)]
struct Mesos<'a> {
    #[serde(borrow, default)]
    framework: Id<'a>,
    #[serde(borrow, default)]
    executor: Id<'a>,
    #[serde(borrow, default)]
    task: Id<'a>,
}

#[derive(Deserialize, Default)]
struct Id<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
}

/// `<framework>/<task or executor>/<container>` of a record, as key segments.
fn container_segments(r: &WalRecord<'_>) -> String {
    let doc: Doc<'_> = serde_json::from_slice(r.doc).unwrap_or_default();
    let m = doc.mesos;
    let mut out = String::with_capacity(128);
    push_segment(&mut out, m.framework.id.as_deref().unwrap_or("").as_bytes());
    out.push('/');
    let task = m.task.id.or(m.executor.id);
    push_segment(&mut out, task.as_deref().unwrap_or("").as_bytes());
    out.push('/');
    push_segment(&mut out, r.container);
    out
}

/// The key segments of each container, parsed from the first record of it
/// seen (every record of a container carries the same ids).
#[derive(Debug, Default)]
pub struct SegmentCache {
    by_container: HashMap<Vec<u8>, String>,
}

impl SegmentCache {
    fn get(&mut self, r: &WalRecord<'_>) -> &str {
        if !self.by_container.contains_key(r.container) && self.by_container.len() >= MAX_CACHED {
            self.by_container.clear();
        }
        self.by_container
            .entry(r.container.to_vec())
            .or_insert_with(|| container_segments(r))
    }
}

/// One object of a batch: its key and its records (indices into the
/// records sent, in batch order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectGroup {
    /// The object key.
    pub key: String,
    /// The route (prefix) its records go to.
    pub target: String,
    /// Indices of its records.
    pub records: Vec<usize>,
}

/// What records sharing an object have in common: prefix, UTC day, container.
type GroupKey<'a> = (&'a str, (i64, u32, u32), &'a [u8]);

/// Groups `records` (with their `targets`, the prefixes) into objects, in
/// order of each object's first record.
pub fn group(
    records: &[WalRecord<'_>],
    targets: &[String],
    cache: &mut SegmentCache,
) -> Vec<ObjectGroup> {
    let mut groups: Vec<ObjectGroup> = Vec::new();
    let mut index: HashMap<GroupKey<'_>, usize> = HashMap::new();
    for (i, (r, target)) in records.iter().zip(targets).enumerate() {
        let day = ymd(r.ts_ms);
        let g = *index
            .entry((target.as_str(), day, r.container))
            .or_insert_with(|| {
                let (y, m, d) = day;
                let mut key = String::with_capacity(target.len() + 200);
                let _ = write!(key, "{target}/{y:04}/{m:02}/{d:02}/");
                key.push_str(cache.get(r));
                key.push('/');
                push_segment(&mut key, r.id);
                key.push_str(".ndjson.gz");
                groups.push(ObjectGroup {
                    key,
                    target: target.clone(),
                    records: Vec::new(),
                });
                groups.len() - 1
            });
        groups[g].records.push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Stream;

    fn seg(raw: &[u8]) -> String {
        let mut s = String::new();
        push_segment(&mut s, raw);
        s
    }

    #[test]
    fn segments_are_safe_and_distinct() {
        assert_eq!(seg(b"5f1c-0001.x_y"), "5f1c-0001.x_y");
        assert_eq!(seg(b"a/b"), "a!2Fb");
        assert_eq!(seg(b".."), "!2E!2E");
        assert_eq!(seg(b"."), "!2E");
        assert_eq!(seg(b""), "!");
        assert_eq!(seg(b"!2F"), "!212F");
        assert_eq!(seg("é\n".as_bytes()), "!C3!A9!0A");
        let long = vec![b'/'; 300];
        let s = seg(&long);
        assert!(s.len() <= MAX_SEGMENT, "{} {s}", s.len());
        assert!(s.contains("!h"));
        assert_ne!(s, seg(&long[1..]));
        // Every byte value: only safe characters come out.
        let all: Vec<u8> = (0..=255).collect();
        for c in all.chunks(7) {
            let s = seg(c);
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!".contains(&b)),
                "{s}"
            );
        }
    }

    fn rec<'a>(id: &'a [u8], container: &'a [u8], ts_ms: i64, doc: &'a [u8]) -> WalRecord<'a> {
        WalRecord {
            stream: Stream::Stdout,
            ts_ms,
            id,
            container,
            route: b"",
            doc,
        }
    }

    #[test]
    fn one_object_per_prefix_day_and_container_keyed_by_its_first_record() {
        let doc_a = br#"{"message":"x","mesos":{"agent":{"id":"ag"},"framework":{"id":"fw-1"},"executor":{"id":"ex"},"task":{"id":"web.1"},"container":{"id":"c1"}}}"#;
        let doc_b =
            br#"{"message":"y","mesos":{"framework":{"id":"fw/2"},"executor":{"id":"ex.2"}}}"#;
        let day = 1_714_564_800_000; // 2024-05-01
        let next = day + 86_400_000;
        let recs = [
            rec(b"h-o-1", b"c1", day, doc_a),
            rec(b"h-o-2", b"c2", day, doc_b),
            rec(b"h-o-3", b"c1", day, doc_a),
            rec(b"h-o-4", b"c1", next, doc_a),
            rec(b"h-o-5", b"c1", day, doc_a),
            rec(b"x", b"c3", day, b"not json"),
        ];
        let targets: Vec<String> = ["p", "p", "p", "p", "q/r", "p"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let g = group(&recs, &targets, &mut SegmentCache::default());
        let keys: Vec<(&str, &[usize])> = g
            .iter()
            .map(|g| (g.key.as_str(), g.records.as_slice()))
            .collect();
        assert_eq!(
            keys,
            [
                ("p/2024/05/01/fw-1/web.1/c1/h-o-1.ndjson.gz", &[0, 2][..]),
                ("p/2024/05/01/fw!2F2/ex.2/c2/h-o-2.ndjson.gz", &[1][..]),
                ("p/2024/05/02/fw-1/web.1/c1/h-o-4.ndjson.gz", &[3][..]),
                ("q/r/2024/05/01/fw-1/web.1/c1/h-o-5.ndjson.gz", &[4][..]),
                ("p/2024/05/01/!/!/c3/x.ndjson.gz", &[5][..]),
            ]
        );
        // A resend from the same first record: the same keys, even with
        // more records after it.
        let g2 = group(&recs[..3], &targets[..3], &mut SegmentCache::default());
        assert_eq!(g2[0].key, g[0].key);
        assert_eq!(g2[1].key, g[1].key);
    }
}
