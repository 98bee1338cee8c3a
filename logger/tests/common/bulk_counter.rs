//! A fast Elasticsearch-compatible `_bulk` endpoint for throughput benches:
//! parses every action and document line (plain or gzip bodies), answers
//! per-item results as Elasticsearch does (`create` of a stored `_id`: 409
//! `version_conflict_engine_exception`; `index`: 201), and counts per line
//! `<prefix> seq=<n> ...` how many documents carried it, so a bench can tell
//! delivered, missing and duplicated lines of any shipper, with or without
//! ids. No JSON tree is built: the bench measures the shippers, not this.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[path = "accept_loop.rs"]
mod accept_loop;
use accept_loop::Accepting;

use crate::common::http_server::{decoded_body, read_request, write_response};

/// What the endpoint received.
#[derive(Default)]
pub struct Counts {
    /// Hashes of the `_id`s stored.
    ids: HashSet<u64>,
    /// Per prefix, per sequence number: documents stored with that line.
    lines: HashMap<String, Vec<u16>>,
    /// Documents stored (201).
    pub docs: u64,
    /// `create` of an id stored already (409: a resend the server dropped).
    pub id_conflicts: u64,
    /// Documents whose message is not a numbered line.
    pub other: u64,
    /// `_bulk` requests served.
    pub requests: u64,
    /// Bytes of bulk bodies as sent (before gunzip).
    pub wire_bytes: u64,
    /// When the last document was stored.
    pub last_doc: Option<Instant>,
}

/// Delivered, missing and duplicated lines of one prefix.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Lines stored at least once (of the `expected` first).
    pub delivered: u64,
    /// Lines never stored.
    pub missing: u64,
    /// Extra copies (a line stored k times counts k - 1).
    pub duplicates: u64,
    /// Lines numbered `expected` or more.
    pub unexpected: u64,
}

impl Counts {
    /// The delivery of lines `prefix seq=0..expected`.
    pub fn delivery(&self, prefix: &str, expected: u64) -> Delivery {
        let empty = Vec::new();
        let v = self.lines.get(prefix).unwrap_or(&empty);
        let mut d = Delivery::default();
        for seq in 0..expected {
            match v.get(seq as usize).copied().unwrap_or(0) {
                0 => d.missing += 1,
                k => {
                    d.delivered += 1;
                    d.duplicates += u64::from(k - 1);
                }
            }
        }
        d.unexpected = v.iter().skip(expected as usize).filter(|k| **k > 0).count() as u64;
        d
    }

    fn count_line(&mut self, message: &[u8]) {
        let text = String::from_utf8_lossy(message);
        let mut parts = text.splitn(3, ' ');
        let prefix = parts.next().unwrap_or("");
        match parts
            .next()
            .and_then(|s| s.strip_prefix("seq="))
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(seq) => {
                let v = self.lines.entry(prefix.to_string()).or_default();
                if v.len() <= seq {
                    v.resize((seq + 1).max(v.len() * 2), 0);
                }
                v[seq] = v[seq].saturating_add(1);
            }
            None => self.other += 1,
        }
    }
}

/// The server; stops accepting on drop (open connections end with their peer).
pub struct BulkCounter {
    pub addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    _accepting: Accepting,
}

impl BulkCounter {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start() -> BulkCounter {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let accepting = Accepting::start("the bulk counter", counts.clone(), serve);
        BulkCounter {
            addr: accepting.addr,
            counts,
            _accepting: accepting,
        }
    }

    /// Runs `f` on the counts so far.
    pub fn with<R>(&self, f: impl FnOnce(&Counts) -> R) -> R {
        f(&self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn serve(s: TcpStream, counts: &Mutex<Counts>) {
    let _ = s.set_nodelay(true);
    let Ok(w) = s.try_clone() else { return };
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut w = BufWriter::with_capacity(1 << 20, w);
    while let Ok(Some((start, headers, body))) = read_request(&mut r) {
        let wire = body.len() as u64;
        let mut parts = start.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let is_bulk = method == "POST" && path.split('?').next().unwrap_or("").ends_with("_bulk");
        let reply = if is_bulk {
            let body = decoded_body(&headers, body);
            bulk(&body, wire, counts)
        } else {
            br#"{"name":"bulk-counter","version":{"number":"8.11.0"},"tagline":"You Know, for Search"}"#
                .to_vec()
        };
        if write_response(&mut w, 200, "OK", &reply).is_err() {
            return;
        }
    }
}

/// The string value after `"key":` in a JSON line (no unescaping: the
/// values counted here are plain).
fn string_field<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &line[at..];
    let open = rest.iter().position(|b| *b == b'"')? + 1;
    if !rest[..open - 1].iter().all(|b| *b == b':' || *b == b' ') {
        return None;
    }
    let rest = &rest[open..];
    let mut end = 0;
    while end < rest.len() && rest[end] != b'"' {
        end += if rest[end] == b'\\' { 2 } else { 1 };
    }
    rest.get(..end)
}

fn bulk(body: &[u8], wire: u64, counts: &Mutex<Counts>) -> Vec<u8> {
    let mut lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut items = Vec::with_capacity(body.len() / 4);
    let mut errors = false;
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    c.requests += 1;
    c.wire_bytes += wire;
    while let (Some(action), Some(doc)) = (lines.next(), lines.next()) {
        let op: &[u8] = if action.windows(8).any(|w| w == b"\"create\"") {
            b"create"
        } else {
            b"index"
        };
        let id = string_field(action, b"\"_id\"").unwrap_or(b"");
        let fresh = id.is_empty() || {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut h);
            c.ids.insert(h.finish())
        };
        if !items.is_empty() {
            items.push(b',');
        }
        // Items shaped as Elasticsearch 8 writes them (shippers parse them all).
        items.extend_from_slice(b"{\"");
        items.extend_from_slice(op);
        items.extend_from_slice(b"\":{\"_index\":\"");
        items.extend_from_slice(string_field(action, b"\"_index\"").unwrap_or(b"logs"));
        items.extend_from_slice(b"\",\"_id\":\"");
        if id.is_empty() {
            items.extend_from_slice(format!("auto-{}", c.docs).as_bytes());
        } else {
            items.extend_from_slice(id);
        }
        if fresh || op == b"index" {
            let seq_no = c.docs;
            c.docs += 1;
            c.last_doc = Some(Instant::now());
            c.count_line(string_field(doc, b"\"message\"").unwrap_or(b""));
            items.extend_from_slice(
                format!(
                    "\",\"_version\":1,\"result\":\"created\",\"_shards\":{{\"total\":2,\"successful\":1,\"failed\":0}},\"_seq_no\":{seq_no},\"_primary_term\":1,\"status\":201}}}}"
                )
                .as_bytes(),
            );
        } else {
            errors = true;
            c.id_conflicts += 1;
            items.extend_from_slice(
                b"\",\"status\":409,\"error\":{\"type\":\"version_conflict_engine_exception\",\"reason\":\"version conflict, document already exists (current version [1])\"}}}",
            );
        }
    }
    let mut out = Vec::with_capacity(items.len() + 48);
    out.extend_from_slice(b"{\"took\":1,\"errors\":");
    out.extend_from_slice(if errors { b"true" } else { b"false" });
    out.extend_from_slice(b",\"items\":[");
    out.extend_from_slice(&items);
    out.extend_from_slice(b"]}");
    out
}
