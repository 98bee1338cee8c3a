//! Opening a buffer: what a previous run left is taken up. Segments wholly
//! before the saved cursor go; a torn or corrupt tail of the last segment
//! (a crash in the middle of a write, zeroed blocks) is cut off and counted;
//! the cursor file is made while there is room.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use super::config::WalConfig;
use super::error::{io_err, WalError};
use super::fault;
use super::format::{scan, seg_path, seg_seq};
use super::ledger::{load_cursor, write_cursor, Ledger, Pos, Segment};
use super::stats::WalStats;
use super::writer::Writer;
use super::Wal;
use crate::private;

impl Wal {
    /// Opens (or creates) the buffer, replaying what a previous run left.
    pub fn open(cfg: WalConfig) -> Result<Wal, WalError> {
        fault::from_env();
        let dir = cfg.dir.clone();
        private::create_dir(&dir).map_err(io_err(&dir))?;
        let stats = Arc::new(WalStats::default());
        let mut seqs: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| seg_seq(e.file_name().to_str()?))
            .collect();
        seqs.sort_unstable();
        let saved = load_cursor(&dir);
        let cursor = saved.unwrap_or(Pos {
            seg: seqs.first().copied().unwrap_or(1),
            off: 0,
        });
        // Segments wholly before the cursor were acknowledged: delete them.
        let mut segs = Vec::new();
        for seq in seqs {
            let p = seg_path(&dir, seq);
            if seq < cursor.seg {
                let _ = fs::remove_file(&p);
                continue;
            }
            let len = fs::metadata(&p).map_err(io_err(&p))?.len();
            segs.push(Segment::found(seq, len));
        }
        if segs.is_empty() {
            let seq = cursor.seg.max(1);
            private::create(&seg_path(&dir, seq)).map_err(io_err(&dir))?;
            segs.push(Segment::new(seq));
        }
        let last = segs.last_mut().expect("one segment");
        let lp = seg_path(&dir, last.seq);
        last.len = cut_torn_tail(&lp, &stats)?.unwrap_or(last.len);
        let (seq, len) = (last.seq, last.len);
        let file = private::open_rw(&lp).map_err(io_err(&lp))?;
        let first = Pos {
            seg: segs[0].seq,
            off: 0,
        };
        let cursor = cursor.max(first);
        if saved.is_none() {
            // Made now, while there is room: a full file system takes a new
            // cursor only in place of an existing file.
            if let Err(e) = write_cursor(&dir, cursor) {
                tracing::warn!("{e}");
            }
        }
        Ok(Wal {
            writer: Mutex::new(Writer::new(stats.clone(), file, seq, lp, len)),
            queue: Mutex::default(),
            saved: Mutex::new(cursor),
            ledger: Mutex::new(Ledger::new(dir, stats.clone(), segs, cursor)),
            more: Condvar::new(),
            read_metas: Mutex::default(),
            stats,
            cfg,
        })
    }
}

/// Cuts a torn or corrupt tail off the segment at `path`, counted once;
/// returns its new length if it was cut.
fn cut_torn_tail(path: &Path, stats: &WalStats) -> Result<Option<u64>, WalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let (valid, _, bad) = scan(&data);
    if !bad {
        return Ok(None);
    }
    tracing::warn!(path = %path.display(), cut = data.len() - valid, "disk buffer: cutting a torn tail");
    stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(valid as u64).map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))?;
    Ok(Some(valid as u64))
}
