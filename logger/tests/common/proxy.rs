//! A fault-injecting HTTP proxy for `_bulk`: answers 429 or 503 itself,
//! rejects some items of a request with a per-item 429/503 (forwarding only
//! the others, as Elasticsearch does), answers slowly, or drops the
//! connection before forwarding or after forwarding (the request was applied
//! but the client never hears so). Optionally terminates TLS.

use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http_server::{self as http, decoded_body};
use rein_logger::http::{Client, Limits, Url};

/// What the proxy does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward unchanged.
    Pass,
    /// Answer this status for the whole request without forwarding.
    Status(u16),
    /// Reject items `i % every == 0` with `status` (per item), forward the rest.
    Partial { every: usize, status: u16 },
    /// Reject the items whose `_index` starts with `index` with `status`
    /// (per item), forward the rest.
    PartialIndex { index: String, status: u16 },
    /// Wait, then forward.
    Slow(Duration),
    /// Close the connection without forwarding.
    DropBeforeForward,
    /// Forward, then close without answering (applied, but unacknowledged).
    DropAfterForward,
}

/// What the proxy saw in one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub fault: Fault,
    pub gzip: bool,
    pub auth: Option<String>,
    pub items: usize,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub script: Arc<Mutex<VecDeque<Fault>>>,
    /// The fault of every request once the script is empty (`Pass` unless set).
    pub always: Arc<Mutex<Fault>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

impl Proxy {
    /// Starts the proxy in front of `upstream` (plain HTTP); with `tls`, clients must use https.
    pub fn start(upstream: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let always = Arc::new(Mutex::new(Fault::Pass));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sc, se, st, al) = (script.clone(), seen.clone(), stop.clone(), always.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(s) = s else { continue };
                let (sc, se, tls, al) = (sc.clone(), se.clone(), tls.clone(), al.clone());
                std::thread::spawn(move || {
                    let io: Box<dyn Io> = match tls {
                        Some(cfg) => match rustls::ServerConnection::new(cfg) {
                            Ok(c) => Box::new(rustls::StreamOwned::new(c, s)),
                            Err(_) => return,
                        },
                        None => Box::new(s),
                    };
                    serve(io, upstream, &sc, &al, &se);
                });
            }
        });
        Proxy {
            addr,
            script,
            always,
            seen,
            stop,
        }
    }

    pub fn push(&self, f: Fault) {
        self.script.lock().unwrap().push_back(f);
    }

    /// Applies `f` to every request once the script is empty.
    pub fn set_always(&self, f: Fault) {
        *self.always.lock().unwrap() = f;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    io: Box<dyn Io>,
    upstream: SocketAddr,
    script: &Mutex<VecDeque<Fault>>,
    always: &Mutex<Fault>,
    seen: &Mutex<Vec<Seen>>,
) {
    let mut r = BufReader::new(io);
    let mut up = upstream_client(upstream);
    loop {
        let Ok(Some((start, headers, body))) = http::read_request(&mut r) else {
            return;
        };
        let path = start.split(' ').nth(1).unwrap_or("/").to_string();
        let gzip = http::header(&headers, "content-encoding") == Some("gzip");
        let body = decoded_body(&headers, body);
        let is_bulk = path.contains("_bulk");
        let fault = if is_bulk {
            let next = script.lock().unwrap().pop_front();
            next.unwrap_or_else(|| always.lock().unwrap().clone())
        } else {
            Fault::Pass
        };
        let lines: Vec<&[u8]> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        seen.lock().unwrap().push(Seen {
            fault: fault.clone(),
            gzip,
            auth: http::header(&headers, "authorization").map(str::to_string),
            items: lines.len() / 2,
        });
        let forward = |up: &mut Client, body: &[u8]| {
            let method = start.split(' ').next().unwrap_or("POST");
            up.request(
                method,
                &path,
                &[("Content-Type", "application/x-ndjson")],
                body,
            )
        };
        let w = r.get_mut();
        let res = match fault {
            Fault::Pass => match forward(&mut up, &body) {
                Ok(resp) => http::write_response(w, resp.status, "OK", &resp.body),
                Err(_) => return,
            },
            Fault::Status(s) => {
                let b = format!(
                    r#"{{"error":{{"type":"{}","reason":"injected by the test proxy"}},"status":{s}}}"#,
                    if s == 429 {
                        "es_rejected_execution_exception"
                    } else {
                        "unavailable_shards_exception"
                    }
                );
                http::write_response(w, s, "Injected", b.as_bytes())
            }
            Fault::Slow(d) => {
                std::thread::sleep(d);
                match forward(&mut up, &body) {
                    Ok(resp) => http::write_response(w, resp.status, "OK", &resp.body),
                    Err(_) => return,
                }
            }
            Fault::DropBeforeForward => return,
            Fault::DropAfterForward => {
                let _ = forward(&mut up, &body);
                return;
            }
            Fault::Partial { .. } | Fault::PartialIndex { .. } => {
                let n = lines.len() / 2;
                let status = match &fault {
                    Fault::Partial { status, .. } | Fault::PartialIndex { status, .. } => *status,
                    _ => unreachable!(),
                };
                let rejected = |i: usize| match &fault {
                    Fault::Partial { every, .. } => i.is_multiple_of(*every),
                    Fault::PartialIndex { index, .. } => {
                        let action: serde_json::Value =
                            serde_json::from_slice(lines[2 * i]).unwrap();
                        action["create"]["_index"]
                            .as_str()
                            .is_some_and(|s| s.starts_with(index.as_str()))
                    }
                    _ => false,
                };
                let mut fwd = Vec::new();
                for i in 0..n {
                    if !rejected(i) {
                        fwd.extend_from_slice(lines[2 * i]);
                        fwd.push(b'\n');
                        fwd.extend_from_slice(lines[2 * i + 1]);
                        fwd.push(b'\n');
                    }
                }
                let mut up_items: VecDeque<serde_json::Value> = VecDeque::new();
                if !fwd.is_empty() {
                    let Ok(resp) = forward(&mut up, &fwd) else {
                        return;
                    };
                    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                    up_items = v["items"].as_array().cloned().unwrap_or_default().into();
                }
                let mut items = Vec::new();
                for i in 0..n {
                    if rejected(i) {
                        let action: serde_json::Value =
                            serde_json::from_slice(lines[2 * i]).unwrap();
                        let id = action["create"]["_id"].clone();
                        let etype = if status == 429 {
                            "es_rejected_execution_exception"
                        } else {
                            "unavailable_shards_exception"
                        };
                        items.push(serde_json::json!({"create": {"_id": id, "status": status,
                            "error": {"type": etype, "reason": "injected by the test proxy"}}}));
                    } else {
                        items.push(up_items.pop_front().unwrap());
                    }
                }
                let b = serde_json::json!({"errors": true, "took": 1, "items": items}).to_string();
                http::write_response(w, 200, "OK", b.as_bytes())
            }
        };
        if res.is_err() {
            return;
        }
    }
}

/// A client of the real server behind a test proxy or helper.
pub fn upstream_client(upstream: SocketAddr) -> Client {
    let limits = Limits {
        io_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    Client::new(
        &Url::parse(&format!("http://{upstream}")).unwrap(),
        None,
        limits,
    )
    .unwrap()
}

/// A stand-in Elasticsearch for long outage tests: answers `_bulk` like ES
/// (`create`: 201 for a new `_id`, 409 for a known one) and 503 while `down`,
/// and only counts ids, so hundreds of thousands of records cost little memory.
/// (The real-server tests use osmem-server; this one is for scale.)
pub struct FakeEs {
    pub addr: SocketAddr,
    pub ids: Arc<Mutex<std::collections::HashSet<String>>>,
    pub down: Arc<AtomicBool>,
    pub conflicts: Arc<std::sync::atomic::AtomicU64>,
}

impl FakeEs {
    pub fn start() -> FakeEs {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ids = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let down = Arc::new(AtomicBool::new(false));
        let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (i2, d2, c2) = (ids.clone(), down.clone(), conflicts.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let (ids, down, conflicts) = (i2.clone(), d2.clone(), c2.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    while let Ok(Some((_, headers, body))) = http::read_request(&mut r) {
                        let w = r.get_mut();
                        if down.load(Ordering::Relaxed) {
                            if http::write_response(
                                w,
                                503,
                                "Unavailable",
                                br#"{"error":"down","status":503}"#,
                            )
                            .is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        let body = decoded_body(&headers, body);
                        let mut items = String::from(r#"{"errors":false,"items":["#);
                        let mut first = true;
                        let mut g = ids.lock().unwrap();
                        for line in body
                            .split(|&b| b == b'\n')
                            .step_by(2)
                            .filter(|l| !l.is_empty())
                        {
                            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                            let id = v["create"]["_id"].as_str().unwrap().to_string();
                            let status = if g.insert(id) {
                                201
                            } else {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                                409
                            };
                            if !first {
                                items.push(',');
                            }
                            first = false;
                            if status == 201 {
                                items.push_str(r#"{"create":{"status":201}}"#);
                            } else {
                                items.push_str(r#"{"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}}"#);
                            }
                        }
                        drop(g);
                        items.push_str("]}");
                        if http::write_response(w, 200, "OK", items.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeEs {
            addr,
            ids,
            down,
            conflicts,
        }
    }

    pub fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}
