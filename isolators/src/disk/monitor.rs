//! The monitor: a thread owned by the isolator that scans scan-backed sandboxes,
//! reads the quotas, audits the sandboxes' project ids and fires the limitation of
//! a container over its quota in kill mode (once a walk of its own sandbox
//! confirms the usage).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tracing::warn;

use rein_core::{ContainerId, Limitation, LimitationNotifier};

use super::kernel::DiskKernel;
use super::record::{limits_for, megabytes, Backend, Record, MB};
use super::scan::scan_many;
use super::settings::{Mode, Settings};

/// The `reason` of a disk limitation.
pub const REASON_DISK: &str = "REASON_CONTAINER_LIMITATION_DISK";

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

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A container as the monitor sees it.
pub(crate) struct Tracked {
    pub(crate) record: Record,
    pub(crate) notifier: Option<LimitationNotifier>,
    /// Last scanned usage (scan backend).
    pub(crate) scanned: Option<u64>,
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

pub(crate) struct Shared {
    pub(crate) containers: HashMap<ContainerId, Tracked>,
}

pub(crate) struct Monitor {
    pub(crate) stop: AtomicBool,
    pub(crate) wake: Condvar,
    pub(crate) shared: Mutex<Shared>,
    pub(crate) counters: DiskCounters,
    /// An audit of every sandbox is wanted at the next pass.
    pub(crate) audit_due: AtomicBool,
}

/// The pause before the next pass: `scan_interval`, stretched so that passes take
/// at most a tenth of the monitor's time however many files the sandboxes hold.
pub fn next_pause(scan_interval: Duration, last_pass: Duration) -> Duration {
    scan_interval.max(last_pass.saturating_mul(9))
}

pub(crate) fn monitor_loop(monitor: &Monitor, kernel: &dyn DiskKernel, settings: &Settings) {
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
pub(crate) fn poll(monitor: &Monitor, kernel: &dyn DiskKernel, settings: &Settings, audit: bool) {
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
