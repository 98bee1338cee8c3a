//! A real `nats-server` (Debian package) with JetStream on 127.0.0.1, its
//! store in a temporary directory, killed on drop; and the JetStream API
//! requests the tests read streams back with (through the sink's own
//! connection type: the server is the real one).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rein_logger::sink::nats::NatsConfig;
use rein_logger::sink::nats_config::{NatsAuth, NatsUrl};
use rein_logger::sink::nats_conn::NatsConn;

/// `$REIN_NATS_BIN`, or `nats-server` on the PATH (or /usr/bin, /usr/sbin).
pub fn nats_bin() -> Option<PathBuf> {
    super::find_bin("REIN_NATS_BIN", "nats-server")
}

pub const MISSING: &str = "nats-server not installed (Debian package nats-server)";

/// A nats-server with JetStream; `conf` holds extra configuration lines
/// (`max_payload`, `authorization`, `tls`), kept for a restart.
pub struct NatsServer {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: String,
    /// Credentials of the admin connections.
    pub auth: Option<NatsAuth>,
    /// The CA of a TLS server (admin connections use tls://).
    pub tls_ca: Option<PathBuf>,
}

impl NatsServer {
    /// [`NatsServer::start`] on a free port, or a visible skip of `test`.
    pub fn start_or_skip(test: &str, conf: &str) -> Option<NatsServer> {
        if nats_bin().is_none() {
            super::skip(test, MISSING);
            return None;
        }
        Some(NatsServer::start(0, conf))
    }

    /// Starts nats-server on `port` (0: a free one) with configuration lines `conf`.
    pub fn start(port: u16, conf: &str) -> NatsServer {
        let port = if port == 0 { super::free_port() } else { port };
        let dir = tempfile::tempdir().unwrap();
        NatsServer {
            child: spawn(port, dir.path(), conf),
            port,
            dir,
            conf: conf.to_string(),
            auth: None,
            tls_ca: None,
        }
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        log_in(self.dir.path())
    }

    /// `kill -9` of the server (an outage); its store stays.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server again, on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, self.dir.path(), &self.conf);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// An admin connection (with the server's `auth` and `tls_ca`), retried
    /// while the server starts.
    pub fn admin(&self) -> NatsConn {
        let url: NatsUrl = self.url().parse().unwrap();
        let ca = self.tls_ca.clone().unwrap_or_else(|| "/nonexistent".into());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match NatsConn::connect(&url, &ca, self.auth.as_ref(), Duration::from_secs(5)) {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "admin connection: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A JetStream API request: its JSON answer (retried while JetStream is
    /// not ready: `no responders`).
    pub fn api(
        &self,
        con: &mut NatsConn,
        subject: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = con.request(subject, body.to_string().as_bytes()).unwrap();
            if m.status.is_none() {
                return serde_json::from_slice(&m.payload).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{subject}: status {:?}",
                m.status
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates stream `name` on `subjects` (file storage), with more settings `extra`.
    pub fn create_stream(&self, name: &str, subjects: &[&str], extra: serde_json::Value) {
        let mut cfg = serde_json::json!({
            "name": name, "subjects": subjects, "storage": "file", "num_replicas": 1,
        });
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                cfg[k] = v;
            }
        }
        let mut con = self.admin();
        let r = self.api(&mut con, &format!("$JS.API.STREAM.CREATE.{name}"), &cfg);
        assert!(r.get("error").is_none(), "stream {name}: {r}");
    }

    /// Messages in stream `name`.
    pub fn messages(&self, name: &str) -> u64 {
        let mut con = self.admin();
        let r = self.api(
            &mut con,
            &format!("$JS.API.STREAM.INFO.{name}"),
            &serde_json::json!({}),
        );
        r["state"]["messages"]
            .as_u64()
            .unwrap_or_else(|| panic!("{r}"))
    }

    /// Every message of stream `name`, in sequence order.
    pub fn read_all(&self, name: &str) -> Vec<StoredMsg> {
        let mut con = self.admin();
        let r = self.api(
            &mut con,
            &format!("$JS.API.STREAM.INFO.{name}"),
            &serde_json::json!({}),
        );
        let last = r["state"]["last_seq"].as_u64().unwrap();
        (1..=last)
            .filter_map(|seq| self.get(&mut con, name, seq))
            .collect()
    }

    /// Message `seq` of stream `name` (None: deleted).
    pub fn get(&self, con: &mut NatsConn, name: &str, seq: u64) -> Option<StoredMsg> {
        let r = self.api(
            con,
            &format!("$JS.API.STREAM.MSG.GET.{name}"),
            &serde_json::json!({ "seq": seq }),
        );
        let m = r.get("message")?;
        let hdrs = String::from_utf8(base64(m["hdrs"].as_str().unwrap_or(""))).unwrap();
        let header = |k: &str| {
            hdrs.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .map(str::to_string)
                .unwrap_or_default()
        };
        Some(StoredMsg {
            subject: m["subject"].as_str().unwrap().to_string(),
            msg_id: header("Nats-Msg-Id"),
            container: header("Rein-Container"),
            stream: header("Rein-Stream"),
            data: base64(m["data"].as_str().unwrap_or("")),
        })
    }
}

/// One message of a stream.
#[derive(Debug)]
pub struct StoredMsg {
    pub subject: String,
    pub msg_id: String,
    pub container: String,
    pub stream: String,
    pub data: Vec<u8>,
}

impl StoredMsg {
    /// The record's document.
    pub fn doc(&self) -> serde_json::Value {
        serde_json::from_slice(&self.data).unwrap()
    }

    /// (prefix, seq) of a `fill_wal` or loadgen line `"<prefix> seq=<n> ..."`.
    pub fn seq(&self) -> (String, u64) {
        let doc = self.doc();
        let msg = doc["message"].as_str().unwrap().to_string();
        let mut it = msg.split(' ');
        let prefix = it.next().unwrap().to_string();
        (prefix, it.next().unwrap()[4..].parse().unwrap())
    }
}

/// Standard base64 (with padding), as the JetStream API sends it.
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => u32::from(c - b'A'),
        b'a'..=b'z' => u32::from(c - b'a') + 26,
        b'0'..=b'9' => u32::from(c - b'0') + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nats-server on 127.0.0.1:`port` with its configuration, store and
/// log in `dir`; returns once it listens.
fn spawn(port: u16, dir: &Path, conf: &str) -> Child {
    let file = dir.join("nats.conf");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n{conf}\n",
            dir.join("store").display(),
        ),
    )
    .unwrap();
    let child = Command::new(nats_bin().expect("nats-server"))
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("server.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen: {}",
            log_in(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn log_in(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// The sink settings of the tests: subject `rein.logs`, dead letters in
/// `dir/dead.ndjson`, short timeouts.
pub fn sink_config(url: &str, dir: &Path) -> NatsConfig {
    NatsConfig {
        servers: rein_logger::sink::nats_config::parse_servers(url).unwrap(),
        subject: "rein.logs".into(),
        stream: None,
        batch_records: 500,
        batch_bytes: 4 << 20,
        auth_file: None,
        ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        timeout: Duration::from_secs(2),
        backoff_max: Duration::from_millis(300),
        dead_letter: dir.join("dead.ndjson"),
        route_failure: rein_logger::sink::route::DEFAULT_ROUTE_FAILURE,
    }
}
