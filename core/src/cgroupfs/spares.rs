//! Spare cgroups: made ahead, after an answer, and renamed to a container's name
//! at `prepare`.
//!
//! Creating a cgroup v1 directory allocates the controllers' state under the
//! kernel's cgroup lock: 15-30 µs usually, over 100 µs at the 99th percentile on a
//! busy machine. Renaming an existing empty one in the same parent costs about
//! 10 µs with a short tail, so an isolator keeps a few spares in its cgroups root,
//! already set up as far as they can be before a container is known (net_cls:
//! the classid of a handle given to the spare), and its `prepare` only renames
//! one. A new spare is made after the answer ([`Spares::refill`]).
//!
//! cgroup v1 only: the kernel renames v1 cgroups within their parent, and refuses
//! to rename v2 ones.
//!
//! A spare's name holds DEL (0x7f), a control character that neither Mesos nor
//! this project ever accepts in a container id, so no container's cgroup can be
//! mistaken for a spare, nor a spare for a container's cgroup. Spares left by an
//! earlier run (the agent was killed) are removed by the first refill
//! ([`Spares::remove_leftovers`]); a spare never holds a process.

use std::fs;
use std::io::ErrorKind;

use super::Cgroup;

/// Every spare's name starts with this.
pub const SPARE_PREFIX: &str = ".rein-spare\u{7f}";

/// How many spares an isolator keeps by default: enough for the containers
/// of one offer prepared back to back before the refills after their answers
/// run.
pub const DEFAULT_STOCK: usize = 4;

/// What [`Spares`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpareCounts {
    /// Containers' cgroups that were a spare renamed.
    pub taken: u64,
    /// Containers' cgroups created at `prepare` since no spare was left.
    pub missed: u64,
    /// Spares that could not be made or set up (the reason is logged).
    pub failed: u64,
    /// Spares of an earlier run removed.
    pub leftovers_removed: u64,
}

/// The spare cgroups of one isolator in one cgroups root; `T` is what a spare
/// was set up with (net_cls: its handle), handed to the container that takes it.
#[derive(Debug)]
pub struct Spares<T> {
    root: Cgroup,
    /// Starts the names of this isolator's spares: isolators whose hierarchies are
    /// mounted together (one directory) keep theirs apart.
    prefix: String,
    want: usize,
    stock: Vec<(Cgroup, T)>,
    /// Numbers the spares' names.
    made: u64,
    /// Leftovers of an earlier run removed.
    swept: bool,
    counts: SpareCounts,
}

impl<T> Spares<T> {
    /// `kind`'s spares in `root`, keeping `want` of them (0: none, every cgroup is
    /// created at `prepare`).
    pub fn new(root: Cgroup, kind: &str, want: usize) -> Self {
        Self {
            root,
            prefix: format!("{SPARE_PREFIX}{kind}-"),
            want,
            stock: Vec::new(),
            made: 0,
            swept: false,
            counts: SpareCounts::default(),
        }
    }

    /// What was done so far.
    pub fn counts(&self) -> SpareCounts {
        self.counts
    }

    /// How many spares are ready.
    pub fn ready(&self) -> usize {
        self.stock.len()
    }

    /// Makes `target` (a cgroup directly in the root) from a spare: renames it and
    /// returns what the spare was set up with. `None` when there is none to take
    /// (the caller creates the cgroup itself, as without spares), when `target` is
    /// not directly in the root (nested containers' cgroups), or already exists (a
    /// cgroup kept from before: the kernel would refuse the rename). A spare the
    /// kernel cannot rename (another process removed it) is removed, what it was
    /// set up with handed to `discard`, and the next one tried.
    pub fn take(&mut self, target: &Cgroup, mut discard: impl FnMut(T)) -> Option<T> {
        if self.want == 0 || target.path().parent() != Some(self.root.path()) {
            return None;
        }
        if target.path().exists() {
            return None;
        }
        while let Some((spare, tag)) = self.stock.pop() {
            match fs::rename(spare.path(), target.path()) {
                Ok(()) => {
                    self.counts.taken += 1;
                    return Some(tag);
                }
                Err(e) => {
                    self.counts.failed += 1;
                    tracing::warn!(spare = %spare.path().display(), target = %target.path().display(),
                                   "renaming a spare cgroup: {e}; it is removed");
                    let _ = spare.remove_now();
                    discard(tag);
                    if e.kind() == ErrorKind::AlreadyExists {
                        return None;
                    }
                }
            }
        }
        self.counts.missed += 1;
        None
    }

    /// Makes spares until `want` are ready; `set_up` finishes each (a failure
    /// removes that spare and ends the refill: the next `prepare` creates its
    /// cgroup itself). The first refill removes the spares of an earlier run.
    pub fn refill<E: std::fmt::Display>(
        &mut self,
        mut set_up: impl FnMut(&Cgroup) -> Result<T, E>,
    ) {
        if self.want == 0 {
            return;
        }
        if !self.swept {
            self.swept = true;
            self.counts.leftovers_removed += self.remove_leftovers();
        }
        while self.stock.len() < self.want {
            self.made += 1;
            let spare = self.root.child(format!("{}{}", self.prefix, self.made));
            if let Err(e) = spare.create() {
                self.counts.failed += 1;
                tracing::warn!("making a spare cgroup: {e}");
                return;
            }
            match set_up(&spare) {
                Ok(tag) => self.stock.push((spare, tag)),
                Err(e) => {
                    self.counts.failed += 1;
                    tracing::warn!(spare = %spare.path().display(), "setting up a spare cgroup: {e}");
                    let _ = spare.remove_now();
                    return;
                }
            }
        }
    }

    /// Removes every spare in stock and returns what they were set up with (to
    /// give back); those the kernel will not remove are logged.
    pub fn drain(&mut self) -> Vec<T> {
        self.stock
            .drain(..)
            .map(|(spare, tag)| {
                if let Err(e) = spare.remove_now() {
                    tracing::warn!("removing a spare cgroup: {e}");
                }
                tag
            })
            .collect()
    }

    /// Removes this isolator's spares in the root that are not in stock (an
    /// earlier run's); returns how many.
    fn remove_leftovers(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.root.path()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_spare = name.to_str().is_some_and(|n| n.starts_with(&self.prefix));
            let in_stock = self
                .stock
                .iter()
                .any(|(s, _)| s.path().file_name() == Some(name.as_os_str()));
            if !is_spare || in_stock {
                continue;
            }
            match Cgroup::at(entry.path()).remove_now() {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("removing a spare cgroup of an earlier run: {e}"),
            }
        }
        if removed > 0 {
            tracing::info!(root = %self.root.path().display(), removed, "removed spare cgroups of an earlier run");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::{fake, Hierarchy, Version};

    fn hierarchy(dir: &std::path::Path) -> Hierarchy {
        Hierarchy::fake(dir, Version::V1, fake::NET_CLS_V1).unwrap()
    }

    #[test]
    fn a_spare_becomes_the_containers_cgroup_with_what_it_was_set_up_with() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        let root = h.cgroup("mesos");
        let mut spares = Spares::new(root.clone(), "net_cls", 2);
        let mut next = 10u32;
        spares.refill(|cg| {
            next += 1;
            cg.write("net_cls.classid", &next.to_string())
                .map(|()| next)
        });
        assert_eq!(spares.ready(), 2);
        let target = root.child("c1");
        let tag = spares.take(&target, drop).expect("a spare is taken");
        assert!(target.exists());
        assert_eq!(target.read("net_cls.classid").unwrap(), tag.to_string());
        assert_eq!(spares.ready(), 1);
        // Nested cgroups and existing ones are not made from spares.
        assert_eq!(spares.take(&target.child("mesos").child("n"), drop), None);
        assert_eq!(spares.take(&target, drop), None);
        assert_eq!(spares.ready(), 1);
        let counts = spares.counts();
        assert_eq!((counts.taken, counts.missed, counts.failed), (1, 0, 0));
    }

    #[test]
    fn with_none_left_the_caller_creates_and_a_miss_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let root = hierarchy(dir.path()).cgroup("mesos");
        let mut spares: Spares<()> = Spares::new(root.clone(), "net_cls", 1);
        assert_eq!(spares.take(&root.child("c1"), drop), None);
        assert_eq!(spares.counts().missed, 1);
        // No spares wanted: nothing is made, nothing counted.
        let mut none: Spares<()> = Spares::new(root.clone(), "net_cls", 0);
        none.refill(|_| Ok::<(), String>(()));
        assert_eq!(none.ready(), 0);
        assert_eq!(none.take(&root.child("c2"), drop), None);
        assert_eq!(none.counts(), SpareCounts::default());
    }

    #[test]
    fn a_failed_set_up_removes_the_spare_and_ends_the_refill() {
        let dir = tempfile::tempdir().unwrap();
        let root = hierarchy(dir.path()).cgroup("mesos");
        let mut spares: Spares<u32> = Spares::new(root.clone(), "net_cls", 3);
        spares.refill(|_| Err("no free handle"));
        assert_eq!(spares.ready(), 0);
        assert_eq!(spares.counts().failed, 1);
        let left: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_earlier_runs_spares_are_removed_and_containers_cgroups_kept() {
        let dir = tempfile::tempdir().unwrap();
        let h = hierarchy(dir.path());
        let root = h.cgroup("mesos");
        let mut earlier: Spares<()> = Spares::new(root.clone(), "net_cls", 2);
        earlier.refill(|_| Ok::<(), String>(()));
        // A container whose id looks like a spare's name without the DEL.
        let lookalike = root.child(".rein-spare1");
        lookalike.create().unwrap();
        let container = root.child("c1");
        container.create().unwrap();
        drop(earlier);
        let mut spares: Spares<()> = Spares::new(root.clone(), "net_cls", 1);
        spares.refill(|_| Ok::<(), String>(()));
        assert_eq!(spares.counts().leftovers_removed, 2);
        assert!(lookalike.exists() && container.exists());
        let mut names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(spares.drain().len(), 1);
        assert!(!root
            .path()
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(SPARE_PREFIX)));
    }

    #[test]
    fn spares_removed_behind_its_back_are_given_back_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = hierarchy(dir.path()).cgroup("mesos");
        let mut spares: Spares<u32> = Spares::new(root.clone(), "net_cls", 2);
        let mut next = 0;
        spares.refill(|_| {
            next += 1;
            Ok::<u32, String>(next)
        });
        // Another process removed the spare to be taken first.
        let first = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.ends_with(format!("{SPARE_PREFIX}net_cls-2")))
            .unwrap();
        fs::remove_dir_all(&first).unwrap();
        let mut given_back = Vec::new();
        let tag = spares.take(&root.child("c1"), |t| given_back.push(t));
        assert_eq!((tag, given_back), (Some(1), vec![2]));
        assert_eq!(spares.counts().failed, 1);
    }

    #[test]
    fn isolators_sharing_a_directory_keep_their_spares_apart() {
        let dir = tempfile::tempdir().unwrap();
        let root = hierarchy(dir.path()).cgroup("mesos");
        let mut net_cls: Spares<()> = Spares::new(root.clone(), "net_cls", 2);
        let mut blkio: Spares<()> = Spares::new(root.clone(), "blkio", 2);
        net_cls.refill(|_| Ok::<(), String>(()));
        blkio.refill(|_| Ok::<(), String>(()));
        assert_eq!(
            blkio.counts().leftovers_removed,
            0,
            "net_cls's are not blkio's leftovers"
        );
        assert_eq!((net_cls.ready(), blkio.ready()), (2, 2));
        assert!(net_cls.take(&root.child("c1"), drop).is_some());
        assert!(blkio.take(&root.child("c2"), drop).is_some());
        assert_eq!(net_cls.counts().failed + blkio.counts().failed, 0);
    }

    #[test]
    fn no_container_id_can_name_a_spare() {
        assert!(crate::ContainerId::new(vec![format!("{SPARE_PREFIX}1")]).is_err());
    }
}
