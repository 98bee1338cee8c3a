//! Debian's rsyslogd as a peer shipper for benches: its own configuration
//! (from `tests/peer/rsyslog.conf`) and pid file in a temporary directory,
//! never the system's configuration or service; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEMPLATE: &str = include_str!("../peer/rsyslog.conf");

/// What to install when rsyslogd or its modules are missing.
pub const INSTALL: &str = "apt-get install -y rsyslog rsyslog-elasticsearch";

/// How rsyslog queues and batches towards Elasticsearch.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// `queue.dequeueBatchSize`: documents per `_bulk` request.
    pub batch: u32,
    /// `queue.workerThreads` of the action.
    pub workers: u32,
    /// `queue.size` (messages held in memory).
    pub queue_size: u32,
    /// `maxbytes` of a `_bulk` request.
    pub max_bytes: &'static str,
    /// `searchIndex`: the index written to.
    pub index: &'static str,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            batch: 2000,
            workers: 1,
            queue_size: 200_000,
            max_bytes: "10m",
            index: "rsyslog-peer",
        }
    }
}

/// The configuration for `input`, shipping to 127.0.0.1:`port`.
pub fn config(workdir: &Path, input: &Path, port: u16, t: &Tuning) -> String {
    TEMPLATE
        .replace("@WORKDIR@", &workdir.display().to_string())
        .replace("@INPUT@", &input.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@BATCH@", &t.batch.to_string())
        .replace("@WORKERS@", &t.workers.to_string())
        .replace("@QUEUE_SIZE@", &t.queue_size.to_string())
        .replace("@MAXBYTES@", t.max_bytes)
        .replace("@INDEX@", t.index)
}

/// Why rsyslog cannot run here (no rsyslogd, or the configuration with
/// imfile and omelasticsearch does not validate), or `None`.
pub fn missing() -> Option<String> {
    let Some(bin) = crate::common::find_bin("REIN_RSYSLOGD", "rsyslogd") else {
        return Some(format!("rsyslogd not found ({INSTALL})"));
    };
    let d = tempfile::tempdir().ok()?;
    let conf = d.path().join("check.conf");
    let text = config(d.path(), &d.path().join("in.log"), 9, &Tuning::default());
    std::fs::write(&conf, text).ok()?;
    let out = Command::new(bin).arg("-N1").arg("-f").arg(&conf).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "rsyslogd cannot load imfile and omelasticsearch ({INSTALL}): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("rsyslogd does not run ({e}; {INSTALL})")),
    }
}

/// A running rsyslogd following one file.
pub struct Rsyslog {
    child: Child,
    /// The file it follows.
    pub input: PathBuf,
}

impl Rsyslog {
    /// Starts rsyslogd in the foreground with its configuration, pid file and
    /// state under `dir`, following `dir/in.log` (created empty).
    pub fn start(dir: &Path, port: u16, t: &Tuning) -> Rsyslog {
        let bin = crate::common::find_bin("REIN_RSYSLOGD", "rsyslogd").expect("rsyslogd");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let input = dir.join("in.log");
        std::fs::write(&input, b"").unwrap();
        let conf = dir.join("rsyslog.conf");
        std::fs::write(&conf, config(&work, &input, port, t)).unwrap();
        let pidfile = dir.join("rsyslogd.pid");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("rsyslogd.err")).unwrap())
            .spawn()
            .expect("start rsyslogd");
        let r = Rsyslog { child, input };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pidfile.exists() {
            assert!(Instant::now() < deadline, "rsyslogd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid")
    }

    /// SIGTERM, then waits.
    pub fn stop(&mut self) {
        crate::common::shipper::terminate(&mut self.child);
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}
