//! The block I/O isolator: per-container read/write bandwidth and IOPS limits and a
//! relative weight, per device, on cgroup v1 (`blkio.throttle.*`) and cgroup v2
//! (`io.max`, `io.weight`), with per-device statistics in `usage()`.
//!
//! Cgroups follow Mesos's layout: v1 `<blkio hierarchy>/<cgroups_root>/<id>`, the
//! same cgroup Mesos's `cgroups/blkio` uses when that is enabled too; v2
//! `<unified>/<cgroups_root>/<id>` with the processes in `<id>/leaf` and the limits
//! on `<id>`. A cgroup that already exists at `prepare()` belongs to Mesos and is
//! only written to; one that does not is created here and removed at `cleanup()`.
//! Nested containers without blkio settings live within their parent's limits; a
//! nested container with settings gets its own cgroup below the parent's.

pub mod controller;
pub mod device;
pub mod error;
pub mod limits;
pub mod params;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use rein_core::cgroupfs::{Cgroup, Hierarchy, Spares, Version};
use rein_core::config::parse_for_module;
use rein_core::isolator::{Error, PendingCleanups, RecoveryCounters};
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::{Scan, StateStore};
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Statistics};

pub use controller::Controller;
pub use device::{DevNum, DeviceError, DeviceResolver, SystemResolver};
pub use error::BlkioError;
pub use limits::{Allowed, Caps, DeviceLimits, Limits, Policy};
pub use params::{KERNEL_DEFAULT_WEIGHT, PARAMS};

use params::{find_hierarchy, policy_from_params};

use crate::known::Known;

/// What is persisted per container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Whether this isolator created the cgroup (and so removes it).
    pub owned: bool,
    /// The limits applied.
    pub limits: Limits,
}

/// The blkio isolator.
///
/// One container's trouble stays its own: a state file that cannot be read, a
/// cgroup kept busy by a process are logged with the container and the reason,
/// counted ([`BlkioIsolator::counters`]) and retried later ([`PendingCleanups`]);
/// the state file stays until the cleanup succeeds.
pub struct BlkioIsolator {
    controller: Controller,
    root: Cgroup,
    policy: Policy,
    resolver: Box<dyn DeviceResolver>,
    store: StateStore,
    allow_debug_panic: bool,
    containers: HashMap<ContainerId, Record>,
    /// Containers whose state file could not be read: their cgroup is removed at
    /// their cleanup.
    unrecorded: HashSet<ContainerId>,
    /// Containers whose cleanup failed.
    pending: PendingCleanups<ContainerId>,
    counters: RecoveryCounters,
    /// Cgroups made ahead (cgroup v1).
    spares: Spares<()>,
}

impl BlkioIsolator {
    /// Builds the isolator from module parameters.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, Error> {
        let known: Vec<&str> = COMMON_PARAMS.iter().chain(PARAMS).copied().collect();
        let params = Params::new(pairs, &known)?;
        let common = CommonParams::from_params(&params)?;
        let policy = policy_from_params(&params)?;
        let hierarchy = find_hierarchy(&params, &common)?;
        let sysfs = params
            .path("sysfs")?
            .unwrap_or_else(|| PathBuf::from("/sys"));
        let resolver = SystemResolver::new(&common.mountinfo, sysfs);
        let store = StateStore::open(&common.state_dir, "blkio")?;
        info!(hierarchy = %hierarchy.mount_point().display(), version = ?hierarchy.version(), "blkio isolator ready");
        Ok(Self::new(
            hierarchy,
            &common,
            policy,
            Box::new(resolver),
            store,
        ))
    }

    /// Builds the isolator on explicit seams (tests, benchmarks).
    pub fn new(
        hierarchy: Hierarchy,
        common: &CommonParams,
        policy: Policy,
        resolver: Box<dyn DeviceResolver>,
        store: StateStore,
    ) -> Self {
        let root = hierarchy.cgroup(&common.cgroups_root);
        let spares = match hierarchy.version() {
            Version::V1 => common.spare_cgroups,
            Version::V2 => 0,
        };
        Self {
            spares: Spares::new(root.clone(), "blkio", spares),
            controller: Controller::new(hierarchy),
            root,
            policy,
            resolver,
            store,
            allow_debug_panic: common.allow_debug_panic,
            containers: HashMap::new(),
            unrecorded: HashSet::new(),
            pending: PendingCleanups::default(),
            counters: RecoveryCounters::default(),
        }
    }

    /// What recovery and cleanups met so far.
    pub fn counters(&self) -> RecoveryCounters {
        self.counters.with_pending(self.pending.len())
    }

    /// What the spare cgroups did so far.
    pub fn spare_counts(&self) -> rein_core::cgroupfs::SpareCounts {
        self.spares.counts()
    }

    /// The containers whose cleanup failed and waits for a retry, with the last reason.
    pub fn pending_cleanups(&self) -> Vec<(ContainerId, String)> {
        self.pending.listed()
    }

    /// Retries the failed cleanups whose delay has passed (every later `prepare()`
    /// and `cleanup()` does this first); returns how many are still pending.
    pub fn retry_cleanups(&mut self) -> usize {
        for id in self.pending.due() {
            let _ = self.release_or_retry(&id, false);
        }
        self.pending.len()
    }

    /// The container's cgroup (the one that holds the limits).
    pub fn cgroup(&self, id: &ContainerId) -> Cgroup {
        self.root.child(id.cgroup_path())
    }

    /// The cgroup a container's processes go to.
    pub fn process_cgroup(&self, id: &ContainerId) -> Cgroup {
        self.controller.process_cgroup(&self.cgroup(id))
    }

    /// The interface in use.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The record of a tracked container.
    pub fn record(&self, id: &ContainerId) -> Option<&Record> {
        self.containers.get(id)
    }

    /// Creates the container's cgroup if it owns it (unless `made`: a spare was
    /// renamed to it), applies its limits and notes its record.
    fn setup(&self, id: &ContainerId, record: &Record, made: bool) -> Result<(), BlkioError> {
        let cgroup = self.cgroup(id);
        if record.owned && !made {
            self.controller.create(&cgroup)?;
        }
        self.controller.enable_chain(&cgroup)?;
        self.controller.apply(&cgroup, &record.limits)?;
        self.store.save(id, record)?;
        Ok(())
    }

    /// Re-reads a recovered container's limits and re-applies the recorded ones if
    /// the kernel's differ (or the cgroup we own vanished).
    fn reapply(&self, id: &ContainerId, record: &Record) -> Result<(), BlkioError> {
        let cgroup = self.cgroup(id);
        if !cgroup.exists() {
            if record.owned {
                warn!(container = %id, "blkio cgroup missing on recovery; recreating it");
                return self.setup(id, record, false);
            }
            return Err(BlkioError::CgroupGone);
        }
        let wanted: Vec<DeviceLimits> = record
            .limits
            .devices
            .iter()
            .copied()
            .filter(DeviceLimits::is_limited)
            .collect();
        let current = self.controller.read_limits(&cgroup)?;
        if current != wanted {
            warn!(container = %id, ?current, ?wanted, "blkio limits differ from the recorded ones; re-applying");
            self.controller.apply(&cgroup, &record.limits)?;
        }
        Ok(())
    }

    /// Removes what a tracked or unrecorded container holds. `patient` waits
    /// briefly for a cgroup whose last process just exited (`cleanup()`).
    fn release(&mut self, id: &ContainerId, patient: bool) -> Result<(), BlkioError> {
        let owned = match self.containers.get(id) {
            Some(record) => record.owned,
            None if self.unrecorded.contains(id) => true,
            None => return Ok(()),
        };
        if owned {
            self.cgroup(id).remove_if(patient)?;
        }
        self.store.remove(id)?;
        self.containers.remove(id);
        self.unrecorded.remove(id);
        Ok(())
    }

    /// Releases a container; a failure is logged, counted and retried later.
    fn release_or_retry(&mut self, id: &ContainerId, patient: bool) -> Result<(), BlkioError> {
        let outcome = self.release(id, patient);
        self.pending.settle(
            id,
            outcome,
            &mut self.counters,
            "blkio",
            "the container's state is kept",
        )
    }
}

impl Isolator for BlkioIsolator {
    fn name(&self) -> &'static str {
        "blkio"
    }

    fn recover(
        &mut self,
        containers: &[RecoveredContainer],
        orphans: &[ContainerId],
    ) -> Result<(), Error> {
        // Only a state directory that cannot be listed stops recovery.
        let scan: Scan<Record> = self.store.scan()?;
        let known = Known::new(containers, orphans);
        for bad in scan.unreadable {
            self.counters.unreadable_records += 1;
            let id = bad.id;
            warn!(container = %id, error = %bad.error,
                  "blkio state unreadable; the container keeps the limits the kernel holds, and its cgroup is removed at its cleanup");
            self.unrecorded.insert(id.clone());
            if !known.contains(&id) {
                let _ = self.release_or_retry(&id, false);
            }
        }
        for (id, record) in scan.records {
            if !known.contains(&id) {
                // Neither alive nor an orphan Mesos will clean: its cleanup was lost.
                info!(container = %id, "removing blkio state of a vanished container");
                self.containers.insert(id.clone(), record);
                let _ = self.release_or_retry(&id, false);
                continue;
            }
            if known.is_orphan(&id) {
                // Mesos destroys orphans right after recovery; cleanup() comes for them.
                self.containers.insert(id, record);
                continue;
            }
            // A failure here must not stop the agent: the container keeps running
            // with whatever the kernel holds, and the log says so.
            if let Err(err) = self.reapply(&id, &record) {
                self.counters.recover_failures += 1;
                warn!(container = %id, error = %err, "could not restore blkio limits");
            }
            info!(container = %id, limits = ?record.limits, "recovered blkio limits");
            self.containers.insert(id, record);
        }
        self.counters()
            .log_recovered("blkio", self.containers.len());
        Ok(())
    }

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        self.retry_cleanups();
        let mut config = parse_for_module(spec, "blkio", self.allow_debug_panic)?;
        if spec.id.is_nested() {
            if config.group("blkio").next().is_none() {
                return Ok(LaunchInfo::default());
            }
        } else {
            self.policy.add_defaults(&mut config)?;
        }
        if self.containers.contains_key(&spec.id) {
            return Err(BlkioError::AlreadyPrepared(spec.id.clone()).into());
        }
        let limits = self
            .policy
            .limits(&config, &spec.sandbox, self.resolver.as_ref())?;
        let cgroup = self.cgroup(&spec.id);
        let record = Record {
            owned: !cgroup.exists(),
            limits,
        };
        let made = record.owned && self.spares.take(&cgroup, drop).is_some();
        if let Err(err) = self.setup(&spec.id, &record, made) {
            if record.owned {
                let _ = cgroup.remove();
            }
            let _ = self.store.remove(&spec.id);
            return Err(err.into());
        }
        info!(container = %spec.id, owned = record.owned, limits = ?record.limits, "applied blkio limits");
        self.containers.insert(spec.id.clone(), record);
        Ok(LaunchInfo::default())
    }

    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        match self.containers.get(id) {
            // A cgroup Mesos created is populated by Mesos.
            Some(record) if record.owned => {
                self.process_cgroup(id).add_process(pid)?;
                Ok(())
            }
            Some(_) => Ok(()),
            None if id.is_nested() => Ok(()),
            None => Err(BlkioError::UnknownContainer(id.clone()).into()),
        }
    }

    fn usage(&mut self, id: &ContainerId) -> Result<Statistics, Error> {
        if !self.containers.contains_key(id) {
            return Ok(Statistics::default());
        }
        Ok(Statistics {
            blkio: self.controller.stats(&self.cgroup(id))?,
            ..Statistics::default()
        })
    }

    fn after_answer(&mut self) {
        self.spares
            .refill(|_| Ok::<(), std::convert::Infallible>(()));
    }

    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        self.retry_cleanups();
        if !self.containers.contains_key(id) && !self.unrecorded.contains(id) {
            return Ok(());
        }
        self.release_or_retry(id, true)?;
        info!(container = %id, "released blkio cgroup");
        Ok(())
    }
}

/// The cgroup version a hierarchy speaks, for callers that print it.
pub fn version_name(v: Version) -> &'static str {
    match v {
        Version::V1 => "v1",
        Version::V2 => "v2",
    }
}

impl Drop for BlkioIsolator {
    fn drop(&mut self) {
        self.spares.drain();
    }
}

#[cfg(test)]
mod tests;
