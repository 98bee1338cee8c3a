use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rein_core::cgroupfs::{fake, Version};
use rein_core::isolator::BlkioDevice;

use super::controller::{io_max_line, parse_io_max, parse_io_stat, parse_v1_stats};
use super::limits::{weight_bfq, weight_v1};
use super::*;

/// A table of device names: paths and sandboxes.
#[derive(Clone, Default)]
struct FakeResolver {
    paths: HashMap<PathBuf, DevNum>,
    sandboxes: HashMap<PathBuf, DevNum>,
}

impl DeviceResolver for FakeResolver {
    fn resolve_path(&self, path: &Path) -> Result<DevNum, DeviceError> {
        self.paths
            .get(path)
            .copied()
            .ok_or_else(|| DeviceError::NotBlockDevice {
                path: path.to_owned(),
            })
    }
    fn resolve_sandbox(&self, dir: &Path) -> Result<DevNum, DeviceError> {
        self.sandboxes
            .get(dir)
            .copied()
            .ok_or_else(|| DeviceError::NoBlockDevice {
                dir: dir.to_owned(),
                what: "tmpfs".into(),
            })
    }
}

const SDA: DevNum = DevNum { major: 8, minor: 0 };
const SDB: DevNum = DevNum {
    major: 8,
    minor: 16,
};
const LOOP: DevNum = DevNum { major: 7, minor: 3 };

struct Fixture {
    dir: tempfile::TempDir,
    hierarchy: Hierarchy,
    common: CommonParams,
    resolver: FakeResolver,
}

fn fixture(version: Version) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = match version {
        Version::V1 => fake::BLKIO_V1,
        Version::V2 => fake::IO_V2,
    };
    let hierarchy = Hierarchy::fake(dir.path().join("cg"), version, layout).unwrap();
    let mesos = hierarchy.mount_point().join("mesos");
    fs::create_dir_all(&mesos).unwrap();
    if version == Version::V2 {
        for d in [hierarchy.mount_point(), mesos.as_path()] {
            fs::write(d.join("cgroup.controllers"), "cpu io memory\n").unwrap();
            fs::write(d.join("cgroup.subtree_control"), "").unwrap();
        }
    }
    let common = crate::test_support::common_in(dir.path());
    let mut resolver = FakeResolver::default();
    resolver.paths.insert("/dev/sda".into(), SDA);
    resolver.paths.insert("/dev/sda1".into(), SDA);
    resolver.paths.insert("/dev/sdb".into(), SDB);
    resolver.paths.insert("/dev/loop3".into(), LOOP);
    resolver.sandboxes.insert("/sb/loop".into(), LOOP);
    resolver.sandboxes.insert("/sb/sda".into(), SDA);
    Fixture {
        dir,
        hierarchy,
        common,
        resolver,
    }
}

impl Fixture {
    fn isolator(&self, policy: Policy) -> BlkioIsolator {
        let store = StateStore::open(&self.common.state_dir, "blkio").unwrap();
        BlkioIsolator::new(
            self.hierarchy.clone(),
            &self.common,
            policy,
            Box::new(self.resolver.clone()),
            store,
        )
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.hierarchy.mount_point().join("mesos").join(rel)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.file(rel)).unwrap_or_default()
    }

    fn state_files(&self) -> usize {
        fs::read_dir(self.dir.path().join("state/blkio"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn spec(id: &[&str], sandbox: &str, labels: &[(&str, &str)]) -> ContainerSpec {
    ContainerSpec {
        id: ContainerId::new(id.iter().copied()).unwrap(),
        sandbox: sandbox.into(),
        task_labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..ContainerSpec::default()
    }
}

fn allow(entries: &[&str]) -> Policy {
    Policy {
        allowed: entries.iter().map(|e| Allowed::parse(e).unwrap()).collect(),
        ..Policy::default()
    }
}

#[test]
fn v1_lifecycle_writes_throttles_and_cleans_up() {
    let f = fixture(Version::V1);
    let mut iso = f.isolator(allow(&["sandbox", "/dev/sdb"]));
    let c = spec(
        &["c1"],
        "/sb/loop",
        &[
            ("rein.blkio.write_bps", "10MiB/s"),
            ("rein.blkio.read_iops", "sandbox=100, /dev/sdb=50"),
        ],
    );
    iso.prepare(&c).unwrap();
    assert_eq!(f.read("c1/blkio.throttle.write_bps_device"), "7:3 10485760");
    // One write per device and file; a plain file keeps the last one.
    assert_eq!(f.read("c1/blkio.throttle.read_iops_device"), "8:16 50");
    assert_eq!(
        f.read("c1/blkio.throttle.read_bps_device"),
        "",
        "never written"
    );
    assert!(iso.record(&c.id).unwrap().owned);
    iso.isolate(&c.id, 4242).unwrap();
    assert_eq!(f.read("c1/cgroup.procs"), "4242");

    fs::write(
        f.file("c1/blkio.throttle.io_service_bytes"),
        "7:3 Read 4096\n7:3 Write 8192\n7:3 Total 12288\nTotal 12288\n",
    )
    .unwrap();
    fs::write(
        f.file("c1/blkio.throttle.io_serviced"),
        "7:3 Read 1\n7:3 Write 2\n7:3 Total 3\nTotal 3\n",
    )
    .unwrap();
    let stats = iso.usage(&c.id).unwrap();
    assert_eq!(
        stats.blkio,
        vec![BlkioDevice {
            major: 7,
            minor: 3,
            read_bytes: 4096,
            write_bytes: 8192,
            read_ops: 1,
            write_ops: 2
        }]
    );

    assert_eq!(f.state_files(), 1);
    iso.cleanup(&c.id).unwrap();
    assert!(!f.file("c1").exists());
    assert_eq!(f.state_files(), 0);
    iso.cleanup(&c.id).unwrap();
    iso.cleanup(&spec(&["never"], "/", &[]).id).unwrap();
}

#[test]
fn v1_cgroup_of_mesos_is_used_and_left_in_place() {
    let f = fixture(Version::V1);
    f.hierarchy.cgroup("mesos/c1").create().unwrap();
    let mut iso = f.isolator(allow(&["sandbox"]));
    let c = spec(&["c1"], "/sb/sda", &[("rein.blkio.read_bps", "1MiB/s")]);
    iso.prepare(&c).unwrap();
    assert!(!iso.record(&c.id).unwrap().owned);
    assert_eq!(f.read("c1/blkio.throttle.read_bps_device"), "8:0 1048576");
    // Mesos's own isolator places the processes.
    iso.isolate(&c.id, 1).unwrap();
    assert_eq!(f.read("c1/cgroup.procs"), "", "no process placed");
    iso.cleanup(&c.id).unwrap();
    assert!(f.file("c1").exists(), "Mesos's cgroup must stay for Mesos");
    assert_eq!(f.state_files(), 0);
}

#[test]
fn v2_writes_io_max_in_the_mesos_layout() {
    let f = fixture(Version::V2);
    let mut iso = f.isolator(allow(&["*"]));
    let c = spec(
        &["c2"],
        "/sb/sda",
        &[
            ("rein.blkio.write_bps", "sandbox=10MiB/s,/dev/sdb=1MiB/s"),
            ("rein.blkio.write_iops", "/dev/sdb=100"),
        ],
    );
    iso.prepare(&c).unwrap();
    assert!(f.file("c2/leaf").is_dir());
    assert_eq!(
        f.read("../cgroup.subtree_control"),
        "+io",
        "io enabled at the hierarchy root"
    );
    assert_eq!(f.read("cgroup.subtree_control"), "+io");
    // The last line written (a plain file keeps only it).
    assert_eq!(
        f.read("c2/io.max"),
        "8:16 rbps=max wbps=1048576 riops=max wiops=100"
    );
    iso.isolate(&c.id, 77).unwrap();
    assert_eq!(f.read("c2/leaf/cgroup.procs"), "77");
    fs::write(
        f.file("c2/io.stat"),
        "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
    )
    .unwrap();
    let stats = iso.usage(&c.id).unwrap().blkio;
    assert_eq!(
        (stats[0].major, stats[0].write_bytes, stats[0].write_ops),
        (8, 20, 2)
    );
    iso.cleanup(&c.id).unwrap();
    assert!(!f.file("c2").exists());
}

#[test]
fn v2_without_io_controller_fails_clearly() {
    let f = fixture(Version::V2);
    fs::write(
        f.hierarchy.mount_point().join("cgroup.controllers"),
        "cpu memory\n",
    )
    .unwrap();
    let mut iso = f.isolator(allow(&["sandbox"]));
    let err = iso
        .prepare(&spec(&["c"], "/sb/sda", &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("io controller is not available"), "{err}");
    assert!(!f.file("c").exists(), "a failed prepare leaves nothing");
    assert_eq!(f.state_files(), 0);
}

#[test]
fn weight_uses_what_the_kernel_offers() {
    let f = fixture(Version::V1);
    fs::create_dir_all(f.file("w")).unwrap();
    fs::write(f.file("w/blkio.bfq.weight"), "100").unwrap();
    let mut iso = f.isolator(allow(&["sandbox"]));
    iso.prepare(&spec(&["w"], "/sb/sda", &[("rein.blkio.weight", "10000")]))
        .unwrap();
    assert_eq!(f.read("w/blkio.bfq.weight"), "1000");

    let err = iso
        .prepare(&spec(&["x"], "/sb/sda", &[("rein.blkio.weight", "500")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither blkio.bfq.weight nor blkio.weight"),
        "{err}"
    );
    assert!(!f.file("x").exists());

    let f2 = fixture(Version::V2);
    fs::create_dir_all(f2.file("y/leaf")).unwrap();
    fs::write(f2.file("y/io.weight"), "default 100").unwrap();
    let mut iso = f2.isolator(allow(&["sandbox"]));
    iso.prepare(&spec(&["y"], "/sb/sda", &[("rein.blkio.weight", "250")]))
        .unwrap();
    assert_eq!(f2.read("y/io.weight"), "default 250");
}

#[test]
fn weight_scales() {
    assert_eq!(
        (weight_v1(1), weight_v1(100), weight_v1(10_000)),
        (10, 19, 1000)
    );
    assert_eq!(
        (weight_bfq(1), weight_bfq(100), weight_bfq(10_000)),
        (1, 10, 1000)
    );
}

#[test]
fn label_errors_name_the_blkio_isolator_and_other_modules_keys_are_theirs() {
    let f = fixture(Version::V1);
    let mut iso = f.isolator(allow(&["sandbox"]));
    let bad = spec(&["b"], "/sb/loop", &[("rein.blkio.write_bps", "fast")]);
    let err = iso.prepare(&bad).unwrap_err().to_string();
    assert!(
        err.starts_with("task label 'rein.blkio.write_bps' = 'fast'")
            && err.ends_with("(blkio isolator)"),
        "{err}"
    );
    let others = spec(
        &["o"],
        "/sb/loop",
        &[
            ("rein.disk.mode", "sometimes"),
            ("rein.net.egress.rate", "fast"),
            ("rein.blkio.write_bps", "1MiB/s"),
        ],
    );
    iso.prepare(&others).unwrap();
    assert_eq!(f.read("o/blkio.throttle.write_bps_device"), "7:3 1048576");
}

#[test]
fn bad_labels_fail_only_that_container_with_a_clear_message() {
    let f = fixture(Version::V1);
    let mut policy = allow(&["sandbox", "/dev/sdb"]);
    policy.caps.write_bps = Some(50 << 20);
    policy.caps.write_iops = Some(1000);
    let mut iso = f.isolator(policy);
    let cases: &[(&str, &str, &str)] = &[
        (
            "rein.blkio.write_bps",
            "/dev/sda=1MiB/s",
            "not in the operator's allow-list",
        ),
        (
            "rein.blkio.write_bps",
            "/dev/null=1MiB/s",
            "not a block device",
        ),
        (
            "rein.blkio.write_bps",
            "100MiB/s",
            "above the operator's cap of 50MiB/s (max_write_bps)",
        ),
        (
            "rein.blkio.write_iops",
            "/dev/sdb=5000",
            "above the operator's cap of 1000 IOPS",
        ),
        ("rein.blkio.write_bps", "0B/s", "must be above 0"),
        ("rein.blkio.weight", "20000", "between 1 and 10000"),
        ("rein.blkio.write_bps", "10", "rate unit"),
    ];
    for (label, value, reason) in cases {
        let err = iso
            .prepare(&spec(&["bad"], "/sb/loop", &[(label, value)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("task label '{label}' = '{value}'")) && err.contains(reason),
            "{label}={value}: {err}"
        );
        assert!(!f.file("bad").exists());
    }
    // The sandbox on a filesystem without a block device.
    let err = iso
        .prepare(&spec(
            &["bad"],
            "/sb/tmpfs",
            &[("rein.blkio.read_bps", "1MiB/s")],
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("without a block device"), "{err}");
    // Two names of one device.
    let err = iso
        .prepare(&spec(
            &["bad"],
            "/sb/sda",
            &[("rein.blkio.read_bps", "sandbox=1MiB/s,/dev/sda1=2MiB/s")],
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("are the same device (8:0)"), "{err}");
    assert_eq!(f.state_files(), 0);
    // The module keeps working.
    iso.prepare(&spec(
        &["good"],
        "/sb/loop",
        &[("rein.blkio.write_bps", "1MiB/s")],
    ))
    .unwrap();
}

#[test]
fn defaults_apply_to_top_level_containers_only() {
    let f = fixture(Version::V1);
    let mut policy = allow(&["sandbox"]);
    policy
        .defaults
        .push(("blkio.write_bps", "20MiB/s".into(), "default_write_bps"));
    let mut iso = f.isolator(policy);
    iso.prepare(&spec(&["p"], "/sb/sda", &[])).unwrap();
    assert_eq!(f.read("p/blkio.throttle.write_bps_device"), "8:0 20971520");
    // The task's own value wins.
    iso.prepare(&spec(
        &["q"],
        "/sb/sda",
        &[("rein.blkio.write_bps", "5MiB/s")],
    ))
    .unwrap();
    assert_eq!(f.read("q/blkio.throttle.write_bps_device"), "8:0 5242880");
    // A nested container without settings shares its parent's limits.
    iso.prepare(&spec(&["p", "n"], "/sb/sda", &[])).unwrap();
    assert!(!f.file("p/mesos/n").exists());
    iso.isolate(&spec(&["p", "n"], "/", &[]).id, 5).unwrap();
    assert_eq!(
        iso.usage(&spec(&["p", "n"], "/", &[]).id).unwrap().blkio,
        vec![]
    );
    // One with settings gets its own cgroup below the parent's.
    let nested = spec(&["p", "m"], "/sb/sda", &[("rein.blkio.read_iops", "100")]);
    iso.prepare(&nested).unwrap();
    assert_eq!(
        f.read("p/mesos/m/blkio.throttle.read_iops_device"),
        "8:0 100"
    );
    assert!(f
        .read("p/mesos/m/blkio.throttle.write_bps_device")
        .is_empty());
    iso.cleanup(&nested.id).unwrap();
    assert!(!f.file("p/mesos/m").exists());
    assert!(f.file("p").exists());
}

#[test]
fn recover_keeps_live_reapplies_and_removes_vanished() {
    let f = fixture(Version::V1);
    let mut iso = f.isolator(allow(&["sandbox"]));
    let live = spec(&["live"], "/sb/sda", &[("rein.blkio.write_bps", "10MiB/s")]);
    let gone = spec(&["gone"], "/sb/sda", &[("rein.blkio.write_bps", "10MiB/s")]);
    let orphan = spec(&["orphan"], "/sb/sda", &[]);
    for s in [&live, &gone, &orphan] {
        iso.prepare(s).unwrap();
    }
    drop(iso);
    // Someone reset the live container's limit while the agent was down.
    for kind in ["read_bps", "write_bps", "read_iops", "write_iops"] {
        fs::write(f.file(&format!("live/blkio.throttle.{kind}_device")), "").unwrap();
    }

    let mut iso = f.isolator(allow(&["sandbox"]));
    let recovered = [RecoveredContainer {
        id: live.id.clone(),
        pid: Some(1),
        sandbox: Some("/sb/sda".into()),
    }];
    iso.recover(&recovered, std::slice::from_ref(&orphan.id))
        .unwrap();
    assert_eq!(
        f.read("live/blkio.throttle.write_bps_device"),
        "8:0 10485760"
    );
    assert!(iso.record(&live.id).is_some());
    assert!(!f.file("gone").exists());
    assert_eq!(f.state_files(), 2);
    // Orphans stay until Mesos cleans them up.
    iso.cleanup(&orphan.id).unwrap();
    assert!(!f.file("orphan").exists());
    iso.cleanup(&live.id).unwrap();
    assert_eq!(f.state_files(), 0);
}

#[test]
fn from_params_validates_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let mi = dir.path().join("mountinfo");
    fs::write(&mi, "").unwrap();
    let base = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v = vec![
            ("mountinfo".to_owned(), mi.display().to_string()),
            (
                "state_dir".to_owned(),
                dir.path().join("s").display().to_string(),
            ),
        ];
        v.extend(
            extra
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned())),
        );
        v
    };
    let err = |extra: &[(&str, &str)]| match BlkioIsolator::from_params(&base(extra)) {
        Ok(_) => panic!("accepted {extra:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err(&[]).contains("no usable hierarchy"));
    assert!(err(&[("allowed_devices", "sandbox,/etc/passwd")]).contains("allowed_devices"));
    assert!(err(&[("default_write_bps", "fast")]).contains("default_write_bps"));
    assert!(err(&[("max_read_iops", "x")]).contains("max_read_iops"));
    assert!(err(&[("cgroup_version", "v3")]).contains("expected auto, v1 or v2"));
    assert!(err(&[("bogus", "1")]).contains("unknown parameter"));
}

#[test]
fn file_formats() {
    let d = DeviceLimits {
        dev: SDA,
        read_bps: Some(1),
        write_bps: None,
        read_iops: None,
        write_iops: Some(4),
    };
    let line = io_max_line(&d);
    assert_eq!(line, "8:0 rbps=1 wbps=max riops=max wiops=4");
    assert_eq!(parse_io_max(&format!("{line}\n")), vec![d]);
    assert_eq!(
        parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n7:0 rbytes=0 wbytes=9 rios=0 wios=1\n")
            .iter()
            .map(|d| (d.major, d.minor, d.read_bytes, d.write_bytes, d.read_ops, d.write_ops))
            .collect::<Vec<_>>(),
        vec![(7, 0, 0, 9, 0, 1), (8, 0, 1, 2, 3, 4)]
    );
    let v1 = parse_v1_stats(
        "8:0 Read 5\n8:0 Write 6\n8:0 Sync 0\nTotal 11\n",
        "8:0 Read 1\n8:0 Write 2\n",
    );
    assert_eq!(
        (
            v1[0].read_bytes,
            v1[0].write_bytes,
            v1[0].read_ops,
            v1[0].write_ops
        ),
        (5, 6, 1, 2)
    );
}

fn caps_of(pairs: &[(&str, &str)]) -> Caps {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let known: Vec<&str> = COMMON_PARAMS.iter().chain(PARAMS).copied().collect();
    policy_from_params(&Params::new(&pairs, &known).unwrap())
        .unwrap()
        .caps
}

#[test]
fn a_task_can_lower_what_it_is_given_by_default_never_raise_it() {
    // Nothing set: throttles stay uncapped (no label means no throttle anyway), but the
    // weight is capped at the kernel's default, so no task outweighs a neighbour that
    // asked for nothing.
    let none = caps_of(&[]);
    assert_eq!(none.weight, Some(KERNEL_DEFAULT_WEIGHT));
    assert_eq!(none.write_bps, None);

    // Plain defaults become the caps when no cap is set.
    let d = caps_of(&[
        ("default_write_bps", "10MiB/s"),
        ("default_read_iops", "200"),
        ("default_weight", "300"),
    ]);
    assert_eq!(d.write_bps, Some(10 << 20));
    assert_eq!(d.read_iops, Some(200));
    assert_eq!(d.weight, Some(300));

    // An explicit cap wins over the default.
    let c = caps_of(&[("default_weight", "300"), ("max_weight", "1000")]);
    assert_eq!(c.weight, Some(1000));

    // Through prepare: a weight above the derived cap fails the launch naming the cap.
    let f = fixture(Version::V2);
    let mut iso = f.isolator(Policy {
        caps: none,
        ..allow(&["sandbox"])
    });
    fs::create_dir_all(f.file("z/leaf")).unwrap();
    fs::write(f.file("z/io.weight"), "default 100").unwrap();
    let err = iso
        .prepare(&spec(&["z"], "/sb/sda", &[("rein.blkio.weight", "10000")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_weight"), "{err}");
    assert!(err.contains("rein.blkio.weight"), "{err}");
}

#[test]
fn an_unreadable_record_is_its_containers_trouble_only() {
    let f = fixture(Version::V1);
    let mut iso = f.isolator(allow(&["sandbox"]));
    let specs: Vec<ContainerSpec> = ["a", "b", "c"]
        .iter()
        .map(|id| spec(&[id], "/sb/sda", &[("rein.blkio.write_bps", "10MiB/s")]))
        .collect();
    for s in &specs {
        iso.prepare(s).unwrap();
    }
    drop(iso);
    let state = f.dir.path().join("state/blkio");
    fs::write(state.join("b.json"), b"{\"boot_id\":").unwrap();
    fs::write(state.join("c.json"), b"").unwrap();

    let mut iso = f.isolator(allow(&["sandbox"]));
    let live: Vec<RecoveredContainer> = specs[..2]
        .iter()
        .map(|s| RecoveredContainer {
            id: s.id.clone(),
            pid: None,
            sandbox: Some("/sb/sda".into()),
        })
        .collect();
    iso.recover(&live, &[]).unwrap();
    assert_eq!(iso.counters().unreadable_records, 2, "{:?}", iso.counters());
    assert!(iso.record(&specs[0].id).is_some());
    assert!(!f.file("c").exists(), "the vanished one is cleaned at once");
    assert!(
        f.file("b").exists(),
        "the live one keeps its cgroup and limits"
    );
    assert_eq!(f.read("b/blkio.throttle.write_bps_device"), "8:0 10485760");
    iso.cleanup(&specs[1].id).unwrap();
    assert!(!f.file("b").exists());
    iso.cleanup(&specs[0].id).unwrap();
    assert_eq!(f.state_files(), 0);
    assert_eq!(iso.counters().cleanups_pending, 0);
}
