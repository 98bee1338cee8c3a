//! Sandbox files, handled relative to a descriptor of the sandbox directory.
//!
//! A task owns its sandbox: it can put anything at any name there (symlinks,
//! FIFOs, sockets, directories, hard links to other files, files of other
//! owners, thousands of names) and rename or remove the shipper's files at
//! any moment. The shipper and the agent run as root, so no name in a
//! sandbox is ever followed or trusted here:
//!
//! * the sandbox directory is opened once, walking its path without following
//!   a symlink that sits in a directory root does not own alone
//!   ([`SandboxDir::open`]); every later call is relative to that descriptor;
//! * nothing resolves a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), nothing
//!   blocks (`O_NONBLOCK`; the type is checked before any open), new files are
//!   created with `O_EXCL` under a fresh name and renamed into place with
//!   `RENAME_NOREPLACE`;
//! * an existing file is used only when it is a regular file with one link,
//!   owned by root or the sandbox's owner, whose (device, inode) the caller
//!   recorded in its own private state when it created it;
//! * whatever stands where a name is needed is refused: directories and
//!   regular files are moved aside (`<name>.refused-<unique>`, content kept),
//!   symlinks, FIFOs and sockets unlinked; each is logged and counted
//!   ([`objects_refused`]).

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{renameat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

/// Objects refused in sandboxes by this process (a process-wide counter: the
/// worker reports it as `sandbox_objects_refused`).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Objects refused in sandboxes since this process started.
pub fn objects_refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Identity of a file the shipper created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    fn of(st: &libc::stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Why an object found in a sandbox was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A symbolic link.
    Symlink,
    /// A FIFO.
    Fifo,
    /// A unix socket.
    Socket,
    /// A directory.
    Directory,
    /// A device node.
    Device,
    /// A regular file with more than one link.
    HardLink,
    /// A regular file owned by neither root nor the sandbox's owner.
    OtherOwner,
    /// A regular file the shipper did not create (not the recorded identity).
    NotOurs,
}

impl Refusal {
    /// Name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Symlink => "symlink",
            Refusal::Fifo => "fifo",
            Refusal::Socket => "socket",
            Refusal::Directory => "directory",
            Refusal::Device => "device",
            Refusal::HardLink => "hard link",
            Refusal::OtherOwner => "file of another owner",
            Refusal::NotOurs => "file not created by the shipper",
        }
    }
}

fn cname(name: &str) -> io::Result<CString> {
    plain_name(name.as_bytes())
}

/// `name` as a C string when it is one plain name (not empty, `.` or `..`,
/// no `/`, no NUL): never a path that could lead out of a directory.
pub fn plain_name(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a plain file name",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// `openat(2)` relative to `dir`, close-on-exec, never acquiring a terminal.
pub fn openat(dir: RawFd, name: &CStr, flags: OFlag, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = nix::fcntl::openat(Some(dir), name, flags, Mode::from_bits_retain(mode))?;
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    Ok(nix::sys::stat::fstat(fd)?)
}

/// `fstatat` without following a symlink; `None` if nothing is there.
pub fn stat_at(dir: RawFd, name: &CStr) -> io::Result<Option<libc::stat>> {
    match nix::sys::stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `unlinkat` of a non-directory (never follows the last component).
fn unlink_at(dir: RawFd, name: &CString) -> nix::Result<()> {
    nix::unistd::unlinkat(Some(dir), name.as_c_str(), UnlinkatFlags::NoRemoveDir)
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// The refusal a non-regular object deserves (`None` for a regular file).
fn type_refusal(st: &libc::stat) -> Option<Refusal> {
    match file_type(st) {
        libc::S_IFREG => None,
        libc::S_IFLNK => Some(Refusal::Symlink),
        libc::S_IFIFO => Some(Refusal::Fifo),
        libc::S_IFSOCK => Some(Refusal::Socket),
        libc::S_IFDIR => Some(Refusal::Directory),
        _ => Some(Refusal::Device),
    }
}

/// A unique name for a new or set-aside object (never predictable enough to
/// be planted in advance: pid, time and a counter).
fn unique(base: &str, tag: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{base}.{tag}-{:x}-{t:x}-{n:x}", std::process::id())
}

/// `renameat2(RENAME_NOREPLACE)` within one directory; `Ok(false)` if `to` exists.
fn rename_noreplace(dir: RawFd, from: &CString, to: &CString) -> io::Result<bool> {
    let (from, to) = (from.as_c_str(), to.as_c_str());
    match renameat2(
        Some(dir),
        from,
        Some(dir),
        to,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE: check, then a plain rename
        // (a racing task can only have its own object replaced).
        Err(Errno::EINVAL) => {
            if stat_at(dir, to)?.is_some() {
                return Ok(false);
            }
            renameat(Some(dir), from, Some(dir), to)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// The sandbox directory, held open.
#[derive(Debug)]
pub struct SandboxDir {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    owner: u32,
}

/// Attempts at placing a name against a task that keeps planting objects there.
const PLACE_TRIES: usize = 8;

impl SandboxDir {
    /// Opens the directory `path` (absolute). Symlinks on the way are followed
    /// only where they sit in a directory owned by root and writable by no one
    /// else (an operator's `work_dir` link, say); one in a directory a task
    /// controls (a nested container's sandbox lies in its parent's) is refused.
    pub fn open(path: &Path) -> io::Result<SandboxDir> {
        let fd = walk(path)?;
        let st = fstat(fd.as_raw_fd())?;
        Ok(SandboxDir {
            fd,
            path: path.to_path_buf(),
            dev: st.st_dev,
            owner: st.st_uid,
        })
    }

    /// The path it was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its device.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// The uid owning the directory (the task's user).
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The directory's descriptor (a task's own files are reached relative
    /// to it, see the shipper's `logfiles::open`).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    fn dirfd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Why the object `st` is not the shipper's file `expect` (`None`: it is).
    fn check(&self, st: &libc::stat, expect: FileId) -> Option<Refusal> {
        if let Some(r) = type_refusal(st) {
            return Some(r);
        }
        if st.st_nlink != 1 {
            return Some(Refusal::HardLink);
        }
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me && st.st_uid != 0 && st.st_uid != self.owner {
            return Some(Refusal::OtherOwner);
        }
        (FileId::of(st) != expect).then_some(Refusal::NotOurs)
    }

    /// True when `name` holds the shipper's file `expect` (nothing is opened).
    pub fn holds(&self, name: &str, expect: FileId) -> io::Result<bool> {
        let c = cname(name)?;
        Ok(stat_at(self.dirfd(), &c)?.is_some_and(|st| self.check(&st, expect).is_none()))
    }

    /// Opens the shipper's file `expect` at `name` (read-write with `write`),
    /// or `None` if `name` holds nothing or something else (left as it is:
    /// it is refused when the name is needed, see [`SandboxDir::create`]).
    pub fn open_ours(&self, name: &str, expect: FileId, write: bool) -> io::Result<Option<File>> {
        let c = cname(name)?;
        let Some(st) = stat_at(self.dirfd(), &c)? else {
            return Ok(None);
        };
        if self.check(&st, expect).is_some() {
            return Ok(None);
        }
        let mode = if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let fd = match openat(
            self.dirfd(),
            &c,
            mode | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
            0,
        ) {
            Ok(fd) => fd,
            // Replaced since the look (ELOOP: now a symlink, ENXIO: a socket,
            // EWOULDBLOCK: a lease), or gone.
            Err(e) => {
                tracing::warn!(path = %self.path.join(name).display(), "not opened: {e}");
                return Ok(None);
            }
        };
        let st = fstat(fd.as_raw_fd())?;
        if self.check(&st, expect).is_some() {
            return Ok(None);
        }
        Ok(Some(File::from(fd)))
    }

    /// Creates a new empty file (mode 0644, owned by this process's user) and
    /// gives it the name `name`: whatever stands there is refused first.
    /// `created` is called with the new file's identity and unique name
    /// before it gets the name (to record both first). If a task keeps planting objects at `name`
    /// faster than they are removed, the file keeps a unique name
    /// (`<name>.new-…`); it is still written and read through its descriptor.
    pub fn create(
        &self,
        name: &str,
        created: &mut dyn FnMut(FileId, &str),
    ) -> io::Result<(File, FileId)> {
        let target = cname(name)?;
        let mut tries = 0;
        let (fd, tmp) = loop {
            let tmp = cname(&unique(name, "new"))?;
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
            match openat(self.dirfd(), &tmp, flags, 0o644) {
                Ok(fd) => break (fd, tmp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < PLACE_TRIES => {
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // The umask must not take the task's read access to its own output.
        nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_retain(0o644))?;
        let id = FileId::of(&fstat(fd.as_raw_fd())?);
        created(id, &tmp.to_string_lossy());
        self.place(&tmp, &target, name);
        Ok((File::from(fd), id))
    }

    /// Renames the shipper's file `expect` from `from` to `to` (refusing
    /// whatever stands at `to`). `Ok(false)` if `from` does not hold it (a
    /// task moved it): nothing is renamed then.
    pub fn rename_ours(&self, from: &str, to: &str, expect: FileId) -> io::Result<bool> {
        if !self.holds(from, expect)? {
            return Ok(false);
        }
        Ok(self.place(&cname(from)?, &cname(to)?, to))
    }

    /// Removes `name` if it holds the shipper's file `expect`.
    pub fn remove_ours(&self, name: &str, expect: FileId) -> io::Result<bool> {
        if !self.holds(name, expect)? {
            return Ok(false);
        }
        unlink_at(self.dirfd(), &cname(name)?)?;
        Ok(true)
    }

    /// Renames `from` to `to`, refusing what a task put at `to` (bounded
    /// tries). False if `to` could not be had.
    fn place(&self, from: &CString, to: &CString, to_name: &str) -> bool {
        for _ in 0..PLACE_TRIES {
            match rename_noreplace(self.dirfd(), from, to) {
                Ok(true) => return true,
                Ok(false) => match stat_at(self.dirfd(), to) {
                    Ok(Some(st)) => {
                        let why = type_refusal(&st).unwrap_or(if st.st_nlink != 1 {
                            Refusal::HardLink
                        } else {
                            Refusal::NotOurs
                        });
                        self.refuse(to_name, to, &st, why);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(path = %self.path.join(to_name).display(), "{e}");
                        return false;
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %self.path.join(to_name).display(), "rename: {e}");
                    return false;
                }
            }
        }
        tracing::warn!(
            path = %self.path.join(to_name).display(),
            "the name is taken again and again; the shipper's file keeps a unique name"
        );
        false
    }

    /// Refuses the object `st` found at `name`: counted, logged, and moved
    /// aside (directories, regular files) or unlinked (anything else). Never
    /// opened, never followed.
    fn refuse(&self, name: &str, c: &CString, st: &libc::stat, why: Refusal) {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        let keep = matches!(file_type(st), libc::S_IFDIR | libc::S_IFREG);
        let mut done = false;
        if keep {
            for _ in 0..PLACE_TRIES {
                let Ok(aside) = cname(&unique(name, "refused")) else {
                    break;
                };
                match rename_noreplace(self.dirfd(), c, &aside) {
                    Ok(true) => {
                        done = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
        }
        if !done && file_type(st) != libc::S_IFDIR {
            done = unlink_at(self.dirfd(), c).is_ok();
        }
        tracing::warn!(
            path = %self.path.join(name).display(),
            kind = why.name(),
            owner = st.st_uid,
            removed = done,
            "object in the sandbox refused (never followed nor opened); the shipper uses a file of its own"
        );
    }
}

fn components(p: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
    })
}

fn root_dir() -> io::Result<(OwnedFd, libc::stat)> {
    let c = CString::new("/").unwrap_or_default();
    let fd = openat(libc::AT_FDCWD, &c, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
    let st = fstat(fd.as_raw_fd())?;
    Ok((fd, st))
}

/// A directory nobody but root can change.
fn trusted(st: &libc::stat) -> bool {
    st.st_uid == 0 && st.st_mode & 0o022 == 0
}

fn readlinkat(dir: RawFd, name: &CString) -> io::Result<PathBuf> {
    Ok(PathBuf::from(nix::fcntl::readlinkat(
        Some(dir),
        name.as_c_str(),
    )?))
}

/// Opens the directory at `path` component by component (see [`SandboxDir::open`]).
fn walk(path: &Path) -> io::Result<OwnedFd> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if !path.is_absolute() {
        return Err(bad(format!("{} is not an absolute path", path.display())));
    }
    let mut stack = vec![root_dir()?];
    let mut todo: VecDeque<OsString> = components(path).collect();
    let mut hops = 0;
    while let Some(comp) = todo.pop_front() {
        if comp == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let c = CString::new(comp.as_bytes()).map_err(|_| bad("NUL in the path".into()))?;
        let (cur, cur_st) = stack
            .last()
            .map(|(f, s)| (f.as_raw_fd(), *s))
            .ok_or_else(|| bad("empty path".into()))?;
        let st = stat_at(cur, &c)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: {} does not exist",
                    path.display(),
                    OsStr::new(&comp).to_string_lossy()
                ),
            )
        })?;
        if file_type(&st) == libc::S_IFLNK {
            if !trusted(&cur_st) {
                return Err(bad(format!(
                    "{}: the symlink {} lies in a directory of uid {} (mode {:o}) and is not followed",
                    path.display(),
                    comp.to_string_lossy(),
                    cur_st.st_uid,
                    cur_st.st_mode & 0o7777
                )));
            }
            hops += 1;
            if hops > 40 {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = readlinkat(cur, &c)?;
            if target.is_absolute() {
                stack.truncate(1);
            }
            for x in components(&target).collect::<Vec<_>>().into_iter().rev() {
                todo.push_front(x);
            }
            continue;
        }
        let fd = openat(
            cur,
            &c,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            0,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        stack.push((fd, st));
    }
    let (last, _) = stack.pop().ok_or_else(|| bad("empty path".into()))?;
    let dot = CString::new(".").unwrap_or_default();
    openat(
        last.as_raw_fd(),
        &dot,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    /// Plants an object of `kind` at `at` (an outside file `secret` and a
    /// directory `outside_dir` exist beside the sandbox).
    fn plant(
        kind: &str,
        at: &Path,
        secret: &Path,
        outside_dir: &Path,
    ) -> Option<std::os::unix::net::UnixListener> {
        match kind {
            "symlink" => symlink(secret, at).unwrap(),
            "symlink-dir" => symlink(outside_dir, at).unwrap(),
            "fifo" => {
                nix::unistd::mkfifo(at, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap()
            }
            "socket" => return Some(std::os::unix::net::UnixListener::bind(at).unwrap()),
            "directory" => {
                std::fs::create_dir(at).unwrap();
                std::fs::write(at.join("inside"), b"kept").unwrap();
            }
            "hardlink" => {
                let other = at.with_file_name("attacker-file");
                std::fs::write(&other, b"attacker").unwrap();
                std::fs::hard_link(&other, at).unwrap();
            }
            "regular" => std::fs::write(at, b"planted").unwrap(),
            k => panic!("unknown kind {k}"),
        }
        None
    }

    const KINDS: [&str; 7] = [
        "symlink",
        "symlink-dir",
        "fifo",
        "socket",
        "directory",
        "hardlink",
        "regular",
    ];

    /// In `d`: a sandbox, a file holding `SECRET` and an empty directory,
    /// the last two outside the sandbox.
    fn scene(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let sb = d.join("sb");
        std::fs::create_dir(&sb).unwrap();
        let secret = d.join("secret");
        std::fs::write(&secret, b"SECRET").unwrap();
        let outside_dir = d.join("outside");
        std::fs::create_dir(&outside_dir).unwrap();
        (sb, secret, outside_dir)
    }

    #[test]
    fn create_refuses_whatever_stands_at_the_name_and_never_follows_it() {
        for kind in KINDS {
            let d = tempfile::tempdir().unwrap();
            let (sb, secret, outside_dir) = scene(d.path());
            let _sock = plant(kind, &sb.join("stdout"), &secret, &outside_dir);
            let dir = SandboxDir::open(&sb).unwrap();
            let before = objects_refused();
            let mut recorded = None;
            let (mut f, id) = dir
                .create("stdout", &mut |id, _| recorded = Some(id))
                .unwrap();
            assert_eq!(recorded, Some(id));
            std::io::Write::write_all(&mut f, b"mine\n").unwrap();
            assert!(objects_refused() > before, "{kind}: not counted");
            let m = std::fs::symlink_metadata(sb.join("stdout")).unwrap();
            assert!(m.is_file(), "{kind}: stdout is not the shipper's file");
            assert_eq!((m.dev(), m.ino()), (id.dev, id.ino), "{kind}");
            assert_eq!(m.mode() & 0o777, 0o644, "{kind}");
            assert_eq!(std::fs::read(sb.join("stdout")).unwrap(), b"mine\n");
            assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET", "{kind}");
            assert_eq!(
                std::fs::read_dir(&outside_dir).unwrap().count(),
                0,
                "{kind}"
            );
            // Directories and regular files are kept aside, with their content.
            let aside: Vec<_> = std::fs::read_dir(&sb)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("stdout.refused-"))
                .collect();
            let kept = matches!(kind, "directory" | "regular" | "hardlink");
            assert_eq!(aside.len(), usize::from(kept), "{kind}: {aside:?}");
            assert!(dir.holds("stdout", id).unwrap());
            assert!(dir.open_ours("stdout", id, true).unwrap().is_some());
        }
    }

    #[test]
    fn only_the_recorded_file_is_opened_and_nothing_blocks() {
        let d = tempfile::tempdir().unwrap();
        let (sb, secret, outside_dir) = scene(d.path());
        let dir = SandboxDir::open(&sb).unwrap();
        let (_f, id) = dir.create("stdout", &mut |_, _| {}).unwrap();
        // A task moves the file away and plants something else at its name.
        std::fs::rename(sb.join("stdout"), sb.join("moved")).unwrap();
        for kind in KINDS {
            let at = sb.join("stdout");
            let _sock = plant(kind, &at, &secret, &outside_dir);
            let t = std::time::Instant::now();
            assert!(
                dir.open_ours("stdout", id, false).unwrap().is_none(),
                "{kind}"
            );
            assert!(!dir.holds("stdout", id).unwrap(), "{kind}");
            assert!(
                !dir.rename_ours("stdout", "stdout.1", id).unwrap(),
                "{kind}"
            );
            assert!(!dir.remove_ours("stdout", id).unwrap(), "{kind}");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(1),
                "{kind}: blocked"
            );
            if std::fs::symlink_metadata(&at).unwrap().is_dir() {
                std::fs::remove_dir_all(&at).unwrap();
            } else {
                std::fs::remove_file(&at).unwrap();
            }
        }
        // Its own file, wherever it is now, is still recognised by identity.
        assert!(dir.open_ours("moved", id, false).unwrap().is_some());
        // A second link to it makes it untrusted.
        std::fs::hard_link(sb.join("moved"), sb.join("link")).unwrap();
        assert!(dir.open_ours("moved", id, false).unwrap().is_none());
        assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
    }

    #[test]
    fn the_sandbox_path_follows_no_symlink_in_a_directory_others_control() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        symlink(d.path().join("real"), d.path().join("link")).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let root = nix::unistd::geteuid().is_root();
        // A directory only root can write: its links are the operator's.
        assert_eq!(SandboxDir::open(&d.path().join("link")).is_ok(), root);
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SandboxDir::open(&d.path().join("link")).unwrap_err();
        assert!(e.to_string().contains("not followed"), "{e}");
        assert!(SandboxDir::open(&d.path().join("real")).is_ok());
        assert!(SandboxDir::open(Path::new("relative")).is_err());
        assert!(SandboxDir::open(&d.path().join("missing")).is_err());
    }
}
