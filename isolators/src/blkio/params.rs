//! The operator's side of the blkio isolator: module parameters (allowed devices,
//! defaults, caps) and the hierarchy they select.

use rein_core::cgroupfs::{Cgroup, Hierarchy};
use rein_core::config::parse_value;
use rein_core::params::{CommonParams, ParamError, Params};
use rein_core::schema;

use super::error::BlkioError;
use super::limits::{Allowed, Caps, Policy};

/// Parameters of the blkio isolator, besides the common ones.
pub const PARAMS: &[&str] = &[
    "cgroup_version",
    "allowed_devices",
    "default_read_bps",
    "default_write_bps",
    "default_read_iops",
    "default_write_iops",
    "default_weight",
    "max_read_bps",
    "max_write_bps",
    "max_read_iops",
    "max_write_iops",
    "max_weight",
    "sysfs",
];

/// (parameter, key) of the operator's defaults.
const DEFAULTS: [(&str, &str); 5] = [
    ("default_read_bps", "blkio.read_bps"),
    ("default_write_bps", "blkio.write_bps"),
    ("default_read_iops", "blkio.read_iops"),
    ("default_write_iops", "blkio.write_iops"),
    ("default_weight", "blkio.weight"),
];

/// The kernel's default I/O weight (cgroup v2 scale): the weight cap when the operator
/// sets neither `max_weight` nor `default_weight`.
pub const KERNEL_DEFAULT_WEIGHT: u64 = 100;

pub(crate) fn policy_from_params(params: &Params) -> Result<Policy, ParamError> {
    let mut policy = Policy {
        allowed: Vec::new(),
        ..Policy::default()
    };
    let allowed = params.list("allowed_devices");
    for entry in if allowed.is_empty() {
        vec!["sandbox".to_owned()]
    } else {
        allowed
    } {
        let parsed = Allowed::parse(&entry).ok_or_else(|| {
            params.error(
                "allowed_devices",
                format!("'{entry}' is not 'sandbox', '*' or a /dev/ path"),
            )
        })?;
        policy.allowed.push(parsed);
    }
    for (param, key) in DEFAULTS {
        if let Some(raw) = params.raw(param) {
            let spec = schema::lookup(key)
                .ok_or_else(|| params.error(param, format!("'{key}' is not a rein key")))?;
            parse_value(spec.kind, raw).map_err(|reason| params.error(param, reason))?;
            policy.defaults.push((spec.key, raw.to_owned(), param));
        }
    }
    // A task may lower what the operator gives by default, never raise it: an unset cap
    // follows a plain (all-device) default, and the weight cap is the kernel's default
    // weight, so no task takes a larger share than a neighbour that asked for nothing.
    let rate_cap = |max: &str, default: &str| -> Result<Option<u64>, ParamError> {
        Ok(match params.byte_rate(max)? {
            Some(cap) => Some(cap),
            None => params.byte_rate(default).ok().flatten(),
        })
    };
    let count_cap = |max: &str, default: &str| -> Result<Option<u64>, ParamError> {
        Ok(match params.u64(max)? {
            Some(cap) => Some(cap),
            None => params.u64(default).ok().flatten(),
        })
    };
    policy.caps = Caps {
        read_bps: rate_cap("max_read_bps", "default_read_bps")?,
        write_bps: rate_cap("max_write_bps", "default_write_bps")?,
        read_iops: count_cap("max_read_iops", "default_read_iops")?,
        write_iops: count_cap("max_write_iops", "default_write_iops")?,
        weight: Some(count_cap("max_weight", "default_weight")?.unwrap_or(KERNEL_DEFAULT_WEIGHT)),
    };
    Ok(policy)
}

pub(crate) fn find_hierarchy(
    params: &Params,
    common: &CommonParams,
) -> Result<Hierarchy, BlkioError> {
    let wanted = params
        .string("cgroup_version")
        .unwrap_or_else(|| "auto".into());
    let v1 = || Hierarchy::find_v1(&common.mountinfo, "blkio");
    let v2 = || -> Result<Option<Hierarchy>, BlkioError> {
        let Some(h) = Hierarchy::find_v2(&common.mountinfo)? else {
            return Ok(None);
        };
        let controllers = Cgroup::at(h.mount_point()).read("cgroup.controllers")?;
        Ok(controllers
            .split_whitespace()
            .any(|c| c == "io")
            .then_some(h))
    };
    let found = match wanted.as_str() {
        "v1" => v1()?,
        "v2" => v2()?,
        "auto" => match v1()? {
            Some(h) => Some(h),
            None => v2()?,
        },
        _ => {
            return Err(params
                .error("cgroup_version", "expected auto, v1 or v2")
                .into())
        }
    };
    found.ok_or_else(|| BlkioError::NoHierarchy {
        wanted,
        mountinfo: common.mountinfo.clone(),
    })
}
