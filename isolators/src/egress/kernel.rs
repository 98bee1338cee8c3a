//! The kernel seam of egress shaping: what the net_cls isolator asks of the
//! kernel, per container class.
//!
//! The isolator's policy (which class to set, adopt or remove, when to retry, what
//! to report) only talks to [`EgressKernel`], so it is unit-tested with a recording
//! fake; [`Shaper`](super::Shaper) is the real thing (rtnetlink, bpf(2), netns).

use std::fmt;

use super::bpf::CgroupClassMap;
use super::error::EgressError;
use super::policy::Shape;
use super::tc::ClassStats;

/// What [`EgressKernel::remove_unclaimed`] did.
#[derive(Debug, Default)]
pub struct Unclaimed {
    /// Classes removed.
    pub removed: Vec<u32>,
    /// Classes (or whole devices, when listing failed) that could not be done.
    pub failed: Vec<UnclaimedFailure>,
}

/// A class left behind, or a device whose classes could not be listed.
#[derive(Debug)]
pub struct UnclaimedFailure {
    /// The device.
    pub device: String,
    /// The class; `None` when the device's classes could not be listed.
    pub classid: Option<u32>,
    /// The kernel's answer.
    pub error: EgressError,
}

/// The kernel effects of egress shaping. A class id is `major:minor` with the
/// net_cls primary handle as major and the container's secondary handle as minor.
pub trait EgressKernel: Send + fmt::Debug {
    /// Whether `pid` lives in another network namespace than the shaped devices.
    fn has_own_netns(&self, pid: i32) -> Result<bool, EgressError>;

    /// Shapes a container that shares the host's network namespace (class and leaf
    /// on every shaped device); `cgroup_id` is its cgroup v2 id (cgroup2
    /// classification), which the classifier learns.
    fn add_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), EgressError>;

    /// Re-adopts a host container's class after a restart: the class is set again
    /// (a leaf already there keeps its queue) and the new classifier learns it.
    fn adopt_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), EgressError>;

    /// Shapes a container inside its own network namespace: every device there but
    /// loopback, now and as devices appear. Returns how many devices it has now.
    fn add_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<usize, EgressError>;

    /// Re-attaches to a container's namespace after a restart; its trees and class
    /// are set again, leaves kept.
    fn adopt_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<(), EgressError>;

    /// Changes a container's rate, ceiling and burst wherever it is shaped.
    fn change(&mut self, classid: u32, shape: &Shape) -> Result<(), EgressError>;

    /// Removes a container's shaping (its class, its map entry, or its namespace's
    /// trees); what is already gone is fine.
    fn remove(&mut self, classid: u32, cgroup_id: Option<u64>) -> Result<(), EgressError>;

    /// The container's counters and held parameters, summed over its devices.
    fn stats(&mut self, classid: u32) -> Result<ClassStats, EgressError>;

    /// Removes classes of rein's major on the host devices that `keep` does not
    /// claim (left by containers whose cleanup was lost). A class or a device that
    /// fails is reported and the others are still done.
    fn remove_unclaimed(&mut self, keep: &dyn Fn(u32) -> bool) -> Unclaimed;

    /// Removes one class from the host devices (never a container's own
    /// namespace); a missing class is fine.
    fn remove_host_class(&mut self, classid: u32) -> Result<(), EgressError>;

    /// The shaped host devices' names.
    fn device_names(&self) -> Vec<String>;

    /// The cgroup-to-class map (cgroup2 classification on the real kernel;
    /// diagnostics and tests).
    fn cgroup_map(&self) -> Option<&CgroupClassMap> {
        None
    }
}
