//! The bridge's call path without C++: outcomes, failures and panics.

use std::sync::mpsc;
use std::time::Duration;

use rein_core::isolator::{Error, Limitation, LimitationNotifier};
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Status};
use rein_modules::{ContainerChain, ContainerConfigView, IsolatorHandle, KeyValue, Outcome};

mod common;

use common::completer;

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
        task_labels: vec![KeyValue::new("other", "x")],
        ..ContainerConfigView::new(chain(id), "/tmp/sandbox")
    }
}

fn chain(id: &str) -> ContainerChain {
    ContainerChain::new([id])
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
    handle.status_with(ContainerChain::new(["a/b"]), done);
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
    let params = vec![KeyValue::new("bogus", "1")];
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
        KeyValue::new(
            "shipper_socket",
            dir.path().join("absent.sock").to_string_lossy().as_ref(),
        ),
        KeyValue::new("shipper_timeout", "100ms"),
    ];
    let logger = rein_modules::create_logger(&params).unwrap();
    let mut view = config("logged");
    view.directory = dir.path().to_string_lossy().as_bytes().to_vec();
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
    bad.task_labels = vec![KeyValue::new("rein.log.sink", "syslog")];
    logger.prepare_with(bad, done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("rein.log.sink")));
}

/// Bytes a framework can put in any protobuf string: Mesos does not check UTF-8.
const NOT_UTF8: &[u8] = b"x\xff\xfe";

#[test]
fn invalid_utf8_fails_only_that_call_naming_the_field() {
    let handle = IsolatorHandle::start(Box::<Flaky>::default()).unwrap();
    let expect_failure = |view: ContainerConfigView, needle: &str| {
        let (done, rx) = completer();
        handle.prepare_with(view, done);
        match wait(&rx) {
            Outcome::Failed(m) => assert!(m.contains(needle), "{m} lacks {needle}"),
            other => panic!("expected a failure naming {needle}, got {other:?}"),
        }
    };
    let mut v = config("c");
    v.task_labels = vec![KeyValue::new("rein.disk.mode", NOT_UTF8)];
    expect_failure(
        v,
        "task label 'rein.disk.mode': value is not valid UTF-8 (byte 0xff at offset 1)",
    );
    let mut v = config("c");
    v.environment = vec![KeyValue::new(b"REIN_\xff".to_vec(), "1")];
    expect_failure(v, "variable 'REIN_\\xff': name is not valid UTF-8");
    let mut v = config("c");
    v.directory = NOT_UTF8.to_vec();
    expect_failure(v, "sandbox directory: not valid UTF-8");
    let mut v = config("c");
    v.user = NOT_UTF8.to_vec();
    expect_failure(v, "user: not valid UTF-8");
    let mut v = config("c");
    v.container = ContainerChain::new([b"ok".to_vec(), NOT_UTF8.to_vec()]);
    expect_failure(v, "container id: segment 2 'x\\xff\\xfe'");

    // Foreign labels and shipped names never fail a container.
    let mut v = config("fine");
    v.task_labels = vec![KeyValue::new(NOT_UTF8, NOT_UTF8)];
    v.executor_labels = vec![KeyValue::new("team", NOT_UTF8)];
    v.task_name = NOT_UTF8.to_vec();
    v.task_id = NOT_UTF8.to_vec();
    v.executor_id = NOT_UTF8.to_vec();
    v.framework_id = NOT_UTF8.to_vec();
    let (done, rx) = completer();
    handle.prepare_with(v, done);
    assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));

    // Every call taking an id fails (or, for cleanup, has nothing to do) and the
    // worker keeps serving.
    let bad = || ContainerChain::new([NOT_UTF8]);
    let (done, rx) = completer();
    handle.isolate_with(bad(), 1, done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("not valid UTF-8")));
    let (done, rx) = completer();
    handle.status_with(bad(), done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("not valid UTF-8")));
    let (done, rx) = completer();
    handle.usage_with(bad(), done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("not valid UTF-8")));
    let (done, rx) = completer();
    handle.update_with(bad(), vec![], done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("not valid UTF-8")));
    let (done, rx) = completer();
    handle.watch_with(bad(), done);
    assert!(matches!(wait(&rx), Outcome::Failed(m) if m.contains("not valid UTF-8")));
    let (done, rx) = completer();
    handle.cleanup_with(bad(), done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    let (done, rx) = completer();
    handle.status_with(chain("ok"), done);
    assert!(matches!(wait(&rx), Outcome::Status(_)));
}

#[test]
fn recover_skips_containers_that_cannot_be_ours() {
    let handle = IsolatorHandle::start(Box::<Flaky>::default()).unwrap();
    let (done, rx) = completer();
    handle.recover_with(
        vec![
            rein_modules::RecoveredView {
                container: ContainerChain::new([NOT_UTF8]),
                pid: 1,
                directory: b"/tmp".to_vec(),
            },
            rein_modules::RecoveredView {
                container: chain("ok"),
                pid: 1,
                directory: NOT_UTF8.to_vec(),
            },
        ],
        vec![ContainerChain::new([NOT_UTF8])],
        done,
    );
    assert!(matches!(wait(&rx), Outcome::Nothing));
}

#[test]
fn module_parameters_that_are_not_utf8_fail_creation_naming_them() {
    let err = rein_modules::create_isolator("net_cls", &[KeyValue::new("state_dir", NOT_UTF8)])
        .err()
        .unwrap();
    assert!(
        err.contains(
            "module parameter 'state_dir': value is not valid UTF-8 (byte 0xff at offset 1)"
        ),
        "{err}"
    );
    let err = rein_modules::create_logger(&[KeyValue::new(NOT_UTF8, "1")])
        .err()
        .unwrap();
    assert!(
        err.contains("module parameter 'x\\xff\\xfe': name is not valid UTF-8"),
        "{err}"
    );
}

fn classid(outcome: Outcome) -> u32 {
    match outcome {
        Outcome::Status(s) => s.net_cls_classid,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[test]
fn status_is_answered_on_the_callers_thread_from_the_isolators_last_answer() {
    let handle = IsolatorHandle::start(Box::<common::Quiet>::default()).unwrap();
    let (done, rx) = completer();
    handle.prepare_with(config("s1"), done);
    assert!(matches!(wait(&rx), Outcome::LaunchInfo(_)));
    // Asked once after prepare; the agent's calls get that answer at once (the
    // completion has run when the call returns: no worker thread involved).
    for _ in 0..3 {
        let (done, rx) = completer();
        handle.status_with(chain("s1"), done);
        let now = rx.try_recv().expect("answered on the caller's thread");
        assert_eq!(classid(now), 1);
    }
    // An update asks again.
    let (done, rx) = completer();
    handle.update_with(chain("s1"), vec![], done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    let (done, rx) = completer();
    handle.status_with(chain("s1"), done);
    assert_eq!(classid(rx.try_recv().expect("answered at once")), 2);
    // After cleanup nothing is kept: the isolator is asked.
    let (done, rx) = completer();
    handle.cleanup_with(chain("s1"), done);
    assert!(matches!(wait(&rx), Outcome::Nothing));
    let (done, rx) = completer();
    handle.status_with(chain("s1"), done);
    assert_eq!(classid(wait(&rx)), 3);
    // A container the bridge kept nothing for (recovered, say) is asked, then kept.
    let (done, rx) = completer();
    handle.status_with(chain("s2"), done);
    assert_eq!(classid(wait(&rx)), 4);
    let (done, rx) = completer();
    handle.status_with(chain("s2"), done);
    assert_eq!(
        classid(rx.try_recv().expect("kept from the last answer")),
        4
    );
}
