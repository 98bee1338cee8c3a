//! Records framed by producers and not yet taken by a writer. Producers only
//! ever hold this lock (a copy or a swap), never the writer's: a parser
//! thread goes on parsing while another one writes, and whoever writes takes
//! what the others queued meanwhile (see [`super::Wal::commit_or_leave`]).

use super::format::frame_header;

/// Queued bytes past which [`super::Wal::commit_or_leave`] waits for the
/// writer like [`super::Wal::commit`]: producers faster than the disk are
/// held back instead of queueing without bound.
pub(super) const QUEUE_MAX: usize = 8 << 20;

/// The producers' side of the buffer.
#[derive(Debug, Default)]
pub(super) struct Queued {
    bytes: Vec<u8>,
    records: u64,
}

impl Queued {
    /// Queues framed records.
    pub(super) fn push(&mut self, framed: &[u8], records: u64) {
        self.bytes.extend_from_slice(framed);
        self.records += records;
    }

    /// Queues framed records, taking `framed` (left empty) without a copy
    /// when nothing else is queued.
    pub(super) fn push_vec(&mut self, framed: &mut Vec<u8>, records: u64) {
        if self.bytes.is_empty() {
            std::mem::swap(&mut self.bytes, framed);
        } else {
            self.bytes.extend_from_slice(framed);
        }
        framed.clear();
        self.records += records;
    }

    /// Queues one record.
    pub(super) fn push_one(&mut self, payload: &[u8]) {
        self.bytes.extend_from_slice(&frame_header(payload));
        self.bytes.extend_from_slice(payload);
        self.records += 1;
    }

    /// Bytes queued.
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Moves everything queued to the end of `to` (without a copy when `to`
    /// is empty); returns how many records.
    pub(super) fn take_into(&mut self, to: &mut Vec<u8>) -> u64 {
        if to.is_empty() {
            // `to`'s capacity comes back for the next producer.
            std::mem::swap(&mut self.bytes, to);
        } else {
            to.extend_from_slice(&self.bytes);
            self.bytes.clear();
        }
        std::mem::take(&mut self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_moves_every_queued_byte_in_order_and_leaves_nothing() {
        let mut q = Queued::default();
        q.push(b"ab", 1);
        let mut v = b"cd".to_vec();
        q.push_vec(&mut v, 2);
        assert!(v.is_empty());
        let mut to = b"x".to_vec();
        assert_eq!(q.take_into(&mut to), 3);
        assert_eq!(to, b"xabcd");
        assert_eq!((q.len(), q.take_into(&mut to)), (0, 0));
        // An empty writer's carry takes the queue whole.
        q.push(b"ef", 1);
        let mut empty = Vec::new();
        assert_eq!(q.take_into(&mut empty), 1);
        assert_eq!(empty, b"ef");
        assert_eq!(q.len(), 0);
    }
}
