//! Attack: a task changes the project ids of its own sandbox and files (the kernel
//! lets the owner: `chattr -p`, `FS_IOC_FSSETXATTR`), removes PROJINHERIT, and
//! plants what it likes (symlinks out of the sandbox, a FIFO, a socket, hard links,
//! trees too deep or too large to walk), then the agent walks the sandbox to set,
//! repair or clear ids. And churn: hundreds of launches whose ids are reclaimed at
//! cleanup while their sandboxes stay.
//!
//! Expect: the task's steps succeed (they are what the kernel allows; the isolator
//! must cope), the walk sets every entry of the sandbox back and nothing outside
//! it, never follows a name, never blocks, stops at its bounds; the ids of
//! launches are never exhausted. Real XFS on a loop device (project ids live in the
//! inode; quotas themselves are exercised in the VM lane by `disk_quota`), the
//! task's steps as the unprivileged owner of the sandbox. Root only.

#[path = "support/xfs_lane.rs"]
mod xfs_lane;

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator, Resources};
use rein_isolators::disk::{
    DiskIsolator, DiskKernel, FsInfo, Limits, LinuxKernel, ProjectQuota, QuotaState, Settings,
    TreeReport,
};

use xfs_lane::{as_task, entries, projid, xattr_of, Xfs, PROJINHERIT};

/// The walk on another thread, failing the test if it does not return in time.
fn walk(path: &Path, id: u32, max: u64) -> TreeReport {
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(LinuxKernel.set_project_tree(&path, id, max));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the walk blocked")
        .expect("the walk failed")
}

#[test]
#[ignore = "needs root"]
fn attack_disk_task_changes_ids_and_plants_objects() {
    let Some(xfs) = Xfs::mount("attack_disk_task_changes_ids_and_plants_objects") else {
        return;
    };
    let sandbox = xfs.sandbox("victim");
    let neighbour = xfs.sandbox("neighbour");
    let agent = xfs.mnt.join("agent");
    fs::create_dir_all(&agent).unwrap();
    fs::write(agent.join("secret"), b"root only").unwrap();
    walk(&agent, 42, 1000);
    walk(&sandbox, 7000, 1000);
    walk(&neighbour, 7001, 1000);
    as_task(&neighbour, "echo mine > n")
        .0
        .then_some(())
        .unwrap();

    // The task's steps: all allowed to the owner by the kernel.
    let script = "set -e
        echo data > own
        mkdir -p sub/deeper
        echo x > sub/deeper/f
        ln own hard
        chattr -p 7001 own
        chattr -P sub
        chattr -p 0 sub
        chattr -p 0 sub/deeper/f
        ln -s ../../agent/secret link-out
        ln -s ../../agent link-dir
        ln -s / link-root
        mkfifo fifo
        chattr -p 99 .
        chattr -P .";
    let (ok, out) = as_task(&sandbox, script);
    assert!(ok, "the kernel refused a step to the owner: {out}");
    assert_eq!(
        projid(&sandbox.join("own")),
        7001,
        "owner set a neighbour's id"
    );
    assert_eq!(projid(&sandbox), 99, "owner set the sandbox's id");
    assert_eq!(xattr_of(&sandbox.join("sub")).xflags & PROJINHERIT, 0);
    let _socket = UnixListener::bind(sandbox.join("sock")).unwrap();

    let report = walk(&sandbox, 7000, 1000);
    eprintln!("repair walk: {report:?}");
    assert!(report.complete, "{report:?}");
    // Reset: the sandbox, own (one inode with hard), sub and sub/deeper/f; sub/deeper
    // was made while sub still had 7000 and PROJINHERIT, and kept both.
    assert_eq!(report.changed, 4, "{report:?}");
    for e in entries(&sandbox) {
        let x = xattr_of(&e);
        assert_eq!(x.projid, 7000, "{}", e.display());
        if e.is_dir() {
            assert_ne!(x.xflags & PROJINHERIT, 0, "{}", e.display());
        }
    }
    // Nothing outside the sandbox was touched through the planted names.
    assert_eq!(projid(&agent), 42);
    assert_eq!(projid(&agent.join("secret")), 42);
    assert_eq!(projid(&neighbour.join("n")), 7001);
    assert_eq!(projid(&xfs.mnt), 0);
    // Clearing leaves no entry of the sandbox with an id, and nothing else changed.
    let report = walk(&sandbox, 0, 1000);
    assert!(report.complete);
    for e in entries(&sandbox) {
        let x = xattr_of(&e);
        assert_eq!(
            (x.projid, x.xflags & PROJINHERIT),
            (0, 0),
            "{}",
            e.display()
        );
    }
    assert_eq!(projid(&agent.join("secret")), 42);
    assert_eq!(projid(&neighbour.join("n")), 7001);
}

#[test]
#[ignore = "needs root"]
fn attack_disk_directories_swapped_for_symlinks_during_walks() {
    let Some(xfs) = Xfs::mount("attack_disk_directories_swapped_for_symlinks_during_walks") else {
        return;
    };
    let sandbox = xfs.sandbox("swapper");
    let agent = xfs.mnt.join("agent");
    fs::create_dir_all(agent.join("inner")).unwrap();
    fs::write(agent.join("inner/secret"), b"root only").unwrap();
    walk(&agent, 42, 1000);
    // The task swaps a directory of its sandbox for a symlink to the agent's
    // directory and back, as fast as it can, while the agent walks.
    let mut swapper = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            "mkdir -p d/inner && : > d/inner/f && \
             while :; do mv d d2; ln -s ../../agent d; rm d; mv d2 d; done",
        ])
        .current_dir(&sandbox)
        .spawn()
        .expect("starting the task");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sandbox.join("d2").exists() && !sandbox.join("d").is_symlink() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never swapped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut walks = 0;
    for round in 0..300u32 {
        let id = 7000 + round % 2;
        walk(&sandbox, id, 10_000);
        walks += 1;
        for p in [&agent, &agent.join("inner"), &agent.join("inner/secret")] {
            assert_eq!(projid(p), 42, "walk {round} changed {}", p.display());
        }
    }
    swapper.kill().expect("stopping the task");
    let _ = swapper.wait();
    eprintln!("{walks} walks raced a directory/symlink swap; nothing outside was touched");
}

#[test]
#[ignore = "needs root"]
fn attack_disk_trees_too_deep_or_too_large_stop_the_walk_at_its_bounds() {
    let Some(xfs) =
        Xfs::mount("attack_disk_trees_too_deep_or_too_large_stop_the_walk_at_its_bounds")
    else {
        return;
    };
    let deep = xfs.sandbox("deep");
    let (ok, out) = as_task(
        &deep,
        "set -e; p=.; i=0; while [ $i -lt 400 ]; do p=$p/d; i=$((i+1)); done; mkdir -p $p; touch $p/bottom",
    );
    assert!(ok, "{out}");
    let report = walk(&deep, 7000, 1_000_000);
    eprintln!("400 levels: {report:?}");
    assert!(!report.complete, "{report:?}");
    assert!(report.entries > 256 && report.entries < 400, "{report:?}");

    let wide = xfs.sandbox("wide");
    let (ok, out) = as_task(
        &wide,
        "set -e; i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done",
    );
    assert!(ok, "{out}");
    let report = walk(&wide, 7001, 1000);
    eprintln!("3000 files, bound 1000: {report:?}");
    assert!(!report.complete);
    assert_eq!(report.entries, 1000);
    let report = walk(&wide, 7001, 10_000);
    assert!(report.complete);
    assert_eq!(report.entries, 3001);
}

/// Real project ids (set and read on XFS); the quota computed by reading every
/// entry's id on the filesystem, as the kernel's accounting would charge it
/// (independent of the walk under test).
struct IdsOnXfs {
    mnt: std::path::PathBuf,
}

impl DiskKernel for IdsOnXfs {
    fn filesystem(&self, path: &Path) -> io::Result<FsInfo> {
        Ok(FsInfo {
            quota: QuotaState {
                accounting: true,
                enforcing: true,
            },
            ..LinuxKernel.filesystem(path)?
        })
    }
    fn project_id(&self, path: &Path) -> io::Result<u32> {
        LinuxKernel.project_id(path)
    }
    fn set_project_tree(&self, path: &Path, id: u32, max: u64) -> io::Result<TreeReport> {
        LinuxKernel.set_project_tree(path, id, max)
    }
    fn set_limits(&self, _path: &Path, _id: u32, _limits: Limits) -> io::Result<()> {
        Ok(())
    }
    fn quota(&self, _path: &Path, id: u32) -> io::Result<ProjectQuota> {
        let inodes = entries(&self.mnt)
            .iter()
            .filter(|e| projid(e) == id)
            .count() as u64;
        Ok(ProjectQuota {
            used: inodes * 4096,
            inodes,
            limits: Limits::default(),
        })
    }
}

#[test]
#[ignore = "needs root"]
fn attack_disk_churn_reclaims_every_id_while_sandboxes_stay() {
    let Some(xfs) = Xfs::mount("attack_disk_churn_reclaims_every_id_while_sandboxes_stay") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let settings = Settings {
        project_ids: (7000, 7009),
        scan_interval: Duration::from_secs(3600),
        ..Settings::default()
    };
    let mut iso = DiskIsolator::new(
        settings,
        Arc::new(IdsOnXfs {
            mnt: xfs.mnt.clone(),
        }),
        StateStore::open(state.path(), "disk").unwrap(),
    );
    let cycles = 300u32;
    let mut live: VecDeque<(ContainerId, u32)> = VecDeque::new();
    for n in 0..cycles {
        let sandbox = xfs.sandbox(&format!("c{n}"));
        let spec = ContainerSpec {
            id: ContainerId::top(&format!("c{n}")).unwrap(),
            sandbox: sandbox.clone(),
            resources: Resources {
                disk_mb: Some(8.0),
                ..Resources::default()
            },
            ..ContainerSpec::default()
        };
        iso.prepare(&spec)
            .unwrap_or_else(|e| panic!("launch {n}: {e}; {:?}", iso.counters()));
        let own = projid(&sandbox);
        // The task writes, takes some files out of its project, and bills the
        // neighbour that runs beside it.
        let neighbour = live.back().map_or(0, |(_, p)| *p);
        let script = match n % 3 {
            0 => "set -e; echo x > out; mkdir d; echo y > d/f".to_owned(),
            1 => "set -e; echo x > out; mkdir d; echo y > d/f; chattr -p 0 out; chattr -P d"
                .to_owned(),
            _ => format!("set -e; echo x > out; mkdir d; echo y > d/f; chattr -p {neighbour} d/f"),
        };
        let (ok, out) = as_task(&sandbox, &script);
        assert!(ok, "task {n}: {out}");
        live.push_back((spec.id.clone(), own));
        if live.len() > 2 {
            let (done, _) = live.pop_front().unwrap();
            iso.cleanup(&done).unwrap();
        }
    }
    let c = iso.counters();
    eprintln!("after {cycles} launches on 10 ids: {c:?}");
    assert_eq!(c.pool_exhausted.load(Ordering::Relaxed), 0);
    assert_eq!(c.ids_held_for_gc.load(Ordering::Relaxed), 0);
    assert_eq!(
        c.ids_reclaimed_at_cleanup.load(Ordering::Relaxed),
        u64::from(cycles) - 2
    );
    // Every cleaned sandbox (all still there) carries no id any more.
    for n in 0..cycles - 2 {
        for e in entries(&xfs.mnt.join("sandboxes").join(format!("c{n}"))) {
            assert_eq!(projid(&e), 0, "{}", e.display());
        }
    }
    assert_eq!(iso.project_ids(), (8, 10));
}
