//! Egress shaping against the real kernel: real TCP traffic between two network
//! namespaces joined by a veth pair, shaped by the net_cls isolator's HTB classes
//! and its BPF classifier. Root only; every measurement lasts at most 3 s.

#[path = "support/egress_net.rs"]
mod egress_net;
#[path = "support/net_cls_mount.rs"]
mod net_cls_mount;

use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use rein_core::cgroupfs::{Cgroup, Hierarchy};
use rein_core::{ContainerId, ContainerSpec, Isolator, Resources};
use rein_isolators::net_cls::NetClsIsolator;

use egress_net::{in_netns, NetPair, Receiver, Sender, CLIENT_DEV};

/// Throughput tests share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MBIT: f64 = 1e6;

/// The isolator, its cgroups root and state; cleans up the containers on drop.
struct Fixture {
    iso: NetClsIsolator,
    ids: Vec<ContainerId>,
    root: Cgroup,
    _state: tempfile::TempDir,
}

impl Fixture {
    /// Creates the isolator through its module parameters, on a thread in `netns`
    /// when given (its devices are that namespace's).
    fn new(netns: Option<&str>, root: Cgroup, root_name: &str, extra: &[(&str, &str)]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let mut params: Vec<(String, String)> = vec![
            ("net_cls_primary_handle".into(), "0x1".into()),
            ("net_cls_secondary_handles".into(), "0x10,0x7ff".into()),
            ("cgroups_root".into(), root_name.into()),
            ("state_dir".into(), state.path().to_str().unwrap().into()),
            ("egress_shaping".into(), "true".into()),
        ];
        params.extend(extra.iter().map(|(a, b)| ((*a).into(), (*b).into())));
        let iso = match netns {
            Some(ns) => in_netns(ns, || NetClsIsolator::from_params(&params)),
            None => NetClsIsolator::from_params(&params),
        }
        .unwrap_or_else(|e| panic!("creating the isolator: {e}"));
        Self {
            iso,
            ids: Vec::new(),
            root,
            _state: state,
        }
    }

    fn prepare(&mut self, name: &str, labels: &[(&str, &str)], cpus: Option<f64>) -> ContainerId {
        let spec = ContainerSpec {
            id: ContainerId::top(name).unwrap(),
            task_labels: labels
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect(),
            resources: Resources {
                cpus,
                ..Resources::default()
            },
            ..ContainerSpec::default()
        };
        self.iso.prepare(&spec).unwrap();
        self.ids.push(spec.id.clone());
        spec.id
    }

    fn cleanup(&mut self, id: &ContainerId) {
        self.iso.cleanup(id).unwrap();
        self.ids.retain(|i| i != id);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            let _ = self.iso.cleanup(&id);
        }
        let _ = self.root.remove();
    }
}

/// Sends from a new process in `client_ns` placed into container `id`, and
/// returns the goodput of each window (seconds from the connection's start).
/// `during` runs on the test thread while traffic flows.
fn measure(
    pair: &NetPair,
    f: &mut Fixture,
    id: &ContainerId,
    send_for: f64,
    windows: &[(f64, f64)],
    during: impl FnOnce(&mut Fixture),
) -> Vec<f64> {
    let receiver = Receiver::start(&pair.server, windows);
    let port = receiver.port;
    let mut sender = in_netns(&pair.client, || {
        Sender::fork(port, Duration::from_secs_f64(send_for))
    });
    f.iso.isolate(id, sender.pid).unwrap();
    sender.go();
    during(f);
    let rates = receiver.goodput();
    sender.wait();
    rates
}

fn assert_near(got: f64, want: f64, what: &str) {
    let err = (got - want).abs() / want;
    assert!(
        err <= 0.10,
        "{what}: {:.2} Mbit/s, want {:.2} Mbit/s ±10%",
        got / MBIT,
        want / MBIT
    );
}

/// The class lines of `tc class show` on the client device.
fn classes(pair: &NetPair) -> Vec<String> {
    pair.client_tc(&["class", "show", "dev", CLIENT_DEV])
        .lines()
        .filter(|l| l.starts_with("class "))
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect()
}

fn rein_filters(pair: &NetPair) -> usize {
    pair.client_tc(&["filter", "show", "dev", CLIENT_DEV])
        .lines()
        .filter(|l| l.contains("rein_egress"))
        .count()
}

/// One shaped and one unshaped container, then cleanup; `labels` of the shaped one.
fn shaped_and_unshaped(pair: &NetPair, f: &mut Fixture) {
    let tree = classes(pair);
    assert!(tree.contains(&"class htb 1:fffe".to_owned()), "{tree:?}");
    assert!(tree.contains(&"class htb 1:ffff".to_owned()), "{tree:?}");
    assert_eq!(rein_filters(pair), 1);

    let limited = f.prepare("limited", &[("rein.net.egress.rate", "10mbit")], None);
    let rate = measure(pair, f, &limited, 2.6, &[(0.5, 2.5)], |_| {})[0];
    eprintln!("10mbit container: {:.2} Mbit/s", rate / MBIT);
    assert_near(rate, 10.0 * MBIT, "goodput of the 10mbit container");
    let usage = f.iso.usage(&limited).unwrap().net_tx.expect("net_tx");
    assert_eq!(usage.rate_limit, 1_250_000);
    assert_eq!(usage.burst_rate_limit, 1_250_000);
    // The class counts every byte on the wire (headers too): at least the goodput.
    assert!(usage.bytes as f64 * 8.0 >= rate * 2.0, "{usage:?}");
    assert!(usage.packets > 0);
    let class = pair.client_tc(&["-s", "class", "show", "dev", CLIENT_DEV, "classid", "1:10"]);
    assert!(class.contains("rate 10Mbit"), "{class}");

    let free = f.prepare("free", &[], None);
    let rate = measure(pair, f, &free, 1.3, &[(0.2, 1.2)], |_| {})[0];
    eprintln!("unshaped container: {:.1} Mbit/s", rate / MBIT);
    assert!(rate > 200.0 * MBIT, "unshaped: {:.1} Mbit/s", rate / MBIT);
    assert_eq!(f.iso.usage(&free).unwrap().net_tx, None);

    f.cleanup(&limited);
    f.cleanup(&free);
    let left = classes(pair);
    assert_eq!(left.len(), 2, "only the tree's own classes stay: {left:?}");
    assert_eq!(
        rein_filters(pair),
        1,
        "the classifier stays for the next container"
    );
}

#[test]
#[ignore = "needs root"]
fn egress_shapes_by_net_cls_classid() {
    if !rein_tests::require_root("egress_shapes_by_net_cls_classid") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("v1");
    let hierarchy = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-eg-{}-v1", std::process::id());
    let mut f = Fixture::new(
        Some(&pair.client),
        hierarchy.cgroup(&root_name),
        &root_name,
        &[
            ("egress_devices", CLIENT_DEV),
            ("egress_classifier", "net_cls"),
        ],
    );
    shaped_and_unshaped(&pair, &mut f);
}

fn unified() -> Hierarchy {
    let h = Hierarchy::find_v2(Path::new("/proc/self/mountinfo"))
        .unwrap()
        .expect("a cgroup2 mount");
    assert!(h.mount_point().exists());
    h
}

#[test]
#[ignore = "needs root"]
fn egress_shapes_by_cgroup2_id() {
    if !rein_tests::require_root("egress_shapes_by_cgroup2_id") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("v2");
    let root_name = format!("rein-eg-{}-v2", std::process::id());
    let mut f = Fixture::new(
        Some(&pair.client),
        unified().cgroup(&root_name),
        &root_name,
        &[
            ("egress_devices", CLIENT_DEV),
            ("egress_classifier", "cgroup2"),
        ],
    );
    shaped_and_unshaped(&pair, &mut f);
    let map = f.iso.shaper().unwrap().cgroup_map().expect("cgroup map");
    assert!(map.keys().unwrap().is_empty(), "map entries left");
}

#[test]
#[ignore = "needs root"]
fn egress_shapes_a_container_in_its_own_netns() {
    if !rein_tests::require_root("egress_shapes_a_container_in_its_own_netns") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("ns");
    let hierarchy = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-eg-{}-ns", std::process::id());
    // The isolator stays in this namespace and shapes no device of it.
    let mut f = Fixture::new(
        None,
        hierarchy.cgroup(&root_name),
        &root_name,
        &[("egress_devices", "none")],
    );
    let id = f.prepare("own-ns", &[("rein.net.egress.rate", "10mbit")], None);
    let rate = measure(&pair, &mut f, &id, 2.6, &[(0.5, 2.5)], |_| {})[0];
    eprintln!(
        "10mbit container in its own netns: {:.2} Mbit/s",
        rate / MBIT
    );
    assert_near(
        rate,
        10.0 * MBIT,
        "goodput in the container's own namespace",
    );
    let qdisc = pair.client_tc(&["qdisc", "show", "dev", CLIENT_DEV]);
    assert!(qdisc.contains("htb 1: root"), "{qdisc}");
    let usage = f.iso.usage(&id).unwrap().net_tx.expect("net_tx");
    assert!(usage.bytes > 0);
    f.cleanup(&id);
    let qdisc = pair.client_tc(&["qdisc", "show", "dev", CLIENT_DEV]);
    assert!(
        !qdisc.contains("htb"),
        "cleanup leaves the namespace as it was: {qdisc}"
    );
}

#[test]
#[ignore = "needs root"]
fn egress_rate_follows_cpus_on_update() {
    if !rein_tests::require_root("egress_rate_follows_cpus_on_update") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new("up");
    let hierarchy = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-eg-{}-up", std::process::id());
    let mut f = Fixture::new(
        Some(&pair.client),
        hierarchy.cgroup(&root_name),
        &root_name,
        &[
            ("egress_devices", CLIENT_DEV),
            ("egress_rate_per_cpu", "10mbit"),
        ],
    );
    let id = f.prepare("cpus", &[], Some(1.0));
    let rates = measure(&pair, &mut f, &id, 3.0, &[(0.4, 1.4), (1.9, 2.9)], |f| {
        thread::sleep(Duration::from_millis(1450));
        let resources = Resources {
            cpus: Some(2.0),
            ..Resources::default()
        };
        f.iso.update(&id, &resources).unwrap();
    });
    eprintln!(
        "1 cpu: {:.2} Mbit/s, 2 cpus: {:.2} Mbit/s",
        rates[0] / MBIT,
        rates[1] / MBIT
    );
    assert_near(rates[0], 10.0 * MBIT, "goodput at 1 cpu");
    assert_near(rates[1], 20.0 * MBIT, "goodput at 2 cpus");
    assert_eq!(
        f.iso.usage(&id).unwrap().net_tx.unwrap().rate_limit,
        2_500_000
    );
    f.cleanup(&id);
}

#[test]
#[ignore = "needs root"]
fn egress_shapes_devices_that_appear_in_the_netns_after_isolate() {
    if !rein_tests::require_root("egress_shapes_devices_that_appear_in_the_netns_after_isolate") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The container's namespace has only loopback when isolate() runs, as with a
    // network isolator that attaches the veth in its own isolate().
    let pair = NetPair::unconnected("late");
    let hierarchy = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-eg-{}-late", std::process::id());
    let mut f = Fixture::new(
        None,
        hierarchy.cgroup(&root_name),
        &root_name,
        &[("egress_devices", "none")],
    );
    let id = f.prepare("late", &[("rein.net.egress.rate", "10mbit")], None);
    let receiver = Receiver::start(&pair.server, &[(0.5, 2.5)]);
    let port = receiver.port;
    let mut sender = in_netns(&pair.client, || {
        Sender::fork(port, Duration::from_secs_f64(2.6))
    });
    f.iso.isolate(&id, sender.pid).unwrap();
    pair.connect();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !pair
        .client_tc(&["qdisc", "show", "dev", CLIENT_DEV])
        .contains("htb 1: root")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the device that appeared was not shaped"
        );
        thread::sleep(Duration::from_millis(10));
    }
    sender.go();
    let rate = receiver.goodput()[0];
    sender.wait();
    eprintln!(
        "10mbit container, veth added after isolate: {:.2} Mbit/s",
        rate / MBIT
    );
    assert_near(
        rate,
        10.0 * MBIT,
        "goodput on a device added after isolate()",
    );
    assert!(f.iso.usage(&id).unwrap().net_tx.unwrap().bytes > 0);
    f.cleanup(&id);
    let qdisc = pair.client_tc(&["qdisc", "show", "dev", CLIENT_DEV]);
    assert!(!qdisc.contains("htb"), "{qdisc}");
}
