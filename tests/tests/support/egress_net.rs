//! Network fixtures of the egress tests: a pair of network namespaces joined by a
//! veth pair (link-local addresses, so no packet can leave them), a TCP receiver
//! that measures goodput, and a forked TCP sender that a test places into a
//! container before it sends.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Runs `ip` with fixed arguments (test set-up only; no task input reaches it).
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of `tc` with fixed arguments, for checks independent of the code tested.
pub fn tc(args: &[&str]) -> String {
    let out = Command::new("tc").args(args).output().expect("running tc");
    assert!(
        out.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces, `client` (device `rc0`, 169.254.77.1) and `server` (device
/// `rs0`, 169.254.77.2), joined by a veth pair; both removed on drop.
pub struct NetPair {
    /// The client namespace's name.
    pub client: String,
    /// The server namespace's name.
    pub server: String,
}

/// The client's device.
pub const CLIENT_DEV: &str = "rc0";
/// The server's address.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

impl NetPair {
    /// Creates the pair; `tag` makes the names unique per test.
    pub fn new(tag: &str) -> Self {
        let pair = Self::unconnected(tag);
        pair.connect();
        pair
    }

    /// Creates the two namespaces without the veth pair (only loopback in each).
    pub fn unconnected(tag: &str) -> Self {
        let pid = std::process::id();
        let pair = Self {
            client: format!("rein-eg-{pid}-{tag}-c"),
            server: format!("rein-eg-{pid}-{tag}-s"),
        };
        pair.remove();
        ip(&["netns", "add", &pair.client]);
        ip(&["netns", "add", &pair.server]);
        for ns in [&pair.client, &pair.server] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Adds the veth pair and its addresses.
    pub fn connect(&self) {
        let pair = self;
        ip(&[
            "-n",
            &pair.client,
            "link",
            "add",
            CLIENT_DEV,
            "type",
            "veth",
            "peer",
            "name",
            "rs0",
            "netns",
            &pair.server,
        ]);
        ip(&[
            "-n",
            &pair.client,
            "addr",
            "add",
            "169.254.77.1/30",
            "dev",
            CLIENT_DEV,
        ]);
        ip(&[
            "-n",
            &pair.server,
            "addr",
            "add",
            "169.254.77.2/30",
            "dev",
            "rs0",
        ]);
        for (ns, dev) in [(&pair.client, CLIENT_DEV), (&pair.server, "rs0")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    fn remove(&self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// The namespace file of `name`.
    pub fn ns_file(name: &str) -> File {
        File::open(format!("/var/run/netns/{name}")).expect("opening a netns")
    }

    /// `tc` in the client namespace.
    pub fn client_tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.client.as_str()];
        all.extend_from_slice(args);
        tc(&all)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a thread inside the namespace `name` (the caller's thread stays put).
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = NetPair::ns_file(name);
    thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// A receiver listening in the server namespace; [`Receiver::goodput`] measures.
pub struct Receiver {
    handle: thread::JoinHandle<Vec<f64>>,
    /// The port it listens on.
    pub port: u16,
}

impl Receiver {
    /// Listens in `server_ns`; the first connection's goodput (bits/s) is measured in
    /// each window `(from, to)`, counted from the connection's start (skip the
    /// class's initial burst and TCP's start with a `from` above zero).
    pub fn start(server_ns: &str, windows: &[(f64, f64)]) -> Self {
        let ns = NetPair::ns_file(server_ns);
        let windows: Vec<(Duration, Duration)> = windows
            .iter()
            .map(|(a, b)| (Duration::from_secs_f64(*a), Duration::from_secs_f64(*b)))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener =
                TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
                    Err(e) => panic!("no sender connected: {e}"),
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let start = Instant::now();
            let end = windows.iter().map(|w| w.1).max().unwrap_or_default();
            let mut buf = vec![0u8; 256 * 1024];
            let mut counted = vec![0u64; windows.len()];
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let at = start.elapsed();
                if at >= end {
                    break;
                }
                for (i, (from, to)) in windows.iter().enumerate() {
                    if at >= *from && at < *to {
                        counted[i] += n as u64;
                    }
                }
            }
            windows
                .iter()
                .zip(counted)
                .map(|((from, to), c)| c as f64 * 8.0 / (*to - *from).as_secs_f64())
                .collect()
        });
        let port = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver ready");
        Self { handle, port }
    }

    /// The measured goodput per window, bits/s.
    pub fn goodput(self) -> Vec<f64> {
        self.handle.join().expect("receiver panicked")
    }
}

/// A forked sender: it waits for [`Sender::go`], then streams to the receiver for
/// `secs` seconds and exits. The fork happens on the calling thread, so the child
/// is in that thread's network namespace.
pub struct Sender {
    /// The child's pid.
    pub pid: i32,
    go: Option<OwnedFd>,
}

impl Sender {
    /// Forks the sender towards `SERVER_ADDR:port`.
    pub fn fork(port: u16, duration: Duration) -> Self {
        Self::fork_as(port, duration, None)
    }

    /// Forks the sender; with `uid`, the child drops to that user and group (all
    /// three ids, and no supplementary groups) before it connects, as a task of an
    /// unprivileged user sends.
    pub fn fork_as(port: u16, duration: Duration, uid: Option<u32>) -> Self {
        let (go_r, go_w) = nix::unistd::pipe().expect("pipe");
        let addr = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(SERVER_ADDR).to_be(),
            },
            sin_zero: [0; 8],
        };
        let buf = vec![0x5au8; 128 * 1024];
        let secs = duration.as_secs_f64();
        // SAFETY: the child only makes async-signal-safe system calls on memory that
        // was set up before the fork, and leaves with _exit.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: in the freshly forked child, as sender_child requires.
                unsafe { sender_child(go_r.as_raw_fd(), &addr, &buf, secs, uid) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(go_r);
                Self {
                    pid: child.as_raw(),
                    go: Some(go_w),
                }
            }
        }
    }

    /// Lets it send.
    pub fn go(&mut self) {
        if let Some(fd) = self.go.take() {
            let _ = nix::unistd::write(&fd, b"g");
        }
    }

    /// Waits for it to finish.
    pub fn wait(mut self) {
        self.go();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
        self.pid = 0;
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.pid > 0 {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

/// The forked child: wait for the go byte, connect, send until the deadline.
///
/// # Safety
/// Only to be called in a freshly forked child; never returns.
unsafe fn sender_child(
    go: i32,
    addr: &libc::sockaddr_in,
    buf: &[u8],
    secs: f64,
    uid: Option<u32>,
) -> ! {
    // SAFETY: plain system calls on valid buffers and descriptors; _exit ends the child.
    unsafe {
        let mut b = [0u8; 1];
        if libc::read(go, b.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(2);
        }
        if let Some(id) = uid {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(id, id, id) != 0
                || libc::setresuid(id, id, id) != 0
            {
                libc::_exit(4);
            }
        }
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if s < 0
            || libc::connect(
                s,
                std::ptr::from_ref(addr).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16),
            ) != 0
        {
            libc::_exit(3);
        }
        let mut start = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut start);
        loop {
            let mut now = std::mem::zeroed::<libc::timespec>();
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
            let elapsed =
                (now.tv_sec - start.tv_sec) as f64 + (now.tv_nsec - start.tv_nsec) as f64 / 1e9;
            if elapsed >= secs {
                break;
            }
            if libc::send(s, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) < 0 {
                break;
            }
        }
        libc::close(s);
        libc::_exit(0)
    }
}

/// A top-level container with task labels `labels`.
pub fn labelled_spec(name: &str, labels: &[(&str, &str)]) -> rein_core::ContainerSpec {
    rein_core::ContainerSpec {
        id: rein_core::ContainerId::top(name).unwrap(),
        task_labels: labels
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect(),
        ..rein_core::ContainerSpec::default()
    }
}

/// The net_cls isolator's settings with egress shaping on the client device,
/// classified by `classifier`.
pub fn shaping_params(
    root_name: &str,
    state: &std::path::Path,
    classifier: &str,
) -> Vec<(String, String)> {
    [
        ("net_cls_primary_handle", "0x1"),
        ("net_cls_secondary_handles", "0x10,0x7ff"),
        ("cgroups_root", root_name),
        ("state_dir", state.to_str().unwrap()),
        ("egress_shaping", "true"),
        ("egress_devices", CLIENT_DEV),
        ("egress_classifier", classifier),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect()
}
