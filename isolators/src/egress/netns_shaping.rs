//! Shaping of containers that have their own network namespace.
//!
//! Each such container gets the shaping tree on every device of its namespace, with
//! its class as the default class. Mesos runs the isolators' `isolate()` side by
//! side, so a network isolator (CNI) may move the container's veth into the
//! namespace only after our `isolate()` returned: a watcher thread listens to each
//! namespace's link notifications and shapes devices as they appear.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tracing::{info, warn};

use super::error::EgressError;
use super::netlink::{Netlink, RTMGRP_LINK};
use super::netns;
use super::policy::Shape;
use super::tc::{self, ClassStats};
use super::tree::{self, Leaf, LINK_MINOR};

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
    /// Leaf qdisc for new devices.
    leaf: Leaf,
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
    wake: Arc<EventFd>,
    watcher: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in the watcher leaves consistent data (each step is a whole update).
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(wake: &EventFd) {
    // A full counter only means a wake-up is already pending.
    let _ = wake.write(1);
}

impl Entry {
    /// Shapes the namespace's devices that are not shaped yet; returns how many.
    fn shape_new_devices(&mut self, major: u16, line_rate: u64) -> Result<usize, EgressError> {
        let minor = u16::try_from(self.classid & 0xffff).unwrap_or(LINK_MINOR);
        let mut added = 0;
        for l in tc::links(&mut self.nl)? {
            if l.loopback || self.devices.contains(&l.index) {
                continue;
            }
            tree::ensure_tree(&mut self.nl, l.index, &l.name, major, minor, line_rate)?;
            tree::add_container_class(
                &mut self.nl,
                &mut self.leaf,
                l.index,
                major,
                self.classid,
                &self.shape,
            )?;
            self.devices.push(l.index);
            added += 1;
        }
        Ok(added)
    }
}

impl NetnsShaping {
    /// No container yet; the watcher starts with the first one.
    pub fn new(major: u16, line_rate: u64) -> Result<Self, EgressError> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| EgressError::io("creating the netns watcher's eventfd")(e.into()))?;
        Ok(Self {
            major,
            line_rate,
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(wake),
            watcher: None,
        })
    }

    /// Whether a class belongs to a container shaped in its own namespace.
    pub fn contains(&self, classid: u32) -> bool {
        lock(&self.state).entries.contains_key(&classid)
    }

    /// Shapes the container of `pid` in its namespace, now and as devices appear.
    /// Returns how many devices it has now.
    pub(super) fn add(
        &mut self,
        classid: u32,
        shape: &Shape,
        pid: i32,
        leaf: Leaf,
    ) -> Result<usize, EgressError> {
        let ns = netns::open_netns(pid).map_err(EgressError::netns(pid, "opening the netns"))?;
        // Subscribe before the first scan, so a device added in between is not missed.
        let events = netns::netlink_in(&ns, RTMGRP_LINK)
            .map_err(EgressError::netns(pid, "netlink in the netns"))?;
        let nl =
            netns::netlink_in(&ns, 0).map_err(EgressError::netns(pid, "netlink in the netns"))?;
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
    pub fn change(&mut self, classid: u32, shape: &Shape) -> Result<(), EgressError> {
        let mut state = lock(&self.state);
        let Some(e) = state.entries.get_mut(&classid) else {
            return Ok(());
        };
        e.shape = *shape;
        for &index in &e.devices.clone() {
            tree::set_container_class(&mut e.nl, index, self.major, classid, shape)?;
        }
        Ok(())
    }

    /// Removes the container's trees (the whole tree in its namespace is its own).
    pub fn remove(&mut self, classid: u32) -> Result<(), EgressError> {
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
    pub fn stats(&mut self, classid: u32) -> Result<ClassStats, EgressError> {
        let mut state = lock(&self.state);
        let mut sum = ClassStats::default();
        if let Some(e) = state.entries.get_mut(&classid) {
            for &index in &e.devices.clone() {
                sum.add(tc::class_stats(&mut e.nl, index, classid)?);
            }
        }
        Ok(sum)
    }

    fn ensure_watcher(&mut self) -> Result<(), EgressError> {
        if self.watcher.is_some() {
            return Ok(());
        }
        let (state, wake) = (Arc::clone(&self.state), Arc::clone(&self.wake));
        let (major, line_rate) = (self.major, self.line_rate);
        let handle = std::thread::Builder::new()
            .name("rein-egress-netns".into())
            .spawn(move || watch(&state, &wake, major, line_rate))
            .map_err(EgressError::io("starting the netns watcher"))?;
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
fn watch(state: &Mutex<State>, wake: &EventFd, major: u16, line_rate: u64) {
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
                .map(|(c, e)| (*c, e.events.fd().as_raw_fd()))
                .collect()
        };
        let mut fds: Vec<PollFd<'_>> = std::iter::once(wake.as_fd())
            .chain(watched.iter().map(|(_, fd)| {
                // SAFETY: every descriptor stays open until the next loop: removed
                // entries wait in `retired`, which only this thread clears.
                unsafe { BorrowedFd::borrow_raw(*fd) }
            }))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        if !matches!(poll(&mut fds, PollTimeout::from(1000u16)), Ok(n) if n > 0) {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            let _ = wake.read();
        }
        for (ready, (classid, _)) in ready[1..].iter().zip(&watched) {
            if !ready {
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
