//! Disk faults under the shipper's state directory, for real: a `state_dir`
//! on a small tmpfs that fills mid-stream and is then enlarged, a real
//! file system error that turns it read-only, a dead-letter file on a full
//! file system, and I/O errors, short writes and failed syncs injected at
//! the disk buffer's exact write and sync calls (`REIN_WAL_FAULTS`, honoured
//! by debug builds; the kernel here has no device-mapper). After each: every
//! line the container wrote reaches Elasticsearch exactly once, the
//! container never saw EPIPE, and the counters add up.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::shipper::{run_container, sandbox_stream, spec, Shipper};
use common::tmpfs::Tmpfs;
use common::{free_port, is_root, osmem_bin, skip, EsServer};

/// The shipper inherits the environment: starts (which may set
/// `REIN_WAL_FAULTS`) happen one at a time.
static START: Mutex<()> = Mutex::new(());

fn start_shipper(dir: &Path, extra: &str, faults: Option<&str>) -> Shipper {
    let _one = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = faults {
        std::env::set_var("REIN_WAL_FAULTS", f);
    }
    let sh = Shipper::start(dir, extra);
    std::env::remove_var("REIN_WAL_FAULTS");
    sh
}

/// osmem on a given port (the shipper may be started before it).
fn es_on(port: u16) -> EsServer {
    EsServer::start_on(port).expect("osmem did not start")
}

/// Why a test cannot run here, if it cannot.
fn cannot_run() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root (mounts a tmpfs)");
    }
    if osmem_bin().is_none() {
        return Some(
            "osmem-server not installed (pip install osmem-server==0.1.6, or set REIN_OSMEM_BIN)",
        );
    }
    None
}

fn n(c: &serde_json::Value, group: &str, key: &str) -> u64 {
    let v = if group == "reader" {
        &c["reader"][key]
    } else {
        &c["buffers"]["elasticsearch"][key]
    };
    v.as_u64().unwrap_or(0)
}

/// Waits until `cond` holds on the counters; panics with all of them after `limit`.
fn wait_for(
    sh: &Shipper,
    what: &str,
    limit: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let c = sh.counters();
        if cond(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: counters {c:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const LINES: u64 = 6000;
const SIZE: &str = "1000";

/// Every line `prefix seq=0..LINES` is in `index` exactly once, and the
/// counters add up: read = buffered = appended = acknowledged (read and
/// buffered only for a worker that ran from the start: the counters start
/// with the worker).
fn assert_all_shipped_once(
    es: &EsServer,
    sh: &Shipper,
    index: &str,
    prefix: &str,
    one_worker: bool,
) {
    assert_each_shipped_once(es, sh, index, &[prefix], LINES, one_worker);
}

/// [`assert_all_shipped_once`] for `lines` lines of each of several
/// containers (10,000 in all at most: what one search returns).
fn assert_each_shipped_once(
    es: &EsServer,
    sh: &Shipper,
    index: &str,
    prefixes: &[&str],
    lines: u64,
    one_worker: bool,
) {
    let total = lines * prefixes.len() as u64;
    assert!(total <= 10_000, "more lines than one search returns");
    let deadline = Instant::now() + Duration::from_secs(180);
    while es.count(index) < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} lines in {index}; counters {:#}",
            es.count(index),
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = wait_for(
        sh,
        "every record acknowledged",
        Duration::from_secs(60),
        |c| {
            // A restarted worker also ships what its predecessor left buffered.
            !one_worker
                || (n(c, "buffer", "acked_records") == n(c, "buffer", "appended_records")
                    && n(c, "reader", "records_buffered") == total)
        },
    );
    let msgs = es.messages(index);
    let mut seen: BTreeMap<(&str, u64), u32> = BTreeMap::new();
    for m in &msgs {
        let (prefix, rest) = prefixes
            .iter()
            .find_map(|p| Some((*p, m.strip_prefix(&format!("{p} seq="))?)))
            .unwrap_or_else(|| panic!("unexpected document {m:.60}"));
        let seq: u64 = rest.split(' ').next().unwrap().parse().unwrap();
        *seen.entry((prefix, seq)).or_default() += 1;
    }
    let missing: Vec<(&str, u64)> = prefixes
        .iter()
        .flat_map(|p| (0..lines).map(move |s| (*p, s)))
        .filter(|k| !seen.contains_key(k))
        .take(10)
        .collect();
    let twice: Vec<(&str, u64)> = seen
        .iter()
        .filter(|e| *e.1 > 1)
        .map(|e| *e.0)
        .take(10)
        .collect();
    assert!(
        msgs.len() as u64 == total && missing.is_empty() && twice.is_empty(),
        "{} documents; missing {missing:?}, twice {twice:?}; counters {c:#}",
        msgs.len()
    );
    if one_worker {
        assert_eq!(n(&c, "reader", "lines_read"), total, "{c:#}");
        // (A restarted worker may cut the torn tail the failed file system left.)
        assert_eq!(n(&c, "buffer", "corrupt_records"), 0, "{c:#}");
    }
    assert_eq!(n(&c, "buffer", "dropped_records"), 0, "{c:#}");
    assert_eq!(
        c["sinks"]["elasticsearch"]["dead_lettered"].as_u64(),
        Some(0),
        "{c:#}"
    );
    assert_eq!(n(&c, "buffer", "stalled"), 0, "{c:#}");
    assert_eq!(n(&c, "reader", "buffer_stalled_streams"), 0, "{c:#}");
}

/// A stalled buffer is retried with a backoff (20 ms doubling to 1 s, from
/// the start at each incident), not every parser round: at most about eight
/// tries per incident plus one a second of stall (a try may count a write
/// and a sync error, hence the factor 2); incidents are counted apart.
fn assert_backed_off(c: &serde_json::Value, stalled_for: Duration) {
    let tries = n(c, "buffer", "write_errors") + n(c, "buffer", "sync_errors");
    let stalls = n(c, "buffer", "write_stalls");
    assert!(stalls >= 1 && stalls <= tries, "{c:#}");
    let bound = 2 * (stalls * 8 + stalled_for.as_secs() + 1);
    assert!(
        tries <= bound,
        "{tries} failed tries in {stalls} stalls over {stalled_for:?} (at most {bound} with \
         the backoff): {c:#}"
    );
}

/// Bytes up to which a container's stdout was checkpointed (stream offset).
fn checkpointed(state: &Path) -> u64 {
    let mut best = 0;
    for e in std::fs::read_dir(state.join("containers"))
        .into_iter()
        .flatten()
    {
        let p = e.unwrap().path().join("checkpoint.json");
        if let Ok(b) = std::fs::read(p) {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            best = best.max(
                v["stdout"]["base"].as_u64().unwrap() + v["stdout"]["offset"].as_u64().unwrap(),
            );
        }
    }
    best
}

const SHIPPER: &str = "es_index = fault-%Y.%m.%d\nes_gzip = false\nes_backoff_max = 300ms\nbuffer_fsync_interval = 50ms\nmax_unparsed_bytes = 1MiB\nparser_burst_bytes = 0B";

/// `state_dir` on a 1 MiB tmpfs; Elasticsearch is down, so the buffer fills
/// the file system mid-stream (ENOSPC). The streams stall (the container
/// blocks, its pipe unread), no checkpoint passes a record that is not in the
/// buffer, then the tmpfs is enlarged, Elasticsearch comes up, and every
/// line arrives exactly once.
#[test]
#[ignore = "needs root"]
fn state_dir_fills_mid_stream_then_grows() {
    let name = "state_dir_fills_mid_stream_then_grows";
    if let Some(why) = cannot_run() {
        return skip(name, why);
    }
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("state"), "1m");
    let port = free_port();
    let mut sh = start_shipper(
        d.path(),
        &format!("es_url = http://127.0.0.1:{port}\n{SHIPPER}"),
        None,
    );
    let m = sh.module();
    let sandbox = d.path().join("sb");
    let mut c = run_container(
        &m,
        &spec("full", &sandbox, &[]),
        &[
            "--lines",
            &LINES.to_string(),
            "--size",
            SIZE,
            "--rate",
            "400",
            "--prefix",
            "full",
        ],
    );
    let started = Instant::now();
    let stalled = wait_for(
        &sh,
        "the buffer never failed",
        Duration::from_secs(60),
        |c| n(c, "buffer", "write_errors") > 0 && n(c, "reader", "buffer_stalled_streams") > 0,
    );
    // Held back, not lost: the parser stops, the container blocks.
    let cp = checkpointed(&sh.state);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        c.try_wait().unwrap().is_none(),
        "the container was not held back: {stalled:#}"
    );
    assert_eq!(
        checkpointed(&sh.state),
        cp,
        "a checkpoint moved while the buffer failed"
    );
    // Every line before the checkpoint is in the buffer (durably: a copy of the files).
    let buffered = common::shipper::buffered_seqs(&sh.state.join("buffer/elasticsearch"));
    let line = SIZE.parse::<u64>().unwrap();
    let mut have = vec![false; LINES as usize];
    for (_, s) in &buffered {
        have[*s as usize] = true;
    }
    let covered = cp / line;

    assert!(
        covered > 0,
        "nothing checkpointed before the disk filled: {stalled:#}"
    );
    assert!(
        (0..covered as usize).all(|i| have[i]),
        "checkpoint at line {covered} passes lines not in the buffer"
    );
    fs.resize("256m");
    let es = es_on(port);
    assert!(c.wait().unwrap().success(), "the container failed (EPIPE?)");
    let index = format!("fault-{}", common::today());
    assert_all_shipped_once(&es, &sh, &index, "full", true);
    let c = sh.counters();
    assert!(n(&c, "reader", "buffer_stalled_ms") > 0, "{c:#}");
    assert_eq!(n(&c, "buffer", "write_stalls"), 1, "one incident: {c:#}");
    assert_backed_off(&c, started.elapsed());
    eprintln!(
        "write_errors {} write_stalls {} stalled_ms {} checkpoint at line {covered} when full",
        n(&c, "buffer", "write_errors"),
        n(&c, "buffer", "write_stalls"),
        n(&c, "reader", "buffer_stalled_ms")
    );
    sh.stop();
    assert_eq!(
        sandbox_stream(&sandbox, "stdout").len() as u64,
        LINES * line
    );
}

/// The whole `state_dir` (disk buffer, containers' state, checkpoints,
/// registrations, counters) on one 2 MiB tmpfs, Elasticsearch down: the
/// buffer fills it mid-stream; a new container registers while it is full;
/// the worker is killed (-9) while it is full. Then the tmpfs is enlarged and
/// Elasticsearch comes up: every line of both containers arrives exactly
/// once, neither container saw EPIPE, the counters add up.
#[test]
#[ignore = "needs root"]
fn whole_state_dir_full_with_a_new_container_and_a_killed_worker() {
    whole_state_dir_full(
        "whole_state_dir_full_with_a_new_container_and_a_killed_worker",
        false,
    );
}

/// The same, the new container registering with the worker started on the
/// full file system after the kill.
#[test]
#[ignore = "needs root"]
fn whole_state_dir_full_with_a_killed_worker_then_a_new_container() {
    whole_state_dir_full(
        "whole_state_dir_full_with_a_killed_worker_then_a_new_container",
        true,
    );
}

fn whole_state_dir_full(name: &str, register_after_kill: bool) {
    if let Some(why) = cannot_run() {
        return skip(name, why);
    }
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("state"), "2m");
    let port = free_port();
    let mut sh = start_shipper(
        d.path(),
        &format!("es_url = http://127.0.0.1:{port}\n{SHIPPER}\nstate_reserve_bytes = 256KiB"),
        None,
    );
    let m = sh.module();
    // 8 MB of lines in all (two searches' worth of documents at most).
    let lines = 4000u64;
    let args = |prefix: &'static str| {
        [
            "--lines".to_string(),
            lines.to_string(),
            "--size".to_string(),
            SIZE.to_string(),
            "--rate".to_string(),
            "1000".to_string(),
            "--prefix".to_string(),
            prefix.to_string(),
        ]
    };
    let start = |prefix: &'static str| {
        let a = args(prefix);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_container(&m, &spec(prefix, &d.path().join(prefix), &[]), &a)
    };
    let started = Instant::now();
    let mut first = start("first");
    let full = wait_for(
        &sh,
        "the buffer never filled the state directory",
        Duration::from_secs(60),
        |c| n(c, "buffer", "write_errors") > 0 && n(c, "buffer", "stalled") == 1,
    );
    // The buffer's writes fail; what room is left for small files goes too.
    let filler = d.path().join("state/filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'x'; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Registered while the state directory is full: taken all the same.
    let mut second = (!register_after_kill).then(|| start("second"));
    // Killed while full; the supervisor starts a worker on the full file system.
    let old = sh.worker_pid();
    // SAFETY: kill(2) of a process this test started (through the supervisor).
    unsafe { libc::kill(old, libc::SIGKILL) };
    sh.wait_new_worker(old);
    let mut second = second.take().unwrap_or_else(|| start("second"));
    // The fault lasts a while: both containers blocked, none released.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        first.try_wait().unwrap().is_none() && second.try_wait().unwrap().is_none(),
        "a container ended while the state directory was full (EPIPE?): {full:#}"
    );
    fs.resize("256m");
    let es = es_on(port);
    for (prefix, c) in [("first", &mut first), ("second", &mut second)] {
        let st = c.wait().unwrap();
        assert!(st.success(), "container {prefix} failed ({st}): EPIPE?");
    }
    let index = format!("fault-{}", common::today());
    assert_each_shipped_once(&es, &sh, &index, &["first", "second"], lines, false);
    // The counters add up: Elasticsearch was down before the kill, so the
    // second worker shipped everything; what it shipped twice (parsed again
    // from the last durable checkpoint, same ids) is counted as duplicates.
    let unique = |c: &serde_json::Value| {
        let s = &c["sinks"]["elasticsearch"];
        s["shipped"].as_u64().unwrap_or(0) - s["duplicates"].as_u64().unwrap_or(0)
    };
    let c = wait_for(
        &sh,
        "shipped = lines + duplicates, nothing in flight",
        Duration::from_secs(30),
        |c| unique(c) == 2 * lines && n(c, "buffer", "in_flight_records") == 0,
    );
    eprintln!("counters after the restart: {c}");
    assert_eq!(
        c["reader"]["containers_released"].as_u64(),
        Some(0),
        "{c:#}"
    );
    assert_eq!(
        n(&c, "buffer", "acked_records"),
        c["sinks"]["elasticsearch"]["shipped"].as_u64().unwrap(),
        "{c:#}"
    );
    assert!(n(&c, "reader", "lines_read") <= 2 * lines, "{c:#}");
    assert_backed_off(&c, started.elapsed());
    sh.stop();
    let line = SIZE.parse::<u64>().unwrap();
    for prefix in ["first", "second"] {
        assert_eq!(
            sandbox_stream(&d.path().join(prefix), "stdout").len() as u64,
            lines * line,
            "sandbox of {prefix}"
        );
    }
}

/// EIO, ENOSPC, a short write followed by an error (with the cut failing
/// too) and failed syncs, injected at the buffer's calls of a real shipper
/// while Elasticsearch is up: every line arrives exactly once.
#[test]
fn injected_write_and_sync_errors_lose_and_duplicate_nothing() {
    let name = "injected_write_and_sync_errors_lose_and_duplicate_nothing";
    if let Some(why) = cannot_run().filter(|w| !w.starts_with("needs root")) {
        return skip(name, why);
    }
    if !cfg!(debug_assertions) {
        return skip(
            name,
            "fault injection (REIN_WAL_FAULTS) exists in debug builds only",
        );
    }
    let es = EsServer::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    // Three runs of failed writes, with successes between them, and failed syncs.
    let plan = "write:short300:2:1,write:eio:3:6,truncate:eio:3:2,sync:eio:3:3,write:enospc:12:6,write:erofs:21:6";
    let started = Instant::now();
    let mut sh = start_shipper(
        d.path(),
        &format!("es_url = http://{}\n{SHIPPER}", es.addr),
        Some(plan),
    );
    let m = sh.module();
    let sandbox = d.path().join("sb");
    let mut c = run_container(
        &m,
        &spec("inj", &sandbox, &[]),
        &[
            "--lines",
            &LINES.to_string(),
            "--size",
            SIZE,
            "--rate",
            "2000",
            "--prefix",
            "inj",
        ],
    );
    assert!(c.wait().unwrap().success(), "the container failed (EPIPE?)");
    let index = format!("fault-{}", common::today());
    assert_all_shipped_once(&es, &sh, &index, "inj", true);
    let c = sh.counters();
    assert!(
        n(&c, "buffer", "write_errors") >= 18,
        "faults not injected: {c:#}"
    );
    assert!(n(&c, "buffer", "sync_errors") >= 1, "{c:#}");
    // The plan's three runs of failures are three incidents only if a commit
    // is written whole between them, which timing decides (a loaded machine
    // batches more per commit); the exact count is the unit test
    // `a_stall_backs_off_and_counts_attempts_and_incidents_apart`.
    assert!(n(&c, "buffer", "write_stalls") >= 1, "{c:#}");
    assert_backed_off(&c, started.elapsed());
    sh.stop();
}

/// A dead-letter file on a full file system: the failed write is cut back
/// to its last whole line and nothing is taken as written; once there is
/// room, every record is in the file exactly once.
#[test]
#[ignore = "needs root"]
fn dead_letter_write_on_a_full_file_system_is_retried_whole() {
    use rein_logger::sink::deadletter::{DeadLetter, DeadLetterFullPolicy, DeadLetterLimits};
    let name = "dead_letter_write_on_a_full_file_system_is_retried_whole";
    if !is_root() {
        return skip(name, "needs root (mounts a tmpfs)");
    }
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("dl"), "64k");
    let path = d.path().join("dl/dead-letter.ndjson");
    let stats = std::sync::Arc::new(rein_logger::sink::SinkStats::default());
    let mut dl = DeadLetter::with_limits(
        &path,
        DeadLetterLimits {
            max_bytes: 1 << 30,
            policy: DeadLetterFullPolicy::Pause,
            max_bytes_per_container: 1 << 30,
        },
        stats,
    );
    let doc = format!("{{\"message\":\"{}\"}}", "d".repeat(300));
    for i in 0..1000 {
        dl.add(
            "es",
            "idx",
            b"c1",
            format!("id-{i}").as_bytes(),
            400,
            b"refused",
            doc.as_bytes(),
        );
    }
    for _ in 0..3 {
        let e = dl.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let data = std::fs::read(&path).unwrap_or_default();
        assert!(
            data.is_empty() || data.ends_with(b"\n"),
            "a partial line stays"
        );
        assert!(data.len() < 64 << 10);
    }
    fs.resize("4m");
    dl.flush().unwrap();
    let data = std::fs::read_to_string(&path).unwrap();
    let ids: Vec<String> = data
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids,
        (0..1000).map(|i| format!("id-{i}")).collect::<Vec<_>>()
    );
}

/// An ext4 file system on a loop device, mounted with `errors=remount-ro`;
/// unmounted (and its image removed) on drop.
struct Ext4 {
    img: PathBuf,
    at: PathBuf,
}

impl Ext4 {
    fn mount(img: &Path, at: &Path) -> Option<Ext4> {
        let f = std::fs::File::create(img).ok()?;
        f.set_len(64 << 20).ok()?;
        let ok = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(img))
        {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let fs = Ext4 {
            img: img.to_path_buf(),
            at: at.to_path_buf(),
        };
        fs.mount_again().then_some(fs)
    }

    fn mount_again(&self) -> bool {
        Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.img)
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The file system's error handler, as on a real I/O error: it turns
    /// read-only at once, whatever is open for writing.
    fn fail(&self) {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE"])
            .arg(&self.at)
            .output()
            .unwrap();
        let dev = String::from_utf8(out.stdout).unwrap();
        let dev = Path::new(dev.trim()).file_name().unwrap().to_owned();
        let trigger = Path::new("/sys/fs/ext4").join(dev).join("trigger_fs_error");
        std::fs::write(&trigger, "fault test\n").unwrap();
    }

    /// Unmounts (every file must be closed), checks and mounts it read-write again.
    fn repair(&self) {
        // A killed process's files close when its last thread is gone, which may be
        // after its leader shows as a zombie: retried until then (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("umount")
            .arg(&self.at)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "umount {}: still in use after 20 s",
                self.at.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = Command::new("e2fsck")
            .args(["-fy"])
            .arg(&self.img)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        // 0: clean, 1: errors corrected (the triggered error is recorded as one).
        assert!(matches!(st.code(), Some(0 | 1)), "e2fsck: {st}");
        assert!(self.mount_again(), "mount {}", self.img.display());
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = std::fs::remove_file(&self.img);
    }
}

fn ext4_error_trigger_exists() -> bool {
    std::fs::read_dir("/sys/fs/ext4").is_ok()
        && Command::new("mkfs.ext4")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

/// The file system under `state_dir` turns read-only mid-stream (ext4's
/// `errors=remount-ro` on a real error): writes, syncs and checkpoint saves
/// fail with EROFS, the streams stall and the container blocks. Linux
/// refuses to make a file system with files open for writing read-only on
/// request, and undoes an error's read-only only by unmounting, so the
/// worker is stopped (the supervisor, which holds the containers' pipes, is
/// kept from starting another meanwhile), the file system checked and
/// mounted read-write again, and the new worker goes on from the checkpoint
/// that was durable: every line arrives exactly once, no EPIPE.
#[test]
#[ignore = "needs root"]
fn state_dir_turns_read_only_then_read_write() {
    let name = "state_dir_turns_read_only_then_read_write";
    if let Some(why) = cannot_run() {
        return skip(name, why);
    }
    if !ext4_error_trigger_exists() {
        return skip(
            name,
            "no ext4 (mkfs.ext4, /sys/fs/ext4) to turn read-only on an error",
        );
    }
    let es = EsServer::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let Some(fs) = Ext4::mount(&d.path().join("state.img"), &d.path().join("state")) else {
        return skip(name, "cannot make or mount an ext4 image on a loop device");
    };
    let mut sh = start_shipper(
        d.path(),
        &format!("es_url = http://{}\n{SHIPPER}", es.addr),
        None,
    );
    let m = sh.module();
    let sandbox = d.path().join("sb");
    let mut c = run_container(
        &m,
        &spec("ro", &sandbox, &[]),
        &[
            "--lines",
            &LINES.to_string(),
            "--size",
            SIZE,
            "--rate",
            "1000",
            "--prefix",
            "ro",
        ],
    );
    let index = format!("fault-{}", common::today());
    let deadline = Instant::now() + Duration::from_secs(60);
    while es.count(&index) < 500 {
        assert!(
            Instant::now() < deadline,
            "nothing shipped: {:#}",
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fs.fail();
    // The state directory can no longer be written (its counters neither):
    // the container is held back once its unparsed bytes reach the bound.
    let held = Instant::now();
    let mut before = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = es.count(&index);
        if now == before && c.try_wait().unwrap().is_none() {
            break;
        }
        assert!(
            held.elapsed() < Duration::from_secs(60),
            "shipping goes on, or the container ended"
        );
        before = now;
    }
    assert!(
        before < LINES,
        "everything shipped before the file system failed"
    );
    // Stop the worker; the supervisor (stopped meanwhile) holds the pipes.
    let sup: i32 = std::fs::read_to_string(sh.state.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let worker = sh.worker_pid();
    // Continues the supervisor however this test ends (a stopped one would
    // never handle the SIGTERM that stops it).
    struct Continue(i32);
    impl Drop for Continue {
        fn drop(&mut self) {
            // SAFETY: kill(2) of a process this test started.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let stopped = Continue(sup);
    // SAFETY: kill(2) of processes this test started.
    unsafe {
        libc::kill(sup, libc::SIGSTOP);
        libc::kill(worker, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the worker did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs.repair();
    drop(stopped);
    sh.wait_new_worker(worker);
    assert!(c.wait().unwrap().success(), "the container failed (EPIPE?)");
    assert_all_shipped_once(&es, &sh, &index, "ro", false);
    sh.stop();
}

/// With `buffer_full_policy = drop_oldest`, a full file system under the
/// buffer is a full buffer: the oldest segments go (counted), the container
/// is never held back, and kept + dropped + in flight = read, exactly.
#[test]
#[ignore = "needs root"]
fn drop_oldest_on_a_full_file_system_never_blocks_and_counts_every_line() {
    let name = "drop_oldest_on_a_full_file_system_never_blocks_and_counts_every_line";
    if !is_root() {
        return skip(name, "needs root (mounts a tmpfs)");
    }
    let d = tempfile::tempdir().unwrap();
    // Only the buffer's file system is small: counters and checkpoints stay writable.
    let _fs = Tmpfs::mount(&d.path().join("state/buffer"), "1m");
    let mut sh = start_shipper(
        d.path(),
        &format!(
            "es_url = http://127.0.0.1:{}\nbuffer_full_policy = drop_oldest\nbuffer_segment_bytes = 64KiB\nes_batch_records = 10\n{SHIPPER}",
            free_port()
        ),
        None,
    );
    let m = sh.module();
    let mut c = run_container(
        &m,
        &spec("drop", &d.path().join("sb"), &[]),
        &[
            "--lines",
            &LINES.to_string(),
            "--size",
            SIZE,
            "--rate",
            "3000",
            "--prefix",
            "drop",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the container is held back: {:#}",
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.wait().unwrap().success(), "the container failed (EPIPE?)");
    wait_for(
        &sh,
        "every line read and buffered",
        Duration::from_secs(120),
        |c| n(c, "reader", "lines_read") == LINES && n(c, "reader", "records_buffered") == LINES,
    );
    sh.stop();
    let c = sh.counters();
    let kept = common::shipper::buffered_seqs(&sh.state.join("buffer/elasticsearch"));
    let (dropped, in_flight) = (
        n(&c, "buffer", "dropped_records"),
        n(&c, "buffer", "dropped_in_flight"),
    );
    let all = format!(
        "kept {} + dropped {dropped} + in flight {in_flight}; counters {c:#}",
        kept.len()
    );
    assert!(
        n(&c, "buffer", "write_errors") > 0,
        "the file system never filled: {all}"
    );
    assert_eq!(kept.len() as u64 + dropped + in_flight, LINES, "{all}");
    let first = kept[0].1;
    for (i, (_, s)) in kept.iter().enumerate() {
        assert_eq!(*s, first + i as u64, "gap or duplicate at {i}: {all}");
    }
    assert_eq!(kept.last().unwrap().1, LINES - 1, "{all}");
}

/// A batch larger than all the room the file system has (the buffer's own
/// segments acknowledged and deleted) goes out in pieces of whole records:
/// before, the whole batch was written at once and refused with ENOSPC for
/// as long as the disk stayed full, so the buffer never drained.
#[test]
#[ignore = "needs root"]
fn a_batch_larger_than_the_room_left_goes_out_in_pieces() {
    use rein_logger::wal::{FullPolicy, Wal, WalConfig};
    if !is_root() {
        skip(
            "a_batch_larger_than_the_room_left_goes_out_in_pieces",
            "needs root (mounts a tmpfs)",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("fs"), "2m");
    let w = Wal::open(WalConfig {
        dir: fs.0.join("buffer"),
        segment_bytes: 256 << 10,
        max_bytes: 1 << 30,
        fsync_interval: Duration::from_millis(10),
        policy: FullPolicy::Pause,
    })
    .unwrap();
    // 3 MiB of 1 KiB records queued at once: more than the whole file system.
    let total = 3 * 1024;
    let record = |i: usize| format!("{i:08}{}", "r".repeat(1016)).into_bytes();
    for i in 0..total {
        w.push(&record(i));
    }
    let (mut got, mut failures, mut written) = (Vec::new(), 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < total {
        match w.commit() {
            Ok(n) => written += n,
            Err(e) => {
                assert!(e.is_no_space(), "only ENOSPC expected: {e}");
                failures += 1;
            }
        }
        // A sink: reads and acknowledges what is written, which frees room.
        let b = w.read_batch(512, 4 << 20, Duration::ZERO).unwrap();
        got.extend(b.iter().map(<[u8]>::to_vec));
        if !b.is_empty() {
            w.ack(b.end, b.len() as u64).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "stuck: {} of {total} read back, {written} reported written, {failures} \
             failed commits, {} bytes buffered",
            got.len(),
            w.bytes()
        );
    }
    assert!(
        failures > 0,
        "the file system never filled: the test proves nothing"
    );
    assert_eq!(written, total as u64, "every record reported written once");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r, &record(i), "record {i} in order, once");
    }
}
