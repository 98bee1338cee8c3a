//! Per-container state for `recover()`.
//!
//! Mesos hands `recover()` no labels and no task: whatever an isolator decided at
//! `prepare()` must be on disk. One JSON file per container and isolator, written
//! atomically (temporary file, then rename), so an agent crash leaves either the old
//! or the new record, never a torn one.
//!
//! Records carry the kernel's boot id. Containers never survive a reboot, so a
//! record from an earlier boot is stale and is discarded on load; that is also why
//! no fsync is needed (it would cost milliseconds per container on a disk-backed
//! state directory): the page cache outlives any agent crash, and only a machine
//! crash loses it, which the boot id turns into "no containers", as it should.
//! Nor is the writeback started early ([`AtomicFile::until_reboot`]): a record
//! lives for one container, and one that never reaches the disk costs no block
//! allocation, no I/O and no discard when it is removed. A machine crash may leave
//! an empty record, which is one of an earlier boot too: a record that does not
//! parse and was last written before this boot is discarded like the others.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic_file::AtomicFile;
use crate::container::ContainerId;

/// A state store error, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A state file did not parse.
    #[error("corrupt state file {path}: {source}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// The kernel's boot id (empty where the kernel does not offer one).
pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// When this boot began, from `/proc/stat` (`None` where it cannot be read).
fn booted_at() -> Option<SystemTime> {
    static BOOTED_AT: OnceLock<Option<SystemTime>> = OnceLock::new();
    *BOOTED_AT.get_or_init(|| {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let secs: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    })
}

/// Whether `path` was last written before this boot began (a minute's margin for
/// the boot time's rounding and clock steps); `false` when unknown.
fn written_before_boot(path: &Path) -> bool {
    let (Some(booted), Ok(meta)) = (booted_at(), fs::symlink_metadata(path)) else {
        return false;
    };
    meta.modified()
        .is_ok_and(|written| written + Duration::from_secs(60) < booted)
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    boot_id: &'a str,
    record: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    boot_id: String,
    record: T,
}

thread_local! {
    /// Records whose removal [`defer_removals`] put off, on this thread.
    static DEFERRED: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
    /// Records whose writing [`defer_saves`] put off, on this thread.
    static DEFERRED_SAVES: RefCell<Option<Vec<Save>>> = const { RefCell::new(None) };
}

/// A record to write: its file, the temporary file it is written through, and
/// the encoded envelope.
#[derive(Debug)]
struct Save {
    path: PathBuf,
    temp: PathBuf,
    bytes: Vec<u8>,
}

/// Runs `work` with [`StateStore::save`] only noting what to write, and returns
/// the records with `work`'s result, for the caller to write once it has answered
/// ([`Saves::run`]), on the same thread and before the module's next call, so that
/// creating a file on a busy disk is not part of the answer. Safe where the
/// record follows the kernel objects it describes (an agent crash between the two
/// leaves objects without a record either way), provided the container's next
/// call fails when the writing did. Inside the work, [`StateStore::load`] sees a
/// noted record and [`StateStore::remove`] forgets it.
pub fn defer_saves<R>(work: impl FnOnce() -> R) -> (R, Saves) {
    let (result, noted) = noting(&DEFERRED_SAVES, work);
    (result, Saves(noted))
}

/// Runs `work` with `list` (one of this thread's lists of deferred work) set, and
/// returns what it noted there; the list around this one (none, usually) is put
/// back afterwards, also if `work` panics.
fn noting<T: 'static, R>(
    list: &'static std::thread::LocalKey<RefCell<Option<Vec<T>>>>,
    work: impl FnOnce() -> R,
) -> (R, Vec<T>) {
    struct Scope<T: 'static> {
        list: &'static std::thread::LocalKey<RefCell<Option<Vec<T>>>>,
        outer: Option<Vec<T>>,
    }
    impl<T: 'static> Drop for Scope<T> {
        fn drop(&mut self) {
            let outer = self.outer.take();
            self.list.with(|d| *d.borrow_mut() = outer);
        }
    }
    let scope = Scope {
        list,
        outer: list.with(|d| d.borrow_mut().replace(Vec::new())),
    };
    let result = work();
    let noted = list.with(|d| d.borrow_mut().take()).unwrap_or_default();
    drop(scope);
    (result, noted)
}

/// Records whose writing was deferred ([`defer_saves`]).
#[derive(Debug, Default)]
#[must_use = "the records are not on disk until `run` writes them"]
pub struct Saves(Vec<Save>);

impl Saves {
    /// Writes the records in the order they were saved; returns those that could
    /// not be written, with the reason (each leaves its previous record, if any).
    pub fn run(self) -> Vec<StateError> {
        self.0
            .into_iter()
            .filter_map(|save| write_record(&save).err())
            .collect()
    }

    /// How many records wait.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn write_record(save: &Save) -> Result<(), StateError> {
    AtomicFile::new(&save.path)
        .temp(save.temp.clone())
        .until_reboot()
        .write(&save.bytes)
        .map(drop)
        .map_err(|e| StateError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
}

/// Notes `save` inside [`defer_saves`] (replacing an earlier one of the same
/// file); gives it back to be written now outside.
fn noted_for_saving(save: Save) -> Option<Save> {
    DEFERRED_SAVES.with(|d| match d.borrow_mut().as_mut() {
        Some(noted) => {
            noted.retain(|s| s.path != save.path);
            noted.push(save);
            None
        }
        None => Some(save),
    })
}

/// The record noted for `path` inside [`defer_saves`], if any.
fn noted_save(path: &Path) -> Option<Vec<u8>> {
    DEFERRED_SAVES.with(|d| {
        d.borrow()
            .as_ref()
            .and_then(|noted| noted.iter().find(|s| s.path == path))
            .map(|s| s.bytes.clone())
    })
}

/// Forgets a record noted for `path` (it is being removed).
fn forget_save(path: &Path) {
    DEFERRED_SAVES.with(|d| {
        if let Some(noted) = d.borrow_mut().as_mut() {
            noted.retain(|s| s.path != path);
        }
    });
}

/// Runs `work` with [`StateStore::remove`] only noting the files to remove, and
/// returns them with `work`'s result, for the caller to remove once it has answered
/// ([`Removals::run`], on any thread), so that an unlink on a busy disk is not part
/// of the answer. That is safe wherever a record left behind is already handled: a
/// crash before the removal leaves a record of a container the agent no longer
/// knows, which `recover()` releases, as after a crash just before the call. A
/// record saved again before the removal runs is kept.
pub fn defer_removals<R>(work: impl FnOnce() -> R) -> (R, Removals) {
    let (result, noted) = noting(&DEFERRED, work);
    lock_pending().waiting.extend(noted.iter().cloned());
    (result, Removals(noted))
}

/// Deferred removals across threads: a save takes its file out of `waiting`, so a
/// removal running later leaves the new record alone, and waits for one `running`
/// (never for another file's: an unlink on a busy disk is slow).
struct Pending {
    waiting: BTreeSet<PathBuf>,
    running: BTreeSet<PathBuf>,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    waiting: BTreeSet::new(),
    running: BTreeSet::new(),
});
static REMOVED: Condvar = Condvar::new();

fn lock_pending() -> MutexGuard<'static, Pending> {
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until every removal deferred so far in this process has run (or its file
/// was saved again), at most `timeout`; returns whether none is left. A short-lived
/// process calls it before it exits: the answer it waited for is delivered before
/// the removal runs, so without it a record would be left for the next `recover()`.
pub fn wait_for_deferred_removals(timeout: Duration) -> bool {
    let (_pending, waited) = REMOVED
        .wait_timeout_while(lock_pending(), timeout, |pending| {
            !(pending.waiting.is_empty() && pending.running.is_empty())
        })
        .unwrap_or_else(PoisonError::into_inner);
    !waited.timed_out()
}

/// Record files whose removal was deferred ([`defer_removals`]).
#[derive(Debug, Default)]
#[must_use = "the records stay on disk until `run` removes them"]
pub struct Removals(Vec<PathBuf>);

impl Removals {
    /// Removes the files; returns those that could not be removed (a missing one is
    /// not an error), with the reason.
    pub fn run(self) -> Vec<StateError> {
        self.0
            .into_iter()
            .filter_map(|path| {
                let mut pending = lock_pending();
                if !pending.waiting.remove(&path) {
                    return None; // saved again since (which woke the waiters)
                }
                pending.running.insert(path.clone());
                drop(pending);
                let result = remove_file(path.clone());
                lock_pending().running.remove(&path);
                REMOVED.notify_all();
                result.err()
            })
            .collect()
    }

    /// How many files wait.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn remove_file(path: PathBuf) -> Result<(), StateError> {
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            op: "removing",
            path,
            source,
        }),
    }
}

/// Whether the removal of `path` was noted, rather than done.
fn noted_for_removal(path: &Path) -> bool {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(noted) => {
            noted.push(path.to_owned());
            true
        }
        None => false,
    })
}

/// Forgets a deferred removal of `path` (it is being saved again).
fn keep(path: &Path) {
    DEFERRED.with(|d| {
        if let Some(noted) = d.borrow_mut().as_mut() {
            noted.retain(|p| p != path);
        }
    });
    let mut pending = lock_pending();
    if pending.waiting.remove(path) {
        REMOVED.notify_all();
    }
    while pending.running.contains(path) {
        pending = REMOVED
            .wait(pending)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// What [`StateStore::scan`] found: the records it could read, and the files it
/// could not.
#[derive(Debug)]
pub struct Scan<T> {
    /// Readable records of this boot, by container.
    pub records: Vec<(ContainerId, T)>,
    /// Files that could not be read or parsed.
    pub unreadable: Vec<Unreadable>,
}

/// A state file that could not be read or parsed, and its container.
#[derive(Debug)]
pub struct Unreadable {
    /// The container the file is named after.
    pub id: ContainerId,
    /// Why it could not be read.
    pub error: StateError,
}

/// A directory of per-container records of one isolator.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

const SUFFIX: &str = ".json";

impl StateStore {
    /// Opens (creating) `<root>/<isolator>`.
    pub fn open(root: &Path, isolator: &str) -> Result<Self, StateError> {
        let dir = root.join(isolator);
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &ContainerId) -> PathBuf {
        self.dir.join(format!("{}{SUFFIX}", id.file_name()))
    }

    /// Writes a container's record atomically (inside [`defer_saves`], notes it).
    pub fn save<T: Serialize>(&self, id: &ContainerId, record: &T) -> Result<(), StateError> {
        let path = self.path_of(id);
        let io_err = |op, source| StateError::Io {
            op,
            path: path.clone(),
            source,
        };
        let envelope = EnvelopeOut {
            boot_id: boot_id(),
            record,
        };
        let bytes =
            serde_json::to_vec(&envelope).map_err(|e| io_err("encoding", io::Error::other(e)))?;
        let temp = self.dir.join(format!(".{}.tmp", id.file_name()));
        keep(&path);
        match noted_for_saving(Save { path, temp, bytes }) {
            Some(now) => write_record(&now),
            None => Ok(()),
        }
    }

    /// Reads one container's record, if there is one from this boot (a record from
    /// an earlier boot is removed).
    pub fn load<T: DeserializeOwned>(&self, id: &ContainerId) -> Result<Option<T>, StateError> {
        let path = self.path_of(id);
        match noted_save(&path).map_or_else(|| fs::read(&path), Ok) {
            Ok(bytes) => {
                let envelope: EnvelopeIn<T> = match serde_json::from_slice(&bytes) {
                    Ok(envelope) => envelope,
                    Err(_) if written_before_boot(&path) => {
                        tracing::info!(path = %path.display(), "discarding an unreadable state file from an earlier boot");
                        self.remove(id)?;
                        return Ok(None);
                    }
                    Err(source) => {
                        return Err(StateError::Corrupt {
                            path: path.clone(),
                            source,
                        })
                    }
                };
                if envelope.boot_id != boot_id() {
                    tracing::info!(path = %path.display(), "discarding state from an earlier boot");
                    self.remove(id)?;
                    return Ok(None);
                }
                Ok(Some(envelope.record))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Reads every record; the first file that cannot be read or parsed fails the
    /// whole load. Leftover temporary files of an interrupted write are removed.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Vec<(ContainerId, T)>, StateError> {
        let scan = self.scan()?;
        match scan.unreadable.into_iter().next() {
            Some(bad) => Err(bad.error),
            None => Ok(scan.records),
        }
    }

    /// Reads every record, keeping going past files that cannot be read or parsed
    /// (each is returned with its container and error, and left in place for the
    /// container's cleanup to remove); fails only if the directory cannot be listed.
    /// Leftover temporary files of an interrupted write are removed.
    pub fn scan<T: DeserializeOwned>(&self) -> Result<Scan<T>, StateError> {
        let read_dir = fs::read_dir(&self.dir).map_err(|source| StateError::Io {
            op: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Scan {
            records: Vec::new(),
            unreadable: Vec::new(),
        };
        for entry in read_dir {
            let entry = entry.map_err(|source| StateError::Io {
                op: "listing",
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = name
                .strip_suffix(SUFFIX)
                .and_then(ContainerId::from_file_name)
            else {
                continue;
            };
            match self.load(&id) {
                Ok(Some(record)) => out.records.push((id, record)),
                Ok(None) => {}
                Err(error) => out.unreadable.push(Unreadable { id, error }),
            }
        }
        out.records.sort_by(|a, b| a.0.cmp(&b.0));
        out.unreadable.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes a container's record; a missing record is not an error. Inside
    /// [`defer_removals`], only notes it; inside [`defer_saves`], also forgets a
    /// record noted there.
    pub fn remove(&self, id: &ContainerId) -> Result<(), StateError> {
        let path = self.path_of(id);
        forget_save(&path);
        if noted_for_removal(&path) {
            return Ok(());
        }
        remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        handle: u32,
    }

    #[test]
    fn deferred_removals_happen_when_run_and_a_record_saved_again_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "iso").unwrap();
        let (gone, kept) = (
            ContainerId::top("gone").unwrap(),
            ContainerId::top("kept").unwrap(),
        );
        store.save(&gone, &Rec { handle: 1 }).unwrap();
        store.save(&kept, &Rec { handle: 2 }).unwrap();
        let ((), removals) = defer_removals(|| {
            store.remove(&gone).unwrap();
            store.remove(&kept).unwrap();
            store.save(&kept, &Rec { handle: 3 }).unwrap();
        });
        assert_eq!(removals.len(), 1);
        assert!(store.path_of(&gone).exists(), "removed before being run");
        assert!(removals.run().is_empty());
        assert!(!store.path_of(&gone).exists());
        assert_eq!(store.load::<Rec>(&kept).unwrap(), Some(Rec { handle: 3 }));
        // A record saved again after the deferral, before its removal runs, stays.
        let ((), late) = defer_removals(|| store.remove(&kept).unwrap());
        store.save(&kept, &Rec { handle: 4 }).unwrap();
        assert!(late.run().is_empty());
        assert_eq!(store.load::<Rec>(&kept).unwrap(), Some(Rec { handle: 4 }));
        // Outside a deferral, removal is immediate again.
        store.remove(&kept).unwrap();
        assert!(!store.path_of(&kept).exists());
    }

    #[test]
    fn deferred_saves_are_written_when_run_read_back_inside_and_forgotten_by_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "iso").unwrap();
        let (a, b, gone) = (
            ContainerId::top("a").unwrap(),
            ContainerId::top("b").unwrap(),
            ContainerId::top("gone").unwrap(),
        );
        store.save(&b, &Rec { handle: 1 }).unwrap();
        let ((), saves) = defer_saves(|| {
            store.save(&a, &Rec { handle: 2 }).unwrap();
            store.save(&a, &Rec { handle: 3 }).unwrap();
            store.save(&b, &Rec { handle: 4 }).unwrap();
            store.save(&gone, &Rec { handle: 5 }).unwrap();
            store.remove(&gone).unwrap();
            assert_eq!(store.load::<Rec>(&a).unwrap(), Some(Rec { handle: 3 }));
        });
        assert_eq!(saves.len(), 2, "{saves:?}");
        assert!(!store.path_of(&a).exists(), "written before being run");
        assert_eq!(store.load::<Rec>(&b).unwrap(), Some(Rec { handle: 1 }));
        assert!(saves.run().is_empty());
        assert_eq!(store.load::<Rec>(&a).unwrap(), Some(Rec { handle: 3 }));
        assert_eq!(store.load::<Rec>(&b).unwrap(), Some(Rec { handle: 4 }));
        assert!(!store.path_of(&gone).exists());
        // Outside a deferral, saving is immediate again.
        store.save(&gone, &Rec { handle: 6 }).unwrap();
        assert!(store.path_of(&gone).exists());
    }

    #[test]
    fn a_deferred_save_that_cannot_be_written_is_returned_and_the_old_record_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "iso").unwrap();
        let id = ContainerId::top("a").unwrap();
        store.save(&id, &Rec { handle: 1 }).unwrap();
        let ((), saves) = defer_saves(|| store.save(&id, &Rec { handle: 2 }).unwrap());
        // The temporary file's name taken by a directory: the write fails.
        fs::create_dir(store.dir().join(".a.tmp")).unwrap();
        let errors = saves.run();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains(".a.tmp"), "{}", errors[0]);
        assert_eq!(store.load::<Rec>(&id).unwrap(), Some(Rec { handle: 1 }));
    }

    #[test]
    fn waiting_for_deferred_removals_sees_those_not_yet_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "iso").unwrap();
        let id = ContainerId::top("late").unwrap();
        store.save(&id, &Rec { handle: 1 }).unwrap();
        let ((), removals) = defer_removals(|| store.remove(&id).unwrap());
        // Not handed to anything yet: the wait must not report it done.
        assert!(!wait_for_deferred_removals(Duration::from_millis(50)));
        let path = store.path_of(&id);
        let remover = std::thread::spawn(move || removals.run());
        assert!(wait_for_deferred_removals(Duration::from_secs(30)));
        assert!(!path.exists(), "the wait returned before the removal");
        assert!(remover.join().unwrap().is_empty());
    }

    #[test]
    fn save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "net_cls").unwrap();
        let a = ContainerId::top("a").unwrap();
        let b = ContainerId::new(["a", "b"]).unwrap();
        store.save(&a, &Rec { handle: 1 }).unwrap();
        store.save(&b, &Rec { handle: 2 }).unwrap();
        store.save(&a, &Rec { handle: 3 }).unwrap();
        assert_eq!(store.load::<Rec>(&a).unwrap(), Some(Rec { handle: 3 }));
        let all: Vec<(ContainerId, Rec)> = store.load_all().unwrap();
        assert_eq!(
            all,
            vec![
                (a.clone(), Rec { handle: 3 }),
                (b.clone(), Rec { handle: 2 })
            ]
        );
        store.remove(&a).unwrap();
        store.remove(&a).unwrap();
        assert_eq!(store.load::<Rec>(&a).unwrap(), None);
    }

    #[test]
    fn records_from_an_earlier_boot_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "x").unwrap();
        fs::write(
            store.dir().join("a.json"),
            br#"{"boot_id":"another-boot","record":{"handle":1}}"#,
        )
        .unwrap();
        assert!(store.load_all::<Rec>().unwrap().is_empty());
        assert!(!store.dir().join("a.json").exists());
    }

    #[test]
    fn an_unreadable_record_written_before_this_boot_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "x").unwrap();
        // What a machine crash leaves of a record whose data never reached the disk.
        let path = store.dir().join("a.json");
        fs::write(&path, b"").unwrap();
        let before_boot = booted_at().unwrap() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(before_boot)
            .unwrap();
        assert!(store.load_all::<Rec>().unwrap().is_empty());
        assert!(!path.exists());
        // The same written in this boot is reported.
        fs::write(&path, b"").unwrap();
        let err = store.load_all::<Rec>().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn torn_temp_files_are_ignored_and_corruption_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "x").unwrap();
        fs::write(store.dir().join(".a.tmp"), b"{\"hand").unwrap();
        assert!(store.load_all::<Rec>().unwrap().is_empty());
        assert!(!store.dir().join(".a.tmp").exists());
        fs::write(store.dir().join("a.json"), b"{\"hand").unwrap();
        let err = store.load_all::<Rec>().unwrap_err();
        assert!(err.to_string().contains("a.json"), "{err}");
    }

    #[test]
    fn scan_reads_past_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "x").unwrap();
        let ids: Vec<ContainerId> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| ContainerId::top(n).unwrap())
            .collect();
        for (n, id) in ids.iter().enumerate() {
            store
                .save(
                    id,
                    &Rec {
                        handle: u32::try_from(n).unwrap(),
                    },
                )
                .unwrap();
        }
        // Truncated, not JSON at all, and a directory where the file should be.
        fs::write(store.dir().join("b.json"), b"{\"boot_id\":\"x\",\"rec").unwrap();
        fs::write(store.dir().join("c.json"), b"\0\0\0").unwrap();
        fs::remove_file(store.dir().join("d.json")).unwrap();
        fs::create_dir(store.dir().join("d.json")).unwrap();
        let scan = store.scan::<Rec>().unwrap();
        assert_eq!(scan.records, vec![(ids[0].clone(), Rec { handle: 0 })]);
        let bad: Vec<&ContainerId> = scan.unreadable.iter().map(|u| &u.id).collect();
        assert_eq!(bad, vec![&ids[1], &ids[2], &ids[3]]);
        assert!(matches!(
            scan.unreadable[0].error,
            StateError::Corrupt { .. }
        ));
        assert!(matches!(scan.unreadable[2].error, StateError::Io { .. }));
        // Left in place for the container's cleanup.
        assert!(store.dir().join("b.json").exists());
        store.remove(&ids[1]).unwrap();
        assert!(!store.dir().join("b.json").exists());
    }
}
