//! Benchmark of egress shaping against the real kernel, run by hand as root.
//!
//! `bench-egress [--containers N]`
//!
//! Makes a network namespace with a veth pair (the only use of `ip`, at set-up),
//! and its own cgroups roots, then times per container:
//! - the shaping alone: the `Shaper`'s `add_host` (HTB class + leaf, and the map
//!   entry with cgroup2 classification) and `remove`, for both classifiers;
//! - the whole net_cls isolator lifecycle (`prepare` + `isolate` + `cleanup`) with
//!   and without shaping, to give shaping's share of it.
//!
//! Prints p50/p99/max in microseconds. Everything it made is removed at the end.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rein_core::cgroupfs::Hierarchy;
use rein_core::{ContainerId, ContainerSpec, Isolator};
use rein_isolators::egress::{Classifier, EgressKernel, EgressParams, Shape, Shaper};
use rein_isolators::net_cls::NetClsIsolator;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const DEV: &str = "rb0";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    // Index of a quantile in a non-empty sorted slice.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

fn report(label: &str, mut samples: Vec<Duration>) -> f64 {
    let p50 = percentile(&mut samples, 0.5);
    println!(
        "{label:<44} n={:<6} p50={:>8.1} µs  p99={:>8.1} µs  max={:>8.1} µs",
        samples.len(),
        p50,
        percentile(&mut samples, 0.99),
        percentile(&mut samples, 1.0)
    );
    p50
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {}", args.join(" "));
}

/// A namespace with a veth pair, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("rein-bench-egress-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ip(&[
            "-n", &ns.0, "link", "add", DEV, "type", "veth", "peer", "name", "rb1",
        ]);
        ip(&["-n", &ns.0, "link", "set", DEV, "up"]);
        ip(&["-n", &ns.0, "link", "set", "rb1", "up"]);
        ns
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.0)).expect("netns file");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn egress_params(classifier: &str) -> EgressParams {
    let params = rein_core::params::Params::new(
        &[
            ("egress_shaping".into(), "true".into()),
            ("egress_devices".into(), DEV.into()),
            ("egress_classifier".into(), classifier.into()),
        ],
        rein_isolators::egress::PARAMS,
    )
    .expect("params");
    EgressParams::from_params(&params)
        .expect("egress params")
        .expect("shaping on")
}

fn bench_shaper(n: usize, classifier: Classifier, name: &str) -> f64 {
    let mut shaper = Shaper::new(
        &egress_params(if name == "net_cls" {
            "net_cls"
        } else {
            "cgroup2"
        }),
        classifier,
        0x1,
        4096,
    )
    .expect("shaper");
    let shape = Shape {
        rate: 10_000_000,
        ceil: 20_000_000,
        burst: 15_000,
        from_cpus: false,
    };
    let cgroup = matches!(classifier, Classifier::Cgroup2 { .. });
    let (mut add, mut remove, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let classid = 0x10000 | u32::try_from(0x10 + i % 0x700).unwrap();
        let cgroup_id = cgroup.then_some(1_000_000 + i as u64);
        let t0 = Instant::now();
        shaper.add_host(classid, &shape, cgroup_id).expect("add");
        let t1 = Instant::now();
        shaper.remove(classid, cgroup_id).expect("remove");
        let t2 = Instant::now();
        add.push(t1 - t0);
        remove.push(t2 - t1);
        both.push(t2 - t0);
    }
    report(&format!("shaping setup ({name})"), add);
    report(&format!("shaping teardown ({name})"), remove);
    report(&format!("shaping setup + teardown ({name})"), both)
}

fn bench_lifecycle(n: usize, shaping: bool, sleeper: &Sleeper) -> f64 {
    let hierarchy = Hierarchy::find_v1(Path::new(MOUNTINFO), "net_cls")
        .expect("mountinfo")
        .expect("a mounted net_cls hierarchy (mount -t cgroup -o net_cls cgroup /sys/fs/cgroup/net_cls)");
    let root_name = format!("rein-bench-egress-{}-{shaping}", std::process::id());
    let state = std::env::temp_dir().join(&root_name);
    let mut params: Vec<(String, String)> = vec![
        ("net_cls_primary_handle".into(), "0x1".into()),
        ("net_cls_secondary_handles".into(), "0x10,0x7ff".into()),
        ("cgroups_root".into(), root_name.clone()),
        ("state_dir".into(), state.to_str().unwrap().into()),
    ];
    if shaping {
        params.extend([
            ("egress_shaping".into(), "true".into()),
            ("egress_devices".into(), DEV.into()),
            ("egress_classifier".into(), "net_cls".into()),
        ]);
    }
    let mut iso = NetClsIsolator::from_params(&params).expect("isolator");
    let root = hierarchy.cgroup(&root_name);
    let pid = i32::try_from(sleeper.0.id()).unwrap();
    let mut samples = Vec::new();
    for i in 0..n {
        let spec = ContainerSpec {
            id: ContainerId::top(&format!("c{i}")).unwrap(),
            task_labels: vec![("rein.net.egress.rate".into(), "10mbit".into())],
            ..ContainerSpec::default()
        };
        let t0 = Instant::now();
        iso.prepare(&spec).expect("prepare");
        iso.isolate(&spec.id, pid).expect("isolate");
        let t1 = Instant::now();
        // Not timed: the container's processes leave before cleanup.
        root.add_process(pid).expect("moving the process out");
        let t2 = Instant::now();
        iso.cleanup(&spec.id).expect("cleanup");
        samples.push((t1 - t0) + t2.elapsed());
    }
    let p50 = report(
        &format!(
            "net_cls lifecycle, shaping {}",
            if shaping { "on" } else { "off" }
        ),
        samples,
    );
    drop(iso);
    let _ = std::fs::remove_dir_all(&state);
    // The sleeper is still in the cgroups root: move it out before removing that.
    hierarchy
        .cgroup("")
        .add_process(pid)
        .expect("moving the process to the root");
    let _ = root.remove();
    p50
}

fn main() {
    let n: usize = arg("--containers")
        .map(|v| v.parse().expect("--containers N"))
        .unwrap_or(2000);
    let ns = Netns::new();
    ns.enter();
    let sleeper = Sleeper(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawning sleep"),
    );
    println!(
        "egress shaping on veth {DEV} in netns {}, {n} containers",
        ns.0
    );
    let v1 = bench_shaper(n, Classifier::NetCls, "net_cls");
    let v2 = bench_shaper(n, Classifier::Cgroup2 { level: 2 }, "cgroup2");
    let off = bench_lifecycle(n, false, &sleeper);
    let on = bench_lifecycle(n, true, &sleeper);
    println!(
        "shaping share of the net_cls lifecycle at p50: {:.0}% ({on:.1} µs with, {off:.1} µs without; \
         shaping alone {v1:.1} µs net_cls, {v2:.1} µs cgroup2)",
        (on - off) / on * 100.0
    );
    drop(sleeper);
}
