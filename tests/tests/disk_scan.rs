//! The disk isolator's scanning fallback against the real filesystem of the host
//! (no project quotas here): exact agreement with `du`, hard links, sparse files,
//! symlinks out of the tree, mount points, and trees changing during the scan.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator, LimitationNotifier, Resources};
use rein_isolators::disk::{
    scan, scan_many, Backend, DiskIsolator, LinuxKernel, ScanOptions, Settings, REASON_DISK,
};

fn opts() -> ScanOptions {
    ScanOptions {
        workers: 2,
        low_priority: false,
    }
}

/// `du -skx` of a tree, in KiB.
fn du_k(path: &Path) -> u64 {
    let out = Command::new("du").arg("-skx").arg(path).output().unwrap();
    assert!(out.status.success(), "du failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn write(path: &Path, len: usize) {
    fs::write(path, vec![0x5au8; len]).unwrap();
}

/// A tree with the awkward cases: hard links, a sparse file, symlinks to outside.
fn awkward_tree(root: &Path, outside: &Path) {
    fs::create_dir_all(root.join("deep/a/b/c/d")).unwrap();
    for i in 0..200 {
        write(&root.join(format!("deep/a/f{i}")), (i * 37) % 9000);
    }
    write(&root.join("deep/a/b/c/d/big"), 3 << 20);
    // Three names, one inode.
    fs::hard_link(root.join("deep/a/b/c/d/big"), root.join("link1")).unwrap();
    fs::hard_link(root.join("deep/a/b/c/d/big"), root.join("deep/link2")).unwrap();
    // Sparse: 4 GiB apparent, two 64 KiB extents written.
    let mut sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.write_all(&[1u8; 65536]).unwrap();
    sparse.seek(SeekFrom::Start(4 << 30)).unwrap();
    sparse.write_all(&[1u8; 65536]).unwrap();
    sparse.sync_all().unwrap();
    // Outside the tree: 20 MiB reachable only through symlinks.
    write(&outside.join("huge"), 20 << 20);
    std::os::unix::fs::symlink(outside, root.join("to-outside-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("huge"), root.join("to-outside-file")).unwrap();
    std::os::unix::fs::symlink("/", root.join("to-root")).unwrap();
}

#[test]
fn disk_scan_agrees_with_du() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path().join("sandbox");
    awkward_tree(&root, outside.path());
    let found = scan(&root, opts()).unwrap();
    assert_eq!(
        found.bytes.div_ceil(1024),
        du_k(&root),
        "scan {found:?} vs du -skx"
    );
    assert!(
        found.bytes < 10 << 20,
        "counted outside or apparent size: {found:?}"
    );
    assert!(found.bytes >= (3 << 20) + 131_072, "{found:?}");
    // 200 small files, big (once), sparse, 3 symlinks.
    assert_eq!(found.files, 205, "{found:?}");
    assert_eq!(found.dirs, 6, "{found:?}");
    assert_eq!(found.skipped, 0);
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
#[ignore = "needs root"]
fn disk_scan_stays_on_one_filesystem() {
    if !rein_tests::require_root("disk_scan_stays_on_one_filesystem") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sandbox");
    fs::create_dir_all(root.join("mnt")).unwrap();
    write(&root.join("own"), 100_000);
    let before = scan(&root, opts()).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &root.join("mnt"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    let _guard = Unmount(root.join("mnt"));
    write(&root.join("mnt/foreign"), 8 << 20);
    let after = scan(&root, opts()).unwrap();
    assert_eq!(after.files, before.files, "{after:?}");
    assert!(
        after.bytes <= before.bytes,
        "crossed into the tmpfs: {before:?} -> {after:?}"
    );
    assert_eq!(after.bytes.div_ceil(1024), du_k(&root));
}

#[test]
fn disk_scan_survives_files_replaced_and_dirs_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sandbox");
    fs::create_dir_all(root.join("stable")).unwrap();
    for i in 0..300 {
        write(&root.join(format!("stable/f{i}")), 4096);
    }
    let stable = scan(&root, opts()).unwrap();
    // Everything the mutator creates at once stays below this many bytes.
    let volatile_max: u64 = 2 << 20;

    let stop = Arc::new(AtomicBool::new(false));
    let mutator = {
        let stop = Arc::clone(&stop);
        let root = root.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A file replaced by rename (as editors and loggers do).
                write(&root.join("victim.tmp"), 64 * 1024);
                fs::rename(root.join("victim.tmp"), root.join("victim")).unwrap();
                // A file replaced by a directory and back.
                let _ = fs::remove_file(root.join("shape"));
                fs::create_dir(root.join("shape")).unwrap();
                write(&root.join("shape/inner"), 4096);
                fs::remove_dir_all(root.join("shape")).unwrap();
                write(&root.join("shape"), 4096);
                // A directory tree created and removed.
                let churn = root.join("churn");
                fs::create_dir_all(churn.join("x/y")).unwrap();
                for i in 0..20 {
                    write(&churn.join(format!("x/y/g{i}")), 8192);
                }
                fs::remove_dir_all(&churn).unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut scans = 0;
    let mut skipped = 0;
    while Instant::now() < deadline {
        let found = scan(&root, opts()).expect("a scan of a changing tree fails");
        assert!(found.bytes >= stable.bytes, "lost stable files: {found:?}");
        assert!(found.bytes <= stable.bytes + volatile_max, "{found:?}");
        skipped += found.skipped;
        scans += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = mutator.join().unwrap();
    assert!(scans > 10 && rounds > 10, "scans {scans}, rounds {rounds}");
    eprintln!(
        "{scans} scans against {rounds} rounds of changes; {skipped} entries vanished mid-scan"
    );
}

#[test]
fn disk_scan_many_sandboxes_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<PathBuf> = (0..8).map(|i| dir.path().join(format!("s{i}"))).collect();
    for (i, root) in roots.iter().enumerate() {
        fs::create_dir_all(root.join("d")).unwrap();
        for j in 0..(50 * (i + 1)) {
            write(&root.join(format!("d/f{j}")), 5000);
        }
    }
    let results = scan_many(&roots, opts());
    for (root, result) in roots.iter().zip(results) {
        let found = result.unwrap();
        assert_eq!(found.bytes.div_ceil(1024), du_k(root), "{}", root.display());
    }
}

/// The isolator on the host's own filesystem (no project quotas): scan backend,
/// usage from the monitor, kill when over.
#[test]
fn disk_isolator_scans_where_there_is_no_project_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(&dir.path().join("state"), "disk").unwrap();
    let settings = Settings {
        scan_interval: Duration::from_millis(200),
        ..Settings::default()
    };
    let mut iso = DiskIsolator::new(settings, Arc::new(LinuxKernel), store);
    let sandbox = dir.path().join("sandbox");
    fs::create_dir_all(&sandbox).unwrap();
    let spec = ContainerSpec {
        id: ContainerId::top("scan-e2e").unwrap(),
        sandbox: sandbox.clone(),
        resources: Resources {
            disk_mb: Some(2.0),
            ..Resources::default()
        },
        task_labels: vec![("rein.disk.mode".into(), "kill".into())],
        ..ContainerSpec::default()
    };
    let launch = iso.prepare(&spec).unwrap();
    assert!(launch.drop_capabilities.is_empty());
    assert_eq!(iso.backend(&spec.id), Some(Backend::Scan));
    let (notifier, rx) = LimitationNotifier::channel();
    iso.watch(&spec.id, notifier);
    write(&sandbox.join("a"), 1 << 20);
    fs::File::open(sandbox.join("a"))
        .unwrap()
        .sync_all()
        .unwrap();
    // The monitor thread scans on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = iso.usage(&spec.id).unwrap().disk_used_bytes;
        if used.is_some_and(|u| u >= 1 << 20) {
            assert_eq!(used.unwrap().div_ceil(1024), du_k(&sandbox));
            break;
        }
        assert!(Instant::now() < deadline, "never scanned: {used:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rx.try_recv().is_err(), "under the limit");
    write(&sandbox.join("b"), 2 << 20);
    let limitation = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no limitation");
    assert_eq!(limitation.reason, REASON_DISK);
    assert!(
        limitation.message.contains("quota of 2.0 MB"),
        "{}",
        limitation.message
    );
    iso.cleanup(&spec.id).unwrap();
}
