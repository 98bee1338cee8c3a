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
