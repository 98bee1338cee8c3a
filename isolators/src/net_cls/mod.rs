//! The net_cls isolator: one classid per top-level container, Mesos-compatible.
//!
//! Semantics follow Mesos's `cgroups/net_cls`: a primary handle and a range of
//! secondary handles (module parameters), a handle per top-level container written to
//! `net_cls.classid` of `<net_cls hierarchy>/<cgroups_root>/<id>`, the classid in
//! `ContainerStatus.cgroup_info.net_cls.classid`, handles re-reserved on recovery.
//! Nested containers share their parent's cgroup and classid.
//!
//! With `egress_shaping=true` the isolator also shapes each container's egress
//! traffic (see [`crate::egress`]): the classid is the container's HTB class.
//! Classification is by net_cls classid on cgroup v1, and by cgroup v2 id where no
//! net_cls hierarchy exists (or `egress_classifier=cgroup2`): the isolator then
//! creates the container's group under the unified hierarchy instead.

mod error;
pub mod handles;
mod params;
mod recovery;
mod release;
mod shaping;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use rein_core::cgroupfs::{Cgroup, Hierarchy, Spares, Version};
use rein_core::config::parse_for_module;
use rein_core::isolator::{Error, PendingCleanups, RecoveryCounters};
use rein_core::params::CommonParams;
use rein_core::state::StateStore;
use rein_core::{
    ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Resources, Statistics,
    Status,
};

use crate::egress::Shape;
use crate::known::Known;

pub use error::NetClsError;
pub use handles::{Handle, HandleAllocator, HandleError};
use shaping::{Egress, StaleClass};

/// Parameters of the net_cls isolator, besides the common ones.
pub const PARAMS: &[&str] = &[
    "net_cls_primary_handle",
    "net_cls_secondary_handles",
    "mount_net_cls",
];

/// What is persisted per top-level container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The container's handle.
    pub handle: Handle,
    /// Its egress shaping, when shaped (absent in records of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRecord>,
}

/// The egress shaping of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    /// Rate, ceiling, burst.
    pub shape: Shape,
    /// The container's cgroup v2 id (cgroup2 classification).
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    /// Whether it is shaped inside its own network namespace (known from isolate()
    /// or recover(); not persisted, so isolate() writes no state).
    #[serde(skip)]
    pub netns: bool,
    /// Whether its class exists (set by isolate() and recover()).
    #[serde(skip)]
    pub active: bool,
}

/// The net_cls isolator.
///
/// One container's trouble stays its own: a state file that cannot be read, a
/// cgroup kept busy by a process, a class the kernel refuses to remove are logged
/// with the container and the reason, counted ([`NetClsIsolator::counters`]) and
/// retried later ([`PendingCleanups`]); the container keeps its handle (and its
/// state file) until its cleanup succeeds, so no new container gets a classid
/// that processes still use.
pub struct NetClsIsolator {
    hierarchy: Hierarchy,
    root: Cgroup,
    allocator: HandleAllocator,
    store: StateStore,
    allow_debug_panic: bool,
    containers: HashMap<ContainerId, Record>,
    egress: Option<Egress>,
    /// Containers whose state file could not be read nor rebuilt: their cgroup is
    /// removed at their cleanup.
    unrecorded: HashSet<ContainerId>,
    /// Containers whose cleanup failed.
    pending: PendingCleanups<ContainerId>,
    /// Host classes that could not be removed.
    stale_classes: PendingCleanups<StaleClass>,
    /// Handles kept out of use while a stale class of theirs is on a device.
    held_for_stale: HashSet<Handle>,
    counters: RecoveryCounters,
    /// Cgroups made ahead with their handle's classid (cgroup v1).
    spares: Spares<Handle>,
}

impl NetClsIsolator {
    /// Builds the isolator on an explicit hierarchy (tests, harness).
    pub fn new(
        hierarchy: Hierarchy,
        common: &CommonParams,
        allocator: HandleAllocator,
        store: StateStore,
    ) -> Self {
        let root = hierarchy.cgroup(&common.cgroups_root);
        let spares = match hierarchy.version() {
            Version::V1 => common.spare_cgroups,
            Version::V2 => 0,
        };
        Self {
            spares: Spares::new(root.clone(), "net_cls", spares),
            hierarchy,
            root,
            allocator,
            store,
            allow_debug_panic: common.allow_debug_panic,
            containers: HashMap::new(),
            egress: None,
            unrecorded: HashSet::new(),
            pending: PendingCleanups::default(),
            stale_classes: PendingCleanups::default(),
            held_for_stale: HashSet::new(),
            counters: RecoveryCounters::default(),
        }
    }

    /// What recovery and cleanups met so far.
    pub fn counters(&self) -> RecoveryCounters {
        self.counters
            .with_pending(self.pending.len() + self.stale_classes.len())
    }

    /// The containers whose cleanup failed and waits for a retry, with the last reason.
    pub fn pending_cleanups(&self) -> Vec<(ContainerId, String)> {
        self.pending.listed()
    }

    fn cgroup(&self, id: &ContainerId) -> Cgroup {
        self.root.child(id.root().cgroup_path())
    }

    /// The handle of a container (its root's, for nested containers).
    pub fn handle(&self, id: &ContainerId) -> Option<Handle> {
        self.containers.get(&id.root()).map(|r| r.handle)
    }

    /// What the spare cgroups did so far.
    pub fn spare_counts(&self) -> rein_core::cgroupfs::SpareCounts {
        self.spares.counts()
    }

    /// Removes the spare cgroups and gives their handles back.
    fn drop_spares(&mut self) {
        for handle in self.spares.drain() {
            self.allocator.release(handle);
        }
    }

    /// How many handles are free.
    pub fn free_handles(&self) -> usize {
        self.allocator.free()
    }

    /// The hierarchy in use.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Creates the container's cgroup; on cgroup v1 writes its classid, on v2
    /// returns its cgroup id (the directory's inode number, as the kernel's
    /// `cgroup_id()`).
    fn create_cgroup(&self, id: &ContainerId, handle: Handle) -> Result<Option<u64>, Error> {
        let cgroup = self.cgroup(id);
        cgroup.create()?;
        match self.hierarchy.version() {
            Version::V1 => {
                cgroup.write("net_cls.classid", &handle.classid().to_string())?;
                Ok(None)
            }
            Version::V2 => {
                use std::os::unix::fs::MetadataExt;
                let meta =
                    std::fs::metadata(cgroup.path()).map_err(|source| NetClsError::CgroupId {
                        path: cgroup.path().to_owned(),
                        source,
                    })?;
                Ok(Some(meta.ino()))
            }
        }
    }

    /// Puts a container's process where it is classified. v1: the container's
    /// net_cls cgroup (a nested container's is its root's). v2: Mesos's layout, the
    /// container's `leaf` (its own cgroup has controllers enabled for children, so
    /// it may hold no process: EBUSY); Mesos's launcher has put it there already,
    /// so this only matters without one. A nested container's process stays where
    /// Mesos put it, below its root's cgroup, whose id classifies it as an ancestor.
    fn place(&self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        match self.hierarchy.version() {
            Version::V1 => self.cgroup(id).add_process(pid)?,
            Version::V2 if id.is_nested() => {}
            Version::V2 => {
                let leaf = self.cgroup(id).child("leaf");
                leaf.create()?;
                leaf.add_process(pid)?;
            }
        }
        Ok(())
    }

    /// Creates the container's cgroup (unless `made`: a spare set up for `handle`
    /// was renamed to it) and notes its record.
    fn setup(
        &self,
        id: &ContainerId,
        handle: Handle,
        shape: Option<Shape>,
        made: bool,
    ) -> Result<Record, Error> {
        let cgroup_id = if made {
            None
        } else {
            self.create_cgroup(id, handle)?
        };
        let record = Record {
            handle,
            egress: shape.map(|shape| EgressRecord {
                shape,
                cgroup_id,
                netns: false,
                active: false,
            }),
        };
        self.store.save(id, &record)?;
        Ok(record)
    }
}

impl Isolator for NetClsIsolator {
    fn name(&self) -> &'static str {
        "net_cls"
    }

    fn recover(
        &mut self,
        containers: &[RecoveredContainer],
        orphans: &[ContainerId],
    ) -> Result<(), Error> {
        self.recover_all(Known::new(containers, orphans))
    }

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        self.retry_cleanups();
        let config = parse_for_module(spec, "net_cls", self.allow_debug_panic)?;
        if spec.id.is_nested() {
            return Ok(LaunchInfo::default());
        }
        if self.containers.contains_key(&spec.id) {
            return Err(NetClsError::AlreadyPrepared(spec.id.clone()).into());
        }
        let shape = match &self.egress {
            Some(e) => e.params.shape_for(&config, spec.resources.cpus)?,
            None => {
                if let Some((key, setting)) = config.group("net").next() {
                    // Not an error: the operator chose not to shape this agent.
                    warn!(container = %spec.id, "{} asks for egress shaping ({key}), which is off on this agent (egress_shaping=false)", setting.origin);
                }
                None
            }
        };
        // A spare cgroup already holds its handle's classid.
        let cgroup = self.cgroup(&spec.id);
        let allocator = &mut self.allocator;
        let (handle, made) = match self.spares.take(&cgroup, |h| allocator.release(h)) {
            Some(handle) => (handle, true),
            None => (self.allocator.allocate()?, false),
        };
        let record = match self.setup(&spec.id, handle, shape, made) {
            Ok(record) => record,
            Err(err) => {
                // Leave nothing behind for a launch that will not happen.
                let _ = cgroup.remove();
                let _ = self.store.remove(&spec.id);
                self.allocator.release(handle);
                return Err(err);
            }
        };
        self.containers.insert(spec.id.clone(), record);
        info!(container = %spec.id, handle = %handle, "allocated net_cls handle");
        Ok(LaunchInfo::default())
    }

    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        if self.handle(id).is_none() {
            return Err(NetClsError::UnknownContainer(id.clone()).into());
        }
        self.place(id, pid)?;
        if !id.is_nested() {
            self.shape(id, pid)?;
        }
        Ok(())
    }

    fn update(&mut self, id: &ContainerId, resources: &Resources) -> Result<(), Error> {
        self.reshape(id, resources)
    }

    fn usage(&mut self, id: &ContainerId) -> Result<Statistics, Error> {
        self.egress_usage(id)
    }

    fn status(&mut self, id: &ContainerId) -> Result<Status, Error> {
        // A classid is a net_cls notion: cgroup2 classification has none to report.
        let v1 = self.hierarchy.version() == Version::V1;
        Ok(Status {
            net_cls_classid: self.handle(id).filter(|_| v1).map(Handle::classid),
        })
    }

    fn after_answer(&mut self) {
        let (spares, allocator) = (&mut self.spares, &mut self.allocator);
        spares.refill(|spare| {
            let handle = allocator.allocate().map_err(|e| e.to_string())?;
            match spare.write("net_cls.classid", &handle.classid().to_string()) {
                Ok(()) => Ok(handle),
                Err(e) => {
                    allocator.release(handle);
                    Err(e.to_string())
                }
            }
        });
    }

    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        if id.is_nested() {
            return Ok(());
        }
        self.retry_cleanups();
        if !self.containers.contains_key(id) && !self.unrecorded.contains(id) {
            return Ok(());
        }
        let handle = self.handle(id);
        self.release_or_retry(id, true)?;
        info!(container = %id, handle = ?handle.map(|h| h.to_string()), "released net_cls handle");
        Ok(())
    }
}

impl Drop for NetClsIsolator {
    fn drop(&mut self) {
        self.drop_spares();
    }
}

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod tests;
