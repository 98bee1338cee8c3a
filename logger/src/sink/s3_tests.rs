//! The S3 sink's policy over a recording fake store: keys, what each answer
//! means, and the route policy around a failing prefix.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;

use super::*;
use crate::record::Stream;
use crate::sink::deliver::tests::dead_lines;
use crate::sink::route::RouteFailure;
use crate::wal::{Batch, FullPolicy, WalConfig};

/// A store answering from a script per prefix (stored once a script is used
/// up), recording every key and body it was given.
#[derive(Default)]
struct Fake {
    script: Vec<(&'static str, VecDeque<PutOutcome>)>,
    puts: Vec<(String, Vec<u8>)>,
    reloads: usize,
}

impl ObjectStore for Fake {
    fn put(&mut self, key: &str, body: &[u8]) -> PutOutcome {
        self.puts.push((key.to_owned(), body.to_vec()));
        self.script
            .iter_mut()
            .find(|(p, _)| key.starts_with(p))
            .and_then(|(_, s)| s.pop_front())
            .unwrap_or(PutOutcome::Stored)
    }
    fn reload_credentials(&mut self) -> Result<(), SinkError> {
        self.reloads += 1;
        Ok(())
    }
}

fn error(status: u16, code: &str) -> PutOutcome {
    PutOutcome::Error {
        status,
        code: code.into(),
        message: "m".into(),
    }
}

fn config(dir: &Path) -> S3Config {
    S3Config {
        endpoint: crate::http::Url::parse("http://127.0.0.1:1").unwrap(),
        bucket: "logs".into(),
        region: "us-east-1".into(),
        path_style: true,
        credentials_file: dir.join("cred"),
        ca_file: dir.join("ca"),
        prefix: "rein-logs".into(),
        batch_records: 1000,
        batch_bytes: 1 << 20,
        flush_interval: Duration::from_millis(10),
        part_bytes: 5 << 20,
        gzip_level: 6,
        timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        backoff_max: Duration::from_millis(1),
        dead_letter: dir.join("dead.ndjson"),
        shipped_file: dir.join("s3-shipped"),
        uploads_file: dir.join("s3-uploads"),
        route_failure: RouteFailure::DeadLetterAfterAttempts(2),
    }
}

fn sink(dir: &Path, script: Vec<(&'static str, Vec<PutOutcome>)>) -> S3Sink<Fake> {
    let fake = Fake {
        script: script.into_iter().map(|(p, s)| (p, s.into())).collect(),
        ..Fake::default()
    };
    S3Sink::with_store(config(dir), Arc::new(SinkStats::default()), fake).unwrap()
}

/// A buffer holding one record per (container, route), and the batch read from it.
fn batch(dir: &Path, recs: &[(&str, &str)]) -> (Arc<Wal>, Batch) {
    let w = Arc::new(
        Wal::open(WalConfig {
            dir: dir.join("buffer"),
            segment_bytes: 1 << 20,
            max_bytes: 16 << 20,
            fsync_interval: Duration::from_secs(1),
            policy: FullPolicy::Pause,
        })
        .unwrap(),
    );
    for (i, (container, route)) in recs.iter().enumerate() {
        let id = format!("id-{i}");
        let doc = format!(
            "{{\"message\":\"m{i}\",\"mesos\":{{\"framework\":{{\"id\":\"fw\"}},\"task\":{{\"id\":\"t-{container}\"}}}}}}"
        );
        let mut p = Vec::new();
        WalRecord {
            stream: Stream::Stdout,
            ts_ms: 1_714_564_800_000,
            id: id.as_bytes(),
            container: container.as_bytes(),
            route: route.as_bytes(),
            doc: doc.as_bytes(),
        }
        .encode_into(&mut p);
        w.push(&p);
    }
    w.commit().unwrap();
    let b = w.read_batch(1000, 1 << 20, Duration::ZERO).unwrap();
    (w, b)
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s
}

#[test]
fn answers_are_classified() {
    let c = |o: PutOutcome| classify(&o);
    assert_eq!(c(PutOutcome::Stored), Class::Stored);
    assert_eq!(c(PutOutcome::NoAnswer("refused".into())), Class::NoAnswer);
    assert_eq!(
        c(PutOutcome::Refused(crate::http::Refusal::Slow, "x".into())),
        Class::NoAnswer
    );
    for (status, code) in [
        (403, "InvalidAccessKeyId"),
        (403, "SignatureDoesNotMatch"),
        (403, "RequestTimeTooSkewed"),
        (400, "AuthorizationHeaderMalformed"),
        (404, "NoSuchBucket"),
        (401, ""),
        (301, "PermanentRedirect"),
    ] {
        assert_eq!(c(error(status, code)), Class::Settings, "{status} {code}");
    }
    for (status, code) in [
        (503, "SlowDown"),
        (500, "InternalError"),
        (429, ""),
        (408, ""),
        (400, "RequestTimeout"),
        (403, "AccessDenied"),
    ] {
        assert_eq!(c(error(status, code)), Class::Transient, "{status} {code}");
    }
    assert_eq!(c(error(413, "")), Class::Dead);
    assert_eq!(c(error(400, "KeyTooLongError")), Class::Dead);
    assert_eq!(c(error(400, "InvalidArgument")), Class::RouteRefused);
    assert_eq!(c(error(409, "OperationAborted")), Class::RouteRefused);
}

#[test]
fn one_object_per_prefix_and_container_keyed_by_its_first_record() {
    let d = tempfile::tempdir().unwrap();
    let (_w, b) = batch(d.path(), &[("c1", ""), ("c2", "team/a"), ("c1", "")]);
    let mut s = sink(d.path(), vec![]);
    s.ship(&b, &Control::new()).unwrap();
    let keys: Vec<&str> = s.store.puts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "rein-logs/2024/05/01/fw/t-c1/c1/id-0.ndjson.gz",
            "team/a/2024/05/01/fw/t-c2/c2/id-1.ndjson.gz"
        ]
    );
    let first = gunzip(&s.store.puts[0].1);
    let messages: Vec<String> = first
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"].to_string())
        .collect();
    assert_eq!(messages, ["\"m0\"", "\"m2\""]);
    let o = s.object_counters();
    assert_eq!(o.objects.load(Ordering::Relaxed), 2);
    assert_eq!(s.core.stats.shipped.load(Ordering::Relaxed), 3);
    assert_eq!(s.core.stats.requests.load(Ordering::Relaxed), 2);
}

#[test]
fn no_answer_leaves_the_rest_of_the_attempt_and_resends_the_same_keys() {
    let d = tempfile::tempdir().unwrap();
    let (_w, b) = batch(d.path(), &[("c1", "a"), ("c2", "b"), ("c3", "c")]);
    let mut s = sink(
        d.path(),
        vec![(
            "b/",
            vec![PutOutcome::NoAnswer("connection refused".into())],
        )],
    );
    s.ship(&b, &Control::new()).unwrap();
    let keys: Vec<&str> = s.store.puts.iter().map(|(k, _)| &k[..2]).collect();
    // a stored; b got no answer, c was not tried; then b and c again.
    assert_eq!(keys, ["a/", "b/", "b/", "c/"]);
    assert_eq!(s.store.puts[1].0, s.store.puts[2].0, "the same key again");
    assert_eq!(s.core.stats.failed_requests.load(Ordering::Relaxed), 1);
    assert!(dead_lines(d.path()).is_empty());
}

#[test]
fn refused_credentials_are_read_again_and_nothing_is_dead_lettered() {
    let d = tempfile::tempdir().unwrap();
    let (_w, b) = batch(d.path(), &[("c1", "a"), ("c2", "b")]);
    let bad = || error(403, "InvalidAccessKeyId");
    let mut s = sink(
        d.path(),
        vec![
            ("a/", vec![bad(), bad(), bad(), bad()]),
            ("b/", vec![bad(), bad(), bad(), bad()]),
        ],
    );
    s.ship(&b, &Control::new()).unwrap();
    assert_eq!(s.store.reloads, 8);
    assert_eq!(s.core.stats.failed_requests.load(Ordering::Relaxed), 8);
    assert_eq!(s.core.stats.shipped.load(Ordering::Relaxed), 2);
    assert!(dead_lines(d.path()).is_empty());
}

#[test]
fn a_prefix_failing_while_others_are_stored_is_dead_lettered_after_its_bound() {
    let d = tempfile::tempdir().unwrap();
    let (_w, b) = batch(d.path(), &[("c1", "ok"), ("c2", "denied"), ("c3", "gone")]);
    let mut s = sink(
        d.path(),
        vec![
            ("denied/", vec![error(403, "AccessDenied"); 5]),
            ("gone/", vec![error(413, "")]),
        ],
    );
    s.ship(&b, &Control::new()).unwrap();
    let dead = dead_lines(d.path());
    let targets: Vec<&str> = dead.iter().map(|l| l["target"].as_str().unwrap()).collect();
    // The too-large object at once; the denied prefix after its bound (2
    // attempts, while `ok` was stored in the same batch).
    assert!(targets.contains(&"gone"), "{dead:?}");
    assert!(targets.contains(&"denied"), "{dead:?}");
    assert!(s.core.stats.routes.is_failing("denied"));
    assert!(!s.core.stats.routes.is_failing("ok"));
}
