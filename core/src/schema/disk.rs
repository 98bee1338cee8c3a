//! Keys of the disk quota isolator.

use super::{KeySpec, Kind};

/// The modes a container may ask for with `disk.mode`.
pub const MODES: &[&str] = &["account", "enforce", "kill", "off"];

/// Keys of the `disk` group.
pub const KEYS: &[KeySpec] = &[KeySpec {
    key: "disk.mode",
    kind: Kind::Enum(MODES),
    help: "account: report usage only; enforce: writes fail at the quota (EDQUOT or \
           ENOSPC); kill: the container is killed when it goes over its disk resource \
           (writes fail at disk plus headroom); off: no quota and no accounting, where \
           the operator allows opting out. Modes the operator did not allow are refused.",
}];
