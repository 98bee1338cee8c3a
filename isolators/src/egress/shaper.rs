//! The shaping tree on the devices and one HTB class per container.
//!
//! ```text
//! <dev> root qdisc  M:  htb default ffff         (created once, then adopted)
//!  |-- filter prio P: bpf "rein_egress"           (packet -> container class)
//!  `-- class M:fffe  htb rate=ceil=line rate      (the link; lets classes borrow)
//!       |-- class M:ffff  rate=ceil=line rate     (unclassified traffic: not ours)
//!       |-- class M:10    rate R1 ceil C1 -> leaf fq_codel   (a container)
//!       `-- class M:11    rate R2 ceil C2 -> leaf fq_codel   (another container)
//! ```
//! M is the net_cls primary handle, a container's class minor its secondary
//! handle, so a net_cls classid is its HTB class id as well. A container with its
//! own network namespace gets the same tree on each of its own devices, with its
//! class as the default class (everything it sends is its own).

use tracing::{info, warn};

use rein_core::isolator::Error;

use super::bpf::{self, CgroupClassMap};
use super::netlink::Netlink;
use super::netns;
use super::netns_shaping::NetnsShaping;
use super::policy::{EgressParams, Shape, DEFAULT_ROUTE};
use super::tc::{self, handle, ClassRates, ClassStats, HeldRates};

/// Minor of the link class every container class hangs below.
pub const LINK_MINOR: u16 = 0xfffe;
/// Minor of the default class (traffic that is not a shaped container's).
pub const DEFAULT_MINOR: u16 = 0xffff;
/// The name of rein's tc filter (`tc filter show` lists it).
pub const FILTER_NAME: &str = "rein_egress";

/// How packets find their class on the host's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classifier {
    /// By the sending socket's net_cls classid.
    NetCls,
    /// By the sending socket's cgroup v2 ancestor at this depth (the containers'
    /// cgroups' level below the cgroup2 root).
    Cgroup2 {
        /// Depth of the containers' cgroups.
        level: u32,
    },
}

#[derive(Debug)]
struct Device {
    name: String,
    index: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Leaf {
    /// Not tried on this kernel yet.
    Untried(String),
    /// Known to work.
    Kind(String),
    /// Keep HTB's built-in FIFO.
    Builtin,
}

/// What [`Shaper::remove_unclaimed`] did.
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
    pub error: Error,
}

/// Creates, changes and removes the containers' classes.
#[derive(Debug)]
pub struct Shaper {
    nl: Netlink,
    major: u16,
    devices: Vec<Device>,
    classifier: Classifier,
    map: Option<CgroupClassMap>,
    leaf: Leaf,
    netns: NetnsShaping,
    home: netns::NetnsId,
}

fn class_name(classid: u32) -> String {
    format!("{:x}:{:x}", classid >> 16, classid & 0xffff)
}

fn line_rates(line_rate: u64) -> ClassRates {
    let burst = (line_rate / 8 / 1000).max(1600);
    ClassRates {
        rate: line_rate,
        ceil: line_rate,
        burst,
        cburst: burst,
    }
}

/// The class parameters of a container's shape.
pub(super) fn container_rates(shape: &Shape) -> ClassRates {
    ClassRates {
        rate: shape.rate,
        ceil: shape.ceil,
        burst: shape.burst,
        cburst: shape.burst,
    }
}

/// What the kernel holds for a container's shape once applied (its rounding of
/// rates and bursts); what is reported when no class could be read back.
pub fn expected_held(shape: &Shape) -> HeldRates {
    tc::held_rates(&container_rates(shape))
}

/// Creates the tree on a device, or adopts it if rein's tree is already there.
pub(super) fn ensure_tree(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    major: u16,
    default_minor: u16,
    line_rate: u64,
) -> Result<(), Error> {
    match tc::root_qdisc(nl, index)? {
        Some((h, kind)) if h == handle(major, 0) && kind == "htb" => {}
        Some((h, kind)) => {
            return Err(format!(
                "device {name} already has a root qdisc {} ({kind}) that is not rein's \
                 HTB {major:x}:; remove it or choose another net_cls_primary_handle",
                class_name(h)
            )
            .into())
        }
        None => {
            tc::add_htb_root(nl, index, major, default_minor)?;
            info!(
                device = name,
                major = format!("{major:x}"),
                "created the egress shaping tree"
            );
        }
    }
    // Upserts: a tree left by an earlier run gets the current line rate.
    let link = handle(major, LINK_MINOR);
    tc::set_class(nl, index, handle(major, 0), link, &line_rates(line_rate))?;
    if default_minor == DEFAULT_MINOR {
        tc::set_class(
            nl,
            index,
            link,
            handle(major, DEFAULT_MINOR),
            &line_rates(line_rate),
        )?;
    }
    Ok(())
}

impl Shaper {
    /// Opens netlink in the calling thread's namespace, finds the devices, sets up
    /// (or adopts) their trees and installs the classifier.
    pub fn new(
        params: &EgressParams,
        classifier: Classifier,
        major: u16,
        max_containers: u32,
    ) -> Result<Self, Error> {
        let home =
            netns::current_netns().map_err(|e| format!("reading our network namespace: {e}"))?;
        let mut nl = Netlink::open().map_err(|e| format!("opening rtnetlink: {e}"))?;
        let links = tc::links(&mut nl)?;
        let mut names = Vec::new();
        for name in &params.devices {
            if name == DEFAULT_ROUTE {
                let index = tc::default_route_device(&mut nl)?.ok_or(
                    "module parameter 'egress_devices' is not set and there is no default \
                     route to find the device from",
                )?;
                names.extend(
                    links
                        .iter()
                        .filter(|l| l.index == index)
                        .map(|l| l.name.clone()),
                );
            } else {
                names.push(name.clone());
            }
        }
        let mut devices = Vec::new();
        for name in names {
            let link = links.iter().find(|l| l.name == name).ok_or_else(|| {
                format!("module parameter 'egress_devices' = '{name}': no such network device")
            })?;
            devices.push(Device {
                name,
                index: link.index,
            });
        }
        for d in &devices {
            ensure_tree(
                &mut nl,
                d.index,
                &d.name,
                major,
                DEFAULT_MINOR,
                params.line_rate,
            )?;
        }
        let mut shaper = Self {
            nl,
            major,
            devices,
            classifier,
            map: None,
            leaf: params
                .leaf_qdisc
                .clone()
                .map_or(Leaf::Builtin, Leaf::Untried),
            netns: NetnsShaping::new(major, params.line_rate)?,
            home,
        };
        if !shaper.devices.is_empty() {
            shaper.install_classifier(params.filter_prio, max_containers)?;
        }
        Ok(shaper)
    }

    /// Loads a fresh program (and map) and puts it in place of any earlier one: after
    /// a restart the map is refilled by `adopt()`.
    fn install_classifier(&mut self, prio: u16, max_containers: u32) -> Result<(), Error> {
        let program = match self.classifier {
            Classifier::NetCls => bpf::load_program(&bpf::classid_program(), FILTER_NAME)?,
            Classifier::Cgroup2 { level } => {
                let map = CgroupClassMap::create(max_containers)
                    .map_err(|e| format!("creating the cgroup-to-class BPF map: {e}"))?;
                let level = i32::try_from(level).map_err(|_| "cgroup level out of range")?;
                let p =
                    bpf::load_program(&bpf::cgroup_map_program(level, map.raw_fd()), FILTER_NAME)?;
                self.map = Some(map);
                p
            }
        };
        use std::os::fd::AsRawFd;
        for d in &self.devices {
            tc::set_bpf_filter(
                &mut self.nl,
                d.index,
                self.major,
                prio,
                program.as_raw_fd(),
                FILTER_NAME,
            )?;
        }
        // The filters hold the program; our descriptor is no longer needed.
        Ok(())
    }

    /// Whether `pid` lives in another network namespace than the shaper's devices.
    pub fn has_own_netns(&self, pid: i32) -> Result<bool, Error> {
        let theirs = netns::netns_of(pid)
            .map_err(|e| format!("reading the network namespace of pid {pid}: {e}"))?;
        Ok(theirs != self.home)
    }

    /// The shaped devices' names.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.name.clone()).collect()
    }

    /// The cgroup-to-class map (cgroup2 classification).
    pub fn cgroup_map(&self) -> Option<&CgroupClassMap> {
        self.map.as_ref()
    }

    /// Adds a container's class and leaf on one device.
    fn add_class(
        nl: &mut Netlink,
        leaf: &mut Leaf,
        index: u32,
        major: u16,
        classid: u32,
        shape: &Shape,
    ) -> Result<(), Error> {
        tc::set_class(
            nl,
            index,
            handle(major, LINK_MINOR),
            classid,
            &container_rates(shape),
        )?;
        match leaf.clone() {
            Leaf::Builtin => {}
            Leaf::Kind(kind) => tc::add_leaf(nl, index, classid, &kind)?,
            Leaf::Untried(kind) => match tc::add_leaf(nl, index, classid, &kind) {
                Ok(()) => *leaf = Leaf::Kind(kind),
                Err(e) if tc::is_unknown_kind(&e) => {
                    warn!(
                        qdisc = kind,
                        "the kernel has no such qdisc; container classes keep HTB's FIFO"
                    );
                    *leaf = Leaf::Builtin;
                }
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Shapes a container that shares the host's network namespace; `cgroup_id`
    /// is its cgroup v2 id (cgroup2 classification).
    pub fn add_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), Error> {
        for d in &self.devices {
            Self::add_class(
                &mut self.nl,
                &mut self.leaf,
                d.index,
                self.major,
                classid,
                shape,
            )?;
        }
        self.map_cgroup(classid, cgroup_id)
    }

    fn map_cgroup(&mut self, classid: u32, cgroup_id: Option<u64>) -> Result<(), Error> {
        if let (Some(map), Some(id)) = (&self.map, cgroup_id) {
            map.insert(id, classid).map_err(|e| {
                format!("mapping cgroup {id} to class {}: {e}", class_name(classid))
            })?;
        }
        Ok(())
    }

    /// Re-adopts a container's class after a restart: the class is set again (its
    /// leaf, if there, is kept with its queue) and the new classifier learns it.
    pub fn adopt_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), Error> {
        let parent = handle(self.major, LINK_MINOR);
        for d in &self.devices {
            tc::set_class(
                &mut self.nl,
                d.index,
                parent,
                classid,
                &container_rates(shape),
            )?;
        }
        self.map_cgroup(classid, cgroup_id)
    }

    /// Shapes a container inside its own network namespace: every device there but
    /// loopback, now and as devices appear. Returns how many devices it has now.
    pub fn add_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<usize, Error> {
        let leaf = match &self.leaf {
            Leaf::Untried(k) | Leaf::Kind(k) => Some(k.clone()),
            Leaf::Builtin => None,
        };
        self.netns.add(classid, shape, pid, leaf)
    }

    /// Re-attaches to a container's namespace after a restart; its trees and class
    /// are set again, leaves kept.
    pub fn adopt_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<(), Error> {
        self.netns.add(classid, shape, pid, None).map(|_| ())
    }

    /// Changes a container's rate, ceiling and burst.
    pub fn change(&mut self, classid: u32, shape: &Shape) -> Result<(), Error> {
        let rates = container_rates(shape);
        let parent = handle(self.major, LINK_MINOR);
        if self.netns.contains(classid) {
            return self.netns.change(classid, shape);
        }
        for d in &self.devices {
            tc::set_class(&mut self.nl, d.index, parent, classid, &rates)?;
        }
        Ok(())
    }

    /// Removes a container's shaping; what is already gone is fine.
    pub fn remove(&mut self, classid: u32, cgroup_id: Option<u64>) -> Result<(), Error> {
        if self.netns.contains(classid) {
            return self.netns.remove(classid);
        }
        if let (Some(map), Some(id)) = (&self.map, cgroup_id) {
            map.remove(id)?;
        }
        for d in &self.devices {
            tc::del_class(&mut self.nl, d.index, classid)?;
        }
        Ok(())
    }

    /// The container's counters, summed over its devices.
    pub fn stats(&mut self, classid: u32) -> Result<ClassStats, Error> {
        let mut sum = ClassStats::default();
        let mut add = |s: Option<ClassStats>| {
            if let Some(s) = s {
                sum.bytes += s.bytes;
                sum.packets += s.packets;
                sum.drops += s.drops;
                sum.held = sum.held.or(s.held);
            }
        };
        if self.netns.contains(classid) {
            return self.netns.stats(classid);
        } else {
            for d in &self.devices {
                add(tc::class_stats(&mut self.nl, d.index, classid)?);
            }
        }
        Ok(sum)
    }

    /// Removes classes of rein's major on the host devices that `keep` does not
    /// claim (left by containers whose cleanup was lost). A class or a device that
    /// fails is reported and the others are still done.
    pub fn remove_unclaimed(&mut self, keep: impl Fn(u32) -> bool) -> Unclaimed {
        let mut out = Unclaimed::default();
        for d in &self.devices {
            let classes = match tc::classes(&mut self.nl, d.index) {
                Ok(c) => c,
                Err(e) => {
                    out.failed.push(UnclaimedFailure {
                        device: d.name.clone(),
                        classid: None,
                        error: e.into(),
                    });
                    continue;
                }
            };
            for classid in classes {
                let minor = classid & 0xffff;
                let ours = classid >> 16 == u32::from(self.major)
                    && minor != u32::from(LINK_MINOR)
                    && minor != u32::from(DEFAULT_MINOR);
                if !ours || keep(classid) {
                    continue;
                }
                info!(
                    device = d.name,
                    class = class_name(classid),
                    "removing an orphaned egress class"
                );
                match tc::del_class(&mut self.nl, d.index, classid) {
                    Ok(()) => out.removed.push(classid),
                    Err(e) => out.failed.push(UnclaimedFailure {
                        device: d.name.clone(),
                        classid: Some(classid),
                        error: e.into(),
                    }),
                }
            }
        }
        out
    }

    /// Removes one class from the host devices (never a container's own namespace);
    /// a missing class is fine.
    pub fn remove_host_class(&mut self, classid: u32) -> Result<(), Error> {
        for d in &self.devices {
            tc::del_class(&mut self.nl, d.index, classid)
                .map_err(|e| format!("on device {}: {e}", d.name))?;
        }
        Ok(())
    }

    /// Class ids present on the host devices (tests, diagnostics).
    pub fn classes(&mut self) -> Result<Vec<u32>, Error> {
        let mut out = Vec::new();
        for d in &self.devices {
            out.extend(tc::classes(&mut self.nl, d.index)?);
        }
        Ok(out)
    }
}
