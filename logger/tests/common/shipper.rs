//! Runs the real `rein-log-shipper` binary and containers (`rein-log-loadgen`)
//! through `LoggerModule::prepare`, as the agent would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rein_core::container::{ContainerId, ContainerSpec};
use rein_logger::module::LoggerModule;

pub struct Shipper {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
}

impl Shipper {
    /// Starts a shipper with its state under `dir` and extra `key = value` settings.
    pub fn start(dir: &Path, extra: &str) -> Shipper {
        Shipper::start_env(dir, extra, &[])
    }

    /// [`Shipper::start`] with extra environment variables (fault injection).
    pub fn start_env(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Shipper {
        let socket = dir.join("shipper.sock");
        let state = dir.join("state");
        let conf = dir.join("shipper.conf");
        // REIN_TEST_SHIPPER_EXTRA: settings for every test shipper (separated by
        // `;`), to run a suite with, say, `parser_threads = 2`; a test's own
        // setting of the same name wins (a name may not be given twice).
        let matrix: String = std::env::var("REIN_TEST_SHIPPER_EXTRA")
            .unwrap_or_default()
            .split(';')
            .filter(|kv| {
                let name = kv.split('=').next().unwrap_or("").trim();
                !name.is_empty()
                    && !extra
                        .lines()
                        .any(|l| l.split('=').next().unwrap_or("").trim() == name)
            })
            .map(|kv| format!("{}\n", kv.trim()))
            .collect();
        std::fs::write(
            &conf,
            format!(
                "socket = {}\nstate_dir = {}\n{}{extra}\n{matrix}\n",
                socket.display(),
                state.display(),
                if extra.contains("checkpoint_interval") {
                    ""
                } else {
                    "checkpoint_interval = 100ms\n"
                }
            ),
        )
        .unwrap();
        // REIN_SHIPPER_BIN: another build of the shipper (benches compare two).
        let bin = std::env::var_os("REIN_SHIPPER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_rein-log-shipper").into());
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&conf)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let s = Shipper {
            child,
            dir: dir.to_path_buf(),
            socket,
            state,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(s.socket.exists() && s.state.join("worker.pid").exists()) {
            assert!(Instant::now() < deadline, "shipper did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        s
    }

    pub fn worker_pid(&self) -> i32 {
        std::fs::read_to_string(self.state.join("worker.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// kill -9 of the worker; waits until the supervisor started a new one.
    pub fn kill_worker(&self) {
        let old = self.worker_pid();
        // SAFETY: kill(2) of a process this test started (through the supervisor).
        unsafe { libc::kill(old, libc::SIGKILL) };
        self.wait_new_worker(old);
    }

    pub fn wait_new_worker(&self, old: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(self.state.join("worker.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            == Some(old)
        {
            assert!(Instant::now() < deadline, "no new worker");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGHUP: the worker is restarted from the binary on disk (upgrade path).
    pub fn restart_worker(&self) {
        let old = self.worker_pid();
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        self.wait_new_worker(old);
    }

    pub fn module(&self) -> LoggerModule {
        self.module_with(&[])
    }

    /// The agent's module for this shipper, with more module parameters.
    pub fn module_with(&self, params: &[(&str, &str)]) -> LoggerModule {
        module_at(&self.socket, params)
    }

    pub fn counters(&self) -> serde_json::Value {
        counters_in(&self.state)
    }

    /// Waits until no container is attached any more (all streams at EOF and flushed).
    pub fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let n = std::fs::read_dir(self.state.join("containers"))
                .map(|d| d.count())
                .unwrap_or(0);
            if n == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{n} containers still attached");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// The counters a shipper with state directory `state` last wrote (null
/// before the first).
pub fn counters_in(state: &Path) -> serde_json::Value {
    std::fs::read_to_string(state.join("counters.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// SIGTERM to a shipper this test started, then waits for it.
pub fn terminate(child: &mut Child) {
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// A container of task `task-<name>` in `sandbox` (created) with `labels`.
pub fn spec(name: &str, sandbox: &Path, labels: &[(&str, &str)]) -> ContainerSpec {
    std::fs::create_dir_all(sandbox).unwrap();
    spec_in(name, sandbox, labels)
}

/// [`spec`] without creating the sandbox.
pub fn spec_in(name: &str, sandbox: &Path, labels: &[(&str, &str)]) -> ContainerSpec {
    ContainerSpec {
        id: ContainerId::new(["parent-1", name]).unwrap(),
        sandbox: sandbox.to_path_buf(),
        task_id: Some(format!("task-{name}")),
        task_name: Some("web".into()),
        executor_id: Some("exec-1".into()),
        framework_id: Some("fw-1".into()),
        agent_id: Some("agent-1".into()),
        task_labels: labels
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The agent's module talking to the shipper at `socket`, with these module
/// parameters.
pub fn module_at(socket: &Path, params: &[(&str, &str)]) -> LoggerModule {
    let mut all = vec![("shipper_socket".to_string(), socket.display().to_string())];
    all.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    LoggerModule::new(&all).unwrap()
}

/// Starts `rein-log-loadgen` with the container's descriptors from `prepare`.
pub fn run_container(m: &LoggerModule, spec: &ContainerSpec, args: &[&str]) -> Child {
    let io = m.prepare(spec).unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr))
        .spawn()
        .unwrap()
}

/// [`run_container`] writing `lines` loadgen lines `prefix seq=N ...` at
/// `rate` lines a second (None: as fast as it can).
pub fn run_loadgen(
    m: &LoggerModule,
    spec: &ContainerSpec,
    lines: u64,
    rate: Option<u32>,
    prefix: &str,
) -> Child {
    let (lines, rate) = (lines.to_string(), rate.map(|r| r.to_string()));
    let mut args = vec!["--lines", &lines, "--prefix", prefix];
    if let Some(rate) = &rate {
        args.extend(["--rate", rate]);
    }
    run_container(m, spec, &args)
}

/// The stream as written to the sandbox: rotated files oldest first, then the current one.
pub fn sandbox_stream(sandbox: &Path, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = 1000;
    while n > 0 {
        if let Ok(b) = std::fs::read(sandbox.join(format!("{name}.{n}"))) {
            out.extend_from_slice(&b);
        }
        n -= 1;
    }
    out.extend_from_slice(&std::fs::read(sandbox.join(name)).unwrap_or_default());
    out
}

/// Calls `f` with every record of a disk buffer directory, in order,
/// acknowledging them as it goes: the directory is consumed.
pub fn drain_buffer(dir: &Path, mut f: impl FnMut(rein_logger::walrec::WalRecord<'_>)) {
    use rein_logger::wal::{FullPolicy, Wal, WalConfig};
    let w = Wal::open(WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 30,
        max_bytes: 1 << 40,
        fsync_interval: Duration::from_secs(1),
        policy: FullPolicy::Pause,
    })
    .unwrap();
    loop {
        let b = w.read_batch(100_000, 64 << 20, Duration::ZERO).unwrap();
        if b.is_empty() {
            return;
        }
        let mut whole = rein_logger::walrec::Expander::default();
        for r in whole.expand(&b) {
            f(r);
        }
        w.ack(b.end, b.len() as u64).unwrap();
    }
}

/// [`drain_buffer`] on a copy: the directory is left as it was.
pub fn read_buffer(dir: &Path, f: impl FnMut(rein_logger::walrec::WalRecord<'_>)) {
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
    }
    drain_buffer(copy.path(), f);
}

/// Sequence numbers (`seq=N`) of the records in a disk buffer directory,
/// with their line prefix (read from a copy: the directory is left as it was).
pub fn buffered_seqs(buffer: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    read_buffer(buffer, |rec| {
        let v: serde_json::Value = serde_json::from_slice(rec.doc).unwrap();
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(" seq="),
            "not a whole line: {msg:.60} (flags {})",
            v["log"]
        );
        let mut parts = msg.split(' ');
        let prefix = parts.next().unwrap().to_string();
        let seq = parts
            .next()
            .unwrap()
            .strip_prefix("seq=")
            .unwrap()
            .parse()
            .unwrap();
        out.push((prefix, seq));
    });
    out
}
