//! Hostile tenants, end to end: `rein-run` as an operator runs it (net_cls with egress
//! shaping, blkio, disk with the scanning backend, and the container logger with a
//! real `rein-log-shipper` shipping to a real `redis-server`), an ATTACKER and a
//! VICTIM container side by side, both as user nobody (65534) in sandboxes that user
//! owns. The attacker really swaps the sandbox's objects while its output rotates,
//! writes pretty-printed JSON, every byte value, timestamps of 1999 and 2190 and a
//! line longer than `max_line_bytes` without a newline, and launches with labels
//! above the operator's caps, a `rein.*` label that is not UTF-8 and a reserved
//! Redis stream. Asserted: nothing outside the sandboxes is written or shipped, each
//! refusal names its field, the victim keeps its limits (read back from the kernel
//! and the scanner) and every line of its output is shipped once, in order, and the
//! attacker's own output is shipped and kept in its sandbox files. Root only.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NOBODY: u32 = 65534;
/// The shipper's split limit; the attacker's line is longer, with no newline.
const MAX_LINE: usize = 4096;
const LONG_LINE: usize = 3 * MAX_LINE + 123;
const VICTIM_LINES: usize = 6000;
const ATTACKER_LINES: usize = 12000;
const SECRET: &str = "SECRET-MARKER-root-only";
const PUBLIC: &str = "PUBLIC-MARKER-root-owned";

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// Runs `ip` with fixed arguments (set-up only; no task input reaches it).
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---- a minimal RESP client: XRANGE only ------------------------------------------

enum Resp {
    Bulk(Vec<u8>),
    Array(Vec<Resp>),
    Other(String),
}

fn read_resp(r: &mut impl BufRead) -> Resp {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).unwrap();
    let head = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    match line[0] {
        b'$' => {
            let n: i64 = head.parse().unwrap();
            if n < 0 {
                return Resp::Other("nil".into());
            }
            let mut buf = vec![0; usize::try_from(n).unwrap() + 2];
            r.read_exact(&mut buf).unwrap();
            buf.truncate(buf.len() - 2);
            Resp::Bulk(buf)
        }
        b'*' => {
            let n: i64 = head.parse().unwrap();
            Resp::Array((0..n.max(0)).map(|_| read_resp(r)).collect())
        }
        _ => Resp::Other(head),
    }
}

/// One stream entry's fields (`id`, `container`, `stream`, `doc`).
type Entry = HashMap<String, Vec<u8>>;

/// `XRANGE key - +`, in stream order.
fn xrange(port: u16, key: &str) -> Vec<Entry> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let args = ["XRANGE", key, "-", "+"];
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).unwrap();
    let Resp::Array(items) = read_resp(&mut BufReader::new(s)) else {
        panic!("XRANGE did not answer an array")
    };
    items
        .into_iter()
        .map(|item| {
            let Resp::Array(mut pair) = item else {
                panic!("entry is not an array")
            };
            let Resp::Array(fields) = pair.pop().unwrap() else {
                panic!("fields are not an array")
            };
            let bytes = |v: Resp| match v {
                Resp::Bulk(b) => b,
                Resp::Other(s) => s.into_bytes(),
                Resp::Array(_) => panic!("nested field"),
            };
            let mut it = fields.into_iter();
            let mut entry = Entry::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                entry.insert(String::from_utf8(bytes(k)).unwrap(), bytes(v));
            }
            entry
        })
        .collect()
}

// ---- the fixture: servers, harness configuration, clean-up -----------------------

struct Fixture {
    base: tempfile::TempDir,
    config: PathBuf,
    shipper_state: PathBuf,
    cgroups_root: String,
    device: String,
    redis: Child,
    redis_port: u16,
    shipper: Option<Child>,
    pids: Vec<i32>,
    watchers: Vec<Child>,
    perl: PathBuf,
}

impl Fixture {
    fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    fn sandbox(&self, id: &str) -> PathBuf {
        self.path("sandboxes").join(id)
    }

    fn rein_run(&self, args: &[OsString]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_rein-run"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("rein-run runs")
    }

    /// Launches a detached container as nobody; returns its pid.
    fn launch(&mut self, id: &str, labels: &[&[u8]], extra: &[&str], script: &str) -> i32 {
        let out = self.rein_run(&launch_args(self, id, labels, extra, script, true));
        assert!(out.status.success(), "launching {id}: {}", text(&out));
        let report: Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap())
                .unwrap();
        let pid = i32::try_from(report["pid"].as_i64().unwrap()).unwrap();
        self.pids.push(pid);
        pid
    }

    /// A launch that must fail: returns what the harness printed.
    fn refused_launch(&self, id: &str, labels: &[&[u8]]) -> String {
        let out = self.rein_run(&launch_args(self, id, labels, &[], "echo ran", false));
        assert_eq!(
            out.status.code(),
            Some(3),
            "launch of {id} was not refused: {}",
            text(&out)
        );
        text(&out)
    }

    /// `rein-run --json status`: reports of live containers (and clean-up of ended
    /// ones, as a restarted agent does).
    fn status(&self) -> HashMap<String, Value> {
        let out = self.rein_run(&["--json".into(), "status".into()]);
        assert!(out.status.success(), "status: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| (v["container"].as_str().unwrap().to_owned(), v))
            .collect()
    }

    /// `rein-run --json --interval 200ms wait ID`: adopts a detached container and
    /// supervises it to its end; its reports arrive on the channel.
    fn watch(&mut self, id: &str) -> std::sync::mpsc::Receiver<Value> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rein-run"))
            .arg("--config")
            .arg(&self.config)
            .args(["--json", "--interval", "200ms", "wait", id])
            .stdout(Stdio::piped())
            .spawn()
            .expect("rein-run runs");
        let out = BufReader::new(child.stdout.take().unwrap());
        self.watchers.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        rx
    }

    fn counters(&self) -> String {
        fs::read_to_string(self.shipper_state.join("counters.json")).unwrap_or_default()
    }

    fn cgroup(&self, controller: &str, id: &str) -> PathBuf {
        controller_mount(controller)
            .unwrap_or_default()
            .join(&self.cgroups_root)
            .join(id)
    }
}

fn controller_mount(controller: &str) -> Option<PathBuf> {
    rein_core::cgroupfs::cgroup_mounts(Path::new("/proc/self/mountinfo"))
        .ok()?
        .into_iter()
        .find(|m| m.controllers.iter().any(|c| c == controller))
        .map(|m| m.mount_point)
}

fn launch_args(
    f: &Fixture,
    id: &str,
    labels: &[&[u8]],
    extra: &[&str],
    script: &str,
    detach: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--id".into(),
        id.into(),
        "--user".into(),
        "nobody".into(),
        "--sandbox".into(),
        f.sandbox(id).into(),
        "--json".into(),
    ];
    if detach {
        args.push("--detach".into());
    }
    for label in labels {
        args.push("--label".into());
        args.push(OsString::from_vec(label.to_vec()));
    }
    args.extend(extra.iter().map(OsString::from));
    args.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    args
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("shipper counters.json:\n{}", self.counters());
            let log = fs::read_to_string(self.path("shipper.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("shipper log (last lines, newest first):");
            for l in tail {
                eprintln!("  {l}");
            }
        }
        for pid in &self.pids {
            // SAFETY: kill(2) of process groups this test started (each container's session).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        for w in &mut self.watchers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if !self.pids.is_empty() {
            // Clean the killed containers up as orphans (cgroups, classes, state).
            let _ = self.rein_run(&["status".into()]);
        }
        if let Some(mut s) = self.shipper.take() {
            // SAFETY: kill(2) of the shipper this test started.
            unsafe { libc::kill(i32::try_from(s.id()).unwrap(), libc::SIGTERM) };
            let _ = s.wait();
        }
        let _ = self.redis.kill();
        let _ = self.redis.wait();
        ip(&["link", "del", &self.device]);
        for controller in ["net_cls", "blkio"] {
            if let Some(mount) = controller_mount(controller) {
                let _ = rein_core::cgroupfs::Cgroup::at(mount.join(&self.cgroups_root)).remove();
            }
        }
    }
}

/// Everything an operator sets up; `None` (after a visible skip) when something is
/// missing.
fn fixture(test: &str) -> Option<Fixture> {
    if !rein_tests::require_root(test) {
        return None;
    }
    let Some(redis_bin) = find_on_path("redis-server") else {
        rein_tests::skip(
            test,
            "redis-server not installed (Debian package redis-server)",
        );
        return None;
    };
    let Some(perl) = find_on_path("perl") else {
        rein_tests::skip(test, "perl not installed (Debian package perl-base)");
        return None;
    };
    // Another package's binary: cargo builds it for `cargo test --workspace`, not
    // for this package alone, so a stale one is refused rather than tested.
    let shipper_bin = Path::new(env!("CARGO_BIN_EXE_rein-run")).with_file_name("rein-log-shipper");
    let build = "cargo build -p rein-logger --bin rein-log-shipper";
    if !shipper_bin.exists() {
        rein_tests::skip(test, &format!("rein-log-shipper not built ({build})"));
        return None;
    }
    let built = fs::metadata(&shipper_bin).unwrap().modified().unwrap();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["logger/src", "logger/Cargo.toml", "core/src"]
        .iter()
        .filter_map(|p| newest_mtime(&sources.join(p)))
        .max();
    assert!(
        newest.is_none_or(|n| n <= built),
        "rein-log-shipper is older than its sources: {build}"
    );
    let base = tempfile::tempdir().unwrap();
    // Sandboxes must be reachable by their user: the tree above them is root's, 0755.
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["sandboxes", "outside", "inputs", "shipper"] {
        fs::create_dir(base.path().join(dir)).unwrap();
    }
    let outside = base.path().join("outside");
    fs::write(outside.join("secret"), SECRET).unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(outside.join("public"), PUBLIC).unwrap();

    let redis_port = free_port();
    let redis_dir = base.path().join("redis");
    fs::create_dir(&redis_dir).unwrap();
    let redis = Command::new(redis_bin)
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&redis_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tag = std::process::id();
    let device = format!("ratk{}", tag % 100_000);
    let cgroups_root = format!("rein-harness-attack-{tag}");
    let shipper_state = base.path().join("shipper/state");
    let mut f = Fixture {
        config: base.path().join("rein-run.json"),
        base,
        shipper_state,
        cgroups_root,
        device,
        redis,
        redis_port,
        shipper: None,
        pids: Vec::new(),
        watchers: Vec::new(),
        perl,
    };
    wait_for("redis-server", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    });
    // A device of our own to shape (egress shaping changes the device's root qdisc):
    // one end of a veth pair, deleted with its peer.
    ip(&["link", "del", &f.device]);
    let peer = format!("{}p", f.device);
    assert!(ip(&[
        "link", "add", &f.device, "type", "veth", "peer", "name", &peer
    ]));
    assert!(ip(&["link", "set", &f.device, "up"]));
    assert!(ip(&["link", "set", &peer, "up"]));

    let socket = f.path("shipper/shipper.sock");
    let conf = f.path("shipper/shipper.conf");
    fs::write(
        &conf,
        format!(
            "socket = {}\nstate_dir = {}\nredis_url = redis://127.0.0.1:{redis_port}\n\
             max_line_bytes = {MAX_LINE}B\nrotate_max_bytes = 16KiB\nrotate_keep = 1000\n\
             partial_flush = 200ms\ncheckpoint_interval = 100ms\n",
            socket.display(),
            f.shipper_state.display()
        ),
    )
    .unwrap();
    let log = fs::File::create(f.path("shipper.log")).unwrap();
    f.shipper = Some(
        Command::new(&shipper_bin)
            .args(["run", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid_file = f.shipper_state.join("worker.pid");
    wait_for("the shipper", Duration::from_secs(20), || {
        let exited = f.shipper.as_mut().unwrap().try_wait().unwrap();
        assert!(exited.is_none(), "the shipper exited: {exited:?}");
        socket.exists() && pid_file.exists()
    });

    let config = serde_json::json!({
        "state_dir": f.path("state"),
        "sandbox_dir": f.path("sandboxes"),
        "isolators": [
            { "kind": "net_cls", "parameters": [
                ["net_cls_primary_handle", "0xe"],
                ["net_cls_secondary_handles", "0x1,0xffff"],
                ["mount_net_cls", "true"],
                ["cgroups_root", f.cgroups_root],
                ["egress_shaping", "true"],
                ["egress_devices", f.device],
                ["egress_classifier", "net_cls"],
                ["egress_max_rate", "100mbit"],
                ["egress_max_burst", "4MiB"] ] },
            { "kind": "blkio", "parameters": [
                ["allowed_devices", "sandbox"],
                ["cgroups_root", f.cgroups_root],
                ["max_write_bps", "100MiB/s"] ] },
            { "kind": "disk", "parameters": [
                ["backend", "scan"],
                ["default_mode", "account"],
                ["allowed_modes", "account,enforce,kill"],
                ["scan_interval", "200ms"] ] } ],
        "logger": { "parameters": [
            ["shipper_socket", socket],
            ["default_sink", "redis"],
            ["allowed_sinks", "redis,none"] ] }
    });
    fs::write(&f.config, config.to_string()).unwrap();
    Some(f)
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

// ---- what the containers run ------------------------------------------------------

/// Every container first waits for `go` in its sandbox, so all run side by side.
const WAIT_GO: &str = "while [ ! -e go ]; do sleep 0.02; done; ";
/// Victim and swapper pause halfway until `resume`, while the shipper's worker is
/// killed and a new one adopts their streams (and meets the planted objects).
const WAIT_RESUME: &str = "while [ ! -e resume ]; do sleep 0.02; done; ";
const HALF: usize = ATTACKER_LINES / 2;

fn victim_script() -> String {
    format!(
        "{WAIT_GO}i=0; while [ $i -lt {VICTIM_LINES} ]; do echo \"victim line $i\"; i=$((i+1)); \
         if [ $i -eq 3000 ]; then dd if=/dev/zero of=blob bs=1M count=4 conv=fsync 2>/dev/null; {WAIT_RESUME}fi; \
         done; echo 'victim done'; while [ ! -e end ]; do sleep 0.02; done"
    )
}

/// Plants, the moment each name is free (a tight loop of `symlink`, which fails while
/// the name is taken, so it wins the instant a rotation renames the file away): at
/// `stdout` a symlink to a root-only file outside, then to a path outside that does
/// not exist; a FIFO, a directory and a symlink to a root directory at rotated
/// names; a symlink to a root-owned readable file at `stderr`, also renamed over the
/// shipper's current file (met when a new worker adopts it). Meanwhile its output
/// (numbered lines) rotates every 16 KiB. The planter is perl (fixed text: paths
/// only), since a shell forks per step and would rarely hit the window.
fn swapper_script(perl: &Path, planter: &Path) -> String {
    format!(
        "{WAIT_GO}{} {} & \
         while [ ! -e planting ]; do sleep 0.01; done; i=0; while [ $i -lt {ATTACKER_LINES} ]; do \
         echo \"attacker line $i .........................................\"; i=$((i+1)); \
         if [ $i -eq {HALF} ]; then {WAIT_RESUME}fi; done; \
         touch stop; wait; echo 'attacker done'",
        perl.display(),
        planter.display()
    )
}

/// The planter's program (fixed text: paths only).
fn planter(outside: &Path) -> String {
    let o = outside.display();
    format!(
        "use POSIX qw(mkfifo);\n\
         my $n = 0;\n\
         open(my $started, '>', 'planting');\n\
         until (-e 'stop') {{\n\
           $n++;\n\
           symlink($n % 2 ? '{o}/secret' : '{o}/created', 'stdout');\n\
           symlink('{o}/public', 'stderr');\n\
           if ($n % 64 == 0) {{\n\
             mkfifo('stdout.2', 0644); mkdir('stdout.3'); symlink('{o}', 'stdout.4');\n\
             symlink('{o}/public', 'stderr.new'); rename('stderr.new', 'stderr');\n\
           }}\n\
         }}\n\
         print STDERR \"planted $n times\\n\";\n"
    )
}

/// What the content attacker writes: pretty-printed JSON, every byte value (raw and
/// inside a JSON string), timestamps of 1999 and 2190, and at the end a line longer
/// than `max_line_bytes` without a newline.
fn hostile_content() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(b"{\n  \"level\": \"warn\",\n  \"msg\": \"pretty-1\",\n  \"nested\": {\n    \"a\": [1, 2]\n  }\n}\n");
    let all: Vec<u8> = (0..=255u8).filter(|b| *b != b'\n').collect();
    c.extend_from_slice(b"raw-bytes ");
    c.extend_from_slice(&all);
    c.extend_from_slice(b" end\n");
    c.extend_from_slice(b"{\"msg\": \"json-bytes ");
    c.extend_from_slice(&all);
    c.extend_from_slice(b" end\"}\n");
    c.extend_from_slice(b"{\"@timestamp\": \"1999-01-01T00:00:00Z\", \"msg\": \"ts-1999\"}\n");
    c.extend_from_slice(b"{\"@timestamp\": \"2190-01-01T00:00:00Z\", \"msg\": \"ts-2190\"}\n");
    c.extend_from_slice(b"content done\n");
    c.extend(std::iter::repeat_n(b'L', LONG_LINE));
    c
}

// ---- reading what was shipped -----------------------------------------------------

struct Shipped {
    entries: Vec<Entry>,
}

impl Shipped {
    /// Whether a document of `container` has a message starting with `start`
    /// (a cheap check on the raw documents, for polling).
    fn has(&self, container: &str, start: &str) -> bool {
        let needle = format!("\"message\":\"{start}");
        self.entries.iter().any(|e| {
            e.get("container").map(Vec::as_slice) == Some(container.as_bytes())
                && e["doc"]
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
        })
    }

    fn of(&self, container: &str) -> Vec<(String, Value)> {
        self.entries
            .iter()
            .filter(|e| e.get("container").map(Vec::as_slice) == Some(container.as_bytes()))
            .map(|e| {
                let doc = &e["doc"];
                assert!(
                    !doc.contains(&b'\n'),
                    "a document holds a raw newline: {}",
                    String::from_utf8_lossy(doc)
                );
                let v: Value = serde_json::from_slice(doc).unwrap_or_else(|err| {
                    panic!(
                        "document is not JSON ({err}): {}",
                        String::from_utf8_lossy(doc)
                    )
                });
                (String::from_utf8_lossy(&e["stream"]).into_owned(), v)
            })
            .collect()
    }
}

fn message(doc: &Value) -> &str {
    doc["message"].as_str().unwrap_or_default()
}

/// The numbers of `prefix N ...` lines in order.
fn numbered(records: &[(String, Value)], prefix: &str) -> Vec<usize> {
    records
        .iter()
        .filter_map(|(_, d)| message(d).strip_prefix(prefix))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

fn flags(doc: &Value) -> String {
    doc.pointer("/log/flags")
        .map(Value::to_string)
        .unwrap_or_default()
}

/// Regular files whose names start with `stdout`, oldest first (`stdout.N`, ...,
/// `stdout.1`, `stdout`), concatenated.
fn sandbox_stdout(dir: &Path) -> Vec<u8> {
    let mut files: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = match name.strip_prefix("stdout") {
                Some("") => 0,
                Some(rest) => rest.strip_prefix('.')?.parse().ok()?,
                None => return None,
            };
            Some((n, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files
        .iter()
        .flat_map(|(_, p)| fs::read(p).unwrap())
        .collect()
}

/// Numbers of `prefix N` lines in every root-owned regular file of a sandbox (the
/// files the shipper wrote, under whatever names they hold now).
fn sandbox_lines(dir: &Path, prefix: &str) -> Vec<usize> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_file() && m.uid() == 0))
        .flat_map(|e| {
            let bytes = fs::read(e.path()).unwrap();
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| l.strip_prefix(prefix)?.split(' ').next()?.parse().ok())
                .collect::<Vec<usize>>()
        })
        .collect()
}

fn snapshot(dir: &Path) -> Vec<(String, u64, u32, i64, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = fs::symlink_metadata(e.path()).unwrap();
            let content = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.mode(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                content,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root"]
fn attacker_beside_victim_through_the_harness_and_a_real_shipper() {
    let Some(mut f) = fixture("attacker_beside_victim_through_the_harness_and_a_real_shipper")
    else {
        return;
    };
    let outside = f.path("outside");
    let before = snapshot(&outside);
    let content = hostile_content();
    fs::write(f.path("inputs/content"), &content).unwrap();

    // The victim: limits of every isolator, a foreign label that is not UTF-8 (carried).
    f.launch(
        "victim",
        &[
            b"rein.net.egress.rate=10mbit",
            b"rein.net.egress.burst=64KiB",
            b"rein.blkio.write_bps=20MiB/s",
            b"team=pay\xffments",
        ],
        &["--disk", "64"],
        &victim_script(),
    );
    fs::write(f.path("inputs/planter.pl"), planter(&outside)).unwrap();
    let swapper = swapper_script(&f.perl, &f.path("inputs/planter.pl"));
    f.launch("swapper", &[], &[], &swapper);
    f.launch(
        "content",
        &[b"rein.log.multiline.pattern=^[^ }]"],
        &[],
        &format!("{WAIT_GO}cat {}", f.path("inputs/content").display()),
    );
    for id in ["victim", "swapper", "content"] {
        let meta = fs::metadata(f.sandbox(id)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "sandbox of {id}"
        );
    }

    // Launches the operator's caps and the label rules refuse, each naming its field.
    for (id, label, names) in [
        (
            "over-burst",
            &b"rein.net.egress.burst=1TiB"[..],
            &["rein.net.egress.burst", "egress_max_burst"][..],
        ),
        (
            "over-rate",
            b"rein.net.egress.rate=1gbit",
            &["rein.net.egress.rate", "egress_max_rate"],
        ),
        (
            "over-blkio",
            b"rein.blkio.write_bps=1GiB/s",
            &["rein.blkio.write_bps", "max_write_bps"],
        ),
        (
            "not-utf8",
            b"rein.log.sink=re\xffdis",
            &["rein.log.sink", "not valid UTF-8"],
        ),
        (
            "reserved-stream",
            b"rein.log.redis_stream=rein:dedup:victim",
            &["rein.log.redis_stream", "rein:"],
        ),
    ] {
        let said = f.refused_launch(id, &[label]);
        for name in names {
            assert!(
                said.contains(name),
                "refusal of {id} does not name {name}: {said}"
            );
        }
        assert!(
            !f.cgroup("blkio", id).exists() && !f.cgroup("net_cls", id).exists(),
            "a refused launch left cgroups: {id}"
        );
    }

    // Side by side from here.
    for id in ["victim", "swapper", "content"] {
        fs::write(f.sandbox(id).join("go"), "").unwrap();
    }
    let shipped = |f: &Fixture| Shipped {
        entries: xrange(f.redis_port, "rein-logs"),
    };
    wait_for("both halfway", Duration::from_secs(60), || {
        let s = shipped(&f);
        s.has("victim", "victim line 2999\"")
            && s.has("swapper", &format!("attacker line {} ", HALF - 1))
    });
    // kill -9 of the shipper's worker: its supervisor starts another, which adopts
    // every stream through the sandboxes the tasks keep planting in.
    let pid_file = f.shipper_state.join("worker.pid");
    let worker = || -> i32 {
        fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let old = worker();
    // SAFETY: kill(2) of the worker of the shipper this test started.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    wait_for("a new shipper worker", Duration::from_secs(20), || {
        let new = worker();
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        new != 0 && new != old && unsafe { libc::kill(new, 0) } == 0
    });
    for id in ["victim", "swapper"] {
        fs::write(f.sandbox(id).join("resume"), "").unwrap();
    }
    wait_for(
        "every container's last line shipped",
        Duration::from_secs(90),
        || {
            let s = shipped(&f);
            s.has("victim", "victim done\"")
                && s.has("swapper", "attacker done\"")
                && s.of("content")
                    .iter()
                    .filter(|(_, d)| message(d).starts_with('L'))
                    .map(|(_, d)| message(d).len())
                    .sum::<usize>()
                    == LONG_LINE
        },
    );

    // The victim, still running, kept its limits: read back from the kernel (HTB
    // class, blkio throttle) and from the scanner, by a harness that adopts it as a
    // restarted agent does and reports every 200 ms.
    let watcher = f.watch("victim");
    let mut report = Value::Null;
    wait_for(
        "the victim's 4 MiB counted by the scanner",
        Duration::from_secs(30),
        || {
            while let Ok(r) = watcher.try_recv() {
                report = r;
            }
            report["usage"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u["disk_used_bytes"].as_u64())
                .any(|b| b >= 4 << 20)
        },
    );
    let usage = |kind: &str| {
        report["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["isolator"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} usage in {report}"))
    };
    let net = usage("net_cls");
    assert_eq!(
        net["net_tx"]["rate_limit_bytes_per_s"], 1_250_000,
        "victim's egress rate: {report}"
    );
    let burst = net["net_tx"]["burst_size_bytes"].as_u64().unwrap();
    assert!(
        (60_000..=70_000).contains(&burst),
        "victim's burst {burst}, asked 64KiB: {report}"
    );
    let disk = usage("disk");
    assert_eq!(disk["disk_limit_bytes"], 64 << 20, "{report}");
    // Its own 4 MiB and its log files, nothing of the attackers'.
    let used = disk["disk_used_bytes"].as_u64().unwrap();
    assert!(used < 5 << 20, "victim charged {used} bytes: {report}");
    let throttle = fs::read_to_string(
        f.cgroup("blkio", "victim")
            .join("blkio.throttle.write_bps_device"),
    )
    .unwrap();
    assert!(
        throttle.trim().ends_with(&format!(" {}", 20u64 << 20)),
        "victim's write_bps in the kernel: {throttle:?}"
    );
    fs::write(f.sandbox("victim").join("end"), "").unwrap();
    drop(watcher);
    let mut adopter = f.watchers.pop().unwrap();
    wait_for(
        "the adopting harness to finish",
        Duration::from_secs(30),
        || adopter.try_wait().unwrap().is_some(),
    );
    assert!(
        adopter.wait().unwrap().success(),
        "the adopting harness failed"
    );

    // Every container ended: a new harness cleans them up as orphans.
    wait_for("the containers to end", Duration::from_secs(30), || {
        f.status().is_empty()
    });
    for id in ["victim", "swapper", "content"] {
        assert!(!f.cgroup("blkio", id).exists(), "{id}'s blkio cgroup left");
    }
    f.pids.clear();
    let s = shipped(&f);

    // Nothing outside written, created or shipped.
    let after = snapshot(&outside);
    let names = |v: &[(String, u64, u32, i64, Vec<u8>)]| -> Vec<String> {
        v.iter()
            .map(|(n, len, mode, mtime, _)| format!("{n} {len}B {mode:o} {mtime}"))
            .collect()
    };
    assert!(
        after == before,
        "the attacker changed files outside: before {:?}, after {:?}",
        names(&before),
        names(&after)
    );
    for e in &s.entries {
        let doc = String::from_utf8_lossy(&e["doc"]);
        assert!(
            !doc.contains(SECRET) && !doc.contains(PUBLIC),
            "a file outside was shipped: {doc}"
        );
    }

    // The refused launches never ran.
    for id in [
        "over-burst",
        "over-rate",
        "over-blkio",
        "not-utf8",
        "reserved-stream",
    ] {
        assert!(
            s.of(id).is_empty(),
            "refused container {id} shipped records"
        );
    }

    // The victim: every line once, in order, with its (carried) label.
    let victim = s.of("victim");
    let lines = numbered(&victim, "victim line ");
    assert_eq!(
        lines,
        (0..VICTIM_LINES).collect::<Vec<_>>(),
        "victim lines shipped ({} records)",
        victim.len()
    );
    assert_eq!(victim.len(), VICTIM_LINES + 1, "victim records");
    assert!(
        victim[0].1.to_string().contains("pay\u{fffd}ments"),
        "victim's foreign label carried: {}",
        victim[0].1
    );

    // The swapper: its own output shipped once, in order; objects refused.
    let swapper = s.of("swapper");
    let stderr: Vec<&str> = swapper
        .iter()
        .filter(|(stream, _)| stream == "stderr")
        .map(|(_, d)| message(d))
        .collect();
    eprintln!("swapper's stderr: {stderr:?}");
    let planted: usize = match stderr.as_slice() {
        [one] => one
            .strip_prefix("planted ")
            .and_then(|r| r.split(' ').next()?.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    assert!(planted >= 1000, "the planter did not race: {stderr:?}");
    let lines = numbered(&swapper, "attacker line ");
    assert_eq!(
        lines,
        (0..ATTACKER_LINES).collect::<Vec<_>>(),
        "attacker lines shipped"
    );
    // Kept in the files the shipper wrote in its sandbox (whatever names they hold).
    let mut kept = sandbox_lines(&f.sandbox("swapper"), "attacker line ");
    kept.sort_unstable();
    assert_eq!(
        kept,
        (0..ATTACKER_LINES).collect::<Vec<_>>(),
        "attacker lines kept in its sandbox files"
    );
    let counters: Value = serde_json::from_str(&f.counters()).unwrap();
    assert!(
        counters
            .pointer("/reader/sandbox_objects_refused")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0),
        "sandbox_objects_refused not counted"
    );

    // The content attacker: each record one valid document; pretty JSON one record;
    // timestamps refused; the long line split in parts; its output kept in its files.
    let records = s.of("content");
    let pretty: Vec<_> = records
        .iter()
        .filter(|(_, d)| d.to_string().contains("pretty-1"))
        .collect();
    assert_eq!(pretty.len(), 1, "pretty JSON as one record: {pretty:?}");
    for marker in ["raw-bytes ", "json-bytes "] {
        assert_eq!(
            records
                .iter()
                .filter(|(_, d)| d.to_string().contains(marker))
                .count(),
            1,
            "one record for {marker}"
        );
    }
    for year in ["1999", "2190"] {
        let (_, doc) = records
            .iter()
            .find(|(_, d)| d.to_string().contains(&format!("ts-{year}")))
            .unwrap_or_else(|| panic!("ts-{year} not shipped"));
        assert!(flags(doc).contains("timestamp_refused"), "ts-{year}: {doc}");
        assert!(
            !doc["@timestamp"]
                .as_str()
                .unwrap_or_default()
                .starts_with(year),
            "ts-{year} kept its own @timestamp: {doc}"
        );
    }
    let parts: Vec<_> = records
        .iter()
        .filter(|(_, d)| message(d).starts_with('L'))
        .collect();
    assert!(
        parts.len() >= LONG_LINE / MAX_LINE,
        "long line parts: {}",
        parts.len()
    );
    assert!(parts
        .iter()
        .all(|(_, d)| message(d).len() <= MAX_LINE && flags(d).contains("split")));
    assert_eq!(
        sandbox_stdout(&f.sandbox("content")),
        content,
        "the content attacker's output kept in its sandbox files"
    );
    eprintln!("shipper counters.json: {}", f.counters());
}
