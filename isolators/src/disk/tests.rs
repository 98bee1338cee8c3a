//! Policy tests on a tempdir with a recording fake kernel.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::Duration;

use rein_core::Limitation;

use super::record::MB;
use super::*;

/// A fake kernel: one filesystem of a configurable kind, a project id per path
/// (sandboxes, their directories and files, as the kernel keeps one per inode),
/// file sizes, limits per project, usage charged from outside any sandbox, and a
/// log of every call but the read-only ones.
struct FakeKernel {
    state: Mutex<FakeState>,
}

struct FakeState {
    fs: FsInfo,
    /// Ordered by components, so a tree's paths follow its root.
    projects: std::collections::BTreeMap<PathBuf, u32>,
    sizes: HashMap<PathBuf, u64>,
    /// Bytes and inodes per project of the paths above.
    totals: HashMap<u32, (u64, u64)>,
    limits: HashMap<u32, Limits>,
    /// Usage charged to a project by files outside every sandbox.
    used: HashMap<u32, u64>,
    /// Symlinks and special files (path -> project id): one inode, no byte each,
    /// and the walk cannot reset them.
    special: HashMap<PathBuf, u32>,
    fail_set_project: bool,
    calls: Vec<String>,
}

impl FakeState {
    fn charged(&self, id: u32) -> (u64, u64) {
        let extra = self.used.get(&id).copied().unwrap_or(0);
        let (bytes, inodes) = self.totals.get(&id).copied().unwrap_or_default();
        let special = self.special.values().filter(|&&p| p == id).count() as u64;
        (bytes + extra, inodes + u64::from(extra > 0) + special)
    }

    /// Sets the id of one path, keeping the totals; returns the old id.
    fn set_id(&mut self, path: &Path, id: u32) -> Option<u32> {
        let size = self.sizes.get(path).copied().unwrap_or(0);
        let old = self.projects.insert(path.to_owned(), id);
        if let Some(old) = old {
            let t = self.totals.entry(old).or_default();
            t.0 -= size;
            t.1 -= 1;
        }
        let t = self.totals.entry(id).or_default();
        t.0 += size;
        t.1 += 1;
        old
    }
}

/// Project quotas accounted and enforced (XFS mounted with `prjquota`).
const ENFORCED: QuotaState = QuotaState {
    accounting: true,
    enforcing: true,
};
/// Project usage accounted, limits not enforced (`prjquota` accounting only).
const ACCOUNTED_ONLY: QuotaState = QuotaState {
    accounting: true,
    enforcing: false,
};

impl FakeKernel {
    fn new(kind: FsKind, quota: QuotaState) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FakeState {
                fs: FsInfo {
                    kind,
                    dev: 42,
                    quota,
                },
                projects: std::collections::BTreeMap::new(),
                sizes: HashMap::new(),
                totals: HashMap::new(),
                limits: HashMap::new(),
                used: HashMap::new(),
                special: HashMap::new(),
                fail_set_project: false,
                calls: Vec::new(),
            }),
        })
    }

    fn xfs() -> Arc<Self> {
        Self::new(FsKind::Xfs, ENFORCED)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.st().calls)
    }

    /// A file of `bytes` written by the task: it inherits its directory's id.
    fn put(&self, path: &Path, bytes: u64) {
        let mut st = self.st();
        let id = st
            .projects
            .get(path.parent().unwrap())
            .copied()
            .unwrap_or(0);
        if let Some(old) = st.projects.remove(path) {
            let size = st.sizes.get(path).copied().unwrap_or(0);
            let t = st.totals.entry(old).or_default();
            t.0 -= size;
            t.1 -= 1;
        }
        st.sizes.insert(path.to_owned(), bytes);
        st.set_id(path, id);
    }

    /// The task changes the id of one of its files (`chattr -p`).
    fn chattr(&self, path: &Path, id: u32) {
        self.st().set_id(path, id);
    }

    fn id_of(&self, path: &Path) -> u32 {
        self.st().projects.get(path).copied().unwrap_or(0)
    }
}

impl DiskKernel for FakeKernel {
    fn filesystem(&self, path: &Path) -> io::Result<FsInfo> {
        let mut st = self.st();
        st.calls.push(format!("filesystem {}", path.display()));
        Ok(st.fs)
    }

    fn project_id(&self, path: &Path) -> io::Result<u32> {
        let mut st = self.st();
        st.calls.push(format!("project_id {}", path.display()));
        Ok(st.projects.get(path).copied().unwrap_or(0))
    }

    fn set_project_tree(&self, path: &Path, id: u32, max_entries: u64) -> io::Result<TreeReport> {
        let mut st = self.st();
        st.calls
            .push(format!("set_project_tree {} {id}", path.display()));
        if st.fail_set_project {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        if !st.projects.contains_key(path) {
            st.set_id(path, 0);
        }
        let mut report = TreeReport {
            complete: true,
            ..TreeReport::default()
        };
        let below: Vec<PathBuf> = st
            .projects
            .range(path.to_owned()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        report.unopenable = st.special.keys().filter(|p| p.starts_with(path)).count() as u64;
        for p in below {
            if report.entries >= max_entries {
                report.complete = false;
                break;
            }
            report.entries += 1;
            report.bytes += st.sizes.get(&p).copied().unwrap_or(0);
            if st.set_id(&p, id) != Some(id) {
                report.changed += 1;
            }
        }
        Ok(report)
    }

    fn set_limits(&self, _path: &Path, id: u32, limits: Limits) -> io::Result<()> {
        let mut st = self.st();
        st.calls.push(format!(
            "set_limits {id} soft={} hard={}",
            limits.soft, limits.hard
        ));
        st.limits.insert(id, limits);
        Ok(())
    }

    fn quota(&self, _path: &Path, id: u32) -> io::Result<ProjectQuota> {
        let st = self.st();
        let (used, inodes) = st.charged(id);
        Ok(ProjectQuota {
            used,
            inodes,
            limits: st.limits.get(&id).copied().unwrap_or_default(),
        })
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    kernel: Arc<FakeKernel>,
    settings: Settings,
}

fn fixture(kernel: Arc<FakeKernel>) -> Fixture {
    Fixture {
        dir: tempfile::tempdir().unwrap(),
        kernel,
        settings: Settings {
            project_ids: (5000, 5009),
            // Long: tests drive the monitor with poll_now().
            scan_interval: Duration::from_secs(3600),
            scan_workers: 2,
            ..Settings::default()
        },
    }
}

impl Fixture {
    fn isolator(&self) -> DiskIsolator {
        let store = StateStore::open(&self.dir.path().join("state"), "disk").unwrap();
        DiskIsolator::new(
            self.settings.clone(),
            Arc::clone(&self.kernel) as Arc<dyn DiskKernel>,
            store,
        )
    }

    fn sandbox(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("sandboxes").join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn spec(&self, id: &[&str], disk_mb: Option<f64>, labels: &[(&str, &str)]) -> ContainerSpec {
        ContainerSpec {
            id: ContainerId::new(id.iter().copied()).unwrap(),
            sandbox: self.sandbox(&id.join("-")),
            resources: Resources {
                disk_mb,
                ..Resources::default()
            },
            task_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..ContainerSpec::default()
        }
    }
}

/// Resources asking for `mb` MB of disk.
fn disk_mb(mb: f64) -> Resources {
    Resources {
        disk_mb: Some(mb),
        ..Resources::default()
    }
}

fn watch(iso: &mut DiskIsolator, id: &ContainerId) -> mpsc::Receiver<Limitation> {
    let (notifier, rx) = LimitationNotifier::channel();
    iso.watch(id, notifier);
    rx
}

#[test]
fn xfs_enforce_lifecycle_and_reclaim_at_cleanup() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let spec = f.spec(&["c1"], Some(100.0), &[]);
    let launch = iso.prepare(&spec).unwrap();
    assert!(
        launch.drop_capabilities.is_empty(),
        "XFS stops root already"
    );
    assert_eq!(
        f.kernel.calls(),
        vec![
            format!("filesystem {}", spec.sandbox.display()),
            format!("set_project_tree {} 5000", spec.sandbox.display()),
            format!("set_limits 5000 soft={} hard={}", 100 * MB, 100 * MB),
        ]
    );
    assert_eq!(
        iso.backend(&spec.id),
        Some(Backend::Quota {
            project: 5000,
            enforcing: true,
            ext4: false
        })
    );

    f.kernel.put(&spec.sandbox.join("data"), 12_345_678);
    let stats = iso.usage(&spec.id).unwrap();
    assert_eq!(stats.disk_used_bytes, Some(12_345_678));
    assert_eq!(stats.disk_limit_bytes, Some(100 * MB));
    assert_eq!(iso.project_ids(), (9, 10));

    iso.cleanup(&spec.id).unwrap();
    assert_eq!(
        f.kernel.calls(),
        vec![
            "set_limits 5000 soft=0 hard=0".to_owned(),
            format!("set_project_tree {} 0", spec.sandbox.display()),
        ]
    );
    // The sandbox still exists (Mesos removes it later), but the id was cleared
    // from its files: it is back in the pool at once.
    assert_eq!(f.kernel.id_of(&spec.sandbox.join("data")), 0);
    assert_eq!(iso.project_ids(), (10, 10));
    assert_eq!(
        iso.counters()
            .ids_reclaimed_at_cleanup
            .load(Ordering::Relaxed),
        1
    );
    assert!(fs::read_dir(f.dir.path().join("state/disk"))
        .unwrap()
        .next()
        .is_none());
    let next = iso.prepare(&f.spec(&["c2"], Some(1.0), &[])).unwrap();
    assert_eq!(next, LaunchInfo::default());
    assert_eq!(
        iso.backend(&ContainerId::top("c2").unwrap())
            .map(|b| matches!(b, Backend::Quota { project: 5001, .. })),
        Some(true),
        "round robin: a reclaimed id is not reused at once"
    );
    // Cleanup of an unknown container and a second cleanup are harmless.
    iso.cleanup(&spec.id).unwrap();
    iso.cleanup(&ContainerId::top("never").unwrap()).unwrap();
}

#[test]
fn ext4_drops_cap_sys_resource_where_limits_apply() {
    let f = fixture(FakeKernel::new(FsKind::Ext4, ENFORCED));
    let mut iso = f.isolator();
    let launch = iso.prepare(&f.spec(&["e1"], Some(10.0), &[])).unwrap();
    assert_eq!(
        launch.drop_capabilities,
        vec!["CAP_SYS_RESOURCE".to_owned()]
    );
    let launch = iso
        .prepare(&f.spec(&["e2"], Some(10.0), &[("rein.disk.mode", "account")]))
        .unwrap();
    assert!(launch.drop_capabilities.is_empty(), "no limit to bypass");
    let calls = f.kernel.calls();
    assert!(
        calls.contains(&"set_limits 5001 soft=0 hard=0".to_owned()),
        "{calls:?}"
    );
}

#[test]
fn a_refused_drop_fails_prepare_before_any_side_effect() {
    let f = fixture(FakeKernel::new(FsKind::Ext4, ENFORCED));
    let mut iso = f.isolator();
    iso.check_drops = |drops| {
        Err(rein_core::launch_policy::Refusal::AgentSetsCapabilities(
            drops.join(", "),
        ))
    };
    let spec = f.spec(&["r1"], Some(10.0), &[]);
    let err = iso.prepare(&spec).unwrap_err().to_string();
    assert!(
        err.contains("linux/capabilities") && err.contains("CAP_SYS_RESOURCE"),
        "{err}"
    );
    let calls = f.kernel.calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("set_project_tree")),
        "no file got the project id: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("hard=10")),
        "no limit was set: {calls:?}"
    );
    // Nothing saved, nothing tracked: the same container can be prepared again
    // once the agent allows the drop.
    iso.check_drops = |_| Ok(());
    let launch = iso.prepare(&spec).unwrap();
    assert_eq!(
        launch.drop_capabilities,
        vec!["CAP_SYS_RESOURCE".to_owned()]
    );
}

#[test]
fn kill_mode_sets_headroom_and_fires_once_with_usage_and_limit() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let spec = f.spec(&["k1"], Some(10.0), &[("rein.disk.mode", "kill")]);
    iso.prepare(&spec).unwrap();
    let calls = f.kernel.calls();
    assert_eq!(
        calls.last().unwrap(),
        &format!("set_limits 5000 soft={} hard={}", 10 * MB, 20 * MB)
    );
    let rx = watch(&mut iso, &spec.id);
    f.kernel.put(&spec.sandbox.join("a"), 10 * MB);
    iso.poll_now();
    assert!(rx.try_recv().is_err(), "at the limit is not over it");
    f.kernel.put(&spec.sandbox.join("b"), 5 * MB);
    iso.poll_now();
    let limitation = rx.try_recv().expect("limitation fired");
    assert_eq!(limitation.reason, REASON_DISK);
    for part in ["15.0 MB", "10.0 MB"] {
        assert!(limitation.message.contains(part), "{}", limitation.message);
    }
    assert_eq!(limitation.resource, Some(("disk".to_owned(), 15.0)));
    iso.poll_now();
    assert!(rx.try_recv().is_err(), "fires once");
}

#[test]
fn enforce_mode_never_fires_where_the_filesystem_enforces() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let spec = f.spec(&["n1"], Some(1.0), &[]);
    iso.prepare(&spec).unwrap();
    let rx = watch(&mut iso, &spec.id);
    f.kernel.put(&spec.sandbox.join("big"), 50 * MB);
    iso.poll_now();
    assert!(rx.try_recv().is_err());
    iso.cleanup(&spec.id).unwrap();
    // The notifier was dropped: the watch stays pending, the channel is closed.
    assert_eq!(rx.recv(), Err(mpsc::RecvError));
}

#[test]
fn accounting_only_filesystem_enforces_by_killing() {
    let f = fixture(FakeKernel::new(FsKind::Xfs, ACCOUNTED_ONLY));
    let mut iso = f.isolator();
    let spec = f.spec(&["p1"], Some(1.0), &[]);
    iso.prepare(&spec).unwrap();
    let rx = watch(&mut iso, &spec.id);
    f.kernel.put(&spec.sandbox.join("big"), 2 * MB);
    iso.poll_now();
    assert_eq!(rx.try_recv().unwrap().reason, REASON_DISK);
}

#[test]
fn update_resizes_the_quota() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let spec = f.spec(&["u1"], Some(100.0), &[]);
    iso.prepare(&spec).unwrap();
    f.kernel.calls();
    iso.update(&spec.id, &disk_mb(250.0)).unwrap();
    assert_eq!(
        f.kernel.calls(),
        vec![format!(
            "set_limits 5000 soft={} hard={}",
            250 * MB,
            250 * MB
        )]
    );
    assert_eq!(
        iso.usage(&spec.id).unwrap().disk_limit_bytes,
        Some(250 * MB)
    );
    // Unknown containers are ignored.
    iso.update(&ContainerId::top("zz").unwrap(), &Resources::default())
        .unwrap();
}

#[test]
fn an_update_to_the_same_size_sets_nothing_and_writes_no_record() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let spec = f.spec(&["u2"], Some(100.0), &[]);
    iso.prepare(&spec).unwrap();
    f.kernel.calls();
    let record = f
        .dir
        .path()
        .join("state/disk")
        .join(format!("{}.json", spec.id.file_name()));
    // Removed, so that a rewrite shows whatever the file system's clock.
    std::fs::remove_file(&record).unwrap();
    iso.update(&spec.id, &disk_mb(100.0)).unwrap();
    assert_eq!(f.kernel.calls(), Vec::<String>::new(), "no quota set again");
    assert!(!record.exists(), "no record written again");
    iso.update(&spec.id, &disk_mb(200.0)).unwrap();
    assert_eq!(f.kernel.calls().len(), 1, "a new size is set");
    assert!(record.exists(), "and recorded");
}

#[test]
fn labels_within_what_the_operator_allows() {
    let mut f = fixture(FakeKernel::xfs());
    f.settings.allowed_modes = vec![Mode::Enforce, Mode::Kill];
    let mut iso = f.isolator();
    let err = iso
        .prepare(&f.spec(&["l1"], Some(1.0), &[("rein.disk.mode", "account")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("task label 'rein.disk.mode' = 'account': not allowed"),
        "{err}"
    );
    let err = iso
        .prepare(&f.spec(&["l2"], Some(1.0), &[("rein.disk.mode", "off")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("allow_opt_out=false"), "{err}");
    let err = iso
        .prepare(&f.spec(&["l3"], Some(1.0), &[("rein.disk.mode", "loud")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected one of"), "{err}");
    assert!(err.ends_with("(disk isolator)"), "{err}");
    assert_eq!(iso.project_ids(), (10, 10), "failed prepares hold no id");
    // Another module's malformed value is that module's error, not the disk's.
    iso.prepare(&f.spec(
        &["l0"],
        Some(1.0),
        &[
            ("rein.blkio.write_bps", "fast"),
            ("rein.net.egress.rate", "x"),
        ],
    ))
    .unwrap();
    iso.cleanup(&ContainerId::top("l0").unwrap()).unwrap();

    f.settings.allow_opt_out = true;
    let mut iso = f.isolator();
    let spec = f.spec(&["l4"], Some(1.0), &[("rein.disk.mode", "off")]);
    iso.prepare(&spec).unwrap();
    assert_eq!(iso.backend(&spec.id), None);
    assert_eq!(iso.usage(&spec.id).unwrap(), Statistics::default());
    // The variable channel works too (tasks of a task group).
    let mut spec = f.spec(&["l5"], Some(1.0), &[]);
    spec.environment = vec![("REIN_DISK_MODE".into(), "kill".into())];
    iso.prepare(&spec).unwrap();
    assert!(f
        .kernel
        .calls()
        .iter()
        .any(|c| c.contains(&format!("hard={}", 11 * MB))));
}

#[test]
fn nested_containers_are_accounted_in_the_parent() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    iso.prepare(&f.spec(&["top"], Some(5.0), &[])).unwrap();
    f.kernel.calls();
    let child = f.spec(&["top", "child"], Some(5.0), &[("rein.disk.mode", "kill")]);
    assert_eq!(iso.prepare(&child).unwrap(), LaunchInfo::default());
    assert!(f.kernel.calls().is_empty());
    assert_eq!(iso.usage(&child.id).unwrap(), Statistics::default());
    iso.cleanup(&child.id).unwrap();
    assert!(f.kernel.calls().is_empty());
}

/// Mesos leaves a symlink in every task group's sandbox (`tasks/<task id>`); it
/// inherits the project id and no walk can reset it (a symlink cannot be opened).
/// It charges one inode and no byte: the id is reclaimed at cleanup all the same,
/// while a byte charged anywhere else still holds it.
#[test]
fn symlinks_left_in_the_sandbox_do_not_hold_the_id() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let group = f.spec(&["group"], Some(10.0), &[]);
    let other = f.spec(&["other"], Some(10.0), &[]);
    iso.prepare(&group).unwrap();
    iso.prepare(&other).unwrap();
    {
        let mut st = f.kernel.st();
        st.special.insert(group.sandbox.join("tasks/t1"), 5000);
        st.special.insert(other.sandbox.join("tasks/t2"), 5001);
        // Bytes of `other`'s project outside its sandbox: those still hold it.
        st.used.insert(5001, 4096);
    }
    iso.cleanup(&group.id).unwrap();
    iso.cleanup(&other.id).unwrap();
    let counters = iso.counters();
    assert_eq!(counters.ids_reclaimed_at_cleanup.load(Ordering::Relaxed), 1);
    assert_eq!(counters.ids_held_for_gc.load(Ordering::Relaxed), 1);
    assert_eq!(iso.project_ids(), (9, 10), "5000 back, 5001 held");
}

#[test]
fn failed_setup_keeps_the_id_until_the_sandbox_is_gone() {
    let f = fixture(FakeKernel::xfs());
    f.kernel.st().fail_set_project = true;
    let mut iso = f.isolator();
    let spec = f.spec(&["f1"], Some(5.0), &[]);
    let err = iso.prepare(&spec).unwrap_err().to_string();
    assert!(err.contains("setting project id 5000 on sandbox"), "{err}");
    assert_eq!(iso.project_ids(), (9, 10));
    fs::remove_dir_all(&spec.sandbox).unwrap();
    assert_eq!(iso.project_ids(), (10, 10));
}

#[test]
fn recovery_keeps_every_project_id() {
    let f = fixture(FakeKernel::xfs());
    let (a, b, c) = {
        let mut iso = f.isolator();
        let a = f.spec(&["a"], Some(10.0), &[("rein.disk.mode", "kill")]);
        let b = f.spec(&["b"], Some(10.0), &[]);
        let c = f.spec(&["c"], Some(10.0), &[]);
        for s in [&a, &b, &c] {
            iso.prepare(s).unwrap();
        }
        // Files outside the sandbox still carry b's id: it is held until b's
        // sandbox is removed.
        f.kernel.st().used.insert(5001, 4096);
        iso.cleanup(&b.id).unwrap();
        assert_eq!(iso.counters().ids_held_for_gc.load(Ordering::Relaxed), 1);
        (a, b, c)
    };
    // The agent restarts; `a` lives, `b` awaits garbage collection, `c` vanished
    // without a cleanup (its sandbox is gone).
    fs::remove_dir_all(&c.sandbox).unwrap();
    f.kernel.calls();
    let mut iso = f.isolator();
    let alive = [RecoveredContainer {
        id: a.id.clone(),
        pid: Some(1),
        sandbox: Some(a.sandbox.clone()),
    }];
    iso.recover(&alive, &[]).unwrap();
    let calls = f.kernel.calls();
    assert!(
        calls.contains(&format!("project_id {}", a.sandbox.display())),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!(
            "set_limits 5000 soft={} hard={}",
            10 * MB,
            20 * MB
        )),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"set_limits 5002 soft=0 hard=0".to_owned()),
        "{calls:?}"
    );
    // 5000 (a) and 5001 (b, sandbox still there) held; 5002 (c) reclaimed.
    assert_eq!(iso.project_ids(), (8, 10));
    let d = f.spec(&["d"], Some(1.0), &[]);
    iso.prepare(&d).unwrap();
    let Some(Backend::Quota { project, .. }) = iso.backend(&d.id) else {
        panic!("no quota backend");
    };
    assert!(project != 5000 && project != 5001, "reused {project}");
    // Kill mode still works for the recovered container.
    let rx = watch(&mut iso, &a.id);
    f.kernel.put(&a.sandbox.join("big"), 11 * MB);
    iso.poll_now();
    assert!(rx.try_recv().is_ok());
    fs::remove_dir_all(&b.sandbox).unwrap();
    assert_eq!(iso.project_ids(), (8, 10), "5001 back; 5000 and d's held");
}

#[test]
fn recovery_gives_a_sandbox_without_state_a_fresh_id() {
    let f = fixture(FakeKernel::xfs());
    let sandbox = f.sandbox("lost");
    f.kernel.st().set_id(&sandbox, 5003);
    f.kernel.put(&sandbox.join("data"), MB);
    f.kernel.st().limits.insert(
        5003,
        Limits {
            soft: 0,
            hard: 7 * MB,
        },
    );
    let mut iso = f.isolator();
    let id = ContainerId::top("lost").unwrap();
    iso.recover(
        &[RecoveredContainer {
            id: id.clone(),
            pid: None,
            sandbox: Some(sandbox.clone()),
        }],
        &[],
    )
    .unwrap();
    // The id the sandbox carries is the task's to choose: never adopted.
    assert_eq!(
        iso.backend(&id),
        Some(Backend::Quota {
            project: 5000,
            enforcing: true,
            ext4: false
        })
    );
    assert_eq!(f.kernel.id_of(&sandbox), 5000);
    assert_eq!(f.kernel.id_of(&sandbox.join("data")), 5000);
    assert_eq!(iso.usage(&id).unwrap().disk_used_bytes, Some(MB));
    assert_eq!(iso.usage(&id).unwrap().disk_limit_bytes, None);
    assert_eq!(iso.project_ids(), (9, 10));
    for _ in 0..9 {
        let name = format!("x{}", iso.project_ids().0);
        iso.prepare(&f.spec(&[&name], None, &[])).unwrap();
    }
    let err = iso
        .prepare(&f.spec(&["full"], None, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no free disk project id")
            && err.contains("project_ids=[5000-5009]")
            && err.contains("widen the module parameter project_ids"),
        "{err}"
    );
    let c = iso.counters();
    assert_eq!(c.pool_exhausted.load(Ordering::Relaxed), 1);
    assert!(
        c.pool_low.load(Ordering::Relaxed) >= 1,
        "warned before exhaustion"
    );
}

#[test]
fn scan_backend_on_other_filesystems() {
    let f = fixture(FakeKernel::new(
        FsKind::Other(0x0102_1994),
        QuotaState::default(),
    ));
    let mut iso = f.isolator();
    let spec = f.spec(&["s1"], Some(1.0), &[]);
    let launch = iso.prepare(&spec).unwrap();
    assert_eq!(launch, LaunchInfo::default());
    assert_eq!(iso.backend(&spec.id), Some(Backend::Scan));
    assert_eq!(iso.project_ids(), (10, 10), "no project id for a scan");
    let rx = watch(&mut iso, &spec.id);
    fs::write(spec.sandbox.join("data"), vec![7u8; 512 * 1024]).unwrap();
    assert_eq!(
        iso.usage(&spec.id).unwrap().disk_used_bytes,
        None,
        "not scanned yet"
    );
    iso.poll_now();
    let used = iso.usage(&spec.id).unwrap().disk_used_bytes.unwrap();
    assert!(used >= 512 * 1024, "{used}");
    assert!(rx.try_recv().is_err());
    // Enforce on a filesystem that cannot stop writes: killed at the quota.
    fs::write(spec.sandbox.join("more"), vec![7u8; 1024 * 1024]).unwrap();
    iso.poll_now();
    let limitation = rx.try_recv().unwrap();
    assert!(
        limitation.message.contains("quota of 1.0 MB"),
        "{}",
        limitation.message
    );
    iso.cleanup(&spec.id).unwrap();
    assert!(fs::read_dir(f.dir.path().join("state/disk"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn monitor_thread_scans_on_its_own() {
    let mut f = fixture(FakeKernel::new(FsKind::Other(1), QuotaState::default()));
    f.settings.scan_interval = Duration::from_millis(100);
    let mut iso = f.isolator();
    let spec = f.spec(&["t1"], None, &[("rein.disk.mode", "account")]);
    fs::write(spec.sandbox.join("data"), vec![1u8; 8192]).unwrap();
    iso.prepare(&spec).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while iso.usage(&spec.id).unwrap().disk_used_bytes.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "monitor never scanned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(iso); // Joins the monitor thread.
}

#[test]
fn parameters() {
    let common = CommonParams {
        state_dir: "/tmp".into(),
        cgroups_hierarchy: "/sys/fs/cgroup".into(),
        cgroups_root: "mesos".into(),
        mountinfo: "/proc/self/mountinfo".into(),
        allow_debug_panic: false,
        spare_cgroups: 0,
    };
    let parse = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        let known: Vec<&str> = COMMON_PARAMS.iter().chain(PARAMS).copied().collect();
        Settings::from_params(&Params::new(&pairs, &known).unwrap(), &common)
    };
    let s = parse(&[
        ("project_ids", "[100-200]"),
        ("default_mode", "kill"),
        ("headroom", "64MiB"),
        ("scan_interval", "5s"),
        ("scan_workers", "4"),
        ("backend", "scan"),
        ("allow_opt_out", "true"),
        ("project_walk_max_entries", "5000"),
        ("project_audit_interval", "5m"),
    ])
    .unwrap();
    assert_eq!(s.walk_max_entries, 5000);
    assert_eq!(s.audit_interval, Duration::from_secs(300));
    let d = parse(&[]).unwrap();
    assert_eq!(d.project_ids, DEFAULT_PROJECT_IDS);
    assert_eq!(d.audit_interval, Duration::from_secs(60));
    assert_eq!(s.project_ids, (100, 200));
    assert_eq!(s.default_mode, Mode::Kill);
    assert_eq!(s.headroom, 64 * MB);
    assert!(s.force_scan && s.allow_opt_out);
    for (bad, needle) in [
        (("project_ids", "[0-0]"), "project_ids"),
        (("project_ids", "[1-99999999999]"), "32-bit"),
        (("default_mode", "loud"), "default_mode"),
        (("allowed_modes", "enforce,off"), "allow_opt_out"),
        (("backend", "du"), "auto or scan"),
        (("scan_workers", "0"), "between 1 and 64"),
        (("scan_interval", "1ms"), "100ms"),
        (("project_walk_max_entries", "10"), "at least 1000"),
        (("project_audit_interval", "10ms"), "at least 1s"),
    ] {
        let err = parse(&[bad]).unwrap_err().to_string();
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
    let err = parse(&[("allowed_modes", "kill"), ("default_mode", "enforce")]).unwrap_err();
    assert!(err.to_string().contains("not among allowed_modes"), "{err}");
}

#[test]
fn long_passes_stretch_the_pause() {
    let i = Duration::from_secs(15);
    assert_eq!(next_pause(i, Duration::from_millis(200)), i);
    assert_eq!(
        next_pause(i, Duration::from_secs(3)),
        Duration::from_secs(27)
    );
}

/// What a running container is, for recover().
fn alive(spec: &ContainerSpec) -> RecoveredContainer {
    RecoveredContainer {
        id: spec.id.clone(),
        pid: Some(1),
        sandbox: Some(spec.sandbox.clone()),
    }
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn recover_uses_the_recorded_id_whatever_the_task_set() {
    let f = fixture(FakeKernel::xfs());
    let (a, b, c) = {
        let mut iso = f.isolator();
        let specs = [
            f.spec(&["a"], Some(10.0), &[]),
            f.spec(&["b"], Some(10.0), &[("rein.disk.mode", "kill")]),
            f.spec(&["c"], Some(10.0), &[]),
        ];
        for s in &specs {
            iso.prepare(s).unwrap();
        }
        let [a, b, c] = specs;
        (a, b, c)
    };
    // While the agent is down, a's task sets its sandbox and a file to b's id
    // (the neighbour's), and c's task sets its sandbox to 0 and to an id outside
    // the range.
    f.kernel.put(&a.sandbox.join("data"), 3 * MB);
    f.kernel.chattr(&a.sandbox, 5001);
    f.kernel.chattr(&a.sandbox.join("data"), 5001);
    f.kernel.chattr(&c.sandbox, 0);
    f.kernel.put(&c.sandbox.join("x"), MB);
    f.kernel.chattr(&c.sandbox.join("x"), 99_999);
    let mut iso = f.isolator();
    iso.recover(&[alive(&a), alive(&b), alive(&c)], &[])
        .expect("recovery never fails because of what a task set");
    for (spec, project) in [(&a, 5000), (&b, 5001), (&c, 5002)] {
        assert_eq!(
            iso.backend(&spec.id)
                .map(|b| matches!(b, Backend::Quota { project: p, .. } if p == project)),
            Some(true),
            "{}",
            spec.id
        );
        assert_eq!(f.kernel.id_of(&spec.sandbox), project, "set back");
    }
    assert_eq!(f.kernel.id_of(&a.sandbox.join("data")), 5000);
    assert_eq!(f.kernel.id_of(&c.sandbox.join("x")), 5002);
    let counters = iso.counters();
    assert_eq!(count(&counters.recover_mismatches), 2);
    assert_eq!(count(&counters.entries_repaired), 4);
    assert_eq!(count(&counters.recover_failures), 0);
    // b is charged nothing of a's: its kill mode does not fire.
    let rx = watch(&mut iso, &b.id);
    iso.poll_now();
    assert!(rx.try_recv().is_err());
    assert_eq!(iso.usage(&a.id).unwrap().disk_used_bytes, Some(3 * MB));
    assert_eq!(iso.project_ids(), (7, 10));
}

#[test]
fn recover_survives_a_damaged_state_with_one_id_twice() {
    let f = fixture(FakeKernel::xfs());
    let a = f.spec(&["a"], Some(1.0), &[]);
    let b = f.spec(&["b"], Some(1.0), &[]);
    {
        let mut iso = f.isolator();
        iso.prepare(&a).unwrap();
        iso.prepare(&b).unwrap();
    }
    // b's record claims a's id.
    let store = StateStore::open(&f.dir.path().join("state"), "disk").unwrap();
    let mut record: Record = store.load(&b.id).unwrap().unwrap();
    record.backend = Backend::Quota {
        project: 5000,
        enforcing: true,
        ext4: false,
    };
    store.save(&b.id, &record).unwrap();
    let mut iso = f.isolator();
    iso.recover(&[alive(&a), alive(&b)], &[]).unwrap();
    let projects: Vec<u32> = [&a, &b]
        .iter()
        .map(|s| match iso.backend(&s.id) {
            Some(Backend::Quota { project, .. }) => project,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_ne!(projects[0], projects[1], "{projects:?}");
    assert_eq!(f.kernel.id_of(&b.sandbox), projects[1]);
    assert_eq!(count(&iso.counters().recover_failures), 1);
}

#[test]
fn files_moved_into_a_neighbours_project_never_get_it_killed() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let victim = f.spec(&["victim"], Some(10.0), &[("rein.disk.mode", "kill")]);
    let attacker = f.spec(&["attacker"], Some(100.0), &[]);
    iso.prepare(&victim).unwrap();
    iso.prepare(&attacker).unwrap();
    let rx = watch(&mut iso, &victim.id);
    f.kernel.put(&victim.sandbox.join("own"), 2 * MB);
    // The attacker writes 50 MB and moves it into the victim's project.
    let planted = attacker.sandbox.join("bill-the-neighbour");
    f.kernel.put(&planted, 50 * MB);
    f.kernel.chattr(&planted, 5000);
    assert_eq!(
        iso.usage(&victim.id).unwrap().disk_used_bytes,
        Some(52 * MB)
    );
    iso.poll_now();
    assert!(
        rx.try_recv().is_err(),
        "the victim was killed for the attacker's files"
    );
    assert_eq!(count(&iso.counters().kills_withheld), 1);
    // The next pass audits every sandbox: the file is charged to its owner again.
    iso.poll_now();
    assert!(rx.try_recv().is_err());
    assert_eq!(f.kernel.id_of(&planted), 5001);
    assert_eq!(iso.usage(&victim.id).unwrap().disk_used_bytes, Some(2 * MB));
    assert_eq!(
        iso.usage(&attacker.id).unwrap().disk_used_bytes,
        Some(50 * MB)
    );
    assert!(count(&iso.counters().entries_repaired) >= 1);
    // The victim's own files still get it killed when they pass its quota.
    f.kernel.put(&victim.sandbox.join("more"), 9 * MB);
    iso.poll_now();
    let limitation = rx.try_recv().expect("killed for its own files");
    assert!(
        limitation.message.contains("11.0 MB"),
        "{}",
        limitation.message
    );
}

#[test]
fn files_moved_out_of_the_project_are_charged_again_by_the_audit() {
    let f = fixture(FakeKernel::xfs());
    let mut iso = f.isolator();
    let s = f.spec(&["escape"], Some(10.0), &[("rein.disk.mode", "kill")]);
    iso.prepare(&s).unwrap();
    let rx = watch(&mut iso, &s.id);
    let sub = s.sandbox.join("sub");
    f.kernel.put(&sub, 0);
    // The task takes its files out of the project (id 0 and an unused one).
    f.kernel.chattr(&sub, 0);
    f.kernel.put(&sub.join("hidden"), 30 * MB);
    f.kernel.put(&s.sandbox.join("elsewhere"), 30 * MB);
    f.kernel.chattr(&s.sandbox.join("elsewhere"), 77);
    assert_eq!(f.kernel.id_of(&sub.join("hidden")), 0);
    iso.poll_now();
    assert!(rx.try_recv().is_err(), "not charged yet");
    iso.audit_now();
    assert_eq!(count(&iso.counters().entries_repaired), 3);
    assert_eq!(f.kernel.id_of(&sub.join("hidden")), 5000);
    iso.poll_now();
    assert_eq!(
        rx.try_recv().expect("over once charged").reason,
        REASON_DISK
    );
}

#[test]
fn churn_of_350k_launches_never_exhausts_the_ids() {
    // A week of 50,000 launches a day, sandboxes never garbage-collected, on a
    // range of only 100 ids: each cleanup clears and reclaims its id.
    let mut f = fixture(FakeKernel::xfs());
    // The state directory sees 700,000 writes: keep it in memory where possible.
    if let Ok(dir) = tempfile::tempdir_in("/dev/shm") {
        f.dir = dir;
    }
    f.settings.project_ids = (5000, 5099);
    let mut iso = f.isolator();
    let sandboxes = f.dir.path().join("sandboxes");
    let mut live: std::collections::VecDeque<ContainerId> = std::collections::VecDeque::new();
    let cycles = 350_000u32;
    for n in 0..cycles {
        let id = ContainerId::top(&format!("c{n}")).unwrap();
        let sandbox = sandboxes.join(format!("c{n}"));
        let spec = ContainerSpec {
            id: id.clone(),
            sandbox: sandbox.clone(),
            resources: disk_mb(1.0),
            ..ContainerSpec::default()
        };
        iso.prepare(&spec)
            .unwrap_or_else(|e| panic!("launch {n}: {e}; counters {:?}", iso.counters()));
        if n % 7 == 0 {
            f.kernel.put(&sandbox.join("out"), 4096);
        }
        live.push_back(id);
        // About 50 containers run at once.
        if live.len() > 50 {
            let done = live.pop_front().unwrap();
            iso.cleanup(&done).unwrap();
        }
    }
    let counters = iso.counters();
    eprintln!("after {cycles} launches: {counters:?}");
    assert_eq!(count(&counters.pool_exhausted), 0);
    assert_eq!(count(&counters.ids_held_for_gc), 0);
    assert_eq!(
        count(&counters.ids_reclaimed_at_cleanup),
        u64::from(cycles) - 50
    );
    let (free, total) = iso.project_ids();
    assert_eq!((free, total), (50, 100));
}

#[test]
fn the_default_range_outlasts_a_week_of_launches_even_without_reclaim() {
    // Should every id be held until garbage collection (files elsewhere still
    // charged), a week at 50,000 launches a day still fits the default range.
    let (first, last) = DEFAULT_PROJECT_IDS;
    let mut allocator = ProjectAllocator::new(first, last);
    for n in 0..350_000 {
        allocator
            .allocate()
            .unwrap_or_else(|e| panic!("launch {n}: {e}"));
    }
    assert!(
        allocator.free() * 100 >= allocator.total() * 60,
        "{}",
        allocator.free()
    );
}

#[test]
fn an_unreadable_record_is_its_containers_trouble_only() {
    let f = fixture(FakeKernel::xfs());
    let specs: Vec<ContainerSpec> = ["a", "b", "c"]
        .iter()
        .map(|n| f.spec(&[n], Some(10.0), &[]))
        .collect();
    {
        let mut iso = f.isolator();
        for s in &specs {
            iso.prepare(s).unwrap();
        }
    }
    // b's record is torn (b lives on), c's is garbage (c vanished).
    let state = f.dir.path().join("state/disk");
    fs::write(state.join("b.json"), b"{\"boot_id\":\"").unwrap();
    fs::write(state.join("c.json"), b"\0").unwrap();
    let mut iso = f.isolator();
    iso.recover(&[alive(&specs[0]), alive(&specs[1])], &[])
        .unwrap();
    let failures = iso.counters().recover_failures.load(Ordering::Relaxed);
    assert_eq!(failures, 2);
    assert!(matches!(
        iso.backend(&specs[0].id),
        Some(Backend::Quota { project: 5000, .. })
    ));
    // b is adopted as a container without state: its sandbox gets an id again,
    // saved over the torn record.
    let Some(Backend::Quota { project, .. }) = iso.backend(&specs[1].id) else {
        panic!("b not adopted");
    };
    assert_eq!(f.kernel.id_of(&specs[1].sandbox), project);
    assert!(StateStore::open(&f.dir.path().join("state"), "disk")
        .unwrap()
        .load::<Record>(&specs[1].id)
        .unwrap()
        .is_some());
    assert!(!state.join("c.json").exists());
}
