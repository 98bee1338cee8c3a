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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::format::{header, meta_key, meta_ref, HDR, META_HDR};
use super::ledger::Pos;

/// Segments a meta frame is kept for after the last one it was written
/// in: a record queued later naming it (a run of records pushed in several
/// pieces) gets it again in its segment.
const KEEP_SEGMENTS: u64 = 2;

/// The meta frames the writer has written.
#[derive(Debug, Default)]
pub(super) struct WrittenMetas {
    /// Keys of those in the segment being written.
    cur: HashSet<u64>,
    /// Whole frames by key, with the last segment each was written in.
    frames: HashMap<u64, (Vec<u8>, u64)>,
    /// The segment being written.
    seq: u64,
}

/// What a piece of the queue needs before it: meta frames its segment
/// lacks, and the meta frames it brings.
#[derive(Debug, Default)]
pub(super) struct Prefix {
    /// Meta frames to write before the piece.
    pub(super) bytes: Vec<u8>,
    /// Meta frames (whole, by key) the segment holds once the piece is written.
    adds: Vec<(u64, Vec<u8>)>,
    /// Records naming a meta the writer does not know.
    pub(super) unknown: u64,
}

impl WrittenMetas {
    /// The metas of segment `seq`, holding none yet.
    pub(super) fn new(seq: u64) -> Self {
        WrittenMetas {
            seq,
            ..Default::default()
        }
    }

    /// Frames of `piece` (whole frames) to be written in the current
    /// segment: the meta frames to write before it.
    pub(super) fn prefix(&self, piece: &[u8]) -> Prefix {
        let mut p = Prefix::default();
        let mut pos = 0;
        // Records come in runs naming one meta: one lookup per run.
        let mut last = None;
        while let Some((len, _)) = header(piece, pos) {
            let end = (pos + HDR + len).min(piece.len());
            let frame = &piece[pos..end];
            let payload = &frame[HDR.min(frame.len())..];
            let new =
                |k: u64, p: &Prefix| !self.cur.contains(&k) && !p.adds.iter().any(|a| a.0 == k);
            if let Some(k) = meta_key(payload) {
                if new(k, &p) {
                    p.adds.push((k, frame.to_vec()));
                }
            } else if let Some(k) = meta_ref(payload).filter(|&k| last != Some(k)) {
                last = Some(k);
                if new(k, &p) {
                    match self.frames.get(&k) {
                        Some((f, _)) => {
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
        for (k, f) in p.adds {
            self.cur.insert(k);
            self.frames.insert(k, (f, self.seq));
        }
    }

    /// Segment `seq` begins: it holds no meta yet; those not written for
    /// [`KEEP_SEGMENTS`] are forgotten.
    pub(super) fn rolled(&mut self, seq: u64) {
        self.cur.clear();
        self.seq = seq;
        self.frames.retain(|_, f| f.1 + KEEP_SEGMENTS >= seq);
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
