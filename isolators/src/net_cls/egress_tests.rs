//! The egress policy of the isolator on a recording fake kernel (no root): which
//! classes it sets, changes, reads, removes and adopts, and what it does when the
//! kernel refuses or a namespace is gone.

use std::time::{Duration, Instant};

use rein_core::params::Params;

use super::tests::{fixture, spec, Fixture};
use super::*;
use crate::egress::fake::{Call, FakeKernel, Ns};
use crate::egress::{self, EgressParams, DEFAULT_MINOR, LINK_MINOR};

const MBIT: u64 = 1_000_000;

fn egress_params(extra: &[(&str, &str)]) -> EgressParams {
    let pairs: Vec<(String, String)> = [("egress_shaping", "true"), ("egress_devices", "none")]
        .iter()
        .chain(extra)
        .map(|(a, b)| ((*a).into(), (*b).into()))
        .collect();
    EgressParams::from_params(&Params::new(&pairs, egress::PARAMS).unwrap())
        .unwrap()
        .unwrap()
}

/// An isolator with handles 0x10-0x1f of primary 1 (classes 1:10 to 1:1f) on `kernel`.
fn shaping(f: &Fixture, kernel: &FakeKernel, extra: &[(&str, &str)]) -> NetClsIsolator {
    f.isolator(0x10, 0x1f)
        .with_egress(egress_params(extra), kernel.clone())
}

fn with_rate(id: &str, rate: &str) -> ContainerSpec {
    let mut s = spec(&[id]);
    s.task_labels = vec![("rein.net.egress.rate".into(), rate.into())];
    s
}

fn live(id: &str, pid: Option<i32>) -> RecoveredContainer {
    RecoveredContainer {
        id: spec(&[id]).id,
        pid,
        sandbox: None,
    }
}

fn cpus(n: f64) -> Resources {
    Resources {
        cpus: Some(n),
        ..Resources::default()
    }
}

fn shape(rate: u64) -> Shape {
    Shape {
        rate,
        ceil: rate,
        burst: (rate / 8 / 100).max(1600),
        from_cpus: false,
    }
}

/// Retries the pending cleanups until none is left (their first delay is a second).
fn settle(iso: &mut NetClsIsolator, kernel: &FakeKernel) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while iso.retry_cleanups() > 0 {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?} {:?}",
            iso.counters(),
            iso.pending_cleanups(),
            kernel.st().calls
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn isolate_shapes_on_the_host_usage_reads_back_and_cleanup_removes() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[]);
    let c = with_rate("c", "10mbit");
    iso.prepare(&c).unwrap();
    assert!(kernel.st().calls.is_empty(), "prepare touches no class");
    let classid = iso.handle(&c.id).unwrap().classid();
    assert_eq!(classid, 0x1_0010);
    iso.isolate(&c.id, 4242).unwrap();
    assert_eq!(
        kernel.st().calls,
        [
            Call::HasOwnNetns(4242),
            Call::AddHost(classid, shape(10 * MBIT), None)
        ]
    );
    assert_eq!(
        kernel.st().host.get(&classid),
        Some(&Some(shape(10 * MBIT)))
    );

    kernel.st().counters.insert(classid, (15_000, 10, 2));
    let tx = iso.usage(&c.id).unwrap().net_tx.expect("net_tx");
    assert_eq!((tx.bytes, tx.packets, tx.dropped), (15_000, 10, 2));
    let held = egress::expected_held(&shape(10 * MBIT));
    assert_eq!(
        (tx.rate_limit, tx.burst_rate_limit, tx.burst_size),
        (held.rate, held.ceil, held.burst)
    );
    assert_eq!(tx.rate_limit, 1_250_000, "bytes per second");
    // A nested container reports its root's class.
    let nested = spec(&["c", "n"]);
    assert_eq!(iso.usage(&nested.id).unwrap().net_tx, Some(tx));

    iso.cleanup(&c.id).unwrap();
    assert_eq!(
        kernel.st().effects().last(),
        Some(&Call::Remove(classid, None))
    );
    assert!(kernel.st().host.is_empty());
    assert_eq!(iso.free_handles(), 16);
}

#[test]
fn an_unshaped_container_touches_no_class() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[]);
    let c = spec(&["plain"]);
    iso.prepare(&c).unwrap();
    iso.isolate(&c.id, 4242).unwrap();
    assert_eq!(iso.usage(&c.id).unwrap().net_tx, None);
    iso.update(&c.id, &cpus(4.0)).unwrap();
    assert_eq!(iso.egress_shape(&c.id), None);
    assert_eq!(kernel.st().effects(), []);
    // Its cleanup still asks for the class to go: a record rebuilt from the
    // kernel may have one.
    iso.cleanup(&c.id).unwrap();
    assert_eq!(kernel.st().effects(), [Call::Remove(0x1_0010, None)]);
}

#[test]
fn a_failed_class_fails_the_launch_and_leaves_nothing() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[]);
    kernel.st().add_fails = true;
    let c = with_rate("c", "10mbit");
    iso.prepare(&c).unwrap();
    let err = iso.isolate(&c.id, 4242).unwrap_err().to_string();
    assert!(err.contains("setting HTB class 1:10"), "{err}");
    assert_eq!(
        kernel.st().effects(),
        [
            Call::AddHost(0x1_0010, shape(10 * MBIT), None),
            Call::Remove(0x1_0010, None)
        ]
    );
    assert!(kernel.st().host.is_empty());
    assert_eq!(iso.usage(&c.id).unwrap().net_tx, None, "not active");
}

#[test]
fn update_follows_cpus_for_derived_rates_only() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[("egress_rate_per_cpu", "10mbit")]);
    let mut derived = spec(&["derived"]);
    derived.resources.cpus = Some(1.0);
    let asked = with_rate("asked", "5mbit");
    for s in [&derived, &asked] {
        iso.prepare(s).unwrap();
        iso.isolate(&s.id, 4242).unwrap();
    }
    kernel.st().calls.clear();
    iso.update(&derived.id, &cpus(2.0)).unwrap();
    iso.update(&derived.id, &cpus(2.0)).unwrap();
    iso.update(&asked.id, &cpus(8.0)).unwrap();
    let now = iso.egress_shape(&derived.id).unwrap();
    assert_eq!((now.rate, now.from_cpus), (20 * MBIT, true));
    assert_eq!(kernel.st().effects(), [Call::Change(0x1_0010, now)]);
    assert_eq!(kernel.st().host.get(&0x1_0010), Some(&Some(now)));
    assert_eq!(iso.egress_shape(&asked.id).unwrap().rate, 5 * MBIT);
    // The new shape is saved: a restart adopts it.
    let saved: Record = iso.store.load(&derived.id).unwrap().unwrap();
    assert_eq!(saved.egress.unwrap().shape, now);
}

#[test]
fn own_netns_containers_are_shaped_inside_their_namespace() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[("egress_rate_per_cpu", "10mbit")]);
    kernel.st().pids.insert(500, Ns::Own(1));
    kernel.st().pids.insert(600, Ns::Own(0));
    let mut a = spec(&["a"]);
    a.resources.cpus = Some(1.0);
    let b = with_rate("b", "20mbit");
    iso.prepare(&a).unwrap();
    iso.prepare(&b).unwrap();
    iso.isolate(&a.id, 500).unwrap();
    // No device yet (CNI moves the veth in later): shaped as devices appear.
    iso.isolate(&b.id, 600).unwrap();
    let (ca, cb) = (0x1_0010, 0x1_0011);
    let sa = iso.egress_shape(&a.id).unwrap();
    assert_eq!(
        kernel.st().effects(),
        [
            Call::AddNetns(ca, sa, 500),
            Call::AddNetns(cb, shape(20 * MBIT), 600)
        ]
    );
    assert!(kernel.st().host.is_empty(), "nothing on the host's devices");
    kernel.st().counters.insert(ca, (7, 1, 0));
    assert_eq!(iso.usage(&a.id).unwrap().net_tx.unwrap().bytes, 7);
    iso.update(&a.id, &cpus(3.0)).unwrap();
    assert_eq!(kernel.st().netns[&ca].1.rate, 30 * MBIT);
    iso.cleanup(&a.id).unwrap();
    iso.cleanup(&b.id).unwrap();
    assert!(kernel.st().netns.is_empty());
    assert_eq!(iso.free_handles(), 16);
}

#[test]
fn a_namespace_gone_before_isolate_fails_that_launch_only() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[]);
    kernel.st().pids.insert(700, Ns::Gone);
    let c = with_rate("c", "10mbit");
    iso.prepare(&c).unwrap();
    let err = iso.isolate(&c.id, 700).unwrap_err().to_string();
    assert!(err.contains("of pid 700"), "{err}");
    assert_eq!(kernel.st().effects(), []);
    let other = with_rate("other", "10mbit");
    iso.prepare(&other).unwrap();
    iso.isolate(&other.id, 4242).unwrap();
    iso.cleanup(&c.id).unwrap();
    assert_eq!(iso.free_handles(), 15);
}

/// Three containers shaped by a first run: `host` on the host, `ns` in its own
/// namespace, `gone` on the host (Mesos no longer knows it at recovery).
fn first_run(f: &Fixture, kernel: &FakeKernel) {
    let mut iso = shaping(f, kernel, &[]);
    kernel.st().pids.insert(200, Ns::Own(2));
    for (id, pid) in [("gone", 300), ("host", 100), ("ns", 200)] {
        let c = with_rate(id, "10mbit");
        iso.prepare(&c).unwrap();
        iso.isolate(&c.id, pid).unwrap();
    }
}

/// The kernel after a restart of the agent: host classes stay, namespaces stay.
fn restarted(before: &FakeKernel) -> FakeKernel {
    let after = FakeKernel::new(1);
    after.st().host = before.st().host.clone();
    after.st().pids = before.st().pids.clone();
    after
}

#[test]
fn recover_adopts_live_classes_and_removes_unclaimed_ones() {
    let f = fixture();
    let before = FakeKernel::new(1);
    first_run(&f, &before);
    let (gone, host, ns) = (0x1_0010, 0x1_0011, 0x1_0012);
    let kernel = restarted(&before);
    {
        let mut st = kernel.st();
        // Left by a container whose record is lost; not ours: another tree's class
        // and the tree's own link and default classes.
        for classid in [0x1_0019, 0x2_0013, (1 << 16) | u32::from(LINK_MINOR)] {
            st.host.insert(classid, None);
        }
        st.host.insert((1 << 16) | u32::from(DEFAULT_MINOR), None);
    }
    let mut iso = shaping(&f, &kernel, &[]);
    iso.recover(&[live("host", Some(100)), live("ns", Some(200))], &[])
        .unwrap();
    let effects = kernel.st().effects();
    let s = shape(10 * MBIT);
    assert_eq!(
        effects,
        [
            Call::Remove(gone, None),
            Call::AdoptHost(host, s, None),
            Call::AdoptNetns(ns, s, 200),
            Call::RemoveUnclaimed,
        ],
        "{:?}",
        kernel.st().calls
    );
    let classes: Vec<u32> = kernel.st().host.keys().copied().collect();
    assert_eq!(classes, [host, 0x1_fffe, 0x1_ffff, 0x2_0013]);
    assert_eq!(kernel.st().netns.keys().copied().collect::<Vec<_>>(), [ns]);
    let c = iso.counters();
    assert_eq!((c.recover_failures, c.cleanup_failures), (0, 0), "{c:?}");
    // Adopted classes are live again: read, changed, removed.
    kernel.st().counters.insert(host, (99, 1, 0));
    assert_eq!(
        iso.usage(&spec(&["host"]).id)
            .unwrap()
            .net_tx
            .unwrap()
            .bytes,
        99
    );
    assert!(iso.usage(&spec(&["ns"]).id).unwrap().net_tx.is_some());
    // The gone container's handle is free again; the live ones' are not.
    assert_eq!(iso.free_handles(), 14);
    iso.prepare(&spec(&["new"])).unwrap();
    assert_eq!(iso.handle(&spec(&["new"]).id).unwrap().classid(), gone);
}

#[test]
fn recover_without_a_pid_or_namespace_adopts_on_the_host() {
    let f = fixture();
    let before = FakeKernel::new(1);
    first_run(&f, &before);
    let kernel = restarted(&before);
    // The namespace of `ns` vanished with its process; Mesos knows no pid of `host`.
    kernel.st().pids.insert(200, Ns::Gone);
    let mut iso = shaping(&f, &kernel, &[]);
    iso.recover(&[live("host", None), live("ns", Some(200))], &[])
        .unwrap();
    let s = shape(10 * MBIT);
    let effects = kernel.st().effects();
    assert!(
        effects.contains(&Call::AdoptHost(0x1_0011, s, None)),
        "{effects:?}"
    );
    assert!(
        effects.contains(&Call::AdoptHost(0x1_0012, s, None)),
        "{effects:?}"
    );
    assert!(!effects.iter().any(|c| matches!(c, Call::AdoptNetns(..))));
    // Its class is claimed, so the sweep keeps it, and its cleanup removes it.
    assert!(kernel.st().host.contains_key(&0x1_0012));
    iso.cleanup(&spec(&["ns"]).id).unwrap();
    assert!(!kernel.st().host.contains_key(&0x1_0012));
    assert_eq!(iso.counters().recover_failures, 0);
}

#[test]
fn a_netns_that_cannot_be_reattached_is_counted_and_the_container_kept() {
    let f = fixture();
    let before = FakeKernel::new(1);
    first_run(&f, &before);
    let kernel = restarted(&before);
    // The look-up finds its own namespace; attaching to it then fails (gone in between).
    kernel.st().attach_fails = true;
    let mut iso = shaping(&f, &kernel, &[]);
    iso.recover(&[live("host", Some(100)), live("ns", Some(200))], &[])
        .unwrap();
    let c = iso.counters();
    assert_eq!(c.recover_failures, 1, "{c:?}");
    assert!(iso.handle(&spec(&["ns"]).id).is_some(), "kept");
    assert_eq!(
        iso.usage(&spec(&["ns"]).id).unwrap().net_tx,
        None,
        "not active"
    );
    assert!(iso.usage(&spec(&["host"]).id).unwrap().net_tx.is_some());
    // Its cleanup still goes through.
    iso.cleanup(&spec(&["ns"]).id).unwrap();
    assert_eq!(iso.free_handles(), 15);
}

#[test]
fn recovered_shapes_above_a_lowered_cap_are_brought_within_it() {
    let f = fixture();
    let before = FakeKernel::new(1);
    first_run(&f, &before);
    let kernel = restarted(&before);
    let mut iso = shaping(&f, &kernel, &[("egress_max_rate", "4mbit")]);
    iso.recover(&[live("host", Some(100))], &[spec(&["ns"]).id])
        .unwrap();
    let capped = iso.egress_shape(&spec(&["host"]).id).unwrap();
    assert_eq!((capped.rate, capped.ceil), (4 * MBIT, 4 * MBIT));
    assert!(kernel
        .st()
        .effects()
        .contains(&Call::AdoptHost(0x1_0011, capped, None)));
    let saved: Record = iso.store.load(&spec(&["host"]).id).unwrap().unwrap();
    assert_eq!(saved.egress.unwrap().shape, capped);
}

#[test]
fn a_class_the_kernel_keeps_holds_its_handle_until_a_retry_removes_it() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    // Left by a lost container, and bound by someone's filter (EBUSY).
    kernel.st().host.insert(0x1_0012, None);
    kernel.st().busy.insert(0x1_0012);
    let mut iso = shaping(&f, &kernel, &[]);
    iso.recover(&[], &[]).unwrap();
    let c = iso.counters();
    assert_eq!((c.cleanup_failures, c.cleanups_pending), (1, 1), "{c:?}");
    assert_eq!(iso.free_handles(), 15, "its handle is kept out of use");
    for i in 0..15 {
        let s = spec(&[&format!("c{i}")]);
        iso.prepare(&s).unwrap();
        assert_ne!(iso.handle(&s.id).unwrap().classid(), 0x1_0012);
    }
    kernel.st().busy.clear();
    settle(&mut iso, &kernel);
    assert!(kernel.st().calls.contains(&Call::RemoveHostClass(0x1_0012)));
    assert!(!kernel.st().host.contains_key(&0x1_0012));
    let c = iso.counters();
    assert_eq!((c.cleanups_retried, c.cleanups_pending), (1, 0), "{c:?}");
    assert_eq!(iso.free_handles(), 1, "released after the retry");
}

#[test]
fn a_device_that_cannot_be_listed_is_swept_again_later() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    kernel.st().host.insert(0x1_0013, None);
    kernel.st().list_fails = true;
    let mut iso = shaping(&f, &kernel, &[]);
    iso.recover(&[], &[]).unwrap();
    assert_eq!(iso.counters().cleanups_pending, 1, "{:?}", iso.counters());
    assert!(kernel.st().host.contains_key(&0x1_0013));
    kernel.st().list_fails = false;
    settle(&mut iso, &kernel);
    let sweeps = kernel
        .st()
        .calls
        .iter()
        .filter(|c| **c == Call::RemoveUnclaimed)
        .count();
    assert_eq!(sweeps, 2);
    assert!(!kernel.st().host.contains_key(&0x1_0013));
    assert_eq!(iso.counters().cleanups_retried, 1);
}

#[test]
fn a_class_that_will_not_go_at_cleanup_keeps_handle_and_state_until_retried() {
    let f = fixture();
    let kernel = FakeKernel::new(1);
    let mut iso = shaping(&f, &kernel, &[]);
    let c = with_rate("c", "10mbit");
    iso.prepare(&c).unwrap();
    iso.isolate(&c.id, 4242).unwrap();
    kernel.st().busy.insert(0x1_0010);
    let err = iso.cleanup(&c.id).unwrap_err().to_string();
    assert!(err.contains("removing its egress class 1:10"), "{err}");
    assert!(err.contains("class 1:10"), "{err}");
    assert_eq!(iso.handle(&c.id).map(Handle::classid), Some(0x1_0010));
    assert!(iso.store.load::<Record>(&c.id).unwrap().is_some());
    assert_eq!(iso.counters().cleanups_pending, 1);
    kernel.st().busy.clear();
    settle(&mut iso, &kernel);
    assert!(kernel.st().host.is_empty());
    assert_eq!(iso.handle(&c.id), None);
    assert_eq!(iso.free_handles(), 16);
}
