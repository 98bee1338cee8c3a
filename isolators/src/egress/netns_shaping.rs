//! Shaping of containers that have their own network namespace.
//!
//! Each such container gets the shaping tree on every device of its namespace, with
//! its class as the default class. Mesos runs the isolators' `isolate()` side by
//! side, so a network isolator (CNI) may move the container's veth into the
//! namespace only after our `isolate()` returned: a watcher thread listens to each
//! namespace's link notifications and shapes devices as they appear.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing::{info, warn};

use rein_core::isolator::Error;

use super::netlink::{Netlink, RTMGRP_LINK};
use super::netns;
use super::policy::Shape;
use super::shaper::{container_rates, ensure_tree, LINK_MINOR};
use super::tc::{self, handle, ClassStats};

/// One container's namespace.
#[derive(Debug)]
struct Entry {
    /// Keeps the namespace (and so its devices) reachable until cleanup.
    _ns: File,
    /// Requests.
    nl: Netlink,
    /// Link notifications.
    events: Netlink,
    /// Devices shaped so far.
    devices: Vec<u32>,
    classid: u32,
    shape: Shape,
    /// Leaf qdisc kind for new devices (`None`: HTB's FIFO).
    leaf: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<u32, Entry>,
    /// Removed entries, dropped by the watcher once it no longer polls their sockets.
    retired: Vec<Entry>,
    stop: bool,
}

/// The containers shaped in their own namespaces, and the watcher thread.
#[derive(Debug)]
pub struct NetnsShaping {
    major: u16,
    line_rate: u64,
    state: Arc<Mutex<State>>,
    wake: Arc<OwnedFd>,
    watcher: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in the watcher leaves consistent data (each step is a whole update).
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd(2) with valid flags; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a valid buffer to an eventfd; a full counter only
    // means a wake-up is already pending.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

impl Entry {
    /// Shapes the namespace's devices that are not shaped yet; returns how many.
    fn shape_new_devices(&mut self, major: u16, line_rate: u64) -> Result<usize, Error> {
        let minor = u16::try_from(self.classid & 0xffff).unwrap_or(LINK_MINOR);
        let mut added = 0;
        for l in tc::links(&mut self.nl)? {
            if l.loopback || self.devices.contains(&l.index) {
                continue;
            }
            ensure_tree(&mut self.nl, l.index, &l.name, major, minor, line_rate)?;
            let parent = handle(major, LINK_MINOR);
            tc::set_class(
                &mut self.nl,
                l.index,
                parent,
                self.classid,
                &container_rates(&self.shape),
            )?;
            if let Some(kind) = &self.leaf {
                match tc::add_leaf(&mut self.nl, l.index, self.classid, kind) {
                    Err(e) if tc::is_unknown_kind(&e) => self.leaf = None,
                    other => other?,
                }
            }
            self.devices.push(l.index);
            added += 1;
        }
        Ok(added)
    }
}

impl NetnsShaping {
    /// No container yet; the watcher starts with the first one.
    pub fn new(major: u16, line_rate: u64) -> Result<Self, Error> {
        Ok(Self {
            major,
            line_rate,
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(eventfd().map_err(|e| format!("creating an eventfd: {e}"))?),
            watcher: None,
        })
    }

    /// Whether a class belongs to a container shaped in its own namespace.
    pub fn contains(&self, classid: u32) -> bool {
        lock(&self.state).entries.contains_key(&classid)
    }

    /// Shapes the container of `pid` in its namespace, now and as devices appear.
    /// Returns how many devices it has now.
    pub fn add(
        &mut self,
        classid: u32,
        shape: &Shape,
        pid: i32,
        leaf: Option<String>,
    ) -> Result<usize, Error> {
        let ns =
            netns::open_netns(pid).map_err(|e| format!("opening the netns of pid {pid}: {e}"))?;
        // Subscribe before the first scan, so a device added in between is not missed.
        let events = netns::netlink_in(&ns, RTMGRP_LINK)
            .map_err(|e| format!("netlink in the netns of pid {pid}: {e}"))?;
        let nl = netns::netlink_in(&ns, 0)
            .map_err(|e| format!("netlink in the netns of pid {pid}: {e}"))?;
        let mut entry = Entry {
            _ns: ns,
            nl,
            events,
            devices: Vec::new(),
            classid,
            shape: *shape,
            leaf,
        };
        let n = entry.shape_new_devices(self.major, self.line_rate)?;
        self.ensure_watcher()?;
        lock(&self.state).entries.insert(classid, entry);
        signal(&self.wake);
        Ok(n)
    }

    /// Changes a container's class on its devices.
    pub fn change(&mut self, classid: u32, shape: &Shape) -> Result<(), Error> {
        let mut state = lock(&self.state);
        let Some(e) = state.entries.get_mut(&classid) else {
            return Ok(());
        };
        e.shape = *shape;
        let parent = handle(self.major, LINK_MINOR);
        for &index in &e.devices.clone() {
            tc::set_class(&mut e.nl, index, parent, classid, &container_rates(shape))?;
        }
        Ok(())
    }

    /// Removes the container's trees (the whole tree in its namespace is its own).
    pub fn remove(&mut self, classid: u32) -> Result<(), Error> {
        let mut state = lock(&self.state);
        let Some(mut e) = state.entries.remove(&classid) else {
            return Ok(());
        };
        let mut result = Ok(());
        for &index in &e.devices {
            if let Err(err) = tc::del_root_qdisc(&mut e.nl, index) {
                result = Err(err.into());
            }
        }
        state.retired.push(e);
        drop(state);
        signal(&self.wake);
        result
    }

    /// The container's counters over its devices.
    pub fn stats(&mut self, classid: u32) -> Result<ClassStats, Error> {
        let mut state = lock(&self.state);
        let mut sum = ClassStats::default();
        if let Some(e) = state.entries.get_mut(&classid) {
            for &index in &e.devices.clone() {
                if let Some(s) = tc::class_stats(&mut e.nl, index, classid)? {
                    sum.bytes += s.bytes;
                    sum.packets += s.packets;
                    sum.drops += s.drops;
                    sum.held = sum.held.or(s.held);
                }
            }
        }
        Ok(sum)
    }

    fn ensure_watcher(&mut self) -> Result<(), Error> {
        if self.watcher.is_some() {
            return Ok(());
        }
        let (state, wake) = (Arc::clone(&self.state), Arc::clone(&self.wake));
        let (major, line_rate) = (self.major, self.line_rate);
        let handle = std::thread::Builder::new()
            .name("rein-egress-netns".into())
            .spawn(move || watch(&state, &wake, major, line_rate))
            .map_err(|e| format!("starting the netns watcher: {e}"))?;
        self.watcher = Some(handle);
        Ok(())
    }
}

impl Drop for NetnsShaping {
    fn drop(&mut self) {
        lock(&self.state).stop = true;
        signal(&self.wake);
        if let Some(h) = self.watcher.take() {
            let _ = h.join();
        }
    }
}

/// The watcher: waits for link notifications of any shaped namespace and shapes
/// the devices that appeared.
fn watch(state: &Mutex<State>, wake: &OwnedFd, major: u16, line_rate: u64) {
    loop {
        let watched: Vec<(u32, i32)> = {
            let mut s = lock(state);
            // Sockets of removed containers are no longer in the poll set: close them.
            s.retired.clear();
            if s.stop {
                return;
            }
            s.entries
                .iter()
                .map(|(c, e)| (*c, e.events.raw_fd()))
                .collect()
        };
        let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
            .chain(watched.iter().map(|(_, fd)| *fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or_default();
        // SAFETY: `fds` is a valid array of `nfds` pollfds; every descriptor stays open
        // until the next loop (removed entries wait in `retired`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, 1000) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a valid buffer from the eventfd.
            unsafe { libc::read(wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
        for (pfd, (classid, _)) in fds[1..].iter().zip(&watched) {
            if pfd.revents == 0 {
                continue;
            }
            let mut s = lock(state);
            let Some(e) = s.entries.get_mut(classid) else {
                continue;
            };
            if !e.events.drain_link_events() {
                continue;
            }
            match e.shape_new_devices(major, line_rate) {
                Ok(0) => {}
                Ok(n) => info!(
                    class = format!("{classid:x}"),
                    devices = n,
                    "shaping devices that appeared in a container's namespace"
                ),
                Err(err) => warn!(
                    class = format!("{classid:x}"),
                    "shaping a new device in a container's namespace: {err}"
                ),
            }
        }
    }
}
