//! Benchmarks of the disk isolator, run by hand (not in CI).
//!
//! `bench-disk scan [--files N] [--dir PATH] [--workers 1,2,4] [--cold] [--rounds R]`
//!   builds a tree of N files (100 per directory, 4 KiB or less each) under PATH and
//!   times the in-process scan against `du -sk` (wall and CPU time). `--cold` drops
//!   the page, dentry and inode caches before each run (root; affects the machine).
//!
//! `bench-disk usage [--fs xfs|ext4|dir:PATH] [--files N] [--calls C]`
//!   makes a loop-device filesystem with project quotas (or uses PATH), fills a
//!   sandbox with N files, and times `usage()` over C calls: one `quotactl` with a
//!   quota backend, a cached value with the scanning backend.

use nix::sys::resource::{getrusage, UsageWho};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator, Resources};
use rein_isolators::disk::{scan, DiskIsolator, LinuxKernel, ScanOptions, Settings};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn cpu_time(who: UsageWho) -> Duration {
    let Ok(usage) = getrusage(who) else {
        return Duration::ZERO;
    };
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

fn drop_caches() {
    nix::unistd::sync();
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("cannot drop caches: {e}");
    }
}

/// Builds `files` files, 100 per directory, 10 directories per parent.
fn build_tree(root: &Path, files: u64) {
    if root.join(".complete").exists() {
        return;
    }
    fs::create_dir_all(root).unwrap();
    let started = Instant::now();
    let data = vec![0x42u8; 4096];
    for i in 0..files {
        let leaf = i / 100;
        let dir = root.join(format!("{}/{}/{}", leaf / 100, (leaf / 10) % 10, leaf % 10));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        let len = usize::try_from(i % 4097).unwrap_or(0);
        fs::write(dir.join(format!("f{i}")), &data[..len]).unwrap();
    }
    fs::write(root.join(".complete"), b"").unwrap();
    eprintln!("built {files} files in {:.1?}", started.elapsed());
}

fn du(root: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(root).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

fn bench_scan() {
    let files: u64 = arg("--files")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let root = arg("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rein-bench-disk-{files}")));
    let rounds: usize = arg("--rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let workers: Vec<usize> = arg("--workers")
        .unwrap_or_else(|| "1,2,4".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let cold = flag("--cold");
    build_tree(&root, files);
    println!(
        "tree {} ({files} files), {} caches",
        root.display(),
        if cold { "cold" } else { "warm" }
    );
    println!(
        "{:<14} {:>9} {:>9} {:>12}",
        "what", "wall ms", "cpu ms", "KiB"
    );
    for round in 0..rounds {
        if cold {
            drop_caches();
        }
        let cpu0 = cpu_time(UsageWho::RUSAGE_CHILDREN);
        let t = Instant::now();
        let k = du(&root);
        let wall = t.elapsed();
        let cpu = cpu_time(UsageWho::RUSAGE_CHILDREN) - cpu0;
        println!(
            "{:<14} {:>9.0} {:>9.0} {:>12}  (round {round})",
            "du -sk",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            k
        );
        for &w in &workers {
            if cold {
                drop_caches();
            }
            let cpu0 = cpu_time(UsageWho::RUSAGE_SELF);
            let t = Instant::now();
            let found = scan(
                &root,
                ScanOptions {
                    workers: w,
                    low_priority: false,
                },
            )
            .unwrap();
            let wall = t.elapsed();
            let cpu = cpu_time(UsageWho::RUSAGE_SELF) - cpu0;
            println!(
                "{:<14} {:>9.0} {:>9.0} {:>12}  (round {round})",
                format!("scan w={w}"),
                wall.as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e3,
                found.bytes.div_ceil(1024)
            );
        }
    }
    if !flag("--keep") {
        let _ = fs::remove_dir_all(&root);
    }
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn bench_usage() {
    let files: u64 = arg("--files")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let calls: u32 = arg("--calls")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let which = arg("--fs").unwrap_or_else(|| "xfs".into());
    let work = std::env::temp_dir().join(format!("rein-bench-usage-{}", std::process::id()));
    fs::create_dir_all(&work).unwrap();
    let mut _mounted = None;
    let base = if let Some(dir) = which.strip_prefix("dir:") {
        PathBuf::from(dir)
    } else {
        let image = work.join("fs.img");
        let (tool, size, args): (&str, u64, &[&str]) = match which.as_str() {
            "xfs" => ("mkfs.xfs", 2 << 30, &["-q", "-f"]),
            _ => ("mkfs.ext4", 2 << 30, &["-q", "-F", "-O", "quota,project"]),
        };
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        assert!(Command::new(tool)
            .args(args)
            .arg(&image)
            .status()
            .unwrap()
            .success());
        let mnt = work.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop,prjquota"])
            .arg(&image)
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting {which} with prjquota failed");
        _mounted = Some(Mounted(mnt.clone()));
        mnt
    };
    let sandbox = base.join("sandbox");
    fs::create_dir_all(&sandbox).unwrap();
    let settings = Settings {
        scan_interval: Duration::from_secs(3600),
        ..Settings::default()
    };
    let store = StateStore::open(&work.join("state"), "disk").unwrap();
    let mut iso = DiskIsolator::new(settings, Arc::new(LinuxKernel), store);
    let spec = ContainerSpec {
        id: ContainerId::top("bench").unwrap(),
        sandbox: sandbox.clone(),
        resources: Resources {
            disk_mb: Some(1_000_000.0),
            ..Resources::default()
        },
        task_labels: vec![("rein.disk.mode".into(), "account".into())],
        ..ContainerSpec::default()
    };
    iso.prepare(&spec).unwrap();
    println!("backend {:?}", iso.backend(&spec.id));
    for target in [0, files] {
        build_tree(&sandbox.join(format!("t{target}")), target);
        iso.poll_now();
        // Settles writeback before timing.
        nix::unistd::sync();
        for round in 0..3 {
            let mut samples = Vec::with_capacity(calls as usize);
            let mut used = None;
            for _ in 0..calls {
                let t = Instant::now();
                used = iso.usage(&spec.id).unwrap().disk_used_bytes;
                samples.push(t.elapsed());
            }
            samples.sort();
            let mean = samples.iter().sum::<Duration>() / calls;
            let p50 = samples[samples.len() / 2];
            let p99 = samples[samples.len() * 99 / 100];
            println!(
                "usage() with {target:>8} files, round {round}: mean {:.2} us, p50 {:.2} us, p99 {:.2} us, used {:?} bytes",
                mean.as_secs_f64() * 1e6,
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                used
            );
        }
    }
    iso.cleanup(&spec.id).unwrap();
    drop(iso);
    drop(_mounted);
    let _ = fs::remove_dir_all(&work);
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("scan") => bench_scan(),
        Some("usage") => bench_usage(),
        _ => eprintln!("usage: bench-disk scan|usage [options] (see the source header)"),
    }
}
