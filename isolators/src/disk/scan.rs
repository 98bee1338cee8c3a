//! The scanning fallback: disk usage of sandboxes on filesystems without project
//! quotas, measured in-process, without forking `du`.
//!
//! A fixed number of worker threads share one stack of directories from every tree
//! being scanned, so several sandboxes are scanned concurrently and at most
//! `workers` system calls are in flight at once (bounded I/O), whatever the number
//! of containers. The walk counts allocated blocks like `du -s` (sparse files count
//! what they occupy), counts a file with several hard links once per tree, never
//! follows symlinks, stays on the tree's filesystem, and treats entries that vanish
//! or change type during the walk as gone. Directories are opened relative to their
//! parent's descriptor with `O_NOFOLLOW`, so a container swapping a directory for a
//! symlink cannot send the walk outside its sandbox.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

/// What a scan found in one tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Allocated bytes (512-byte blocks as `stat` reports them), as `du -s -B1`.
    pub bytes: u64,
    /// Non-directory entries counted (each hard-linked inode once).
    pub files: u64,
    /// Directories counted.
    pub dirs: u64,
    /// Entries that vanished or could not be read during the walk.
    pub skipped: u64,
}

/// How to scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Worker threads (and so the most system calls in flight at once).
    pub workers: usize,
    /// Run the workers at a low CPU and I/O priority (nice 10, best-effort level 7),
    /// so scans give way to the containers' own work.
    pub low_priority: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            low_priority: true,
        }
    }
}

/// One tree's running totals.
struct Job {
    dev: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    dirs: AtomicU64,
    skipped: AtomicU64,
    /// Inodes with more than one link already counted.
    linked: Mutex<HashSet<u64>>,
}

enum Where {
    /// A tree's root, already open.
    Root(OwnedFd),
    /// A directory to open relative to its parent.
    Child(Arc<OwnedFd>, CString),
}

struct Item {
    job: usize,
    at: Where,
}

struct Queue {
    items: Vec<Item>,
    /// Items queued or being processed; the scan is over when it reaches 0.
    pending: usize,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn adopt(raw: i32) -> OwnedFd {
    // SAFETY: the caller passes a descriptor just returned by the kernel that nothing
    // else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn allocated(stat: &FileStat) -> u64 {
    u64::try_from(stat.st_blocks).unwrap_or(0) * 512
}

/// Scans one tree.
pub fn scan(root: &Path, options: ScanOptions) -> io::Result<ScanResult> {
    scan_many(&[root.to_owned()], options)
        .pop()
        .unwrap_or_else(|| Err(io::Error::other("no result")))
}

/// Scans several trees concurrently on one bounded set of workers; results come in
/// the order of `roots`.
pub fn scan_many(roots: &[PathBuf], options: ScanOptions) -> Vec<io::Result<ScanResult>> {
    let mut results: Vec<Option<io::Result<ScanResult>>> = Vec::with_capacity(roots.len());
    let mut jobs = Vec::with_capacity(roots.len());
    let mut items = Vec::new();
    for root in roots {
        let opened = nix::fcntl::open(root.as_path(), DIR_FLAGS, Mode::empty())
            .map(adopt)
            .and_then(|fd| Ok((nix::sys::stat::fstat(fd.as_raw_fd())?, fd)));
        match opened {
            Ok((stat, fd)) => {
                items.push(Item {
                    job: jobs.len(),
                    at: Where::Root(fd),
                });
                jobs.push(Job {
                    dev: stat.st_dev,
                    bytes: AtomicU64::new(0),
                    files: AtomicU64::new(0),
                    dirs: AtomicU64::new(0),
                    skipped: AtomicU64::new(0),
                    linked: Mutex::new(HashSet::new()),
                });
                results.push(None);
            }
            Err(err) => {
                // Keep the job index aligned with a placeholder that is never queued.
                jobs.push(Job {
                    dev: 0,
                    bytes: AtomicU64::new(0),
                    files: AtomicU64::new(0),
                    dirs: AtomicU64::new(0),
                    skipped: AtomicU64::new(0),
                    linked: Mutex::new(HashSet::new()),
                });
                results.push(Some(Err(io::Error::new(
                    io::Error::from(err).kind(),
                    format!("opening {} to scan it: {err}", root.display()),
                ))));
            }
        }
    }
    let queue = Mutex::new(Queue {
        pending: items.len(),
        items,
    });
    let ready = Condvar::new();
    let workers = options.workers.clamp(1, 64);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                if options.low_priority {
                    lower_priority();
                }
                work(&queue, &ready, &jobs);
            });
        }
    });
    results
        .into_iter()
        .zip(&jobs)
        .map(|(result, job)| {
            result.unwrap_or_else(|| {
                Ok(ScanResult {
                    bytes: job.bytes.load(Ordering::Relaxed),
                    files: job.files.load(Ordering::Relaxed),
                    dirs: job.dirs.load(Ordering::Relaxed),
                    skipped: job.skipped.load(Ordering::Relaxed),
                })
            })
        })
        .collect()
}

/// Lowers the calling thread's CPU and I/O priority; failures are harmless.
fn lower_priority() {
    let Ok(tid) = libc::id_t::try_from(nix::unistd::gettid().as_raw()) else {
        return;
    };
    // SAFETY: plain syscalls on the calling thread's own id; no memory is passed
    // (nix wraps neither setpriority nor ioprio_set).
    unsafe {
        // On Linux, PRIO_PROCESS with a thread id applies to that thread only.
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        // IOPRIO_WHO_PROCESS = 1; class best-effort (2) << 13 | level 7.
        libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

fn work(queue: &Mutex<Queue>, ready: &Condvar, jobs: &[Job]) {
    loop {
        let item = {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(item) = q.items.pop() {
                    break item;
                }
                if q.pending == 0 {
                    return;
                }
                q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let found = visit(item, jobs);
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        q.pending = q.pending + found.len() - 1;
        let done = q.pending == 0;
        let more = !found.is_empty();
        q.items.extend(found);
        drop(q);
        if done || more {
            ready.notify_all();
        }
    }
}

/// Counts one directory and its non-directory entries; returns its subdirectories.
fn visit(item: Item, jobs: &[Job]) -> Vec<Item> {
    let job = &jobs[item.job];
    let dir = match item.at {
        Where::Root(fd) => fd,
        Where::Child(parent, name) => {
            match nix::fcntl::openat(
                Some(parent.as_raw_fd()),
                name.as_c_str(),
                DIR_FLAGS,
                Mode::empty(),
            ) {
                Ok(raw) => adopt(raw),
                Err(_) => {
                    // Removed, replaced by a file or a symlink, or unreadable.
                    job.skipped.fetch_add(1, Ordering::Relaxed);
                    return Vec::new();
                }
            }
        }
    };
    let Ok(stat) = nix::sys::stat::fstat(dir.as_raw_fd()) else {
        job.skipped.fetch_add(1, Ordering::Relaxed);
        return Vec::new();
    };
    if stat.st_dev != job.dev {
        // A mount point: another filesystem, not this sandbox's usage.
        return Vec::new();
    }
    let mut bytes = allocated(&stat);
    let (mut files, mut skipped) = (0u64, 0u64);
    let mut subdirs = Vec::new();
    // Entries are read through a duplicate descriptor and stat'ed through the
    // original while the listing streams: no per-file allocation.
    let mut listing = match nix::unistd::dup(dir.as_raw_fd()).and_then(Dir::from_fd) {
        Ok(listing) => listing,
        Err(_) => {
            job.skipped.fetch_add(1, Ordering::Relaxed);
            job.bytes.fetch_add(bytes, Ordering::Relaxed);
            job.dirs.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
    };
    for entry in listing.iter() {
        let Ok(entry) = entry else {
            skipped += 1;
            break;
        };
        let name = entry.file_name();
        let raw = name.to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        if entry.file_type() == Some(Type::Directory) {
            subdirs.push(name.to_owned());
            continue;
        }
        let Ok(stat) =
            nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            skipped += 1;
            continue;
        };
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // The filesystem gave no type, or a file became a directory.
            subdirs.push(name.to_owned());
            continue;
        }
        if stat.st_dev != job.dev {
            continue;
        }
        if stat.st_nlink > 1 {
            let mut linked = job.linked.lock().unwrap_or_else(|e| e.into_inner());
            if !linked.insert(stat.st_ino) {
                continue;
            }
        }
        bytes += allocated(&stat);
        files += 1;
    }
    drop(listing);
    let dir = Arc::new(dir);
    job.bytes.fetch_add(bytes, Ordering::Relaxed);
    job.files.fetch_add(files, Ordering::Relaxed);
    job.dirs.fetch_add(1, Ordering::Relaxed);
    if skipped > 0 {
        job.skipped.fetch_add(skipped, Ordering::Relaxed);
    }
    subdirs
        .into_iter()
        .map(|name| Item {
            job: item.job,
            at: Where::Child(Arc::clone(&dir), name),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Seek, SeekFrom, Write};

    fn opts() -> ScanOptions {
        ScanOptions {
            workers: 3,
            low_priority: false,
        }
    }

    fn du_bytes(path: &Path) -> u64 {
        // Reference: the same sum computed with std, single-threaded.
        let mut total = 0;
        let mut seen = HashSet::new();
        let mut stack = vec![path.to_owned()];
        while let Some(p) = stack.pop() {
            let meta = fs::symlink_metadata(&p).unwrap();
            use std::os::unix::fs::MetadataExt;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
        }
        total
    }

    #[test]
    fn counts_blocks_links_once_and_ignores_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/one"), vec![1u8; 10_000]).unwrap();
        fs::write(root.join("a/b/c/two"), vec![2u8; 100_000]).unwrap();
        fs::hard_link(root.join("a/b/c/two"), root.join("a/two-again")).unwrap();
        // A big file outside the tree, reachable only through a symlink.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![3u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("a/escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), root.join("a/big-link")).unwrap();
        // A sparse file: 1 GiB apparent, one 4 KiB block written.
        let mut sparse = fs::File::create(root.join("sparse")).unwrap();
        sparse.seek(SeekFrom::Start(1 << 30)).unwrap();
        sparse.write_all(&[1u8; 4096]).unwrap();
        drop(sparse);

        let got = scan(root, opts()).unwrap();
        assert_eq!(got.bytes, du_bytes(root));
        assert!(
            got.bytes < 1_000_000,
            "followed a symlink or counted sparse size: {got:?}"
        );
        assert!(got.bytes >= 110_000, "{got:?}");
        // one, two (once), sparse, two symlinks.
        assert_eq!(got.files, 5);
        assert_eq!(got.dirs, 4);
        assert_eq!(got.skipped, 0);
    }

    #[test]
    fn scans_many_trees_and_reports_missing_ones() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let sub = a.path().join(format!("d{}", i % 7));
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join(format!("f{i}")), vec![0u8; 5000]).unwrap();
        }
        fs::write(b.path().join("x"), b"hello").unwrap();
        let roots = vec![
            a.path().to_owned(),
            PathBuf::from("/nonexistent/rein-scan"),
            b.path().to_owned(),
        ];
        let results = scan_many(&roots, opts());
        assert_eq!(results.len(), 3);
        let ra = results[0].as_ref().unwrap();
        assert_eq!(ra.files, 50);
        assert_eq!(ra.bytes, du_bytes(a.path()));
        let err = results[1].as_ref().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rein-scan"), "{err}");
        assert_eq!(results[2].as_ref().unwrap().files, 1);
    }

    #[test]
    fn root_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("link")).unwrap();
        assert!(scan(&dir.path().join("link"), opts()).is_err());
    }
}
