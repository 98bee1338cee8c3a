//! The payload of one disk-buffer record: a sink-independent envelope around
//! the encoded document, in one of two forms.
//!
//! Version 1, the whole document:
//! `[1][stream tag][ts_ms: i64 LE][id_len: u16][id][cid_len: u16][container id]`
//! `[route_len: u16][route][document]` — `route` is the per-task index or
//! topic (empty: the operator's default).
//!
//! Version 2 ([`compact`]), the document without the parts every record of
//! its stream has alike, which a meta frame of the same segment holds once:
//! `[2][stream tag][meta key: u64 LE][ts_ms: i64 LE][suffix_len: u8][id suffix]`
//! `[head_at: u32 LE][tail_at: u32 LE][body]`, the meta frame's payload being
//! `[3][key: u64 LE][prefix_len: u16][id prefix][cid_len: u16][container id]`
//! `[route_len: u16][route][head_len: u32][log head][tail_len: u32][tail]`.
//! The document is `body[..head_at] + log head + body[head_at..tail_at] +
//! tail + body[tail_at..]` and the id is `id prefix + id suffix`: an
//! [`Expander`] makes them, byte for byte the version-1 record's. With the
//! stream tag's high bit set, the document's first 51 bytes,
//! `{"@timestamp":"<ts_ms as 2024-05-01T12:00:00.000Z>","message":`, are
//! not stored but made again from `ts_ms` before the body (set only when the
//! document starts with exactly those bytes: every encoder document does).
//!
//! The producers write version 2 ([`frame_encoded`]); version-1 records
//! (a buffer written by an older shipper, or by [`WalRecord::encode_into`])
//! are read as they always were.

mod compact;
mod expand;

pub use compact::{frame_encoded, CompactRecord, Meta};
pub use expand::{ExpandError, Expander};

use crate::record::Stream;

/// A decoded record (borrows the payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRecord<'a> {
    /// Stream the record came from.
    pub stream: Stream,
    /// Timestamp, ms since the epoch (picks the dated index).
    pub ts_ms: i64,
    /// Deterministic document id.
    pub id: &'a [u8],
    /// Container id, `root.child` (the Kafka key).
    pub container: &'a [u8],
    /// Per-task index or topic; empty for the default.
    pub route: &'a [u8],
    /// The JSON document.
    pub doc: &'a [u8],
}

const VERSION: u8 = 1;

fn push_short(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

fn take_short<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    if b.len() < 2 {
        return None;
    }
    let n = usize::from(u16::from_le_bytes([b[0], b[1]]));
    if b.len() < 2 + n {
        return None;
    }
    let v = &b[2..2 + n];
    *b = &b[2 + n..];
    Some(v)
}

impl<'a> WalRecord<'a> {
    /// Appends the encoded payload (version 1) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.push(self.stream.tag());
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        push_short(out, self.id);
        push_short(out, self.container);
        push_short(out, self.route);
        out.extend_from_slice(self.doc);
    }

    /// Decodes a payload; `None` if it is not a version-1 record (a
    /// version-2 one needs its meta: see [`Expander`]).
    pub fn decode(mut b: &'a [u8]) -> Option<Self> {
        if b.len() < 10 || b[0] != VERSION {
            return None;
        }
        let stream = Stream::from_tag(b[1])?;
        let ts_ms = i64::from_le_bytes(b[2..10].try_into().ok()?);
        b = &b[10..];
        let id = take_short(&mut b)?;
        let container = take_short(&mut b)?;
        let route = take_short(&mut b)?;
        Some(WalRecord {
            stream,
            ts_ms,
            id,
            container,
            route,
            doc: b,
        })
    }
}

/// Frames one record as version 1 (the whole document).
fn frame_full(
    buf: &mut Vec<u8>,
    stream: Stream,
    container: &[u8],
    route: &[u8],
    e: &crate::record::pipeline::Encoded<'_>,
) {
    crate::wal::Wal::frame_into(buf, |out| {
        WalRecord {
            stream,
            ts_ms: e.ts_ms,
            id: e.id,
            container,
            route,
            doc: e.doc,
        }
        .encode_into(out);
    });
}

#[cfg(test)]
pub(crate) mod tests;
