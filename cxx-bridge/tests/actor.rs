//! The bridge's call path without C++: outcomes, failures and panics.

use std::sync::mpsc;
use std::time::Duration;

use rein_core::isolator::{Error, Limitation, LimitationNotifier};
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Status};
use rein_modules::{
    Completer, ContainerChain, ContainerConfigView, IsolatorHandle, KeyValue, Outcome,
};

struct Channel(mpsc::Sender<Outcome>);

impl Completer for Channel {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.0.send(outcome);
    }
}

fn completer() -> (Box<dyn Completer>, mpsc::Receiver<Outcome>) {
    let (tx, rx) = mpsc::channel();
    (Box::new(Channel(tx)), rx)
}

fn wait(rx: &mpsc::Receiver<Outcome>) -> Outcome {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("call completed")
}

/// Panics in prepare for containers named "boom"; keeps watch notifiers and fires
/// them from isolate when the pid is 666.
#[derive(Default)]
struct Flaky {
    watchers: Vec<(ContainerId, LimitationNotifier)>,
}

impl Isolator for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        match spec.id.value() {
            "boom" => panic!("exploded on {}", spec.id),
            "bad" => Err("refused: bad container".into()),
            _ => Ok(LaunchInfo {
                environment: vec![("A".into(), "1".into())],
                ..LaunchInfo::default()
            }),
        }
    }
    fn isolate(&mut self, id: &ContainerId, pid: i32) -> Result<(), Error> {
        if pid == 666 {
            if let Some(i) = self.watchers.iter().position(|(w, _)| w == id) {
                let (_, notifier) = self.watchers.remove(i);
                notifier.notify(Limitation {
                    reason: "REASON_CONTAINER_LIMITATION_DISK".into(),
                    message: "over".into(),
                    resource: Some(("disk".into(), 10.0)),
                });
            }
        }
        Ok(())
    }
    fn watch(&mut self, id: &ContainerId, notifier: LimitationNotifier) {
        self.watchers.push((id.clone(), notifier));
    }
    fn status(&mut self, _: &ContainerId) -> Result<Status, Error> {
        Ok(Status {
            net_cls_classid: Some(0x10001),
        })
    }
    fn cleanup(&mut self, _: &ContainerId) -> Result<(), Error> {
        Ok(())
    }
}

fn config(id: &str) -> ContainerConfigView {
    ContainerConfigView {
        container: chain(id),
        directory: "/tmp/sandbox".into(),
        user: String::new(),
        task_id: String::new(),
        task_name: String::new(),
        executor_id: String::new(),
        framework_id: String::new(),
        task_labels: vec![KeyValue {
            key: "other".into(),
            value: "x".into(),
        }],
        executor_labels: vec![],
        environment: vec![],
        resources: vec![],
        debug: false,
    }
}

fn chain(id: &str) -> ContainerChain {
    ContainerChain {
        ids: vec![id.into()],
    }
}

#[test]
fn panic_becomes_failure_and_the_worker_survives() {
    let handle = IsolatorHandle::start(Box::<Flaky>::default()).unwrap();
    let (done, rx) = completer();
    handle.prepare_with(config("boom"), done);
    match wait(&rx) {
        Outcome::Failed(msg) => {
            assert!(msg.contains("panicked in prepare"), "{msg}");
            assert!(msg.contains("exploded on boom"), "{msg}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let (done, rx) = completer();
    handle.prepare_with(config("fine"), done);
    match wait(&rx) {
        Outcome::LaunchInfo(info) => assert_eq!(info.environment[0].key, "A"),
        other => panic!("expected launch info, got {other:?}"),
    }
}

#[test]
fn errors_and_bad_ids_become_failures() {
    let handle = IsolatorHandle::start(Box::<Flaky>::default()).unwrap();
    let (done, rx) = completer();
    handle.prepare_with(config("bad"), done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("refused")));
    let (done, rx) = completer();
    handle.status_with(
        ContainerChain {
            ids: vec!["a/b".into()],
        },
        done,
    );
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("slash")));
    let (done, rx) = completer();
    handle.status_with(chain("ok"), done);
    assert!(
        matches!(wait(&rx), Outcome::Status(s) if s.has_net_cls_classid && s.net_cls_classid == 0x10001)
    );
}

#[test]
fn watch_stays_pending_until_a_limitation() {
    let handle = IsolatorHandle::start(Box::<Flaky>::default()).unwrap();
    let (done, watch_rx) = completer();
    handle.watch_with(chain("w"), done);
    let (done, rx) = completer();
    handle.isolate_with(chain("w"), 1, done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    assert!(
        watch_rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "watch completed early"
    );
    let (done, rx) = completer();
    handle.isolate_with(chain("w"), 666, done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    match wait(&watch_rx) {
        Outcome::Limitation(l) => {
            assert_eq!(l.reason, "REASON_CONTAINER_LIMITATION_DISK");
            assert_eq!(l.resource_name, "disk");
        }
        other => panic!("expected a limitation, got {other:?}"),
    }
}

#[test]
fn create_reports_bad_kinds_and_parameters() {
    let err = rein_modules::create_isolator("nope", &[]).err().unwrap();
    assert!(err.contains("unknown isolator kind 'nope'"), "{err}");
    let params = vec![KeyValue {
        key: "bogus".into(),
        value: "1".into(),
    }];
    let err = rein_modules::create_isolator("net_cls", &params)
        .err()
        .unwrap();
    assert!(err.contains("module parameter 'bogus'"), "{err}");
}

#[test]
fn logger_without_a_shipper_still_gives_working_descriptors() {
    use std::io::Write;
    use std::os::fd::FromRawFd;

    let dir = tempfile::tempdir().unwrap();
    let params = vec![
        KeyValue {
            key: "shipper_socket".into(),
            value: dir.path().join("absent.sock").to_string_lossy().into(),
        },
        KeyValue {
            key: "shipper_timeout".into(),
            value: "100ms".into(),
        },
    ];
    let logger = rein_modules::create_logger(&params).unwrap();
    let mut view = config("logged");
    view.directory = dir.path().to_string_lossy().into_owned();
    let (done, rx) = completer();
    logger.prepare_with(view, done);
    let io = match wait(&rx) {
        Outcome::ContainerIo(io) => io,
        other => panic!("expected descriptors, got {other:?}"),
    };
    // SAFETY: the descriptor was just handed to us by prepare and is owned here.
    let mut out = unsafe { std::fs::File::from_raw_fd(io.stdout_fd) };
    // SAFETY: as above.
    drop(unsafe { std::fs::File::from_raw_fd(io.stderr_fd) });
    out.write_all(b"hello\n").unwrap();
    drop(out);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
        "hello\n"
    );

    let (done, rx) = completer();
    let mut bad = config("bad-label");
    bad.task_labels = vec![KeyValue {
        key: "rein.log.sink".into(),
        value: "syslog".into(),
    }];
    logger.prepare_with(bad, done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("rein.log.sink")));
}
