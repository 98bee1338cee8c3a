//! Private state: what the shipper keeps on disk (disk buffers, dead-letter
//! files, registrations with every label, checkpoints, counters) holds other
//! tenants' output and metadata, so it is root's alone. Directories are 0700
//! and files 0600, created with that mode (so there is never a moment when a
//! file is more open) and then set with `fchmod`, which neither the umask nor
//! an older version's file can change. Paths are opened with `O_NOFOLLOW`:
//! a symbolic link planted where a state file belongs is refused, never
//! followed. [`tighten_tree`] brings a state directory left by an older
//! version (default umask: 0755/0644) to the same modes at start.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rein_core::atomic_file::AtomicFile;

/// Mode of every state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every state file.
pub const FILE_MODE: u32 = 0o600;

fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmod(
        f.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_retain(mode),
    )?)
}

/// Opens an existing directory without following a symbolic link.
fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
}

/// Creates `dir` (missing parents too, each 0700) and sets `dir` itself to
/// 0700. A symbolic link at `dir` is refused.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    create_parents(dir)?;
    fchmod(&open_dir(dir)?, DIR_MODE)
}

/// Creates `dir` and its missing parents with mode 0700; existing ones are
/// left as they are (an operator's `/var/log` is not ours to change).
pub fn create_parents(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens (creating it 0600 if missing) a regular file for appending; its
/// mode is set to 0600 whatever it was. Links, FIFOs, devices and sockets at
/// `path` are refused (`O_NOFOLLOW`, `O_NONBLOCK`, then a type check).
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    regular_private(f, path)
}

/// Opens (creating it 0600 if missing, never emptying it) a regular file to
/// read and rewrite in place; refused like [`open_append`]'s.
pub fn open_rw(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    regular_private(f, path)
}

/// Creates (or empties) a regular file, mode 0600. It is emptied only once
/// known to be ours.
pub fn create(path: &Path) -> io::Result<File> {
    let f = rein_core::atomic_file::open_regular(path, Some(FILE_MODE))?;
    f.set_len(0)?;
    Ok(f)
}

fn regular_private(f: File, path: &Path) -> io::Result<File> {
    // A file someone else made (say in a world-writable directory) may be
    // open in their hands already: changing its mode would not take it back.
    rein_core::atomic_file::claim_regular(f, path, Some(FILE_MODE))
}

/// Writes `data` to `path` through `path.tmp` (0600) and a rename. When the
/// file system has no room for the temporary copy (ENOSPC, EDQUOT), the
/// copy is removed (its blocks go back) and, if `path` is already a file of
/// ours whose allocated blocks hold `data`, it is rewritten in place (see
/// [`write_in_place`]): a full state directory still takes a new checkpoint,
/// cursor, counters or pid of a file that exists. Otherwise the first error
/// is returned.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let Err(e) = AtomicFile::new(path).mode(FILE_MODE).write(data) else {
        return Ok(());
    };
    // The temporary copy is gone already (its blocks went back).
    if matches!(e.source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        && write_in_place(path, data).is_ok()
    {
        return Ok(());
    }
    Err(e.into())
}

/// Writes `path` (0600, through `path.new`) only if it does not exist yet: an
/// existing one is newer and is kept. Ok in both cases.
pub fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    AtomicFile::new(path)
        .temp(PathBuf::from(tmp))
        .mode(FILE_MODE)
        .keep_existing()
        .write(data)?;
    Ok(())
}

/// Rewrites the existing file `path` with `data` in one `pwrite` at offset
/// 0, padded with newlines to its former length: no block is freed or
/// needed (it is refused unless the file's allocated blocks hold `data`),
/// and the padding is blank space to every format kept this way (JSON, a
/// pid, a cursor, Prometheus text). Only used when the file system is full:
/// a reader may then see the file half rewritten; a kill cannot cut one
/// small `pwrite` to the page cache short.
pub fn write_in_place(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let f = regular_private(f, path)?;
    let m = f.metadata()?;
    let len = data.len() as u64;
    if len > m.blocks().saturating_mul(512) {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let mut body = data.to_vec();
    body.resize(
        usize::try_from(m.len().max(len)).unwrap_or(usize::MAX),
        b'\n',
    );
    f.write_all_at(&body, 0)
}

/// Makes `root` 0700 (created if missing) and, below it, every directory
/// 0700 and every regular file 0600, top down (so nothing is reachable by
/// others while the rest is changed). Symbolic links are not followed and
/// other objects are left alone. Returns how many modes were changed.
pub fn tighten_tree(root: &Path) -> io::Result<u64> {
    create_parents(root)?;
    tighten_dir(root, 0)
}

/// Deepest directory level visited (the state tree is a few levels deep).
const MAX_DEPTH: u32 = 16;

fn tighten_dir(dir: &Path, depth: u32) -> io::Result<u64> {
    let d = open_dir(dir)?;
    let mut changed = u64::from(set_mode(&d, DIR_MODE)?);
    if depth >= MAX_DEPTH {
        return Ok(changed);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            changed += tighten_dir(&path, depth + 1)?;
        } else if ty.is_file() {
            changed += u64::from(tighten_file(&path)?);
        }
    }
    Ok(changed)
}

fn tighten_file(path: &Path) -> io::Result<bool> {
    // O_NONBLOCK: a FIFO swapped in since the listing must not block us.
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(false);
    }
    set_mode(&f, FILE_MODE)
}

fn set_mode(f: &File, mode: u32) -> io::Result<bool> {
    if f.metadata()?.mode() & 0o7777 == mode {
        return Ok(false);
    }
    fchmod(f, mode)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn in_place_rewrite_pads_to_the_old_length_and_needs_no_new_block() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cursor");
        write_atomic(&p, b"12:345678\n").unwrap();
        write_in_place(&p, b"13:0\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"13:0\n\n\n\n\n\n");
        let v: serde_json::Value = {
            write_in_place(&p, br#"{"a":1}"#).unwrap();
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
        };
        assert_eq!(v["a"], 1, "newline padding is JSON whitespace");
        // Past the blocks the file holds, a write could need room: refused.
        let big = vec![b'x'; 1 << 20];
        assert!(write_in_place(&p, &big).is_err());
        assert!(write_in_place(&d.path().join("missing"), b"1").is_err());
        std::os::unix::fs::symlink(&p, d.path().join("link")).unwrap();
        assert!(write_in_place(&d.path().join("link"), b"1").is_err());
    }

    /// Sets a permissive umask for the duration of a test (restored on drop).
    struct Umask(nix::sys::stat::Mode);
    impl Umask {
        fn set(m: libc::mode_t) -> Umask {
            Umask(nix::sys::stat::umask(
                nix::sys::stat::Mode::from_bits_retain(m),
            ))
        }
    }
    impl Drop for Umask {
        fn drop(&mut self) {
            nix::sys::stat::umask(self.0);
        }
    }

    #[test]
    fn files_and_dirs_are_private_whatever_the_umask() {
        let _u = Umask::set(0);
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&d.path().join("a")), 0o700);
        let f = dir.join("f");
        open_append(&f).unwrap().write_all(b"x").unwrap();
        assert_eq!(mode(&f), 0o600);
        write_atomic(&dir.join("g"), b"y").unwrap();
        assert_eq!(mode(&dir.join("g")), 0o600);
        // An existing file of an older version is tightened when opened.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut a = open_append(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        a.write_all(b"z").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"xz");
    }

    #[test]
    fn links_and_fifos_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "root only").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_append(&link).is_err());
        assert!(create(&link).is_err());
        assert!(create_dir(&link).is_err());
        assert_eq!(mode(&target), 0o644, "the link's target is untouched");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_retain(0o644)).unwrap();
        assert!(
            open_append(&fifo).is_err(),
            "a FIFO is refused, not waited on"
        );
    }

    #[test]
    fn an_older_tree_is_tightened_top_down_without_following_links() {
        // What an older version left under the default umask.
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        std::fs::create_dir_all(root.join("containers/c1")).unwrap();
        std::fs::write(root.join("containers/c1/registration.json"), "{}").unwrap();
        std::fs::write(root.join("counters.json"), "{}").unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        for p in ["", "containers", "containers/c1"] {
            set(&root.join(p), 0o755);
        }
        for p in ["counters.json", "containers/c1/registration.json"] {
            set(&root.join(p), 0o644);
        }
        set(&outside, 0o644);
        let n = tighten_tree(&root).unwrap();
        assert_eq!(n, 5, "root, containers, c1, two files");
        for p in ["", "containers", "containers/c1"] {
            assert_eq!(mode(&root.join(p)), 0o700, "{p}");
        }
        assert_eq!(mode(&root.join("containers/c1/registration.json")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not changed");
        assert_eq!(tighten_tree(&root).unwrap(), 0);
    }

    #[test]
    fn write_new_keeps_an_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registration.json");
        write_new(&p, b"first").unwrap();
        write_new(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(mode(&p), 0o600);
        assert!(!d.path().join("registration.json.new").exists());
    }
}
