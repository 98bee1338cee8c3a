//! The net_cls isolator against the real kernel: a mounted net_cls hierarchy, real
//! processes, real `net_cls.classid` files. Root only.

#[path = "support/net_cls_mount.rs"]
mod net_cls_mount;

use std::fs;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use rein_core::cgroupfs::spares::{DEFAULT_STOCK, SPARE_PREFIX};
use rein_core::cgroupfs::{Cgroup, Hierarchy};
use rein_core::params::CommonParams;
use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator};
use rein_isolators::net_cls::{Handle, HandleAllocator, NetClsIsolator};
use rein_tests::Sleeper;

/// The tests share the hierarchy and count this process's fds: run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The test's own cgroups root and state directory, removed on drop.
struct Fixture {
    hierarchy: Hierarchy,
    root_name: String,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let hierarchy = net_cls_mount::net_cls_hierarchy();
        let root_name = format!("rein-test-{}-{tag}", std::process::id());
        let fixture = Self {
            hierarchy,
            root_name,
            state: tempfile::tempdir().unwrap(),
        };
        // A leftover of an earlier crashed run under the same pid would confuse the checks.
        fixture.root().remove().unwrap();
        fixture
    }

    fn root(&self) -> Cgroup {
        self.hierarchy.cgroup(&self.root_name)
    }

    fn common(&self) -> CommonParams {
        CommonParams {
            state_dir: self.state.path().to_owned(),
            cgroups_hierarchy: "/sys/fs/cgroup".into(),
            cgroups_root: PathBuf::from(&self.root_name),
            mountinfo: "/proc/self/mountinfo".into(),
            allow_debug_panic: false,
            spare_cgroups: rein_core::cgroupfs::spares::DEFAULT_STOCK,
        }
    }

    fn isolator(&self, first: u16, last: u16) -> NetClsIsolator {
        let common = self.common();
        NetClsIsolator::new(
            self.hierarchy.clone(),
            &common,
            HandleAllocator::new(1, first, last),
            StateStore::open(&common.state_dir, "net_cls").unwrap(),
        )
    }

    fn child_groups(&self) -> Vec<String> {
        match fs::read_dir(self.root().path()) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn state_files(&self) -> usize {
        fs::read_dir(self.state.path().join("net_cls"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(e) = self.root().remove() {
            eprintln!("cleanup of {}: {e}", self.root().path().display());
        }
    }
}

fn spec(id: &str) -> ContainerSpec {
    ContainerSpec {
        id: ContainerId::top(id).unwrap(),
        ..ContainerSpec::default()
    }
}

/// The path of `pid`'s cgroup in the net_cls hierarchy, from `/proc/<pid>/cgroup`.
fn net_cls_path_of(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "net_cls")
                .then(|| path.to_owned())
        })
        .unwrap_or_else(|| panic!("no net_cls line in /proc/{pid}/cgroup:\n{text}"))
}

/// Checks that the prepared container "c1"'s cgroup holds `handle`'s classid, then
/// isolates a real process and checks the kernel placed it there.
fn isolate_c1(f: &Fixture, iso: &mut NetClsIsolator, handle: Handle) -> (Cgroup, Sleeper) {
    let group = f.root().child("c1");
    assert_eq!(
        group.read("net_cls.classid").unwrap().trim(),
        handle.classid().to_string()
    );
    let sleeper = Sleeper::spawn();
    iso.isolate(&spec("c1").id, sleeper.pid()).unwrap();
    assert_eq!(
        net_cls_path_of(sleeper.pid()),
        format!("/{}/c1", f.root_name)
    );
    (group, sleeper)
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
#[ignore = "needs root"]
fn net_cls_root_lifecycle_with_a_real_process() {
    if !rein_tests::require_root("net_cls_root_lifecycle_with_a_real_process") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new("life");
    // Through the module parameters, as the agent creates it, on the real mount table.
    let params: Vec<(String, String)> = [
        ("net_cls_primary_handle", "0x1"),
        ("net_cls_secondary_handles", "0x10,0x1f"),
        ("cgroups_root", f.root_name.as_str()),
        ("state_dir", f.state.path().to_str().unwrap()),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    let mut iso = NetClsIsolator::from_params(&params).unwrap();
    assert_eq!(iso.hierarchy().mount_point(), f.hierarchy.mount_point());

    let c = spec("c1");
    iso.prepare(&c).unwrap();
    let handle = iso.handle(&c.id).unwrap();
    assert_eq!(
        handle,
        Handle {
            primary: 1,
            secondary: 0x10
        }
    );
    let (group, sleeper) = isolate_c1(&f, &mut iso, handle);
    assert_eq!(group.procs().unwrap(), vec![sleeper.pid()]);
    assert_eq!(iso.status(&c.id).unwrap().net_cls_classid, Some(0x10010));

    // Mesos cleans up once the container's processes are gone.
    sleeper.stop();
    iso.cleanup(&c.id).unwrap();
    assert!(!group.exists(), "cleanup must remove the cgroup");
    assert_eq!(iso.free_handles(), 16);
    assert_eq!(f.state_files(), 0);
    assert_eq!(iso.status(&c.id).unwrap().net_cls_classid, None);
    iso.cleanup(&c.id).unwrap();
}

#[test]
#[ignore = "needs root"]
fn net_cls_root_recovery_after_recreating_the_isolator() {
    if !rein_tests::require_root("net_cls_root_recovery_after_recreating_the_isolator") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new("recover");
    let live = spec("live");
    let vanished = spec("vanished");
    let sleeper = Sleeper::spawn();
    let live_handle = {
        let mut iso = f.isolator(1, 4);
        iso.prepare(&live).unwrap();
        iso.prepare(&vanished).unwrap();
        iso.isolate(&live.id, sleeper.pid()).unwrap();
        iso.handle(&live.id).unwrap()
    }; // The agent restarts: the isolator is gone, the cgroups and the process stay.

    let mut iso = f.isolator(1, 4);
    iso.recover(&[rein_tests::recovered(&live.id, sleeper.pid())], &[])
        .unwrap();
    assert_eq!(iso.handle(&live.id), Some(live_handle));
    assert_eq!(iso.free_handles(), 3);
    assert_eq!(
        iso.status(&live.id).unwrap().net_cls_classid,
        Some(live_handle.classid())
    );
    // The process kept its group and classid across the restart.
    assert_eq!(
        net_cls_path_of(sleeper.pid()),
        format!("/{}/live", f.root_name)
    );
    assert_eq!(
        f.root()
            .child("live")
            .read("net_cls.classid")
            .unwrap()
            .trim(),
        live_handle.classid().to_string()
    );
    // The container nobody knows about any more is gone, with its state.
    assert!(!f.root().child("vanished").exists());
    assert_eq!(f.state_files(), 1);
    // A new container never gets the live one's handle.
    let fresh = spec("fresh");
    iso.prepare(&fresh).unwrap();
    assert_ne!(iso.handle(&fresh.id), Some(live_handle));

    sleeper.stop();
    iso.cleanup(&live.id).unwrap();
    iso.cleanup(&fresh.id).unwrap();
    assert!(f.child_groups().is_empty(), "{:?}", f.child_groups());
    assert_eq!(f.state_files(), 0);
    assert_eq!(iso.free_handles(), 4);
}

#[test]
#[ignore = "needs root"]
fn net_cls_root_churn_of_1000_containers_leaks_nothing() {
    if !rein_tests::require_root("net_cls_root_churn_of_1000_containers_leaks_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new("churn");
    let mut iso = f.isolator(1, 64);
    // Warm up lazily opened descriptors (the state directory, logging) before counting.
    iso.prepare(&spec("warmup")).unwrap();
    iso.cleanup(&spec("warmup").id).unwrap();
    let fds_before = open_fds();

    let started = std::time::Instant::now();
    for i in 0..1000 {
        let c = spec(&format!("churn-{i}"));
        iso.prepare(&c).unwrap();
        // As the bridge does after prepare's answer: a spare for the next one.
        iso.after_answer();
        let sleeper = Sleeper::spawn();
        iso.isolate(&c.id, sleeper.pid()).unwrap();
        if i % 100 == 0 {
            let path = net_cls_path_of(sleeper.pid());
            assert_eq!(path, format!("/{}/churn-{i}", f.root_name));
        }
        sleeper.stop();
        iso.cleanup(&c.id).unwrap();
    }
    eprintln!("1000 containers in {:?}", started.elapsed());

    let spares = iso.spare_counts();
    assert_eq!(
        (spares.taken, spares.missed, spares.failed),
        (999, 2, 0),
        "every container but the warm-up and the first is a spare renamed: {spares:?}"
    );
    let left = f.child_groups();
    assert!(
        left.len() == DEFAULT_STOCK && left.iter().all(|n| n.starts_with(SPARE_PREFIX)),
        "only the spares are left: {left:?}"
    );
    assert_eq!(
        iso.free_handles(),
        64 - DEFAULT_STOCK,
        "the spares hold a handle each"
    );
    drop(iso);
    assert!(
        f.child_groups().is_empty(),
        "leaked cgroups: {:?}",
        f.child_groups()
    );
    assert_eq!(f.state_files(), 0, "leaked state records");
    assert_eq!(open_fds(), fds_before, "leaked file descriptors");
    assert!(Path::new(f.root().path()).exists());
}

#[test]
#[ignore = "needs root"]
fn net_cls_root_spares_carry_their_classid_and_an_earlier_runs_are_removed() {
    if !rein_tests::require_root(
        "net_cls_root_spares_carry_their_classid_and_an_earlier_runs_are_removed",
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new("spares");
    // A run killed with its spares made: they stay in the kernel.
    let killed = f.isolator(1, 16);
    let mut killed = std::mem::ManuallyDrop::new(killed);
    killed.after_answer();
    assert_eq!(f.child_groups().len(), DEFAULT_STOCK);

    let mut iso = f.isolator(1, 16);
    iso.recover(&[], &[]).unwrap();
    iso.after_answer();
    assert_eq!(iso.spare_counts().leftovers_removed, DEFAULT_STOCK as u64);
    assert_eq!(
        f.child_groups().len(),
        DEFAULT_STOCK,
        "{:?}",
        f.child_groups()
    );
    // Each spare holds the classid of a handle of its own.
    let mut classids: Vec<String> = f
        .child_groups()
        .iter()
        .map(|n| f.root().child(n).read("net_cls.classid").unwrap())
        .collect();
    classids.sort();
    classids.dedup();
    assert_eq!(classids.len(), DEFAULT_STOCK, "{classids:?}");

    let c = spec("c1");
    iso.prepare(&c).unwrap();
    let handle = iso.handle(&c.id).unwrap();
    let (group, sleeper) = isolate_c1(&f, &mut iso, handle);
    sleeper.stop();
    iso.cleanup(&c.id).unwrap();
    assert!(!group.exists());
    assert_eq!(iso.spare_counts().taken, 1);
    drop(iso);
    assert!(f.child_groups().is_empty(), "{:?}", f.child_groups());
}
