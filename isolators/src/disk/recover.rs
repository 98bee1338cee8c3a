//! Recovery: containers re-adopted from their records (the recorded project id is
//! the truth, whatever the task set on its sandbox), live containers without a
//! record given a fresh id, and the ids of vanished containers released.

use tracing::{info, warn};

use rein_core::state::Scan;
use rein_core::{ContainerId, RecoveredContainer};

use super::error::DiskError;
use super::monitor::bump;
use super::projects::ProjectError;
use super::record::{Backend, Record};
use super::DiskIsolator;
use crate::known::Known;

impl DiskIsolator {
    /// `recover()`: see [`rein_core::Isolator::recover`].
    pub(crate) fn recover_all(&mut self, known: Known<'_>) -> Result<(), DiskError> {
        // Only a state directory that cannot be listed stops recovery; a record
        // that cannot be read is its container's trouble: a live one is adopted as
        // if it had none (a fresh id for its sandbox, saved over the file); for an
        // orphan or a vanished one there is nothing to act on, and the file goes.
        let scan: Scan<Record> = self.store.scan()?;
        for bad in scan.unreadable {
            bump(&self.monitor.counters.recover_failures, 1);
            let live = known.live(&bad.id).is_some();
            warn!(container = %bad.id, error = %bad.error, live, "disk state unreadable");
            if !live {
                if let Err(e) = self.store.remove(&bad.id) {
                    warn!(container = %bad.id, "removing the unreadable disk state: {e}");
                }
            }
        }
        let records = scan.records;
        let mut seen = Vec::new();
        for (id, record) in records {
            seen.push(id.clone());
            if record.released {
                if let Backend::Quota { project, .. } = record.backend {
                    if let Err(e) = self.allocator.reserve(project) {
                        warn!(container = %id, "keeping a released project id: {e}");
                    }
                    if self.clear_project(&id, &record.sandbox, project)
                        && self.store.remove(&id).is_ok()
                    {
                        self.allocator.release(project);
                        bump(&self.monitor.counters.ids_reclaimed_at_cleanup, 1);
                    } else {
                        self.awaiting_gc.insert(id, (record.sandbox, project));
                    }
                }
                continue;
            }
            if known.contains(&id) {
                self.adopt(&id, record);
            } else {
                // Neither alive nor an orphan Mesos will clean: its cleanup was lost.
                info!(container = %id, "releasing the disk quota of a vanished container");
                if let Backend::Quota { project, .. } = record.backend {
                    let _ = self.allocator.reserve(project);
                }
                if let Err(e) = self.release(&id, record) {
                    bump(&self.monitor.counters.recover_failures, 1);
                    warn!(container = %id, "releasing the disk quota: {e}");
                }
            }
        }
        for container in known.live_containers() {
            if !container.id.is_nested() && !seen.contains(&container.id) {
                self.adopt_unrecorded(container);
            }
        }
        self.reclaim_gone();
        info!(
            free = self.allocator.free(),
            total = self.allocator.total(),
            "disk project ids after recovery"
        );
        Ok(())
    }

    /// Re-adopts one container from its record. The recorded id is the truth: the
    /// sandbox, which the task owns, is only compared with it, and set back when it
    /// carries another. Whatever goes wrong affects this container only.
    fn adopt(&mut self, id: &ContainerId, mut record: Record) {
        if let Backend::Quota { project, .. } = record.backend {
            let project = match self.allocator.reserve(project) {
                Ok(()) => project,
                Err(ProjectError::OutOfRange { .. }) => {
                    // The operator narrowed the range: the id stays in use where it is,
                    // and is never handed out (it is outside the pool).
                    warn!(container = %id, project, "recovered project id is outside project_ids; kept for this container");
                    project
                }
                Err(e) => {
                    // Two records with one id (a damaged state directory): this one
                    // gets a fresh id rather than sharing a neighbour's.
                    bump(&self.monitor.counters.recover_failures, 1);
                    match self.allocator.allocate() {
                        Ok(fresh) => {
                            warn!(container = %id, project, fresh, "recovered project id {e}; giving the container a fresh one");
                            fresh
                        }
                        Err(e) => {
                            warn!(container = %id, project, "cannot recover the disk quota: {e}");
                            return;
                        }
                    }
                }
            };
            if let Backend::Quota { project: p, .. } = &mut record.backend {
                *p = project;
            }
            match self.kernel.project_id(&record.sandbox) {
                Ok(on_disk) if on_disk == project => {}
                Ok(on_disk) => {
                    bump(&self.monitor.counters.recover_mismatches, 1);
                    warn!(container = %id, recorded = project, on_disk,
                          "the sandbox carries another project id than recorded (a task may change the id of its own files); setting the recorded one back");
                    self.repair(id, &record.sandbox, project);
                }
                Err(e) => {
                    warn!(container = %id, "reading the project id of {}: {e}", record.sandbox.display())
                }
            }
        }
        self.apply_quota(&record)
            .unwrap_or_else(|e| warn!(container = %id, "re-applying limits: {e}"));
        if let Err(e) = self.store.save(id, &record) {
            warn!(container = %id, "saving disk state: {e}");
        }
        info!(container = %id, backend = ?record.backend, mode = record.mode.as_str(), "recovered disk quota");
        self.track(id, record);
    }

    /// A live container without a record (state lost): it gets a fresh id, set over
    /// its sandbox; the id its sandbox carries is the task's to change, so it is
    /// not adopted. Its limit returns with the next `update()`.
    fn adopt_unrecorded(&mut self, container: &RecoveredContainer) {
        let Some(sandbox) = &container.sandbox else {
            return;
        };
        let Ok(Backend::Quota {
            project,
            enforcing,
            ext4,
        }) = self.choose_backend(sandbox)
        else {
            return;
        };
        let record = Record {
            sandbox: sandbox.clone(),
            mode: self.settings.default_mode,
            backend: Backend::Quota {
                project,
                enforcing,
                ext4,
            },
            limit: None,
            released: false,
        };
        warn!(container = %container.id, project, "no disk state for a live container; giving its sandbox a fresh project id");
        self.repair(&container.id, sandbox, project);
        // Already reserved by the allocation; adopt() would find it taken.
        self.apply_quota(&record)
            .unwrap_or_else(|e| warn!(container = %container.id, "setting limits: {e}"));
        if let Err(e) = self.store.save(&container.id, &record) {
            warn!(container = %container.id, "saving disk state: {e}");
        }
        self.track(&container.id, record);
    }
}
