//! A hostile task in its sandbox: the attacker's steps run in a child
//! process as user `nobody` (the test binary re-executed with
//! `REIN_ATTACK_*` set, see [`attacker_main`]), in a sandbox that user owns.
//! Also: reading back every buffered record, and the state of a file
//! outside the sandbox (to show that not one byte reached it).

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged task user.
pub const NOBODY: u32 = 65534;

/// Kinds of object a task can put at a name the shipper uses.
pub const KINDS: [&str; 8] = [
    "symlink-file",
    "symlink-new",
    "symlink-dir",
    "fifo",
    "socket",
    "directory",
    "hardlink",
    "foreign",
];

/// What an attack needs to know about its surroundings.
#[derive(Clone, Debug)]
pub struct Target {
    /// A root-only (0600) file outside every sandbox, holding the marker.
    pub secret: PathBuf,
    /// A path outside that does not exist (must never be created).
    pub absent: PathBuf,
    /// A root-owned directory outside (must stay empty).
    pub outside_dir: PathBuf,
    /// The marker: no record may ever contain it.
    pub marker: String,
}

impl Target {
    /// Creates them under `base` (root-owned, traversable).
    pub fn make(base: &Path) -> Target {
        let marker = format!("SECRET-MARKER-{}", std::process::id());
        let secret = base.join("secret");
        std::fs::write(&secret, format!("{marker}\n")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outside_dir = base.join("outside");
        std::fs::create_dir(&outside_dir).unwrap();
        std::fs::set_permissions(&outside_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Target {
            secret,
            absent: outside_dir.join("created-by-root"),
            outside_dir,
            marker,
        }
    }
}

/// Content, size and mtime of a file (what "not one byte written" compares).
pub fn fingerprint(p: &Path) -> (Vec<u8>, u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (
        std::fs::read(p).unwrap(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
    )
}

/// A sandbox directory owned by `nobody` (mode 0755) under `base`.
pub fn sandbox(base: &Path, name: &str) -> PathBuf {
    let p = base.join(name);
    std::fs::create_dir(&p).unwrap();
    chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// What the attacker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Puts the object at `stdout`, `stderr`, `stdout.1`..`stdout.3` (replacing
    /// whatever is there) and exits.
    Plant,
    /// Creates the object at `stdout` whenever the name is free, and replaces
    /// `stdout`, `stdout.1`, `stdout.2` by it, until the stop file exists.
    Loop,
    /// Puts the object at `stdout.1` .. `stdout.5000`, moves `stdout` away and exits.
    Many,
    /// Puts the object at `logs/a.log`, `logs/b.log` and `logs/sub` (where
    /// `rein.log.files` globs look), and swaps a regular file of its own in
    /// and out at `logs/a.log`, until the stop file exists.
    LogFiles,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plant => "plant",
            Mode::Loop => "loop",
            Mode::Many => "many",
            Mode::LogFiles => "logfiles",
        }
    }
}

/// Starts the attacker as `nobody` (the test binary, re-executed into its
/// `attacker_process` entry). `None` when it cannot run (then the caller
/// skips visibly).
pub fn spawn(kind: &str, mode: Mode, sandbox: &Path, t: &Target, stop: &Path) -> Option<Child> {
    let exe = std::env::current_exe().ok()?;
    Command::new(exe)
        .args([
            "--exact",
            "--ignored",
            "attacker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("REIN_ATTACK_KIND", kind)
        .env("REIN_ATTACK_MODE", mode.name())
        .env("REIN_ATTACK_DIR", sandbox)
        .env("REIN_ATTACK_SECRET", &t.secret)
        .env("REIN_ATTACK_ABSENT", &t.absent)
        .env("REIN_ATTACK_OUTSIDE", &t.outside_dir)
        .env("REIN_ATTACK_STOP", stop)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .ok()
}

/// Runs an attacker to its end (plant, many); false if it failed.
pub fn run(kind: &str, mode: Mode, sandbox: &Path, t: &Target) -> bool {
    let stop = sandbox.with_extension("stop");
    spawn(kind, mode, sandbox, t, &stop)
        .and_then(|mut c| c.wait().ok())
        .is_some_and(|s| s.success())
}

/// Makes the object `kind` at `at` (fails if the name is taken).
fn make(
    kind: &str,
    dir: &Path,
    at: &Path,
    secret: &Path,
    absent: &Path,
    outside: &Path,
) -> std::io::Result<()> {
    match kind {
        "symlink-file" => std::os::unix::fs::symlink(secret, at),
        "symlink-new" => std::os::unix::fs::symlink(absent, at),
        "symlink-dir" => std::os::unix::fs::symlink(outside, at),
        "fifo" => nix::unistd::mkfifo(at, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .map_err(std::io::Error::from),
        "socket" => std::os::unix::net::UnixListener::bind(at).map(drop),
        "directory" => std::fs::create_dir(at),
        "hardlink" => {
            let own = dir.join("attacker-own-file");
            if !own.exists() {
                let _ = std::fs::write(&own, b"attacker's own file\n");
            }
            std::fs::hard_link(own, at)
        }
        // A file of another owner holding the marker (made by root in the test).
        "foreign" => std::fs::read(secret).and_then(|b| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(at)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &b))
        }),
        k => panic!("unknown kind {k}"),
    }
}

/// Makes `kind` at `name` the moment the name is free (the shipper's
/// rotation renames `stdout` away, then creates it again): true if made.
pub fn plant_when_free(
    kind: &str,
    dir: &Path,
    name: &str,
    secret: &Path,
    absent: &Path,
    outside: &Path,
) -> bool {
    make(kind, dir, &dir.join(name), secret, absent, outside).is_ok()
}

/// Plants `kind` at `name` in `dir` as the *current* user: used by the test
/// (as root) for the one kind a task cannot make itself, a file of another
/// owner, and by the attacker process for all the others.
pub fn plant(kind: &str, dir: &Path, name: &str, secret: &Path, absent: &Path, outside: &Path) {
    let at = dir.join(name);
    let tmp = dir.join(format!(".att-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    let made = make(kind, dir, &tmp, secret, absent, outside);
    if made.is_err() {
        return;
    }
    // Like `ln -sf`: a rename over the name; a directory in the way is removed.
    if std::fs::rename(&tmp, &at).is_err() {
        let _ = std::fs::remove_file(&at);
        let _ = std::fs::remove_dir_all(&at);
        let _ = std::fs::rename(&tmp, &at);
    }
}

/// The attacker process's body (as `nobody`), driven by `REIN_ATTACK_*`.
pub fn attacker_main() {
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from).unwrap();
    let kind = std::env::var("REIN_ATTACK_KIND").unwrap();
    let mode = std::env::var("REIN_ATTACK_MODE").unwrap();
    let dir = var("REIN_ATTACK_DIR");
    let (secret, absent, outside) = (
        var("REIN_ATTACK_SECRET"),
        var("REIN_ATTACK_ABSENT"),
        var("REIN_ATTACK_OUTSIDE"),
    );
    let stop = var("REIN_ATTACK_STOP");
    let p = |name: &str| plant(&kind, &dir, name, &secret, &absent, &outside);
    match mode.as_str() {
        "plant" => {
            for name in ["stdout", "stderr", "stdout.1", "stdout.2", "stdout.3"] {
                p(name);
            }
        }
        "many" => {
            for n in 1..=5000 {
                p(&format!("stdout.{n}"));
            }
            // The current file moved away: a worker restarted now looks for
            // its checkpoint's file elsewhere.
            let _ = std::fs::rename(dir.join("stdout"), dir.join("moved-away"));
        }
        "loop" => {
            let end = Instant::now() + Duration::from_secs(60);
            let mut i = 0u64;
            while Instant::now() < end && !stop.exists() {
                // Like `while :; do ln -s T stdout; done`: in the window between
                // the shipper's rename of `stdout` and its new file.
                for _ in 0..200 {
                    plant_when_free(&kind, &dir, "stdout", &secret, &absent, &outside);
                    std::thread::yield_now();
                }
                // And like `ln -sf`: over whatever holds the names.
                i += 1;
                if i.is_multiple_of(4) {
                    for name in ["stdout", "stdout.1", "stdout.2"] {
                        p(name);
                    }
                }
            }
        }
        "logfiles" => {
            let logs = dir.join("logs");
            let q = |name: &str| plant(&kind, &logs, name, &secret, &absent, &outside);
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end && !stop.exists() {
                for name in ["a.log", "b.log", "sub"] {
                    q(name);
                }
                let own = logs.join(format!(".own-{}", std::process::id()));
                if std::fs::write(&own, b"attacker own line\n").is_ok() {
                    let _ = std::fs::rename(&own, logs.join("a.log"));
                }
                std::thread::yield_now();
            }
        }
        m => panic!("unknown mode {m}"),
    }
}

/// One buffered record.
#[derive(Debug)]
pub struct Rec {
    pub id: String,
    pub container: String,
    pub message: String,
    pub doc: Vec<u8>,
}

/// Every record in a disk buffer directory (read from a copy).
pub fn records(buffer: &Path) -> Vec<Rec> {
    let mut out = Vec::new();
    crate::common::shipper::read_buffer(buffer, |rec| {
        let v: serde_json::Value = serde_json::from_slice(rec.doc).unwrap_or_default();
        out.push(Rec {
            id: String::from_utf8_lossy(rec.id).into_owned(),
            container: String::from_utf8_lossy(rec.container).into_owned(),
            message: v["message"].as_str().unwrap_or_default().to_string(),
            doc: rec.doc.to_vec(),
        });
    });
    out
}
