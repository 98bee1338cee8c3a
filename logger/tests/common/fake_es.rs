//! A minimal Elasticsearch `_bulk` endpoint for the fault tests and the chaos
//! bench (no external server, any volume): `create` stores a document under
//! its `_id` and answers 409 `version_conflict_engine_exception` when the id
//! is stored already, as Elasticsearch does. Per output line (`<prefix>
//! seq=<n> ...`, as `rein-log-loadgen` writes) it counts the distinct ids it
//! was stored under: 0 is a lost line, 2 or more a duplicate.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "accept_loop.rs"]
mod accept_loop;
use accept_loop::Accepting;

/// What the server stored.
#[derive(Default)]
pub struct Stored {
    /// Hashes of the ids stored.
    ids: HashSet<u64>,
    /// Per prefix, per sequence number: distinct ids it was stored under.
    pub lines: HashMap<String, Vec<u16>>,
    /// Documents whose message is not a numbered line.
    pub other: u64,
    /// `create` answered 409 (a resend).
    pub resends: u64,
    /// `_bulk` requests served.
    pub requests: u64,
}

/// Lost and duplicated lines of one prefix.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Lines stored once.
    pub once: u64,
    /// Lines never stored (of the `expected` first).
    pub lost: u64,
    /// Extra copies (a line stored under k ids counts k - 1).
    pub duplicates: u64,
    /// Lines beyond `expected`.
    pub unexpected: u64,
    /// Up to 10 lost sequence numbers.
    pub lost_examples: Vec<u64>,
}

impl Stored {
    /// Documents stored (distinct ids).
    pub fn docs(&self) -> u64 {
        self.ids.len() as u64
    }

    /// The tally of lines `prefix seq=0..expected`.
    pub fn tally(&self, prefix: &str, expected: u64) -> Tally {
        let empty = Vec::new();
        let v = self.lines.get(prefix).unwrap_or(&empty);
        let mut t = Tally::default();
        for seq in 0..expected {
            match v.get(seq as usize).copied().unwrap_or(0) {
                0 => {
                    t.lost += 1;
                    if t.lost_examples.len() < 10 {
                        t.lost_examples.push(seq);
                    }
                }
                k => {
                    t.once += 1;
                    t.duplicates += u64::from(k - 1);
                }
            }
        }
        t.unexpected = v.iter().skip(expected as usize).filter(|k| **k > 0).count() as u64;
        t
    }

    fn store(&mut self, id: &str, message: &str) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        if !self.ids.insert(h.finish()) {
            self.resends += 1;
            return false;
        }
        let mut parts = message.splitn(3, ' ');
        let prefix = parts.next().unwrap_or("");
        match parts
            .next()
            .and_then(|s| s.strip_prefix("seq="))
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(seq) => {
                let v = self.lines.entry(prefix.to_string()).or_default();
                if v.len() <= seq {
                    v.resize(seq + 1, 0);
                }
                v[seq] = v[seq].saturating_add(1);
            }
            None => self.other += 1,
        }
        true
    }
}

/// The server; stops accepting on drop.
pub struct FakeEs {
    pub addr: SocketAddr,
    pub stored: Arc<Mutex<Stored>>,
    _accepting: Accepting,
}

impl FakeEs {
    /// Listens on 127.0.0.1 (a free port).
    pub fn start() -> FakeEs {
        let stored = Arc::new(Mutex::new(Stored::default()));
        let accepting = Accepting::start("the fake Elasticsearch", stored.clone(), serve);
        FakeEs {
            addr: accepting.addr,
            stored,
            _accepting: accepting,
        }
    }

    /// Runs `f` on what was stored so far.
    pub fn with<R>(&self, f: impl FnOnce(&Stored) -> R) -> R {
        f(&self.stored.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn serve(c: TcpStream, stored: &Mutex<Stored>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(120)));
    let mut w = match c.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(c);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut len = 0usize;
        let mut chunked = false;
        let mut gzip = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "content-encoding" => gzip = v.contains("gzip"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut sz = String::new();
                if r.read_line(&mut sz).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(sz.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            if r.read_exact(&mut body).is_err() {
                return;
            }
        }
        if gzip {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .is_err()
            {
                return;
            }
            body = plain;
        }
        let reply = if method == "POST" && path.split('?').next().unwrap_or("").ends_with("_bulk") {
            bulk(&body, stored)
        } else {
            r#"{"version":{"number":"8.11.0"},"tagline":"fake"}"#.to_string()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn bulk(body: &[u8], stored: &Mutex<Stored>) -> String {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    let mut s = stored.lock().unwrap_or_else(|e| e.into_inner());
    s.requests += 1;
    while let (Some(action), Some(doc)) = (lines.next(), lines.next()) {
        let a: serde_json::Value = serde_json::from_str(action).unwrap_or_default();
        let meta = &a["create"];
        let index = meta["_index"].as_str().unwrap_or("logs").to_string();
        let id = meta["_id"].as_str().unwrap_or("").to_string();
        let d: serde_json::Value = serde_json::from_str(doc).unwrap_or_default();
        let message = d["message"].as_str().unwrap_or("");
        let item = if s.store(&id, message) {
            serde_json::json!({"create":{"_index":index,"_id":id,"_version":1,"result":"created","status":201}})
        } else {
            errors = true;
            serde_json::json!({"create":{"_index":index,"_id":id,"status":409,"error":{"type":"version_conflict_engine_exception","reason":format!("[{id}]: version conflict, document already exists (current version [1])")}}})
        };
        items.push(item);
    }
    serde_json::json!({"took":1,"errors":errors,"items":items}).to_string()
}
