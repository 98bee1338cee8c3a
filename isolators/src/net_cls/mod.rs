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

pub mod handles;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use rein_core::cgroupfs::{Cgroup, Hierarchy, Version};
use rein_core::config::parse_for_prepare;
use rein_core::isolator::{Error, NetTx, PendingCleanups, RecoveryCounters};
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::{Scan, StateStore};
use rein_core::{
    ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Resources, Statistics,
    Status,
};

use crate::egress::{self, ClassifierChoice, EgressParams, Shape, Shaper};

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

/// Shaping policy and mechanism, when enabled.
#[derive(Debug)]
struct Egress {
    params: EgressParams,
    shaper: Shaper,
}

/// A host class left behind that could not be removed, or a device whose classes
/// could not be listed (the whole look-up is retried then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StaleClass {
    Scan,
    Class(u32),
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
}

impl NetClsIsolator {
    /// Builds the isolator from module parameters; locates (or mounts, where allowed)
    /// the net_cls hierarchy.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, Error> {
        let known: Vec<&str> = COMMON_PARAMS
            .iter()
            .chain(PARAMS)
            .chain(egress::PARAMS)
            .copied()
            .collect();
        let params = Params::new(pairs, &known)?;
        let common = CommonParams::from_params(&params)?;
        let egress_params = EgressParams::from_params(&params)?;
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
        let choice = egress_params.as_ref().map(|e| e.classifier);
        let v1 = match choice {
            Some(ClassifierChoice::Cgroup2) => None,
            _ => Hierarchy::find_v1(&common.mountinfo, "net_cls")?,
        };
        let mount = params.bool("mount_net_cls")?.unwrap_or(false);
        let hierarchy = match v1 {
            Some(h) => h,
            None if choice == Some(ClassifierChoice::Cgroup2)
                || (choice == Some(ClassifierChoice::Auto) && !mount) =>
            {
                Hierarchy::find_v2(&common.mountinfo)?.ok_or_else(|| {
                    format!(
                        "egress shaping by cgroup needs a net_cls or a cgroup2 hierarchy; \
                         neither is mounted (per {})",
                        common.mountinfo.display()
                    )
                })?
            }
            None if mount => {
                let target = common.cgroups_hierarchy.join("net_cls");
                info!(target = %target.display(), "mounting the net_cls hierarchy");
                Hierarchy::find_or_mount_v1(&common.mountinfo, "net_cls", &target)?
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
        let allocator = HandleAllocator::new(primary, first, last);
        let capacity = u32::try_from(allocator.capacity()).unwrap_or(u32::MAX);
        let isolator = Self::new(hierarchy, &common, allocator, store);
        match egress_params {
            None => Ok(isolator),
            Some(ep) => {
                let classifier = match isolator.hierarchy.version() {
                    Version::V1 => egress::Classifier::NetCls,
                    Version::V2 => egress::Classifier::Cgroup2 {
                        level: cgroup_level(&common),
                    },
                };
                let shaper = Shaper::new(&ep, classifier, primary, capacity)?;
                info!(devices = ?shaper.device_names(), ?classifier, "egress shaping enabled");
                Ok(isolator.with_egress(ep, shaper))
            }
        }
    }

    /// Enables egress shaping; the tree's link and default classes' handles are
    /// never given to containers.
    pub fn with_egress(mut self, params: EgressParams, shaper: Shaper) -> Self {
        let primary = self.allocator.primary();
        for minor in [egress::LINK_MINOR, egress::DEFAULT_MINOR] {
            // Outside the secondary range, they cannot be handed out anyway.
            let _ = self.allocator.reserve(Handle {
                primary,
                secondary: minor,
            });
        }
        self.egress = Some(Egress { params, shaper });
        self
    }

    /// The shaper, when egress shaping is on (tests, harness).
    pub fn shaper(&mut self) -> Option<&mut Shaper> {
        self.egress.as_mut().map(|e| &mut e.shaper)
    }

    /// A container's egress shape, if it is shaped.
    pub fn egress_shape(&self, id: &ContainerId) -> Option<Shape> {
        self.containers
            .get(&id.root())
            .and_then(|r| r.egress)
            .map(|e| e.shape)
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
        RecoveryCounters {
            cleanups_pending: u64::try_from(self.pending.len() + self.stale_classes.len())
                .unwrap_or(u64::MAX),
            ..self.counters
        }
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

    fn cgroup(&self, id: &ContainerId) -> Cgroup {
        self.root.child(id.root().cgroup_path())
    }

    /// The handle of a container (its root's, for nested containers).
    pub fn handle(&self, id: &ContainerId) -> Option<Handle> {
        self.containers.get(&id.root()).map(|r| r.handle)
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
                let meta = std::fs::metadata(cgroup.path())
                    .map_err(|e| format!("reading {}: {e}", cgroup.path().display()))?;
                Ok(Some(meta.ino()))
            }
        }
    }

    fn setup(
        &self,
        id: &ContainerId,
        handle: Handle,
        shape: Option<Shape>,
    ) -> Result<Record, Error> {
        let cgroup_id = self.create_cgroup(id, handle)?;
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

    /// Releases everything a container holds; a step that fails does not stop the
    /// others, but the handle and the state file are kept until all succeeded (the
    /// cleanup is then retried). `patient` waits briefly for a cgroup whose last
    /// process just exited (`cleanup()`); recovery and retries do not wait.
    fn teardown(&mut self, id: &ContainerId, record: &Record, patient: bool) -> Result<(), Error> {
        let mut failures = Vec::new();
        if let Some(egress) = &mut self.egress {
            // Also for a record without shaping: one rebuilt from the kernel may have a class.
            let cgroup_id = record.egress.and_then(|e| e.cgroup_id);
            if let Err(err) = egress.shaper.remove(record.handle.classid(), cgroup_id) {
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
            return Err(failures.join("; ").into());
        }
        self.store.remove(id)?;
        self.containers.remove(id);
        self.release_handle(record.handle);
        Ok(())
    }

    /// Returns a handle to the pool unless another container (a corrupt pair of
    /// records) or a stale class still holds it.
    fn release_handle(&mut self, handle: Handle) {
        let held = self.containers.values().any(|r| r.handle == handle)
            || self.held_for_stale.contains(&handle);
        if !held {
            self.allocator.release(handle);
        }
    }

    /// Releases a tracked or unrecorded container; nothing to do for others.
    fn release(&mut self, id: &ContainerId, patient: bool) -> Result<(), Error> {
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
    fn release_or_retry(&mut self, id: &ContainerId, patient: bool) -> Result<(), Error> {
        let outcome = self.release(id, patient);
        self.pending.settle(
            id,
            outcome,
            &mut self.counters,
            "net_cls",
            "the container keeps its handle and state",
        )
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
        let recapped = match (&self.egress, &mut record.egress) {
            (Some(egress), Some(e)) => {
                let capped = e.shape.within_caps(&egress.params);
                let changed = capped != e.shape;
                if changed {
                    warn!(container = %id, recorded = ?e.shape, now = ?capped,
                          "recovered egress shaping above the operator's current caps; brought within them");
                    e.shape = capped;
                }
                changed
            }
            _ => false,
        };
        if recapped {
            if let Err(err) = self.store.save(id, &record) {
                warn!(container = %id, "saving net_cls state: {err}");
            }
        }
        if let (Some(egress), Some(e)) = (&mut self.egress, &mut record.egress) {
            let classid = record.handle.classid();
            // Where it was shaped follows from where its init process lives.
            let pid = live.and_then(|c| c.pid);
            let own_netns = match pid {
                Some(pid) => egress.shaper.has_own_netns(pid).unwrap_or(false),
                None => false,
            };
            let adopted = match pid {
                Some(pid) if own_netns => egress.shaper.adopt_netns(classid, &e.shape, pid),
                _ => egress.shaper.adopt_host(classid, &e.shape, e.cgroup_id),
            };
            match adopted {
                Ok(()) => {
                    e.netns = own_netns;
                    e.active = true;
                }
                Err(err) => {
                    self.counters.recover_failures += 1;
                    warn!(container = %id, "cannot re-adopt the egress class: {err}");
                }
            }
        }
        info!(container = %id, handle = %record.handle, "recovered net_cls handle");
        self.containers.insert(id.clone(), record);
    }

    /// Removes host classes no container claims; one that fails keeps its handle
    /// out of use and is retried later.
    fn remove_unclaimed_classes(&mut self) {
        let Some(egress) = &mut self.egress else {
            return;
        };
        // Active host classes are claimed; so are those of containers whose own
        // cleanup is pending (it removes their class, and reports it once).
        let held: Vec<u32> = self
            .containers
            .iter()
            .filter(|(id, r)| {
                r.egress.is_some_and(|e| e.active && !e.netns) || self.pending.contains(id)
            })
            .map(|(_, r)| r.handle.classid())
            .collect();
        let report = egress.shaper.remove_unclaimed(|c| held.contains(&c));
        for classid in report.removed {
            self.stale_class_gone(StaleClass::Class(classid));
        }
        if !report.failed.iter().any(|f| f.classid.is_none()) {
            self.stale_class_gone(StaleClass::Scan);
        }
        for failure in report.failed {
            self.counters.cleanup_failures += 1;
            let key = match failure.classid {
                Some(classid) => {
                    let handle = Handle::from_classid(classid);
                    if self.allocator.reserve(handle).is_ok() {
                        self.held_for_stale.insert(handle);
                    }
                    StaleClass::Class(classid)
                }
                None => StaleClass::Scan,
            };
            let retry_in = self.stale_classes.failed(key, failure.error.to_string());
            match failure.classid {
                Some(classid) => warn!(device = failure.device, class = %Handle::from_classid(classid), ?retry_in,
                    "removing an unclaimed egress class failed: {}; its handle is kept out of use and the removal retried", failure.error),
                None => warn!(device = failure.device, ?retry_in,
                    "listing the device's egress classes failed: {}; unclaimed classes are looked for again later", failure.error),
            }
        }
    }

    fn retry_stale_class(&mut self, classid: u32) {
        let Some(egress) = &mut self.egress else {
            self.stale_classes.forget(&StaleClass::Class(classid));
            return;
        };
        match egress.shaper.remove_host_class(classid) {
            Ok(()) => self.stale_class_gone(StaleClass::Class(classid)),
            Err(err) => {
                self.counters.cleanup_failures += 1;
                let retry_in = self
                    .stale_classes
                    .failed(StaleClass::Class(classid), err.to_string());
                warn!(class = %Handle::from_classid(classid), ?retry_in, "removing an unclaimed egress class failed again: {err}");
            }
        }
    }

    fn stale_class_gone(&mut self, key: StaleClass) {
        if self.stale_classes.succeeded(&key) == 0 {
            return;
        }
        self.counters.cleanups_retried += 1;
        if let StaleClass::Class(classid) = key {
            let handle = Handle::from_classid(classid);
            info!(class = %handle, "unclaimed egress class removed on a retry");
            if self.held_for_stale.remove(&handle) {
                self.release_handle(handle);
            }
        }
    }

    /// Creates the container's class: inside its own network namespace if it has
    /// one, on the host's devices otherwise.
    fn shape(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        let Some(egress) = &mut self.egress else {
            return Ok(());
        };
        let Some(record) = self.containers.get_mut(id) else {
            return Ok(());
        };
        let Some(mut e) = record.egress else {
            return Ok(());
        };
        let classid = record.handle.classid();
        let own_netns = egress.shaper.has_own_netns(pid)?;
        let result = if own_netns {
            egress.shaper.add_netns(classid, &e.shape, pid).map(|n| {
                if n == 0 {
                    warn!(container = %id, "own network namespace has no device to shape yet");
                }
            })
        } else {
            egress.shaper.add_host(classid, &e.shape, e.cgroup_id)
        };
        if let Err(err) = result {
            // Leave no half-made class behind; the launch fails.
            let _ = egress.shaper.remove(classid, e.cgroup_id);
            return Err(err);
        }
        e.netns = own_netns;
        e.active = true;
        record.egress = Some(e);
        info!(container = %id, class = %record.handle, rate = e.shape.rate, ceil = e.shape.ceil, own_netns, "shaping egress");
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
        // Only a state directory that cannot be listed stops recovery: the
        // isolator could not know its containers at all.
        let scan: Scan<Record> = self.store.scan()?;
        let known =
            |id: &ContainerId| containers.iter().any(|c| &c.id == id) || orphans.contains(id);
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
                    if known(&id) {
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
                    if !known(&id) {
                        let _ = self.release_or_retry(&id, false);
                    }
                }
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, record) in records {
            let live = containers.iter().find(|c| c.id == id);
            self.recover_one(&id, record, live, known(&id));
        }
        self.remove_unclaimed_classes();
        let c = self.counters();
        info!(
            containers = self.containers.len(),
            unreadable_records = c.unreadable_records,
            recover_failures = c.recover_failures,
            cleanups_pending = c.cleanups_pending,
            "net_cls recovery done"
        );
        Ok(())
    }

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        self.retry_cleanups();
        let config = parse_for_prepare(spec, self.allow_debug_panic)?;
        if spec.id.is_nested() {
            return Ok(LaunchInfo::default());
        }
        if self.containers.contains_key(&spec.id) {
            return Err(format!("container {} was already prepared", spec.id).into());
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
        let handle = self.allocator.allocate()?;
        let record = match self.setup(&spec.id, handle, shape) {
            Ok(record) => record,
            Err(err) => {
                // Leave nothing behind for a launch that will not happen.
                let _ = self.cgroup(&spec.id).remove();
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
            return Err(format!("unknown container {id}").into());
        }
        self.cgroup(id).add_process(pid)?;
        if !id.is_nested() {
            self.shape(id, pid)?;
        }
        Ok(())
    }

    fn update(&mut self, id: &ContainerId, resources: &Resources) -> Result<(), Error> {
        let Some(egress) = &mut self.egress else {
            return Ok(());
        };
        let Some(record) = self.containers.get_mut(id) else {
            return Ok(());
        };
        let Some(mut e) = record.egress else {
            return Ok(());
        };
        let shape = e.shape.updated(&egress.params, resources.cpus);
        if shape == e.shape {
            return Ok(());
        }
        if e.active {
            egress.shaper.change(record.handle.classid(), &shape)?;
        }
        e.shape = shape;
        record.egress = Some(e);
        self.store.save(id, &*record)?;
        info!(container = %id, rate = shape.rate, "egress rate follows the container's cpus");
        Ok(())
    }

    fn usage(&mut self, id: &ContainerId) -> Result<Statistics, Error> {
        let (Some(egress), Some(record)) = (&mut self.egress, self.containers.get(&id.root()))
        else {
            return Ok(Statistics::default());
        };
        let Some(e) = record.egress.filter(|e| e.active) else {
            return Ok(Statistics::default());
        };
        let stats = egress.shaper.stats(record.handle.classid())?;
        // What the kernel holds, read back; computed with its rounding when no
        // device had the class (a namespace without devices yet).
        let held = stats
            .held
            .unwrap_or_else(|| egress::expected_held(&e.shape));
        Ok(Statistics {
            net_tx: Some(NetTx {
                bytes: stats.bytes,
                packets: stats.packets,
                dropped: stats.drops,
                rate_limit: held.rate,
                burst_rate_limit: held.ceil,
                burst_size: held.burst,
            }),
            ..Statistics::default()
        })
    }

    fn status(&mut self, id: &ContainerId) -> Result<Status, Error> {
        // A classid is a net_cls notion: cgroup2 classification has none to report.
        let v1 = self.hierarchy.version() == Version::V1;
        Ok(Status {
            net_cls_classid: self.handle(id).filter(|_| v1).map(Handle::classid),
        })
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

/// Depth of the containers' cgroups below the cgroup2 root: the cgroups root's
/// components, plus the container's own directory.
fn cgroup_level(common: &CommonParams) -> u32 {
    u32::try_from(common.cgroups_root.components().count() + 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
