//! `rein-log-chaos`: a long randomized fault run of the real shipper (a
//! bench, not a test). Containers (`rein-log-loadgen`, registered through
//! the module as the agent would) come and go, writing numbered lines to an
//! in-process Elasticsearch `_bulk` endpoint; meanwhile, at random moments:
//! `kill -9` of the worker, `kill -9` of the supervisor and a new one started
//! (takeover of the orphaned worker), SIGHUP restarts, the worker binary
//! removed or replaced by a non-executable file for a while (with worker
//! kills meanwhile), in-place supervisor upgrades (SIGUSR2). At the end it
//! prints lines written, lines delivered, duplicates, drops and EPIPEs, and
//! exits 1 unless all but the delivered lines are 0.
//!
//! ```text
//! rein-log-chaos [--duration 600] [--containers 4] [--rate 500] [--seed N] [--dir DIR] [--keep]
//! ```
//!
//! `rein-log-shipper` and `rein-log-loadgen` are taken from this binary's
//! directory (build them together: `cargo build --release -p rein-logger --bins`).
//! Run as root (the module checks the shipper's owner the same way).

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

#[path = "../../tests/common/fake_es.rs"]
#[allow(dead_code)]
mod fake_es;
#[path = "../../tests/common/rng.rs"]
mod rng;
#[path = "../../tests/common/supervisor_cmd.rs"]
mod supervisor_cmd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rein_core::container::{ContainerId, ContainerSpec};
use rein_logger::module::LoggerModule;
use rng::Rng;
use supervisor_cmd::supervisor_command;

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

struct Container {
    name: String,
    sandbox: PathBuf,
    lines: u64,
    child: Child,
}

#[derive(Default)]
struct Figures {
    containers: u64,
    written: u64,
    epipes: u64,
    other_failures: u64,
    fallbacks: u64,
    worker_kills: u64,
    supervisor_kills: u64,
    restarts: u64,
    binary_outages: u64,
    upgrades: u64,
}

struct Chaos {
    dir: PathBuf,
    exe: PathBuf,
    loadgen: PathBuf,
    state: PathBuf,
    supervisor: Child,
    module: LoggerModule,
    rate: u64,
    running: Vec<Container>,
    /// Containers that completed: name, sandbox (None once removed), lines.
    done: Vec<(String, Option<PathBuf>, u64)>,
    fig: Figures,
}

/// Signals a process of the shipper this bench started (never a group: `pid > 0`).
fn kill(pid: i32, sig: Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

fn start_supervisor(exe: &Path, dir: &Path) -> Child {
    supervisor_command(exe, dir)
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("shipper.log"))
                .map_or_else(|_| Stdio::inherit(), Stdio::from),
        )
        .spawn()
        .expect("starting the shipper")
}

impl Chaos {
    fn worker_pid(&self) -> i32 {
        std::fs::read_to_string(self.state.join("worker.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn stats(&self) -> serde_json::Value {
        std::fs::read_to_string(self.state.join("supervisor.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    /// Waits (at most `limit`) until a worker other than `old` runs.
    fn wait_worker(&self, old: i32, limit: Duration) {
        let t = Instant::now();
        while t.elapsed() < limit {
            let pid = self.worker_pid();
            if pid != old && pid > 0 && self.stats()["worker_pid"].as_i64() == Some(i64::from(pid))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("chaos: no new worker within {limit:?}");
    }

    fn start_container(&mut self, rng: &mut Rng) {
        let n = self.fig.containers;
        let name = format!("c{n}");
        let sandbox = self.dir.join("sandboxes").join(&name);
        let _ = std::fs::create_dir_all(&sandbox);
        let spec = ContainerSpec {
            id: ContainerId::new(["chaos", &name]).expect("container id"),
            sandbox: sandbox.clone(),
            task_id: Some(format!("task-{name}")),
            task_name: Some("chaos".into()),
            executor_id: Some("exec".into()),
            framework_id: Some("fw".into()),
            agent_id: Some("agent".into()),
            task_labels: [("rein.log.multiline".to_string(), "off".to_string())].into(),
            ..Default::default()
        };
        let io = match self.module.prepare(&spec) {
            Ok(io) => io,
            Err(e) => {
                eprintln!("chaos: prepare {name}: {e}");
                self.fig.fallbacks += 1;
                return;
            }
        };
        if !io.shipped {
            // The shipper was not reachable within `shipper_timeout` (e.g. while a
            // new supervisor waits for the orphaned worker): not started, counted.
            self.fig.fallbacks += 1;
            let _ = std::fs::remove_dir_all(&sandbox);
            return;
        }
        let lines = self.rate * rng.range(5, 40);
        let child = Command::new(&self.loadgen)
            .args([
                "--lines",
                &lines.to_string(),
                "--rate",
                &self.rate.to_string(),
                "--prefix",
                &name,
                "--stderr-every",
                "9",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr))
            .spawn()
            .expect("starting rein-log-loadgen");
        self.fig.containers += 1;
        self.running.push(Container {
            name,
            sandbox,
            lines,
            child,
        });
    }

    /// Collects the containers that ended.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let c = &mut self.running[i];
            match c.child.try_wait() {
                Ok(Some(st)) => {
                    let c = self.running.swap_remove(i);
                    match st.code() {
                        Some(0) => {
                            self.fig.written += c.lines;
                            self.done.push((c.name, Some(c.sandbox), c.lines));
                        }
                        // 101: EPIPE reported on a broken stderr too (a panic).
                        Some(32 | 101) => {
                            eprintln!("chaos: container {} got EPIPE", c.name);
                            self.fig.epipes += 1;
                        }
                        _ => {
                            eprintln!("chaos: container {} failed: {st}", c.name);
                            self.fig.other_failures += 1;
                        }
                    }
                }
                _ => i += 1,
            }
        }
    }

    fn kill_worker(&mut self) {
        let pid = self.worker_pid();
        if pid > 0 && self.stats()["worker_pid"].as_i64() == Some(i64::from(pid)) {
            kill(pid, Signal::SIGKILL);
            self.fig.worker_kills += 1;
        }
    }

    fn kill_supervisor(&mut self, rng: &mut Rng) {
        kill(self.supervisor.id() as i32, Signal::SIGKILL);
        let _ = self.supervisor.wait();
        self.fig.supervisor_kills += 1;
        std::thread::sleep(rng.ms(0, 3000));
        let old = self.worker_pid();
        self.supervisor = start_supervisor(&self.exe, &self.dir);
        self.wait_worker(old, Duration::from_secs(60));
    }

    fn binary_outage(&mut self, rng: &mut Rng) {
        let saved = self.exe.with_extension("saved");
        if std::fs::rename(&self.exe, &saved).is_err() {
            return;
        }
        self.fig.binary_outages += 1;
        if rng.next().is_multiple_of(2) {
            let _ = std::fs::write(&self.exe, b"not a program");
        }
        let until = Instant::now() + rng.ms(1000, 8000);
        while Instant::now() < until {
            std::thread::sleep(rng.ms(100, 2000));
            match rng.next() % 3 {
                0 => self.kill_worker(),
                1 => kill(self.supervisor.id() as i32, Signal::SIGHUP),
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&self.exe);
        let _ = std::fs::rename(&saved, &self.exe);
        // Wait for the retry loop's next start rather than forcing it.
        if self.stats()["worker_pid"].as_i64().unwrap_or(0) == 0 {
            self.wait_worker(0, Duration::from_secs(40));
        }
    }

    fn fault(&mut self, rng: &mut Rng) {
        match rng.next() % 10 {
            0..=4 => self.kill_worker(),
            5 => self.kill_supervisor(rng),
            6 => {
                let old = self.worker_pid();
                kill(self.supervisor.id() as i32, Signal::SIGHUP);
                self.fig.restarts += 1;
                self.wait_worker(old, Duration::from_secs(30));
            }
            7 => self.binary_outage(rng),
            8 => {
                kill(self.supervisor.id() as i32, Signal::SIGUSR2);
                self.fig.upgrades += 1;
            }
            _ => {
                // A burst: kill the worker again right after it started.
                self.kill_worker();
                std::thread::sleep(rng.ms(0, 50));
                self.kill_worker();
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let duration = Duration::from_secs(
        opt(&args, "--duration")
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    );
    let parallel: usize = opt(&args, "--containers")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rate: u64 = opt(&args, "--rate")
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed: u64 = opt(&args, "--seed")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let keep = args.iter().any(|a| a == "--keep");
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("this binary's directory");
    let dir = opt(&args, "--dir").map_or_else(
        || std::env::temp_dir().join(format!("rein-chaos-{}", std::process::id())),
        PathBuf::from,
    );
    std::fs::create_dir_all(dir.join("bin")).expect("the work directory");
    let exe = dir.join("bin/rein-log-shipper");
    std::fs::copy(here.join("rein-log-shipper"), &exe).expect("copying rein-log-shipper");
    let es = fake_es::FakeEs::start();
    let socket = dir.join("shipper.sock");
    let state = dir.join("state");
    std::fs::write(
        dir.join("shipper.conf"),
        format!(
            "socket = {}\nstate_dir = {}\nes_url = http://{}\nes_backoff_max = 1s\nrotate_max_bytes = 1MiB\nrotate_keep = 2\npartial_flush = 300ms\n",
            socket.display(),
            state.display(),
            es.addr
        ),
    )
    .expect("writing the settings");
    println!(
        "chaos: seed {seed}, {duration:?}, {parallel} containers at {rate} lines/s each, work directory {}",
        dir.display()
    );
    let mut rng = Rng(seed);
    let mut c = Chaos {
        supervisor: start_supervisor(&exe, &dir),
        dir: dir.clone(),
        exe,
        loadgen: here.join("rein-log-loadgen"),
        state,
        module: LoggerModule::new(&[("shipper_socket".to_string(), socket.display().to_string())])
            .expect("the module"),
        rate,
        running: Vec::new(),
        done: Vec::new(),
        fig: Figures::default(),
    };
    c.wait_worker(0, Duration::from_secs(20));
    let start = Instant::now();
    let mut next_fault = Instant::now() + rng.ms(500, 5000);
    let mut last_report = Instant::now();
    while start.elapsed() < duration {
        c.reap();
        while c.running.len() < parallel {
            let before = c.fig.fallbacks;
            c.start_container(&mut rng);
            if c.fig.fallbacks > before {
                break;
            }
        }
        if Instant::now() >= next_fault {
            c.fault(&mut rng);
            next_fault = Instant::now() + rng.ms(500, 5000);
        }
        // Sandboxes of fully delivered containers go (disk space of long runs).
        es.with(|s| {
            for (name, sandbox, lines) in &mut c.done {
                if sandbox.is_some() && s.tally(name, *lines).once == *lines {
                    if let Some(d) = sandbox.take() {
                        let _ = std::fs::remove_dir_all(d);
                    }
                }
            }
        });
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            println!(
                "chaos: {:>4}s written {} delivered {} containers {} EPIPE {} faults: worker kills {} supervisor kills {}",
                start.elapsed().as_secs(),
                c.fig.written,
                es.with(fake_es::Stored::docs),
                c.fig.containers,
                c.fig.epipes,
                c.fig.worker_kills,
                c.fig.supervisor_kills
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The end: no more faults; let every container finish and everything ship.
    while !c.running.is_empty() {
        c.reap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut last = (0u64, Instant::now());
    loop {
        let pending = es.with(|s| {
            c.done
                .iter()
                .filter(|(n, _, l)| s.tally(n, *l).once < *l)
                .count()
        });
        let docs = es.with(fake_es::Stored::docs);
        if docs != last.0 {
            last = (docs, Instant::now());
        }
        if pending == 0 || last.1.elapsed() > Duration::from_secs(90) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let stats = c.stats();
    kill(c.supervisor.id() as i32, Signal::SIGTERM);
    let _ = c.supervisor.wait();
    // Lines of the containers that completed: each once in the sink.
    let (mut delivered, mut dups, mut drops, mut unexpected) = (0u64, 0u64, 0u64, 0u64);
    es.with(|s| {
        for (name, _, lines) in &c.done {
            let t = s.tally(name, *lines);
            delivered += t.once;
            dups += t.duplicates;
            drops += t.lost;
            unexpected += t.unexpected;
            if t.lost > 0 {
                eprintln!("chaos: {name}: {} lost, e.g. {:?}", t.lost, t.lost_examples);
            }
        }
    });
    let f = &c.fig;
    println!("chaos: seed {seed}, {:?}", start.elapsed());
    println!(
        "faults: worker kill -9 {}, supervisor kill -9 {} (each followed by a new supervisor), worker restarts (SIGHUP) {}, worker binary removed {}, supervisor upgrades (SIGUSR2) {}",
        f.worker_kills, f.supervisor_kills, f.restarts, f.binary_outages, f.upgrades
    );
    println!(
        "containers: {} started, {} not started (shipper unreachable at prepare)",
        f.containers, f.fallbacks
    );
    println!("supervisor: {stats}");
    println!("lines written:   {}", f.written);
    println!("lines delivered: {delivered}");
    println!("duplicates:      {dups}");
    println!("drops:           {drops}");
    println!("EPIPEs:          {}", f.epipes);
    println!(
        "other container failures: {}, unexpected lines: {unexpected}",
        f.other_failures
    );
    let ok = dups == 0
        && drops == 0
        && f.epipes == 0
        && f.other_failures == 0
        && unexpected == 0
        && delivered == f.written;
    if !keep && ok {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::process::exit(i32::from(!ok));
}
