//! The policy: a container's labels, the operator's defaults, allow-list and caps
//! become per-device limits (pure, apart from the device resolver seam).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use rein_core::config::{ConfigError, DeviceRef, Setting, TaskConfig, Value};

use super::device::{DevNum, DeviceError, DeviceResolver};

/// The four throttle keys, in a fixed order.
pub const THROTTLE_KEYS: [&str; 4] = [
    "blkio.read_bps",
    "blkio.write_bps",
    "blkio.read_iops",
    "blkio.write_iops",
];

/// The weight key (cgroup v2 scale, 1 to 10000).
pub const WEIGHT_KEY: &str = "blkio.weight";

/// Limits of one device; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLimits {
    /// The whole disk.
    pub dev: DevNum,
    /// Bytes per second read.
    pub read_bps: Option<u64>,
    /// Bytes per second written.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl DeviceLimits {
    fn slot(&mut self, key: &str) -> &mut Option<u64> {
        match key {
            "blkio.read_bps" => &mut self.read_bps,
            "blkio.write_bps" => &mut self.write_bps,
            "blkio.read_iops" => &mut self.read_iops,
            _ => &mut self.write_iops,
        }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }
}

/// Everything applied to one container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Per-device throttles, sorted by device.
    pub devices: Vec<DeviceLimits>,
    /// Relative weight on the cgroup v2 scale (1-10000).
    pub weight: Option<u64>,
}

impl Limits {
    fn device(&mut self, dev: DevNum) -> &mut DeviceLimits {
        let at = match self.devices.binary_search_by_key(&dev, |d| d.dev) {
            Ok(at) => at,
            Err(at) => {
                self.devices.insert(
                    at,
                    DeviceLimits {
                        dev,
                        ..DeviceLimits::default()
                    },
                );
                at
            }
        };
        &mut self.devices[at]
    }

    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && self.devices.iter().all(|d| !d.is_limited())
    }
}

/// An entry of the operator's allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// The device holding the container's sandbox.
    Sandbox,
    /// Any block device.
    Any,
    /// A block device path (widened to its disk like task-named devices).
    Path(PathBuf),
}

impl Allowed {
    /// Parses `sandbox`, `*` or an absolute `/dev/` path.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sandbox" => Some(Self::Sandbox),
            "*" => Some(Self::Any),
            p if p.starts_with("/dev/") && !p.contains("/..") => Some(Self::Path(p.into())),
            _ => None,
        }
    }
}

/// The operator's caps, per device; `None` is uncapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// `max_read_bps`.
    pub read_bps: Option<u64>,
    /// `max_write_bps`.
    pub write_bps: Option<u64>,
    /// `max_read_iops`.
    pub read_iops: Option<u64>,
    /// `max_write_iops`.
    pub write_iops: Option<u64>,
    /// `max_weight`.
    pub weight: Option<u64>,
}

impl Caps {
    fn of(&self, key: &str) -> (Option<u64>, &'static str) {
        match key {
            "blkio.read_bps" => (self.read_bps, "max_read_bps"),
            "blkio.write_bps" => (self.write_bps, "max_write_bps"),
            "blkio.read_iops" => (self.read_iops, "max_read_iops"),
            "blkio.write_iops" => (self.write_iops, "max_write_iops"),
            _ => (self.weight, "max_weight"),
        }
    }
}

/// The operator's policy (module parameters).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Devices tasks may limit.
    pub allowed: Vec<Allowed>,
    /// Defaults for top-level containers: (key, value as written, parameter name).
    pub defaults: Vec<(&'static str, String, &'static str)>,
    /// Caps.
    pub caps: Caps,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed: vec![Allowed::Sandbox],
            defaults: Vec::new(),
            caps: Caps::default(),
        }
    }
}

/// Formats a value of a key for messages (`10MiB/s`, `100 IOPS`).
pub fn shown(key: &str, v: u64) -> String {
    if key.ends_with("_bps") {
        for (unit, size) in [
            ("GiB/s", 1u64 << 30),
            ("MiB/s", 1 << 20),
            ("KiB/s", 1 << 10),
        ] {
            if v >= size && v.is_multiple_of(size) {
                return format!("{}{unit}", v / size);
            }
        }
        format!("{v}B/s")
    } else if key.ends_with("_iops") {
        format!("{v} IOPS")
    } else {
        v.to_string()
    }
}

impl Policy {
    /// Adds the operator's defaults to a top-level container's configuration.
    pub fn add_defaults(&self, config: &mut TaskConfig) -> Result<(), ConfigError> {
        for (key, raw, param) in &self.defaults {
            config.default_from(key, raw, param)?;
        }
        Ok(())
    }

    /// The limits of a container, or the first error naming the label, value and reason.
    pub fn limits(
        &self,
        config: &TaskConfig,
        sandbox: &Path,
        resolver: &dyn DeviceResolver,
    ) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        let mut allowed: Option<AllowedDevices> = None;
        for key in THROTTLE_KEYS {
            let Some(setting) = config.get(key) else {
                continue;
            };
            let Value::PerDevice(items) = &setting.value else {
                return Err(setting.error("expected per-device values"));
            };
            let mut seen: Vec<(DevNum, &DeviceRef)> = Vec::new();
            for (device, value) in items {
                let v = value
                    .as_u64()
                    .ok_or_else(|| setting.error("expected a number"))?;
                let dev =
                    resolve(device, sandbox, resolver).map_err(|r| setting.error(r.to_string()))?;
                if let Some((_, other)) = seen.iter().find(|(d, _)| *d == dev) {
                    return Err(setting.error(format!(
                        "{} and {} are the same device ({dev})",
                        name(other),
                        name(device)
                    )));
                }
                seen.push((dev, device));
                let allowed = match &mut allowed {
                    Some(a) => a,
                    None => allowed.insert(self.resolve_allowed(sandbox, resolver)),
                };
                if !allowed.permits(dev) {
                    return Err(setting.error(format!(
                        "{} ({dev}) is not in the operator's allow-list (allowed_devices={})",
                        name(device),
                        allowed.shown
                    )));
                }
                if v == 0 {
                    return Err(setting.error("must be above 0 (leave the key out for no limit)"));
                }
                check_cap(setting, key, v, self.caps.of(key))?;
                *limits.device(dev).slot(key) = Some(v);
            }
        }
        if let Some(setting) = config.get(WEIGHT_KEY) {
            let w = setting
                .value
                .as_u64()
                .ok_or_else(|| setting.error("expected a number"))?;
            if !(1..=10_000).contains(&w) {
                return Err(setting.error("must be between 1 and 10000"));
            }
            check_cap(setting, WEIGHT_KEY, w, self.caps.of(WEIGHT_KEY))?;
            limits.weight = Some(w);
        }
        Ok(limits)
    }

    fn resolve_allowed(&self, sandbox: &Path, resolver: &dyn DeviceResolver) -> AllowedDevices {
        let mut out = AllowedDevices {
            any: false,
            devices: Vec::new(),
            shown: String::new(),
        };
        let mut names = Vec::new();
        for entry in &self.allowed {
            // A listed device that is absent right now simply matches nothing.
            match entry {
                Allowed::Any => {
                    out.any = true;
                    names.push("*".to_owned());
                }
                Allowed::Sandbox => {
                    out.devices.extend(resolver.resolve_sandbox(sandbox).ok());
                    names.push("sandbox".to_owned());
                }
                Allowed::Path(p) => {
                    out.devices.extend(resolver.resolve_path(p).ok());
                    names.push(p.display().to_string());
                }
            }
        }
        out.shown = names.join(",");
        out
    }
}

struct AllowedDevices {
    any: bool,
    devices: Vec<DevNum>,
    shown: String,
}

impl AllowedDevices {
    fn permits(&self, dev: DevNum) -> bool {
        self.any || self.devices.contains(&dev)
    }
}

fn check_cap(
    setting: &Setting,
    key: &str,
    v: u64,
    (cap, param): (Option<u64>, &str),
) -> Result<(), ConfigError> {
    match cap {
        Some(cap) if v > cap => Err(setting.error(format!(
            "{} is above the operator's cap of {} ({param})",
            shown(key, v),
            shown(key, cap)
        ))),
        _ => Ok(()),
    }
}

fn resolve(
    device: &DeviceRef,
    sandbox: &Path,
    resolver: &dyn DeviceResolver,
) -> Result<DevNum, DeviceError> {
    match device {
        DeviceRef::Sandbox => resolver.resolve_sandbox(sandbox),
        DeviceRef::Path(p) => resolver.resolve_path(Path::new(p)),
    }
}

fn name(device: &DeviceRef) -> String {
    match device {
        DeviceRef::Sandbox => "the sandbox's device".to_owned(),
        DeviceRef::Path(p) => p.clone(),
    }
}

/// Converts a v2-scale weight (1-10000) to v1 `blkio.weight` (10-1000).
pub fn weight_v1(w: u64) -> u64 {
    10 + (w.clamp(1, 10_000) - 1) * 990 / 9_999
}

/// Converts a v2-scale weight (1-10000) to BFQ's scale (1-1000).
pub fn weight_bfq(w: u64) -> u64 {
    1 + (w.clamp(1, 10_000) - 1) * 999 / 9_999
}
