//! The real [`EgressKernel`]: the shaping tree on the host's devices, the tc BPF
//! classifier, and the containers shaped in their own network namespaces
//! ([`NetnsShaping`]).

use std::os::fd::AsRawFd;

use tracing::info;

use super::bpf::{self, CgroupClassMap};
use super::error::{class_name, EgressError};
use super::kernel::{EgressKernel, Unclaimed, UnclaimedFailure};
use super::netlink::Netlink;
use super::netns;
use super::netns_shaping::NetnsShaping;
use super::policy::{EgressParams, Shape, DEFAULT_ROUTE};
use super::tc::{self, ClassStats};
use super::tree::{self, Leaf, DEFAULT_MINOR, FILTER_NAME};

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

/// The devices `egress_devices` names ([`DEFAULT_ROUTE`] resolved), with their indexes.
fn find_devices(nl: &mut Netlink, wanted: &[String]) -> Result<Vec<Device>, EgressError> {
    let links = tc::links(nl)?;
    let mut names = Vec::new();
    for name in wanted {
        if name == DEFAULT_ROUTE {
            let index = tc::default_route_device(nl)?.ok_or(EgressError::NoDefaultRoute)?;
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
    names
        .into_iter()
        .map(|name| {
            let link = links
                .iter()
                .find(|l| l.name == name)
                .ok_or_else(|| EgressError::NoSuchDevice(name.clone()))?;
            Ok(Device {
                name,
                index: link.index,
            })
        })
        .collect()
}

impl Shaper {
    /// Opens netlink in the calling thread's namespace, finds the devices, sets up
    /// (or adopts) their trees and installs the classifier.
    pub fn new(
        params: &EgressParams,
        classifier: Classifier,
        major: u16,
        max_containers: u32,
    ) -> Result<Self, EgressError> {
        let home =
            netns::current_netns().map_err(EgressError::io("reading our network namespace"))?;
        let mut nl = Netlink::open().map_err(EgressError::io("opening rtnetlink"))?;
        let devices = find_devices(&mut nl, &params.devices)?;
        for d in &devices {
            tree::ensure_tree(
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
            leaf: Leaf::from_param(params.leaf_qdisc.clone()),
            netns: NetnsShaping::new(major, params.line_rate)?,
            home,
        };
        if !shaper.devices.is_empty() {
            shaper.install_classifier(params.filter_prio, max_containers)?;
        }
        Ok(shaper)
    }

    /// Loads a fresh program (and map) and puts it in place of any earlier one: after
    /// a restart the map is refilled by `adopt_host()`.
    fn install_classifier(&mut self, prio: u16, max_containers: u32) -> Result<(), EgressError> {
        let program = match self.classifier {
            Classifier::NetCls => bpf::load_program(&bpf::classid_program(), FILTER_NAME)
                .map_err(EgressError::bpf("loading the net_cls classifier program"))?,
            Classifier::Cgroup2 { level } => {
                let map = CgroupClassMap::create(max_containers)
                    .map_err(EgressError::bpf("creating the cgroup-to-class BPF map"))?;
                let depth = i32::try_from(level).map_err(|_| EgressError::CgroupLevel(level))?;
                let p =
                    bpf::load_program(&bpf::cgroup_map_program(depth, map.raw_fd()), FILTER_NAME)
                        .map_err(EgressError::bpf("loading the cgroup2 classifier program"))?;
                self.map = Some(map);
                p
            }
        };
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

    fn map_cgroup(&mut self, classid: u32, cgroup_id: Option<u64>) -> Result<(), EgressError> {
        if let (Some(map), Some(id)) = (&self.map, cgroup_id) {
            map.insert(id, classid).map_err(EgressError::bpf(format!(
                "mapping cgroup {id} to class {}",
                class_name(classid)
            )))?;
        }
        Ok(())
    }

    /// Class ids present on the host devices (tests, diagnostics).
    pub fn classes(&mut self) -> Result<Vec<u32>, EgressError> {
        let mut out = Vec::new();
        for d in &self.devices {
            out.extend(tc::classes(&mut self.nl, d.index)?);
        }
        Ok(out)
    }
}

impl EgressKernel for Shaper {
    fn has_own_netns(&self, pid: i32) -> Result<bool, EgressError> {
        let theirs = netns::netns_of(pid)
            .map_err(EgressError::netns(pid, "reading the network namespace"))?;
        Ok(theirs != self.home)
    }

    fn add_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), EgressError> {
        for d in &self.devices {
            tree::add_container_class(
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

    fn adopt_host(
        &mut self,
        classid: u32,
        shape: &Shape,
        cgroup_id: Option<u64>,
    ) -> Result<(), EgressError> {
        for d in &self.devices {
            tree::set_container_class(&mut self.nl, d.index, self.major, classid, shape)?;
        }
        self.map_cgroup(classid, cgroup_id)
    }

    fn add_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<usize, EgressError> {
        self.netns.add(classid, shape, pid, self.leaf.clone())
    }

    fn adopt_netns(&mut self, classid: u32, shape: &Shape, pid: i32) -> Result<(), EgressError> {
        self.netns
            .add(classid, shape, pid, Leaf::Builtin)
            .map(|_| ())
    }

    fn change(&mut self, classid: u32, shape: &Shape) -> Result<(), EgressError> {
        if self.netns.contains(classid) {
            return self.netns.change(classid, shape);
        }
        for d in &self.devices {
            tree::set_container_class(&mut self.nl, d.index, self.major, classid, shape)?;
        }
        Ok(())
    }

    fn remove(&mut self, classid: u32, cgroup_id: Option<u64>) -> Result<(), EgressError> {
        if self.netns.contains(classid) {
            return self.netns.remove(classid);
        }
        if let (Some(map), Some(id)) = (&self.map, cgroup_id) {
            map.remove(id).map_err(EgressError::bpf(format!(
                "removing cgroup {id} from the map"
            )))?;
        }
        for d in &self.devices {
            tc::del_class(&mut self.nl, d.index, classid)?;
        }
        Ok(())
    }

    fn stats(&mut self, classid: u32) -> Result<ClassStats, EgressError> {
        if self.netns.contains(classid) {
            return self.netns.stats(classid);
        }
        let mut sum = ClassStats::default();
        for d in &self.devices {
            sum.add(tc::class_stats(&mut self.nl, d.index, classid)?);
        }
        Ok(sum)
    }

    fn remove_unclaimed(&mut self, keep: &dyn Fn(u32) -> bool) -> Unclaimed {
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
                if !tree::is_container_class(self.major, classid) || keep(classid) {
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

    fn remove_host_class(&mut self, classid: u32) -> Result<(), EgressError> {
        for d in &self.devices {
            tc::del_class(&mut self.nl, d.index, classid).map_err(|source| {
                EgressError::OnDevice {
                    device: d.name.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    fn device_names(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.name.clone()).collect()
    }

    fn cgroup_map(&self) -> Option<&CgroupClassMap> {
        self.map.as_ref()
    }
}
