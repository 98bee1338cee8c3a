//! The net_cls isolator: one classid per top-level container, Mesos-compatible.
//!
//! Semantics follow Mesos's `cgroups/net_cls`: a primary handle and a range of
//! secondary handles (module parameters), a handle per top-level container written to
//! `net_cls.classid` of `<net_cls hierarchy>/<cgroups_root>/<id>`, the classid in
//! `ContainerStatus.cgroup_info.net_cls.classid`, handles re-reserved on recovery.
//! Nested containers share their parent's cgroup and classid.

pub mod handles;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use rein_core::cgroupfs::{Cgroup, Hierarchy};
use rein_core::config::parse_for_prepare;
use rein_core::isolator::Error;
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Status};

pub use handles::{Handle, HandleAllocator, HandleError};

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
}

/// The net_cls isolator.
pub struct NetClsIsolator {
    hierarchy: Hierarchy,
    root: Cgroup,
    allocator: HandleAllocator,
    store: StateStore,
    allow_debug_panic: bool,
    containers: HashMap<ContainerId, Handle>,
}

impl NetClsIsolator {
    /// Builds the isolator from module parameters; locates (or mounts, where allowed)
    /// the net_cls hierarchy.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, Error> {
        let known: Vec<&str> = COMMON_PARAMS.iter().chain(PARAMS).copied().collect();
        let params = Params::new(pairs, &known)?;
        let common = CommonParams::from_params(&params)?;
        let primary = params
            .u64("net_cls_primary_handle")?
            .ok_or_else(|| params.error("net_cls_primary_handle", "required (e.g. 0x1)"))?;
        let primary = u16::try_from(primary)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                params.error("net_cls_primary_handle", "must be a 16-bit handle above 0")
            })?;
        let (first, last) = params
            .range("net_cls_secondary_handles")?
            .unwrap_or((1, 0xffff));
        let (first, last) = match (u16::try_from(first), u16::try_from(last)) {
            (Ok(a), Ok(b)) if b >= 1 => (a, b),
            _ => {
                return Err(params
                    .error("net_cls_secondary_handles", "must be within 0x1-0xffff")
                    .into())
            }
        };
        let hierarchy = match Hierarchy::find_v1(&common.mountinfo, "net_cls")? {
            Some(h) => h,
            None if params.bool("mount_net_cls")?.unwrap_or(false) => {
                let target = common.cgroups_hierarchy.join("net_cls");
                info!(target = %target.display(), "mounting the net_cls hierarchy");
                Hierarchy::mount_v1("net_cls", &target)?
            }
            None => {
                return Err(format!(
                    "no net_cls hierarchy is mounted (per {}); mount one or set mount_net_cls=true",
                    common.mountinfo.display()
                )
                .into())
            }
        };
        let store = StateStore::open(&common.state_dir, "net_cls")?;
        Ok(Self::new(
            hierarchy,
            &common,
            HandleAllocator::new(primary, first, last),
            store,
        ))
    }

    /// Builds the isolator on an explicit hierarchy (tests, harness).
    pub fn new(
        hierarchy: Hierarchy,
        common: &CommonParams,
        allocator: HandleAllocator,
        store: StateStore,
    ) -> Self {
        let root = hierarchy.cgroup(&common.cgroups_root);
        Self {
            hierarchy,
            root,
            allocator,
            store,
            allow_debug_panic: common.allow_debug_panic,
            containers: HashMap::new(),
        }
    }

    fn cgroup(&self, id: &ContainerId) -> Cgroup {
        self.root.child(id.root().cgroup_path())
    }

    /// The handle of a container (its root's, for nested containers).
    pub fn handle(&self, id: &ContainerId) -> Option<Handle> {
        self.containers.get(&id.root()).copied()
    }

    /// How many handles are free.
    pub fn free_handles(&self) -> usize {
        self.allocator.free()
    }

    /// The hierarchy in use.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    fn setup(&self, id: &ContainerId, handle: Handle) -> Result<(), Error> {
        let cgroup = self.cgroup(id);
        cgroup.create()?;
        cgroup.write("net_cls.classid", &handle.classid().to_string())?;
        self.store.save(id, &Record { handle })?;
        Ok(())
    }

    fn teardown(&mut self, id: &ContainerId, handle: Handle) -> Result<(), Error> {
        self.cgroup(id).remove()?;
        self.store.remove(id)?;
        self.allocator.release(handle);
        self.containers.remove(id);
        Ok(())
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
        let records: Vec<(ContainerId, Record)> = self.store.load_all()?;
        for (id, record) in records {
            let known = containers.iter().any(|c| c.id == id) || orphans.contains(&id);
            if !known {
                // Neither alive nor an orphan Mesos will clean: its cleanup was lost.
                info!(container = %id, handle = %record.handle, "removing net_cls state of a vanished container");
                self.cgroup(&id).remove()?;
                self.store.remove(&id)?;
                continue;
            }
            self.allocator.reserve(record.handle)?;
            self.containers.insert(id.clone(), record.handle);
            let cgroup = self.cgroup(&id);
            if !cgroup.exists() {
                warn!(container = %id, "net_cls cgroup missing on recovery; recreating it");
                cgroup.create()?;
                cgroup.write("net_cls.classid", &record.handle.classid().to_string())?;
            }
            info!(container = %id, handle = %record.handle, "recovered net_cls handle");
        }
        Ok(())
    }

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        parse_for_prepare(spec, self.allow_debug_panic)?;
        if spec.id.is_nested() {
            return Ok(LaunchInfo::default());
        }
        if self.containers.contains_key(&spec.id) {
            return Err(format!("container {} was already prepared", spec.id).into());
        }
        let handle = self.allocator.allocate()?;
        if let Err(err) = self.setup(&spec.id, handle) {
            // Leave nothing behind for a launch that will not happen.
            let _ = self.cgroup(&spec.id).remove();
            let _ = self.store.remove(&spec.id);
            self.allocator.release(handle);
            return Err(err);
        }
        self.containers.insert(spec.id.clone(), handle);
        info!(container = %spec.id, handle = %handle, "allocated net_cls handle");
        Ok(LaunchInfo::default())
    }

    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        if self.handle(id).is_none() {
            return Err(format!("unknown container {id}").into());
        }
        self.cgroup(id).add_process(pid)?;
        Ok(())
    }

    fn status(&mut self, id: &ContainerId) -> Result<Status, Error> {
        Ok(Status {
            net_cls_classid: self.handle(id).map(Handle::classid),
        })
    }

    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        if id.is_nested() {
            return Ok(());
        }
        match self.containers.get(id).copied() {
            Some(handle) => {
                self.teardown(id, handle)?;
                info!(container = %id, handle = %handle, "released net_cls handle");
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
