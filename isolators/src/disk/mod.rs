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

pub mod kernel;
pub mod projects;
pub mod scan;
pub mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use rein_core::config::{parse_for_module, Setting};
use rein_core::isolator::Error;
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::{Scan, StateStore};
use rein_core::{
    ContainerId, ContainerSpec, Isolator, LaunchInfo, Limitation, LimitationNotifier,
    RecoveredContainer, Resources, Statistics,
};

pub use kernel::{DiskKernel, FsInfo, FsKind, Limits, LinuxKernel, ProjectQuota, QuotaState};
pub use projects::{ProjectAllocator, ProjectError};
pub use scan::{scan, scan_many, ScanOptions, ScanResult};
pub use tree::TreeReport;

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
    "project_walk_max_entries",
    "project_audit_interval",
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
    /// `project_ids`: the project id range, inclusive (`[5000-1004999]`, a million
    /// ids). Ids are reclaimed at cleanup; only sandboxes whose id could not be
    /// cleared hold theirs until garbage collection.
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
    /// `project_walk_max_entries`: the most entries one walk of a sandbox visits
    /// when it sets, clears or repairs project ids (`1000000`).
    pub walk_max_entries: u64,
    /// `project_audit_interval`: how often every sandbox's files are set back to
    /// their container's project id (`60s`; `0s` turns the audit off).
    pub audit_interval: Duration,
}

/// The first and last id of the default `project_ids`: a million ids, so that even
/// ids held until garbage collection (a week by default) last 140 launches an hour.
pub const DEFAULT_PROJECT_IDS: (u32, u32) = (5000, 1_004_999);

/// A warning is logged (and counted) when fewer than this fraction of ids is free.
const LOW_POOL_PERCENT: u64 = 10;

/// Ids tried at one prepare when candidates are still charged for files.
const DIRTY_ID_TRIES: usize = 16;

/// What the isolator counts of what tasks did to their project ids and of the id
/// pool (besides the log lines each one comes with).
#[derive(Debug, Default)]
pub struct DiskCounters {
    /// Recovered sandboxes carrying another id than the record (set back).
    pub recover_mismatches: AtomicU64,
    /// Containers whose recovery failed (each handled alone; recovery goes on).
    pub recover_failures: AtomicU64,
    /// Entries the audit found with another id or without PROJINHERIT (set back).
    pub entries_repaired: AtomicU64,
    /// Kills not made: the project's usage came from outside the sandbox.
    pub kills_withheld: AtomicU64,
    /// Ids cleared from their sandbox and returned to the pool at cleanup.
    pub ids_reclaimed_at_cleanup: AtomicU64,
    /// Ids held until their sandbox is removed (clearing incomplete or charged).
    pub ids_held_for_gc: AtomicU64,
    /// Ids skipped at allocation because files outside any sandbox still carry them.
    pub dirty_ids_skipped: AtomicU64,
    /// Prepares that found fewer than 10% of the ids free.
    pub pool_low: AtomicU64,
    /// Prepares refused because no id was free.
    pub pool_exhausted: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            project_ids: DEFAULT_PROJECT_IDS,
            default_mode: Mode::Enforce,
            allowed_modes: vec![Mode::Account, Mode::Enforce, Mode::Kill],
            allow_opt_out: false,
            headroom: 10 * MB,
            scan_interval: Duration::from_secs(15),
            scan_workers: 2,
            force_scan: false,
            allow_debug_panic: false,
            walk_max_entries: 1_000_000,
            audit_interval: Duration::from_secs(60),
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
        if let Some(n) = params.u64("project_walk_max_entries")? {
            if n < 1000 {
                return Err(params
                    .error("project_walk_max_entries", "at least 1000")
                    .into());
            }
            s.walk_max_entries = n;
        }
        if let Some(d) = params.duration("project_audit_interval")? {
            if !d.is_zero() && d < Duration::from_secs(1) {
                return Err(params
                    .error("project_audit_interval", "0s (off) or at least 1s")
                    .into());
            }
            s.audit_interval = d;
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
    counters: DiskCounters,
    /// An audit of every sandbox is wanted at the next pass.
    audit_due: AtomicBool,
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

    fn mode_of(&self, spec: &ContainerSpec) -> Result<Mode, Error> {
        let config = parse_for_module(spec, "disk", self.settings.allow_debug_panic)?;
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
    fn allocate_clean(&mut self, sandbox: &Path) -> Result<u32, Error> {
        let counters = &self.monitor.counters;
        for _ in 0..DIRTY_ID_TRIES {
            let project = match self.allocator.allocate() {
                Ok(p) => p,
                Err(ProjectError::Exhausted(total)) => {
                    bump(&counters.pool_exhausted, 1);
                    let (first, last) = self.allocator.range();
                    let live = self.lock().containers.len();
                    let message = format!(
                        "no free disk project id: all {total} ids of project_ids=[{first}-{last}] \
                         are held ({live} by running containers, {} by sandboxes awaiting garbage \
                         collection, the rest by files still charged to them); widen the module \
                         parameter project_ids or shorten the agent's --gc_delay",
                        self.awaiting_gc.len()
                    );
                    warn!("{message}");
                    return Err(message.into());
                }
                Err(e) => return Err(e.to_string().into()),
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
        Err(format!(
            "no clean disk project id after {DIRTY_ID_TRIES} tries: files outside any sandbox \
             are charged to them (see the log); widen the module parameter project_ids"
        )
        .into())
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

    /// Clears a released project's limits and its id from the sandbox's files, and
    /// returns the id to the pool once nothing is charged to it; otherwise keeps it
    /// until the sandbox is gone.
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
    fn clear_project(&self, id: &ContainerId, sandbox: &Path, project: u32) -> bool {
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
            Ok(q) => {
                warn!(container = %id, project, used = q.used, inodes = q.inodes, skipped = report.skipped,
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
    fn repair_live(&self) {
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

    /// Sets `project` back over a sandbox; logs and counts what had been changed.
    fn repair(&self, id: &ContainerId, sandbox: &Path, project: u32) {
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
        // Only a state directory that cannot be listed stops recovery; a record
        // that cannot be read is its container's trouble: a live one is adopted as
        // if it had none (a fresh id for its sandbox, saved over the file); for an
        // orphan or a vanished one there is nothing to act on, and the file goes.
        let scan: Scan<Record> = self.store.scan()?;
        for bad in scan.unreadable {
            bump(&self.monitor.counters.recover_failures, 1);
            let live = containers.iter().any(|c| c.id == bad.id);
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
            let known = containers.iter().any(|c| c.id == id) || orphans.contains(&id);
            if known {
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
        for container in containers {
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
                .set_project_tree(&spec.sandbox, project, self.settings.walk_max_entries)
                .map_err(|e| -> Error {
                    format!(
                        "setting project id {project} on sandbox {}: {e}",
                        spec.sandbox.display()
                    )
                    .into()
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
    let mut last_audit = std::time::Instant::now();
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
        let periodic =
            !settings.audit_interval.is_zero() && last_audit.elapsed() >= settings.audit_interval;
        let audit = monitor.audit_due.swap(false, Ordering::SeqCst) || periodic;
        if audit {
            last_audit = started;
        }
        poll(monitor, kernel, settings, audit);
        pause = next_pause(settings.scan_interval, started.elapsed());
    }
}

/// A quota-backed container as one pass sees it.
struct QuotaItem {
    id: ContainerId,
    sandbox: PathBuf,
    project: u32,
}

/// One pass: scan scan-backed sandboxes, read the quotas, audit the sandboxes'
/// project ids (when `audit`), verify and fire limitations.
fn poll(monitor: &Monitor, kernel: &dyn DiskKernel, settings: &Settings, audit: bool) {
    let (scans, quotas): (Vec<_>, Vec<QuotaItem>) = {
        let shared = monitor.shared.lock().unwrap_or_else(|e| e.into_inner());
        let scans = shared
            .containers
            .iter()
            .filter(|(_, t)| t.record.backend == Backend::Scan)
            .map(|(id, t)| (id.clone(), t.record.sandbox.clone()))
            .collect();
        let quotas = shared
            .containers
            .iter()
            .filter_map(|(id, t)| match t.record.backend {
                Backend::Quota { project, .. }
                    if audit || t.kill_at().is_some() || t.record.limit.is_some() =>
                {
                    Some(QuotaItem {
                        id: id.clone(),
                        sandbox: t.record.sandbox.clone(),
                        project,
                    })
                }
                _ => None,
            })
            .collect();
        (scans, quotas)
    };
    // The slow part runs without the lock, so usage() never waits for a scan.
    let mut measured: Vec<(ContainerId, u64)> = Vec::new();
    let roots: Vec<PathBuf> = scans.iter().map(|(_, sandbox)| sandbox.clone()).collect();
    for ((id, _), result) in scans.iter().zip(scan_many(&roots, settings.scan_options())) {
        match result {
            Ok(found) => measured.push((id.clone(), found.bytes)),
            Err(e) => warn!(container = %id, "scanning sandbox: {e}"),
        }
    }
    if audit {
        for q in &quotas {
            audit_sandbox(monitor, kernel, settings, q);
        }
    }
    let mut quota_used: Vec<(ContainerId, u64)> = Vec::new();
    for q in &quotas {
        match kernel.quota(&q.sandbox, q.project) {
            Ok(found) => quota_used.push((q.id.clone(), found.used)),
            Err(e) => warn!(container = %q.id, project = q.project, "reading the quota: {e}"),
        }
    }
    // Quota containers over their kill threshold (or near a hard limit) are
    // confirmed by a walk of their own sandbox before anything is decided.
    let suspects: Vec<(ContainerId, u64, Option<u64>)> = {
        let shared = monitor.shared.lock().unwrap_or_else(|e| e.into_inner());
        quota_used
            .iter()
            .filter_map(|(id, used)| {
                let t = shared.containers.get(id)?;
                t.record.limit?;
                let kill_at = t.kill_at().filter(|_| t.notifier.is_some());
                let near = limits_for(&t.record, settings.headroom).hard;
                let suspicious =
                    kill_at.is_some_and(|k| *used > k) || (near > 0 && *used >= near / 10 * 9);
                suspicious.then_some((id.clone(), *used, kill_at))
            })
            .collect()
    };
    let mut confirmed: Vec<(ContainerId, u64, u64)> = Vec::new();
    for (id, used, kill_at) in suspects {
        let Some(q) = quotas.iter().find(|q| q.id == id) else {
            continue;
        };
        let own = match kernel.set_project_tree(&q.sandbox, q.project, settings.walk_max_entries) {
            Ok(r) => {
                bump(&monitor.counters.entries_repaired, r.changed);
                // Past the walk's bounds the sandbox itself is huge: the quota stands.
                r.complete.then_some(r.bytes)
            }
            Err(e) => {
                warn!(container = %id, "walking the sandbox to confirm its usage: {e}");
                None
            }
        };
        let foreign = own.is_some_and(|own| own.saturating_add(MB) < used);
        if foreign {
            // Files outside the sandbox carry its id: set every sandbox back.
            monitor.audit_due.store(true, Ordering::SeqCst);
            warn!(container = %id, project = q.project, charged = used, own = ?own,
                  "the project is charged for files outside its sandbox (another task moved files into it); auditing every sandbox");
        }
        let Some(kill_at) = kill_at else {
            continue;
        };
        match own {
            Some(own) if own <= kill_at => {
                bump(&monitor.counters.kills_withheld, 1);
                warn!(container = %id, project = q.project, charged = used, own, kill_at,
                      "not killed: its own sandbox is within the quota");
            }
            // Reported as what its own sandbox holds, not what it was charged.
            Some(own) => confirmed.push((id, own, kill_at)),
            None => confirmed.push((id, used, kill_at)),
        }
    }
    let mut fire = Vec::new();
    {
        let mut shared = monitor.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (id, used) in measured {
            let Some(tracked) = shared.containers.get_mut(&id) else {
                continue; // Cleaned up meanwhile.
            };
            tracked.scanned = Some(used);
            let Some(kill_at) = tracked.kill_at() else {
                continue;
            };
            if used > kill_at {
                if let Some(notifier) = tracked.notifier.take() {
                    fire.push((notifier, limitation_message(&id, used, kill_at), used));
                }
            }
        }
        for (id, used, kill_at) in confirmed {
            if let Some(notifier) = shared
                .containers
                .get_mut(&id)
                .and_then(|t| t.notifier.take())
            {
                fire.push((notifier, limitation_message(&id, used, kill_at), used));
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

fn limitation_message(id: &ContainerId, used: u64, kill_at: u64) -> String {
    format!(
        "Disk usage {:.1} MB exceeds the quota of {:.1} MB of container {id}",
        megabytes(used),
        megabytes(kill_at)
    )
}

/// Sets one sandbox's files back to its container's project id.
fn audit_sandbox(monitor: &Monitor, kernel: &dyn DiskKernel, settings: &Settings, q: &QuotaItem) {
    match kernel.set_project_tree(&q.sandbox, q.project, settings.walk_max_entries) {
        Ok(r) => {
            bump(&monitor.counters.entries_repaired, r.changed);
            if r.changed > 0 {
                warn!(container = %q.id, project = q.project, changed = r.changed, entries = r.entries,
                      "entries of the sandbox carried another project id (the task changed them); set back");
            }
            if !r.complete {
                warn!(container = %q.id, project = q.project, entries = r.entries,
                      "the sandbox has more entries than project_walk_max_entries: audited in part");
            }
        }
        Err(e) => warn!(container = %q.id, project = q.project, "auditing the sandbox: {e}"),
    }
}

#[cfg(test)]
mod tests;
