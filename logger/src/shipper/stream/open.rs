//! Opening a stream: at registration on a new sandbox file; on adoption on
//! the files the previous worker recorded, resuming at its checkpoint.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use super::files::{file_len, find_recorded, record_path, RecordFile, LOST_FILE_GAP};
use super::{
    mono_ms, FileRecord, ParseStream, Segment, StreamCheckpoint, StreamShared, StreamState,
};
use crate::record::{Stream, StreamPipeline};
use crate::sandbox::{FileId, SandboxDir};

/// Starts a stream in the sandbox `dir`. At registration (no `record`, no
/// checkpoint) the shipper creates a new file, whatever the name held. On
/// adoption it takes back the files of its `record` (or, from an older
/// version, the checkpoint's inode) only where the names still hold those
/// very files, and resumes parsing at the checkpoint (with none, at the end
/// of the current file). A file a task moved or replaced is not read; a new
/// one is started in place of the current one.
pub fn open(
    stream: Stream,
    dir: Arc<SandboxDir>,
    state: &Path,
    pipe: OwnedFd,
    pipeline: Option<StreamPipeline>,
    cp: Option<StreamCheckpoint>,
    record: Option<FileRecord>,
) -> std::io::Result<(StreamState, ParseStream)> {
    let name = stream.name();
    let path = dir.path().join(name);
    let rec_file = RecordFile::open(record_path(state, stream))?;
    let record = record.or_else(|| {
        cp.map(|c| FileRecord {
            current: FileId {
                dev: dir.dev(),
                ino: c.inode,
            },
            base: c.base,
            ..FileRecord::default()
        })
    });
    let parses = pipeline.is_some();
    let mut rotated: VecDeque<(FileId, u64)> = VecDeque::new();
    let mut current: Option<(File, FileId, u64)> = None;
    let mut next_base = 0;
    if let Some(r) = &record {
        rotated.extend(r.rotated.iter().copied());
        next_base = r.base;
        // Killed between creating the file and naming it: it gets its name now.
        if let Some(tmp) = &r.created_as {
            if dir.holds(tmp, r.current)? {
                dir.rename_ours(tmp, name, r.current)?;
            }
        }
        match find_recorded(&dir, name, 0, r.current) {
            Some(f) if dir.holds(name, r.current)? => current = Some((f, r.current, r.base)),
            Some(f) => {
                // Renamed to `.1` by a rotation the previous worker did not finish.
                rotated.push_front((r.current, r.base));
                next_base = r.base + file_len(&f)?;
            }
            None => {
                // Removed or replaced by the task: its unparsed lines are gone.
                tracing::warn!(path = %path.display(), "the recorded file is gone or replaced; a new file is started");
                next_base = r.base + LOST_FILE_GAP;
            }
        }
    }
    // Older files still to parse, oldest first: (file, inode, base, len).
    let mut older: Vec<(File, u64, u64, u64)> = Vec::new();
    let mut off = None;
    if let (Some(cp), true) = (cp, parses) {
        if current.as_ref().is_some_and(|c| c.1.ino == cp.inode) {
            off = Some(cp.offset);
        } else if let Some(k) = rotated.iter().position(|(id, _)| id.ino == cp.inode) {
            // The checkpoint's file and every newer rotated file, oldest first.
            for i in (0..=k).rev() {
                let (id, base) = rotated[i];
                match find_recorded(&dir, name, i + 1, id) {
                    Some(f) => {
                        let len = file_len(&f)?;
                        older.push((f, id.ino, base, len));
                    }
                    None => tracing::warn!(
                        path = %path.display(),
                        n = i + 1,
                        "a rotated file not parsed yet is gone or replaced; its lines are not shipped"
                    ),
                }
            }
            if older.first().is_some_and(|o| o.1 == cp.inode) {
                off = Some(cp.offset.min(older[0].3));
            }
        }
        if off.is_none() {
            tracing::warn!(path = %path.display(), "checkpoint refers to an unknown file; parsing resumes at its end");
            older.clear();
        }
    }
    let (file, id, base, len) = match current {
        Some((f, id, base)) => {
            let len = file_len(&f)?;
            (f, id, base, len)
        }
        None => {
            let (f, id) = rec_file.create_current(
                &dir,
                name,
                next_base,
                rotated.iter().copied().collect(),
            )?;
            (f, id, next_base, 0)
        }
    };
    let file = Arc::new(file);
    let mut segs: VecDeque<Segment> = older
        .into_iter()
        .map(|(f, ino, b, len)| Segment {
            file: Arc::new(f),
            inode: ino,
            base: b,
            end: Some(len),
        })
        .collect();
    segs.push_back(Segment {
        file: file.clone(),
        inode: id.ino,
        base,
        end: None,
    });
    let first = segs.pop_front().expect("the current file is queued");
    let off = off.unwrap_or(if first.inode == id.ino { len } else { 0 });
    let (next_tx, later_rx) = std::sync::mpsc::channel();
    let parsed = first.base + off;
    let shared = Arc::new(StreamShared {
        stream,
        parses,
        written: AtomicU64::new(base + len),
        parsed: AtomicU64::new(parsed),
        saved: AtomicU64::new(parsed),
        last_data_ms: AtomicU64::new(mono_ms()),
        pipe_waiting: AtomicBool::new(false),
        eof: AtomicBool::new(false),
        next: next_tx,
    });
    Ok((
        StreamState {
            stream,
            pipe: Some(pipe),
            stage: None,
            staged: 0,
            file,
            path,
            dir,
            rec_file,
            id,
            file_len: len,
            base,
            armed: false,
            stalled: None,
            rotate_due: false,
            rotated,
            shared: shared.clone(),
        },
        ParseStream {
            shared,
            pipeline,
            seg: first,
            later: segs,
            later_rx,
            off,
            done: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write_all;
    use super::super::{load_record, Splice};
    use super::*;

    #[test]
    fn rotation_and_adoption_use_only_the_files_the_reader_recorded() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let sb = d.path().join("sb");
        let state = d.path().join("state");
        std::fs::create_dir(&sb).unwrap();
        std::fs::create_dir(&state).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"SECRET").unwrap();
        let (r, w) = crate::module::pipe(0).unwrap();
        let dir = Arc::new(SandboxDir::open(&sb).unwrap());
        let (mut st, _ps) = open(Stream::Stdout, dir.clone(), &state, r, None, None, None).unwrap();
        write_all(&w, b"a\n");
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(2));
        st.rotate(5).unwrap();
        // The task plants where the next rotation renames to, moves the
        // current file away and plants a symlink at its name.
        symlink(&secret, sb.join("stdout.2")).unwrap();
        std::fs::rename(sb.join("stdout"), sb.join("moved")).unwrap();
        symlink(&secret, sb.join("stdout")).unwrap();
        write_all(&w, b"b\n");
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(2));
        st.rotate(5).unwrap();
        write_all(&w, b"c\n");
        assert_eq!(st.splice(1 << 20).unwrap(), Splice::Moved(2));
        assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
        assert_eq!(std::fs::read(sb.join("stdout.2")).unwrap(), b"a\n");
        assert_eq!(std::fs::read(sb.join("moved")).unwrap(), b"b\n");
        assert_eq!(std::fs::read(sb.join("stdout")).unwrap(), b"c\n");
        assert!(!std::fs::symlink_metadata(sb.join("stdout"))
            .unwrap()
            .is_symlink());
        let rec = load_record(&state, Stream::Stdout).unwrap();
        assert_eq!(rec.current, st.id);
        assert_eq!(rec.base, 4);
        assert_eq!(rec.rotated.len(), 2);
        // Adoption: the task swapped the current file for a symlink again.
        std::fs::rename(sb.join("stdout"), sb.join("moved-2")).unwrap();
        symlink(&secret, sb.join("stdout")).unwrap();
        drop(st);
        let (r2, w2) = crate::module::pipe(0).unwrap();
        let (mut st2, _) = open(
            Stream::Stdout,
            dir,
            &state,
            r2,
            None,
            None,
            Some(rec.clone()),
        )
        .unwrap();
        assert_ne!(st2.id, rec.current);
        assert!(
            st2.base > rec.base,
            "a lost file's offsets are never reused"
        );
        write_all(&w2, b"d\n");
        assert_eq!(st2.splice(1 << 20).unwrap(), Splice::Moved(2));
        assert_eq!(std::fs::read(sb.join("stdout")).unwrap(), b"d\n");
        assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
        drop(w);
    }

    #[test]
    fn adoption_after_a_kill_inside_a_rotation_finds_every_recorded_file() {
        let d = tempfile::tempdir().unwrap();
        let sb = d.path().join("sb");
        let state = d.path().join("state");
        std::fs::create_dir(&sb).unwrap();
        std::fs::create_dir(&state).unwrap();
        let dir = Arc::new(SandboxDir::open(&sb).unwrap());
        let (r, w) = crate::module::pipe(0).unwrap();
        let (mut st, _) = open(Stream::Stdout, dir.clone(), &state, r, None, None, None).unwrap();
        write_all(&w, b"a\n");
        st.splice(1 << 20).unwrap();
        let before = load_record(&state, Stream::Stdout).unwrap();
        st.rotate(5).unwrap();
        let after = load_record(&state, Stream::Stdout).unwrap();
        let (x, y) = (before.current, after.current);
        let cp = |id: FileId| StreamCheckpoint {
            inode: id.ino,
            offset: 0,
            base: 0,
        };
        let adopt = |rec: &FileRecord, cp: StreamCheckpoint| {
            let (r, _w) = crate::module::pipe(0).unwrap();
            // A pipeline-less stream ignores checkpoints: look at the files only.
            open(
                Stream::Stdout,
                dir.clone(),
                &state,
                r,
                None,
                Some(cp),
                Some(rec.clone()),
            )
            .unwrap()
        };
        // Killed after the new file was recorded, before it got its name.
        let tmp = after.created_as.clone().unwrap();
        std::fs::rename(sb.join("stdout"), sb.join(&tmp)).unwrap();
        let (st2, _) = adopt(&after, cp(x));
        assert_eq!(st2.id, y, "the recorded file is taken back under its name");
        assert!(dir.holds("stdout", y).unwrap());
        assert_eq!(st2.base, 2);
        assert_eq!(st2.rotated.front().map(|r| r.0), Some(x));
        drop(st2);
        // Killed after the old file became `.1`, before the new one was recorded.
        std::fs::remove_file(sb.join("stdout")).unwrap();
        let (st3, _) = adopt(&before, cp(x));
        assert_ne!(st3.id, x);
        assert_eq!(st3.rotated.front().map(|r| r.0), Some(x), "found at `.1`");
        assert_eq!(st3.base, 2, "the new file starts where `.1` ends");
        assert!(dir.holds("stdout.1", x).unwrap());
        drop(w);
    }
}
