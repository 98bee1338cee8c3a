//! One container's trouble at recovery stays its own, against the real kernel: a
//! cgroup kept busy by a live process, an unreadable state file, a tc class the
//! kernel refuses to remove, and several processes mounting the net_cls hierarchy
//! at the same moment. In each, `recover()` (or the module's creation) succeeds,
//! the other containers are recovered, the troubled one is logged, counted and
//! cleaned by a later retry. Root only.

#[path = "support/egress_net.rs"]
mod egress_net;
#[path = "support/fresh_mount_ns.rs"]
mod fresh_mount_ns;
#[path = "support/net_cls_mount.rs"]
mod net_cls_mount;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rein_core::cgroupfs::{Cgroup, Hierarchy};
use rein_core::params::CommonParams;
use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator, RecoveredContainer};
use rein_isolators::blkio::{BlkioIsolator, Policy, SystemResolver};
use rein_isolators::net_cls::{Handle, HandleAllocator, NetClsIsolator};
use rein_tests::{RootGuard, Sleeper};

use egress_net::{in_netns, labelled_spec, shaping_params, NetPair, CLIENT_DEV};
use fresh_mount_ns::{net_cls_mounts, unmount_all, without_net_cls_mounted, THREAD_MOUNTINFO};

/// The tests share hierarchies and the mount table: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `sleep` in the client namespace of `pair`.
fn sleeper_in(pair: &NetPair) -> Sleeper {
    Sleeper(in_netns(&pair.client, || {
        Sleeper::command().spawn().expect("sleep")
    }))
}

fn top(name: &str) -> ContainerId {
    ContainerId::top(name).unwrap()
}

fn spec(name: &str, sandbox: &Path) -> ContainerSpec {
    ContainerSpec {
        id: top(name),
        sandbox: sandbox.to_owned(),
        ..ContainerSpec::default()
    }
}

fn live(name: &str, pid: i32) -> RecoveredContainer {
    rein_tests::recovered(&top(name), pid)
}

fn common(root_name: &str, state: &Path) -> CommonParams {
    CommonParams {
        state_dir: state.to_owned(),
        cgroups_hierarchy: "/sys/fs/cgroup".into(),
        cgroups_root: PathBuf::from(root_name),
        mountinfo: "/proc/self/mountinfo".into(),
        allow_debug_panic: false,
        spare_cgroups: 0,
    }
}

fn state_file(state: &Path, isolator: &str, name: &str) -> PathBuf {
    state.join(isolator).join(format!("{name}.json"))
}

/// Polls `done` on `subject` until it holds or `secs` pass; `status` says what
/// was seen.
fn wait_until<S>(
    what: &str,
    secs: u64,
    subject: &mut S,
    mut done: impl FnMut(&mut S) -> bool,
    status: impl Fn(&S) -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(subject) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s; {}",
            status(subject)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn net_cls_isolator(h: &Hierarchy, common: &CommonParams) -> NetClsIsolator {
    NetClsIsolator::new(
        h.clone(),
        common,
        HandleAllocator::new(1, 1, 16),
        StateStore::open(&common.state_dir, "net_cls").unwrap(),
    )
}

/// A test's own net_cls root (removed on drop), state directory and module
/// parameters, with the other tests kept out while it lives.
struct NetClsScene {
    root: RootGuard,
    h: Hierarchy,
    state: tempfile::TempDir,
    common: CommonParams,
    _serial: MutexGuard<'static, ()>,
}

impl NetClsScene {
    fn new(tag: &str) -> Self {
        let serial = serial();
        let h = net_cls_mount::net_cls_hierarchy();
        let root_name = format!("rein-fr-{}-{tag}", std::process::id());
        let root = RootGuard::new(&h, &root_name);
        let state = tempfile::tempdir().unwrap();
        let common = common(&root_name, state.path());
        Self {
            root,
            h,
            state,
            common,
            _serial: serial,
        }
    }

    fn isolator(&self) -> NetClsIsolator {
        net_cls_isolator(&self.h, &self.common)
    }

    /// Prepares every name, isolates the first ones with the sleepers given,
    /// then drops the isolator (the agent goes away); their handles.
    fn launch(&self, names: &[&str], sleepers: &[&Sleeper]) -> Vec<Handle> {
        let mut iso = self.isolator();
        for name in names {
            iso.prepare(&spec(name, self.state.path())).unwrap();
        }
        for (name, s) in names.iter().zip(sleepers) {
            iso.isolate(&top(name), s.pid()).unwrap();
        }
        names.iter().map(|n| iso.handle(&top(n)).unwrap()).collect()
    }
}

#[test]
#[ignore = "needs root"]
fn net_cls_recover_survives_a_cgroup_kept_busy_by_a_live_process() {
    if !rein_tests::require_root("net_cls_recover_survives_a_cgroup_kept_busy_by_a_live_process") {
        return;
    }
    let scene = NetClsScene::new("busy");
    let mut sleepers: Vec<Sleeper> = (0..3).map(|_| Sleeper::spawn()).collect();
    let names = ["a", "busy", "c"];
    // The agent restarts; "busy" was being destroyed and its cleanup is lost,
    // but its process lives on in its cgroup.
    let handles = scene.launch(&names, &sleepers.iter().collect::<Vec<_>>());

    let mut iso = scene.isolator();
    iso.recover(
        &[live("a", sleepers[0].pid()), live("c", sleepers[2].pid())],
        &[],
    )
    .unwrap_or_else(|e| panic!("one busy cgroup failed the whole recovery: {e}"));
    let counters = iso.counters();
    assert_eq!(iso.handle(&top("a")), Some(handles[0]), "{counters:?}");
    assert_eq!(iso.handle(&top("c")), Some(handles[2]), "{counters:?}");
    let pending = iso.pending_cleanups();
    assert_eq!(pending.len(), 1, "{pending:?} {counters:?}");
    assert_eq!(pending[0].0, top("busy"));
    let busy_pid = sleepers[1].pid().to_string();
    assert!(
        pending[0].1.contains(&busy_pid),
        "the reason names the process keeping it busy: {pending:?}"
    );
    assert_eq!(
        (counters.cleanup_failures, counters.cleanups_pending),
        (1, 1),
        "{counters:?}"
    );
    // Its processes still carry its classid: the handle stays out of use.
    assert_eq!(iso.free_handles(), 13, "{counters:?}");
    assert!(scene.root.0.child("busy").exists());
    assert!(state_file(scene.state.path(), "net_cls", "busy").exists());

    // A launch in the meantime neither fails nor gets the busy one's handle.
    iso.prepare(&spec("new", scene.state.path())).unwrap();
    assert!(!handles.contains(&iso.handle(&top("new")).unwrap()));
    iso.cleanup(&top("new")).unwrap();

    // Once its process is gone, a retry cleans it.
    sleepers[1].kill();
    wait_until(
        "the busy container cleaned by a retry",
        30,
        &mut iso,
        |iso| iso.retry_cleanups() == 0,
        |iso| format!("{:?} {:?}", iso.counters(), iso.pending_cleanups()),
    );
    let counters = iso.counters();
    assert_eq!(
        (counters.cleanups_retried, counters.cleanups_pending),
        (1, 0),
        "{counters:?}"
    );
    assert!(!scene.root.0.child("busy").exists());
    assert!(!state_file(scene.state.path(), "net_cls", "busy").exists());
    assert_eq!(iso.free_handles(), 14);

    for s in &mut sleepers {
        s.kill();
    }
    for name in ["a", "c"] {
        iso.cleanup(&top(name)).unwrap();
    }
    assert_eq!(scene.root.groups(), Vec::<String>::new());
    assert_eq!(iso.free_handles(), 16);
}

/// Thaws a freezer cgroup on drop.
struct Thaw<'a>(&'a Cgroup);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.write("freezer.state", "THAWED");
    }
}

/// A process's state letter in `/proc/<pid>/stat` (`D`: uninterruptible).
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
#[ignore = "needs root"]
fn net_cls_recover_survives_a_process_stuck_in_d_state() {
    const TEST: &str = "net_cls_recover_survives_a_process_stuck_in_d_state";
    if !rein_tests::require_root(TEST) {
        return;
    }
    // The v1 freezer holds a task in the uninterruptible state ("D"), where not
    // even SIGKILL ends it: the closest real stand-in for a task stuck on I/O.
    let Some(freezer) = Hierarchy::find_v1(Path::new("/proc/self/mountinfo"), "freezer").unwrap()
    else {
        rein_tests::skip(TEST, "no cgroup v1 freezer hierarchy is mounted");
        return;
    };
    let _serial = serial();
    let h = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-fr-{}-dstate", std::process::id());
    let root = RootGuard::new(&h, &root_name);
    let ice = RootGuard::new(&freezer, &root_name);
    let state = tempfile::tempdir().unwrap();
    let common = common(&root_name, state.path());
    let mut alive = Sleeper::spawn();
    let mut stuck = Sleeper::spawn();
    let mut iso = net_cls_isolator(&h, &common);
    for (name, s) in [("a", &alive), ("stuck", &stuck)] {
        iso.prepare(&spec(name, state.path())).unwrap();
        iso.isolate(&top(name), s.pid()).unwrap();
    }
    drop(iso);
    ice.0.create().unwrap();
    ice.0.add_process(stuck.pid()).unwrap();
    // Dropped before the sleepers: a failing test never waits on a frozen process.
    let _thaw = Thaw(&ice.0);
    ice.0.write("freezer.state", "FROZEN").unwrap();
    let pid = stuck.pid();
    wait_until(
        "the process frozen in D state",
        30,
        &mut (),
        |()| proc_state(pid) == Some('D'),
        |()| format!("state {:?}", proc_state(pid)),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(proc_state(pid), Some('D'), "SIGKILL does not end it");

    let mut iso = net_cls_isolator(&h, &common);
    let recovered = iso.recover(&[live("a", alive.pid())], &[]);
    // Thaw before asserting, so a failure leaves nothing frozen behind.
    let pending = iso.pending_cleanups();
    ice.0.write("freezer.state", "THAWED").unwrap();
    stuck.kill();
    recovered.unwrap_or_else(|e| panic!("a process in D state failed the whole recovery: {e}"));
    assert!(iso.handle(&top("a")).is_some());
    assert_eq!(pending.len(), 1, "{pending:?} {:?}", iso.counters());
    assert!(pending[0].1.contains(&pid.to_string()), "{pending:?}");

    wait_until(
        "the stuck container cleaned by a retry once thawed",
        30,
        &mut iso,
        |iso| iso.retry_cleanups() == 0,
        |iso| format!("{:?} {:?}", iso.counters(), iso.pending_cleanups()),
    );
    assert!(!root.0.child("stuck").exists());
    assert_eq!(iso.counters().cleanups_retried, 1);
    alive.kill();
    iso.cleanup(&top("a")).unwrap();
    assert_eq!(root.groups(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn blkio_v1_recover_survives_a_busy_cgroup_and_cleans_it_at_a_later_recover() {
    const TEST: &str = "blkio_v1_recover_survives_a_busy_cgroup_and_cleans_it_at_a_later_recover";
    if !rein_tests::require_root(TEST) {
        return;
    }
    let Some(h) = Hierarchy::find_v1(Path::new("/proc/self/mountinfo"), "blkio").unwrap() else {
        rein_tests::skip(TEST, "no cgroup v1 blkio hierarchy is mounted");
        return;
    };
    let _serial = serial();
    let root_name = format!("rein-fr-{}-blkio", std::process::id());
    let root = RootGuard::new(&h, &root_name);
    let state = tempfile::tempdir().unwrap();
    let common = common(&root_name, state.path());
    let isolator = || {
        BlkioIsolator::new(
            h.clone(),
            &common,
            Policy::default(),
            Box::new(SystemResolver::new("/proc/self/mountinfo", "/sys")),
            StateStore::open(&common.state_dir, "blkio").unwrap(),
        )
    };
    let mut sleepers: Vec<Sleeper> = (0..3).map(|_| Sleeper::spawn()).collect();
    let names = ["a", "busy", "c"];
    let mut iso = isolator();
    for (name, s) in names.iter().zip(&sleepers) {
        iso.prepare(&spec(name, state.path())).unwrap();
        iso.isolate(&top(name), s.pid()).unwrap();
    }
    drop(iso);
    let recovered = [live("a", sleepers[0].pid()), live("c", sleepers[2].pid())];

    // Two restarts while "busy" still holds a process: each recovers the others
    // and keeps its state for the next try.
    for restart in 0..2 {
        let mut iso = isolator();
        iso.recover(&recovered, &[])
            .unwrap_or_else(|e| panic!("restart {restart}: one busy cgroup failed recovery: {e}"));
        let counters = iso.counters();
        assert!(iso.record(&top("a")).is_some(), "{counters:?}");
        assert!(iso.record(&top("c")).is_some(), "{counters:?}");
        assert_eq!(
            (counters.cleanup_failures, counters.cleanups_pending),
            (1, 1),
            "restart {restart}: {counters:?} {:?}",
            iso.pending_cleanups()
        );
        assert!(root.0.child("busy").exists());
        assert!(state_file(state.path(), "blkio", "busy").exists());
    }

    sleepers[1].kill();
    let mut iso = isolator();
    iso.recover(&recovered, &[]).unwrap();
    // Cleaned by this recovery, or else by a retry once the kernel freed it.
    wait_until(
        "the busy container cleaned",
        30,
        &mut iso,
        |iso| iso.retry_cleanups() == 0,
        |iso| format!("{:?} {:?}", iso.counters(), iso.pending_cleanups()),
    );
    assert!(!root.0.child("busy").exists());
    assert!(!state_file(state.path(), "blkio", "busy").exists());
    assert!(iso.record(&top("a")).is_some());

    for s in &mut sleepers {
        s.kill();
    }
    for name in ["a", "c"] {
        iso.cleanup(&top(name)).unwrap();
    }
    assert_eq!(root.groups(), Vec::<String>::new());
    assert_eq!(fs::read_dir(state.path().join("blkio")).unwrap().count(), 0);
}

#[test]
#[ignore = "needs root"]
fn net_cls_recover_survives_a_corrupt_state_file_of_one_of_three_containers() {
    if !rein_tests::require_root(
        "net_cls_recover_survives_a_corrupt_state_file_of_one_of_three_containers",
    ) {
        return;
    }
    let scene = NetClsScene::new("corrupt");
    let mut sleepers: Vec<Sleeper> = (0..3).map(|_| Sleeper::spawn()).collect();
    let names = ["a", "b", "c"];
    let handles = scene.launch(&names, &sleepers.iter().collect::<Vec<_>>());
    // A torn write by something else than the isolator: half a record.
    let b = state_file(scene.state.path(), "net_cls", "b");
    let text = fs::read(&b).unwrap();
    fs::write(&b, &text[..text.len() / 2]).unwrap();

    let mut iso = scene.isolator();
    let recovered: Vec<_> = names
        .iter()
        .zip(&sleepers)
        .map(|(n, s)| live(n, s.pid()))
        .collect();
    iso.recover(&recovered, &[])
        .unwrap_or_else(|e| panic!("one corrupt state file failed the whole recovery: {e}"));
    let counters = iso.counters();
    assert_eq!(counters.unreadable_records, 1, "{counters:?}");
    for (name, handle) in names.iter().zip(&handles) {
        assert_eq!(
            iso.handle(&top(name)),
            Some(*handle),
            "{name}: {counters:?}"
        );
    }
    // b's record was rebuilt from its cgroup's classid and saved whole again.
    let text = fs::read_to_string(&b).unwrap();
    assert!(text.contains("\"handle\""), "{text}");
    assert_eq!(iso.free_handles(), 13);

    for s in &mut sleepers {
        s.kill();
    }
    for name in names {
        iso.cleanup(&top(name)).unwrap();
    }
    assert_eq!(scene.root.groups(), Vec::<String>::new());
    assert_eq!(
        fs::read_dir(scene.state.path().join("net_cls"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(iso.free_handles(), 16);
}

#[test]
#[ignore = "needs root"]
fn net_cls_recover_survives_state_whose_cgroup_vanished() {
    if !rein_tests::require_root("net_cls_recover_survives_state_whose_cgroup_vanished") {
        return;
    }
    let scene = NetClsScene::new("vanished");
    let mut sleeper = Sleeper::spawn();
    let names = ["a", "gone", "lost"];
    let handles = scene.launch(&names, &[&sleeper]);
    // Someone removed two cgroups behind the agent's back: "gone" is unknown to
    // the agent now, "lost" is still running (its cgroup must come back).
    for name in ["gone", "lost"] {
        scene.root.0.child(name).remove().unwrap();
    }

    let mut iso = scene.isolator();
    iso.recover(
        &[live("a", sleeper.pid()), live("lost", sleeper.pid())],
        &[],
    )
    .unwrap_or_else(|e| panic!("a vanished cgroup failed the whole recovery: {e}"));
    let counters = iso.counters();
    assert_eq!(counters.cleanups_pending, 0, "{counters:?}");
    assert_eq!(iso.handle(&top("a")), Some(handles[0]));
    assert_eq!(iso.handle(&top("lost")), Some(handles[2]));
    assert_eq!(
        scene
            .root
            .0
            .child("lost")
            .read("net_cls.classid")
            .unwrap()
            .trim(),
        handles[2].classid().to_string(),
        "the live container's cgroup is recreated with its classid"
    );
    assert!(!state_file(scene.state.path(), "net_cls", "gone").exists());
    assert_eq!(iso.free_handles(), 14);

    sleeper.kill();
    for name in ["a", "lost"] {
        iso.cleanup(&top(name)).unwrap();
    }
    assert_eq!(scene.root.groups(), Vec::<String>::new());
    assert_eq!(iso.free_handles(), 16);
}

/// A test's own network pair, net_cls root and state directory, with egress
/// shaping on the pair's client device; the other tests kept out while it
/// lives. Dropped in field order: the root before the pair.
struct ShapedScene {
    params: Vec<(String, String)>,
    state: tempfile::TempDir,
    root: RootGuard,
    pair: NetPair,
    _serial: MutexGuard<'static, ()>,
}

impl ShapedScene {
    fn new(pair: &str, tag: &str) -> Self {
        let serial = serial();
        let pair = NetPair::new(pair);
        let h = net_cls_mount::net_cls_hierarchy();
        let root_name = format!("rein-fr-{}-{tag}", std::process::id());
        let root = RootGuard::new(&h, &root_name);
        let state = tempfile::tempdir().unwrap();
        let params = shaping_params(&root_name, state.path(), "net_cls");
        Self {
            params,
            state,
            root,
            pair,
            _serial: serial,
        }
    }

    /// The isolator as the agent creates it, in the pair's client namespace.
    fn isolator(&self) -> NetClsIsolator {
        in_netns(&self.pair.client, || {
            NetClsIsolator::from_params(&self.params)
        })
        .unwrap_or_else(|e| panic!("creating the isolator: {e}"))
    }
}

fn class_ids(pair: &NetPair) -> Vec<String> {
    let mut ids: Vec<String> = pair
        .client_tc(&["class", "show", "dev", CLIENT_DEV])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Binds a u32 filter to a class: the kernel then refuses to delete the class
/// (`EBUSY`, "HTB class in use") until the filter is gone.
fn bind_filter(pair: &NetPair, prio: &str, class: &str) {
    pair.client_tc(&[
        "filter", "add", "dev", CLIENT_DEV, "parent", "1:", "prio", prio, "protocol", "all", "u32",
        "match", "u32", "0", "0", "flowid", class,
    ]);
}

#[test]
#[ignore = "needs root"]
fn egress_recover_survives_classes_the_kernel_refuses_to_remove() {
    if !rein_tests::require_root("egress_recover_survives_classes_the_kernel_refuses_to_remove") {
        return;
    }
    let scene = ShapedScene::new("fr-nl", "netlink");
    let (pair, root, state) = (&scene.pair, &scene.root, &scene.state);
    let isolator = || scene.isolator();
    let shaped = |name: &str, rate: &str| labelled_spec(name, &[("rein.net.egress.rate", rate)]);
    let sleeper = sleeper_in(pair);
    let tree = {
        let iso = isolator();
        drop(iso);
        class_ids(pair)
    };
    let (live_class, vanished_class) = {
        let mut iso = isolator();
        iso.prepare(&shaped("live", "10mbit")).unwrap();
        iso.isolate(&top("live"), sleeper.pid()).unwrap();
        iso.prepare(&shaped("vanished", "20mbit")).unwrap();
        let mut other = sleeper_in(pair);
        iso.isolate(&top("vanished"), other.pid()).unwrap();
        other.kill();
        (
            iso.handle(&top("live")).unwrap().to_string(),
            iso.handle(&top("vanished")).unwrap().to_string(),
        )
    }; // The agent restarts; the vanished container's cleanup is lost.

    // A class of ours no record claims, and filters bound to it and to the
    // vanished container's class: the kernel refuses both removals.
    pair.client_tc(&[
        "class", "add", "dev", CLIENT_DEV, "parent", "1:fffe", "classid", "1:7ff", "htb", "rate",
        "1mbit",
    ]);
    bind_filter(pair, "5", "1:7ff");
    bind_filter(pair, "6", &vanished_class);

    let mut iso = isolator();
    iso.recover(&[live("live", sleeper.pid())], &[])
        .unwrap_or_else(|e| panic!("a class the kernel refused to remove failed recovery: {e}"));
    let counters = iso.counters();
    let classes = class_ids(pair);
    assert!(classes.contains(&live_class), "{classes:?}");
    assert!(iso.usage(&top("live")).unwrap().net_tx.is_some());
    assert!(classes.contains(&"1:7ff".to_owned()), "{classes:?}");
    assert!(classes.contains(&vanished_class), "{classes:?}");
    assert_eq!(
        (counters.cleanup_failures, counters.cleanups_pending),
        (2, 2),
        "{counters:?} {:?}",
        iso.pending_cleanups()
    );
    let pending = iso.pending_cleanups();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].0, top("vanished"));
    assert!(
        pending[0].1.contains("busy") || pending[0].1.contains("in use"),
        "{pending:?}"
    );
    // Neither handle goes to a new container while its class is there.
    let capacity = 0x7ff - 0x10 + 1;
    assert_eq!(iso.free_handles(), capacity - 3, "{counters:?}");
    assert!(state_file(state.path(), "net_cls", "vanished").exists());

    // The filters go; the retries remove both classes.
    for prio in ["5", "6"] {
        pair.client_tc(&[
            "filter", "del", "dev", CLIENT_DEV, "parent", "1:", "prio", prio,
        ]);
    }
    wait_until(
        "both classes removed by a retry",
        30,
        &mut iso,
        |iso| iso.retry_cleanups() == 0,
        |iso| format!("{:?} {:?}", iso.counters(), iso.pending_cleanups()),
    );
    let counters = iso.counters();
    assert_eq!(counters.cleanups_retried, 2, "{counters:?}");
    let mut expected = tree.clone();
    expected.push(live_class.clone());
    expected.sort();
    assert_eq!(class_ids(pair), expected);
    assert!(!state_file(state.path(), "net_cls", "vanished").exists());
    assert_eq!(iso.free_handles(), capacity - 1);

    // The live container's process leaves before Mesos cleans it up.
    root.0.add_process(sleeper.pid()).unwrap();
    iso.cleanup(&top("live")).unwrap();
    assert_eq!(class_ids(pair), tree);
    assert_eq!(root.groups(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn egress_recover_survives_its_device_deleted_behind_its_back() {
    if !rein_tests::require_root("egress_recover_survives_its_device_deleted_behind_its_back") {
        return;
    }
    let scene = ShapedScene::new("fr-dev", "device");
    let (pair, root, state) = (&scene.pair, &scene.root, &scene.state);
    let isolator = || scene.isolator();
    let mut sleeper = sleeper_in(pair);
    {
        let mut iso = isolator();
        for (name, rate) in [("live", "10mbit"), ("vanished", "20mbit")] {
            iso.prepare(&labelled_spec(name, &[("rein.net.egress.rate", rate)]))
                .unwrap();
        }
        iso.isolate(&top("live"), sleeper.pid()).unwrap();
    } // The agent restarts ...
    let mut iso = isolator();
    // ... and the shaped device goes away before recovery reaches it: every
    // netlink request on it now fails (ENODEV).
    egress_net::ip(&["-n", &pair.client, "link", "del", CLIENT_DEV]);
    iso.recover(&[live("live", sleeper.pid())], &[])
        .unwrap_or_else(|e| panic!("a deleted device failed the whole recovery: {e}"));
    let counters = iso.counters();
    assert!(iso.handle(&top("live")).is_some(), "{counters:?}");
    assert_eq!(
        counters.recover_failures, 1,
        "the live container's class could not be set again: {counters:?}"
    );
    assert_eq!(counters.cleanups_pending, 0, "{counters:?}");
    assert!(!state_file(state.path(), "net_cls", "vanished").exists());
    sleeper.kill();
    iso.cleanup(&top("live")).unwrap();
    assert_eq!(root.groups(), Vec::<String>::new());
}

/// Several starters at once, `rounds` times, each round on a fresh mount point:
/// every one must succeed and see net_cls mounted.
fn race<T: Send>(
    rounds: usize,
    starters: usize,
    start: impl Fn(&Path, usize) -> Result<T, String> + Sync,
) {
    let mut failures = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let barrier = Barrier::new(starters);
        let results: Vec<Result<T, String>> = thread::scope(|s| {
            let handles: Vec<_> = (0..starters)
                .map(|i| {
                    let (barrier, start, dir) = (&barrier, &start, dir.path());
                    s.spawn(move || {
                        barrier.wait();
                        start(dir, i)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            if let Err(e) = r {
                failures.push(format!("round {round}, starter {i}: {e}"));
            }
        }
        let mounted = net_cls_mounts();
        assert!(
            mounted.iter().any(|m| m.starts_with(dir.path())),
            "round {round}: net_cls is not mounted below {}: {mounted:?}",
            dir.path().display()
        );
        unmount_all(&dir.path().join("net_cls"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} starts failed: {failures:#?}",
        failures.len(),
        rounds * starters
    );
}

fn assert_no_mount_leaked() {
    assert!(
        !net_cls_mounts()
            .iter()
            .any(|m| m.starts_with(std::env::temp_dir())),
        "the test's mounts leaked into the host's namespace"
    );
}

#[test]
#[ignore = "needs root"]
fn concurrent_mounts_of_the_net_cls_hierarchy_all_succeed() {
    if !rein_tests::require_root("concurrent_mounts_of_the_net_cls_hierarchy_all_succeed") {
        return;
    }
    let _serial = serial();
    without_net_cls_mounted(|| {
        // The mount itself, as every isolator reaches it: the losers of each race
        // get EBUSY from the kernel and must find the winner's mount.
        race(50, 4, |dir, _| {
            Hierarchy::mount_v1("net_cls", &dir.join("net_cls"))
                .map(|h| assert_eq!(h.mount_point(), dir.join("net_cls")))
                .map_err(|e| e.to_string())
        });
    });
    assert_no_mount_leaked();
}

#[test]
#[ignore = "needs root"]
fn concurrent_net_cls_module_creation_on_a_fresh_machine_all_succeed() {
    if !rein_tests::require_root(
        "concurrent_net_cls_module_creation_on_a_fresh_machine_all_succeed",
    ) {
        return;
    }
    let _serial = serial();
    without_net_cls_mounted(|| {
        // Whole modules created at once with mount_net_cls=true, as two agents
        // (or two harness runs) starting together on a fresh machine.
        let states = tempfile::tempdir().unwrap();
        race(50, 2, |dir, i| {
            let state = states.path().join(format!("{i}"));
            let params: Vec<(String, String)> = [
                ("net_cls_primary_handle", "0x1"),
                ("mount_net_cls", "true"),
                ("cgroups_hierarchy", dir.to_str().unwrap()),
                ("mountinfo", THREAD_MOUNTINFO),
                ("state_dir", state.to_str().unwrap()),
            ]
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
            NetClsIsolator::from_params(&params)
                .map(|iso| assert_eq!(iso.hierarchy().mount_point(), dir.join("net_cls")))
                .map_err(|e| e.to_string())
        });
    });
    assert_no_mount_leaked();
}
