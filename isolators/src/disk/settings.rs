//! The operator's settings of the disk isolator (module parameters) and the modes
//! a container may ask for.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use rein_core::params::{CommonParams, ParamError, Params};

use super::record::MB;
use super::scan::ScanOptions;

/// Parameters of the disk isolator, besides the common ones.
pub const PARAMS: &[&str] = &[
    "project_ids",
    "default_mode",
    "allowed_modes",
    "allow_opt_out",
    "headroom",
    "scan_interval",
    "scan_workers",
    "backend",
    "project_walk_max_entries",
    "project_audit_interval",
];

/// What the isolator does with a container's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report usage only.
    Account,
    /// Writes fail at the quota (killed at the quota where the filesystem cannot
    /// enforce).
    Enforce,
    /// Killed above the quota; writes fail only at quota plus headroom.
    Kill,
    /// Neither accounted nor limited.
    Off,
}

impl Mode {
    /// Parses a mode word of `disk.mode` / the parameters.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word.trim() {
            "account" => Mode::Account,
            "enforce" => Mode::Enforce,
            "kill" => Mode::Kill,
            "off" => Mode::Off,
            _ => return None,
        })
    }

    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Account => "account",
            Mode::Enforce => "enforce",
            Mode::Kill => "kill",
            Mode::Off => "off",
        }
    }
}

/// The operator's settings (module parameters).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `project_ids`: the project id range, inclusive (`[5000-1004999]`, a million
    /// ids). Ids are reclaimed at cleanup; only sandboxes whose id could not be
    /// cleared hold theirs until garbage collection.
    pub project_ids: (u32, u32),
    /// `default_mode`: the mode of containers that do not choose one (`enforce`).
    pub default_mode: Mode,
    /// `allowed_modes`: the modes containers may choose (`account,enforce,kill`).
    pub allowed_modes: Vec<Mode>,
    /// `allow_opt_out`: whether `disk.mode=off` is accepted (`false`).
    pub allow_opt_out: bool,
    /// `headroom`: in kill mode, how far above the quota writes still succeed (`10MB`).
    pub headroom: u64,
    /// `scan_interval`: how often usage is scanned and kill mode checked (`15s`).
    pub scan_interval: Duration,
    /// `scan_workers`: threads that scan, shared by all containers (`2`).
    pub scan_workers: usize,
    /// `backend`: `auto` (quota where the filesystem has one) or `scan` (always scan).
    pub force_scan: bool,
    /// `allow_debug_panic` (common parameter).
    pub allow_debug_panic: bool,
    /// `project_walk_max_entries`: the most entries one walk of a sandbox visits
    /// when it sets, clears or repairs project ids (`1000000`).
    pub walk_max_entries: u64,
    /// `project_audit_interval`: how often every sandbox's files are set back to
    /// their container's project id (`60s`; `0s` turns the audit off).
    pub audit_interval: Duration,
}

/// The first and last id of the default `project_ids`: a million ids, so that even
/// ids held until garbage collection (a week by default) last 140 launches an hour.
pub const DEFAULT_PROJECT_IDS: (u32, u32) = (5000, 1_004_999);

impl Default for Settings {
    fn default() -> Self {
        Self {
            project_ids: DEFAULT_PROJECT_IDS,
            default_mode: Mode::Enforce,
            allowed_modes: vec![Mode::Account, Mode::Enforce, Mode::Kill],
            allow_opt_out: false,
            headroom: 10 * MB,
            scan_interval: Duration::from_secs(15),
            scan_workers: 2,
            force_scan: false,
            allow_debug_panic: false,
            walk_max_entries: 1_000_000,
            audit_interval: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// Reads the settings from module parameters.
    pub fn from_params(params: &Params, common: &CommonParams) -> Result<Self, ParamError> {
        let mut s = Settings {
            allow_debug_panic: common.allow_debug_panic,
            ..Settings::default()
        };
        if let Some((a, b)) = params.range("project_ids")? {
            let (Ok(a), Ok(b)) = (u32::try_from(a), u32::try_from(b)) else {
                return Err(params.error("project_ids", "project ids are 32-bit numbers"));
            };
            if b == 0 {
                return Err(params.error("project_ids", "project id 0 is every file's default"));
            }
            s.project_ids = (a, b);
        }
        let mode = |name: &str, word: &str| {
            Mode::parse(word).ok_or_else(|| {
                params.error(
                    name,
                    format!("'{word}' is not one of account, enforce, kill, off"),
                )
            })
        };
        if params.raw("allowed_modes").is_some() {
            s.allowed_modes = params
                .list("allowed_modes")
                .iter()
                .map(|w| mode("allowed_modes", w))
                .collect::<Result<_, _>>()?;
            if s.allowed_modes.contains(&Mode::Off) {
                return Err(params.error("allowed_modes", "use allow_opt_out=true to allow 'off'"));
            }
        }
        if let Some(word) = params.raw("default_mode") {
            s.default_mode = mode("default_mode", word)?;
        }
        s.allow_opt_out = params.bool("allow_opt_out")?.unwrap_or(false);
        if !s.allowed_modes.contains(&s.default_mode) && s.default_mode != Mode::Off {
            return Err(params.error("default_mode", "not among allowed_modes"));
        }
        if let Some(h) = params.bytes("headroom")? {
            s.headroom = h;
        }
        if let Some(d) = params.duration("scan_interval")? {
            if d < Duration::from_millis(100) {
                return Err(params.error("scan_interval", "at least 100ms"));
            }
            s.scan_interval = d;
        }
        if let Some(n) = params.u64("scan_workers")? {
            s.scan_workers = usize::try_from(n)
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| params.error("scan_workers", "between 1 and 64"))?;
        }
        if let Some(n) = params.u64("project_walk_max_entries")? {
            if n < 1000 {
                return Err(params.error("project_walk_max_entries", "at least 1000"));
            }
            s.walk_max_entries = n;
        }
        if let Some(d) = params.duration("project_audit_interval")? {
            if !d.is_zero() && d < Duration::from_secs(1) {
                return Err(params.error("project_audit_interval", "0s (off) or at least 1s"));
            }
            s.audit_interval = d;
        }
        s.force_scan = match params.raw("backend").map(str::trim) {
            None | Some("auto") => false,
            Some("scan") => true,
            Some(_) => return Err(params.error("backend", "expected auto or scan")),
        };
        Ok(s)
    }

    pub(crate) fn scan_options(&self) -> ScanOptions {
        ScanOptions {
            workers: self.scan_workers,
            low_priority: true,
        }
    }
}
