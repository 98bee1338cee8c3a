//! Attacks on the root shipper (and the agent's module) through a task's own
//! sandbox, performed for real: sandboxes owned by `nobody` under a
//! root-owned directory, the attacker's steps run by a child process as
//! `nobody`, a real shipper, containers writing through `LoggerModule::prepare`.
//!
//! Every kind of object a task can put at a name the shipper uses (symlink
//! to a root-only file, to a path that does not exist, to a directory; FIFO;
//! unix socket; directory; hard link to a file of its own; a file of another
//! owner, planted by root since a task cannot make one) at every moment
//! (before registration, during a rotation loop, before a worker kill -9 and
//! adoption, before a worker upgrade, thousands of rotated names). Each run asserts: not one byte
//! written outside (content, size, mtime), no outside content shipped, a
//! victim container beside the attackers keeps shipping every line, every
//! attacker's own lines are shipped once, and the refusals are counted.
//! Root only: skips visibly otherwise.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

#[path = "common/attacker.rs"]
mod attacker;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attacker::{fingerprint, Mode, Target, KINDS, NOBODY};
use common::shipper::{spec, Shipper};

/// The attacker child's entry (re-executed as `nobody` with `--ignored --exact`):
/// not a test of its own (ignored, so that it never counts as one).
#[test]
#[ignore = "the attacker child of the attack_sandbox tests, run by them"]
fn attacker_process() {
    if std::env::var_os("REIN_ATTACK_KIND").is_some() {
        attacker::attacker_main();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    Registration,
    Rotation,
    Adoption,
    /// A worker upgrade (`SIGHUP`: clean stop, offsets saved, new worker).
    Upgrade,
    RotatedNames,
}

const BATCH: u64 = 1200;
const VICTIM_LINES: u64 = 3000;

/// Line `seq` of `prefix`, 200 bytes with its newline.
fn line(prefix: &str, seq: u64) -> Vec<u8> {
    let mut l = format!("{prefix} seq={seq} ").into_bytes();
    l.resize(199, b'x');
    l.push(b'\n');
    l
}

/// Writes lines `from..to` of `prefix` in small paced chunks (so that
/// rotations happen while an attacker works). The pipe is non-blocking: a
/// shipper that stops reading it fails the test instead of hanging it.
fn write_lines(f: &mut File, prefix: &str, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in from..to {
        let l = line(prefix, s);
        let mut done = 0;
        while done < l.len() {
            match f.write(&l[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "{prefix}: blocked at line {s}: the shipper stopped reading"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{prefix}: line {s}: {e}"),
            }
        }
        if (s + 1).is_multiple_of(40) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits for a child with a deadline (a blocked container fails the test).
fn wait_child(c: &mut std::process::Child, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            assert!(st.success(), "{what} failed: {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("{what} blocked: the shipper stopped reading its pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes of the stream a checkpoint says are in the buffer.
fn checkpointed(state: &Path, key: &str) -> u64 {
    std::fs::read(state.join("containers").join(key).join("checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map_or(0, |v| {
            v["stdout"]["base"].as_u64().unwrap_or(0) + v["stdout"]["offset"].as_u64().unwrap_or(0)
        })
}

/// A file of another owner (root) planted by the test where a task cannot,
/// kept open to check it is never written.
struct Foreign {
    file: File,
    before: (u64, i64, i64),
}

fn plant_foreign(sb: &Path, name: &str, t: &Target) -> Foreign {
    attacker::plant("foreign", sb, name, &t.secret, &t.absent, &t.outside_dir);
    let file = File::open(sb.join(name)).unwrap();
    let m = file.metadata().unwrap();
    Foreign {
        file,
        before: (m.len(), m.mtime(), m.mtime_nsec()),
    }
}

/// A file's content, size and mtime.
type Fingerprint = (Vec<u8>, u64, i64, i64);

/// A base directory (root's, 0755) with the attack's targets outside the
/// sandboxes, and the root-only file's fingerprint; None, after a visible
/// skip, unless root.
fn scene(test: &str) -> Option<(tempfile::TempDir, Target, Fingerprint)> {
    if !common::is_root() {
        common::skip(
            test,
            "needs root (sandboxes owned by nobody, attacker run as nobody)",
        );
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Target::make(d.path());
    let secret_before = fingerprint(&t.secret);
    Some((d, t, secret_before))
}

/// Not one byte outside the sandboxes: the root-only file, the absent path,
/// the outside directory and every planted file of another owner are as
/// they were.
fn assert_nothing_outside(t: &Target, secret_before: &Fingerprint, foreign: &[Foreign], ctx: &str) {
    assert_eq!(
        &fingerprint(&t.secret),
        secret_before,
        "{ctx}: the root-only file changed"
    );
    assert!(
        !t.absent.exists(),
        "{ctx}: a file was created outside the sandbox"
    );
    assert_eq!(
        std::fs::read_dir(&t.outside_dir).unwrap().count(),
        0,
        "{ctx}: written into the outside directory"
    );
    for f in foreign {
        let m = f.file.metadata().unwrap();
        assert_eq!(
            (m.len(), m.mtime(), m.mtime_nsec()),
            f.before,
            "{ctx}: a file of another owner was written"
        );
    }
}

/// Plants `kind` in `sb` the way `mode` says: as `nobody`, or as root for
/// the `foreign` kind. False if the attacker process could not run.
fn attack_once(kind: &str, mode: Mode, sb: &Path, t: &Target, foreign: &mut Vec<Foreign>) -> bool {
    if kind != "foreign" {
        return attacker::run(kind, mode, sb, t);
    }
    let names: Vec<String> = match mode {
        Mode::Plant => ["stdout", "stderr", "stdout.1", "stdout.2", "stdout.3"]
            .map(String::from)
            .to_vec(),
        _ => (1..=5000).map(|n| format!("stdout.{n}")).collect(),
    };
    for (i, n) in names.iter().enumerate() {
        if i < 5 {
            foreign.push(plant_foreign(sb, n, t));
        } else {
            attacker::plant("foreign", sb, n, &t.secret, &t.absent, &t.outside_dir);
        }
    }
    true
}

fn attack(test: &str, moment: Moment) {
    let Some((d, t, secret_before)) = scene(test) else {
        return;
    };
    let base = d.path();
    let sandboxes: Vec<(&str, PathBuf)> = KINDS
        .iter()
        .map(|k| (*k, attacker::sandbox(base, &format!("att-{k}"))))
        .collect();
    let victim_sb = attacker::sandbox(base, "victim");
    // The attacker must be able to run as nobody (the test binary readable by it).
    if !attacker::run(
        "directory",
        Mode::Plant,
        &attacker::sandbox(base, "probe"),
        &t,
    ) {
        return common::skip(test, "the test binary cannot be run as nobody from here");
    }
    let mut foreign: Vec<Foreign> = Vec::new();
    if moment == Moment::Registration {
        for (k, sb) in &sandboxes {
            assert!(attack_once(k, Mode::Plant, sb, &t, &mut foreign), "{k}");
        }
    }
    let mut sh = Shipper::start(
        base,
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\nrotate_max_bytes = 16KiB\nrotate_keep = 3\npartial_flush = 300ms",
    );
    let m = sh.module();
    let multiline = [("rein.log.multiline", "off")];
    // The victim: a real process as nobody, writing beside the attackers all along.
    let vio = m.prepare(&spec("victim", &victim_sb, &multiline)).unwrap();
    assert!(vio.shipped);
    let mut victim = Command::new(env!("CARGO_BIN_EXE_rein-log-loadgen"))
        .args([
            "--lines",
            &VICTIM_LINES.to_string(),
            "--rate",
            "600",
            "--prefix",
            "victim",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(vio.stdout))
        .stderr(Stdio::from(vio.stderr))
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .unwrap();
    let victim_start = Instant::now();
    // The attackers' containers (their output goes through the pipes).
    let mut outs = Vec::new();
    for (k, sb) in &sandboxes {
        let s = spec(&format!("a-{k}"), sb, &multiline);
        let io = m.prepare(&s).unwrap();
        assert!(io.shipped, "{k}: the shipper refused the container");
        outs.push((
            k.to_string(),
            s.id.file_name(),
            File::from(io.stdout),
            io.stderr,
        ));
    }
    // During a rotation loop: the attackers swap names while the output rotates.
    let mut loops = Vec::new();
    let stop_root = base.join("stop-root");
    let mut root_loop = None;
    if moment == Moment::Rotation {
        for (k, sb) in &sandboxes {
            if *k == "foreign" {
                let (sb, t, stop) = (sb.clone(), t.clone(), stop_root.clone());
                root_loop = Some(std::thread::spawn(move || {
                    let (a, o) = (&t.absent, &t.outside_dir);
                    let mut i = 0u64;
                    while !stop.exists() {
                        attacker::plant_when_free("foreign", &sb, "stdout", &t.secret, a, o);
                        std::thread::yield_now();
                        i += 1;
                        if i.is_multiple_of(200) {
                            for n in ["stdout", "stdout.1", "stdout.2"] {
                                attacker::plant("foreign", &sb, n, &t.secret, a, o);
                            }
                        }
                    }
                }));
            } else {
                let stop = sb.with_extension("stop");
                loops.push((
                    stop.clone(),
                    attacker::spawn(k, Mode::Loop, sb, &t, &stop).unwrap(),
                ));
            }
        }
    }
    let write_batch = |outs: &mut Vec<(String, String, File, std::os::fd::OwnedFd)>, from, to| {
        std::thread::scope(|s| {
            for (k, _, f, _) in outs.iter_mut() {
                let prefix = format!("att-{k}");
                s.spawn(move || write_lines(f, &prefix, from, to));
            }
        });
    };
    write_batch(&mut outs, 0, BATCH);
    if matches!(
        moment,
        Moment::Adoption | Moment::Upgrade | Moment::RotatedNames
    ) {
        // Everything written so far is buffered and checkpointed: what the
        // restarted worker does is all that is tested.
        let deadline = Instant::now() + Duration::from_secs(60);
        for (k, key, _, _) in &outs {
            while checkpointed(&sh.state, key) < BATCH * 200 {
                assert!(
                    Instant::now() < deadline,
                    "{k}: batch not checkpointed: {}",
                    sh.counters()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mode = if moment == Moment::RotatedNames {
            Mode::Many
        } else {
            Mode::Plant
        };
        for (k, sb) in &sandboxes {
            assert!(attack_once(k, mode, sb, &t, &mut foreign), "{k}");
        }
        if moment == Moment::Upgrade {
            sh.restart_worker();
        } else {
            sh.kill_worker();
        }
    }
    write_batch(&mut outs, BATCH, 2 * BATCH);
    for (stop, mut c) in loops {
        File::create(&stop).unwrap();
        let _ = c.wait();
    }
    File::create(&stop_root).unwrap();
    if let Some(h) = root_loop {
        h.join().unwrap();
    }
    drop(outs);
    wait_child(&mut victim, "the victim container", Duration::from_secs(60));
    sh.wait_idle(Duration::from_secs(90));
    let victim_secs = victim_start.elapsed().as_secs_f64();
    // Counters are written every second: wait for those of the last worker
    // with every container gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut counters = sh.counters();
    while counters["reader"]["containers_live"] != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        counters = sh.counters();
    }
    sh.stop();
    let recs = attacker::records(&sh.state.join("buffer/elasticsearch"));
    let ctx = format!("{moment:?}: counters {counters}");

    assert_nothing_outside(&t, &secret_before, &foreign, &ctx);
    for f in &foreign {
        let mut b = vec![0u8; f.before.0 as usize];
        f.file.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, secret_before.0, "{ctx}");
    }
    let own = base.join("att-hardlink/attacker-own-file");
    if own.exists() {
        assert_eq!(
            std::fs::read(&own).unwrap(),
            b"attacker's own file\n",
            "{ctx}: the hard-linked file was written"
        );
    }
    // No outside content shipped.
    for r in &recs {
        let doc = String::from_utf8_lossy(&r.doc);
        assert!(
            !doc.contains(&t.marker),
            "{ctx}: outside content shipped in {}: {doc:.200}",
            r.container
        );
        assert!(
            !doc.contains("attacker's own file"),
            "{ctx}: a hard-linked file was shipped"
        );
    }
    // Every line of every container, once (a resend keeps its id).
    let mut seen: BTreeMap<String, BTreeMap<u64, BTreeSet<String>>> = BTreeMap::new();
    for r in &recs {
        let mut parts = r.message.splitn(3, ' ');
        let (Some(p), Some(s)) = (parts.next(), parts.next()) else {
            panic!("{ctx}: unexpected record {:.80}", r.message);
        };
        let seq: u64 = s
            .strip_prefix("seq=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: unexpected record {:.80}", r.message));
        seen.entry(p.to_string())
            .or_default()
            .entry(seq)
            .or_default()
            .insert(r.id.clone());
    }
    let mut expected: Vec<(String, u64)> = KINDS
        .iter()
        .map(|k| (format!("att-{k}"), 2 * BATCH))
        .collect();
    expected.push(("victim".into(), VICTIM_LINES));
    for (p, n) in &expected {
        let got = seen.get(p).cloned().unwrap_or_default();
        let missing: Vec<u64> = (0..*n).filter(|s| !got.contains_key(s)).collect();
        let twice: Vec<u64> = got
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(s, _)| *s)
            .collect();
        assert!(
            missing.is_empty(),
            "{ctx}: {} lines of {p} not shipped: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        assert!(
            twice.is_empty(),
            "{ctx}: lines of {p} shipped twice: {:?}",
            &twice[..twice.len().min(20)]
        );
        assert_eq!(got.len() as u64, *n, "{ctx}: unexpected lines of {p}");
    }
    let refused = counters["reader"]["sandbox_objects_refused"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0, "{ctx}: nothing counted as refused");
    eprintln!(
        "{moment:?}: {refused} objects refused; victim: {VICTIM_LINES} lines in {victim_secs:.1}s (written at 600/s: {:.1}s)",
        VICTIM_LINES as f64 / 600.0
    );
}

#[test]
#[ignore = "needs root"]
fn planted_before_registration_nothing_followed_everything_shipped() {
    attack(
        "planted_before_registration_nothing_followed_everything_shipped",
        Moment::Registration,
    );
}

#[test]
#[ignore = "needs root"]
fn swapped_during_rotations_nothing_followed_everything_shipped() {
    attack(
        "swapped_during_rotations_nothing_followed_everything_shipped",
        Moment::Rotation,
    );
}

#[test]
#[ignore = "needs root"]
fn planted_before_worker_kill_nothing_adopted_but_our_files() {
    attack(
        "planted_before_worker_kill_nothing_adopted_but_our_files",
        Moment::Adoption,
    );
}

#[test]
#[ignore = "needs root"]
fn planted_before_worker_upgrade_nothing_adopted_but_our_files() {
    attack(
        "planted_before_worker_upgrade_nothing_adopted_but_our_files",
        Moment::Upgrade,
    );
}

#[test]
#[ignore = "needs root"]
fn five_thousand_rotated_names_planted_nothing_read_nothing_slowed() {
    attack(
        "five_thousand_rotated_names_planted_nothing_read_nothing_slowed",
        Moment::RotatedNames,
    );
}

/// The module's fallback (shipper unreachable at `prepare`) runs inside the
/// agent, as root: it creates its own files and follows nothing planted.
#[test]
#[ignore = "needs root"]
fn module_fallback_follows_nothing_planted() {
    let test = "module_fallback_follows_nothing_planted";
    let Some((d, t, secret_before)) = scene(test) else {
        return;
    };
    let base = d.path();
    let m = rein_logger::module::LoggerModule::new(&[
        (
            "shipper_socket".to_string(),
            base.join("no-shipper.sock").display().to_string(),
        ),
        ("shipper_timeout".to_string(), "200ms".to_string()),
    ])
    .unwrap();
    for kind in KINDS {
        let sb = attacker::sandbox(base, &format!("fb-{kind}"));
        let mut foreign = Vec::new();
        if !attack_once(kind, Mode::Plant, &sb, &t, &mut foreign) {
            return common::skip(test, "the test binary cannot be run as nobody from here");
        }
        let before = rein_logger::sandbox::objects_refused();
        let io = m.prepare(&spec(&format!("fb-{kind}"), &sb, &[])).unwrap();
        assert!(!io.shipped);
        File::from(io.stdout).write_all(b"out line\n").unwrap();
        File::from(io.stderr).write_all(b"err line\n").unwrap();
        for (name, text) in [("stdout", "out line\n"), ("stderr", "err line\n")] {
            let meta = std::fs::symlink_metadata(sb.join(name)).unwrap();
            assert!(
                meta.is_file() && meta.nlink() == 1,
                "{kind}: {name} is not a file of the agent's"
            );
            assert_eq!(
                std::fs::read_to_string(sb.join(name)).unwrap(),
                text,
                "{kind}"
            );
        }
        assert_nothing_outside(&t, &secret_before, &foreign, kind);
        assert!(
            rein_logger::sandbox::objects_refused() >= before + 2,
            "{kind}: refusals not counted"
        );
    }
}

/// Log files (`rein.log.files`): seven attackers as `nobody` keep planting
/// every kind of object where the container's globs look (and swapping a
/// file of their own in and out), root plants a file of another owner
/// holding the marker; a victim container beside them writes its own log
/// file, rotated. Nothing outside is read or written, no planted object is
/// followed, the shipper never blocks, the victim's lines all arrive once.
#[test]
fn log_file_globs_never_follow_a_planted_object() {
    const TEST: &str = "log_file_globs_never_follow_a_planted_object";
    let Some((d, t, secret_before)) = scene(TEST) else {
        return;
    };
    let sh = Shipper::start(
        d.path(),
        "es_url = http://127.0.0.1:9\nes_timeout = 200ms\npartial_flush = 300ms",
    );
    let m = sh.module();
    let labels = [("rein.log.files", "logs/*.log,deep=logs/*/*.log")];
    let (sb, vb) = (
        attacker::sandbox(d.path(), "att"),
        attacker::sandbox(d.path(), "victim"),
    );
    for s in [&sb, &vb] {
        let logs = s.join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let att = m
        .prepare(&common::shipper::spec_in("att", &sb, &labels))
        .unwrap();
    let vic = m
        .prepare(&common::shipper::spec_in("victim", &vb, &labels))
        .unwrap();
    assert!(att.shipped && vic.shipped);
    let foreign = vec![plant_foreign(&sb.join("logs"), "foreign.log", &t)];
    let stop = d.path().join("stop-logfiles");
    let mut attackers = Vec::new();
    for kind in KINDS.iter().filter(|k| **k != "foreign") {
        match attacker::spawn(kind, Mode::LogFiles, &sb, &t, &stop) {
            Some(c) => attackers.push(c),
            None => {
                common::skip(TEST, "the attacker process could not run as nobody");
                return;
            }
        }
    }
    // The victim writes its log file in rounds, rotating it by rename.
    let app = vb.join("logs/app.log");
    let mut n = 0u64;
    for round in 0..6 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&app)
            .unwrap();
        std::os::unix::fs::chown(&app, Some(NOBODY), Some(NOBODY)).unwrap();
        for _ in 0..500 {
            f.write_all(&line("victim", n)).unwrap();
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(400));
        if round == 2 {
            std::fs::rename(&app, vb.join("logs/app.log.1")).unwrap();
        }
    }
    File::create(&stop).unwrap();
    for mut a in attackers {
        wait_child(&mut a, "an attacker", Duration::from_secs(90));
    }
    drop((att.stdout, att.stderr, vic.stdout, vic.stderr));
    sh.wait_idle(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut counters = sh.counters();
    while counters["reader"]["containers_live"] != 0 {
        assert!(Instant::now() < deadline, "{counters}");
        std::thread::sleep(Duration::from_millis(50));
        counters = sh.counters();
    }
    drop(sh);
    let recs = attacker::records(&d.path().join("state/buffer/elasticsearch"));
    assert!(
        !recs
            .iter()
            .any(|r| String::from_utf8_lossy(&r.doc).contains(&t.marker)),
        "content from outside the sandbox or of another owner was shipped; {counters}"
    );
    let mut victim: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.message.starts_with("victim seq=")) {
        let seq = r.message["victim seq=".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        victim.entry(seq).or_default().insert(r.id.clone());
    }
    let lost: Vec<u64> = (0..n).filter(|i| !victim.contains_key(i)).collect();
    assert!(
        lost.is_empty(),
        "victim lines lost: {:?}; {counters}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        victim.values().all(|ids| ids.len() == 1),
        "a victim line under two ids"
    );
    let r = &counters["reader"];
    assert!(
        r["log_files_refused"].as_u64().unwrap_or(0) > 0,
        "{counters}"
    );
    assert_nothing_outside(&t, &secret_before, &foreign, TEST);
}
