//! The NATS JetStream sink against a real `nats-server` (Debian package,
//! started per test on 127.0.0.1 with its store in a temporary directory,
//! killed on drop; a missing binary skips visibly). Read back through the
//! JetStream API (`STREAM.INFO`, `STREAM.MSG.GET`): every record once, in
//! order per container, with its headers; a resend recognised by
//! `Nats-Msg-Id`; the server down, then killed mid-stream and restarted; a
//! message over `max_payload` and a subject no stream takes dead-lettered;
//! credentials from a file; TLS verified; a hostile server's answers
//! refused; and the real shipper with `rein.log.sink=nats` across a worker
//! `kill -9`.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats_server::{nats_bin, sink_config as config, NatsServer, StoredMsg, MISSING};
use common::reply_dropper::{ship_a_batch_whose_answer_is_lost, ReplyDropper};
use common::shipper::{run_container, spec, Shipper};
use common::sinks::{buffer, RunningSink};
use common::{fill_wal as fill, free_port, skip};
use rein_logger::http::Refusal;
use rein_logger::record::Stream;
use rein_logger::sink::nats::{NatsConfig, NatsSink};
use rein_logger::sink::nats_config::NatsAuth;
use rein_logger::sink::{Control, Sink, SinkStats};
use rein_logger::wal::Wal;
use rein_logger::walrec::WalRecord;

fn wal(dir: &Path) -> Arc<Wal> {
    buffer(dir, 4 << 20, 1 << 30)
}

/// Runs the sink on `w` in a thread; `stop()` ends it.
fn start(cfg: NatsConfig, w: &Arc<Wal>) -> RunningSink {
    common::init_test_logging();
    RunningSink::start(|s| NatsSink::new(cfg, s).unwrap(), w)
}

fn buffer_empty(w: &Wal) -> bool {
    w.read_batch(10, 1 << 20, Duration::ZERO)
        .unwrap()
        .is_empty()
}

/// Waits for `cond` (or `limit`); false if it never held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Per container, the `seq=` numbers in stream order; asserts that every
/// message has its own `Nats-Msg-Id` and the stream header.
fn seqs_by_container(msgs: &[StoredMsg]) -> BTreeMap<String, Vec<u64>> {
    let mut ids = HashSet::new();
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in msgs {
        assert!(!m.msg_id.is_empty(), "no Nats-Msg-Id: {m:?}");
        assert!(
            ids.insert(m.msg_id.clone()),
            "record {} stored twice",
            m.msg_id
        );
        assert_eq!(m.stream, "stdout");
        let (prefix, seq) = m.seq();
        assert!(
            m.container.ends_with(&prefix),
            "{} of {prefix}",
            m.container
        );
        out.entry(prefix).or_default().push(seq);
    }
    out
}

fn count(stats: &SinkStats, f: fn(&SinkStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(stats).load(Ordering::Relaxed)
}

fn dead_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("dead.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A stream `LOGS` taking `rein.logs` and `team-a.>`.
fn logs_stream(srv: &NatsServer) {
    srv.create_stream("LOGS", &["rein.logs", "team-a.>"], serde_json::json!({}));
}

#[test]
fn every_record_once_in_order_per_container_with_its_headers() {
    let test = "every_record_once_in_order_per_container_with_its_headers";
    let Some(srv) = NatsServer::start_or_skip(test, "") else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let per = 1500;
    for c in ["ra", "rb", "rc"] {
        fill(&w, c, "", 0, per);
    }
    fill(&w, "rd", "team-a.logs", 0, 200);
    let mut cfg = config(&srv.url(), d.path());
    cfg.stream = Some("LOGS".into());
    let stats = start(cfg, &w).finish(3 * per as u64 + 200);
    let n = 3 * per as u64 + 200;
    assert_eq!(count(&stats, |s| &s.shipped), n, "{stats:?}");
    assert_eq!(count(&stats, |s| &s.duplicates), 0);
    assert_eq!(count(&stats, |s| &s.dead_lettered), 0);
    // Batches of 500 published back to back (batches end where one commit's records end).
    assert!(count(&stats, |s| &s.requests) <= 16, "{stats:?}");
    assert!(buffer_empty(&w), "buffer acknowledged");
    let msgs = srv.read_all("LOGS");
    assert_eq!(msgs.len() as u64, n);
    let by_subject = |s: &str| msgs.iter().filter(|m| m.subject == s).count();
    assert_eq!(by_subject("rein.logs"), 3 * per);
    assert_eq!(by_subject("team-a.logs"), 200);
    for (c, seqs) in seqs_by_container(&msgs) {
        let want = if c == "rd" { 200 } else { per as u64 };
        assert_eq!(
            seqs,
            (0..want).collect::<Vec<_>>(),
            "{c}: every record, in order"
        );
    }
}

#[test]
fn a_resent_batch_is_recognised_by_its_message_ids() {
    let Some(srv) =
        NatsServer::start_or_skip("a_resent_batch_is_recognised_by_its_message_ids", "")
    else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    fill(&w, "sa", "", 0, 300);
    let stats = Arc::new(SinkStats::default());
    let mut sink = NatsSink::new(config(&srv.url(), d.path()), stats.clone()).unwrap();
    let stop = Control::new();
    let batch = w.read_batch(1000, 8 << 20, Duration::ZERO).unwrap();
    assert_eq!(batch.len(), 300);
    assert!(sink.ship(&batch, &stop).is_ok());
    // The acknowledgement of the batch was lost (a crash before `ack`): the
    // same batch again, from a new sink and connection (a worker restart).
    let mut again = NatsSink::new(config(&srv.url(), d.path()), stats.clone()).unwrap();
    assert!(again.ship(&batch, &stop).is_ok());
    assert_eq!(count(&stats, |s| &s.shipped), 600);
    assert_eq!(count(&stats, |s| &s.duplicates), 300);
    assert_eq!(srv.messages("LOGS"), 300);
}

#[test]
fn a_server_list_fails_over_to_one_that_answers() {
    let Some(srv) = NatsServer::start_or_skip("a_server_list_fails_over_to_one_that_answers", "")
    else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    fill(&w, "fa", "", 0, 100);
    let list = format!("nats://127.0.0.1:{},{}", free_port(), srv.url());
    let stats = start(config(&list, d.path()), &w).finish(100);
    assert_eq!(count(&stats, |s| &s.shipped), 100, "{stats:?}");
    assert!(
        count(&stats, |s| &s.failed_requests) >= 1,
        "the first server was tried"
    );
    assert_eq!(srv.messages("LOGS"), 100);
}

#[test]
fn lost_acknowledgements_then_a_resend_add_nothing() {
    let Some(srv) =
        NatsServer::start_or_skip("lost_acknowledgements_then_a_resend_add_nothing", "")
    else {
        return;
    };
    logs_stream(&srv);
    let proxy = ReplyDropper::start(srv.port);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let stats = Arc::new(SinkStats::default());
    let url = format!("nats://127.0.0.1:{}", proxy.port);
    let mut sink = NatsSink::new(config(&url, d.path()), stats.clone()).unwrap();
    // JetStream stores the second batch but its acknowledgements never arrive:
    // the sink sees the connection end, connects again and publishes it again.
    ship_a_batch_whose_answer_is_lost(&mut sink, &w, &proxy);
    let c = format!("{stats:?}");
    assert!(count(&stats, |s| &s.failed_requests) >= 1, "{c}");
    assert!(
        count(&stats, |s| &s.duplicates) >= 1,
        "the resend was recognised: {c}"
    );
    assert_eq!(count(&stats, |s| &s.shipped), 500, "{c}");
    let msgs = srv.read_all("LOGS");
    assert_eq!(
        seqs_by_container(&msgs)["la"],
        (0..500).collect::<Vec<u64>>(),
        "{c}"
    );
}

#[test]
fn nats_down_then_killed_mid_stream_and_restarted_every_record_once() {
    let test = "nats_down_then_killed_mid_stream_and_restarted_every_record_once";
    if nats_bin().is_none() {
        return skip(test, MISSING);
    }
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let per = 10_000;
    for c in ["da", "db"] {
        fill(&w, c, "", 0, per);
    }
    let total = 2 * per as u64;
    let port = free_port();
    let mut cfg = config(&format!("nats://127.0.0.1:{port}"), d.path());
    cfg.batch_records = 200;
    let run = start(cfg, &w);
    // Down: connections are refused, the batch stays buffered and is retried.
    assert!(
        wait_for(Duration::from_secs(30), || run.stat(|s| &s.failed_requests)
            >= 2),
        "retried while down"
    );
    assert_eq!(run.stat(|s| &s.shipped), 0);
    let mut srv = NatsServer::start(port, "");
    logs_stream(&srv);
    // Up, then killed (-9) while batches are in flight, then up again.
    assert!(
        wait_for(Duration::from_secs(60), || run.stat(|s| &s.shipped) >= 2000),
        "shipping after the start: {:?}",
        run.stats
    );
    srv.kill();
    let at_kill = run.stat(|s| &s.shipped);
    assert!(at_kill < total, "the whole buffer went before the kill");
    let failed = run.stat(|s| &s.failed_requests);
    assert!(
        wait_for(Duration::from_secs(30), || run.stat(|s| &s.failed_requests)
            > failed),
        "retried while killed"
    );
    srv.restart();
    let stats = run.finish(total);
    let msgs = srv.read_all("LOGS");
    let c = format!("{stats:?}");
    assert_eq!(count(&stats, |s| &s.shipped), total, "{c}");
    assert_eq!(count(&stats, |s| &s.dead_lettered), 0, "{c}");
    assert!(buffer_empty(&w));
    assert_eq!(msgs.len() as u64, total, "every record once; {c}");
    for (c, seqs) in seqs_by_container(&msgs) {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..per as u64).collect::<Vec<_>>(), "{c}");
    }
    println!(
        "nats outage: shipped {at_kill} before the kill, {} duplicates suppressed by Nats-Msg-Id after it",
        count(&stats, |s| &s.duplicates)
    );
}

/// Appends one record of container `c` whose message is `message`.
fn push_record(w: &Wal, c: &str, id: &str, route: &str, message: &str) {
    let doc = serde_json::json!({ "message": message }).to_string();
    let mut p = Vec::new();
    WalRecord {
        stream: Stream::Stdout,
        ts_ms: 1_714_564_800_000,
        id: id.as_bytes(),
        container: c.as_bytes(),
        route: route.as_bytes(),
        doc: doc.as_bytes(),
    }
    .encode_into(&mut p);
    w.push(&p);
}

#[test]
fn a_message_over_max_payload_is_dead_lettered_and_the_rest_ships() {
    let test = "a_message_over_max_payload_is_dead_lettered_and_the_rest_ships";
    let Some(srv) = NatsServer::start_or_skip(test, "max_payload: 4096") else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    for i in 0..100 {
        let big = if i == 50 {
            "x".repeat(5000)
        } else {
            String::new()
        };
        push_record(
            &w,
            "pa",
            &format!("pa-o-{i}"),
            "",
            &format!("pa seq={i} {big}"),
        );
    }
    w.commit().unwrap();
    let stats = start(config(&srv.url(), d.path()), &w).finish(100);
    assert_eq!(count(&stats, |s| &s.shipped), 99, "{stats:?}");
    assert_eq!(count(&stats, |s| &s.dead_lettered), 1, "{stats:?}");
    assert!(buffer_empty(&w));
    let dead = dead_lines(d.path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["sink"], "nats");
    assert_eq!(dead[0]["_id"], "pa-o-50");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_payload of 4096"),
        "{dead:?}"
    );
    let msgs = srv.read_all("LOGS");
    let mut want: Vec<u64> = (0..100).collect();
    want.retain(|&i| i != 50);
    assert_eq!(seqs_by_container(&msgs)["pa"], want);
    // The connection stays up: the server never saw the message.
    assert!(count(&stats, |s| &s.failed_requests) == 0, "{stats:?}");
}

#[test]
fn a_subject_no_stream_takes_is_dead_lettered_and_the_others_ship() {
    let test = "a_subject_no_stream_takes_is_dead_lettered_and_the_others_ship";
    let Some(srv) = NatsServer::start_or_skip(test, "") else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    fill(&w, "oa", "", 0, 100);
    fill(&w, "ob", "orphan.logs", 0, 50);
    fill(&w, "oa", "", 100, 100);
    let stats = start(config(&srv.url(), d.path()), &w).finish(250);
    assert_eq!(count(&stats, |s| &s.shipped), 200, "{stats:?}");
    assert_eq!(count(&stats, |s| &s.dead_lettered), 50, "{stats:?}");
    assert!(buffer_empty(&w));
    let routes = stats.routes.snapshot();
    assert_eq!(routes["orphan.logs"].dead_lettered, 50, "{routes:?}");
    assert_eq!(routes["rein.logs"].shipped, 200, "{routes:?}");
    let dead = dead_lines(d.path());
    assert_eq!(dead.len(), 50);
    for l in &dead {
        assert_eq!(l["target"], "orphan.logs");
        assert_eq!(l["status"], 503);
        assert!(
            l["reason"].as_str().unwrap().contains("no responders"),
            "{l}"
        );
    }
    assert_eq!(
        seqs_by_container(&srv.read_all("LOGS"))["oa"],
        (0..200).collect::<Vec<_>>()
    );
}

#[test]
fn credentials_come_from_a_private_file_reread_on_reconnect() {
    let test = "credentials_come_from_a_private_file_reread_on_reconnect";
    let conf = "authorization {\n  user: logs\n  password: right-pw\n}";
    let Some(mut srv) = NatsServer::start_or_skip(test, conf) else {
        return;
    };
    srv.auth = Some(NatsAuth::User {
        user: "logs".into(),
        password: "right-pw".into(),
    });
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let auth = d.path().join("nats-auth");
    std::fs::write(&auth, "logs right-pw\n").unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let w = wal(d.path());
    fill(&w, "aa", "", 0, 100);
    let mut cfg = config(&srv.url(), d.path());
    cfg.auth_file = Some(auth.clone());
    let run = start(cfg, &w);
    // Readable by others: refused, nothing sent.
    assert!(wait_for(Duration::from_secs(30), || run
        .stat(|s| &s.failed_requests)
        >= 2));
    assert_eq!(run.stat(|s| &s.shipped), 0);
    // Private, but the wrong password: the server refuses.
    std::fs::write(&auth, "logs wrong-pw\n").unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    let failed = run.stat(|s| &s.failed_requests);
    assert!(wait_for(Duration::from_secs(30), || run
        .stat(|s| &s.failed_requests)
        > failed + 1));
    assert_eq!(run.stat(|s| &s.shipped), 0);
    std::fs::write(&auth, "logs right-pw\n").unwrap();
    let stats = run.finish(100);
    assert_eq!(count(&stats, |s| &s.shipped), 100, "{stats:?}");
    // Refused credentials are failed requests, not refused answers.
    assert_eq!(stats.responses_refused.total(), 0, "{stats:?}");
    assert_eq!(srv.messages("LOGS"), 100);
}

#[test]
fn a_token_from_the_auth_file() {
    let conf = "authorization {\n  token: s3cret-token\n}";
    let Some(mut srv) = NatsServer::start_or_skip("a_token_from_the_auth_file", conf) else {
        return;
    };
    srv.auth = Some(NatsAuth::Token("s3cret-token".into()));
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let auth = d.path().join("nats-auth");
    std::fs::write(&auth, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o400)).unwrap();
    let w = wal(d.path());
    fill(&w, "ka", "", 0, 100);
    let mut cfg = config(&srv.url(), d.path());
    cfg.auth_file = Some(auth);
    let stats = start(cfg, &w).finish(100);
    assert_eq!(count(&stats, |s| &s.shipped), 100, "{stats:?}");
    assert_eq!(srv.messages("LOGS"), 100);
}

#[test]
fn a_subject_the_user_may_not_publish_to_is_contained_to_its_route() {
    let test = "a_subject_the_user_may_not_publish_to_is_contained_to_its_route";
    let conf = r#"authorization {
  users = [
    { user: admin, password: admin-pw }
    { user: logs, password: logs-pw, permissions: {
        publish: { allow: ["rein.logs", "team-a.>"] }, subscribe: { allow: ["_INBOX.>"] } } }
  ]
}"#;
    let Some(mut srv) = NatsServer::start_or_skip(test, conf) else {
        return;
    };
    srv.auth = Some(NatsAuth::User {
        user: "admin".into(),
        password: "admin-pw".into(),
    });
    srv.create_stream(
        "LOGS",
        &["rein.logs", "team-a.>", "team-b.>"],
        serde_json::json!({}),
    );
    let d = tempfile::tempdir().unwrap();
    let auth = d.path().join("nats-auth");
    std::fs::write(&auth, "logs logs-pw\n").unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    let w = wal(d.path());
    fill(&w, "pa", "", 0, 100);
    fill(&w, "pb", "team-b.logs", 0, 40);
    fill(&w, "pc", "team-a.logs", 0, 100);
    let mut cfg = config(&srv.url(), d.path());
    cfg.auth_file = Some(auth);
    // The user may not ask the JetStream API for the stream's window: the sink goes on.
    cfg.stream = Some("LOGS".into());
    let stats = start(cfg, &w).finish(240);
    let c = format!("{stats:?}");
    assert_eq!(count(&stats, |s| &s.shipped), 200, "{c}");
    assert_eq!(count(&stats, |s| &s.dead_lettered), 40, "{c}");
    assert!(buffer_empty(&w));
    let dead = dead_lines(d.path());
    assert!(
        dead.iter().all(|l| l["target"] == "team-b.logs"
            && l["reason"]
                .as_str()
                .unwrap()
                .contains("Permissions Violation")),
        "{dead:?}"
    );
    let by = seqs_by_container(&srv.read_all("LOGS"));
    assert_eq!(by["pa"], (0..100).collect::<Vec<u64>>());
    assert_eq!(by["pc"], (0..100).collect::<Vec<u64>>());
    assert!(!by.contains_key("pb"));
}

#[test]
fn tls_is_verified_against_the_ca_file() {
    let test = "tls_is_verified_against_the_ca_file";
    if nats_bin().is_none() {
        return skip(test, MISSING);
    }
    let d = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = common::openssl_cert(d.path()) else {
        return skip(test, "openssl not found");
    };
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}",
        cert.display(),
        key.display()
    );
    let mut srv = NatsServer::start(0, &conf);
    srv.tls_ca = Some(ca.clone());
    logs_stream(&srv);
    let w = wal(d.path());
    fill(&w, "ta", "", 0, 100);
    // Plain nats:// to a TLS server, then tls:// with CAs that do not know it:
    // nothing is sent, nothing is lost.
    let plain = format!("nats://127.0.0.1:{}", srv.port);
    for (url, ca_file) in [(plain, ca.clone()), (srv.url(), cert.clone())] {
        let mut cfg = config(&url, d.path());
        cfg.ca_file = ca_file;
        let run = start(cfg, &w);
        assert!(wait_for(Duration::from_secs(30), || run
            .stat(|s| &s.failed_requests)
            >= 1));
        let stats = run.stop();
        assert_eq!(count(&stats, |s| &s.shipped), 0, "{url}");
        assert!(!buffer_empty(&w));
    }
    let mut cfg = config(&srv.url(), d.path());
    cfg.ca_file = ca;
    let stats = start(cfg, &w).finish(100);
    assert_eq!(count(&stats, |s| &s.shipped), 100, "{stats:?}");
    assert_eq!(srv.messages("LOGS"), 100);
}

/// A server that completes the handshake, then answers the first publish
/// with `answer`.
fn hostile_server(answer: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let _ = c.write_all(b"INFO {\"headers\":true,\"max_payload\":1048576}\r\n");
                let mut seen = Vec::new();
                let mut buf = [0u8; 65536];
                // PONG to the handshake's PING, then the answer to the first HPUB.
                let mut ponged = false;
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if !ponged && text.contains("PING\r\n") {
                        ponged = true;
                        let _ = c.write_all(b"PONG\r\n");
                    }
                    if text.contains("HPUB ") {
                        let _ = c.write_all(answer);
                        // Then silence until the client gives up.
                        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_hostile_server_s_answers_are_refused_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let endless: &'static [u8] = Box::leak(vec![b'x'; 200 << 10].into_boxed_slice());
    for (answer, refusal) in [
        (endless, Refusal::TooLarge),
        (
            &b"MSG _INBOX.x.1 1 1099511627776\r\n"[..],
            Refusal::TooLarge,
        ),
        (&b"HELLO WORLD\r\n"[..], Refusal::Malformed),
        (&b"MSG _INBOX.x.1 1 100\r\nhalf"[..], Refusal::Slow),
    ] {
        let w = wal(&d.path().join(refusal.name()).join(answer.len().to_string()));
        fill(&w, "ha", "", 0, 10);
        let mut cfg = config(
            &format!("nats://127.0.0.1:{}", hostile_server(answer)),
            d.path(),
        );
        cfg.timeout = Duration::from_millis(500);
        let run = start(cfg, &w);
        let ok = wait_for(Duration::from_secs(30), || {
            run.stats.responses_refused.get(refusal) >= 2
        });
        let stats = run.stop();
        assert!(ok, "{refusal:?}: {stats:?}");
        assert_eq!(count(&stats, |s| &s.shipped), 0);
        assert!(!buffer_empty(&w), "nothing acknowledged");
    }
}

/// Through the real shipper: a task picks the NATS sink and its subject by
/// label (within the operator's prefixes); the worker is killed (-9) while
/// the container writes, between a batch's publication and its
/// acknowledgement in the disk buffer (the sink stalls there on purpose):
/// the new worker publishes that batch again, JetStream drops it by
/// `Nats-Msg-Id` (counted as duplicates), and every line is in the stream
/// once, in order.
#[test]
fn shipper_sends_task_lines_to_its_subject_once_across_a_worker_kill() {
    let test = "shipper_sends_task_lines_to_its_subject_once_across_a_worker_kill";
    let Some(srv) = NatsServer::start_or_skip(test, "") else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start_env(
        d.path(),
        &format!(
            "nats_url = {}\nnats_subject = rein.logs\nnats_stream = LOGS\nnats_backoff_max = 300ms\nnats_batch_records = 200\n",
            srv.url()
        ),
        &[("REIN_FAULT_STALL", "sink:3:4000")],
    );
    let m = sh.module_with(&[
        ("allowed_sinks", "elasticsearch,nats,none"),
        ("allowed_nats_subject_prefixes", "team-a."),
    ]);
    // Outside the operator's prefixes, or a JetStream API subject: this
    // container's launch fails, naming the label.
    for (subject, why) in [
        ("team-b.logs", "team-a."),
        ("$JS.API.STREAM.DELETE.LOGS", "$"),
    ] {
        let bad = spec(
            "n0",
            &d.path().join("n0"),
            &[
                ("rein.log.sink", "nats"),
                ("rein.log.nats_subject", subject),
            ],
        );
        let e = m.prepare(&bad).unwrap_err().to_string();
        assert!(
            e.contains("rein.log.nats_subject") && e.contains(why),
            "{e}"
        );
    }
    let labels = [
        ("rein.log.sink", "nats"),
        ("rein.log.nats_subject", "team-a.logs"),
    ];
    let n = 3000u64;
    let mut c = run_container(
        &m,
        &spec("n1", &d.path().join("n1"), &labels),
        &["--lines", "3000", "--rate", "3000", "--prefix", "n1"],
    );
    // The third batch is published and stalls before its acknowledgement.
    let sink = |c: &serde_json::Value, k: &str| c["sinks"]["nats"][k].as_u64().unwrap_or(0);
    let acked = |c: &serde_json::Value| c["buffers"]["nats"]["acked_records"].as_u64().unwrap_or(0);
    let stalled = wait_for(Duration::from_secs(30), || {
        let c = sh.counters();
        sink(&c, "shipped") > acked(&c)
    });
    assert!(
        stalled,
        "no batch published and unacknowledged: {}",
        sh.counters()
    );
    let published = srv.messages("LOGS");
    sh.kill_worker();
    assert!(c.wait().unwrap().success(), "the container saw an error");
    let arrived = wait_for(Duration::from_secs(60), || srv.messages("LOGS") >= n);
    assert!(
        arrived,
        "{} of {n} lines; counters {}",
        srv.messages("LOGS"),
        sh.counters()
    );
    // The new worker's counters: the resent batch was recognised.
    let resent = wait_for(Duration::from_secs(30), || {
        sink(&sh.counters(), "duplicates") > 0
    });
    let counters = sh.counters();
    let nats = &counters["sinks"]["nats"];
    assert!(resent, "no duplicate counted; counters {nats}");
    let msgs = srv.read_all("LOGS");
    let mut seqs = Vec::new();
    for msg in &msgs {
        assert_eq!(msg.subject, "team-a.logs");
        assert_eq!(msg.container, "parent-1.n1");
        assert_eq!(msg.doc()["mesos"]["task"]["id"], "task-n1");
        seqs.push(msg.seq().1);
    }
    assert_eq!(
        seqs,
        (0..n).collect::<Vec<u64>>(),
        "every line once, in order; counters {nats}"
    );
    println!(
        "nats sink across a worker kill: {published} records in the stream at the kill; \
         new worker's counters (duplicates: resends JetStream dropped by Nats-Msg-Id): {nats}"
    );
}

/// Through the real shipper: a task's log file (`rein.log.files`) goes to
/// its own subject (`;route=`), its stdout to the container's; each line once.
#[test]
fn a_task_s_log_file_goes_to_its_own_subject() {
    let Some(srv) = NatsServer::start_or_skip("a_task_s_log_file_goes_to_its_own_subject", "")
    else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!(
            "nats_url = {}\nnats_backoff_max = 300ms\npartial_flush = 300ms\n",
            srv.url()
        ),
    );
    let m = sh.module_with(&[
        ("allowed_sinks", "nats,none"),
        ("default_sink", "nats"),
        ("allowed_nats_subject_prefixes", "team-a."),
    ]);
    let sandbox = d.path().join("f1");
    let labels = [
        ("rein.log.nats_subject", "team-a.out"),
        ("rein.log.multiline", "off"),
        ("rein.log.files", "app=app.log;route=team-a.app"),
    ];
    let io = m.prepare(&spec("f1", &sandbox, &labels)).unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    let mut out = std::fs::File::from(io.stdout);
    let mut app = std::fs::File::create(sandbox.join("app.log")).unwrap();
    for i in 0..500 {
        writeln!(app, "app seq={i}").unwrap();
        writeln!(out, "out seq={i}").unwrap();
    }
    drop((out, io.stderr));
    let arrived = wait_for(Duration::from_secs(60), || srv.messages("LOGS") >= 1000);
    assert!(
        arrived,
        "{} of 1000; counters {}",
        srv.messages("LOGS"),
        sh.counters()
    );
    let msgs = srv.read_all("LOGS");
    assert_eq!(msgs.len(), 1000);
    for (subject, prefix, stream) in [
        ("team-a.app", "app", "file"),
        ("team-a.out", "out", "stdout"),
    ] {
        let mine: Vec<&StoredMsg> = msgs.iter().filter(|m| m.subject == subject).collect();
        let seqs: Vec<u64> = mine.iter().map(|m| m.seq().1).collect();
        assert_eq!(seqs, (0..500).collect::<Vec<u64>>(), "{subject}");
        assert!(mine
            .iter()
            .all(|m| m.seq().0 == prefix && m.stream == stream));
    }
    let first_app = msgs
        .iter()
        .find(|m| m.subject == "team-a.app")
        .unwrap()
        .doc();
    assert_eq!(first_app["log"]["file"]["tag"], "app", "{first_app}");
}

/// Records per second through the sink to a file-backed stream on this
/// machine (printed as a figure).
#[test]
fn throughput_figure() {
    let Some(srv) = NatsServer::start_or_skip("throughput_figure", "") else {
        return;
    };
    logs_stream(&srv);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let n = 100_000usize;
    for c in ["ta", "tb", "tc", "td"] {
        fill(&w, c, "", 0, n / 4);
    }
    let mut cfg = config(&srv.url(), d.path());
    cfg.batch_records = 1000;
    cfg.timeout = Duration::from_secs(10);
    let t = Instant::now();
    let stats = start(cfg, &w).finish(n as u64);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(count(&stats, |s| &s.shipped), n as u64, "{stats:?}");
    assert_eq!(srv.messages("LOGS"), n as u64);
    println!(
        "FIGURE nats sink: {n} records of ~{} bytes in {secs:.2}s = {:.0} records/s (batches of 1000, file storage, 127.0.0.1)",
        srv.get(&mut srv.admin(), "LOGS", 1).unwrap().data.len(),
        n as f64 / secs
    );
}
