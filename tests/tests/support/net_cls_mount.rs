//! Locates the net_cls hierarchy for root tests, mounting it at
//! `/sys/fs/cgroup/net_cls` when the machine has none (net_cls is compiled in but
//! not mounted on the CI machines). The mount is left in place: other tests and
//! processes may use it; only the tests' own groups are removed. Test processes
//! running at once are safe: the look-up and mount are the isolator's own,
//! race-safe `find_or_mount_v1`.

use std::path::Path;

use rein_core::cgroupfs::Hierarchy;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const TARGET: &str = "/sys/fs/cgroup/net_cls";

/// The net_cls hierarchy, mounted if absent.
pub fn net_cls_hierarchy() -> Hierarchy {
    Hierarchy::find_or_mount_v1(Path::new(MOUNTINFO), "net_cls", Path::new(TARGET))
        .expect("finding or mounting net_cls")
}
