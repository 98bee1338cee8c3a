use std::fs;
use std::path::Path;

use rein_core::cgroupfs::{fake, Version};
use rein_core::params::DEFAULT_STATE_DIR;

use super::*;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) hierarchy: Hierarchy,
    pub(super) common: CommonParams,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let hierarchy =
        Hierarchy::fake(dir.path().join("net_cls"), Version::V1, fake::NET_CLS_V1).unwrap();
    let common = crate::test_support::common_in(dir.path());
    Fixture {
        _dir: dir,
        hierarchy,
        common,
    }
}

impl Fixture {
    pub(super) fn isolator(&self, first: u16, last: u16) -> NetClsIsolator {
        let store = StateStore::open(&self.common.state_dir, "net_cls").unwrap();
        NetClsIsolator::new(
            self.hierarchy.clone(),
            &self.common,
            HandleAllocator::new(1, first, last),
            store,
        )
    }

    fn classid_file(&self, id: &str) -> std::path::PathBuf {
        self.hierarchy
            .mount_point()
            .join("mesos")
            .join(id)
            .join("net_cls.classid")
    }
}

pub(super) fn spec(id: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: ContainerId::new(id.iter().copied()).unwrap(),
        ..ContainerSpec::default()
    }
}

#[test]
fn lifecycle_writes_classid_and_cleans_up() {
    let f = fixture();
    let mut iso = f.isolator(0x10, 0x20);
    let c = spec(&["c1"]);
    iso.prepare(&c).unwrap();
    assert_eq!(
        fs::read_to_string(f.classid_file("c1")).unwrap(),
        (0x10010).to_string()
    );
    assert_eq!(iso.status(&c.id).unwrap().net_cls_classid, Some(0x10010));
    iso.isolate(&c.id, 4242).unwrap();
    let procs = f.hierarchy.mount_point().join("mesos/c1/cgroup.procs");
    assert_eq!(fs::read_to_string(procs).unwrap(), "4242");
    iso.cleanup(&c.id).unwrap();
    assert!(!f.classid_file("c1").parent().unwrap().exists());
    assert_eq!(iso.free_handles(), 17);
    assert!(fs::read_dir(f.common.state_dir.join("net_cls"))
        .unwrap()
        .next()
        .is_none());
    // Cleanup is idempotent and accepts unknown containers.
    iso.cleanup(&c.id).unwrap();
    iso.cleanup(&spec(&["never-seen"]).id).unwrap();
}

#[test]
fn nested_containers_share_the_parent_classid() {
    let f = fixture();
    let mut iso = f.isolator(1, 10);
    let parent = spec(&["p"]);
    let child = spec(&["p", "c"]);
    iso.prepare(&parent).unwrap();
    iso.prepare(&child).unwrap();
    assert_eq!(iso.free_handles(), 9);
    assert_eq!(
        iso.status(&child.id).unwrap(),
        iso.status(&parent.id).unwrap()
    );
    iso.isolate(&child.id, 77).unwrap();
    assert_eq!(
        fs::read_to_string(f.hierarchy.mount_point().join("mesos/p/cgroup.procs")).unwrap(),
        "77"
    );
    iso.cleanup(&child.id).unwrap();
    assert!(
        f.classid_file("p").exists(),
        "child cleanup must not remove the parent's cgroup"
    );
}

#[test]
fn exhaustion_fails_only_that_launch() {
    let f = fixture();
    let mut iso = f.isolator(1, 1);
    iso.prepare(&spec(&["a"])).unwrap();
    let err = iso.prepare(&spec(&["b"])).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
    assert!(!f.classid_file("b").parent().unwrap().exists());
    iso.cleanup(&spec(&["a"]).id).unwrap();
    iso.prepare(&spec(&["b"])).unwrap();
}

#[test]
fn bad_labels_fail_prepare_with_the_label_named() {
    let f = fixture();
    let mut iso = f.isolator(1, 5);
    let mut s = spec(&["x"]);
    s.task_labels = vec![("rein.net.egress.rate".into(), "lots".into())];
    let err = iso.prepare(&s).unwrap_err().to_string();
    assert!(
        err.contains("rein.net.egress.rate") && err.contains("lots"),
        "{err}"
    );
    assert_eq!(iso.free_handles(), 5);
}

#[test]
fn debug_panic_is_refused_unless_allowed() {
    let mut f = fixture();
    let mut s = spec(&["x"]);
    s.task_labels = vec![("rein.debug.panic".into(), "true".into())];
    let err = f.isolator(1, 5).prepare(&s).unwrap_err().to_string();
    assert!(err.contains("not allowed"), "{err}");
    f.common.allow_debug_panic = true;
    let mut iso = f.isolator(1, 5);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| iso.prepare(&s)));
    assert!(caught.is_err());
}

#[test]
fn recover_reserves_live_handles_and_drops_vanished_ones() {
    let f = fixture();
    let mut iso = f.isolator(1, 3);
    for id in ["live", "orphan", "gone"] {
        iso.prepare(&spec(&[id])).unwrap();
    }
    let live_handle = iso.handle(&spec(&["live"]).id).unwrap();
    drop(iso);

    let mut iso = f.isolator(1, 3);
    let live = RecoveredContainer {
        id: spec(&["live"]).id,
        pid: Some(1),
        sandbox: None,
    };
    iso.recover(&[live], &[spec(&["orphan"]).id]).unwrap();
    assert_eq!(iso.handle(&spec(&["live"]).id), Some(live_handle));
    assert!(!f.classid_file("gone").parent().unwrap().exists());
    assert_eq!(iso.free_handles(), 1);
    // The orphan is cleaned by Mesos later, through cleanup().
    iso.cleanup(&spec(&["orphan"]).id).unwrap();
    assert_eq!(iso.free_handles(), 2);
    // A new container never gets the live one's handle.
    iso.prepare(&spec(&["new"])).unwrap();
    assert_ne!(iso.handle(&spec(&["new"]).id), Some(live_handle));
}

#[test]
fn parameters_are_checked() {
    let f = fixture();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    };
    let mountinfo = f.common.cgroups_hierarchy.join("mountinfo");
    fs::write(
        &mountinfo,
        format!(
            "1 0 0:1 / {} rw - cgroup cgroup rw,net_cls\n",
            f.hierarchy.mount_point().display()
        ),
    )
    .unwrap();
    let mi = mountinfo.to_str().unwrap();
    let state = f.common.state_dir.to_str().unwrap();
    let err = NetClsIsolator::from_params(&pairs(&[("mountinfo", mi), ("state_dir", state)]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("net_cls_primary_handle"), "{err}");
    let err = NetClsIsolator::from_params(&pairs(&[
        ("net_cls_primary_handle", "0x10000"),
        ("mountinfo", mi),
    ]))
    .err()
    .unwrap();
    assert!(err.to_string().contains("16-bit"), "{err}");
    let iso = NetClsIsolator::from_params(&pairs(&[
        ("net_cls_primary_handle", "0x1"),
        ("net_cls_secondary_handles", "0x10,0x1f"),
        ("mountinfo", mi),
        ("state_dir", state),
    ]))
    .unwrap();
    assert_eq!(iso.free_handles(), 16);
    assert_eq!(iso.hierarchy().mount_point(), f.hierarchy.mount_point());
    let empty = f.common.cgroups_hierarchy.join("empty_mountinfo");
    fs::write(&empty, "").unwrap();
    let err = NetClsIsolator::from_params(&pairs(&[
        ("net_cls_primary_handle", "1"),
        ("mountinfo", empty.to_str().unwrap()),
        ("state_dir", state),
    ]))
    .err()
    .unwrap();
    assert!(err.to_string().contains("mount_net_cls"), "{err}");
    assert!(Path::new(DEFAULT_STATE_DIR).is_absolute());
}

#[test]
fn an_unreadable_record_is_its_containers_trouble_only() {
    let f = fixture();
    let mut iso = f.isolator(1, 10);
    for id in ["a", "b", "c", "d"] {
        iso.prepare(&spec(&[id])).unwrap();
    }
    let handle = |iso: &NetClsIsolator, id: &str| iso.handle(&spec(&[id]).id);
    let (a, b) = (handle(&iso, "a"), handle(&iso, "b"));
    drop(iso);
    let state = f.common.state_dir.join("net_cls");
    // b: truncated (its handle is rebuilt from the cgroup); c: not JSON and its
    // container gone; d: a directory in place of the file and no classid left.
    fs::write(state.join("b.json"), b"{\"boot_id\":\"").unwrap();
    fs::write(state.join("c.json"), b"\0garbage").unwrap();
    fs::remove_file(state.join("d.json")).unwrap();
    fs::create_dir(state.join("d.json")).unwrap();
    fs::write(f.classid_file("d"), "0").unwrap();

    let mut iso = f.isolator(1, 10);
    let live: Vec<RecoveredContainer> = ["a", "b", "d"]
        .iter()
        .map(|id| RecoveredContainer {
            id: spec(&[id]).id,
            pid: None,
            sandbox: None,
        })
        .collect();
    iso.recover(&live, &[]).unwrap();
    let c = iso.counters();
    assert_eq!(c.unreadable_records, 3, "{c:?}");
    assert_eq!(handle(&iso, "a"), a);
    assert_eq!(handle(&iso, "b"), b, "rebuilt from net_cls.classid");
    assert!(!f.classid_file("c").parent().unwrap().exists());
    assert!(!state.join("c.json").exists());
    assert_eq!(iso.free_handles(), 8, "a and b hold theirs");
    // The rebuilt record is saved; d's cgroup goes at its cleanup.
    assert!(f
        .isolator(1, 10)
        .store
        .load::<Record>(&spec(&["b"]).id)
        .unwrap()
        .is_some());
    iso.cleanup(&spec(&["d"]).id).unwrap_err();
    assert_eq!(iso.counters().cleanups_pending, 1, "{:?}", iso.counters());
    assert!(!f.classid_file("d").parent().unwrap().exists());
    fs::remove_dir(state.join("d.json")).unwrap();
    assert_eq!(iso.retry_cleanups(), 1, "not due yet");
    // Due after its first delay (a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while iso.retry_cleanups() > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", iso.counters());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let c = iso.counters();
    assert_eq!((c.cleanups_retried, c.cleanups_pending), (1, 0), "{c:?}");
    for id in ["a", "b"] {
        iso.cleanup(&spec(&[id]).id).unwrap();
    }
    assert_eq!(iso.free_handles(), 10);
}

/// Mesos's cgroup v2 layout: a container's own cgroup enables controllers for its
/// children and may hold no process (the kernel answers EBUSY), so the process
/// goes to `<id>/leaf`; a nested container's process is left where Mesos put it.
#[test]
fn v2_processes_go_to_leaf_and_nested_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let hierarchy = Hierarchy::fake(dir.path().join("unified"), Version::V2, fake::COMMON).unwrap();
    let common = crate::test_support::common_in(dir.path());
    let store = StateStore::open(&common.state_dir, "net_cls").unwrap();
    let mut iso = NetClsIsolator::new(
        hierarchy.clone(),
        &common,
        HandleAllocator::new(1, 1, 10),
        store,
    );
    let parent = spec(&["p"]);
    let child = spec(&["p", "c"]);
    iso.prepare(&parent).unwrap();
    iso.prepare(&child).unwrap();
    iso.isolate(&parent.id, 42).unwrap();
    iso.isolate(&child.id, 77).unwrap();
    let top = hierarchy.mount_point().join("mesos/p");
    assert_eq!(
        fs::read_to_string(top.join("leaf/cgroup.procs")).unwrap(),
        "42"
    );
    assert_eq!(fs::read_to_string(top.join("cgroup.procs")).unwrap(), "");
    iso.cleanup(&child.id).unwrap();
    iso.cleanup(&parent.id).unwrap();
    assert!(!top.exists());
}
