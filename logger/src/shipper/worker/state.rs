//! A container's state the state directory did not take at attach (full or
//! failing): the container stays attached and the state is saved later.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::Worker;
use crate::shipper::registration;

impl Worker {
    pub(super) fn state_unsaved(&self, key: &str, what: &str, e: &std::io::Error) {
        self.counters
            .state_save_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            container = key,
            "saving the {what}: {e}; the container stays attached and it is saved once the state directory takes it"
        );
    }

    /// Retries the state the state directory did not take at attach.
    pub(super) fn save_pending_state(&mut self) {
        let mut left = 0u64;
        let reserve = &self.reserve;
        for c in self.containers.values_mut() {
            if let Some(msg) = &c.unsaved.registration {
                let need = 2 * msg.len() as u64;
                if reserve
                    .save(&c.dir, need, || registration::save(&c.dir, msg))
                    .is_ok()
                {
                    c.unsaved.registration = None;
                }
            }
            if let Some(body) = &c.unsaved.checkpoint {
                // The parser's own checkpoint, once saved, is newer: kept.
                let path = c.dir.join("checkpoint.json");
                if reserve
                    .save(&c.dir, body.len() as u64, || write_new(&path, body))
                    .is_ok()
                {
                    c.unsaved.checkpoint = None;
                }
            }
            if c.unsaved.any() {
                left += 1;
            }
        }
        let before = self
            .counters
            .containers_state_unsaved
            .swap(left, Ordering::Relaxed);
        if left < before {
            tracing::info!(
                containers = before - left,
                "container state saved after all"
            );
        }
    }
}

/// Writes `path` only if it does not exist yet (an existing one is newer);
/// Ok in both cases.
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    crate::private::write_atomic(&tmp, data)?;
    let res = nix::fcntl::renameat2(
        None,
        &tmp,
        None,
        path,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    match res {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_never_replaces_a_newer_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("checkpoint.json");
        write_new(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_new(&p, b"older").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert!(!d.path().join("checkpoint.json.new").exists());
    }
}
