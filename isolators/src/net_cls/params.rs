//! Building the net_cls isolator from its module parameters: the handle range,
//! the hierarchy (net_cls, or cgroup2 for shaping without one) and egress shaping.

use tracing::info;

use rein_core::cgroupfs::{Hierarchy, Version};
use rein_core::isolator::Error;
use rein_core::params::{CommonParams, Params, COMMON_PARAMS};
use rein_core::state::StateStore;

use crate::egress::{self, ClassifierChoice, EgressKernel, EgressParams, Shaper};

use super::error::NetClsError;
use super::{HandleAllocator, NetClsIsolator, PARAMS};

impl NetClsIsolator {
    /// Builds the isolator from module parameters; locates (or mounts, where allowed)
    /// the net_cls hierarchy.
    pub fn from_params(pairs: &[(String, String)]) -> Result<Self, Error> {
        let known: Vec<&str> = COMMON_PARAMS
            .iter()
            .chain(PARAMS)
            .chain(egress::PARAMS)
            .copied()
            .collect();
        let params = Params::new(pairs, &known)?;
        let common = CommonParams::from_params(&params)?;
        let egress_params = EgressParams::from_params(&params)?;
        let primary = params
            .u64("net_cls_primary_handle")?
            .ok_or_else(|| params.error("net_cls_primary_handle", "required (e.g. 0x1)"))?;
        let primary = u16::try_from(primary)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                params.error("net_cls_primary_handle", "must be a 16-bit handle above 0")
            })?;
        let (first, last) = params
            .range("net_cls_secondary_handles")?
            .unwrap_or((1, 0xffff));
        let (first, last) = match (u16::try_from(first), u16::try_from(last)) {
            (Ok(a), Ok(b)) if b >= 1 => (a, b),
            _ => {
                return Err(params
                    .error("net_cls_secondary_handles", "must be within 0x1-0xffff")
                    .into())
            }
        };
        let choice = egress_params.as_ref().map(|e| e.classifier);
        let v1 = match choice {
            Some(ClassifierChoice::Cgroup2) => None,
            _ => Hierarchy::find_v1(&common.mountinfo, "net_cls")?,
        };
        let mount = params.bool("mount_net_cls")?.unwrap_or(false);
        let hierarchy = match v1 {
            Some(h) => h,
            None if choice == Some(ClassifierChoice::Cgroup2)
                || (choice == Some(ClassifierChoice::Auto) && !mount) =>
            {
                Hierarchy::find_v2(&common.mountinfo)?.ok_or_else(|| {
                    NetClsError::NoHierarchyToShape {
                        mountinfo: common.mountinfo.clone(),
                    }
                })?
            }
            None if mount => {
                let target = common.cgroups_hierarchy.join("net_cls");
                info!(target = %target.display(), "mounting the net_cls hierarchy");
                Hierarchy::find_or_mount_v1(&common.mountinfo, "net_cls", &target)?
            }
            None => {
                return Err(NetClsError::NoNetCls {
                    mountinfo: common.mountinfo.clone(),
                }
                .into())
            }
        };
        let store = StateStore::open(&common.state_dir, "net_cls")?;
        let allocator = HandleAllocator::new(primary, first, last);
        let capacity = u32::try_from(allocator.capacity()).unwrap_or(u32::MAX);
        let isolator = Self::new(hierarchy, &common, allocator, store);
        match egress_params {
            None => Ok(isolator),
            Some(ep) => {
                let classifier = match isolator.hierarchy.version() {
                    Version::V1 => egress::Classifier::NetCls,
                    Version::V2 => egress::Classifier::Cgroup2 {
                        level: cgroup_level(&common),
                    },
                };
                let shaper = Shaper::new(&ep, classifier, primary, capacity)?;
                info!(devices = ?shaper.device_names(), ?classifier, "egress shaping enabled");
                Ok(isolator.with_egress(ep, shaper))
            }
        }
    }
}

/// Depth of the containers' cgroups below the cgroup2 root: the cgroups root's
/// components, plus the container's own directory.
fn cgroup_level(common: &CommonParams) -> u32 {
    u32::try_from(common.cgroups_root.components().count() + 1).unwrap_or(u32::MAX)
}
