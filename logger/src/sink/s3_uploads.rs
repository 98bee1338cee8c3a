//! Multipart uploads in progress, kept in a file (`<state_dir>/s3-uploads`,
//! one `<upload id> <key>` a line) from their creation to their completion
//! or abort: a worker killed mid-upload leaves its upload id there, and the
//! next one aborts that upload before its first object, so no incomplete
//! upload (invisible, but stored and billed) outlives a crash.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The uploads file.
#[derive(Debug)]
pub struct Uploads {
    path: PathBuf,
    open: Vec<(String, String)>,
}

impl Uploads {
    /// The uploads a previous run left in `path` (none if it is missing).
    pub fn load(path: &Path) -> Uploads {
        let open = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, key)| (id.to_owned(), key.to_owned()))
            .collect();
        Uploads {
            path: path.to_path_buf(),
            open,
        }
    }

    /// The uploads recorded and not finished: (upload id, key).
    pub fn open(&self) -> Vec<(String, String)> {
        self.open.clone()
    }

    /// Records upload `id` of `key` (before its first part).
    pub fn started(&mut self, id: &str, key: &str) {
        self.open.push((id.to_owned(), key.to_owned()));
        self.save();
    }

    /// Upload `id` is complete or aborted.
    pub fn finished(&mut self, id: &str) {
        let before = self.open.len();
        self.open.retain(|(i, _)| i != id);
        if self.open.len() != before {
            self.save();
        }
    }

    /// Writes the file (a failure is logged: the upload is then only left
    /// to the bucket's lifecycle rule after a crash).
    fn save(&self) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            for (id, key) in &self.open {
                writeln!(f, "{id} {key}")?;
            }
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::error!("s3 sink: {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_outlive_the_process_until_finished() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s3-uploads");
        let mut u = Uploads::load(&p);
        u.started("id-1", "a/k1.ndjson.gz");
        u.started("id-2", "a/k2.ndjson.gz");
        u.finished("id-1");
        assert_eq!(
            Uploads::load(&p).open(),
            [("id-2".to_string(), "a/k2.ndjson.gz".to_string())]
        );
    }
}
