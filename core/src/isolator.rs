//! The isolator lifecycle in Rust terms, mirroring Mesos's `Isolator` class.
//!
//! Methods are synchronous and are called on one Rust-owned thread per isolator (the
//! bridge serialises them), so implementations need no locking. Long-running work
//! (scans, watches) runs on threads the isolator owns and reports through
//! [`LimitationNotifier`] or cached statistics.

use std::fmt;
use std::path::PathBuf;

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
    /// orphans and to containers that no longer exist.
    fn recover(
        &mut self,
        containers: &[RecoveredContainer],
        orphans: &[ContainerId],
    ) -> Result<(), Error>;

    /// Validates the container's configuration and sets up what can exist before a pid.
    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error>;

    /// Places the container's init process (it has not exec'd yet).
    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error>;

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

    /// Container status fields.
    fn status(&mut self, _id: &ContainerId) -> Result<Status, Error> {
        Ok(Status::default())
    }

    /// Releases everything the container held.
    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error>;
}
