//! A tmpfs of a given size at a directory (root only), unmounted on drop: a file
//! system that fills up on cue for the full-disk tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// A private (0700) tmpfs of `size` (e.g. `1m`) at `at`, made if missing.
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_opts(at, &format!("size={size},mode=0700"))
    }

    /// A tmpfs with these mount options.
    pub fn mount_opts(at: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs ({options}) at {}: {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    /// Grows or shrinks it in place.
    pub fn resize(&self, size: &str) {
        let options = format!("size={size}");
        mount(
            None::<&str>,
            &self.0,
            None::<&str>,
            MsFlags::MS_REMOUNT,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("resizing {} to {size}: {e}", self.0.display()));
    }

    /// Fills it with one file (up to ENOSPC).
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}
