//! The shipper's view of containers the module could not hand to it (see
//! `crate::fallback`): every few seconds the worker reads the records next to
//! its socket, names each new one in a warning (container, sandbox, reason),
//! counts them (`fallback_containers`, a gauge; `fallback_reported`) and
//! removes the record of a container whose sandbox is gone
//! (`fallback_records_removed`). Their lines are not shipped: their output is
//! in their sandbox files only.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::counters::{FALLBACK_CONTAINERS, FALLBACK_RECORDS_REMOVED, FALLBACK_REPORTED};
use crate::fallback::{dir_for, list};

/// How often the records are read.
pub const SCAN_EVERY: Duration = Duration::from_secs(2);

struct Scan {
    last: Option<Instant>,
    reported: BTreeSet<String>,
}

static SCAN: Mutex<Scan> = Mutex::new(Scan {
    last: None,
    reported: BTreeSet::new(),
});

/// Reads the records of the shipper at `socket` if [`SCAN_EVERY`] passed
/// (called from the worker's tick: cheap otherwise).
pub fn tick(socket: &Path) {
    let mut scan = SCAN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if scan.last.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
        return;
    }
    scan.last = Some(Instant::now());
    let mut present = 0u64;
    for (path, rec) in list(&dir_for(socket)) {
        if std::fs::symlink_metadata(&rec.sandbox)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            if std::fs::remove_file(&path).is_ok() {
                FALLBACK_RECORDS_REMOVED.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    container = rec.key,
                    "the sandbox of a fallen-back container is gone: its record is removed"
                );
            }
            continue;
        }
        present += 1;
        if scan.reported.insert(rec.key.clone()) {
            FALLBACK_REPORTED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                container = rec.key,
                sandbox = %rec.sandbox.display(),
                at_ms = rec.at_ms,
                "container not handed to the shipper ({}): its output is in its sandbox files only, not shipped",
                rec.reason
            );
        }
    }
    FALLBACK_CONTAINERS.store(present, Ordering::Relaxed);
}
