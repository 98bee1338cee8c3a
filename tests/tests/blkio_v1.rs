//! The blkio isolator against the real kernel on cgroup v1: loop devices, real
//! writers, measured rates. Root only; each measurement takes about 2 s.

mod blkio_common;

use rein_core::cgroupfs::Version;

const V: Version = Version::V1;

#[test]
#[ignore = "needs root"]
fn blkio_v1_write_bps_on_sandbox() {
    if let Some(h) = blkio_common::lane("blkio_v1_write_bps_on_sandbox", V) {
        blkio_common::write_bps_on_sandbox(h);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_read_bps_on_named_device() {
    if let Some(h) = blkio_common::lane("blkio_v1_read_bps_on_named_device", V) {
        blkio_common::read_bps_on_named_device(h);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_unlimited_is_far_above() {
    if let Some(h) = blkio_common::lane("blkio_v1_unlimited_is_far_above", V) {
        blkio_common::unlimited_is_far_above(h);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_cgroup_of_mesos_is_kept() {
    if let Some(h) = blkio_common::lane("blkio_v1_cgroup_of_mesos_is_kept", V) {
        blkio_common::cgroup_of_mesos_is_kept(h);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_recover_restores() {
    if let Some(h) = blkio_common::lane("blkio_v1_recover_restores", V) {
        blkio_common::recover_restores(h);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_refusals() {
    if let Some(h) = blkio_common::lane("blkio_v1_refusals", V) {
        blkio_common::refusals(h);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_write_iops() {
    if let Some(h) = blkio_common::lane("blkio_v1_write_iops", V) {
        blkio_common::iops(h, true);
    }
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_read_iops() {
    if let Some(h) = blkio_common::lane("blkio_v1_read_iops", V) {
        blkio_common::iops(h, false);
    }
}
