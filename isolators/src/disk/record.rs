//! What is kept per container (the persisted record) and what follows from it:
//! the kernel limits of its mode, and the quota of its `disk` resource.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use rein_core::Resources;

use super::kernel::Limits;
use super::settings::Mode;

/// A mebibyte, Mesos's unit of disk.
pub(crate) const MB: u64 = 1 << 20;

/// How a container's usage is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A project quota with this id.
    Quota {
        /// The project id set on the sandbox.
        project: u32,
        /// Whether the filesystem enforces project limits (else: kill at the limit).
        enforcing: bool,
        /// Whether it is ext4 (root bypasses its quotas with CAP_SYS_RESOURCE).
        ext4: bool,
    },
    /// Periodic scans of the sandbox.
    Scan,
}

/// What is persisted per top-level container (and kept after cleanup until the
/// sandbox is gone, so the project id is never handed out twice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The sandbox.
    pub sandbox: PathBuf,
    /// The chosen mode.
    pub mode: Mode,
    /// The backend.
    pub backend: Backend,
    /// The quota (the disk resource), in bytes.
    pub limit: Option<u64>,
    /// The container was cleaned up; only the project id awaits its sandbox's removal.
    #[serde(default)]
    pub released: bool,
}

pub(crate) fn limit_bytes(resources: &Resources) -> Option<u64> {
    let mb = resources.disk_mb?;
    if !mb.is_finite() || mb <= 0.0 {
        return None;
    }
    // Mesos counts disk in whole MB (2^20 bytes); clamped, so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = mb.floor().min(1e12) as u64;
    Some(whole * MB)
}

pub(crate) fn megabytes(bytes: u64) -> f64 {
    // For messages and the limitation's resource; precision loss is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / MB as f64;
    mb
}

/// The kernel limits for a record: hard at the quota when enforcing, soft at the
/// quota and hard at quota plus headroom in kill mode, none otherwise.
pub fn limits_for(record: &Record, headroom: u64) -> Limits {
    let Some(limit) = record.limit else {
        return Limits::default();
    };
    match record.mode {
        Mode::Enforce => Limits {
            soft: limit,
            hard: limit,
        },
        Mode::Kill => Limits {
            soft: limit,
            hard: limit.saturating_add(headroom),
        },
        Mode::Account | Mode::Off => Limits::default(),
    }
}
