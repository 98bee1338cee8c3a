//! The kernel's two interfaces for block I/O control, behind one type:
//! cgroup v1 `blkio.*` files and cgroup v2 `io.*` files. File formats are parsed and
//! produced by pure functions; reads and writes go through `rein_core::cgroupfs`.

use std::collections::BTreeMap;
use std::path::Path;

use rein_core::cgroupfs::{Cgroup, Hierarchy, Version};
use rein_core::isolator::BlkioDevice;

use super::device::DevNum;
use super::error::BlkioError;
use super::limits::{weight_bfq, weight_v1, DeviceLimits, Limits};

/// v1 throttle files, in the order of `DeviceLimits`' fields.
const V1_FILES: [&str; 4] = [
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
];

/// Which interface a hierarchy offers.
#[derive(Debug, Clone)]
pub struct Controller {
    hierarchy: Hierarchy,
}

impl Controller {
    /// The controller of a v1 blkio hierarchy or a v2 unified hierarchy.
    pub fn new(hierarchy: Hierarchy) -> Self {
        Self { hierarchy }
    }

    /// The hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// v1 or v2.
    pub fn version(&self) -> Version {
        self.hierarchy.version()
    }

    /// The cgroup that holds the processes: v2 keeps them in `leaf` (Mesos's layout),
    /// since a v2 cgroup with controllers enabled for children may hold no processes.
    pub fn process_cgroup(&self, cgroup: &Cgroup) -> Cgroup {
        match self.version() {
            Version::V1 => cgroup.clone(),
            Version::V2 => cgroup.child("leaf"),
        }
    }

    /// Creates a container's cgroup (and v2 leaf).
    pub fn create(&self, cgroup: &Cgroup) -> Result<(), BlkioError> {
        self.process_cgroup(cgroup).create()?;
        Ok(())
    }

    /// v2: enables `io` in `cgroup.subtree_control` of every ancestor of `cgroup`,
    /// from the hierarchy's root down, so the container's cgroup gets `io.*` files.
    pub fn enable_chain(&self, cgroup: &Cgroup) -> Result<(), BlkioError> {
        if self.version() == Version::V1 {
            return Ok(());
        }
        let root = self.hierarchy.mount_point();
        let relative =
            cgroup
                .path()
                .strip_prefix(root)
                .map_err(|_| BlkioError::OutsideHierarchy {
                    path: cgroup.path().to_owned(),
                    root: root.to_owned(),
                })?;
        let mut at = self.hierarchy.root();
        for part in relative.iter() {
            enable_io(&at)?;
            at = at.child(part);
        }
        Ok(())
    }

    /// Writes the limits to a container's cgroup.
    pub fn apply(&self, cgroup: &Cgroup, limits: &Limits) -> Result<(), BlkioError> {
        match self.version() {
            Version::V1 => {
                for d in &limits.devices {
                    for (file, value) in V1_FILES.iter().zip(fields(d)) {
                        if let Some(v) = value {
                            cgroup.write(file, &format!("{} {v}", d.dev))?;
                        }
                    }
                }
            }
            Version::V2 => {
                for d in limits.devices.iter().filter(|d| d.is_limited()) {
                    cgroup.write("io.max", &io_max_line(d))?;
                }
            }
        }
        if let Some(w) = limits.weight {
            self.apply_weight(cgroup, w)?;
        }
        Ok(())
    }

    fn apply_weight(&self, cgroup: &Cgroup, w: u64) -> Result<(), BlkioError> {
        let (data, file) = match self.version() {
            Version::V1 if cgroup.has("blkio.bfq.weight") => {
                (weight_bfq(w).to_string(), "blkio.bfq.weight")
            }
            Version::V1 if cgroup.has("blkio.weight") => (weight_v1(w).to_string(), "blkio.weight"),
            Version::V2 if cgroup.has("io.weight") => (format!("default {w}"), "io.weight"),
            Version::V2 if cgroup.has("io.bfq.weight") => {
                (format!("default {}", weight_bfq(w)), "io.bfq.weight")
            }
            Version::V1 => {
                return Err(no_weight(
                    cgroup.path(),
                    "blkio.bfq.weight nor blkio.weight",
                ))
            }
            Version::V2 => return Err(no_weight(cgroup.path(), "io.weight nor io.bfq.weight")),
        };
        cgroup.write(file, &data)?;
        Ok(())
    }

    /// Reads back the throttles a cgroup holds (weights are not read back).
    pub fn read_limits(&self, cgroup: &Cgroup) -> Result<Vec<DeviceLimits>, BlkioError> {
        let mut out: BTreeMap<DevNum, DeviceLimits> = BTreeMap::new();
        match self.version() {
            Version::V1 => {
                for (i, file) in V1_FILES.iter().enumerate() {
                    for (dev, v) in parse_v1_throttle(&cgroup.read(file)?) {
                        let d = out.entry(dev).or_insert_with(|| DeviceLimits {
                            dev,
                            ..DeviceLimits::default()
                        });
                        *[
                            &mut d.read_bps,
                            &mut d.write_bps,
                            &mut d.read_iops,
                            &mut d.write_iops,
                        ][i] = Some(v);
                    }
                }
            }
            Version::V2 => {
                for d in parse_io_max(&cgroup.read("io.max")?) {
                    out.insert(d.dev, d);
                }
            }
        }
        Ok(out.into_values().filter(DeviceLimits::is_limited).collect())
    }

    /// Per-device counters of a container's cgroup (its descendants included).
    pub fn stats(&self, cgroup: &Cgroup) -> Result<Vec<BlkioDevice>, BlkioError> {
        match self.version() {
            Version::V1 => {
                let pick = |name: &str| {
                    let recursive = format!("{name}_recursive");
                    if cgroup.has(&recursive) {
                        recursive
                    } else {
                        name.to_owned()
                    }
                };
                let bytes = cgroup.read(&pick("blkio.throttle.io_service_bytes"))?;
                let ops = cgroup.read(&pick("blkio.throttle.io_serviced"))?;
                Ok(parse_v1_stats(&bytes, &ops))
            }
            Version::V2 => Ok(parse_io_stat(&cgroup.read("io.stat")?)),
        }
    }
}

fn no_weight(path: &Path, files: &'static str) -> BlkioError {
    BlkioError::NoWeightFile {
        path: path.to_owned(),
        files,
    }
}

fn enable_io(cgroup: &Cgroup) -> Result<(), BlkioError> {
    let enabled = cgroup.read("cgroup.subtree_control")?;
    if enabled.split_whitespace().any(|c| c == "io") {
        return Ok(());
    }
    let available = cgroup.read("cgroup.controllers")?;
    if !available.split_whitespace().any(|c| c == "io") {
        return Err(BlkioError::IoUnavailable {
            path: cgroup.path().to_owned(),
            available: available.trim().to_owned(),
        });
    }
    cgroup.write("cgroup.subtree_control", "+io")?;
    Ok(())
}

fn fields(d: &DeviceLimits) -> [Option<u64>; 4] {
    [d.read_bps, d.write_bps, d.read_iops, d.write_iops]
}

/// One `io.max` line: `8:0 rbps=10485760 wbps=max riops=max wiops=100`.
pub fn io_max_line(d: &DeviceLimits) -> String {
    let v = |x: Option<u64>| x.map_or_else(|| "max".to_owned(), |v| v.to_string());
    format!(
        "{} rbps={} wbps={} riops={} wiops={}",
        d.dev,
        v(d.read_bps),
        v(d.write_bps),
        v(d.read_iops),
        v(d.write_iops)
    )
}

/// The lines of a v2 file keyed by device (`8:0 key=value key=value`): each
/// device with its `key=value` pairs; lines without a device are skipped.
fn keyed_lines(text: &str) -> impl Iterator<Item = (DevNum, impl Iterator<Item = (&str, &str)>)> {
    text.lines().filter_map(|line| {
        let mut parts = line.split_whitespace();
        let dev = parts.next().and_then(DevNum::parse)?;
        Some((dev, parts.filter_map(|kv| kv.split_once('='))))
    })
}

/// Sets each slot whose key has a value in `pairs` that `parse` accepts;
/// other keys and unparsable values are passed over.
fn set_keyed<'a, T, const N: usize>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    mut slots: [(&str, &mut T); N],
    parse: impl Fn(&str) -> Option<T>,
) {
    for (k, v) in pairs {
        if let Some((_, slot)) = slots.iter_mut().find(|(key, _)| *key == k) {
            if let Some(v) = parse(v) {
                **slot = v;
            }
        }
    }
}

/// Parses `io.max`.
pub fn parse_io_max(text: &str) -> Vec<DeviceLimits> {
    let mut out = Vec::new();
    for (dev, pairs) in keyed_lines(text) {
        let mut d = DeviceLimits {
            dev,
            ..DeviceLimits::default()
        };
        let slots = [
            ("rbps", &mut d.read_bps),
            ("wbps", &mut d.write_bps),
            ("riops", &mut d.read_iops),
            ("wiops", &mut d.write_iops),
        ];
        // `max` is no limit.
        set_keyed(pairs, slots, |v| Some(v.parse().ok()));
        out.push(d);
    }
    out
}

/// Parses a v1 throttle file (`8:0 10485760` per line).
pub fn parse_v1_throttle(text: &str) -> Vec<(DevNum, u64)> {
    text.lines()
        .filter_map(|line| {
            let (dev, v) = line.split_once(' ')?;
            Some((DevNum::parse(dev)?, v.trim().parse().ok()?))
        })
        .collect()
}

fn entry(map: &mut BTreeMap<DevNum, BlkioDevice>, dev: DevNum) -> &mut BlkioDevice {
    map.entry(dev).or_insert_with(|| BlkioDevice {
        major: dev.major,
        minor: dev.minor,
        ..BlkioDevice::default()
    })
}

/// Parses v1 `blkio.throttle.io_service_bytes` and `io_serviced` (`8:0 Read 4096`).
pub fn parse_v1_stats(bytes: &str, ops: &str) -> Vec<BlkioDevice> {
    let mut map = BTreeMap::new();
    for (text, is_bytes) in [(bytes, true), (ops, false)] {
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(dev), Some(op), Some(v)) = (
                parts.next().and_then(DevNum::parse),
                parts.next(),
                parts.next().and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let d = entry(&mut map, dev);
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes = v,
                ("Write", true) => d.write_bytes = v,
                ("Read", false) => d.read_ops = v,
                ("Write", false) => d.write_ops = v,
                _ => {}
            }
        }
    }
    map.into_values().collect()
}

/// Parses v2 `io.stat` (`8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`).
pub fn parse_io_stat(text: &str) -> Vec<BlkioDevice> {
    let mut map = BTreeMap::new();
    for (dev, pairs) in keyed_lines(text) {
        let d = entry(&mut map, dev);
        let slots = [
            ("rbytes", &mut d.read_bytes),
            ("wbytes", &mut d.write_bytes),
            ("rios", &mut d.read_ops),
            ("wios", &mut d.write_ops),
        ];
        set_keyed(pairs, slots, |v| v.parse().ok());
    }
    map.into_values().collect()
}
