//! Egress shaping lifecycle against the real kernel, without traffic: 1,000
//! containers created and cleaned with nothing left behind, and recovery after the
//! isolator is re-created. Root only.

#[path = "support/egress_net.rs"]
mod egress_net;
#[path = "support/net_cls_mount.rs"]
mod net_cls_mount;

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use rein_core::cgroupfs::Hierarchy;
use rein_core::Isolator;
use rein_isolators::egress::FILTER_NAME;
use rein_isolators::net_cls::NetClsIsolator;
use rein_tests::{RootGuard, Sleeper};

use egress_net::{in_netns, labelled_spec as spec, shaping_params as params, NetPair, CLIENT_DEV};

static SERIAL: Mutex<()> = Mutex::new(());

/// A `sleep` in the client namespace, killed on drop.
fn sleeper_in(pair: &NetPair) -> Sleeper {
    Sleeper(in_netns(&pair.client, || {
        Sleeper::command().spawn().expect("sleep")
    }))
}

fn isolator(pair: &NetPair, params: &[(String, String)]) -> NetClsIsolator {
    in_netns(&pair.client, || NetClsIsolator::from_params(params))
        .unwrap_or_else(|e| panic!("creating the isolator: {e}"))
}

fn class_ids(pair: &NetPair) -> Vec<String> {
    pair.client_tc(&["class", "show", "dev", CLIENT_DEV])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

fn filter_lines(pair: &NetPair) -> usize {
    pair.client_tc(&["filter", "show", "dev", CLIENT_DEV])
        .lines()
        .filter(|l| l.contains("rein_egress"))
        .count()
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn hierarchy(classifier: &str) -> Hierarchy {
    match classifier {
        "net_cls" => net_cls_mount::net_cls_hierarchy(),
        _ => Hierarchy::find_v2(Path::new("/proc/self/mountinfo"))
            .unwrap()
            .expect("a cgroup2 mount"),
    }
}

fn churn(classifier: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new(&format!("churn-{}", &classifier[..2]));
    let root_name = format!("rein-eg-{}-churn-{classifier}", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let root = RootGuard(hierarchy(classifier).cgroup(&root_name));
    let mut iso = isolator(&pair, &params(&root_name, state.path(), classifier));
    let sleeper = sleeper_in(&pair);
    let tree = class_ids(&pair);
    // Warm up lazily opened descriptors before counting.
    let warm = spec("warm", &[("rein.net.egress.rate", "5mbit")]);
    iso.prepare(&warm).unwrap();
    iso.isolate(&warm.id, sleeper.pid()).unwrap();
    root.0.add_process(sleeper.pid()).unwrap();
    iso.cleanup(&warm.id).unwrap();
    let fds = open_fds();

    let started = Instant::now();
    for i in 0..1000 {
        let rate = format!("{}mbit", 1 + i % 50);
        let c = spec(&format!("c{i}"), &[("rein.net.egress.rate", &rate)]);
        iso.prepare(&c).unwrap();
        iso.isolate(&c.id, sleeper.pid()).unwrap();
        if i % 250 == 0 {
            let usage = iso.usage(&c.id).unwrap().net_tx.expect("net_tx");
            assert_eq!(usage.rate_limit, (1 + i % 50) * 125_000);
            assert_eq!(class_ids(&pair).len(), tree.len() + 1);
        }
        // The container's processes are gone before Mesos cleans up.
        root.0.add_process(sleeper.pid()).unwrap();
        iso.cleanup(&c.id).unwrap();
    }
    eprintln!(
        "{classifier}: 1000 containers shaped and cleaned in {:?}",
        started.elapsed()
    );

    assert_eq!(class_ids(&pair), tree, "leaked classes");
    assert_eq!(filter_lines(&pair), 1, "leaked or lost filters");
    if let Some(map) = iso.shaper().unwrap().cgroup_map() {
        assert!(map.keys().unwrap().is_empty(), "leaked map entries");
    }
    assert_eq!(open_fds(), fds, "leaked descriptors (sockets, BPF objects)");
    let groups = fs::read_dir(root.0.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .count();
    assert_eq!(groups, 0, "leaked cgroups");
    assert_eq!(
        fs::read_dir(state.path().join("net_cls")).unwrap().count(),
        0
    );
    drop(sleeper);
}

#[test]
#[ignore = "needs root"]
fn egress_churn_of_1000_net_cls_containers_leaks_nothing() {
    if !rein_tests::require_root("egress_churn_of_1000_net_cls_containers_leaks_nothing") {
        return;
    }
    churn("net_cls");
}

#[test]
#[ignore = "needs root"]
fn egress_churn_of_1000_cgroup2_containers_leaks_nothing() {
    if !rein_tests::require_root("egress_churn_of_1000_cgroup2_containers_leaks_nothing") {
        return;
    }
    churn("cgroup2");
}

#[test]
#[ignore = "needs root"]
fn egress_recovery_adopts_live_classes_and_removes_the_rest() {
    if !rein_tests::require_root("egress_recovery_adopts_live_classes_and_removes_the_rest") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("recover");
    let root_name = format!("rein-eg-{}-recover", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let root = RootGuard(hierarchy("cgroup2").cgroup(&root_name));
    let p = params(&root_name, state.path(), "cgroup2");
    let live = spec("live", &[("rein.net.egress.rate", "10mbit")]);
    let vanished = spec("vanished", &[("rein.net.egress.rate", "20mbit")]);
    let sleeper = sleeper_in(&pair);
    let (live_class, live_cgroup) = {
        let mut iso = isolator(&pair, &p);
        iso.prepare(&live).unwrap();
        iso.isolate(&live.id, sleeper.pid()).unwrap();
        iso.prepare(&vanished).unwrap();
        let other = sleeper_in(&pair);
        iso.isolate(&vanished.id, other.pid()).unwrap();
        drop(other);
        let class = iso.handle(&live.id).unwrap();
        (
            format!("{:x}:{:x}", class.primary, class.secondary),
            root.0.child("live"),
        )
    }; // The agent restarts.

    // A class of ours that no record claims (a crash between create and save).
    pair.client_tc(&[
        "class", "add", "dev", CLIENT_DEV, "parent", "1:fffe", "classid", "1:7ff", "htb", "rate",
        "1mbit",
    ]);
    let before = class_ids(&pair);
    assert!(before.contains(&"1:7ff".to_owned()));
    assert_eq!(before.len(), 5, "{before:?}");

    let mut iso = isolator(&pair, &p);
    iso.recover(&[rein_tests::recovered(&live.id, sleeper.pid())], &[])
        .unwrap();
    let after = class_ids(&pair);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.contains(&live_class), "{after:?}");
    assert!(!root.0.child("vanished").exists());
    // The new classifier's map knows the live container again.
    use std::os::unix::fs::MetadataExt;
    let cgroup_id = fs::metadata(live_cgroup.path()).unwrap().ino();
    let map = iso.shaper().unwrap().cgroup_map().unwrap();
    assert_eq!(map.keys().unwrap(), vec![cgroup_id]);
    assert_eq!(
        map.get(cgroup_id).unwrap(),
        Some(iso.handle(&live.id).unwrap().classid())
    );
    assert_eq!(filter_lines(&pair), 1);
    let usage = iso.usage(&live.id).unwrap().net_tx.expect("net_tx");
    assert_eq!(usage.rate_limit, 1_250_000);

    root.0.add_process(sleeper.pid()).unwrap();
    iso.cleanup(&live.id).unwrap();
    assert_eq!(class_ids(&pair).len(), 2);
    drop(sleeper);
}

#[test]
#[ignore = "needs root"]
fn egress_refused_labels_fail_only_that_container() {
    if !rein_tests::require_root("egress_refused_labels_fail_only_that_container") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("refuse");
    let root_name = format!("rein-eg-{}-refuse", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let root = RootGuard(hierarchy("net_cls").cgroup(&root_name));
    let mut p = params(&root_name, state.path(), "net_cls");
    p.push(("egress_max_rate".into(), "100mbit".into()));
    let mut iso = isolator(&pair, &p);
    let tree = class_ids(&pair);
    for (label, value, reason) in [
        ("rein.net.egress.rate", "1gbit", "cap"),
        ("rein.net.egress.ceil", "5mbit", "below the egress rate"),
        ("rein.net.egress.burst", "12B", "1600"),
    ] {
        let mut labels = vec![("rein.net.egress.rate", "10mbit")];
        labels.retain(|(l, _)| *l != label);
        labels.push((label, value));
        let err = iso.prepare(&spec("bad", &labels)).unwrap_err().to_string();
        assert!(
            err.contains(label) && err.contains(value) && err.contains(reason),
            "{err}"
        );
        assert!(!root.0.child("bad").exists());
    }
    assert_eq!(class_ids(&pair), tree);
    // The module goes on serving other containers.
    let sleeper = sleeper_in(&pair);
    let good = spec("good", &[("rein.net.egress.rate", "100mbit")]);
    iso.prepare(&good).unwrap();
    iso.isolate(&good.id, sleeper.pid()).unwrap();
    assert_eq!(class_ids(&pair).len(), tree.len() + 1);
    root.0.add_process(sleeper.pid()).unwrap();
    iso.cleanup(&good.id).unwrap();
    assert_eq!(class_ids(&pair), tree);
}

#[test]
#[ignore = "needs root"]
fn egress_recreating_the_isolator_leaks_no_bpf_object() {
    if !rein_tests::require_root("egress_recreating_the_isolator_leaks_no_bpf_object") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("bpf");
    let root_name = format!("rein-eg-{}-bpf", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let _root = RootGuard(hierarchy("cgroup2").cgroup(&root_name));
    let p = params(&root_name, state.path(), "cgroup2");
    // Ids only grow: this test's objects are the ones not there at its start (an
    // earlier test's, freed after an RCU grace period or with its namespace, may
    // still be on their way out and vanish at any moment).
    let (progs0, maps0) = rein_isolators::egress::bpf::loaded_objects(FILTER_NAME).unwrap();
    let ours = || {
        let (progs, maps) = rein_isolators::egress::bpf::loaded_objects(FILTER_NAME).unwrap();
        (
            progs.difference(&progs0).count(),
            maps.difference(&maps0).count(),
        )
    };
    // The kernel frees replaced programs and maps after an RCU grace period: counts
    // are compared once they settle.
    let settled = |want: (usize, usize)| {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while ours() != want && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        ours()
    };
    drop(isolator(&pair, &p));
    // The filter holds one program, which holds one map.
    let installed = (1, 1);
    assert_eq!(settled(installed), installed);
    for _ in 0..20 {
        let mut iso = isolator(&pair, &p);
        iso.recover(&[], &[]).unwrap();
    }
    // Each new isolator replaces the filter's program (and its map); none piles up.
    assert_eq!(settled(installed), installed);
    assert_eq!(filter_lines(&pair), 1);
    // With the namespace (and its device) gone, the program and map go too.
    drop(pair);
    assert_eq!(settled((0, 0)), (0, 0));
}
