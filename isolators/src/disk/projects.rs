//! The project id allocator: ids from the operator's range, never handed out twice.
//!
//! An id is *in use* from `allocate()` (or `reserve()` on recovery) until `release()`.
//! The isolator releases an id only once the sandbox that carries it is gone (Mesos
//! garbage-collects sandboxes long after `cleanup()`), because files left in the
//! sandbox still count against the id.

use std::collections::BTreeSet;

/// Allocation errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    /// Every id of the range is in use.
    #[error("all {0} project ids of the range are in use (sandboxes awaiting garbage collection hold theirs)")]
    Exhausted(u64),
    /// An id outside the range.
    #[error("project id {id} is outside the configured range {first}-{last}")]
    OutOfRange {
        /// The id.
        id: u32,
        /// Start of the range.
        first: u32,
        /// End of the range.
        last: u32,
    },
    /// Reserving an id already held.
    #[error("project id {0} is already in use")]
    Taken(u32),
}

/// Hands out project ids from an inclusive range.
#[derive(Debug, Clone)]
pub struct ProjectAllocator {
    first: u32,
    last: u32,
    used: BTreeSet<u32>,
    next: u32,
}

impl ProjectAllocator {
    /// An allocator for `first..=last`. Id 0 (the default project of every file) is
    /// never handed out.
    pub fn new(first: u32, last: u32) -> Self {
        let first = first.max(1);
        Self {
            first,
            last,
            used: BTreeSet::new(),
            next: first,
        }
    }

    /// The range, inclusive.
    pub fn range(&self) -> (u32, u32) {
        (self.first, self.last)
    }

    /// Whether `id` belongs to the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// How many ids the range holds.
    pub fn total(&self) -> u64 {
        if self.last < self.first {
            0
        } else {
            u64::from(self.last - self.first) + 1
        }
    }

    /// How many are free.
    pub fn free(&self) -> u64 {
        self.total() - self.used.len() as u64
    }

    /// Allocates the next free id, round-robin, so an id released a moment ago is not
    /// reused at once.
    pub fn allocate(&mut self) -> Result<u32, ProjectError> {
        if self.free() == 0 {
            return Err(ProjectError::Exhausted(self.total()));
        }
        let mut candidate = self.next;
        loop {
            let following = if candidate >= self.last {
                self.first
            } else {
                candidate + 1
            };
            if self.used.insert(candidate) {
                self.next = following;
                return Ok(candidate);
            }
            candidate = following;
        }
    }

    /// Marks a known id used (recovery).
    pub fn reserve(&mut self, id: u32) -> Result<(), ProjectError> {
        if !self.contains(id) {
            return Err(ProjectError::OutOfRange {
                id,
                first: self.first,
                last: self.last,
            });
        }
        if !self.used.insert(id) {
            return Err(ProjectError::Taken(id));
        }
        Ok(())
    }

    /// Returns an id; releasing a free id is harmless.
    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }

    /// Whether an id is held.
    pub fn is_used(&self, id: u32) -> bool {
        self.used.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_all_then_exhausts() {
        let mut a = ProjectAllocator::new(5000, 5002);
        assert_eq!(a.total(), 3);
        let got: Vec<u32> = (0..3).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(got, vec![5000, 5001, 5002]);
        assert_eq!(a.allocate().unwrap_err(), ProjectError::Exhausted(3));
        assert_eq!(a.free(), 0);
        a.release(5001);
        assert_eq!(a.free(), 1);
        assert_eq!(a.allocate().unwrap(), 5001);
    }

    #[test]
    fn round_robin_and_reserve() {
        let mut a = ProjectAllocator::new(0, 10);
        assert_eq!(a.range(), (1, 10));
        let first = a.allocate().unwrap();
        assert_eq!(first, 1);
        a.release(first);
        assert_ne!(a.allocate().unwrap(), first);
        assert_eq!(a.reserve(1), Ok(()));
        assert_eq!(a.reserve(1), Err(ProjectError::Taken(1)));
        assert!(matches!(
            a.reserve(11),
            Err(ProjectError::OutOfRange { id: 11, .. })
        ));
        // Reserved ids are skipped by later allocations.
        a.reserve(3).unwrap();
        assert_eq!(a.allocate().unwrap(), 4);
    }

    #[test]
    fn never_hands_out_an_id_twice() {
        let mut a = ProjectAllocator::new(1, 50);
        let mut seen = BTreeSet::new();
        for round in 0..200u32 {
            let id = a.allocate().unwrap();
            assert!(seen.insert(id), "id {id} handed out twice");
            if round % 3 == 0 {
                // Release an older one now and then.
                let old = *seen.iter().next().unwrap();
                seen.remove(&old);
                a.release(old);
            }
            if a.free() == 0 {
                let old = *seen.iter().next_back().unwrap();
                seen.remove(&old);
                a.release(old);
            }
        }
        assert_eq!(a.free(), a.total() - seen.len() as u64);
    }

    #[test]
    fn empty_range() {
        let mut a = ProjectAllocator::new(10, 9);
        assert_eq!(a.total(), 0);
        assert!(a.allocate().is_err());
    }
}
