//! A recording fake of [`EgressKernel`] for the policy's unit tests: one host
//! device holding classes, containers' own namespaces by pid, the cgroup map, and
//! failures to inject (a busy class, a device that cannot be listed, a namespace
//! that vanished).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::{class_name, EgressError};
use super::kernel::{EgressKernel, Unclaimed, UnclaimedFailure};
use super::netlink::NlError;
use super::policy::Shape;
use super::tc::ClassStats;
use super::tree::{expected_held, is_container_class};

/// The fake's one host device.
pub const DEVICE: &str = "eth0";

/// One call the policy made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Call {
    HasOwnNetns(i32),
    AddHost(u32, Shape, Option<u64>),
    AdoptHost(u32, Shape, Option<u64>),
    AddNetns(u32, Shape, i32),
    AdoptNetns(u32, Shape, i32),
    Change(u32, Shape),
    Remove(u32, Option<u64>),
    Stats(u32),
    RemoveUnclaimed,
    RemoveHostClass(u32),
}

/// Where a pid lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// The host's namespace (the default).
    Host,
    /// Its own namespace with this many devices.
    Own(usize),
    /// The process, and so its namespace, is gone.
    Gone,
}

/// What the fake kernel holds.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Classes on the host device (`None`: left by an earlier run, shape unknown).
    pub host: BTreeMap<u32, Option<Shape>>,
    /// Classes shaped in a container's own namespace: the pid and the shape.
    pub netns: BTreeMap<u32, (i32, Shape)>,
    /// The cgroup-to-class map.
    pub map: BTreeMap<u64, u32>,
    /// Namespaces of pids (absent: the host's).
    pub pids: HashMap<i32, Ns>,
    /// Classes the kernel refuses to remove (`EBUSY`: someone's filter holds them).
    pub busy: BTreeSet<u32>,
    /// Listing the device's classes fails.
    pub list_fails: bool,
    /// Attaching to a container's namespace fails (it vanished after the look-up).
    pub attach_fails: bool,
    /// Adding a class fails (the kernel is out of memory, say).
    pub add_fails: bool,
    /// Counters the kernel reports per class: bytes, packets, drops.
    pub counters: HashMap<u32, (u64, u64, u64)>,
}

impl FakeState {
    /// The calls that changed something (the look-ups left out).
    pub fn effects(&self) -> Vec<Call> {
        self.calls
            .iter()
            .copied()
            .filter(|c| !matches!(c, Call::HasOwnNetns(_) | Call::Stats(_)))
            .collect()
    }

    fn set_host(&mut self, classid: u32, shape: &Shape, cgroup_id: Option<u64>) {
        self.host.insert(classid, Some(*shape));
        if let Some(id) = cgroup_id {
            self.map.insert(id, classid);
        }
    }

    fn ns(&self, pid: i32) -> Ns {
        self.pids.get(&pid).copied().unwrap_or(Ns::Host)
    }
}

/// The fake; clones share one state, so a test keeps one to look inside.
#[derive(Debug, Clone)]
pub struct FakeKernel {
    major: u16,
    state: Arc<Mutex<FakeState>>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn busy(classid: u32) -> NlError {
    NlError {
        what: format!("removing class {} of device 1", class_name(classid)),
        source: errno(libc::EBUSY),
        ext: None,
    }
}

fn vanished(pid: i32) -> EgressError {
    EgressError::Netns {
        pid,
        what: "opening the netns",
        source: errno(libc::ENOENT),
    }
}

impl FakeKernel {
    /// An empty device; classes of major `major` are rein's.
    pub fn new(major: u16) -> Self {
        Self {
            major,
            state: Arc::default(),
        }
    }

    /// The state, to arrange or to look at.
    pub fn st(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn record(&self, call: Call) -> MutexGuard<'_, FakeState> {
        let mut st = self.st();
        st.calls.push(call);
        st
    }

    fn attach_netns(
        &self,
        call: Call,
        classid: u32,
        shape: &Shape,
        pid: i32,
    ) -> Result<usize, EgressError> {
        let mut st = self.record(call);
        if st.attach_fails {
            return Err(vanished(pid));
        }
        match st.ns(pid) {
            Ns::Own(devices) => {
                st.netns.insert(classid, (pid, *shape));
                Ok(devices)
            }
            Ns::Gone => Err(vanished(pid)),
            // The real kernel would shape the host's devices as a namespace's.
            Ns::Host => panic!("{call:?}: pid {pid} shares the host's namespace"),
        }
    }
}

impl EgressKernel for FakeKernel {
    fn has_own_netns(&self, pid: i32) -> Result<bool, EgressError> {
        match self.record(Call::HasOwnNetns(pid)).ns(pid) {
            Ns::Host => Ok(false),
            Ns::Own(_) => Ok(true),
            Ns::Gone => Err(EgressError::Netns {
                pid,
                what: "reading the network namespace",
                source: errno(libc::ENOENT),
            }),
        }
    }

    fn add_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), EgressError> {
        let mut st = self.record(Call::AddHost(classid, *shape, cgroup_id));
        if st.add_fails {
            return Err(EgressError::Netlink(NlError {
                what: format!("setting HTB class {} on device 1", class_name(classid)),
                source: errno(libc::ENOMEM),
                ext: None,
            }));
        }
        st.set_host(classid, shape, cgroup_id);
        Ok(())
    }

    fn adopt_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), EgressError> {
        self.record(Call::AdoptHost(classid, *shape, cgroup_id))
            .set_host(classid, shape, cgroup_id);
        Ok(())
    }

    fn add_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<usize, EgressError> {
        self.attach_netns(Call::AddNetns(classid, *shape, pid), classid, shape, pid)
    }

    fn adopt_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<(), EgressError> {
        self.attach_netns(Call::AdoptNetns(classid, *shape, pid), classid, shape, pid)
            .map(|_| ())
    }

    fn change(&mut self, classid: u32, shape: &Shape) -> Result<(), EgressError> {
        let mut st = self.record(Call::Change(classid, *shape));
        if let Some(entry) = st.netns.get_mut(&classid) {
            entry.1 = *shape;
        } else {
            st.host.insert(classid, Some(*shape));
        }
        Ok(())
    }

    fn remove(&mut self, classid: u32, cgroup_id: Option<u64>) -> Result<(), EgressError> {
        let mut st = self.record(Call::Remove(classid, cgroup_id));
        if st.netns.remove(&classid).is_some() {
            return Ok(());
        }
        if let Some(id) = cgroup_id {
            st.map.remove(&id);
        }
        if st.busy.contains(&classid) {
            return Err(busy(classid).into());
        }
        st.host.remove(&classid);
        Ok(())
    }

    fn stats(&mut self, classid: u32) -> Result<ClassStats, EgressError> {
        let st = self.record(Call::Stats(classid));
        let shape = match st.netns.get(&classid) {
            Some((_, shape)) => Some(*shape),
            None => st.host.get(&classid).copied().flatten(),
        };
        let Some(shape) = shape else {
            return Ok(ClassStats::default());
        };
        let (bytes, packets, drops) = st.counters.get(&classid).copied().unwrap_or_default();
        Ok(ClassStats {
            bytes,
            packets,
            drops,
            held: Some(expected_held(&shape)),
        })
    }

    fn remove_unclaimed(&mut self, keep: &dyn Fn(u32) -> bool) -> Unclaimed {
        let mut st = self.record(Call::RemoveUnclaimed);
        let mut out = Unclaimed::default();
        if st.list_fails {
            out.failed.push(UnclaimedFailure {
                device: DEVICE.into(),
                classid: None,
                error: EgressError::Netlink(NlError {
                    what: "listing classes of device 1".into(),
                    source: errno(libc::ENOBUFS),
                    ext: None,
                }),
            });
            return out;
        }
        let unclaimed: Vec<u32> = st
            .host
            .keys()
            .copied()
            .filter(|c| is_container_class(self.major, *c) && !keep(*c))
            .collect();
        for classid in unclaimed {
            if st.busy.contains(&classid) {
                out.failed.push(UnclaimedFailure {
                    device: DEVICE.into(),
                    classid: Some(classid),
                    error: busy(classid).into(),
                });
            } else {
                st.host.remove(&classid);
                out.removed.push(classid);
            }
        }
        out
    }

    fn remove_host_class(&mut self, classid: u32) -> Result<(), EgressError> {
        let mut st = self.record(Call::RemoveHostClass(classid));
        if st.busy.contains(&classid) {
            return Err(EgressError::OnDevice {
                device: DEVICE.into(),
                source: busy(classid),
            });
        }
        st.host.remove(&classid);
        Ok(())
    }

    fn device_names(&self) -> Vec<String> {
        vec![DEVICE.into()]
    }
}
