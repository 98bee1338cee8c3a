//! Benchmark of the blkio isolator against the real kernel, run by hand as root.
//!
//! `bench-blkio [--containers N] [--usage-calls C] [--version v1|v2]`
//!
//! Makes a loop device (on a tmpfs file) and its own cgroups root, then times, per
//! container, `prepare()` (labels parsed, devices resolved, cgroup created, limits
//! written, state saved) and `cleanup()` (cgroup and state removed), for limits on a
//! named device and through the `sandbox` keyword; then `usage()` of one container.
//! Prints p50/p99/max in microseconds. Everything it made is removed at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rein_core::cgroupfs::{Hierarchy, Version};
use rein_core::params::CommonParams;
use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator};
use rein_isolators::blkio::{Allowed, BlkioIsolator, Policy, SystemResolver};

const MOUNTINFO: &str = "/proc/self/mountinfo";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        // Index of a quantile in a non-empty sorted vector.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    println!(
        "{label:<34} n={:<6} p50={:>8.1} µs  p99={:>8.1} µs  max={:>8.1} µs",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// A loop device and mounted ext4 filesystem, removed on drop.
struct Scratch {
    backing: PathBuf,
    device: String,
    mount: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let backing = PathBuf::from(format!("/dev/shm/bench-blkio-{}", std::process::id()));
        fs::File::create(&backing)
            .and_then(|f| f.set_len(32 << 20))
            .expect("creating the backing file");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .expect("running losetup");
        assert!(out.status.success(), "losetup failed");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mount = std::env::temp_dir().join(format!("bench-blkio-{}", std::process::id()));
        let scratch = Self {
            backing,
            device,
            mount,
        };
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", &scratch.device])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mkfs.ext4 failed");
        fs::create_dir_all(&scratch.mount).unwrap();
        nix::mount::mount(
            Some(scratch.device.as_str()),
            &scratch.mount,
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting the scratch filesystem");
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = nix::mount::umount(&self.mount);
        let _ = fs::remove_dir(&self.mount);
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = fs::remove_file(&self.backing);
    }
}

fn spec(id: &str, sandbox: &Path, labels: &[(String, String)]) -> ContainerSpec {
    ContainerSpec {
        id: ContainerId::top(id).unwrap(),
        sandbox: sandbox.to_owned(),
        task_labels: labels.to_vec(),
        ..ContainerSpec::default()
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench-blkio needs root (it makes loop devices and cgroups)");
        std::process::exit(2);
    }
    let n: usize = arg("--containers").map_or(1000, |v| v.parse().unwrap());
    let calls: usize = arg("--usage-calls").map_or(10_000, |v| v.parse().unwrap());
    let mi = Path::new(MOUNTINFO);
    let hierarchy = match arg("--version").as_deref() {
        Some("v2") => Hierarchy::find_v2(mi).unwrap(),
        _ => Hierarchy::find_v1(mi, "blkio").unwrap(),
    }
    .expect("no blkio (v1) or cgroup2 (v2) hierarchy mounted");
    let scratch = Scratch::new();
    let root_name = format!("rein-bench-blkio-{}", std::process::id());
    let state = std::env::temp_dir().join(format!("{root_name}-state"));
    let common = CommonParams {
        state_dir: state.clone(),
        cgroups_hierarchy: "/sys/fs/cgroup".into(),
        cgroups_root: PathBuf::from(&root_name),
        mountinfo: MOUNTINFO.into(),
        allow_debug_panic: false,
        spare_cgroups: 0,
    };
    let mut iso = BlkioIsolator::new(
        hierarchy.clone(),
        &common,
        Policy {
            allowed: vec![Allowed::Any],
            ..Policy::default()
        },
        Box::new(SystemResolver::new(MOUNTINFO, "/sys")),
        StateStore::open(&state, "blkio").unwrap(),
    );
    println!(
        "bench-blkio: {} hierarchy at {}, device {}, {n} containers",
        match hierarchy.version() {
            Version::V1 => "v1",
            Version::V2 => "v2",
        },
        hierarchy.mount_point().display(),
        scratch.device
    );
    let sandbox = scratch.mount.join("sandbox");
    fs::create_dir_all(&sandbox).unwrap();
    let variants: [(&str, Vec<(String, String)>); 3] = [
        ("no labels (cgroup for statistics)", vec![]),
        (
            "named device, bps + iops",
            vec![
                (
                    "rein.blkio.write_bps".into(),
                    format!("{}=10MiB/s", scratch.device),
                ),
                (
                    "rein.blkio.read_iops".into(),
                    format!("{}=100", scratch.device),
                ),
            ],
        ),
        (
            "sandbox keyword, bps",
            vec![("rein.blkio.write_bps".into(), "10MiB/s".into())],
        ),
    ];
    for (name, labels) in &variants {
        let (mut setup, mut teardown, mut both) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let s = spec(&format!("c{i}"), &sandbox, labels);
            let t0 = Instant::now();
            iso.prepare(&s).unwrap();
            let t1 = Instant::now();
            iso.cleanup(&s.id).unwrap();
            let t2 = Instant::now();
            setup.push(t1 - t0);
            teardown.push(t2 - t1);
            both.push(t2 - t0);
        }
        println!("-- {name}");
        percentiles("  prepare()", setup);
        percentiles("  cleanup()", teardown);
        percentiles("  prepare() + cleanup()", both);
    }
    let s = spec("usage", &sandbox, &variants[1].1);
    iso.prepare(&s).unwrap();
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = Instant::now();
        let stats = iso.usage(&s.id).unwrap();
        samples.push(t0.elapsed());
        std::hint::black_box(stats);
    }
    percentiles("usage()", samples);
    iso.cleanup(&s.id).unwrap();
    let _ = hierarchy.cgroup(&root_name).remove();
    let _ = fs::remove_dir_all(&state);
}
