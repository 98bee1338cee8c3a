//! The dead-letter file: records a destination refused for good (a 4xx other
//! than 429), one JSON line each with the reason, `fsync`ed before the
//! buffer is acknowledged. Nothing is dropped silently.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::record::json::push_str;

/// Appends refused records to a file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
}

impl DeadLetter {
    /// A dead-letter file at `path` (opened on first use).
    pub fn new(path: &Path) -> Self {
        DeadLetter {
            path: path.to_path_buf(),
            file: None,
            buf: Vec::new(),
        }
    }

    /// Queues one refused record.
    pub fn add(
        &mut self,
        sink: &str,
        target: &str,
        id: &[u8],
        status: u16,
        reason: &[u8],
        doc: &[u8],
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let b = &mut self.buf;
        b.extend_from_slice(format!("{{\"dead_lettered_at_ms\":{now},\"sink\":").as_bytes());
        push_str(b, sink.as_bytes());
        b.extend_from_slice(b",\"target\":");
        push_str(b, target.as_bytes());
        b.extend_from_slice(b",\"_id\":");
        push_str(b, id);
        b.extend_from_slice(format!(",\"status\":{status},\"reason\":").as_bytes());
        push_str(b, reason);
        b.extend_from_slice(b",\"document\":");
        push_str(b, doc);
        b.extend_from_slice(b"}\n");
    }

    /// Writes and `fsync`s the queued records.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            if let Some(d) = self.path.parent() {
                std::fs::create_dir_all(d)?;
            }
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = self.file.as_mut().expect("opened");
        f.write_all(&self.buf)?;
        f.sync_data()?;
        self.buf.clear();
        Ok(())
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
