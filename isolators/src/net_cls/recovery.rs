//! Recovery: re-adopting recorded containers (or cleaning up those Mesos no
//! longer knows), rebuilding unreadable records from the kernel, and removing
//! egress classes no container claims.

use tracing::{info, warn};

use rein_core::cgroupfs::Version;
use rein_core::isolator::Error;
use rein_core::state::Scan;
use rein_core::{ContainerId, RecoveredContainer};

use crate::known::Known;

use super::{Handle, NetClsIsolator, Record};

impl NetClsIsolator {
    /// Recovers every recorded container; only a state directory that cannot be
    /// listed fails (the isolator could not know its containers at all).
    pub(super) fn recover_all(&mut self, known: Known<'_>) -> Result<(), Error> {
        // Made before the records were known: their handles may be recorded ones.
        self.drop_spares();
        let scan: Scan<Record> = self.store.scan()?;
        let mut records = scan.records;
        for bad in scan.unreadable {
            self.counters.unreadable_records += 1;
            let id = bad.id;
            match self.handle_in_kernel(&id) {
                Some(handle) => {
                    warn!(container = %id, %handle, error = %bad.error,
                          "net_cls state unreadable; rebuilt from the cgroup's net_cls.classid (egress shaping of this container, if any, is no longer reported)");
                    let record = Record {
                        handle,
                        egress: None,
                    };
                    if known.contains(&id) {
                        if let Err(err) = self.store.save(&id, &record) {
                            warn!(container = %id, "saving the rebuilt net_cls state: {err}");
                        }
                    }
                    records.push((id, record));
                }
                None => {
                    warn!(container = %id, error = %bad.error,
                          "net_cls state unreadable and no classid to rebuild it from; the container's cgroup is removed at its cleanup");
                    self.unrecorded.insert(id.clone());
                    if !known.contains(&id) {
                        let _ = self.release_or_retry(&id, false);
                    }
                }
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, record) in records {
            let live = known.live(&id);
            self.recover_one(&id, record, live, known.contains(&id));
        }
        self.remove_unclaimed_classes();
        self.counters()
            .log_recovered("net_cls", self.containers.len());
        Ok(())
    }

    /// The handle a container's cgroup holds in the kernel (cgroup v1), to rebuild
    /// a record that could not be read; `None` if there is none of this isolator's.
    fn handle_in_kernel(&self, id: &ContainerId) -> Option<Handle> {
        if self.hierarchy.version() != Version::V1 {
            return None;
        }
        let classid: u32 = self
            .cgroup(id)
            .read("net_cls.classid")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let handle = Handle::from_classid(classid);
        (handle.primary == self.allocator.primary() && handle.secondary != 0).then_some(handle)
    }

    /// Re-adopts (or, for a container Mesos no longer knows, cleans up) one
    /// recorded container; what fails is logged and counted, never returned.
    fn recover_one(
        &mut self,
        id: &ContainerId,
        mut record: Record,
        live: Option<&RecoveredContainer>,
        known: bool,
    ) {
        if let Err(err) = self.allocator.reserve(record.handle) {
            // Two records with one handle, or a handle outside a changed range.
            self.counters.recover_failures += 1;
            warn!(container = %id, handle = %record.handle, "reserving the recovered net_cls handle: {err}; the container is kept");
        }
        if !known {
            // Neither alive nor an orphan Mesos will clean: its cleanup was lost.
            info!(container = %id, handle = %record.handle, "removing net_cls state of a vanished container");
            self.containers.insert(id.clone(), record);
            let _ = self.release_or_retry(id, false);
            return;
        }
        let cgroup = self.cgroup(id);
        if !cgroup.exists() {
            warn!(container = %id, "net_cls cgroup missing on recovery; recreating it");
            match self.create_cgroup(id, record.handle) {
                Ok(cgroup_id) => {
                    if let Some(e) = &mut record.egress {
                        e.cgroup_id = cgroup_id;
                    }
                }
                Err(err) => {
                    self.counters.recover_failures += 1;
                    warn!(container = %id, "recreating the net_cls cgroup: {err}; the container is kept");
                }
            }
        }
        self.recap_egress(id, &mut record);
        self.adopt_egress(id, &mut record, live);
        info!(container = %id, handle = %record.handle, "recovered net_cls handle");
        self.containers.insert(id.clone(), record);
    }
}
