//! Locates the net_cls hierarchy for root tests, mounting it at
//! `/sys/fs/cgroup/net_cls` when the machine has none (net_cls is compiled in but
//! not mounted on the CI machines). The mount is left in place: other tests and
//! processes may use it; only the tests' own groups are removed.

use std::fs::{self, File};
use std::path::Path;

use rein_core::cgroupfs::Hierarchy;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const TARGET: &str = "/sys/fs/cgroup/net_cls";
/// Serialises the look-up-then-mount between test processes running at once.
const LOCK: &str = "/run/rein-net_cls-mount.lock";

/// The net_cls hierarchy, mounted if absent.
pub fn net_cls_hierarchy() -> Hierarchy {
    let lock = File::create(LOCK).expect("creating the net_cls mount lock");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the net_cls mount lock");
    if let Some(h) = Hierarchy::find_v1(Path::new(MOUNTINFO), "net_cls").expect("reading mountinfo")
    {
        return h;
    }
    fs::create_dir_all(TARGET).expect("creating the net_cls mount point");
    Hierarchy::mount_v1("net_cls", Path::new(TARGET)).expect("mounting net_cls")
}
