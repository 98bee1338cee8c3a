//! Meta frames (see [`super::format`]): the writer keeps every segment
//! self-contained, the reader learns them as it reads.
//!
//! The writer knows which metas the segment being written holds. A record
//! naming one the segment lacks (its meta frame went to the segment before
//! a roll, or to an earlier piece of a queue written in pieces) gets the
//! meta frame written again just before it. The reader learns metas as it
//! reads frames; starting in the middle of a segment (after a restart, at
//! the acknowledged cursor) it first reads the segment's frames before the
//! start for their metas.

use std::collections::HashMap;
use std::sync::Arc;

use super::format::{header, meta_key, meta_ref, HDR, META_HDR};
use super::ledger::Pos;

/// The meta frames the writer has written, by key.
#[derive(Debug, Default)]
pub(super) struct WrittenMetas {
    /// Whole frames in the segment being written.
    cur: HashMap<u64, Vec<u8>>,
    /// Whole frames of earlier segments, kept while records still queued
    /// may name them.
    old: HashMap<u64, Vec<u8>>,
}

/// What a piece of the queue needs before it: meta frames its segment
/// lacks, and the meta frames it brings.
#[derive(Debug, Default)]
pub(super) struct Prefix {
    /// Meta frames to write before the piece.
    pub(super) bytes: Vec<u8>,
    /// Meta frames (whole, by key) the segment holds once the piece is written.
    adds: Vec<(u64, Vec<u8>)>,
    /// Records naming a meta the writer never saw.
    pub(super) unknown: u64,
}

impl WrittenMetas {
    /// Frames of `piece` (whole frames) to be written in the current
    /// segment: the meta frames to write before it.
    pub(super) fn prefix(&self, piece: &[u8]) -> Prefix {
        let mut p = Prefix::default();
        let mut pos = 0;
        while let Some((len, _)) = header(piece, pos) {
            let end = (pos + HDR + len).min(piece.len());
            let frame = &piece[pos..end];
            let payload = &frame[HDR.min(frame.len())..];
            if let Some(k) = meta_key(payload) {
                if !self.cur.contains_key(&k) && !p.adds.iter().any(|(a, _)| *a == k) {
                    p.adds.push((k, frame.to_vec()));
                }
            } else if let Some(k) = meta_ref(payload) {
                if !self.cur.contains_key(&k) && !p.adds.iter().any(|(a, _)| *a == k) {
                    match self.old.get(&k) {
                        Some(f) => {
                            p.bytes.extend_from_slice(f);
                            p.adds.push((k, f.clone()));
                        }
                        None => p.unknown += 1,
                    }
                }
            }
            pos = end;
        }
        p
    }

    /// The piece and its prefix are written.
    pub(super) fn written(&mut self, p: Prefix) {
        self.cur.extend(p.adds);
    }

    /// A new segment begins: it holds no meta yet.
    pub(super) fn rolled(&mut self) {
        let cur = std::mem::take(&mut self.cur);
        self.old.extend(cur);
    }

    /// Nothing is queued: no record can name an earlier segment's meta.
    pub(super) fn queue_empty(&mut self) {
        self.old = HashMap::new();
    }
}

/// The metas the reader has learnt.
#[derive(Debug, Default)]
pub(super) struct ReadMetas {
    /// By key: the meta and the last segment it was seen in.
    known: HashMap<u64, (Arc<[u8]>, u64)>,
    /// Frames are learnt up to here.
    pub(super) learnt: Pos,
    /// Metas of segments before this one are forgotten.
    kept_from: u64,
}

impl ReadMetas {
    /// Learns the meta of `payload` (a frame at segment `seg`), if it is one.
    pub(super) fn learn(&mut self, seg: u64, payload: &[u8]) -> bool {
        let Some(k) = meta_key(payload) else {
            return false;
        };
        match self.known.get_mut(&k) {
            Some(e) if *e.0 == payload[META_HDR..] => e.1 = seg,
            _ => {
                self.known.insert(k, (Arc::from(&payload[META_HDR..]), seg));
            }
        }
        true
    }

    /// The meta named `key`.
    pub(super) fn get(&self, key: u64) -> Option<&Arc<[u8]>> {
        self.known.get(&key).map(|e| &e.0)
    }

    /// Forgets the metas seen last before segment `seg` (acknowledged).
    pub(super) fn forget_before(&mut self, seg: u64) {
        if seg > self.kept_from {
            self.known.retain(|_, e| e.1 >= seg);
            self.kept_from = seg;
        }
    }
}
