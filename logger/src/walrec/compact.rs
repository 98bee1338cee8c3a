//! Version-2 records and their meta frames (the layout is in the parent
//! module): the producer's side, and decoding.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use super::{frame_full, push_short, take_short};
use crate::record::pipeline::{DocParts, Encoded};
use crate::record::time::TsFormatter;
use crate::record::Stream;
use crate::wal::{Wal, META, META_REF};

/// The constant parts of a stream's records, held once by a meta frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta<'a> {
    /// Start of every record's id (the offset follows).
    pub id_prefix: &'a [u8],
    /// Container id, `root.child`.
    pub container: &'a [u8],
    /// Per-task index or topic; empty for the default.
    pub route: &'a [u8],
    /// The document's `"log":{"file":{...},"offset":`.
    pub log_head: &'a [u8],
    /// The document's fields after the `log` object (stream, container,
    /// Mesos ids, service, labels, host, ecs, operator fields).
    pub tail: &'a [u8],
}

/// A version-2 record (borrows the payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactRecord<'a> {
    /// Stream the record came from.
    pub stream: Stream,
    /// The meta frame it names.
    pub key: u64,
    /// Timestamp, ms since the epoch.
    pub ts_ms: i64,
    /// The id after the meta's prefix.
    pub id_suffix: &'a [u8],
    /// The document starts with `{"@timestamp":"<ts_ms formatted>","message":`,
    /// left out of `body` (the stream byte's high bit on disk).
    pub ts_head: bool,
    /// Where the log head goes in `body`.
    pub head_at: usize,
    /// Where the tail goes in `body` (not before `head_at`).
    pub tail_at: usize,
    /// The document without the log head and the tail.
    pub body: &'a [u8],
}

/// The stream byte's bit for a record whose document starts with
/// [`TS_OPEN`], its timestamp formatted, [`TS_CLOSE`] (every encoder document
/// does): those 51 bytes are made again at expansion instead of stored.
const TS_HEAD: u8 = 0x80;
const TS_OPEN: &[u8] = b"{\"@timestamp\":\"";
const TS_CLOSE: &[u8] = b"\",\"message\":";
const TS_LEN: usize = 24;
const TS_HEAD_LEN: usize = TS_OPEN.len() + TS_LEN + TS_CLOSE.len();

/// True when `doc` starts with exactly the head [`TS_HEAD`] stands for.
fn starts_with_ts_head(doc: &[u8], ts_ms: i64) -> bool {
    thread_local! {
        static TS: RefCell<(TsFormatter, Vec<u8>)> = RefCell::default();
    }
    let Some(head) = doc.get(..TS_HEAD_LEN) else {
        return false;
    };
    let ts = &head[TS_OPEN.len()..TS_OPEN.len() + TS_LEN];
    head.starts_with(TS_OPEN)
        && head.ends_with(TS_CLOSE)
        && TS.with(|c| {
            let (f, buf) = &mut *c.borrow_mut();
            buf.clear();
            f.push(ts_ms, buf);
            buf[..] == *ts
        })
}

fn push_long(out: &mut Vec<u8>, b: &[u8]) {
    let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&b[..n as usize]);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (v, rest) = b.split_at(n);
    *b = rest;
    Some(v)
}

fn take_u32(b: &mut &[u8]) -> Option<usize> {
    let v = take(b, 4)?;
    usize::try_from(u32::from_le_bytes(v.try_into().ok()?)).ok()
}

fn take_long<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = take_u32(b)?;
    take(b, n)
}

impl<'a> Meta<'a> {
    /// Appends the meta (a meta frame's payload after its key) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        push_short(out, self.id_prefix);
        push_short(out, self.container);
        push_short(out, self.route);
        push_long(out, self.log_head);
        push_long(out, self.tail);
    }

    /// Decodes a meta (a meta frame's payload after its key).
    pub fn decode(mut b: &'a [u8]) -> Option<Self> {
        let m = Meta {
            id_prefix: take_short(&mut b)?,
            container: take_short(&mut b)?,
            route: take_short(&mut b)?,
            log_head: take_long(&mut b)?,
            tail: take_long(&mut b)?,
        };
        b.is_empty().then_some(m)
    }

    /// Frames the meta at the end of `buf`; returns its key, a hash of its
    /// bytes keyed at random per process (a task cannot make its meta's key
    /// another's).
    pub fn frame_into(&self, buf: &mut Vec<u8>) -> u64 {
        static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let mut key = 0;
        Wal::frame_into(buf, |out| {
            out.push(META);
            let at = out.len();
            out.extend_from_slice(&[0; 8]);
            self.encode_into(out);
            key = KEYS
                .get_or_init(Default::default)
                .hash_one(&out[at + 8..])
                .max(1);
            out[at..at + 8].copy_from_slice(&key.to_le_bytes());
        });
        key
    }
}

impl<'a> CompactRecord<'a> {
    /// Appends the payload to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(META_REF);
        out.push(self.stream.tag() | if self.ts_head { TS_HEAD } else { 0 });
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        let n = u8::try_from(self.id_suffix.len()).unwrap_or(u8::MAX);
        out.push(n);
        out.extend_from_slice(&self.id_suffix[..usize::from(n)]);
        for at in [self.head_at, self.tail_at] {
            out.extend_from_slice(&u32::try_from(at).unwrap_or(u32::MAX).to_le_bytes());
        }
        out.extend_from_slice(self.body);
    }

    /// Decodes a payload; `None` if it is not a well-formed version-2 record.
    pub fn decode(mut b: &'a [u8]) -> Option<Self> {
        let head = take(&mut b, 18)?;
        if head[0] != META_REF {
            return None;
        }
        let ts_head = head[1] & TS_HEAD != 0;
        let stream = Stream::from_tag(head[1] & !TS_HEAD)?;
        let key = u64::from_le_bytes(head[2..10].try_into().ok()?);
        let ts_ms = i64::from_le_bytes(head[10..18].try_into().ok()?);
        let n = usize::from(*take(&mut b, 1)?.first()?);
        let id_suffix = take(&mut b, n)?;
        let head_at = take_u32(&mut b)?;
        let tail_at = take_u32(&mut b)?;
        (head_at <= tail_at && tail_at <= b.len()).then_some(CompactRecord {
            stream,
            ts_head,
            key,
            ts_ms,
            id_suffix,
            head_at,
            tail_at,
            body: b,
        })
    }

    /// Appends the whole document, given its meta, to `out` (`ts` formats a
    /// timestamp head left out).
    pub fn expand_doc(&self, meta: &Meta<'_>, ts: &mut TsFormatter, out: &mut Vec<u8>) {
        let b = self.body;
        out.reserve(TS_HEAD_LEN + b.len() + meta.log_head.len() + meta.tail.len());
        if self.ts_head {
            out.extend_from_slice(TS_OPEN);
            ts.push(self.ts_ms, out);
            out.extend_from_slice(TS_CLOSE);
        }
        out.extend_from_slice(&b[..self.head_at]);
        out.extend_from_slice(meta.log_head);
        out.extend_from_slice(&b[self.head_at..self.tail_at]);
        out.extend_from_slice(meta.tail);
        out.extend_from_slice(&b[self.tail_at..]);
    }
}

/// True when `doc` holds the parts where `p` says, and `id` starts with
/// the prefix: then the compact record expands to exactly `doc` and `id`.
fn holds(p: &DocParts<'_>, e: &Encoded<'_>) -> bool {
    let (h, t) = (p.head_at, p.tail_at);
    h.checked_add(p.log_head.len()).is_some_and(|end| end <= t)
        && e.doc.get(h..).is_some_and(|d| d.starts_with(p.log_head))
        && e.doc.get(t..).is_some_and(|d| d.starts_with(p.tail))
        && e.id.starts_with(p.id_prefix)
        && e.id.len() - p.id_prefix.len() <= usize::from(u8::MAX)
        && u32::try_from(e.doc.len()).is_ok()
}

/// Frames one record a stream's pipeline encoded into `buf`, as the disk
/// buffer stores it (the parser and the fallen-back files' follower): as
/// version 2, after its meta frame when it is the first of its run (see
/// [`DocParts::fresh`]); as version 1 when the encoder gave no parts or
/// the document does not hold them.
pub fn frame_encoded(
    buf: &mut Vec<u8>,
    stream: Stream,
    container: &[u8],
    route: &[u8],
    e: &Encoded<'_>,
) {
    let Some(p) = e.parts else {
        return frame_full(buf, stream, container, route, e);
    };
    if !holds(&p, e) {
        if p.fresh {
            // This run's records name no meta frame until one is framed.
            p.key.store(0, Ordering::Relaxed);
        }
        return frame_full(buf, stream, container, route, e);
    }
    let mut key = p.key.load(Ordering::Relaxed);
    if p.fresh || key == 0 {
        let meta = Meta {
            id_prefix: p.id_prefix,
            container,
            route,
            log_head: p.log_head,
            tail: p.tail,
        };
        key = meta.frame_into(buf);
        p.key.store(key, Ordering::Relaxed);
    }
    let (h, t) = (p.head_at, p.tail_at);
    let head_end = h + p.log_head.len();
    let tail_end = t + p.tail.len();
    let ts_head = h >= TS_HEAD_LEN && starts_with_ts_head(e.doc, e.ts_ms);
    let skip = if ts_head { TS_HEAD_LEN } else { 0 };
    Wal::frame_into(buf, |out| {
        let rec = CompactRecord {
            stream,
            ts_head,
            key,
            ts_ms: e.ts_ms,
            id_suffix: &e.id[p.id_prefix.len()..],
            head_at: h - skip,
            tail_at: t - p.log_head.len() - skip,
            body: &[],
        };
        rec.encode_into(out);
        out.extend_from_slice(&e.doc[skip..h]);
        out.extend_from_slice(&e.doc[head_end..t]);
        out.extend_from_slice(&e.doc[tail_end..]);
    });
}
