//! The Redis Streams sink against a real `redis-server` (Debian package,
//! started per test on 127.0.0.1 in memory only, killed on drop): every
//! record once, in order per container, with its fields; Redis down then up;
//! a resent batch and a lost reply never duplicate; WRONGTYPE goes to the
//! dead-letter file; MAXLEN trimming; ACL credentials from a file; and the
//! real shipper with `rein.log.sink=redis`.
#![cfg(feature = "redis")]
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::{sink_config as config, xlen, xrange, RedisServer, MISSING};
use common::reply_dropper::{ship_a_batch_whose_answer_is_lost, ReplyDropper};
use common::shipper::{run_container, spec, Shipper};
use common::sinks::{buffer, RunningSink};
use common::{fill_wal as fill, free_port, skip};
use rein_logger::sink::redis::{RedisConfig, RedisSink};
use rein_logger::sink::{Control, Sink, SinkStats};
use rein_logger::wal::Wal;

fn wal(dir: &Path) -> Arc<Wal> {
    buffer(dir, 1 << 20, 1 << 30)
}

/// Runs the sink on `w` in a thread; `stop()` ends it.
fn start(cfg: RedisConfig, w: &Arc<Wal>) -> RunningSink {
    RunningSink::start(|s| RedisSink::new(cfg, s).unwrap(), w)
}

fn buffer_empty(w: &Wal) -> bool {
    w.read_batch(10, 1 << 20, Duration::ZERO)
        .unwrap()
        .is_empty()
}

fn field<'a>(e: &'a common::redis_server::Entry, name: &str) -> &'a [u8] {
    &e.1.iter().find(|(k, _)| k == name).unwrap().1
}

/// Per container, the `seq=` numbers in stream order; asserts the fields.
fn seqs_by_container(entries: &[common::redis_server::Entry]) -> BTreeMap<String, Vec<u64>> {
    let mut ids = HashSet::new();
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in entries {
        let names: Vec<&str> = e.1.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["id", "container", "stream", "doc"]);
        assert!(
            ids.insert(field(e, "id").to_vec()),
            "record id stored twice"
        );
        let container = String::from_utf8(field(e, "container").to_vec()).unwrap();
        assert_eq!(field(e, "stream"), b"stdout");
        let doc: serde_json::Value = serde_json::from_slice(field(e, "doc")).unwrap();
        let msg = doc["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{container} seq=")), "{msg:.40}");
        let seq = msg.split(' ').nth(1).unwrap()[4..].parse().unwrap();
        out.entry(container).or_default().push(seq);
    }
    out
}

#[test]
fn every_record_once_in_order_per_container_with_fields() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip(
            "every_record_once_in_order_per_container_with_fields",
            MISSING,
        );
    };
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let per = 1500;
    for c in ["ra", "rb", "rc"] {
        fill(&w, c, "", 0, per);
    }
    fill(&w, "rd", "team-a:logs", 0, 200);
    let mut con = srv.conn();
    let mem_before: u64 = info_field(&mut con, "used_memory");
    let run = start(config(srv.url(), d.path()), &w);
    let stats = run.finish(3 * per as u64 + 200);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 3 * per as u64 + 200);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    // One script call per batch of 500 records (batches end where the records of
    // one commit end, so a few more than total/500).
    let requests = stats.requests.load(Ordering::Relaxed);
    assert!(requests <= 12, "{requests} requests for 4,700 records");
    assert!(buffer_empty(&w), "buffer acknowledged");

    let entries = xrange(&mut con, "rein-logs");
    assert_eq!(entries.len(), 3 * per);
    for (c, seqs) in seqs_by_container(&entries) {
        assert_eq!(
            seqs,
            (0..per as u64).collect::<Vec<_>>(),
            "{c}: every record, in order"
        );
    }
    let routed = xrange(&mut con, "team-a:logs");
    assert_eq!(
        seqs_by_container(&routed)["rd"],
        (0..200).collect::<Vec<u64>>()
    );
    // Each stored record has its marker, with the TTL, holding the entry id.
    let e = &entries[0];
    let marker = format!(
        "rein:dedup:{}",
        String::from_utf8(field(e, "id").to_vec()).unwrap()
    );
    let held: String = redis::cmd("GET").arg(&marker).query(&mut con).unwrap();
    assert_eq!(held, e.0);
    let ttl: i64 = redis::cmd("TTL").arg(&marker).query(&mut con).unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "ttl {ttl}");
    let keys: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(
        keys,
        3 * per as u64 + 200 + 2,
        "one marker per record + 2 streams"
    );
    let mem_after: u64 = info_field(&mut con, "used_memory");
    let n = 3 * per as u64 + 200;
    let _: () = redis::cmd("DEL")
        .arg(&["rein-logs", "team-a:logs"])
        .query(&mut con)
        .unwrap();
    let mem_markers: u64 = info_field(&mut con, "used_memory");
    println!(
        "FIGURE redis memory per record: {} bytes (stream entry of a ~{}-byte document + marker), marker alone {} bytes",
        (mem_after - mem_before) / n,
        field(e, "doc").len(),
        mem_markers.saturating_sub(mem_before) / n
    );
}

fn info_field(con: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn redis_down_then_up_every_record_arrives() {
    if common::redis_server::redis_bin().is_none() {
        return skip("redis_down_then_up_every_record_arrives", MISSING);
    }
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    for c in ["da", "db"] {
        fill(&w, c, "", 0, 1000);
    }
    let port = free_port();
    let run = start(config(format!("redis://127.0.0.1:{port}"), d.path()), &w);
    // Down: connections are refused, the batch stays in the buffer and is retried.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run.stat(|s| &s.shipped), 0);
    assert!(run.stat(|s| &s.failed_requests) >= 2, "retried while down");
    assert!(!buffer_empty(&w), "nothing acknowledged while down");
    let srv = RedisServer::start(port, &[]).expect("redis-server starts");
    let stats = run.finish(2000);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 2000);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    assert!(buffer_empty(&w));
    let entries = xrange(&mut srv.conn(), "rein-logs");
    for (c, seqs) in seqs_by_container(&entries) {
        assert_eq!(seqs, (0..1000).collect::<Vec<u64>>(), "{c}");
    }
}

#[test]
fn resent_batch_adds_nothing() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip("resent_batch_adds_nothing", MISSING);
    };
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    fill(&w, "sa", "", 0, 300);
    let stats = Arc::new(SinkStats::default());
    let mut sink = RedisSink::new(config(srv.url(), d.path()), stats.clone()).unwrap();
    let stop = Control::new();
    let batch = w.read_batch(1000, 8 << 20, Duration::ZERO).unwrap();
    assert_eq!(batch.len(), 300);
    assert!(sink.ship(&batch, &stop).is_ok());
    // The acknowledgement was lost (crash before `ack`): the same batch again,
    // from a new sink (as after a worker restart).
    let mut again = RedisSink::new(config(srv.url(), d.path()), stats.clone()).unwrap();
    assert!(again.ship(&batch, &stop).is_ok());
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 600);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 300);
    assert_eq!(xlen(&mut srv.conn(), "rein-logs"), 300);
}

#[test]
fn lost_reply_then_resend_adds_nothing() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip("lost_reply_then_resend_adds_nothing", MISSING);
    };
    let proxy = ReplyDropper::start(srv.port);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let stats = Arc::new(SinkStats::default());
    let mut sink = RedisSink::new(
        config(format!("redis://127.0.0.1:{}", proxy.port), d.path()),
        stats.clone(),
    )
    .unwrap();
    // Redis stores the second batch but its answer never arrives: the sink sees a
    // dropped connection, reconnects and sends the batch again.
    ship_a_batch_whose_answer_is_lost(&mut sink, &w, &proxy);
    assert!(stats.failed_requests.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        stats.duplicates.load(Ordering::Relaxed),
        400,
        "the resend was recognised"
    );
    let entries = xrange(&mut srv.conn(), "rein-logs");
    assert_eq!(
        seqs_by_container(&entries)["la"],
        (0..500).collect::<Vec<u64>>()
    );
}

#[test]
fn wrongtype_stream_goes_to_dead_letter_and_the_rest_ships() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip(
            "wrongtype_stream_goes_to_dead_letter_and_the_rest_ships",
            MISSING,
        );
    };
    let mut con = srv.conn();
    let _: () = redis::cmd("SET")
        .arg("not-a-stream")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    fill(&w, "wa", "", 0, 100);
    fill(&w, "wb", "not-a-stream", 0, 50);
    fill(&w, "wa", "", 100, 100);
    let run = start(config(srv.url(), d.path()), &w);
    let stats = run.finish(250);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 200);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 50);
    assert!(buffer_empty(&w), "the batch is acknowledged");
    let dead = std::fs::read_to_string(d.path().join("dead.ndjson")).unwrap();
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    for l in &lines {
        assert_eq!(l["sink"], "redis");
        assert_eq!(l["target"], "not-a-stream");
        assert!(
            l["reason"].as_str().unwrap().starts_with("WRONGTYPE"),
            "{l}"
        );
        assert!(l["document"].as_str().unwrap().contains("wb seq="));
    }
    let entries = xrange(&mut con, "rein-logs");
    assert_eq!(
        seqs_by_container(&entries)["wa"],
        (0..200).collect::<Vec<u64>>()
    );
    // No marker for a refused record: once the key is fixed, a resend is stored.
    let refused = lines[0]["_id"].as_str().unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(format!("rein:dedup:{refused}"))
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn maxlen_trims_each_stream() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip("maxlen_trims_each_stream", MISSING);
    };
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    fill(&w, "ma", "", 0, 2000);
    let mut cfg = config(srv.url(), d.path());
    cfg.maxlen = Some(300);
    let stats = start(cfg, &w).finish(2000);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 2000);
    // `~`: trimmed by whole nodes (100 entries each by default), never below 300.
    let n = xlen(&mut srv.conn(), "rein-logs");
    assert!((300..=500).contains(&n), "XLEN {n}");
}

#[test]
fn acl_user_from_auth_file_reread_on_reconnect() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip("acl_user_from_auth_file_reread_on_reconnect", MISSING);
    };
    let mut con = srv.conn();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "logs", "on", ">right-pw", "~*", "+@all"])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"])
        .query(&mut con)
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let auth = d.path().join("redis-auth");
    std::fs::write(&auth, "logs wrong-pw\n").unwrap();
    let w = wal(d.path());
    fill(&w, "aa", "", 0, 100);
    let mut cfg = config(srv.url(), d.path());
    cfg.auth_file = Some(auth.clone());
    let run = start(cfg, &w);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        run.stat(|s| &s.shipped),
        0,
        "refused with the wrong password"
    );
    assert!(run.stat(|s| &s.failed_requests) >= 1);
    std::fs::write(&auth, "logs right-pw\n").unwrap();
    let stats = run.finish(100);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 100);
    let mut logs = redis::Client::open(format!("redis://logs:right-pw@127.0.0.1:{}", srv.port))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(xlen(&mut logs, "rein-logs"), 100);
}

/// Through the real shipper: a task picks the Redis sink and its stream by
/// label (within the operator's prefixes); the worker is killed while the
/// container writes, and every line is in the stream once, in order.
#[test]
fn shipper_sends_task_lines_to_its_redis_stream_once_across_a_worker_kill() {
    let Some(srv) = RedisServer::start(0, &[]) else {
        return skip(
            "shipper_sends_task_lines_to_its_redis_stream_once_across_a_worker_kill",
            MISSING,
        );
    };
    let d = tempfile::tempdir().unwrap();
    let sh = Shipper::start(
        d.path(),
        &format!(
            "redis_url = {}\nredis_stream = rein-default\nredis_backoff_max = 300ms\nredis_batch_records = 200\n",
            srv.url()
        ),
    );
    let m = sh.module_with(&[
        ("allowed_sinks", "elasticsearch,redis,none"),
        ("allowed_redis_stream_prefixes", "team-a:"),
    ]);
    // Outside the operator's prefixes: this container's launch fails, naming the label.
    let bad = spec(
        "r0",
        &d.path().join("r0"),
        &[
            ("rein.log.sink", "redis"),
            ("rein.log.redis_stream", "team-b:logs"),
        ],
    );
    let e = m.prepare(&bad).unwrap_err().to_string();
    assert!(
        e.contains("rein.log.redis_stream") && e.contains("team-a:"),
        "{e}"
    );
    let labels = [
        ("rein.log.sink", "redis"),
        ("rein.log.redis_stream", "team-a:logs"),
    ];
    let mut c = run_container(
        &m,
        &spec("r1", &d.path().join("r1"), &labels),
        &["--lines", "3000", "--rate", "3000", "--prefix", "r1"],
    );
    std::thread::sleep(Duration::from_millis(500));
    sh.kill_worker();
    assert!(c.wait().unwrap().success(), "the container saw an error");
    let mut con = srv.conn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while xlen(&mut con, "team-a:logs") < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let entries = xrange(&mut con, "team-a:logs");
    let mut seqs = Vec::new();
    for e in &entries {
        assert_eq!(field(e, "container"), b"parent-1.r1");
        let doc: serde_json::Value = serde_json::from_slice(field(e, "doc")).unwrap();
        assert_eq!(doc["mesos"]["task"]["id"], "task-r1");
        let msg = doc["message"].as_str().unwrap();
        seqs.push(msg.split(' ').nth(1).unwrap()[4..].parse::<u64>().unwrap());
    }
    assert_eq!(
        seqs,
        (0..3000).collect::<Vec<u64>>(),
        "every line once, in order"
    );
    assert_eq!(xlen(&mut con, "rein-default"), 0);
    let counters = sh.counters();
    println!(
        "redis sink counters after the kill: {}",
        counters["sinks"]["redis"]
    );
}

#[test]
fn tls_is_verified_against_the_ca_file() {
    if common::redis_server::redis_bin().is_none() {
        return skip("tls_is_verified_against_the_ca_file", MISSING);
    }
    let d = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = common::openssl_cert(d.path()) else {
        return skip("tls_is_verified_against_the_ca_file", "openssl not found");
    };
    let tls_port = free_port().to_string();
    let (cert, key, ca_s) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    let srv = RedisServer::start(
        0,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
        ],
    )
    .expect("redis-server starts");
    let w = wal(d.path());
    fill(&w, "ta", "", 0, 100);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    // The system CAs do not know this server: nothing is sent, nothing is lost.
    let stats = start(config(url.clone(), d.path()), &w);
    std::thread::sleep(Duration::from_millis(1500));
    let stats = stats.stop();
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 0);
    assert!(stats.failed_requests.load(Ordering::Relaxed) >= 1);
    assert!(!buffer_empty(&w));
    let mut cfg = config(url, d.path());
    cfg.ca_file = Some(ca);
    let stats = start(cfg, &w).finish(100);
    assert_eq!(stats.shipped.load(Ordering::Relaxed), 100);
    assert_eq!(xlen(&mut srv.conn(), "rein-logs"), 100);
}
