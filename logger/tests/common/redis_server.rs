//! A real `redis-server` (Debian package) on 127.0.0.1, in-memory only,
//! killed on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `$REIN_REDIS_BIN`, or `redis-server` on the PATH (or /usr/bin, /usr/sbin).
pub fn redis_bin() -> Option<PathBuf> {
    super::find_bin("REIN_REDIS_BIN", "redis-server")
}

pub const MISSING: &str = "redis-server not installed (Debian package redis-server)";

/// A redis-server with its working directory in a temporary directory.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// [`RedisServer::start`] on a free port, or a visible skip of `test`
    /// (None) when redis-server is not installed.
    pub fn start_or_skip(test: &str) -> Option<RedisServer> {
        let s = RedisServer::start(0, &[]);
        if s.is_none() {
            super::skip(
                test,
                "redis-server not installed (.ci/logger-servers.sh install)",
            );
        }
        s
    }

    /// Starts redis-server on `port` (0: a free one) with extra arguments.
    pub fn start(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let bin = redis_bin()?;
        let port = if port == 0 { super::free_port() } else { port };
        let dir = tempfile::tempdir().ok()?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let s = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(s)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// An admin connection (no password).
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sink settings of the tests: stream `rein-logs`, dead letters in
/// `dir/dead.ndjson`.
pub fn sink_config(url: String, dir: &std::path::Path) -> rein_logger::sink::redis::RedisConfig {
    rein_logger::sink::redis::RedisConfig {
        url: url.into(),
        stream: "rein-logs".into(),
        batch_records: 500,
        batch_bytes: 4 << 20,
        dedup_ttl: Duration::from_secs(3600),
        dedup_prefix: "rein:dedup".into(),
        maxlen: None,
        auth_file: None,
        ca_file: None,
        timeout: Duration::from_secs(2),
        backoff_max: Duration::from_millis(300),
        dead_letter: dir.join("dead.ndjson"),
        route_failure: rein_logger::sink::route::DEFAULT_ROUTE_FAILURE,
    }
}

/// Entries in `key` (`XLEN`).
pub fn xlen(con: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(con).unwrap()
}

/// One stream entry: (entry id, fields in order).
pub type Entry = (String, Vec<(String, Vec<u8>)>);

/// Every entry of `key` (`XRANGE key - +`).
pub fn xrange(con: &mut redis::Connection, key: &str) -> Vec<Entry> {
    use redis::Value;
    let v: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    let text = |v: &Value| match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        other => panic!("unexpected {other:?}"),
    };
    let Value::Array(items) = v else {
        panic!("XRANGE answered {v:?}")
    };
    items
        .iter()
        .map(|e| {
            let Value::Array(pair) = e else {
                panic!("entry {e:?}")
            };
            let Value::Array(fields) = &pair[1] else {
                panic!("fields {:?}", pair[1])
            };
            let fields = fields
                .chunks(2)
                .map(|kv| (String::from_utf8(text(&kv[0])).unwrap(), text(&kv[1])))
                .collect();
            (String::from_utf8(text(&pair[0])).unwrap(), fields)
        })
        .collect()
}
