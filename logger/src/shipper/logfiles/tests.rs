//! The file sources on a temporary sandbox: rotations both ways, files
//! appearing later, a restart from a checkpoint, hostile objects.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::proto::{FileCaps, FileMultiline, FileSpec, SourceMeta};
use crate::record::EncodeOptions;
use crate::sandbox::SandboxDir;

/// (id, tag, path, message) of every record made.
type Got = Vec<(String, String, String, String)>;

fn sources(d: &Path, specs: &[(&str, &str)], cp: Option<FilesCheckpoint>) -> FileSources {
    let specs = specs
        .iter()
        .map(|(tag, glob)| FileSpec {
            tag: tag.to_string(),
            glob: glob.to_string(),
            multiline: FileMultiline::Off,
            route: None,
            sink: None,
        })
        .collect::<Vec<_>>();
    let targets = targets(&specs, b"r", &[], &mut Vec::new());
    let meta = SourceMeta {
        container_chain: vec!["c1".into()],
        sandbox: d.to_path_buf(),
        ..SourceMeta::default()
    };
    FileSources::new(
        specs,
        targets,
        FileCaps::default(),
        FileEncoding {
            meta,
            encode: EncodeOptions::default(),
            max_line: 4096,
            multiline: None,
        },
        Arc::new(SandboxDir::open(d).unwrap()),
        cp,
        Arc::new(FileCounters::default()),
    )
}

/// Rounds as a parser runs them, a checkpoint saved after each, until
/// nothing more is read (scans forced).
fn pump(fs: &mut FileSources, got: &mut Got) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        fs.last_scan = None;
        let busy = fs.round(&mut buf, 1 << 20, &mut records(|_, e| keep(got, e)));
        let held = fs.unsaved_numbers();
        save(fs);
        if !busy && !held {
            return;
        }
    }
}

/// Rounds with no checkpoint saved (a worker killed before its next one),
/// until nothing more is read (scans forced).
fn pump_unsaved(fs: &mut FileSources, got: &mut Got) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        fs.last_scan = None;
        if !fs.round(&mut buf, 1 << 20, &mut records(|_, e| keep(got, e))) {
            return;
        }
    }
}

/// What a parser does at a checkpoint: takes it and saves it (the files it
/// names may then be read); returns it as a restart reads it back.
fn save(fs: &mut FileSources) -> FilesCheckpoint {
    let cp = fs.checkpoint();
    fs.saved(&cp);
    serde_json::from_slice(&serde_json::to_vec(&cp).unwrap()).unwrap()
}

/// Finishes as a parser does: until done, a checkpoint saved after each try.
fn finish(fs: &mut FileSources, got: &mut Got) {
    while !fs.done {
        fs.finish(&mut vec![0u8; 1 << 16], &mut records(|_, e| keep(got, e)));
        save(fs);
    }
}

fn keep(got: &mut Got, e: crate::record::Encoded<'_>) {
    let v: serde_json::Value = serde_json::from_slice(e.doc).unwrap();
    got.push((
        String::from_utf8(e.id.to_vec()).unwrap(),
        v["log"]["file"]["tag"].as_str().unwrap().to_string(),
        v["log"]["file"]["path"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap().to_string(),
    ));
}

fn append(p: &Path, from: usize, to: usize, what: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    for i in from..to {
        writeln!(f, "{what} seq={i} {}", "x".repeat(i % 50)).unwrap();
    }
}

/// Every `what seq=N` for N in 0..n exactly once, each with one id.
fn assert_once(got: &Got, what: &str, n: usize) {
    let mut seen: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (id, _, _, msg) in got {
        if let Some(rest) = msg.strip_prefix(&format!("{what} seq=")) {
            let seq: usize = rest.split(' ').next().unwrap().parse().unwrap();
            seen.entry(seq).or_default().push(id);
        }
    }
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: made twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    let ids: std::collections::HashSet<&String> = got.iter().map(|g| &g.0).collect();
    assert_eq!(ids.len(), got.len(), "ids are unique");
}

#[test]
fn rotation_by_rename_and_by_copytruncate_lose_and_repeat_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("logs")).unwrap();
    let mut fs = sources(d.path(), &[("app", "logs/*.log"), ("gc", "gc.log")], None);
    let mut got = Got::new();
    let (app, gc) = (d.path().join("logs/app.log"), d.path().join("gc.log"));
    let mut a = 0;
    let mut g = 0;
    for round in 0..6 {
        append(&app, a, a + 300, "app");
        a += 300;
        append(&gc, g, g + 200, "gc");
        g += 200;
        pump(&mut fs, &mut got);
        // Written after the last read, then rotated: read from the renamed
        // file and from the copy.
        append(&app, a, a + 50, "app");
        a += 50;
        append(&gc, g, g + 40, "gc");
        g += 40;
        std::fs::rename(&app, d.path().join(format!("logs/app.log.{round}"))).unwrap();
        std::fs::copy(&gc, d.path().join(format!("gc.log.{round}"))).unwrap();
        std::fs::File::create(&gc).unwrap().set_len(0).unwrap();
    }
    append(&app, a, a + 10, "app");
    a += 10;
    // A file that appears later.
    std::fs::create_dir(d.path().join("logs/dir.log")).unwrap();
    append(&d.path().join("logs/late.log"), 0, 25, "late");
    pump(&mut fs, &mut got);
    finish(&mut fs, &mut got);
    let c = &fs.counters;
    eprintln!("counters: {:?}", c.fields());
    assert_once(&got, "app", a);
    assert_once(&got, "gc", g);
    assert_once(&got, "late", 25);
    assert_eq!(c.truncations.load(Ordering::Relaxed), 6);
    assert_eq!(c.copies_recovered.load(Ordering::Relaxed), 6);
    assert_eq!(c.truncated_bytes_lost.load(Ordering::Relaxed), 0);
    assert!(got.iter().all(|r| r
        .0
        .starts_with(&format!("{:016x}-f", crate::record::encode::fnv1a64(b"c1")))));
    assert!(got.iter().any(|r| r.1 == "gc" && r.2 == "gc.log"));
    assert!(got.iter().any(|r| r.1 == "app" && r.2 == "logs/app.log"));
    // The directory named like a log file was refused, not entered.
    assert_eq!(c.refused.load(Ordering::Relaxed), 1, "{:?}", c.fields());
}

#[test]
fn a_restart_from_the_checkpoint_resumes_every_file_where_it_stood() {
    let d = tempfile::tempdir().unwrap();
    let app = d.path().join("app.log");
    let mut got = Got::new();
    let mut fs = sources(d.path(), &[("app", "*.log")], None);
    append(&app, 0, 500, "app");
    pump(&mut fs, &mut got);
    let cp = fs.checkpoint();
    // Records made after the checkpoint are made again after the restart
    // with the same ids (the sink keeps one); nothing before it is.
    append(&app, 500, 700, "app");
    pump(&mut fs, &mut got);
    let before: Vec<_> = got.clone();
    drop(fs);
    // While no worker ran: more lines, then a rotation by rename.
    append(&app, 700, 800, "app");
    std::fs::rename(&app, d.path().join("app.log.1")).unwrap();
    append(&app, 800, 900, "app");
    let cp = serde_json::from_slice(&serde_json::to_vec(&cp).unwrap()).unwrap();
    let mut fs = sources(d.path(), &[("app", "*.log")], Some(cp));
    let mut again = Got::new();
    pump(&mut fs, &mut again);
    finish(&mut fs, &mut again);
    // The re-made ones carry the same ids.
    let ids: BTreeMap<&str, &str> = before
        .iter()
        .map(|r| (r.3.as_str(), r.0.as_str()))
        .collect();
    for r in &again {
        if let Some(id) = ids.get(r.3.as_str()) {
            assert_eq!(*id, r.0, "{}", r.3);
        }
    }
    let mut all: Got = before.clone();
    all.extend(
        again
            .into_iter()
            .filter(|r| !ids.contains_key(r.3.as_str())),
    );
    assert_once(&all, "app", 900);
    assert_eq!(fs.counters.lost.load(Ordering::Relaxed), 0);
}

#[test]
fn symlinks_fifos_and_directories_are_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret line\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("a.log")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("b.log"), b"secret too\n").unwrap();
    nix::unistd::mkfifo(&d.path().join("f.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::create_dir(d.path().join("d.log")).unwrap();
    append(&d.path().join("ok.log"), 0, 3, "ok");
    // The sandbox's own stream files are never matched.
    std::fs::write(d.path().join("stdout.log"), b"stream\n").unwrap();
    let mut fs = sources(d.path(), &[("a", "*.log"), ("b", "sub/*.log")], None);
    let mut got = Got::new();
    // A FIFO opened for reading would block this thread: it must not be.
    pump(&mut fs, &mut got);
    finish(&mut fs, &mut got);
    assert_once(&got, "ok", 3);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        fs.counters.refused.load(Ordering::Relaxed),
        4,
        "{:?}",
        fs.counters.fields()
    );
}

#[test]
fn caps_bound_the_files_and_the_backlog_and_count_what_they_leave() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..5 {
        append(&d.path().join(format!("{i}.log")), 0, 10, &format!("f{i}"));
    }
    let big = d.path().join("big.txt");
    append(&big, 0, 2000, "big");
    let mut fs = sources(d.path(), &[("many", "*.log"), ("big", "big.txt")], None);
    fs.caps.max_files = 3;
    fs.caps.max_backlog = 4096;
    let mut got = Got::new();
    pump(&mut fs, &mut got);
    let c = &fs.counters;
    assert_eq!(fs.followed(), 3);
    assert_eq!(c.over_cap.load(Ordering::Relaxed), 1);
    let mut fs2 = sources(d.path(), &[("big", "big.txt")], None);
    fs2.caps.max_backlog = 4096;
    let mut got2 = Got::new();
    pump(&mut fs2, &mut got2);
    let skipped = fs2.counters.backlog_bytes_skipped.load(Ordering::Relaxed);
    let size = std::fs::metadata(&big).unwrap().len();
    assert!(skipped > 0 && size - skipped <= 4096, "{skipped} of {size}");
    // Whole lines only: the first record starts a line.
    assert!(got2[0].3.starts_with("big seq="), "{:?}", got2[0]);
    assert_eq!(got2.last().unwrap().3.split(' ').nth(1), Some("seq=1999"));
}

#[test]
#[ignore = "needs root"]
fn files_of_another_owner_are_refused_in_a_tenant_s_sandbox() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP files_of_another_owner_are_refused_in_a_tenant_s_sandbox: needs root");
        return;
    }
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(65534), None).unwrap();
    // A hard link to a root file (what a tenant could plant where
    // protected_hardlinks is off) and a root file: never read.
    let secret_dir = tempfile::tempdir_in(d.path().parent().unwrap()).unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, b"root secret\n").unwrap();
    std::fs::hard_link(&secret, d.path().join("linked.log")).unwrap();
    std::fs::write(d.path().join("root.log"), b"root line\n").unwrap();
    append(&d.path().join("mine.log"), 0, 5, "mine");
    nix::unistd::chown(&d.path().join("mine.log"), nobody, None).unwrap();
    let mut fs = sources(d.path(), &[("all", "*.log")], None);
    let mut got = Got::new();
    pump(&mut fs, &mut got);
    finish(&mut fs, &mut got);
    assert_once(&got, "mine", 5);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(
        fs.counters.refused.load(Ordering::Relaxed),
        2,
        "{:?}",
        fs.counters.fields()
    );
}

#[test]
fn a_file_with_a_sink_of_its_own_goes_to_that_sink_s_buffer() {
    use crate::proto::SinkKind;
    use crate::wal::{FullPolicy, Wal, WalConfig};
    let d = tempfile::tempdir().unwrap();
    let wal = |name: &str| {
        Arc::new(
            Wal::open(WalConfig {
                dir: d.path().join(name),
                segment_bytes: 1 << 20,
                max_bytes: 1 << 30,
                fsync_interval: std::time::Duration::from_secs(1),
                policy: FullPolicy::Pause,
            })
            .unwrap(),
        )
    };
    let sinks = [
        (SinkKind::Elasticsearch, wal("es")),
        (SinkKind::Redis, wal("redis")),
    ];
    let spec = |tag: &str, sink, route: Option<&str>| FileSpec {
        tag: tag.into(),
        glob: format!("{tag}.log"),
        multiline: FileMultiline::Inherit,
        route: route.map(String::from),
        sink,
    };
    let specs = [
        spec("a", None, None),
        spec("b", None, Some("team-b")),
        spec("c", Some(SinkKind::Redis), None),
        spec("d", Some(SinkKind::Redis), Some("audit")),
        spec("e", Some(SinkKind::Kafka), None),
    ];
    let mut extra = Vec::new();
    let t = targets(&specs, b"team-a", &sinks, &mut extra);
    let want = |wal, route: &str| FileTarget {
        wal,
        route: route.as_bytes().to_vec(),
    };
    assert_eq!(
        t,
        vec![
            want(None, "team-a"),
            want(None, "team-b"),
            want(Some(0), ""),
            want(Some(0), "audit"),
            // Not configured here: with the container's records, nothing lost.
            want(None, "team-a"),
        ]
    );
    assert_eq!(extra.len(), 1);
    assert!(Arc::ptr_eq(&extra[0], &sinks[1].1));
}

/// One round with no scan (a file's read comes before the next scan).
fn read_round(fs: &mut FileSources, got: &mut Got) {
    fs.last_scan = Some(Instant::now());
    let mut buf = vec![0u8; 1 << 16];
    fs.round(&mut buf, 1 << 20, &mut records(|_, e| keep(got, e)));
}

/// Every `what seq=N` for N in 0..n made, every copy of it under one id,
/// and no id on two lines.
fn assert_one_id(got: &Got, what: &str, n: usize) {
    let mut ids: BTreeMap<usize, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (id, _, _, msg) in got {
        if let Some(rest) = msg.strip_prefix(&format!("{what} seq=")) {
            let seq: usize = rest.split(' ').next().unwrap().parse().unwrap();
            ids.entry(seq).or_default().insert(id);
        }
    }
    let missing: Vec<usize> = (0..n).filter(|i| !ids.contains_key(i)).collect();
    assert!(missing.is_empty(), "{what}: lost {missing:?}");
    let several: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        several.is_empty(),
        "{what}: made under several ids: {:?}",
        &several[..several.len().min(3)]
    );
    let mut lines: BTreeMap<&str, &str> = BTreeMap::new();
    for (id, _, _, msg) in got {
        let other = lines.insert(id, msg);
        assert!(other.is_none_or(|m| m == msg), "{id} on two lines");
    }
}

/// A copytruncate seen by a read, then a rename seen by the next scan,
/// after the last saved checkpoint: the live worker numbers the truncated
/// inode before the new file at the renamed name; a worker restarted from
/// that checkpoint finds both in one scan, in the order of the globs (the
/// renamed one first). Wherever the last checkpoint was saved, every line
/// read by both workers has one id, and none is lost.
#[test]
fn files_numbered_after_the_last_checkpoint_keep_their_ids_across_a_restart() {
    // The last checkpoint saved: before the rotations, once the truncation
    // was handled, once the new file was found, after everything was read.
    for saved_at in 0..4 {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("logs")).unwrap();
        let (app, gc) = (d.path().join("logs/app.log"), d.path().join("gc.log"));
        let specs = [("app", "logs/*.log"), ("gc", "gc.log")];
        let mut fs = sources(d.path(), &specs, None);
        let mut got = Got::new();
        append(&app, 0, 100, "app");
        append(&gc, 0, 100, "gc");
        pump(&mut fs, &mut got);
        let mut cp = save(&mut fs);
        append(&gc, 100, 120, "gc");
        std::fs::copy(&gc, d.path().join("gc.log.1")).unwrap();
        std::fs::File::create(&gc).unwrap();
        append(&gc, 120, 200, "gc");
        // Found truncated by a read, before any scan: the inode is numbered
        // first; its copy and its new content are read by the next rounds.
        for _ in 0..3 {
            read_round(&mut fs, &mut got);
        }
        if saved_at == 1 {
            cp = save(&mut fs);
            read_round(&mut fs, &mut got);
        }
        append(&app, 100, 120, "app");
        std::fs::rename(&app, d.path().join("logs/app.log.1")).unwrap();
        append(&app, 120, 200, "app");
        // The new file at the name, found by the scan: numbered second.
        pump_unsaved(&mut fs, &mut got);
        if saved_at == 2 {
            cp = save(&mut fs);
            pump_unsaved(&mut fs, &mut got);
        }
        if saved_at == 3 {
            pump(&mut fs, &mut got);
            cp = save(&mut fs);
        }
        // Killed: the next worker starts from the last saved checkpoint.
        drop(fs);
        let mut fs = sources(d.path(), &specs, Some(cp));
        pump(&mut fs, &mut got);
        finish(&mut fs, &mut got);
        assert_one_id(&got, "app", 200);
        assert_one_id(&got, "gc", 200);
        assert_eq!(fs.counters.lost.load(Ordering::Relaxed), 0, "{saved_at}");
        assert_eq!(fs.counters.truncated_bytes_lost.load(Ordering::Relaxed), 0);
    }
}
