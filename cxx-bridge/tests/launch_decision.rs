//! The decisions the shim used to take, taken in Rust: a refused capability drop
//! fails `prepare()` and is undone before the answer (no state survives it), and a
//! watch stays pending, owned by Rust, until the container's cleanup.

use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::Duration;

use rein_core::isolator::{Error, LimitationNotifier};
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer};
use rein_modules::{
    install_mesos_enums, Completer, ContainerChain, ContainerConfigView, IsolatorHandle,
    MesosEnumValue, Outcome,
};

/// Sends its outcome; reports its drop (answered or not) on a second channel.
struct Probe {
    outcome: mpsc::Sender<Outcome>,
    dropped: mpsc::Sender<()>,
}

impl Completer for Probe {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.outcome.send(outcome);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.dropped.send(());
    }
}

fn probe() -> (
    Box<dyn Completer>,
    mpsc::Receiver<Outcome>,
    mpsc::Receiver<()>,
) {
    let (outcome, rx) = mpsc::channel();
    let (dropped, dropped_rx) = mpsc::channel();
    (Box::new(Probe { outcome, dropped }), rx, dropped_rx)
}

const DEADLINE: Duration = Duration::from_secs(10);

/// Records every call; "quota" containers ask to drop CAP_SYS_RESOURCE; drops
/// every watch notifier at once (as an isolator does for containers it does not
/// track).
struct Recording(Arc<Mutex<Vec<String>>>);

impl Isolator for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        self.0.lock().unwrap().push(format!("prepare {}", spec.id));
        let drops = match spec.id.value() {
            "quota" => vec!["CAP_SYS_RESOURCE".to_owned()],
            _ => Vec::new(),
        };
        Ok(LaunchInfo {
            environment: vec![("REIN_X".into(), "1".into())],
            drop_capabilities: drops,
        })
    }
    fn isolate(&mut self, _: &ContainerId, _: i32) -> Result<(), Error> {
        Ok(())
    }
    fn watch(&mut self, id: &ContainerId, notifier: LimitationNotifier) {
        self.0.lock().unwrap().push(format!("watch {id}"));
        drop(notifier);
    }
    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        self.0.lock().unwrap().push(format!("cleanup {id}"));
        Ok(())
    }
}

/// This process as an agent that runs `linux/capabilities` (through its
/// environment: the command line names no isolation).
fn install_agent() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("MESOS_ISOLATION", "filesystem/posix,linux/capabilities");
        let value = |name: &str, number| MesosEnumValue {
            name: name.as_bytes().to_vec(),
            number,
        };
        install_mesos_enums(
            vec![value("CHOWN", 1000), value("SYS_RESOURCE", 1024)],
            vec![value("REASON_CONTAINER_LIMITATION_DISK", 20)],
        );
    });
}

fn config(id: &str) -> ContainerConfigView {
    ContainerConfigView::new(ContainerChain::new([id]), "/tmp/sandbox")
}

fn start() -> (IsolatorHandle, Arc<Mutex<Vec<String>>>) {
    install_agent();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let handle = IsolatorHandle::start(Box::new(Recording(Arc::clone(&calls)))).unwrap();
    (handle, calls)
}

#[test]
fn a_refused_drop_fails_prepare_after_undoing_it() {
    let (handle, calls) = start();
    let (done, rx, _) = probe();
    handle.prepare_with(config("quota"), done);
    let outcome = rx.recv_timeout(DEADLINE).expect("prepare answered");
    // The isolator's cleanup ran before the answer was sent.
    let seen = calls.lock().unwrap().clone();
    match outcome {
        Outcome::Failed(message) => assert_eq!(
            message,
            "rein: cannot drop CAP_SYS_RESOURCE: the agent's linux/capabilities isolator also \
             sets capabilities and Mesos would merge the two bounding sets into their union",
            "calls: {seen:?}"
        ),
        other => panic!("expected a refusal, got {other:?}; calls: {seen:?}"),
    }
    assert_eq!(seen, ["prepare quota", "cleanup quota"]);

    // Without a drop, the launch info goes through as decided.
    let (done, rx, _) = probe();
    handle.prepare_with(config("plain"), done);
    match rx.recv_timeout(DEADLINE).expect("prepare answered") {
        Outcome::LaunchInfo(view) => {
            assert_eq!(view.environment.len(), 1);
            assert!(view.bounding_capabilities.is_empty());
        }
        other => panic!("expected a launch info, got {other:?}"),
    }
}

#[test]
fn a_watch_stays_pending_until_cleanup() {
    let (handle, calls) = start();
    let (done, rx, dropped) = probe();
    handle.watch_with(ContainerChain::new(["w"]), done);
    // A later call on the same thread: the watch has run by its answer.
    let (done, isolated, _) = probe();
    handle.isolate_with(ContainerChain::new(["w"]), 1, done);
    isolated.recv_timeout(DEADLINE).expect("isolate answered");
    assert!(
        dropped.try_recv().is_err(),
        "the watch completion was dropped although the isolator only dropped its notifier; calls: {:?}",
        calls.lock().unwrap()
    );
    let (done, cleaned, _) = probe();
    handle.cleanup_with(ContainerChain::new(["w"]), done);
    assert!(matches!(
        cleaned.recv_timeout(DEADLINE),
        Ok(Outcome::Nothing)
    ));
    dropped
        .recv_timeout(DEADLINE)
        .expect("the watch completion is dropped at cleanup");
    assert!(rx.try_recv().is_err(), "the watch was answered");
}
