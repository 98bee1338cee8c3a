//! Attacks of a task on everyone's records, performed for real: content that
//! would break a sink's framing (pretty-printed JSON, every byte value), a
//! route that refuses records for good (a write-blocked index, a stream
//! outside the shipper's Redis ACL), and lines of any length. Each test fails
//! if the attack works: a victim's records must all arrive.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::shipper::{drain_buffer, spec, Shipper};
use common::sinks::{buffer, run_es, run_until, victims_es_config};
use common::{skip, EsServer, WalAppender};
use rein_logger::record::{
    EncodeOptions, MultilineConfig, SourceMeta, StartRule, Stream, StreamPipeline,
};
use rein_logger::sink::SinkStats;
use rein_logger::wal::Wal;
use rein_logger::walrec::Expander;

const READ_MS: i64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z

fn wal(dir: &Path) -> Arc<Wal> {
    buffer(dir, 4 << 20, 512 << 20)
}

/// Encodes `input` as one container's stdout (multiline on: lines that start
/// with a space or `}` continue a record) into `w`, sent to `route`.
fn feed(w: &Wal, container: &str, route: &str, input: &[u8]) -> u64 {
    let meta = SourceMeta {
        container_chain: vec![container.into()],
        task_labels: vec![("team".into(), "a\nb".into())],
        ..Default::default()
    };
    let ml = MultilineConfig {
        rule: StartRule::Indented,
        max_lines: 1000,
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(1),
    };
    let mut p = StreamPipeline::new(
        &meta,
        Stream::Stdout,
        &EncodeOptions::default(),
        64 * 1024,
        Some(ml),
    );
    let mut out = WalAppender::new(w, container, route);
    let mut push = |e: rein_logger::record::Encoded<'_>| out.push(e);
    p.feed(input, 0, true, Instant::now(), READ_MS, &mut push);
    p.poll(Instant::now(), READ_MS, true, &mut push);
    w.commit().unwrap();
    out.n
}

/// Pretty-printed JSON (joined by multiline) and lines holding every byte
/// value, from three containers in the same `_bulk` requests: every record
/// is stored, none is dead-lettered.
#[test]
fn record_content_never_breaks_the_bulk_framing() {
    let Some(es) = EsServer::start() else {
        return skip(
            "record_content_never_breaks_the_bulk_framing",
            "osmem-server not installed (pip install osmem-server==0.1.6)",
        );
    };
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    let mut total = 0;
    for c in ["pretty", "bytes", "plain"] {
        let mut input = Vec::new();
        for i in 0..40u32 {
            match c {
                "pretty" => input.extend_from_slice(
                    format!(
                        "{{\n  \"msg\": \"{c} {i}\",\n  \"ctx\": {{\n    \"n\": [\n      {i},\n      2\r\n    ]\n  }}\n}}\n"
                    )
                    .as_bytes(),
                ),
                "bytes" => {
                    // Every byte value, raw and inside JSON strings and values.
                    for b in (0..=255u8).skip(i as usize * 7).take(7) {
                        if b == b'\n' || b == b' ' || b == b'}' {
                            continue;
                        }
                        input.extend_from_slice(&[b'x', b, b'\n']);
                        input.extend_from_slice(b"{\"s\":\"");
                        input.push(b);
                        input.extend_from_slice(b"\"}\n");
                        // Another field: a string here would conflict with a number.
                        input.extend_from_slice(b"{\"v\":");
                        input.push(b);
                        input.extend_from_slice(b"1}\n");
                    }
                }
                _ => input.extend_from_slice(format!("{c} line {i}\n").as_bytes()),
            }
        }
        total += feed(&w, c, "", &input);
    }
    let cfg = victims_es_config(es.addr, d.path());
    let stats = run_es(
        cfg,
        w.clone(),
        |s| s.shipped.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed) >= total,
        Duration::from_secs(60),
    );
    let dead = std::fs::read_to_string(d.path().join("dead-letter.ndjson")).unwrap_or_default();
    eprintln!("{total} records; {stats:?}");
    assert_eq!(
        stats.dead_lettered.load(Ordering::Relaxed),
        0,
        "dead letters: {dead:.2000}"
    );
    assert_eq!(stats.shipped.load(Ordering::Relaxed), total);
    assert_eq!(es.count("victims-2024.05.01"), total);
    let msgs = es.messages("victims-2024.05.01");
    for i in 0..40 {
        assert!(msgs.contains(&format!("pretty {i}")), "pretty {i} missing");
    }
}

/// The attacker's index refuses every write for good (a write block answered
/// 403 `cluster_block_exception` per item); the victim's records, in the
/// same batches, are all stored and the attacker's go to the dead-letter
/// file, counted on its route, without holding the victim back.
#[test]
fn a_refusing_index_is_contained_to_its_route() {
    let Some(es) = EsServer::start() else {
        return skip(
            "a_refusing_index_is_contained_to_its_route",
            "osmem-server not installed (pip install osmem-server==0.1.6)",
        );
    };
    let blocked = "attacker-2024.05.01";
    es.block_writes(blocked);
    let d = tempfile::tempdir().unwrap();
    let w = wal(d.path());
    // Interleaved: every batch holds records of both.
    let (n, rounds) = (50, 8);
    for r in 0..rounds {
        common::fill_wal(&w, "victim", "", r * n, n);
        common::fill_wal(&w, "attacker", "attacker-%Y.%m.%d", r * n, n);
    }
    let total = (2 * n * rounds) as u64;
    let start = Instant::now();
    let stats = run_es(
        victims_es_config(es.addr, d.path()),
        w.clone(),
        |s| s.shipped.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed) >= total,
        Duration::from_secs(60),
    );
    let took = start.elapsed();
    let routes = stats.routes.snapshot();
    eprintln!("{took:?} {stats:?} {routes:?}");
    let victims = (n * rounds) as u64;
    assert_eq!(
        es.count("victims-2024.05.01"),
        victims,
        "every victim record stored"
    );
    assert_eq!(stats.shipped.load(Ordering::Relaxed), victims);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), victims);
    assert_eq!(routes[blocked].dead_lettered, victims);
    assert_eq!(routes[blocked].failing, 1);
    assert_eq!(routes["victims-2024.05.01"].shipped, victims);
    assert_eq!(routes["victims-2024.05.01"].refused, 0);
    // Three attempts once, then each refusal is final: far below one backoff per batch.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let dl = std::fs::read_to_string(d.path().join("dead-letter.ndjson")).unwrap();
    assert_eq!(dl.lines().count() as u64, victims);
    assert!(dl
        .lines()
        .all(|l| l.contains("cluster_block_exception") && l.contains(blocked)));
}

/// Every record of a disk buffer directory: (offset, message, split part).
fn buffered_records(dir: &Path) -> Vec<(u64, String, Option<u64>)> {
    let mut out = Vec::new();
    drain_buffer(dir, |rec| {
        let v: serde_json::Value = serde_json::from_slice(rec.doc).unwrap();
        out.push((
            v["log"]["offset"].as_u64().unwrap(),
            v["message"].as_str().unwrap().to_string(),
            v["log"]["split"]["part"].as_u64(),
        ));
    });
    out
}

/// Lines of 1 MiB, exactly `max_line_bytes` (8 MiB), one byte more, and
/// 100 MiB without a newline up to the end: the container's writes all
/// complete (with a lag bound far below the line), its streams end, and every
/// byte is buffered in order, the long lines as marked parts.
#[test]
fn lines_of_any_length_are_split_and_shipped() {
    const MAX: usize = 8 << 20;
    let d = tempfile::tempdir().unwrap();
    // The sink is unreachable: records stay in the disk buffer, where the test reads them.
    let mut sh = Shipper::start(
        d.path(),
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\nmax_line_bytes = 8MiB\nmax_unparsed_bytes = 16MiB\nrotate_keep = 1000",
    );
    let m = sh.module();
    let sandbox = d.path().join("sandbox");
    let io = m
        .prepare(&spec(
            "long",
            &sandbox,
            &[("rein.log.sink", "elasticsearch")],
        ))
        .unwrap();
    assert!(io.shipped);
    let mut stream = Vec::with_capacity(130 << 20);
    let mut k = 0u32;
    let mut line = |stream: &mut Vec<u8>, n: usize, newline: bool| {
        for _ in 0..n {
            stream.push(b'a' + (k % 26) as u8);
            k = k.wrapping_add(7);
        }
        if newline {
            stream.push(b'\n');
        }
    };
    line(&mut stream, 1 << 20, true);
    line(&mut stream, MAX, true);
    line(&mut stream, MAX + 1, true);
    line(&mut stream, 100 << 20, false);
    let stream = Arc::new(stream);
    let (s2, out) = (stream.clone(), io.stdout);
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::from(out);
        f.write_all(&s2).unwrap();
        // Closing it is the container's exit.
    });
    drop(io.stderr);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !writer.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the container's writes never completed: {}",
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    sh.wait_idle(Duration::from_secs(300));
    let counters = sh.counters();
    sh.stop();
    let mut recs = buffered_records(&d.path().join("state/buffer/elasticsearch"));
    recs.sort_by_key(|r| r.0);
    let parts: Vec<(usize, Option<u64>)> = recs.iter().map(|r| (r.1.len(), r.2)).collect();
    eprintln!("{counters}\n{parts:?}");
    // Every byte, in order: each record is the stream at its offset, the next
    // one starts right after it (or after its newline).
    let mut pos = 0usize;
    for (off, msg, _) in &recs {
        assert_eq!(
            usize::try_from(*off).unwrap(),
            pos,
            "gap or overlap at {pos}"
        );
        let end = pos + msg.len();
        assert!(msg.len() <= MAX, "a record longer than max_line_bytes");
        assert!(
            msg.as_bytes() == &stream[pos..end],
            "bytes differ in the record at {pos}"
        );
        pos = end;
        if stream.get(pos) == Some(&b'\n') {
            pos += 1;
        }
    }
    assert_eq!(pos, stream.len(), "not every byte was buffered");
    let split_parts = |first: usize| parts[first..].iter().take_while(|p| p.1.is_some()).count();
    assert_eq!(parts[0], (1 << 20, None));
    assert_eq!(
        parts[1],
        (MAX, None),
        "exactly max_line_bytes is one record"
    );
    assert_eq!((parts[2], parts[3]), ((MAX, Some(0)), (1, Some(1))));
    assert_eq!(split_parts(4), 13, "100 MiB: 12 full parts and the rest");
}

#[cfg(feature = "redis")]
mod redis_routes {
    use super::*;
    use common::redis_server::{sink_config, xlen, RedisServer};
    use common::sinks::handled;
    use rein_logger::sink::redis::{RedisConfig, RedisSink};
    use rein_logger::sink::route::RouteFailure;

    fn config(url: String, dir: &Path) -> RedisConfig {
        RedisConfig {
            batch_records: 100,
            route_failure: RouteFailure::DeadLetterAfterAttempts(3),
            ..sink_config(url, dir)
        }
    }

    fn run(cfg: RedisConfig, w: Arc<Wal>, total: u64) -> Arc<SinkStats> {
        run_until(
            |s| RedisSink::new(cfg, s).unwrap(),
            &w,
            |s| handled(s) >= total,
            Duration::from_secs(60),
        )
    }

    /// The shipper's ACL user may write `rein-logs` and its markers only; the
    /// attacker's stream is outside it (`NOPERM` for its script calls). The
    /// victim's records, in the same batches, all arrive.
    #[test]
    fn a_stream_outside_the_acl_is_contained_to_its_route() {
        let Some(srv) = RedisServer::start(0, &[]) else {
            return skip(
                "a_stream_outside_the_acl_is_contained_to_its_route",
                "redis-server not installed",
            );
        };
        let mut con = srv.conn();
        let _: () = redis::cmd("ACL")
            .arg(&[
                "SETUSER",
                "logs",
                "on",
                ">pw",
                "~rein-logs",
                "~rein:dedup:*",
                "+@all",
            ])
            .query(&mut con)
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let auth = d.path().join("auth");
        std::fs::write(&auth, "logs pw\n").unwrap();
        let w = wal(d.path());
        let (n, rounds) = (40, 6);
        for r in 0..rounds {
            common::fill_wal(&w, "victim", "", r * n, n);
            common::fill_wal(&w, "attacker", "other-team", r * n, n);
        }
        let mut cfg = config(srv.url(), d.path());
        cfg.auth_file = Some(auth);
        let total = (2 * n * rounds) as u64;
        let start = Instant::now();
        let stats = run(cfg, w, total);
        let took = start.elapsed();
        let routes = stats.routes.snapshot();
        eprintln!("{took:?} {stats:?} {routes:?}");
        let victims = (n * rounds) as u64;
        assert_eq!(
            xlen(&mut con, "rein-logs"),
            victims,
            "every victim record stored"
        );
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), victims);
        assert_eq!(routes["other-team"].failing, 1);
        assert_eq!(routes["other-team"].dead_lettered, victims);
        assert_eq!(routes["rein-logs"].shipped, victims);
        assert!(took < Duration::from_secs(20), "took {took:?}");
        let dl = std::fs::read_to_string(d.path().join("dead.ndjson")).unwrap();
        assert!(dl.lines().all(|l| l.contains("NOPERM")), "{dl:.500}");
    }

    /// A task names its stream after the victim's dedup markers, so that the
    /// victim's records would look already stored: the shipper refuses every
    /// stream in its own namespace and the victim's records all arrive.
    #[test]
    fn a_task_stream_cannot_reach_the_dedup_markers() {
        let Some(srv) = RedisServer::start(0, &[]) else {
            return skip(
                "a_task_stream_cannot_reach_the_dedup_markers",
                "redis-server not installed",
            );
        };
        let d = tempfile::tempdir().unwrap();
        // The victim's record ids, as the pipeline gives them.
        let scratch = wal(&d.path().join("scratch"));
        let n = 50;
        common::fill_wal(&scratch, "victim", "", 0, n);
        let b = scratch.read_batch(1000, 64 << 20, Duration::ZERO).unwrap();
        let ids: Vec<String> = Expander::default()
            .expand(&b)
            .iter()
            .map(|r| String::from_utf8(r.id.to_vec()).unwrap())
            .collect();
        assert_eq!(ids.len(), n);
        let w = wal(d.path());
        // First the attacker, one record per victim marker; then the victim.
        for (i, id) in ids.iter().enumerate() {
            common::fill_wal(&w, "attacker", &format!("rein:dedup:{id}"), i, 1);
        }
        common::fill_wal(&w, "victim", "", 0, n);
        let stats = run(config(srv.url(), d.path()), w, 2 * n as u64);
        let mut con = srv.conn();
        eprintln!("{stats:?}");
        assert_eq!(
            xlen(&mut con, "rein-logs"),
            n as u64,
            "victim records suppressed"
        );
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), n as u64);
        let dl = std::fs::read_to_string(d.path().join("dead.ndjson")).unwrap();
        assert!(dl
            .lines()
            .all(|l| l.contains("dedup marker namespace") || l.contains("reserved")));
    }
}

/// The agent's module with no shipper running, allowing `sinks`.
fn module_allowing(dir: &Path, sinks: &str) -> rein_logger::module::LoggerModule {
    rein_logger::module::LoggerModule::new(&[
        (
            "shipper_socket".to_string(),
            dir.join("none.sock").display().to_string(),
        ),
        ("allowed_sinks".to_string(), sinks.to_string()),
    ])
    .unwrap()
}

/// A task label naming a stream in the shipper's own namespace fails that
/// container at `prepare`, with a message naming the label.
#[test]
fn reserved_stream_labels_are_refused_at_prepare() {
    let d = tempfile::tempdir().unwrap();
    let m = module_allowing(d.path(), "elasticsearch,redis");
    for stream in ["rein:dedup:0000000000000000-o-0", "rein:anything"] {
        let s = spec(
            "r",
            &d.path().join("sandbox"),
            &[
                ("rein.log.sink", "redis"),
                ("rein.log.redis_stream", stream),
            ],
        );
        let Err(e) = m.prepare(&s) else {
            panic!("`{stream}` accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("log.redis_stream") && e.contains("reserved"),
            "{e}"
        );
    }
    // The broker's own topics are refused at prepare too.
    let m = module_allowing(d.path(), "elasticsearch,kafka");
    for topic in ["__consumer_offsets", "..", "a topic"] {
        let s = spec(
            "k",
            &d.path().join("sandbox"),
            &[("rein.log.sink", "kafka"), ("rein.log.topic", topic)],
        );
        let Err(e) = m.prepare(&s) else {
            panic!("topic `{topic}` accepted")
        };
        assert!(e.to_string().contains("log.topic"), "{e}");
    }
}

/// Through a real shipper and an ES-compatible server: an attacker container
/// routes its records to a write-blocked index of today (`log.index`), writes
/// pretty-printed JSON and lines dated 1999 and 2190; a victim container beside
/// it writes pretty-printed JSON too. Every victim record is stored, the
/// attacker's are dead-lettered on its failing route, no index of another
/// date is created.
#[test]
fn shipper_keeps_a_victim_shipping_beside_a_hostile_route() {
    let Some(es) = EsServer::start() else {
        return skip(
            "shipper_keeps_a_victim_shipping_beside_a_hostile_route",
            "osmem-server not installed (pip install osmem-server==0.1.6)",
        );
    };
    let today = common::today();
    let blocked = format!("attacker-{today}");
    es.block_writes(&blocked);
    let d = tempfile::tempdir().unwrap();
    let mut sh = Shipper::start(
        d.path(),
        &format!(
            "es_url = http://{}\nes_index = victims-%Y.%m.%d\nes_gzip = false\nes_backoff_max = 300ms\nes_batch_records = 50\nroute_failure = dead_letter_after:3\npartial_flush = 300ms",
            es.addr
        ),
    );
    let module = sh.module();
    let victim = module
        .prepare(&spec(
            "victim",
            &d.path().join("victim"),
            &[
                ("rein.log.sink", "elasticsearch"),
                ("rein.log.multiline", "indented"),
            ],
        ))
        .unwrap();
    let attacker = module
        .prepare(&spec(
            "attacker",
            &d.path().join("attacker"),
            &[
                ("rein.log.sink", "elasticsearch"),
                ("rein.log.multiline", "indented"),
                ("rein.log.index", "attacker-%Y.%m.%d"),
            ],
        ))
        .unwrap();
    let n = 200;
    let mut v = std::fs::File::from(victim.stdout);
    let mut a = std::fs::File::from(attacker.stdout);
    for i in 0..n {
        write!(
            v,
            "{{\n  \"msg\": \"victim {i}\",\n  \"ctx\": {{\n    \"i\": {i}\n  }}\n}}\n"
        )
        .unwrap();
        match i % 3 {
            0 => write!(
                a,
                "{{\n  \"msg\": \"attacker {i}\",\n  \"x\": [\n 1\n ]\n}}\n"
            )
            .unwrap(),
            1 => writeln!(a, "1999-01-01T00:00:00Z attacker {i}").unwrap(),
            _ => writeln!(
                a,
                "{{\"@timestamp\":\"2190-01-01T00:00:00Z\",\"msg\":\"attacker {i}\"}}"
            )
            .unwrap(),
        }
    }
    drop((v, a, victim.stderr, attacker.stderr));
    let victims_index = format!("victims-{today}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let dead_of = |c: &serde_json::Value| {
        c["sinks"]["elasticsearch"]["dead_lettered"]
            .as_u64()
            .unwrap_or(0)
    };
    loop {
        let c = sh.counters();
        if es.count(&victims_index) >= n && dead_of(&c) >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "victim {} of {n}; {c}",
            es.count(&victims_index)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sh.wait_idle(Duration::from_secs(60));
    let c = sh.counters();
    sh.stop();
    eprintln!("{c}");
    assert_eq!(es.count(&victims_index), n, "every victim record once");
    assert_eq!(dead_of(&c), n, "only the attacker's records dead-lettered");
    let route = &c["routes"][format!("elasticsearch/{blocked}")];
    assert_eq!(route["failing"], 1, "{c}");
    assert_eq!(route["dead_lettered"], n);
    for other in ["attacker-1999.01.01", "attacker-2190.01.01"] {
        assert_eq!(
            es.get(&format!("/{other}")).unwrap().0,
            404,
            "{other} created"
        );
    }
    let msgs = es.messages(&victims_index);
    for i in 0..n {
        assert!(msgs.contains(&format!("victim {i}")), "victim {i} missing");
    }
}
