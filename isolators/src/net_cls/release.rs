//! Releasing what a container holds (its class, cgroup, state and handle), and
//! retrying what failed.

use rein_core::isolator::Error;
use rein_core::ContainerId;

use super::error::NetClsError;
use super::shaping::StaleClass;
use super::{Handle, NetClsIsolator, Record};

impl NetClsIsolator {
    /// Retries the failed cleanups whose delay has passed (every later `prepare()`
    /// and `cleanup()` does this first); returns how many are still pending.
    pub fn retry_cleanups(&mut self) -> usize {
        for id in self.pending.due() {
            let _ = self.release_or_retry(&id, false);
        }
        let due = self.stale_classes.due();
        if due.contains(&StaleClass::Scan) {
            // A sweep retries every unclaimed class as well.
            self.remove_unclaimed_classes();
        } else {
            for key in due {
                if let StaleClass::Class(classid) = key {
                    self.retry_stale_class(classid);
                }
            }
        }
        self.pending.len() + self.stale_classes.len()
    }

    /// Releases everything a container holds; a step that fails does not stop the
    /// others, but the handle and the state file are kept until all succeeded (the
    /// cleanup is then retried). `patient` waits briefly for a cgroup whose last
    /// process just exited (`cleanup()`); recovery and retries do not wait.
    pub(super) fn teardown(
        &mut self,
        id: &ContainerId,
        record: &Record,
        patient: bool,
    ) -> Result<(), Error> {
        let mut failures = Vec::new();
        if let Some(egress) = &mut self.egress {
            // Also for a record without shaping: one rebuilt from the kernel may have a class.
            let cgroup_id = record.egress.and_then(|e| e.cgroup_id);
            if let Err(err) = egress.kernel.remove(record.handle.classid(), cgroup_id) {
                failures.push(format!(
                    "removing its egress class {}: {err}",
                    record.handle
                ));
            }
        }
        let cgroup = self.cgroup(id);
        let removed = if patient {
            cgroup.remove()
        } else {
            cgroup.remove_now()
        };
        if let Err(err) = removed {
            failures.push(err.to_string());
        }
        if !failures.is_empty() {
            return Err(NetClsError::Teardown(failures).into());
        }
        self.store.remove(id)?;
        self.containers.remove(id);
        self.release_handle(record.handle);
        Ok(())
    }

    /// Returns a handle to the pool unless another container (a corrupt pair of
    /// records) or a stale class still holds it.
    pub(super) fn release_handle(&mut self, handle: Handle) {
        let held = self.containers.values().any(|r| r.handle == handle)
            || self.held_for_stale.contains(&handle);
        if !held {
            self.allocator.release(handle);
        }
    }

    /// Releases a tracked or unrecorded container; nothing to do for others.
    pub(super) fn release(&mut self, id: &ContainerId, patient: bool) -> Result<(), Error> {
        if let Some(record) = self.containers.get(id).cloned() {
            return self.teardown(id, &record, patient);
        }
        if self.unrecorded.contains(id) {
            self.cgroup(id).remove_if(patient)?;
            self.store.remove(id)?;
            self.unrecorded.remove(id);
        }
        Ok(())
    }

    /// Releases a container; a failure is logged, counted and retried later.
    pub(super) fn release_or_retry(
        &mut self,
        id: &ContainerId,
        patient: bool,
    ) -> Result<(), Error> {
        let outcome = self.release(id, patient);
        self.pending.settle(
            id,
            outcome,
            &mut self.counters,
            "net_cls",
            "the container keeps its handle and state",
        )
    }
}
