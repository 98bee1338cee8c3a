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
//! container goes over in kill mode. Project ids are re-read from sandboxes on
//! recovery and released only once the sandbox is gone.

pub mod kernel;
pub mod projects;
pub mod scan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use rein_core::config::{parse_for_prepare, Setting};
use rein_core::isolator::Error;
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::StateStore;
use rein_core::{
    ContainerId, ContainerSpec, Isolator, LaunchInfo, Limitation, LimitationNotifier,
    RecoveredContainer, Resources, Statistics,
};

pub use kernel::{DiskKernel, FsInfo, FsKind, Limits, LinuxKernel, ProjectQuota, QuotaState};
pub use projects::{ProjectAllocator, ProjectError};
pub use scan::{scan, scan_many, ScanOptions, ScanResult};

/// Parameters of the disk isolator, besides the common ones.
pub const PARAMS: &[&str] = &[
    "project_ids",
    "default_mode",
    "allowed_modes",
    "allow_opt_out",
    "headroom",
    "scan_interval",
    "scan_workers",
    "backend",
];

/// The `reason` of a disk limitation.
pub const REASON_DISK: &str = "REASON_CONTAINER_LIMITATION_DISK";

const MB: u64 = 1 << 20;

/// What the isolator does with a container's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report usage only.
    Account,
    /// Writes fail at the quota (killed at the quota where the filesystem cannot
    /// enforce).
    Enforce,
    /// Killed above the quota; writes fail only at quota plus headroom.
    Kill,
    /// Neither accounted nor limited.
    Off,
}

impl Mode {
    /// Parses a mode word of `disk.mode` / the parameters.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word.trim() {
            "account" => Mode::Account,
            "enforce" => Mode::Enforce,
            "kill" => Mode::Kill,
            "off" => Mode::Off,
            _ => return None,
        })
    }

    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Account => "account",
            Mode::Enforce => "enforce",
            Mode::Kill => "kill",
            Mode::Off => "off",
        }
    }
}

/// How a container's usage is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A project quota with this id.
    Quota {
        /// The project id set on the sandbox.
        project: u32,
        /// Whether the filesystem enforces project limits (else: kill at the limit).
        enforcing: bool,
        /// Whether it is ext4 (root bypasses its quotas with CAP_SYS_RESOURCE).
        ext4: bool,
    },
    /// Periodic scans of the sandbox.
    Scan,
}

/// The operator's settings (module parameters).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `project_ids`: the project id range, inclusive (`[5000-10000]`).
    pub project_ids: (u32, u32),
    /// `default_mode`: the mode of containers that do not choose one (`enforce`).
    pub default_mode: Mode,
    /// `allowed_modes`: the modes containers may choose (`account,enforce,kill`).
    pub allowed_modes: Vec<Mode>,
    /// `allow_opt_out`: whether `disk.mode=off` is accepted (`false`).
    pub allow_opt_out: bool,
    /// `headroom`: in kill mode, how far above the quota writes still succeed (`10MB`).
    pub headroom: u64,
    /// `scan_interval`: how often usage is scanned and kill mode checked (`15s`).
    pub scan_interval: Duration,
    /// `scan_workers`: threads that scan, shared by all containers (`2`).
    pub scan_workers: usize,
    /// `backend`: `auto` (quota where the filesystem has one) or `scan` (always scan).
    pub force_scan: bool,
    /// `allow_debug_panic` (common parameter).
    pub allow_debug_panic: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            project_ids: (5000, 10000),
            default_mode: Mode::Enforce,
            allowed_modes: vec![Mode::Account, Mode::Enforce, Mode::Kill],
            allow_opt_out: false,
            headroom: 10 * MB,
            scan_interval: Duration::from_secs(15),
            scan_workers: 2,
            force_scan: false,
            allow_debug_panic: false,
        }
    }
}

impl Settings {
    /// Reads the settings from module parameters.
    pub fn from_params(params: &Params, common: &CommonParams) -> Result<Self, Error> {
        let mut s = Settings {
            allow_debug_panic: common.allow_debug_panic,
            ..Settings::default()
        };
        if let Some((a, b)) = params.range("project_ids")? {
            let (Ok(a), Ok(b)) = (u32::try_from(a), u32::try_from(b)) else {
                return Err(params
                    .error("project_ids", "project ids are 32-bit numbers")
                    .into());
            };
            if b == 0 {
                return Err(params
                    .error("project_ids", "project id 0 is every file's default")
                    .into());
            }
            s.project_ids = (a, b);
        }
        let mode = |name: &str, word: &str| {
            Mode::parse(word).ok_or_else(|| {
                params.error(
                    name,
                    format!("'{word}' is not one of account, enforce, kill, off"),
                )
            })
        };
        if params.raw("allowed_modes").is_some() {
            s.allowed_modes = params
                .list("allowed_modes")
                .iter()
                .map(|w| mode("allowed_modes", w))
                .collect::<Result<_, _>>()?;
            if s.allowed_modes.contains(&Mode::Off) {
                return Err(params
                    .error("allowed_modes", "use allow_opt_out=true to allow 'off'")
                    .into());
            }
        }
        if let Some(word) = params.raw("default_mode") {
            s.default_mode = mode("default_mode", word)?;
        }
        s.allow_opt_out = params.bool("allow_opt_out")?.unwrap_or(false);
        if !s.allowed_modes.contains(&s.default_mode) && s.default_mode != Mode::Off {
            return Err(params
                .error("default_mode", "not among allowed_modes")
                .into());
        }
        if let Some(h) = params.bytes("headroom")? {
            s.headroom = h;
        }
        if let Some(d) = params.duration("scan_interval")? {
            if d < Duration::from_millis(100) {
                return Err(params.error("scan_interval", "at least 100ms").into());
            }
            s.scan_interval = d;
        }
        if let Some(n) = params.u64("scan_workers")? {
            s.scan_workers = usize::try_from(n)
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| params.error("scan_workers", "between 1 and 64"))?;
        }
        s.force_scan = match params.raw("backend").map(str::trim) {
            None | Some("auto") => false,
            Some("scan") => true,
            Some(_) => return Err(params.error("backend", "expected auto or scan").into()),
        };
        Ok(s)
    }

    fn scan_options(&self) -> ScanOptions {
        ScanOptions {
            workers: self.scan_workers,
            low_priority: true,
        }
    }
}

/// What is persisted per top-level container (and kept after cleanup until the
/// sandbox is gone, so the project id is never handed out twice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The sandbox.
    pub sandbox: PathBuf,
    /// The chosen mode.
    pub mode: Mode,
    /// The backend.
    pub backend: Backend,
    /// The quota (the disk resource), in bytes.
    pub limit: Option<u64>,
    /// The container was cleaned up; only the project id awaits its sandbox's removal.
    #[serde(default)]
    pub released: bool,
}

/// A container as the monitor sees it.
struct Tracked {
    record: Record,
    notifier: Option<LimitationNotifier>,
    /// Last scanned usage (scan backend).
    scanned: Option<u64>,
}

impl Tracked {
    /// Usage above which the container is killed.
    fn kill_at(&self) -> Option<u64> {
        let limit = self.record.limit?;
        match (self.record.mode, self.record.backend) {
            (Mode::Kill, _) => Some(limit),
            (
                Mode::Enforce,
                Backend::Quota {
                    enforcing: true, ..
                },
            ) => None,
            // A filesystem that cannot stop writes: enforce by killing at the quota.
            (Mode::Enforce, _) => Some(limit),
            _ => None,
        }
    }
}

struct Shared {
    containers: HashMap<ContainerId, Tracked>,
}

struct Monitor {
    stop: AtomicBool,
    wake: Condvar,
    shared: Mutex<Shared>,
}

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
}

fn limit_bytes(resources: &Resources) -> Option<u64> {
    let mb = resources.disk_mb?;
    if !mb.is_finite() || mb <= 0.0 {
        return None;
    }
    // Mesos counts disk in whole MB (2^20 bytes); clamped, so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = mb.floor().min(1e12) as u64;
    Some(whole * MB)
}

fn megabytes(bytes: u64) -> f64 {
    // For messages and the limitation's resource; precision loss is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / MB as f64;
    mb
}

/// The kernel limits for a record: hard at the quota when enforcing, soft at the
/// quota and hard at quota plus headroom in kill mode, none otherwise.
pub fn limits_for(record: &Record, headroom: u64) -> Limits {
    let Some(limit) = record.limit else {
        return Limits::default();
    };
    match record.mode {
        Mode::Enforce => Limits {
            soft: limit,
            hard: limit,
        },
        Mode::Kill => Limits {
            soft: limit,
            hard: limit.saturating_add(headroom),
        },
        Mode::Account | Mode::Off => Limits::default(),
    }
}

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
        poll(&self.monitor, self.kernel.as_ref(), &self.settings);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.monitor
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn mode_of(&self, spec: &ContainerSpec) -> Result<Mode, Error> {
        let config = parse_for_prepare(spec, self.settings.allow_debug_panic)?;
        let Some(setting) = config.get("disk.mode") else {
            return Ok(self.settings.default_mode);
        };
        let refuse = |setting: &Setting, why: String| -> Error { setting.error(why).into() };
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

    fn choose_backend(&mut self, sandbox: &Path) -> Result<Backend, Error> {
        let fs = self.kernel.filesystem(sandbox).map_err(|e| {
            format!(
                "inspecting the filesystem of sandbox {}: {e}",
                sandbox.display()
            )
        })?;
        let quota_fs = matches!(fs.kind, FsKind::Xfs | FsKind::Ext4) && fs.quota.accounting;
        if self.settings.force_scan || !quota_fs {
            return Ok(Backend::Scan);
        }
        self.reclaim_gone();
        let project = self.allocator.allocate()?;
        Ok(Backend::Quota {
            project,
            enforcing: fs.quota.enforcing,
            ext4: fs.kind == FsKind::Ext4,
        })
    }

    fn apply_quota(&self, record: &Record) -> Result<(), Error> {
        let Backend::Quota { project, .. } = record.backend else {
            return Ok(());
        };
        let limits = limits_for(record, self.settings.headroom);
        self.kernel
            .set_limits(&record.sandbox, project, limits)
            .map_err(|e| {
                format!(
                    "setting limits soft={} hard={} bytes of project {project} (sandbox {}): {e}",
                    limits.soft,
                    limits.hard,
                    record.sandbox.display()
                )
                .into()
            })
    }

    /// Clears a released project's limits and keeps its id until the sandbox is gone.
    fn release(&mut self, id: &ContainerId, mut record: Record) -> Result<(), Error> {
        match record.backend {
            Backend::Quota { project, .. } => {
                if let Err(e) = self
                    .kernel
                    .set_limits(&record.sandbox, project, Limits::default())
                {
                    // The sandbox may be gone already; the id is reclaimed below then.
                    warn!(container = %id, project, "clearing project limits: {e}");
                }
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

    /// Releases project ids whose sandboxes have been removed.
    fn reclaim_gone(&mut self) {
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

    /// Re-adopts one container from its record, re-reading the project id from its
    /// sandbox (the sandbox is what the kernel charges).
    fn adopt(&mut self, id: &ContainerId, mut record: Record) -> Result<(), Error> {
        if let Backend::Quota { project, .. } = &mut record.backend {
            match self.kernel.project_id(&record.sandbox) {
                Ok(on_disk) if on_disk != *project && self.allocator.contains(on_disk) => {
                    warn!(container = %id, recorded = *project, on_disk, "sandbox carries another project id; using it");
                    *project = on_disk;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(container = %id, "reading the project id of {}: {e}", record.sandbox.display())
                }
            }
            self.allocator
                .reserve(*project)
                .map_err(|e| format!("recovering container {id}: {e}"))?;
        }
        self.apply_quota(&record)
            .unwrap_or_else(|e| warn!(container = %id, "re-applying limits: {e}"));
        self.store.save(id, &record)?;
        info!(container = %id, backend = ?record.backend, mode = record.mode.as_str(), "recovered disk quota");
        self.track(id, record);
        Ok(())
    }

    /// A live container without a record (state lost): keep its project id.
    fn adopt_unrecorded(&mut self, container: &RecoveredContainer) -> Result<(), Error> {
        let Some(sandbox) = &container.sandbox else {
            return Ok(());
        };
        let Ok(project) = self.kernel.project_id(sandbox) else {
            return Ok(());
        };
        if !self.allocator.contains(project) || self.allocator.is_used(project) {
            return Ok(());
        }
        let Ok(fs) = self.kernel.filesystem(sandbox) else {
            return Ok(());
        };
        let quota = self.kernel.quota(sandbox, project).unwrap_or_default();
        let limit = (quota.limits.hard > 0).then_some(quota.limits.hard);
        let record = Record {
            sandbox: sandbox.clone(),
            mode: if limit.is_some() {
                Mode::Enforce
            } else {
                Mode::Account
            },
            backend: Backend::Quota {
                project,
                enforcing: fs.quota.enforcing,
                ext4: fs.kind == FsKind::Ext4,
            },
            limit,
            released: false,
        };
        warn!(container = %container.id, project, "no disk state for a live container; adopting the project id of its sandbox");
        self.adopt(&container.id, record)
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
        let records: Vec<(ContainerId, Record)> = self.store.load_all()?;
        let mut seen = Vec::new();
        for (id, record) in records {
            seen.push(id.clone());
            if record.released {
                if let Backend::Quota { project, .. } = record.backend {
                    if let Err(e) = self.allocator.reserve(project) {
                        warn!(container = %id, "keeping a released project id: {e}");
                    }
                    self.awaiting_gc.insert(id, (record.sandbox, project));
                }
                continue;
            }
            let known = containers.iter().any(|c| c.id == id) || orphans.contains(&id);
            if known {
                self.adopt(&id, record)?;
            } else {
                // Neither alive nor an orphan Mesos will clean: its cleanup was lost.
                info!(container = %id, "releasing the disk quota of a vanished container");
                if let Backend::Quota { project, .. } = record.backend {
                    let _ = self.allocator.reserve(project);
                }
                self.release(&id, record)?;
            }
        }
        for container in containers {
            if !container.id.is_nested() && !seen.contains(&container.id) {
                self.adopt_unrecorded(container)?;
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

    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        let mode = self.mode_of(spec)?;
        if spec.id.is_nested() {
            // Nested sandboxes live inside the parent's sandbox and inherit its
            // project id: they are accounted in the parent's quota.
            return Ok(LaunchInfo::default());
        }
        if self.lock().containers.contains_key(&spec.id) {
            return Err(format!("container {} was already prepared", spec.id).into());
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
            let setup = self
                .kernel
                .set_project_id(&spec.sandbox, project)
                .map_err(|e| -> Error {
                    format!(
                        "setting project id {project} on sandbox {}: {e}",
                        spec.sandbox.display()
                    )
                    .into()
                })
                .and_then(|()| self.apply_quota(&record))
                .and_then(|()| Ok(self.store.save(&spec.id, &record)?));
            if let Err(err) = setup {
                // Files may carry the id already: keep it until the sandbox is gone.
                let _ = self.release(&spec.id, record);
                return Err(err);
            }
            if ext4 && limits_for(&record, self.settings.headroom).hard > 0 {
                // Root with CAP_SYS_RESOURCE writes through ext4 quotas.
                launch.drop_capabilities.push("CAP_SYS_RESOURCE".into());
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
            tracked.record.limit = limit_bytes(resources);
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
                    .map_err(|e| format!("reading the quota of project {project}: {e}"))?
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

/// The pause before the next pass: `scan_interval`, stretched so that passes take
/// at most a tenth of the monitor's time however many files the sandboxes hold.
pub fn next_pause(scan_interval: Duration, last_pass: Duration) -> Duration {
    scan_interval.max(last_pass.saturating_mul(9))
}

fn monitor_loop(monitor: &Monitor, kernel: &dyn DiskKernel, settings: &Settings) {
    let mut pause = settings.scan_interval;
    loop {
        {
            let guard = monitor.shared.lock().unwrap_or_else(|e| e.into_inner());
            if monitor.stop.load(Ordering::SeqCst) {
                return;
            }
            let (guard, _) = monitor
                .wake
                .wait_timeout(guard, pause)
                .unwrap_or_else(|e| e.into_inner());
            drop(guard);
        }
        if monitor.stop.load(Ordering::SeqCst) {
            return;
        }
        let started = std::time::Instant::now();
        poll(monitor, kernel, settings);
        pause = next_pause(settings.scan_interval, started.elapsed());
    }
}

/// One pass: scan scan-backed sandboxes, read kill-mode quotas, fire limitations.
fn poll(monitor: &Monitor, kernel: &dyn DiskKernel, settings: &Settings) {
    let (scans, quotas): (Vec<_>, Vec<_>) = {
        let shared = monitor.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .containers
            .iter()
            .filter(|(_, t)| t.record.backend == Backend::Scan || t.kill_at().is_some())
            .map(|(id, t)| (id.clone(), t.record.sandbox.clone(), t.record.backend))
            .partition(|(_, _, backend)| *backend == Backend::Scan)
    };
    // The slow part runs without the lock, so usage() never waits for a scan.
    let mut measured: Vec<(ContainerId, u64)> = Vec::new();
    let roots: Vec<PathBuf> = scans
        .iter()
        .map(|(_, sandbox, _)| sandbox.clone())
        .collect();
    for ((id, _, _), result) in scans.iter().zip(scan_many(&roots, settings.scan_options())) {
        match result {
            Ok(found) => measured.push((id.clone(), found.bytes)),
            Err(e) => warn!(container = %id, "scanning sandbox: {e}"),
        }
    }
    for (id, sandbox, backend) in &quotas {
        if let Backend::Quota { project, .. } = backend {
            match kernel.quota(sandbox, *project) {
                Ok(q) => measured.push((id.clone(), q.used)),
                Err(e) => warn!(container = %id, project, "reading the quota: {e}"),
            }
        }
    }
    let mut fire = Vec::new();
    {
        let mut shared = monitor.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (id, used) in measured {
            let Some(tracked) = shared.containers.get_mut(&id) else {
                continue; // Cleaned up meanwhile.
            };
            if tracked.record.backend == Backend::Scan {
                tracked.scanned = Some(used);
            }
            let Some(kill_at) = tracked.kill_at() else {
                continue;
            };
            if used > kill_at {
                if let Some(notifier) = tracked.notifier.take() {
                    let message = format!(
                        "Disk usage {:.1} MB exceeds the quota of {:.1} MB of container {id}",
                        megabytes(used),
                        megabytes(kill_at)
                    );
                    fire.push((notifier, message, used));
                }
            }
        }
    }
    // Completions run without our lock held (they may call back into the agent).
    for (notifier, message, used) in fire {
        warn!("{message}");
        notifier.notify(Limitation {
            reason: REASON_DISK.into(),
            message,
            resource: Some(("disk".into(), megabytes(used))),
        });
    }
}

#[cfg(test)]
mod tests;
