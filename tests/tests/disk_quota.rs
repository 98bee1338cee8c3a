//! The disk isolator on real XFS and ext4 project quotas, each on a loop-device
//! filesystem made for the test. The host kernel has neither XFS quota support nor
//! QFMT_V2, so these run in the VM lane (`tests/vm/run --modules quota_v2 --cargo-test disk_quota`) and
//! skip visibly elsewhere; in the lane (or with `REIN_REQUIRE_QUOTA=1`) a skip is a
//! failure, so the lane cannot pass without running them. Root only.
//!
//! Each suite: writes stop at the limit with the filesystem's error (ENOSPC on XFS,
//! EDQUOT on ext4 for a writer without CAP_SYS_RESOURCE); usage matches what was
//! written within block rounding; nested sandboxes count in the parent's quota;
//! update() resizes; kill mode fires with usage and limit in the message; a restart
//! of the isolator recovers every project id; cleanup clears the id from the
//! sandbox's files and reclaims it at once (the quota shows nothing charged).
//!
//! Attacks, with the task's steps run as the unprivileged owner of its sandbox:
//! files moved into a neighbour's project (`chattr -p`) never get the neighbour
//! killed and go back to their owner's project; files moved out of the project
//! (to escape the quota) are charged again by the audit. Churn: hundreds of
//! launches on a handful of ids, sandboxes never removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rein_core::state::StateStore;
use rein_core::{
    ContainerId, ContainerSpec, Isolator, Limitation, LimitationNotifier, RecoveredContainer,
    Resources,
};
use rein_isolators::disk::{
    Backend, DiskIsolator, DiskKernel, LinuxKernel, Mode, Settings, REASON_DISK,
};

#[path = "support/xfs_lane.rs"]
mod xfs_lane;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    Xfs,
    Ext4,
}

/// A mounted loop-device filesystem with project quotas; unmounted on drop (the
/// loop device is released with it: mounted with `-o loop`, it auto-clears).
struct Lane {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Lane {
    fn drop(&mut self) {
        for _ in 0..20 {
            if nix::mount::umount(&self.mnt).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// In the VM lane (its kernel command line carries `rein.job=`) or with
/// `REIN_REQUIRE_QUOTA` set, quotas must work: a skip would hide a regression.
fn quota_required() -> bool {
    std::env::var_os("REIN_REQUIRE_QUOTA").is_some()
        || fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("rein.job="))
}

fn skip(test: &str, reason: &str) -> Option<Lane> {
    assert!(
        !quota_required(),
        "{test}: quotas are required here (VM lane or REIN_REQUIRE_QUOTA) but {reason}"
    );
    rein_tests::skip(test, reason);
    None
}

fn lane(test: &str, fs: Fs) -> Option<Lane> {
    if !rein_tests::require_root(test) {
        return None;
    }
    let (tool, size, args): (&str, u64, &[&str]) = match fs {
        // Current mkfs.xfs refuses filesystems below 300 MB; the image is sparse.
        Fs::Xfs => ("mkfs.xfs", 512 * MIB, &["-q", "-f"]),
        Fs::Ext4 => ("mkfs.ext4", 64 * MIB, &["-q", "-F", "-O", "quota,project"]),
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    File::create(&image).unwrap().set_len(size).unwrap();
    let made = match Command::new(tool).args(args).arg(&image).output() {
        Ok(out) => out,
        Err(e) => return skip(test, &format!("{tool} not available: {e}")),
    };
    if !made.status.success() {
        return skip(
            test,
            &format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ),
        );
    }
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-o", "loop,prjquota"])
        .arg(&image)
        .arg(&mnt)
        .output()
        .unwrap();
    if !mounted.status.success() {
        return skip(
            test,
            &format!(
                "this kernel cannot mount {fs:?} with project quotas: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ),
        );
    }
    let lane = Lane { mnt, _dir: dir };
    let info = LinuxKernel.filesystem(&lane.mnt).unwrap();
    if !info.quota.accounting || !info.quota.enforcing {
        return skip(
            test,
            &format!("{fs:?} mounted but project quota state is {:?}", info.quota),
        );
    }
    Some(lane)
}

fn isolator(state: &Path) -> DiskIsolator {
    let settings = Settings {
        project_ids: (7000, 7009),
        headroom: 4 * MIB,
        // The tests drive the monitor with poll_now().
        scan_interval: Duration::from_secs(3600),
        ..Settings::default()
    };
    DiskIsolator::new(
        settings,
        Arc::new(LinuxKernel),
        StateStore::open(state, "disk").unwrap(),
    )
}

fn spec(mnt: &Path, name: &str, disk_mb: f64, mode: Option<&str>) -> ContainerSpec {
    let sandbox = mnt.join("sandboxes").join(name);
    fs::create_dir_all(&sandbox).unwrap();
    ContainerSpec {
        id: ContainerId::top(name).unwrap(),
        sandbox,
        resources: Resources {
            disk_mb: Some(disk_mb),
            ..Resources::default()
        },
        task_labels: mode
            .map(|m| vec![("rein.disk.mode".to_owned(), m.to_owned())])
            .unwrap_or_default(),
        ..ContainerSpec::default()
    }
}

/// Appends to `path` in 64 KiB writes until `max` bytes or an error, from a thread
/// without CAP_SYS_RESOURCE (as the container runs once the isolator's launch info
/// is applied); returns the bytes written and the error that stopped it.
fn fill(path: &Path, max: u64) -> (u64, Option<io::Error>) {
    let path = path.to_owned();
    std::thread::spawn(move || {
        // Capabilities are per thread: only this writer loses it.
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap();
        // Creating the file can fail already (XFS charges the new inode).
        let mut file = match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) => return (0, Some(e)),
        };
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        while written < max {
            if let Err(e) = file.write_all(&chunk) {
                return (written, Some(e));
            }
            written += chunk.len() as u64;
        }
        if let Err(e) = file.sync_all() {
            return (written, Some(e));
        }
        (written, None)
    })
    .join()
    .unwrap()
}

fn used(iso: &mut DiskIsolator, id: &ContainerId) -> u64 {
    iso.usage(id).unwrap().disk_used_bytes.expect("no usage")
}

fn project(iso: &DiskIsolator, id: &ContainerId) -> u32 {
    match iso.backend(id) {
        Some(Backend::Quota { project, .. }) => project,
        other => panic!("{id}: backend {other:?}, not a quota"),
    }
}

fn watch(iso: &mut DiskIsolator, id: &ContainerId) -> mpsc::Receiver<Limitation> {
    let (notifier, rx) = LimitationNotifier::channel();
    iso.watch(id, notifier);
    rx
}

fn suite(fs: Fs, lane: &Lane) {
    let mnt = &lane.mnt;
    let state = tempfile::tempdir().unwrap();
    let mut iso = isolator(state.path());
    let over_errno = match fs {
        Fs::Xfs => libc::ENOSPC,
        Fs::Ext4 => libc::EDQUOT,
    };

    // Enforce mode, 8 MB.
    let c1 = spec(mnt, "c1", 8.0, None);
    let launch = iso.prepare(&c1).unwrap();
    let expected_caps: Vec<String> = match fs {
        Fs::Xfs => vec![],
        Fs::Ext4 => vec!["CAP_SYS_RESOURCE".into()],
    };
    assert_eq!(launch.drop_capabilities, expected_caps);
    assert_eq!(
        iso.backend(&c1.id),
        Some(Backend::Quota {
            project: 7000,
            enforcing: true,
            ext4: fs == Fs::Ext4
        })
    );
    assert_eq!(LinuxKernel.project_id(&c1.sandbox).unwrap(), 7000);

    // Usage matches what was written, within block rounding.
    let base = used(&mut iso, &c1.id);
    assert!(base <= 64 * 1024, "empty sandbox uses {base}");
    let exact = 3 * MIB + 100;
    let mut f = File::create(c1.sandbox.join("exact")).unwrap();
    f.write_all(&vec![1u8; usize::try_from(exact).unwrap()])
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = used(&mut iso, &c1.id);
    eprintln!("{fs:?}: usage {base} -> {after} after writing {exact} bytes");
    assert!(after >= base + exact, "{after} < {base} + {exact}");
    assert!(
        after <= base + exact + 64 * 1024,
        "{after} vs {base} + {exact}"
    );
    assert_eq!(iso.usage(&c1.id).unwrap().disk_limit_bytes, Some(8 * MIB));

    // A nested container's sandbox inside the parent's counts in its quota.
    let nested = c1.sandbox.join("containers/child");
    fs::create_dir_all(&nested).unwrap();
    let (n, err) = fill(&nested.join("data"), MIB);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        LinuxKernel.project_id(&nested).unwrap(),
        7000,
        "PROJINHERIT"
    );
    let with_nested = used(&mut iso, &c1.id);
    assert!(with_nested >= after + n, "{with_nested} < {after} + {n}");

    // Writes stop at the limit with the filesystem's error.
    let (_, err) = fill(&c1.sandbox.join("fill"), 64 * MIB);
    let err = err.expect("writes did not stop at the quota");
    assert_eq!(err.raw_os_error(), Some(over_errno), "{err}");
    let at_stop = used(&mut iso, &c1.id);
    eprintln!("{fs:?}: writes stopped at {at_stop} bytes of an 8 MiB quota: {err}");
    assert!(at_stop <= 8 * MIB, "{at_stop} above the quota");
    assert!(
        at_stop >= 8 * MIB - 512 * 1024,
        "stopped early at {at_stop}"
    );

    // update() resizes: 12 MB lets writing resume, and stops it again at 12 MiB.
    iso.update(
        &c1.id,
        &Resources {
            disk_mb: Some(12.0),
            ..Resources::default()
        },
    )
    .unwrap();
    let (more, err) = fill(&c1.sandbox.join("fill2"), 64 * MIB);
    assert_eq!(err.map(|e| e.raw_os_error()), Some(Some(over_errno)));
    let resized = used(&mut iso, &c1.id);
    eprintln!("{fs:?}: after resize to 12 MiB, {more} more bytes, usage {resized}");
    assert!(more >= 3 * MIB, "only {more} more bytes after the resize");
    assert!(
        (12 * MIB - 512 * 1024..=12 * MIB).contains(&resized),
        "{resized}"
    );

    // Kill mode: 2 MB quota, 4 MiB headroom.
    let c2 = spec(mnt, "c2", 2.0, Some("kill"));
    iso.prepare(&c2).unwrap();
    assert_eq!(project(&iso, &c2.id), 7001);
    let rx = watch(&mut iso, &c2.id);
    let (_, err) = fill(&c2.sandbox.join("a"), MIB);
    assert!(err.is_none(), "{err:?}");
    iso.poll_now();
    assert!(rx.try_recv().is_err(), "killed under the quota");
    let (_, err) = fill(&c2.sandbox.join("b"), 2 * MIB);
    assert!(err.is_none(), "headroom did not apply: {err:?}");
    iso.poll_now();
    let limitation = rx.try_recv().expect("no limitation above the quota");
    assert_eq!(limitation.reason, REASON_DISK);
    for part in ["quota of 2.0 MB", "Disk usage 3."] {
        assert!(limitation.message.contains(part), "{}", limitation.message);
    }
    let (_, err) = fill(&c2.sandbox.join("c"), 64 * MIB);
    assert_eq!(err.map(|e| e.raw_os_error()), Some(Some(over_errno)));
    assert!(used(&mut iso, &c2.id) <= 6 * MIB);

    // Restart: every project id comes back, nothing is handed out twice.
    let counts = iso.project_ids();
    assert_eq!(counts, (8, 10));
    drop(iso);
    let mut iso = isolator(state.path());
    let alive: Vec<RecoveredContainer> = [&c1, &c2]
        .iter()
        .map(|c| RecoveredContainer {
            id: c.id.clone(),
            pid: None,
            sandbox: Some(c.sandbox.clone()),
        })
        .collect();
    iso.recover(&alive, &[]).unwrap();
    assert_eq!(iso.project_ids(), counts);
    assert_eq!(project(&iso, &c1.id), 7000);
    assert_eq!(project(&iso, &c2.id), 7001);
    assert!(used(&mut iso, &c1.id) >= 12 * MIB - 512 * 1024);
    let rx = watch(&mut iso, &c2.id);
    iso.poll_now();
    assert_eq!(
        rx.try_recv().expect("kill mode after recovery").reason,
        REASON_DISK
    );
    let c3 = spec(mnt, "c3", 1.0, Some("account"));
    iso.prepare(&c3).unwrap();
    assert_eq!(project(&iso, &c3.id), 7002);
    let (_, err) = fill(&c3.sandbox.join("x"), 3 * MIB);
    assert!(err.is_none(), "account mode limited writes: {err:?}");

    // Cleanup clears the limits and the id from every file: reclaimed at once,
    // while the sandbox stays for Mesos to remove later.
    iso.cleanup(&c1.id).unwrap();
    assert_nothing_charged(&c1.sandbox, 7000);
    assert_eq!(LinuxKernel.project_id(&c1.sandbox).unwrap(), 0);
    assert_eq!(iso.project_ids(), (8, 10));
    fs::remove_dir_all(&c1.sandbox).unwrap();
    assert_eq!(iso.project_ids(), (8, 10));
    for c in [&c2, &c3] {
        iso.cleanup(&c.id).unwrap();
        fs::remove_dir_all(&c.sandbox).unwrap();
    }
    assert_eq!(iso.project_ids(), (10, 10));
    assert_eq!(Mode::parse("kill"), Some(Mode::Kill));
}

/// The quota of `project` shows no limit and nothing charged (or no record at all).
fn assert_nothing_charged(path: &Path, project: u32) {
    match LinuxKernel.quota(path, project) {
        Ok(q) => {
            assert_eq!((q.limits.soft, q.limits.hard), (0, 0), "{q:?}");
            assert_eq!((q.used, q.inodes), (0, 0), "{q:?}");
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => panic!("reading the quota of {project}: {e}"),
    }
}

/// A sandbox of `spec` owned by the task's user.
fn task_owned(spec: &ContainerSpec) {
    let id = Some(nix::unistd::Uid::from_raw(xfs_lane::TASK_UID));
    let gid = Some(nix::unistd::Gid::from_raw(xfs_lane::TASK_UID));
    nix::unistd::chown(&spec.sandbox, id, gid).unwrap();
}

fn attacks(fs: Fs, lane: &Lane) {
    let mnt = &lane.mnt;
    let state = tempfile::tempdir().unwrap();
    let mut iso = isolator(state.path());
    // The victim: 4 MB in kill mode (writes stop at 8 MiB with the headroom).
    let victim = spec(mnt, "victim", 4.0, Some("kill"));
    let attacker = spec(mnt, "attacker", 64.0, None);
    for s in [&victim, &attacker] {
        task_owned(s);
        iso.prepare(s).unwrap();
    }
    let (v, a) = (project(&iso, &victim.id), project(&iso, &attacker.id));
    let rx = watch(&mut iso, &victim.id);
    // The attacker bills 6 MiB to the victim's project (the kernel lets the owner,
    // up to the victim's hard limit).
    let (ok, out) = xfs_lane::as_task(
        &attacker.sandbox,
        &format!("set -e; head -c 6291456 /dev/zero > bill; sync; chattr -p {v} bill"),
    );
    assert!(ok, "{fs:?}: {out}");
    let charged = used(&mut iso, &victim.id);
    eprintln!("{fs:?}: victim charged {charged} bytes by the attacker's file");
    assert!(charged >= 6 * MIB, "{charged}");
    iso.poll_now();
    assert!(
        rx.try_recv().is_err(),
        "{fs:?}: the victim was killed for the attacker's file; {:?}",
        iso.counters()
    );
    assert_eq!(
        iso.counters()
            .kills_withheld
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The next pass audits: the file is charged to its owner again.
    iso.poll_now();
    assert!(rx.try_recv().is_err());
    assert_eq!(xfs_lane::projid(&attacker.sandbox.join("bill")), a);
    assert!(used(&mut iso, &victim.id) < MIB);
    assert!(used(&mut iso, &attacker.id) >= 6 * MIB);

    // The attacker takes its file out of every project to escape its quota.
    let (ok, out) = xfs_lane::as_task(&attacker.sandbox, "chattr -p 0 bill");
    assert!(ok, "{out}");
    assert!(used(&mut iso, &attacker.id) < MIB);
    iso.audit_now();
    assert!(used(&mut iso, &attacker.id) >= 6 * MIB, "charged again");

    // The victim's own writes still get it killed.
    let (_, err) = fill(&victim.sandbox.join("own"), 5 * MIB);
    assert!(err.is_none(), "{err:?}");
    iso.poll_now();
    assert_eq!(
        rx.try_recv().expect("killed for its own files").reason,
        REASON_DISK
    );

    // An enforce-mode neighbour filled to its limit by the attacker's file: its
    // writes fail until the next passes move the file back to its owner.
    let filled = spec(mnt, "filled", 8.0, None);
    task_owned(&filled);
    iso.prepare(&filled).unwrap();
    let f = project(&iso, &filled.id);
    let (ok, out) = xfs_lane::as_task(
        &attacker.sandbox,
        &format!("set -e; head -c 8257536 /dev/zero > fill; sync; chattr -p {f} fill"),
    );
    assert!(ok, "{fs:?}: {out}");
    let (_, err) = fill(&filled.sandbox.join("blocked"), MIB);
    eprintln!("{fs:?}: the neighbour's write while billed: {err:?}");
    assert!(
        err.is_some(),
        "{fs:?}: the attacker's file did not fill the neighbour"
    );
    iso.poll_now(); // sees it near its limit, confirms with a walk, asks for an audit
    iso.poll_now(); // audits every sandbox
    assert_eq!(xfs_lane::projid(&attacker.sandbox.join("fill")), a);
    let (_, err) = fill(&filled.sandbox.join("free-again"), MIB);
    assert!(
        err.is_none(),
        "{fs:?}: still blocked: {err:?}; {:?}",
        iso.counters()
    );

    for s in [&victim, &attacker, &filled] {
        iso.cleanup(&s.id).unwrap();
    }
    assert_nothing_charged(&victim.sandbox, v);
    assert_nothing_charged(&attacker.sandbox, a);
    assert_nothing_charged(&filled.sandbox, f);
    assert_eq!(iso.project_ids(), (10, 10));
}

fn churn(fs: Fs, lane: &Lane) {
    let state = tempfile::tempdir().unwrap();
    let mut iso = isolator(state.path());
    let cycles = 200;
    let mut live = std::collections::VecDeque::new();
    for n in 0..cycles {
        let s = spec(&lane.mnt, &format!("churn{n}"), 2.0, None);
        iso.prepare(&s)
            .unwrap_or_else(|e| panic!("{fs:?} launch {n}: {e}; {:?}", iso.counters()));
        let (_, err) = fill(&s.sandbox.join("out"), 64 * 1024);
        assert!(err.is_none(), "{err:?}");
        live.push_back(s.id.clone());
        if live.len() > 3 {
            iso.cleanup(&live.pop_front().unwrap()).unwrap();
        }
    }
    let c = iso.counters();
    eprintln!("{fs:?}: {cycles} launches on 10 ids: {c:?}");
    assert_eq!(
        c.ids_reclaimed_at_cleanup
            .load(std::sync::atomic::Ordering::Relaxed),
        cycles - 3
    );
    assert_eq!(iso.project_ids(), (7, 10));
}

#[test]
#[ignore = "needs root"]
fn disk_quota_attacks_xfs() {
    if let Some(lane) = lane("disk_quota_attacks_xfs", Fs::Xfs) {
        attacks(Fs::Xfs, &lane);
        churn(Fs::Xfs, &lane);
    }
}

#[test]
#[ignore = "needs root"]
fn disk_quota_attacks_ext4() {
    if let Some(lane) = lane("disk_quota_attacks_ext4", Fs::Ext4) {
        attacks(Fs::Ext4, &lane);
        churn(Fs::Ext4, &lane);
    }
}

#[test]
#[ignore = "needs root"]
fn disk_quota_xfs() {
    if let Some(lane) = lane("disk_quota_xfs", Fs::Xfs) {
        suite(Fs::Xfs, &lane);
    }
}

#[test]
#[ignore = "needs root"]
fn disk_quota_ext4() {
    if let Some(lane) = lane("disk_quota_ext4", Fs::Ext4) {
        suite(Fs::Ext4, &lane);
    }
}
