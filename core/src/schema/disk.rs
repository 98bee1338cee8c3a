//! Keys of the disk quota isolator.

use super::{KeySpec, Kind};

/// Keys of the `disk` group.
pub const KEYS: &[KeySpec] = &[KeySpec {
    key: "disk.mode",
    kind: Kind::Enum(&["account", "enforce", "kill"]),
    help: "account: report usage only; enforce: writes fail at the quota; kill: the \
           container is killed when it goes over its disk plus headroom.",
}];
