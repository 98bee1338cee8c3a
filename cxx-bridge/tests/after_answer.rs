//! Work the bridge does after answering: `cleanup()` is answered before the
//! isolator's work runs (its outcome goes to the second completer), and the state
//! records `prepare()` saves are written after its answer, the container's next
//! call failing if they could not be.

use std::fs;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rein_core::isolator::Error;
use rein_core::state::StateStore;
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer};
use rein_modules::{ContainerChain, ContainerConfigView, IsolatorHandle, Outcome};

mod common;

use common::completer;

fn wait(rx: &mpsc::Receiver<Outcome>) -> Outcome {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("call completed")
}

/// Saves a record at `prepare`; its `cleanup` waits until `release` gets a message
/// (or is closed), then fails for containers named "stuck".
struct Recording {
    store: StateStore,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
    /// Declares that its `isolate` does nothing (and then fails if it is called).
    isolate_does_nothing: bool,
}

impl Isolator for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        self.store.save(&spec.id, &42u32)?;
        Ok(LaunchInfo::default())
    }
    fn isolate(&mut self, _: &ContainerId, _: i32) -> Result<(), Error> {
        if self.isolate_does_nothing {
            return Err("isolate was called on the worker thread".into());
        }
        Ok(())
    }
    fn isolate_does_nothing(&self) -> bool {
        self.isolate_does_nothing
    }
    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        self.store.remove(id)?;
        if id.value() == "stuck" {
            return Err("the cgroup is busy".into());
        }
        Ok(())
    }
}

fn recording() -> (IsolatorHandle, tempfile::TempDir, mpsc::Sender<()>) {
    recording_with(false)
}

fn recording_with(
    isolate_does_nothing: bool,
) -> (IsolatorHandle, tempfile::TempDir, mpsc::Sender<()>) {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let iso = Recording {
        store: StateStore::open(dir.path(), "recording").unwrap(),
        release: Arc::new(Mutex::new(rx)),
        isolate_does_nothing,
    };
    (IsolatorHandle::start(Box::new(iso)).unwrap(), dir, tx)
}

fn record(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join("recording").join(format!("{name}.json"))
}

fn config(name: &str) -> ContainerConfigView {
    ContainerConfigView::new(ContainerChain::new([name]), "/tmp/sandbox")
}

#[test]
fn cleanup_is_answered_before_its_work_and_the_work_reports_apart() {
    let (handle, dir, release) = recording();
    for name in ["done", "stuck"] {
        let (done, rx) = completer();
        handle.prepare_with(config(name), done);
        assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    }
    let (answered, answer) = completer();
    let (settled, work) = completer();
    handle.cleanup_reporting(ContainerChain::new(["stuck"]), answered, settled);
    // Answered while the isolator's cleanup still waits for its release.
    assert!(matches!(wait(&answer), Outcome::Nothing));
    assert!(
        work.recv_timeout(Duration::from_millis(100)).is_err(),
        "the work finished before it was released"
    );
    assert!(record(&dir, "stuck").exists());
    release.send(()).unwrap();
    match wait(&work) {
        Outcome::Failed(message) => assert!(message.contains("busy"), "{message}"),
        other => panic!("expected the work's failure, got {other:?}"),
    }
    // The agent's entry point: answered at once, the work still done (in order,
    // before the next call).
    let (done, rx) = completer();
    handle.cleanup_with(ContainerChain::new(["done"]), done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    release.send(()).unwrap();
    let (done, rx) = completer();
    handle.prepare_with(config("after"), done);
    assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    rein_modules::flush_removals();
    assert!(!record(&dir, "done").exists(), "the work never ran");
}

#[test]
fn a_record_written_after_the_answer_is_there_for_the_next_call() {
    let (handle, dir, _release) = recording();
    let (done, rx) = completer();
    handle.prepare_with(config("a"), done);
    assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    let (done, rx) = completer();
    handle.isolate_with(ContainerChain::new(["a"]), 1, done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    let saved = fs::read_to_string(record(&dir, "a")).unwrap();
    assert!(saved.contains("42"), "{saved}");
}

#[test]
fn a_record_that_cannot_be_written_after_the_answer_fails_the_next_call() {
    let (handle, dir, _release) = recording();
    // The record's temporary name is taken by a directory: its write fails.
    fs::create_dir(dir.path().join("recording").join(".full.tmp")).unwrap();
    let (done, rx) = completer();
    handle.prepare_with(config("full"), done);
    assert!(
        matches!(wait(&rx), Outcome::LaunchInfo(_)),
        "the answer does not wait for the record"
    );
    let (done, rx) = completer();
    handle.isolate_with(ContainerChain::new(["full"]), 1, done);
    match wait(&rx) {
        Outcome::Failed(message) => {
            assert!(message.contains("state record"), "{message}");
            assert!(message.contains(".full.tmp"), "{message}");
        }
        other => panic!("expected isolate to fail, got {other:?}"),
    }
    assert!(!record(&dir, "full").exists());
    // Another container is not affected.
    let (done, rx) = completer();
    handle.prepare_with(config("fine"), done);
    assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    let (done, rx) = completer();
    handle.isolate_with(ContainerChain::new(["fine"]), 1, done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
}

/// Waits until the work the isolator's earlier calls left for after their
/// answers is done: a later call runs after it (its calls run in order).
fn wait_for_work_left(handle: &IsolatorHandle, container: &str) {
    let (done, rx) = completer();
    handle.usage_with(ContainerChain::new([container]), done);
    assert!(matches!(wait(&rx), Outcome::Statistics(_)));
}

#[test]
fn an_isolate_that_does_nothing_is_answered_without_the_worker_and_still_fails_on_a_lost_record() {
    let (handle, dir, release) = recording_with(true);
    fs::create_dir(dir.path().join("recording").join(".full.tmp")).unwrap();
    for name in ["full", "fine"] {
        let (done, rx) = completer();
        handle.prepare_with(config(name), done);
        assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    }
    wait_for_work_left(&handle, "fine");
    let (done, rx) = completer();
    handle.isolate_with(ContainerChain::new(["full"]), 1, done);
    match wait(&rx) {
        Outcome::Failed(message) => assert!(message.contains(".full.tmp"), "{message}"),
        other => panic!("expected isolate to fail, got {other:?}"),
    }
    // The isolator's thread is held in another container's cleanup work...
    let (done, _answered) = completer();
    handle.cleanup_with(ContainerChain::new(["other"]), done);
    let (done, rx) = completer();
    handle.isolate_with(ContainerChain::new(["fine"]), 1, done);
    // ...and isolate is answered at once all the same: the isolator's isolate()
    // (which fails) was not called.
    assert!(matches!(rx.try_recv(), Ok(Outcome::Nothing)));
    // A malformed id still fails.
    let (done, rx) = completer();
    handle.isolate_with(ContainerChain::new([""]), 1, done);
    assert!(matches!(rx.try_recv(), Ok(Outcome::Failed(_))));
    drop(release);
}

/// Notes its calls in a shared log; its `after_answer` waits for `gate` (if
/// any), notes when it starts and ends, and panics when `panics`.
struct Tidying {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    gate: Option<mpsc::Receiver<()>>,
    panics: bool,
}

impl Tidying {
    fn note(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {what}", self.name));
    }
}

impl Isolator for Tidying {
    fn name(&self) -> &'static str {
        self.name
    }
    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&mut self, _: &ContainerSpec) -> Result<LaunchInfo, Error> {
        self.note("prepare");
        Ok(LaunchInfo::default())
    }
    fn isolate(&mut self, _: &ContainerId, _: i32) -> Result<(), Error> {
        self.note("isolate");
        Ok(())
    }
    fn cleanup(&mut self, _: &ContainerId) -> Result<(), Error> {
        Ok(())
    }
    fn after_answer(&mut self) {
        if let Some(gate) = &self.gate {
            let _ = gate.recv_timeout(Duration::from_secs(30));
        }
        self.note("after_answer starts");
        // Long enough for another module's work to overlap if it could.
        std::thread::sleep(Duration::from_millis(20));
        self.note("after_answer ends");
        assert!(!self.panics, "a bug in after_answer");
    }
}

#[test]
fn after_answer_runs_after_prepares_answer_and_before_the_next_call() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (open, gate) = mpsc::channel();
    let iso = IsolatorHandle::start(Box::new(Tidying {
        name: "a",
        log: log.clone(),
        gate: Some(gate),
        panics: true,
    }))
    .unwrap();
    let (done, rx) = completer();
    iso.prepare_with(config("c1"), done);
    // Answered while its after_answer waits at the gate.
    assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    let (done, rx) = completer();
    iso.isolate_with(ContainerChain::new(["c1"]), 1, done);
    open.send(()).unwrap();
    // The next call waited for it, and its panic cost that call nothing.
    assert!(matches!(wait(&rx), Outcome::Nothing));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "a prepare",
            "a after_answer starts",
            "a after_answer ends",
            "a isolate"
        ]
    );
}

#[test]
fn work_after_answers_runs_one_module_at_a_time() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let isolators: Vec<IsolatorHandle> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            IsolatorHandle::start(Box::new(Tidying {
                name,
                log: log.clone(),
                gate: None,
                panics: false,
            }))
            .unwrap()
        })
        .collect();
    let answers: Vec<_> = isolators
        .iter()
        .map(|iso| {
            let (done, rx) = completer();
            iso.prepare_with(config("c1"), done);
            rx
        })
        .collect();
    for rx in &answers {
        assert!(matches!(wait(rx), Outcome::LaunchInfo(_)));
    }
    // A later call of each runs after its after_answer: wait for all three.
    for iso in &isolators {
        let (done, rx) = completer();
        iso.isolate_with(ContainerChain::new(["c1"]), 1, done);
        assert!(matches!(wait(&rx), Outcome::Nothing));
    }
    let log = log.lock().unwrap();
    let tidying: Vec<&String> = log.iter().filter(|l| l.contains("after_answer")).collect();
    assert_eq!(tidying.len(), 6, "{log:?}");
    for pair in tidying.chunks(2) {
        let module = &pair[0][..1];
        assert!(
            pair[0].ends_with("starts") && pair[1] == &format!("{module} after_answer ends"),
            "one module's work after its answer overlapped another's: {log:?}"
        );
    }
}
