//! Keys of the block I/O isolator.

use super::{KeySpec, Kind};

/// Keys of the `blkio` group.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "blkio.read_bps",
        kind: Kind::PerDevice(&Kind::ByteRate),
        help: "Read bandwidth limit, for the sandbox's device or per device (sandbox=10MiB/s,/dev/sdb=5MiB/s).",
    },
    KeySpec {
        key: "blkio.write_bps",
        kind: Kind::PerDevice(&Kind::ByteRate),
        help: "Write bandwidth limit, per device like blkio.read_bps.",
    },
    KeySpec {
        key: "blkio.read_iops",
        kind: Kind::PerDevice(&Kind::Count),
        help: "Read operations per second, per device like blkio.read_bps.",
    },
    KeySpec {
        key: "blkio.write_iops",
        kind: Kind::PerDevice(&Kind::Count),
        help: "Write operations per second, per device like blkio.read_bps.",
    },
    KeySpec {
        key: "blkio.weight",
        kind: Kind::Count,
        help: "Relative I/O weight, 1 to 10000 (cgroup v2 scale; converted for v1 and BFQ).",
    },
];
