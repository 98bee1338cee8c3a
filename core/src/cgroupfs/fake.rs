//! Control files of fake hierarchies ([`super::Hierarchy::fake`]), named as the
//! kernel names them.

/// Files of every cgroup (v1 and v2).
pub const COMMON: &[&str] = &["cgroup.procs"];
/// A v1 `net_cls` cgroup.
pub const NET_CLS_V1: &[&str] = &["cgroup.procs", "tasks", "net_cls.classid"];
/// A v1 `blkio` cgroup (throttling and its statistics; the weight files depend
/// on the I/O scheduler, so a test lays out the one it means).
pub const BLKIO_V1: &[&str] = &[
    "cgroup.procs",
    "tasks",
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
    "blkio.throttle.io_service_bytes",
    "blkio.throttle.io_serviced",
];
/// A v2 cgroup with the `io` controller enabled by its parent.
pub const IO_V2: &[&str] = &[
    "cgroup.procs",
    "cgroup.controllers",
    "cgroup.subtree_control",
    "io.max",
    "io.stat",
];
