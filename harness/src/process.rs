//! The container's process: forked and held before `exec` until every isolator has
//! isolated it, as Mesos's launch helper is.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

/// The container's stdout and stderr, as the container logger hands them out.
pub struct Stdio {
    /// Write end for stdout.
    pub stdout: OwnedFd,
    /// Write end for stderr.
    pub stderr: OwnedFd,
}

impl Stdio {
    /// `stdout` and `stderr` files in the sandbox, appended to.
    pub fn sandbox_files(sandbox: &Path) -> io::Result<Self> {
        let open = |name: &str| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(sandbox.join(name))
                .map(OwnedFd::from)
        };
        Ok(Self {
            stdout: open("stdout")?,
            stderr: open("stderr")?,
        })
    }
}

/// The user a container runs as (`--user`), as the agent's `--switch_user` does.
#[derive(Debug, Clone, Copy)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// That user's primary group.
    pub gid: u32,
}

impl Credentials {
    /// Looks a user up by name, or by number.
    pub fn of(user: &str) -> io::Result<Self> {
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(uid.into()),
            Err(_) => nix::unistd::User::from_name(user),
        }
        .map_err(io::Error::from)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no user '{user}'")))?;
        Ok(Self {
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
        })
    }
}

/// A forked process waiting for its go signal.
pub struct Held {
    pid: i32,
    release: OwnedFd,
}

/// A released container process, our child.
pub struct Running {
    pid: i32,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::other("argument contains a NUL byte"))
}

fn resolve(program: &str) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{program}: not found in PATH"),
            )
        })
}

/// What the forked child needs, all allocated before the fork.
struct ChildPlan<'a> {
    release_fd: RawFd,
    wait_fd: RawFd,
    out_fd: RawFd,
    err_fd: RawFd,
    user: Option<Credentials>,
    dir: &'a CStr,
    path: &'a CStr,
    argv: &'a [*const libc::c_char],
    env: &'a [*const libc::c_char],
}

/// `_exit(2)`: ends the forked child without running exit handlers (nix 0.29 has no
/// wrapper; `std::process::exit` is not async-signal-safe).
fn _exit(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// The child side of [`Held::spawn`]: waits for the release byte, then becomes the
/// command. Only async-signal-safe calls, no allocation (the parent may have other
/// threads holding the allocator's lock).
fn child_exec(plan: &ChildPlan<'_>) -> ! {
    use nix::unistd::{chdir, close, dup2, read, setgroups, setresgid, setresuid, setsid};
    use nix::unistd::{Gid, Uid};
    let _ = close(plan.release_fd);
    let _ = setsid();
    let mut byte = [0u8; 1];
    loop {
        match read(plan.wait_fd, &mut byte) {
            Ok(1) => break,
            Err(nix::errno::Errno::EINTR) => {}
            _ => _exit(126),
        }
    }
    // dup2 clears close-on-exec on the new descriptors 1 and 2.
    if plan.out_fd >= 0 && (dup2(plan.out_fd, 1).is_err() || dup2(plan.err_fd, 2).is_err()) {
        _exit(125);
    }
    if let Some(c) = plan.user {
        let (uid, gid) = (Uid::from_raw(c.uid), Gid::from_raw(c.gid));
        // Groups first: after setresuid the process may no longer change them.
        if setgroups(&[]).is_err()
            || setresgid(gid, gid, gid).is_err()
            || setresuid(uid, uid, uid).is_err()
        {
            _exit(124);
        }
    }
    let _ = chdir(plan.dir);
    // Raw execve: nix's builds its pointer arrays in a fresh allocation, which is not
    // allowed here.
    // SAFETY: `path`, `argv` and `env` are NUL-terminated strings and null-terminated
    // pointer arrays built before the fork, alive until execve replaces the process.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.env.as_ptr()) };
    _exit(127)
}

impl Held {
    /// Forks `argv` in its own session, in `dir`, with `env` added, as `user` when
    /// given (no supplementary groups); the child blocks before `exec` until
    /// [`Held::release`], and exits if the harness dies first.
    pub fn spawn(
        argv: &[String],
        dir: &Path,
        env: &[(String, String)],
        io: Option<&Stdio>,
        user: Option<Credentials>,
    ) -> io::Result<Self> {
        let program = argv
            .first()
            .ok_or_else(|| io::Error::other("no command given"))?;
        // Everything the child needs is allocated before fork: after it, only
        // async-signal-safe calls are allowed in a multi-threaded process.
        let path = cstring(resolve(program)?.as_os_str().as_bytes())?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
            .filter(|(k, _)| !env.iter().any(|(name, _)| OsStr::new(name) == k))
            .collect();
        vars.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
        let envs: Vec<CString> = vars
            .iter()
            .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<_>>()?;
        let dir = cstring(dir.as_os_str().as_bytes())?;
        let mut argv_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());

        let (wait_end, release) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let wait_fd = wait_end.as_raw_fd();
        let release_fd = release.as_raw_fd();
        let (out_fd, err_fd) = io.map_or((-1, -1), |io| {
            (io.stdout.as_raw_fd(), io.stderr.as_raw_fd())
        });
        // SAFETY: the child branch makes only async-signal-safe calls (close, setsid,
        // read, dup2, setgroups, setresgid, setresuid, chdir, execve, _exit) on memory
        // allocated before the fork; none of the nix wrappers it uses allocates.
        let pid = match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
            ForkResult::Parent { child } => child.as_raw(),
            ForkResult::Child => child_exec(&ChildPlan {
                release_fd,
                wait_fd,
                out_fd,
                err_fd,
                user,
                dir: &dir,
                path: &path,
                argv: &argv_ptrs,
                env: &env_ptrs,
            }),
        };
        drop(wait_end);
        Ok(Self { pid, release })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Lets the process `exec`.
    pub fn release(self) -> io::Result<Running> {
        nix::unistd::write(&self.release, b"x").map_err(io::Error::from)?;
        Ok(Running { pid: self.pid })
    }

    /// Kills the held process and reaps it. It may not have reached `setsid` yet, so
    /// the process itself is killed, not only its group; closing the release pipe
    /// first makes it exit even before the signal lands.
    pub fn abort(self) {
        let Held { pid, release } = self;
        drop(release);
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        kill_group(pid);
        Running { pid }.wait();
    }
}

impl Running {
    /// Whether it ended, with a description of how.
    pub fn try_wait(&self) -> io::Result<Option<String>> {
        match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG))
            .map_err(io::Error::from)?
        {
            WaitStatus::StillAlive => Ok(None),
            WaitStatus::Exited(_, code) => Ok(Some(format!("exit status {code}"))),
            WaitStatus::Signaled(_, signal, _) => Ok(Some(format!("killed by {signal}"))),
            _ => Ok(None),
        }
    }

    /// Waits until it ends.
    pub fn wait(&self) {
        while let Err(nix::errno::Errno::EINTR) = waitpid(Pid::from_raw(self.pid), None) {}
    }
}

/// The process start time (`/proc/<pid>/stat` field 22), to tell a live process
/// from a reused pid after a harness restart.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Kills a process group (the container's session), ignoring "already gone".
pub fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}
