//! The net_cls handle allocator: a primary handle and a range of secondary handles,
//! as Mesos's `--cgroups_net_cls_primary_handle` / `--cgroups_net_cls_secondary_handles`.

use std::collections::BTreeSet;
use std::fmt;

/// A `major:minor` handle; the classid is `major << 16 | minor`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Handle {
    /// Primary (tc major) handle.
    pub primary: u16,
    /// Secondary (tc minor) handle.
    pub secondary: u16,
}

impl Handle {
    /// The value written to `net_cls.classid`.
    pub fn classid(self) -> u32 {
        (u32::from(self.primary) << 16) | u32::from(self.secondary)
    }

    /// Splits a classid.
    pub fn from_classid(classid: u32) -> Self {
        // Masked to 16 bits: the casts cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        Self {
            primary: (classid >> 16) as u16,
            secondary: (classid & 0xffff) as u16,
        }
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{:x}", self.primary, self.secondary)
    }
}

/// Allocation errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Every secondary handle is in use.
    #[error("all {0} net_cls secondary handles are in use")]
    Exhausted(usize),
    /// A handle outside this allocator's primary or range.
    #[error("handle {0} is outside the configured primary handle and secondary range")]
    OutOfRange(Handle),
    /// Reserving a handle already held.
    #[error("handle {0} is already allocated")]
    Taken(Handle),
}

/// Hands out secondary handles under one primary handle.
#[derive(Debug, Clone)]
pub struct HandleAllocator {
    primary: u16,
    first: u16,
    last: u16,
    used: BTreeSet<u16>,
    next: u16,
}

impl HandleAllocator {
    /// An allocator for `primary:first` .. `primary:last` (inclusive). Secondary 0 is
    /// never handed out (it names the qdisc itself in tc).
    pub fn new(primary: u16, first: u16, last: u16) -> Self {
        let first = first.max(1);
        Self {
            primary,
            first,
            last,
            used: BTreeSet::new(),
            next: first,
        }
    }

    /// The primary handle.
    pub fn primary(&self) -> u16 {
        self.primary
    }

    /// How many handles the range holds.
    pub fn capacity(&self) -> usize {
        usize::from(self.last.saturating_sub(self.first)) + usize::from(self.last >= self.first)
    }

    /// How many are free.
    pub fn free(&self) -> usize {
        self.capacity() - self.used.len()
    }

    /// Allocates the next free handle, round-robin, so a handle freed a moment ago is
    /// not reused at once (its tc class or stale packets may still be around).
    pub fn allocate(&mut self) -> Result<Handle, HandleError> {
        if self.free() == 0 {
            return Err(HandleError::Exhausted(self.capacity()));
        }
        let mut candidate = self.next;
        loop {
            if !self.used.contains(&candidate) {
                self.used.insert(candidate);
                self.next = if candidate >= self.last {
                    self.first
                } else {
                    candidate + 1
                };
                return Ok(Handle {
                    primary: self.primary,
                    secondary: candidate,
                });
            }
            candidate = if candidate >= self.last {
                self.first
            } else {
                candidate + 1
            };
        }
    }

    /// Marks a known handle used (recovery).
    pub fn reserve(&mut self, handle: Handle) -> Result<(), HandleError> {
        if handle.primary != self.primary
            || handle.secondary < self.first
            || handle.secondary > self.last
        {
            return Err(HandleError::OutOfRange(handle));
        }
        if !self.used.insert(handle.secondary) {
            return Err(HandleError::Taken(handle));
        }
        Ok(())
    }

    /// Returns a handle; freeing a free handle is harmless.
    pub fn release(&mut self, handle: Handle) {
        if handle.primary == self.primary {
            self.used.remove(&handle.secondary);
        }
    }

    /// Whether a handle is held.
    pub fn is_used(&self, handle: Handle) -> bool {
        handle.primary == self.primary && self.used.contains(&handle.secondary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classid_round_trip() {
        let h = Handle {
            primary: 0x1,
            secondary: 0x10,
        };
        assert_eq!(h.classid(), 0x10010);
        assert_eq!(Handle::from_classid(0x10010), h);
        assert_eq!(h.to_string(), "1:10");
    }

    #[test]
    fn allocates_all_then_exhausts() {
        let mut a = HandleAllocator::new(1, 1, 3);
        let got: Vec<u16> = (0..3).map(|_| a.allocate().unwrap().secondary).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(a.allocate().unwrap_err(), HandleError::Exhausted(3));
        a.release(Handle {
            primary: 1,
            secondary: 2,
        });
        assert_eq!(a.allocate().unwrap().secondary, 2);
    }

    #[test]
    fn round_robin_does_not_reuse_at_once() {
        let mut a = HandleAllocator::new(1, 1, 100);
        let h = a.allocate().unwrap();
        a.release(h);
        assert_ne!(a.allocate().unwrap(), h);
    }

    #[test]
    fn secondary_zero_never_given_and_reserve_checks() {
        let mut a = HandleAllocator::new(7, 0, 2);
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.allocate().unwrap().secondary, 1);
        assert_eq!(
            a.reserve(Handle {
                primary: 7,
                secondary: 1
            }),
            Err(HandleError::Taken(Handle {
                primary: 7,
                secondary: 1
            }))
        );
        assert!(matches!(
            a.reserve(Handle {
                primary: 8,
                secondary: 2
            }),
            Err(HandleError::OutOfRange(_))
        ));
        a.reserve(Handle {
            primary: 7,
            secondary: 2,
        })
        .unwrap();
        assert_eq!(a.free(), 0);
    }

    #[test]
    fn full_range_capacity() {
        let mut a = HandleAllocator::new(1, 1, u16::MAX);
        assert_eq!(a.capacity(), 65535);
        let h = a.allocate().unwrap();
        assert!(a.is_used(h));
    }
}
