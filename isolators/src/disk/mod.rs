//! The disk quota isolator: the container's `disk` resource as a hard quota on XFS
//! and ext4 project quotas, and an in-process scanning fallback elsewhere.
//!
//! Per top-level container, `prepare()` picks a backend from the sandbox's
//! filesystem: a project quota where the filesystem accounts project usage (a
//! project id from the operator's range is set on the sandbox with PROJINHERIT, so
//! every new file, including nested containers' sandboxes below it, is charged to
//! it), or a scan of the sandbox otherwise. Usage comes from the quota in one
//! `quotactl` call, or from the last scan. A monitor thread owned by the isolator
//! polls kill-mode containers and runs the scans; `watch()` fires only when a
//! container goes over in kill mode.
//!
//! The sandbox belongs to the task, and the kernel lets the owner of a file change
//! its project id (`chattr -p`, `FS_IOC_FSSETXATTR`, allowed to the owner in the
//! initial user namespace on XFS and ext4) and its PROJINHERIT flag. So an id read
//! from the sandbox is never trusted: the persisted record is the truth. Recovery
//! uses the recorded id, and a sandbox found carrying another is logged, counted and
//! set back; an audit pass (every `project_audit_interval`) sets every sandbox's
//! files back to their container's id, so files moved out of a project (to escape
//! the quota) or into a neighbour's (to bill it) return where they belong; and a
//! kill is decided only once a walk of the container's own sandbox confirms the
//! usage, so files a neighbour charged to its project never get it killed.
//!
//! Project ids are reclaimed at cleanup: the id is cleared from the sandbox's files
//! (the bounded walk of [`tree`]) and returned to the pool once the project's quota
//! shows nothing charged to it any more; otherwise (a walk past its bounds, files
//! elsewhere still carrying it) it is held until the sandbox is removed, as before.

pub mod error;
pub mod kernel;
mod monitor;
pub mod projects;
mod quota;
pub mod record;
mod recover;
pub mod scan;
pub mod settings;
pub mod tree;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::{info, warn};

use rein_core::config::{parse_for_module, Setting};
use rein_core::isolator::Error;
use rein_core::launch_policy;
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::StateStore;
use rein_core::{
    ContainerId, ContainerSpec, Isolator, LaunchInfo, LimitationNotifier, RecoveredContainer,
    Resources, Statistics,
};

pub use error::DiskError;
pub use kernel::{DiskKernel, FsInfo, FsKind, Limits, LinuxKernel, ProjectQuota, QuotaState};
pub use monitor::{next_pause, DiskCounters, REASON_DISK};
pub use projects::{ProjectAllocator, ProjectError};

/// What ext4 quotas do not hold back (dropped from a limited container).
const CAP_SYS_RESOURCE: &str = "CAP_SYS_RESOURCE";
pub use record::{limits_for, Backend, Record};
pub use scan::{scan, scan_many, ScanOptions, ScanResult};
pub use settings::{Mode, Settings, DEFAULT_PROJECT_IDS, PARAMS};
pub use tree::TreeReport;

use monitor::{monitor_loop, poll, Monitor, Shared, Tracked};
use record::limit_bytes;

use crate::known::Known;

/// The disk quota isolator.
pub struct DiskIsolator {
    settings: Settings,
    kernel: Arc<dyn DiskKernel>,
    store: StateStore,
    allocator: ProjectAllocator,
    /// Released project ids whose sandboxes still exist.
    awaiting_gc: HashMap<ContainerId, (PathBuf, u32)>,
    monitor: Arc<Monitor>,
    thread: Option<JoinHandle<()>>,
    /// Whether the agent would apply a capability drop (the agent's policy;
    /// replaced in tests, where no agent is loaded).
    check_drops: DropCheck,
}

/// Asks whether dropping these capabilities would be refused.
pub type DropCheck = fn(&[String]) -> Result<(), launch_policy::Refusal>;

impl DiskIsolator {
    /// Builds the isolator from module parameters, on the real kernel.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, Error> {
        let known: Vec<&str> = COMMON_PARAMS.iter().chain(PARAMS).copied().collect();
        let params = Params::new(pairs, &known)?;
        let common = CommonParams::from_params(&params)?;
        let settings = Settings::from_params(&params, &common)?;
        let store = StateStore::open(&common.state_dir, "disk")?;
        Ok(Self::new(settings, Arc::new(LinuxKernel), store))
    }

    /// Builds the isolator on an explicit kernel (tests, harness) and starts its
    /// monitor thread.
    pub fn new(settings: Settings, kernel: Arc<dyn DiskKernel>, store: StateStore) -> Self {
        let monitor = Arc::new(Monitor {
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            shared: Mutex::new(Shared {
                containers: HashMap::new(),
            }),
            counters: DiskCounters::default(),
            audit_due: AtomicBool::new(false),
        });
        let thread = {
            let monitor = Arc::clone(&monitor);
            let kernel = Arc::clone(&kernel);
            let settings = settings.clone();
            std::thread::Builder::new()
                .name("rein-disk-monitor".into())
                .spawn(move || monitor_loop(&monitor, kernel.as_ref(), &settings))
                .map_err(|e| warn!("disk monitor thread not started: {e}"))
                .ok()
        };
        let (first, last) = settings.project_ids;
        Self {
            allocator: ProjectAllocator::new(first, last),
            settings,
            kernel,
            store,
            awaiting_gc: HashMap::new(),
            monitor,
            check_drops: launch_policy::check_drops,
            thread,
        }
    }

    /// Free and total project ids (after releasing those whose sandboxes are gone).
    pub fn project_ids(&mut self) -> (u64, u64) {
        self.reclaim_gone();
        (self.allocator.free(), self.allocator.total())
    }

    /// The backend a container uses, if it is tracked.
    pub fn backend(&self, id: &ContainerId) -> Option<Backend> {
        self.lock().containers.get(id).map(|t| t.record.backend)
    }

    /// Runs one monitor pass on the calling thread (scans, kill checks); the monitor
    /// thread does the same every `scan_interval`.
    pub fn poll_now(&self) {
        let audit = self.monitor.audit_due.swap(false, Ordering::SeqCst);
        poll(&self.monitor, self.kernel.as_ref(), &self.settings, audit);
    }

    /// Runs one monitor pass with an audit of every sandbox's project ids; the
    /// monitor thread audits every `project_audit_interval`.
    pub fn audit_now(&self) {
        poll(&self.monitor, self.kernel.as_ref(), &self.settings, true);
    }

    /// What was counted so far.
    pub fn counters(&self) -> &DiskCounters {
        &self.monitor.counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.monitor
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn mode_of(&self, spec: &ContainerSpec) -> Result<Mode, DiskError> {
        let config = parse_for_module(spec, "disk", self.settings.allow_debug_panic)?;
        let Some(setting) = config.get("disk.mode") else {
            return Ok(self.settings.default_mode);
        };
        let refuse = |setting: &Setting, why: String| -> DiskError { setting.error(why).into() };
        let mode = config
            .text("disk.mode")
            .and_then(Mode::parse)
            .ok_or_else(|| refuse(setting, "not a disk mode".into()))?;
        if mode == Mode::Off {
            if !self.settings.allow_opt_out {
                return Err(refuse(
                    setting,
                    "opting out of disk quotas is not allowed on this agent (allow_opt_out=false)"
                        .into(),
                ));
            }
        } else if !self.settings.allowed_modes.contains(&mode) {
            let allowed: Vec<&str> = self
                .settings
                .allowed_modes
                .iter()
                .map(|m| m.as_str())
                .collect();
            return Err(refuse(
                setting,
                format!(
                    "not allowed on this agent (allowed_modes: {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(mode)
    }

    fn track(&self, id: &ContainerId, record: Record) {
        self.lock().containers.insert(
            id.clone(),
            Tracked {
                record,
                notifier: None,
                scanned: None,
            },
        );
    }
}

impl Drop for DiskIsolator {
    fn drop(&mut self) {
        self.monitor.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.lock();
            self.monitor.wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Isolator for DiskIsolator {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn recover(
        &mut self,
        containers: &[RecoveredContainer],
        orphans: &[ContainerId],
    ) -> Result<(), Error> {
        Ok(self.recover_all(Known::new(containers, orphans))?)
    }

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        let mode = self.mode_of(spec)?;
        if spec.id.is_nested() {
            // Nested sandboxes live inside the parent's sandbox and inherit its
            // project id: they are accounted in the parent's quota.
            return Ok(LaunchInfo::default());
        }
        if self.lock().containers.contains_key(&spec.id) {
            return Err(DiskError::AlreadyPrepared(spec.id.clone()).into());
        }
        if mode == Mode::Off {
            info!(container = %spec.id, "disk quota off at the container's request");
            return Ok(LaunchInfo::default());
        }
        let backend = self.choose_backend(&spec.sandbox)?;
        let record = Record {
            sandbox: spec.sandbox.clone(),
            mode,
            backend,
            limit: limit_bytes(&spec.resources),
            released: false,
        };
        let mut launch = LaunchInfo::default();
        if let Backend::Quota { project, ext4, .. } = backend {
            // Decided before any side effect: a drop the agent would refuse fails
            // the launch before a file of the sandbox carries the project id.
            let drop_resource = ext4 && limits_for(&record, self.settings.headroom).hard > 0;
            if drop_resource {
                if let Err(refusal) = (self.check_drops)(&[CAP_SYS_RESOURCE.into()]) {
                    // Nothing carries the id yet: it goes straight back.
                    self.allocator.release(project);
                    return Err(DiskError::Capabilities(refusal).into());
                }
            }
            let setup = self
                .kernel
                .set_project_tree(&spec.sandbox, project, self.settings.walk_max_entries)
                .map_err(|source| DiskError::SetProject {
                    project,
                    sandbox: spec.sandbox.clone(),
                    source,
                })
                .map(|report| {
                    if !report.complete {
                        warn!(container = %spec.id, project, entries = report.entries,
                              "the sandbox already holds more than project_walk_max_entries entries; only those were given the project id");
                    }
                })
                .and_then(|()| self.apply_quota(&record))
                .and_then(|()| Ok(self.store.save(&spec.id, &record)?));
            if let Err(err) = setup {
                // Files may carry the id already: keep it until the sandbox is gone.
                let _ = self.release(&spec.id, record);
                return Err(err.into());
            }
            if drop_resource {
                // Root with CAP_SYS_RESOURCE writes through ext4 quotas.
                launch.drop_capabilities.push(CAP_SYS_RESOURCE.into());
            }
        } else {
            self.store.save(&spec.id, &record)?;
        }
        info!(container = %spec.id, backend = ?backend, mode = mode.as_str(), limit = ?record.limit,
              free = self.allocator.free(), "disk quota prepared");
        self.track(&spec.id, record);
        Ok(launch)
    }

    fn isolate(&mut self, _id: &ContainerId, _pid: i32) -> Result<(), Error> {
        Ok(())
    }

    fn isolate_does_nothing(&self) -> bool {
        // The sandbox carries the project id from prepare(); processes need no placing.
        true
    }

    fn watch(&mut self, id: &ContainerId, notifier: LimitationNotifier) {
        if let Some(tracked) = self.lock().containers.get_mut(id) {
            tracked.notifier = Some(notifier);
        }
        // Untracked (nested, opted out): the notifier is dropped, the future stays
        // pending, which is "no limitation".
    }

    fn update(&mut self, id: &ContainerId, resources: &Resources) -> Result<(), Error> {
        let record = {
            let mut shared = self.lock();
            let Some(tracked) = shared.containers.get_mut(id) else {
                return Ok(());
            };
            let limit = limit_bytes(resources);
            if tracked.record.limit == limit {
                // The agent repeats the launch's resources in its first updates:
                // nothing to set, and no state record to write again.
                return Ok(());
            }
            tracked.record.limit = limit;
            tracked.record.clone()
        };
        self.apply_quota(&record)?;
        self.store.save(id, &record)?;
        info!(container = %id, limit = ?record.limit, "disk quota updated");
        Ok(())
    }

    fn usage(&mut self, id: &ContainerId) -> Result<Statistics, Error> {
        let shared = self.lock();
        let Some(tracked) = shared.containers.get(id) else {
            return Ok(Statistics::default());
        };
        let used = match tracked.record.backend {
            Backend::Quota { project, .. } => Some(
                self.kernel
                    .quota(&tracked.record.sandbox, project)
                    .map_err(|source| DiskError::ReadQuota { project, source })?
                    .used,
            ),
            Backend::Scan => tracked.scanned,
        };
        Ok(Statistics {
            disk_used_bytes: used,
            disk_limit_bytes: tracked.record.limit,
            ..Statistics::default()
        })
    }

    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        // Dropping the notifier leaves the watch future pending.
        let tracked = self.lock().containers.remove(id);
        if let Some(tracked) = tracked {
            self.release(id, tracked.record)?;
            info!(container = %id, free = self.allocator.free(), total = self.allocator.total(), "disk quota released");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
