//! A mount namespace of the test's own in which no net_cls hierarchy is mounted,
//! as on a fresh machine, to race mounts of it without touching the host's mounts.
//! Threads and processes started from inside share that namespace.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::thread;

use rein_core::cgroupfs::{cgroup_mounts, Version};

/// The calling thread's mount table (`/proc/self` would show the main thread's).
pub const THREAD_MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Runs `f` on a thread with its own mount namespace (private propagation), where
/// every net_cls mount is detached; the host's mounts are untouched, and mounts
/// made inside vanish with the namespace.
pub fn without_net_cls_mounted<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            // CLONE_NEWNS unshares this thread's file-system context only.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("making our mounts private");
            for m in net_cls_mounts() {
                nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
                    .unwrap_or_else(|e| panic!("unmounting {} in our namespace: {e}", m.display()));
            }
            assert!(net_cls_mounts().is_empty());
            f()
        })
        .join()
        .expect("mount namespace thread panicked")
    })
}

/// Where net_cls is mounted, as the calling thread sees it.
pub fn net_cls_mounts() -> Vec<PathBuf> {
    cgroup_mounts(Path::new(THREAD_MOUNTINFO))
        .unwrap()
        .into_iter()
        .filter(|m| m.version == Version::V1 && m.controllers.iter().any(|c| c == "net_cls"))
        .map(|m| m.mount_point)
        .collect()
}

/// Unmounts everything stacked at `target`.
pub fn unmount_all(target: &Path) {
    while nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}
