//! The isolator lifecycle in Rust terms, mirroring Mesos's `Isolator` class.
//!
//! Methods are synchronous and are called on one Rust-owned thread per isolator (the
//! bridge serialises them), so implementations need no locking. Long-running work
//! (scans, watches) runs on threads the isolator owns and reports through
//! [`LimitationNotifier`] or cached statistics.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::container::{ContainerId, ContainerSpec, Resources};

/// An error an isolator returns; the bridge turns it into `process::Failure`.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A container the agent recovered, as `recover()` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredContainer {
    /// Its id.
    pub id: ContainerId,
    /// Its init process, if known.
    pub pid: Option<i32>,
    /// Its sandbox, if known.
    pub sandbox: Option<PathBuf>,
}

/// What `prepare()` asks of the launch (a subset of `ContainerLaunchInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchInfo {
    /// Variables added to the container's environment.
    pub environment: Vec<(String, String)>,
    /// Capabilities to remove from the container's bounding set (e.g. `CAP_SYS_RESOURCE`
    /// so root in the container cannot bypass an ext4 quota).
    pub drop_capabilities: Vec<String>,
}

/// Transmit-side network statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetTx {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped by the shaper.
    pub dropped: u64,
    /// Guaranteed rate, bytes per second.
    pub rate_limit: u64,
    /// Ceiling, bytes per second.
    pub burst_rate_limit: u64,
    /// Burst size, bytes.
    pub burst_size: u64,
}

/// Block I/O counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkioDevice {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub read_ops: u64,
    /// Write operations.
    pub write_ops: u64,
}

/// What `usage()` reports (fields of `ResourceStatistics`); `None` means "not ours".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statistics {
    /// `net_tx_*` fields.
    pub net_tx: Option<NetTx>,
    /// `disk_used_bytes`.
    pub disk_used_bytes: Option<u64>,
    /// `disk_limit_bytes`.
    pub disk_limit_bytes: Option<u64>,
    /// `blkio_statistics.throttling`, per device.
    pub blkio: Vec<BlkioDevice>,
}

impl Statistics {
    /// Merges another isolator's statistics (as Mesos's `MergeFrom` does).
    pub fn merge(&mut self, other: Statistics) {
        self.net_tx = other.net_tx.or(self.net_tx);
        self.disk_used_bytes = other.disk_used_bytes.or(self.disk_used_bytes);
        self.disk_limit_bytes = other.disk_limit_bytes.or(self.disk_limit_bytes);
        self.blkio.extend(other.blkio);
    }
}

/// What `status()` reports (fields of `ContainerStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `cgroup_info.net_cls.classid`.
    pub net_cls_classid: Option<u32>,
}

/// Why a container must be destroyed (`ContainerLimitation`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limitation {
    /// The `TaskStatus.Reason`, e.g. `REASON_CONTAINER_LIMITATION_DISK`.
    pub reason: String,
    /// A message for the task status.
    pub message: String,
    /// The resource that was exceeded (`disk`), and the amount in its Mesos unit (MB).
    pub resource: Option<(String, f64)>,
}

/// Fires a container's `watch()` future. Dropping it without firing leaves the
/// future pending, which is how "no limitation" is expressed to Mesos.
pub struct LimitationNotifier(Box<dyn FnOnce(Limitation) + Send>);

impl LimitationNotifier {
    /// Wraps a completion.
    pub fn new(f: impl FnOnce(Limitation) + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    /// A notifier that sends its limitation down a channel, and the
    /// channel's receiver (for callers that wait for the limitation).
    pub fn channel() -> (Self, std::sync::mpsc::Receiver<Limitation>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let notifier = Self::new(move |l| {
            let _ = tx.send(l);
        });
        (notifier, rx)
    }

    /// Reports the limitation; the agent then destroys the container.
    pub fn notify(self, limitation: Limitation) {
        (self.0)(limitation)
    }
}

impl fmt::Debug for LimitationNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LimitationNotifier")
    }
}

/// What an isolator met, container by container, at `recover()` and in cleanups
/// (each also logged with the container and the reason). `recover()` fails only
/// when the isolator as a whole cannot work; everything counted here is one
/// container's trouble and leaves the others alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryCounters {
    /// State files that could not be read or parsed (the container is handled
    /// without them: cleaned if it is gone, its cgroup removed at its cleanup).
    pub unreadable_records: u64,
    /// Recovered containers whose state could not be fully restored (kept and
    /// tracked all the same).
    pub recover_failures: u64,
    /// Cleanup attempts that failed (a cgroup kept busy by a process, a netlink
    /// error); each is retried later.
    pub cleanup_failures: u64,
    /// Cleanups that succeeded on a retry.
    pub cleanups_retried: u64,
    /// Cleanups waiting for their retry now.
    pub cleanups_pending: u64,
}

impl RecoveryCounters {
    /// Logs the end of an isolator's `recover()` with these counters.
    pub fn log_recovered(&self, isolator: &str, containers: usize) {
        tracing::info!(
            containers,
            unreadable_records = self.unreadable_records,
            recover_failures = self.recover_failures,
            cleanups_pending = self.cleanups_pending,
            "{isolator} recovery done"
        );
    }

    /// These counters with `cleanups_pending` set to what is waiting now.
    pub fn with_pending(self, pending: usize) -> Self {
        Self {
            cleanups_pending: u64::try_from(pending).unwrap_or(u64::MAX),
            ..self
        }
    }
}

/// The first retry of a failed cleanup comes this long after the failure; each
/// further failure doubles the delay, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between two retries of one cleanup.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// Cleanups that failed for a reason of their own, waiting for a retry with a
/// growing delay. The isolators retry those that are due at each later
/// `prepare()` and `cleanup()` (the calls that need what a leftover holds: a
/// handle, a class, a cgroup name), and all of them at the next `recover()`,
/// since their state stays on disk until they succeed.
#[derive(Debug, Clone)]
pub struct PendingCleanups<K: Ord> {
    entries: BTreeMap<K, Retry>,
}

#[derive(Debug, Clone)]
struct Retry {
    attempts: u32,
    due: Instant,
    reason: String,
}

impl<K: Ord + Clone> Default for PendingCleanups<K> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> PendingCleanups<K> {
    /// Records a failed attempt; returns the delay until its next retry.
    pub fn failed(&mut self, key: K, reason: String) -> Duration {
        let entry = self.entries.entry(key).or_insert(Retry {
            attempts: 0,
            due: Instant::now(),
            reason: String::new(),
        });
        let shift = entry.attempts.min(16);
        let delay = RETRY_FIRST.saturating_mul(1 << shift).min(RETRY_MAX);
        entry.attempts += 1;
        entry.due = Instant::now() + delay;
        entry.reason = reason;
        delay
    }

    /// Records a success; returns how many attempts had failed before (0 if the
    /// key was not pending).
    pub fn succeeded(&mut self, key: &K) -> u32 {
        self.entries.remove(key).map_or(0, |r| r.attempts)
    }

    /// Forgets a key without counting a success (its object went away otherwise).
    pub fn forget(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// The keys whose retry is due.
    pub fn due(&self) -> Vec<K> {
        let now = Instant::now();
        self.entries
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every pending key, due or not.
    pub fn keys(&self) -> Vec<K> {
        self.entries.keys().cloned().collect()
    }

    /// Every pending key with its last failure's reason.
    pub fn listed(&self) -> Vec<(K, String)> {
        self.entries
            .iter()
            .map(|(k, r)| (k.clone(), r.reason.clone()))
            .collect()
    }

    /// Settles one cleanup attempt of `key`: a success ends its retries (counted
    /// if it had failed before); a failure is counted, logged with what the
    /// isolator keeps meanwhile (`kept`) and scheduled for a retry.
    pub fn settle<E: std::fmt::Display>(
        &mut self,
        key: &K,
        outcome: Result<(), E>,
        counters: &mut RecoveryCounters,
        isolator: &str,
        kept: &str,
    ) -> Result<(), E>
    where
        K: std::fmt::Display,
    {
        match outcome {
            Ok(()) => {
                let failed_before = self.succeeded(key);
                if failed_before > 0 {
                    counters.cleanups_retried += 1;
                    tracing::info!(container = %key, failed_before,
                                   "{isolator} cleanup succeeded on a retry");
                }
                Ok(())
            }
            Err(err) => {
                counters.cleanup_failures += 1;
                let retry_in = self.failed(key.clone(), err.to_string());
                tracing::warn!(container = %key, ?retry_in,
                               "{isolator} cleanup failed: {err}; {kept}, and the cleanup is retried");
                Err(err)
            }
        }
    }

    /// Whether a key is pending.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The last failure's reason of a pending key.
    pub fn reason(&self, key: &K) -> Option<&str> {
        self.entries.get(key).map(|r| r.reason.as_str())
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One isolator. `cleanup()` may come for containers the isolator never saw and
/// must be idempotent; `prepare()` failures fail only that container's launch.
pub trait Isolator: Send {
    /// The isolator's name, for logs and state directories.
    fn name(&self) -> &'static str;

    /// Whether nested containers are passed to this isolator.
    fn supports_nesting(&self) -> bool {
        true
    }

    /// Re-adopts live containers from persisted state; cleans up what belongs to
    /// orphans and to containers that no longer exist. Fails only when the
    /// isolator as a whole cannot work (its state directory cannot be listed):
    /// one container's trouble (an unreadable record, a busy cgroup, a kernel
    /// object that cannot be removed) is logged, counted in
    /// [`RecoveryCounters`] and retried later ([`PendingCleanups`]), since a
    /// failed `recover()` stops the agent.
    fn recover(
        &mut self,
        containers: &[RecoveredContainer],
        orphans: &[ContainerId],
    ) -> Result<(), Error>;

    /// Validates the container's configuration and sets up what can exist before a pid.
    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error>;

    /// Places the container's init process (it has not exec'd yet).
    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error>;

    /// Whether `isolate()` does nothing for any container (fixed for the
    /// isolator's life): the bridge then answers it on the caller's thread, once
    /// the isolator's earlier calls are done, without a hop to its worker thread.
    fn isolate_does_nothing(&self) -> bool {
        false
    }

    /// Registers the container's limitation notifier. The default keeps it pending.
    fn watch(&mut self, _id: &ContainerId, _notifier: LimitationNotifier) {}

    /// Applies new resources (top-level containers only).
    fn update(&mut self, _id: &ContainerId, _resources: &Resources) -> Result<(), Error> {
        Ok(())
    }

    /// Current statistics (must be cheap: `/monitor/statistics` waits for it).
    fn usage(&mut self, _id: &ContainerId) -> Result<Statistics, Error> {
        Ok(Statistics::default())
    }

    /// Container status fields. The bridge keeps the answer it gets after
    /// `prepare`, `update` and `status` and gives it to the agent's later calls
    /// without asking again: a container's status may change only through these.
    fn status(&mut self, _id: &ContainerId) -> Result<Status, Error> {
        Ok(Status::default())
    }

    /// Releases everything the container held.
    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error>;

    /// Work that makes later `prepare`s quicker (making spare cgroups), run by the
    /// bridge after `prepare`'s answer, before the isolator's next call, and once
    /// after `recover()`. Nothing waits for it; a failure is the isolator's to log
    /// and count, and its next `prepare` does the work itself.
    fn after_answer(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_cleanups_back_off_and_count_attempts() {
        let mut p = PendingCleanups::<u32>::default();
        assert_eq!(p.failed(7, "busy".into()), RETRY_FIRST);
        assert_eq!(p.failed(7, "busy again".into()), RETRY_FIRST * 2);
        assert_eq!(p.reason(&7), Some("busy again"));
        assert!(p.due().is_empty(), "not due before its delay");
        assert_eq!(p.keys(), vec![7]);
        for _ in 0..40 {
            p.failed(7, "still".into());
        }
        assert_eq!(p.failed(7, "still".into()), RETRY_MAX);
        assert_eq!(p.succeeded(&7), 43);
        assert_eq!(p.succeeded(&7), 0);
        assert!(p.is_empty());
    }
}
