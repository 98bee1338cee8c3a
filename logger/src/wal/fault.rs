//! Fault injection at the buffer's exact `pwrite`, `fdatasync` and
//! `ftruncate` calls, for tests: a plan set here is asked before each call
//! (with the file's path, so that a test only hurts its own buffer). Nothing
//! sets a plan outside tests; unarmed, a check is one atomic load.
//!
//! The buffer makes those calls only through [`write_all_at`], [`sync_file`]
//! and [`truncate`] below, so every one of them can be made to fail.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;

/// The call about to be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `pwrite` of frames.
    Write,
    /// `fdatasync` of a segment.
    Sync,
    /// `ftruncate` cutting a failed write off.
    Truncate,
}

/// What happens instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with this error and does nothing.
    Errno(Errno),
    /// A write stores only this many bytes and reports them (a short write).
    Short(usize),
}

type Plan = Box<dyn FnMut(Op, &Path) -> Option<Fault> + Send>;
static ARMED: AtomicBool = AtomicBool::new(false);
static PLAN: Mutex<Option<Plan>> = Mutex::new(None);

/// Installs `plan` (replacing any other).
pub fn set(plan: impl FnMut(Op, &Path) -> Option<Fault> + Send + 'static) {
    *PLAN.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(plan));
    ARMED.store(true, Ordering::Release);
}

/// Removes the plan.
pub fn clear() {
    ARMED.store(false, Ordering::Release);
    *PLAN.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Installs the plan of `$REIN_WAL_FAULTS`, in debug builds only (the
/// fault tests run the real shipper binary): comma-separated rules
/// `op:fault:skip:count` (op `write`, `sync` or `truncate`; fault an errno
/// name `eio`, `enospc`, `erofs` or `shortN`, a write of N bytes) that hit
/// calls `skip..skip+count` of that op on any buffer (the first rule that
/// matches wins). A malformed plan is a panic: it is a test's mistake.
pub(super) fn from_env() {
    #[cfg(debug_assertions)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let Ok(spec) = std::env::var("REIN_WAL_FAULTS") else {
                return;
            };
            let rules: Vec<(Op, Fault, u64, u64)> = spec
                .split(',')
                .filter(|r| !r.is_empty())
                .map(|r| parse_rule(r).unwrap_or_else(|| panic!("REIN_WAL_FAULTS: bad rule `{r}`")))
                .collect();
            tracing::warn!("disk buffer faults injected: {spec}");
            let mut seen = std::collections::HashMap::new();
            set(move |op, _| {
                let n = seen.entry(op).or_insert(0u64);
                *n += 1;
                let k = *n - 1;
                rules
                    .iter()
                    .find(|r| r.0 == op && (r.2..r.2 + r.3).contains(&k))
                    .map(|r| r.1)
            });
        });
    }
}

#[cfg(debug_assertions)]
fn parse_rule(r: &str) -> Option<(Op, Fault, u64, u64)> {
    let mut it = r.split(':');
    let op = match it.next()? {
        "write" => Op::Write,
        "sync" => Op::Sync,
        "truncate" => Op::Truncate,
        _ => return None,
    };
    let fault = match it.next()? {
        "eio" => Fault::Errno(Errno::EIO),
        "enospc" => Fault::Errno(Errno::ENOSPC),
        "erofs" => Fault::Errno(Errno::EROFS),
        f => Fault::Short(f.strip_prefix("short")?.parse().ok()?),
    };
    let skip = it.next()?.parse().ok()?;
    let count = it.next()?.parse().ok()?;
    it.next().is_none().then_some((op, fault, skip, count))
}

fn check(op: Op, path: &Path) -> Option<Fault> {
    if !ARMED.load(Ordering::Acquire) {
        return None;
    }
    PLAN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|p| p(op, path))
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `pwrite` of `data` at `off` (one call: the count may be short).
fn write_at(f: &File, path: &Path, data: &[u8], off: u64) -> io::Result<usize> {
    match check(Op::Write, path) {
        Some(Fault::Errno(e)) => Err(errno(e)),
        Some(Fault::Short(n)) => f.write_at(&data[..n.min(data.len())], off),
        None => f.write_at(data, off),
    }
}

/// Writes all of `data` at `off`, resuming after short writes.
pub(super) fn write_all_at(f: &File, path: &Path, data: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match write_at(f, path, &data[done..], off + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `fdatasync` of a segment.
pub(super) fn sync_file(f: &File, path: &Path) -> io::Result<()> {
    match check(Op::Sync, path) {
        Some(Fault::Errno(e)) => Err(errno(e)),
        _ => f.sync_data(),
    }
}

/// `ftruncate` of a segment to `len`.
pub(super) fn truncate(f: &File, path: &Path, len: u64) -> io::Result<()> {
    match check(Op::Truncate, path) {
        Some(Fault::Errno(e)) => Err(errno(e)),
        _ => f.set_len(len),
    }
}
