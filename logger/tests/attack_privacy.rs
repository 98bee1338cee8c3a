//! Attacks on other tenants' logs and on the operator's secrets, performed
//! for real against the real `rein-log-shipper` (started with umask 0, the
//! worst environment an operator can give it):
//!
//! * another local user (65534, what a task runs as under `--switch_user`)
//!   tries to read and write every state file and directory, old ones left
//!   by an earlier version included, and to hand containers to the shipper
//!   (socket mode, then `SO_PEERCRED` with the file mode opened up), or to
//!   pose as the shipper to receive a container's pipes;
//! * a task fills the dead-letter file on purpose (records the destination
//!   refuses for good): the file stays bounded, `pause` waits without losing
//!   anything, `drop` counts and logs;
//! * `rein-log-shipper check`, bad settings and failing connections to every
//!   sink (debug logging on) never show a password, key or token.
//!
//! The unprivileged steps run in a copy of this test binary started as that
//! user (`zz_as_another_user`, ignored in a normal run).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::shipper::{counters_in, spec_in as spec, terminate};
use common::{free_port, is_root, skip};
use rein_logger::module::LoggerModule;

const NOBODY: u32 = 65534;
const ACTION: &str = "REIN_PRIVACY_ACTION";
const ARGS: &str = "REIN_PRIVACY_ARGS";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn module(socket: &Path) -> LoggerModule {
    LoggerModule::new(&[
        ("shipper_socket".into(), socket.display().to_string()),
        ("shipper_timeout".into(), "3s".into()),
        (
            "allowed_sinks".into(),
            "elasticsearch,kafka,redis,none".into(),
        ),
    ])
    .unwrap()
}

/// The real shipper, umask 0, its log in a file.
struct Shipper {
    child: Child,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Shipper {
    fn start(dir: &Path, settings: &str, rust_log: &str) -> Shipper {
        let socket = dir.join("run/shipper.sock");
        let state = dir.join("state");
        let log = dir.join("shipper.log");
        let conf = dir.join("shipper.conf");
        std::fs::write(
            &conf,
            format!(
                "socket = {}\nstate_dir = {}\ncheckpoint_interval = 100ms\n{settings}\n",
                socket.display(),
                state.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rein-log-shipper"));
        cmd.args(["run", "--config"])
            .arg(&conf)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: umask(2) is async-signal-safe and cannot fail.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            })
        };
        let s = Shipper {
            child: cmd.spawn().unwrap(),
            socket,
            state,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(s.socket.exists() && s.state.join("worker.pid").exists()) {
            assert!(
                Instant::now() < deadline,
                "shipper did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn counters(&self) -> serde_json::Value {
        counters_in(&self.state)
    }

    /// Polls the counters until `ok`; fails with the counters and the log.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.counters();
            if ok(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached in {limit:?}\ncounters: {c:#}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
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

fn n(c: &serde_json::Value, path: &str) -> u64 {
    path.split('.').fold(c, |v, k| &v[k]).as_u64().unwrap_or(0)
}

/// A container whose records the Kafka sink can never deliver: lines longer
/// than `message.max.bytes` (librdkafka refuses them at once, for good).
/// Keeps running (so its registration stays) until killed.
fn refused_container(m: &LoggerModule, sandbox: &Path, name: &str, lines: u32) -> Child {
    std::fs::create_dir_all(sandbox).unwrap();
    let io = m
        .prepare(&spec(name, sandbox, &[("rein.log.sink", "kafka")]))
        .unwrap();
    assert!(io.shipped, "the shipper did not take the container");
    Command::new("sh")
        .args([
            "-c",
            "\"$0\" --lines \"$1\" --size 3000 && exec sleep 120",
            env!("CARGO_BIN_EXE_rein-log-loadgen"),
            &lines.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr))
        .spawn()
        .unwrap()
}

/// Settings of a Kafka sink whose broker is down and which refuses records
/// above 1000 bytes.
fn refusing_kafka() -> String {
    format!(
        "kafka_brokers = 127.0.0.1:{}\nkafka_properties = message.max.bytes=1000\nkafka_message_timeout = 1s\n",
        free_port()
    )
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// A directory any user may enter (only the shipper's own modes may stand
/// between another user and its files) holding [`child_exe`]; None, after a
/// visible skip (`needs`: why root), unless root.
fn as_root(test: &str, needs: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !is_root() {
        skip(test, &format!("needs root ({needs})"));
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    chmod(d.path(), 0o755);
    let exe = child_exe(d.path());
    Some((d, exe))
}

/// This test binary, copied into `dir` (0755) so that any user can run it.
fn child_exe(dir: &Path) -> PathBuf {
    let exe = dir.join("attack-privacy-child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    chmod(&exe, 0o755);
    exe
}

/// User 65534 connects to the shipper's `socket`: what it got.
fn connect_as_nobody(exe: &Path, socket: &Path) -> Vec<String> {
    as_user(
        exe,
        NOBODY,
        NOBODY,
        &[],
        "connect",
        &[socket.display().to_string()],
    )
}

/// Runs `action` in `exe` as `uid`/`gid` with the supplementary `groups`;
/// returns the `RESULT` lines it printed.
fn as_user(
    exe: &Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
    action: &str,
    args: &[String],
) -> Vec<String> {
    let groups = groups.to_vec();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "--ignored",
        "zz_as_another_user",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ACTION, action)
    .env(ARGS, args.join("\n"))
    .current_dir("/")
    .stdin(Stdio::null());
    // SAFETY: only async-signal-safe system calls between fork and exec; the
    // group list was allocated before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let results: Vec<String> = text
        .lines()
        // The test harness may print its own words before ours on a line.
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .map(str::to_string)
        .collect();
    assert!(
        !results.is_empty(),
        "the child printed no result: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

/// Every path under `root` (itself included), without following links.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// What another user can do to `p`: `denied` when reading, writing and
/// (for a directory) listing and creating in it are all refused.
fn attempt(p: &Path) -> String {
    use std::fs::OpenOptions;
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return "denied".into(),
        Err(e) => return format!("stat: {e}"),
    };
    let mut got = Vec::new();
    if m.is_dir() {
        if std::fs::read_dir(p).is_ok() {
            got.push("listed");
        }
        if std::fs::write(p.join("planted-by-another-user"), "x").is_ok() {
            got.push("created a file in it");
        }
    } else {
        let nb = |o: &mut OpenOptions| {
            std::os::unix::fs::OpenOptionsExt::custom_flags(o, libc::O_NONBLOCK).open(p)
        };
        if nb(OpenOptions::new().read(true)).is_ok() {
            got.push("read");
        }
        if nb(OpenOptions::new().write(true)).is_ok() {
            got.push("opened for writing");
        }
    }
    if got.is_empty() {
        "denied".into()
    } else {
        got.join(", ")
    }
}

/// The unprivileged side, run by `as_user` with `--ignored --exact`: not a test
/// of its own (ignored, so that it never counts as one).
#[test]
#[ignore = "the unprivileged side of the attack_privacy tests, run by them"]
fn zz_as_another_user() {
    let Ok(action) = std::env::var(ACTION) else {
        return;
    };
    let args: Vec<String> = std::env::var(ARGS)
        .unwrap_or_default()
        .split('\n')
        .map(str::to_string)
        .collect();
    match action.as_str() {
        "attempt" => {
            for p in &args {
                println!("RESULT {}\t{p}", attempt(Path::new(p)));
            }
        }
        "connect" => {
            let s = rein_logger::proto::seqpacket_socket().unwrap();
            let addr = nix::sys::socket::UnixAddr::new(Path::new(&args[0])).unwrap();
            use std::os::fd::AsRawFd;
            match nix::sys::socket::connect(s.as_raw_fd(), &addr) {
                Ok(()) => println!("RESULT connected"),
                Err(e) => println!("RESULT refused {e}"),
            }
        }
        "register" => {
            let (socket, sandbox) = (Path::new(&args[0]), Path::new(&args[1]));
            let io = module(socket)
                .prepare(&spec("tenant-b", sandbox, &[("rein.log.sink", "none")]))
                .unwrap();
            println!("RESULT shipped={}", io.shipped);
        }
        "pose-as-shipper" => {
            use std::os::fd::{AsFd, AsRawFd};
            let s = rein_logger::proto::seqpacket_socket().unwrap();
            let addr = nix::sys::socket::UnixAddr::new(Path::new(&args[0])).unwrap();
            nix::sys::socket::bind(s.as_raw_fd(), &addr).unwrap();
            nix::sys::socket::listen(&s, nix::sys::socket::Backlog::new(8).unwrap()).unwrap();
            std::fs::write(&args[1], "listening").unwrap();
            if !rein_logger::proto::wait_readable(s.as_fd(), Duration::from_secs(20)).unwrap() {
                println!("RESULT nobody connected");
                return;
            }
            let c = nix::sys::socket::accept(s.as_raw_fd()).unwrap();
            // SAFETY: a new descriptor from accept(2), owned by nobody else.
            let c = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(c) };
            let _ = rein_logger::proto::wait_readable(c.as_fd(), Duration::from_secs(5));
            let fds = rein_logger::proto::recv_with_fds(c.as_fd()).map_or(0, |(_, f)| f.len());
            println!("RESULT received {fds} descriptors");
        }
        other => panic!("unknown action {other}"),
    }
}

#[test]
#[ignore = "needs root"]
fn state_is_private_from_the_start_and_an_older_state_is_tightened() {
    let test = "state_is_private_from_the_start_and_an_older_state_is_tightened";
    let Some((d, exe)) = as_root(test, "files of root read as user 65534") else {
        return;
    };
    // What an older version left under the default umask.
    let state = d.path().join("state");
    let old = state.join("containers/parent-1.old-tenant");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(state.join("dead-letter")).unwrap();
    std::fs::create_dir_all(state.join("buffer/kafka")).unwrap();
    let old_files = [
        old.join("registration.json"),
        old.join("checkpoint.json"),
        state.join("dead-letter/kafka.ndjson"),
        state.join("buffer/kafka/00000000000000000001.wal"),
        state.join("counters.json"),
    ];
    for f in &old_files {
        std::fs::write(f, "").unwrap();
        chmod(f, 0o644);
    }
    std::fs::write(&old_files[0], r#"{"labels":{"db_password":"tenant-a"}}"#).unwrap();
    for p in [
        &state,
        &old,
        &state.join("containers"),
        &state.join("buffer"),
    ] {
        chmod(p, 0o755);
    }
    let mut s = Shipper::start(d.path(), &refusing_kafka(), "error");
    let m = module(&s.socket);
    let c = refused_container(&m, &d.path().join("sandbox-a"), "tenant-a", 20);
    s.wait_for("every record dead-lettered", Duration::from_secs(60), |c| {
        n(c, "sinks.kafka.dead_lettered") >= 20
    });
    // A worker killed and restarted (it adopts the container, rewrites
    // checkpoints and counters) creates nothing more open.
    let pid = |st: &Path| {
        std::fs::read_to_string(st.join("worker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
    };
    let old_worker = pid(&s.state).unwrap();
    // SAFETY: kill(2) of a worker this test's shipper started.
    unsafe { libc::kill(old_worker, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid(&s.state) == Some(old_worker) {
        assert!(Instant::now() < deadline, "no new worker: {}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(state.join("counters.json")).unwrap();
    s.wait_for("the new worker's counters", Duration::from_secs(20), |c| {
        n(c, "reader.containers_live") == 1
    });
    // Every object of the state, created now or left by the older version.
    let mut wrong = Vec::new();
    let paths = tree(&state);
    for p in &paths {
        let md = std::fs::symlink_metadata(p).unwrap();
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        if md.mode() & 0o7777 != want || md.uid() != 0 {
            wrong.push(format!(
                "{:o} uid {} {}",
                md.mode() & 0o7777,
                md.uid(),
                p.display()
            ));
        }
    }
    for must in [
        state.join("containers/parent-1.tenant-a/registration.json"),
        state.join("dead-letter/kafka.ndjson"),
        state.join("buffer/kafka/cursor"),
        state.join("metrics.prom"),
    ] {
        assert!(paths.contains(&must), "{} was not made", must.display());
    }
    assert!(
        wrong.is_empty(),
        "state objects not private:\n{}",
        wrong.join("\n")
    );
    assert_eq!(mode(&s.socket) & 0o777, 0o600, "socket");
    // Another user tries every one of them, and the socket.
    let args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let got = as_user(&exe, NOBODY, NOBODY, &[], "attempt", &args);
    let open: Vec<&String> = got.iter().filter(|r| !r.starts_with("denied\t")).collect();
    assert_eq!(got.len(), paths.len(), "{got:?}");
    assert!(open.is_empty(), "user {NOBODY} got at:\n{open:#?}");
    let got = connect_as_nobody(&exe, &s.socket);
    assert!(got[0].starts_with("refused"), "{got:?}");
    kill(c);
    s.stop();
}

#[test]
#[ignore = "needs root"]
fn only_root_or_the_socket_group_hands_containers_to_the_shipper() {
    let test = "only_root_or_the_socket_group_hands_containers_to_the_shipper";
    let Some((d, exe)) = as_root(test, "user 65534 against a root shipper") else {
        return;
    };
    // A sandbox the unprivileged user owns (its fallback files go there).
    let sandbox = d.path().join("sandbox-b");
    std::fs::create_dir(&sandbox).unwrap();
    std::os::unix::fs::chown(&sandbox, Some(NOBODY), Some(NOBODY)).unwrap();
    let register = |socket: &Path, groups: &[u32]| {
        let args = [socket.display().to_string(), sandbox.display().to_string()];
        as_user(&exe, NOBODY, NOBODY, groups, "register", &args)[0].clone()
    };

    // 1. Default: the socket is root's (0600) from the moment it exists.
    let a = d.path().join("a");
    std::fs::create_dir(&a).unwrap();
    let mut s = Shipper::start(&a, "", "warn");
    assert_eq!(mode(&s.socket) & 0o777, 0o600);
    let got = connect_as_nobody(&exe, &s.socket);
    assert!(got[0].contains("EACCES"), "{got:?}");
    assert_eq!(register(&s.socket, &[]), "shipped=false");
    // 2. Even with the file mode opened (as the old chmod-after-listen window
    //    left it), the shipper checks who connected and refuses, counted.
    chmod(&s.socket, 0o666);
    assert_eq!(register(&s.socket, &[]), "shipped=false");
    let c = s.wait_for("refusal counted", Duration::from_secs(10), |c| {
        n(c, "reader.connections_refused") >= 1
    });
    assert_eq!(n(&c, "reader.containers_registered"), 0, "{c:#}");
    assert!(s.log().contains("connection refused"), "{}", s.log());
    let entries = std::fs::read_dir(s.state.join("containers"))
        .unwrap()
        .count();
    assert_eq!(entries, 0, "nothing registered");
    // An in-place upgrade of the supervisor (SIGUSR2) sets the socket's mode
    // again, whatever happened to it.
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGUSR2) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(s.state.join("supervisor.execs"))
        .ok()
        .as_deref()
        != Some("1")
    {
        assert!(Instant::now() < deadline, "no upgrade: {}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&s.socket) & 0o777, 0o600, "after the upgrade");
    assert_eq!(mode(&s.state.join("supervisor.execs")), 0o600);
    assert_eq!(register(&s.socket, &[]), "shipped=false");
    // Root (the agent) is served.
    let root_sandbox = d.path().join("sandbox-root");
    std::fs::create_dir(&root_sandbox).unwrap();
    let io = module(&s.socket)
        .prepare(&spec(
            "root-task",
            &root_sandbox,
            &[("rein.log.sink", "none")],
        ))
        .unwrap();
    assert!(io.shipped);
    drop(io);
    s.stop();

    // 3. `socket_group`: its members are served, no one else.
    let gid = 4242;
    let b = d.path().join("b");
    std::fs::create_dir(&b).unwrap();
    let mut s = Shipper::start(&b, &format!("socket_group = {gid}"), "warn");
    let md = std::fs::metadata(&s.socket).unwrap();
    assert_eq!((md.mode() & 0o777, md.gid()), (0o660, gid));
    assert_eq!(register(&s.socket, &[]), "shipped=false");
    assert_eq!(register(&s.socket, &[gid]), "shipped=true");
    s.wait_for(
        "the member's container registered",
        Duration::from_secs(10),
        |c| n(c, "reader.containers_registered") == 1,
    );
    s.stop();

    // 4. A user who can bind the configured path cannot pose as the shipper:
    //    the module hands it no pipe.
    let fake_dir = d.path().join("fake");
    std::fs::create_dir(&fake_dir).unwrap();
    std::os::unix::fs::chown(&fake_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let fake = fake_dir.join("shipper.sock");
    let ready = fake_dir.join("ready");
    let (fake2, ready2, exe2) = (fake.clone(), ready.clone(), exe.clone());
    let poser = std::thread::spawn(move || {
        let args = [fake2.display().to_string(), ready2.display().to_string()];
        as_user(&exe2, NOBODY, NOBODY, &[], "pose-as-shipper", &args)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the poser did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = d.path().join("sandbox-victim");
    std::fs::create_dir(&victim).unwrap();
    let io = module(&fake)
        .prepare(&spec("victim", &victim, &[("rein.log.sink", "none")]))
        .unwrap();
    assert!(!io.shipped, "the module gave its pipes to user {NOBODY}");
    assert_eq!(poser.join().unwrap(), ["received 0 descriptors"]);
}

/// Sizes of the dead-letter file and of the copies moved away, in lines.
fn lines(p: &Path) -> usize {
    std::fs::read(p).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

#[test]
fn dead_letter_file_is_bounded_pause_waits_and_drop_counts() {
    let total = 100u64;
    let limit = 64 * 1024;
    // pause (default): the file stops at the bound, the sink waits, nothing is lost.
    let d = tempfile::tempdir().unwrap();
    let mut s = Shipper::start(
        d.path(),
        &format!("{}max_dead_letter_bytes = 64KiB\n", refusing_kafka()),
        "error",
    );
    let dl = s.state.join("dead-letter/kafka.ndjson");
    let c = refused_container(&module(&s.socket), &d.path().join("sandbox"), "filler", 100);
    let counters = s.wait_for("dead-letter full", Duration::from_secs(60), |c| {
        n(c, "sinks.kafka.dead_letter_full") == 1
    });
    let size = std::fs::metadata(&dl).unwrap().len();
    let first = lines(&dl);
    assert!(size <= limit, "{size} bytes above the bound");
    assert!(first > 0 && (first as u64) < total, "{first} {counters:#}");
    assert_eq!(n(&counters, "sinks.kafka.dead_letter_dropped"), 0);
    assert!(
        n(&counters, "buffers.kafka.acked_records") < total,
        "the sink waits: its buffer is not acknowledged {counters:#}"
    );
    assert!(
        s.log().contains("max_dead_letter_bytes"),
        "logged: {}",
        s.log()
    );
    // The operator moves the file away, again and again: every record arrives.
    let mut moved = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    loop {
        if dl.exists() {
            moved += lines(&dl);
            std::fs::rename(&dl, d.path().join(format!("moved.{i}"))).unwrap();
            i += 1;
        }
        if moved as u64 == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{moved} of {total}: {:#}",
            s.counters()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let c2 = s.wait_for("the sink goes on", Duration::from_secs(30), |c| {
        n(c, "sinks.kafka.dead_letter_full") == 0 && n(c, "buffers.kafka.acked_records") == total
    });
    assert_eq!(n(&c2, "sinks.kafka.dead_lettered"), total);
    kill(c);
    s.stop();

    // drop: the sink keeps going; what does not fit is counted and logged.
    let d = tempfile::tempdir().unwrap();
    let mut s = Shipper::start(
        d.path(),
        &format!(
            "{}max_dead_letter_bytes = 64KiB\ndead_letter_full_policy = drop\n",
            refusing_kafka()
        ),
        "error",
    );
    let dl = s.state.join("dead-letter/kafka.ndjson");
    let c = refused_container(&module(&s.socket), &d.path().join("sandbox"), "filler", 100);
    let counters = s.wait_for("every record handled", Duration::from_secs(60), |c| {
        n(c, "buffers.kafka.acked_records") == total
    });
    let written = lines(&dl) as u64;
    let dropped = n(&counters, "sinks.kafka.dead_letter_dropped");
    assert!(std::fs::metadata(&dl).unwrap().len() <= limit);
    assert!(dropped > 0, "{counters:#}");
    assert_eq!(written + dropped, total, "{counters:#}");
    assert!(s.log().contains("refused records dropped"), "{}", s.log());
    kill(c);
    s.stop();
}

#[test]
fn check_bad_settings_and_failing_connections_never_show_secrets() {
    let d = tempfile::tempdir().unwrap();
    let secrets = [
        "RedisUrlSecret1",
        "RedisAuthFileSecret2",
        "KafkaSaslSecret3",
        "KafkaKeySecret4",
        "EsAuthFileSecret5",
    ];
    let es_auth = d.path().join("es.auth");
    std::fs::write(&es_auth, format!("basic elastic:{}\n", secrets[4])).unwrap();
    chmod(&es_auth, 0o644);
    let redis_auth = d.path().join("redis.auth");
    std::fs::write(&redis_auth, format!("logs {}\n", secrets[1])).unwrap();
    chmod(&redis_auth, 0o600);
    let closed = free_port();
    let settings = format!(
        "redis_url = redis://logs:{}@127.0.0.1:{closed}/0\nredis_auth_file = {}\nredis_backoff_max = 200ms\n\
         kafka_brokers = 127.0.0.1:{closed}\nkafka_message_timeout = 1s\nkafka_backoff_max = 200ms\n\
         kafka_properties = security.protocol=sasl_plaintext;sasl.mechanism=PLAIN;sasl.username=logs;sasl.password={};ssl.key.password={}\n\
         es_url = http://127.0.0.1:{closed}\nes_auth_file = {}\nes_backoff_max = 200ms\n",
        secrets[0],
        redis_auth.display(),
        secrets[2],
        secrets[3],
        es_auth.display()
    );
    let leaks = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows {s}:\n{text}");
        }
    };
    let check = |conf_text: &str| {
        let conf = d.path().join("check.conf");
        std::fs::write(&conf, conf_text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rein-log-shipper"))
            .args(["check", "--config"])
            .arg(&conf)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // 1. `check` shows the settings, never the secrets.
    let (ok, text) = check(&settings);
    assert!(ok, "{text}");
    leaks("check", &text);
    assert!(text.contains("<redacted>"), "{text}");
    assert!(text.contains("redis://logs:<redacted>@127.0.0.1"), "{text}");
    assert!(
        text.contains("es_auth_file") && text.contains("open to other users"),
        "a readable auth file is pointed out: {text}"
    );
    assert!(
        text.contains("the settings file") && !text.contains("redis_auth_file"),
        "the settings file (kafka_properties, redis_url) is pointed out, the 0600 auth file is not: {text}"
    );
    // 2. Refused settings quote their value without the secret.
    for bad in [
        format!(
            "redis_url = redis://logs:{}@\nredis_stream = a b\n",
            secrets[0]
        ),
        format!("redis_url = http://logs:{}@x\n", secrets[0]),
        format!(
            "kafka_brokers = b:1\nkafka_properties = sasl.password={};junk\n",
            secrets[2]
        ),
        format!(
            "kafka_brokers = b:1\nkafka_properties = sasl.password={};sasl.mechanism=NOPE\n",
            secrets[2]
        ),
        format!("es_url = https://elastic:{}@es:9200\n", secrets[4]),
        format!("es_urll = https://elastic:{}@es:9200\n", secrets[4]),
    ] {
        let (ok, text) = check(&bad);
        leaks("an error", &text);
        if !ok {
            assert!(text.contains("rein-log-shipper:"), "{text}");
        }
    }
    // 3. Every sink fails to connect, debug logging on: no secret in the log.
    let mut s = Shipper::start(d.path(), &settings, "debug");
    let m = module(&s.socket);
    let mut children = Vec::new();
    for sink in ["redis", "kafka", "elasticsearch"] {
        let sandbox = d.path().join(format!("sandbox-{sink}"));
        std::fs::create_dir(&sandbox).unwrap();
        let io = m
            .prepare(&spec(sink, &sandbox, &[("rein.log.sink", sink)]))
            .unwrap();
        assert!(io.shipped);
        children.push(
            Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
                .args(["--lines", "20"])
                .stdout(Stdio::from(io.stdout))
                .stderr(Stdio::from(io.stderr))
                .spawn()
                .unwrap(),
        );
    }
    s.wait_for(
        "every sink failed to connect",
        Duration::from_secs(60),
        |c| {
            n(c, "sinks.redis.failed_requests") >= 2
                && n(c, "sinks.elasticsearch.failed_requests") >= 2
                && n(c, "sinks.kafka.retried") >= 1
        },
    );
    for c in children {
        kill(c);
    }
    s.stop();
    let log = s.log();
    leaks("the shipper's log", &log);
    assert!(
        log.contains("redis://logs:<redacted>@127.0.0.1"),
        "the Redis connection error was logged: {log}"
    );
    for p in tree(&s.state) {
        if p.is_file() {
            leaks(
                &p.display().to_string(),
                &String::from_utf8_lossy(&std::fs::read(&p).unwrap()),
            );
        }
    }
}
