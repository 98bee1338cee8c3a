//! A container's project quota: the backend chosen for its sandbox, a clean id
//! from the pool, its limits, and the id's return to the pool (cleared from the
//! sandbox's files, or held until the sandbox is removed), with the repair that
//! sets a sandbox's files back to their container's id.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use rein_core::ContainerId;

use super::error::DiskError;
use super::kernel::{FsKind, Limits};
use super::monitor::bump;
use super::projects::ProjectError;
use super::record::{limits_for, Backend, Record};
use super::tree::TreeReport;
use super::DiskIsolator;

/// A warning is logged (and counted) when fewer than this fraction of ids is free.
const LOW_POOL_PERCENT: u64 = 10;

/// Ids tried at one prepare when candidates are still charged for files.
const DIRTY_ID_TRIES: usize = 16;

impl DiskIsolator {
    pub(crate) fn choose_backend(&mut self, sandbox: &Path) -> Result<Backend, DiskError> {
        let fs = self
            .kernel
            .filesystem(sandbox)
            .map_err(|source| DiskError::Filesystem {
                sandbox: sandbox.to_owned(),
                source,
            })?;
        let quota_fs = matches!(fs.kind, FsKind::Xfs | FsKind::Ext4) && fs.quota.accounting;
        if self.settings.force_scan || !quota_fs {
            return Ok(Backend::Scan);
        }
        self.reclaim_gone();
        let project = self.allocate_clean(sandbox)?;
        Ok(Backend::Quota {
            project,
            enforcing: fs.quota.enforcing,
            ext4: fs.kind == FsKind::Ext4,
        })
    }

    /// Allocates an id that nothing is charged to (files outside any sandbox may
    /// still carry an id whose sandbox was cleared: such ids are skipped and kept
    /// out of the pool). Warns when the pool runs low; the error when it is empty
    /// names the setting to raise.
    fn allocate_clean(&mut self, sandbox: &Path) -> Result<u32, DiskError> {
        let counters = &self.monitor.counters;
        for _ in 0..DIRTY_ID_TRIES {
            let project = match self.allocator.allocate() {
                Ok(p) => p,
                Err(ProjectError::Exhausted(total)) => {
                    bump(&counters.pool_exhausted, 1);
                    let (first, last) = self.allocator.range();
                    let live = self.lock().containers.len();
                    let err = DiskError::PoolExhausted {
                        total,
                        first,
                        last,
                        live,
                        awaiting_gc: self.awaiting_gc.len(),
                    };
                    warn!("{err}");
                    return Err(err);
                }
                Err(e) => return Err(e.into()),
            };
            match self.kernel.quota(sandbox, project) {
                Ok(q) if q.used > 0 || q.inodes > 0 => {
                    bump(&counters.dirty_ids_skipped, 1);
                    warn!(
                        project,
                        used = q.used,
                        inodes = q.inodes,
                        "project id still charged for files outside any sandbox; not reused"
                    );
                    continue;
                }
                _ => {}
            }
            let (free, total) = (self.allocator.free(), self.allocator.total());
            if free * 100 < total * LOW_POOL_PERCENT {
                bump(&counters.pool_low, 1);
                warn!(
                    free,
                    total,
                    "fewer than {LOW_POOL_PERCENT}% of the disk project ids are free; widen \
                     the module parameter project_ids or shorten the agent's --gc_delay"
                );
            }
            return Ok(project);
        }
        Err(DiskError::NoCleanId {
            tries: DIRTY_ID_TRIES,
        })
    }

    pub(crate) fn apply_quota(&self, record: &Record) -> Result<(), DiskError> {
        let Backend::Quota { project, .. } = record.backend else {
            return Ok(());
        };
        let limits = limits_for(record, self.settings.headroom);
        self.kernel
            .set_limits(&record.sandbox, project, limits)
            .map_err(|source| DiskError::SetLimits {
                project,
                limits,
                sandbox: record.sandbox.clone(),
                source,
            })
    }

    /// Clears a released project's limits and its id from the sandbox's files, and
    /// returns the id to the pool once nothing is charged to it; otherwise keeps it
    /// until the sandbox is gone.
    pub(crate) fn release(
        &mut self,
        id: &ContainerId,
        mut record: Record,
    ) -> Result<(), DiskError> {
        match record.backend {
            Backend::Quota { project, .. } => {
                if let Err(e) = self
                    .kernel
                    .set_limits(&record.sandbox, project, Limits::default())
                {
                    // The sandbox may be gone already; the id is reclaimed below then.
                    warn!(container = %id, project, "clearing project limits: {e}");
                }
                if self.clear_project(id, &record.sandbox, project) {
                    self.store.remove(id)?;
                    self.allocator.release(project);
                    bump(&self.monitor.counters.ids_reclaimed_at_cleanup, 1);
                    return Ok(());
                }
                bump(&self.monitor.counters.ids_held_for_gc, 1);
                record.released = true;
                self.store.save(id, &record)?;
                self.awaiting_gc
                    .insert(id.clone(), (record.sandbox.clone(), project));
                self.reclaim_gone();
            }
            Backend::Scan => self.store.remove(id)?,
        }
        Ok(())
    }

    /// Clears `project` from the sandbox's files (bounded walk, no name followed);
    /// true when the walk was complete and the project's quota shows nothing
    /// charged to it any more, so the id can be handed out again.
    pub(crate) fn clear_project(&self, id: &ContainerId, sandbox: &Path, project: u32) -> bool {
        let report = match self
            .kernel
            .set_project_tree(sandbox, 0, self.settings.walk_max_entries)
        {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TreeReport {
                complete: true,
                ..TreeReport::default()
            },
            Err(e) => {
                warn!(container = %id, project, "clearing the project id from the sandbox: {e}; the id is held until the sandbox is removed");
                return false;
            }
        };
        if !report.complete {
            warn!(container = %id, project, entries = report.entries, skipped = report.skipped,
                  "the sandbox is larger than project_walk_max_entries (or deeper than the walk goes); the id is held until the sandbox is removed");
            return false;
        }
        if self.charged(sandbox, project) {
            // A task may have moved files into this project from its own sandbox:
            // every running container's files go back to its own id first.
            self.repair_live();
        }
        match self.kernel.quota(sandbox, project) {
            Ok(q) if q.used == 0 && q.inodes == 0 => {
                info!(container = %id, project, entries = report.entries, "project id cleared from the sandbox and reclaimed");
                true
            }
            // What is left charges no byte, and no more inodes than the symlinks
            // and special files in the sandbox the walk cannot reset: the next
            // holder of the id inherits nothing the quota limits (blocks only).
            Ok(q) if q.used == 0 && q.inodes <= report.unopenable => {
                info!(container = %id, project, entries = report.entries, inodes = q.inodes,
                      unopenable = report.unopenable,
                      "project id cleared from the sandbox and reclaimed (its symlinks or special files keep the id, charging no byte)");
                true
            }
            Ok(q) => {
                warn!(container = %id, project, used = q.used, inodes = q.inodes, skipped = report.skipped,
                      unopenable = report.unopenable,
                      "files outside the sandbox (or not reached) still carry the project id; it is held until the sandbox is removed");
                false
            }
            // The filesystem answers no quota for it: nothing is charged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                warn!(container = %id, project, "reading the quota after clearing: {e}; the id is held until the sandbox is removed");
                false
            }
        }
    }

    /// Whether the quota shows anything charged to `project`.
    fn charged(&self, sandbox: &Path, project: u32) -> bool {
        self.kernel
            .quota(sandbox, project)
            .is_ok_and(|q| q.used > 0 || q.inodes > 0)
    }

    /// Sets every running container's sandbox back to its own project id.
    pub(crate) fn repair_live(&self) {
        let live: Vec<(ContainerId, PathBuf, u32)> = self
            .lock()
            .containers
            .iter()
            .filter_map(|(id, t)| match t.record.backend {
                Backend::Quota { project, .. } => {
                    Some((id.clone(), t.record.sandbox.clone(), project))
                }
                Backend::Scan => None,
            })
            .collect();
        for (id, sandbox, project) in live {
            self.repair(&id, &sandbox, project);
        }
    }

    /// Releases project ids whose sandboxes have been removed.
    pub(crate) fn reclaim_gone(&mut self) {
        let gone: Vec<ContainerId> = self
            .awaiting_gc
            .iter()
            .filter(|(_, (sandbox, _))| {
                matches!(std::fs::symlink_metadata(sandbox), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some((sandbox, project)) = self.awaiting_gc.remove(&id) {
                if let Err(e) = self.store.remove(&id) {
                    warn!(container = %id, "removing disk state: {e}");
                    self.awaiting_gc.insert(id, (sandbox, project));
                    continue;
                }
                self.allocator.release(project);
                info!(container = %id, project, free = self.allocator.free(), total = self.allocator.total(),
                      "sandbox removed; project id reclaimed");
            }
        }
    }

    /// Sets `project` back over a sandbox; logs and counts what had been changed.
    pub(crate) fn repair(&self, id: &ContainerId, sandbox: &Path, project: u32) {
        match self
            .kernel
            .set_project_tree(sandbox, project, self.settings.walk_max_entries)
        {
            Ok(r) => {
                bump(&self.monitor.counters.entries_repaired, r.changed);
                if r.changed > 0 || !r.complete {
                    warn!(container = %id, project, changed = r.changed, entries = r.entries,
                          complete = r.complete, "set the sandbox's files back to the container's project id");
                }
            }
            Err(e) => warn!(container = %id, project, "setting the project id back: {e}"),
        }
    }
}
