//! Whole records out of disk-buffer payloads of either version: what every
//! sink is handed.

use std::collections::HashMap;

use super::compact::{CompactRecord, Meta};
use super::WalRecord;
use crate::record::time::TsFormatter;
use crate::record::Stream;
use crate::wal::{meta_key, Batch, Wal, META_HDR, META_REF};

/// Why a payload gave no record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// Not a record of either version (corrupt).
    #[error("undecodable disk-buffer record")]
    Undecodable,
    /// A version-2 record whose meta frame the buffer does not hold before it.
    #[error("disk-buffer record without its meta frame (key {0:016x})")]
    MissingMeta(u64),
    /// Its meta frame is not a meta (corrupt).
    #[error("disk-buffer record with an undecodable meta frame (key {0:016x})")]
    BadMeta(u64),
}

type Span = (usize, usize);

#[derive(Clone, Copy, Debug)]
struct Item {
    stream: Stream,
    ts_ms: i64,
    id: Span,
    container: Span,
    route: Span,
    doc: Span,
}

/// Whole records (id, container, route, document) made from payloads,
/// kept in one buffer: version 1 as it is, version 2 expanded with its meta.
#[derive(Debug, Default)]
pub struct Expander {
    buf: Vec<u8>,
    items: Vec<Item>,
    /// Formats the timestamp heads left out of compact records (the day and
    /// second kept from one record to the next).
    ts: TsFormatter,
}

impl Expander {
    /// Forgets the records made so far (keeps the memory).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    /// Number of records made.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no record was made.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn put(&mut self, parts: &[&[u8]]) -> Span {
        let a = self.buf.len();
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        (a, self.buf.len())
    }

    /// Makes the record of `payload`; `meta` gives a meta by its key.
    pub fn push<'m>(
        &mut self,
        payload: &[u8],
        meta: impl FnOnce(u64) -> Option<&'m [u8]>,
    ) -> Result<(), ExpandError> {
        if payload.first() != Some(&META_REF) {
            let r = WalRecord::decode(payload).ok_or(ExpandError::Undecodable)?;
            let item = Item {
                stream: r.stream,
                ts_ms: r.ts_ms,
                id: self.put(&[r.id]),
                container: self.put(&[r.container]),
                route: self.put(&[r.route]),
                doc: self.put(&[r.doc]),
            };
            self.items.push(item);
            return Ok(());
        }
        let r = CompactRecord::decode(payload).ok_or(ExpandError::Undecodable)?;
        let m = meta(r.key).ok_or(ExpandError::MissingMeta(r.key))?;
        let m = Meta::decode(m).ok_or(ExpandError::BadMeta(r.key))?;
        let id = self.put(&[m.id_prefix, r.id_suffix]);
        let container = self.put(&[m.container]);
        let route = self.put(&[m.route]);
        let a = self.buf.len();
        r.expand_doc(&m, &mut self.ts, &mut self.buf);
        self.items.push(Item {
            stream: r.stream,
            ts_ms: r.ts_ms,
            id,
            container,
            route,
            doc: (a, self.buf.len()),
        });
        Ok(())
    }

    /// Makes the records of `batch`, in order; a payload that gives none
    /// is handed to `failed` with its index and why.
    pub fn push_batch(&mut self, batch: &Batch, mut failed: impl FnMut(usize, ExpandError)) {
        for (i, raw) in batch.iter().enumerate() {
            if let Err(e) = self.push(raw, |k| batch.meta(k)) {
                failed(i, e);
            }
        }
    }

    /// The records made, in order.
    pub fn records(&self) -> Vec<WalRecord<'_>> {
        let s = |(a, b): Span| &self.buf[a..b];
        self.items
            .iter()
            .map(|it| WalRecord {
                stream: it.stream,
                ts_ms: it.ts_ms,
                id: s(it.id),
                container: s(it.container),
                route: s(it.route),
                doc: s(it.doc),
            })
            .collect()
    }

    /// The records of the frames of `framed` (as a producer framed them
    /// for the disk buffer: meta frames learnt in order, records made).
    pub fn push_frames(&mut self, framed: &[u8]) -> Result<(), ExpandError> {
        let mut metas: HashMap<u64, &[u8]> = HashMap::new();
        for payload in Wal::frames(framed) {
            match meta_key(payload) {
                Some(k) => {
                    metas.insert(k, &payload[META_HDR..]);
                }
                None => self.push(payload, |k| metas.get(&k).copied())?,
            }
        }
        Ok(())
    }

    /// The records of `batch`, each whole; panics on a payload that gives
    /// none (for tests and tools reading a buffer they wrote).
    pub fn expand(&mut self, batch: &Batch) -> Vec<WalRecord<'_>> {
        self.clear();
        self.push_batch(batch, |i, e| panic!("record {i} of the batch: {e}"));
        self.records()
    }
}
