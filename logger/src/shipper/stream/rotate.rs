//! Rotation by size: the current file becomes `<name>.1` (older ones shift)
//! and a new one is started; rotated files beyond the kept number go, but
//! never one the saved checkpoint has not passed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::files::rotated_name;
use super::{Segment, StreamState};

impl StreamState {
    /// Renames `name` to `name.1` (shifting older ones) and starts a new file,
    /// which the parser follows after the old one. Rotated files are deleted
    /// beyond `keep`, but never one the saved checkpoint has not passed. Only
    /// the files the reader recorded are renamed or removed, each only where
    /// its name still holds it: no listing, no name taken on trust, and the
    /// work is bounded by the reader's own files, whatever a task planted.
    pub fn rotate(&mut self, keep: u32) -> std::io::Result<()> {
        self.rotate_due = false;
        let new_base = self.base + self.file_len;
        self.rotated.push_front((self.id, self.base));
        // `<name>.i` (1-based) ends where `<name>.(i-1)` begins; `.1` at `new_base`.
        let saved = self.shared.saved.load(Ordering::Acquire);
        let needed = if self.shared.parses {
            let mut end = new_base;
            let mut k = 0;
            for (_, b) in &self.rotated {
                // `>=`: the saved checkpoint may name a file at its very end.
                if end >= saved {
                    k += 1;
                }
                end = *b;
            }
            k
        } else {
            0
        };
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).max(needed);
        let name = self.stream.name();
        // Before the renames the `i`th (0: the file just finished) is `rotated_name(i)`.
        while self.rotated.len() > keep {
            let i = self.rotated.len() - 1;
            if let Some((id, _)) = self.rotated.pop_back() {
                let _ = self.dir.remove_ours(&rotated_name(name, i), id);
            }
        }
        for (i, (id, _)) in self.rotated.iter().enumerate().rev() {
            // False: a task moved the file; it keeps whatever name it has now.
            let _ =
                self.dir
                    .rename_ours(&rotated_name(name, i), &rotated_name(name, i + 1), *id)?;
        }
        let rotated = self.rotated.iter().copied().collect();
        let created = self
            .rec_file
            .create_current(&self.dir, name, new_base, rotated);
        let (file, id) = match created {
            Ok(c) => c,
            Err(e) => {
                // Writing goes on in the current file (under `.1`); retried at the next line end.
                self.rotated.pop_front();
                return Err(e);
            }
        };
        let file = Arc::new(file);
        // Sent before `written` counts any byte of the new file.
        let _ = self.shared.next.send(Segment {
            file: file.clone(),
            inode: id.ino,
            base: new_base,
            end: None,
        });
        self.base = new_base;
        self.file = file;
        self.id = id;
        self.file_len = 0;
        self.shared.written.store(new_base, Ordering::Release);
        Ok(())
    }
}
