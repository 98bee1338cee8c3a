//! Keys of the network isolators (`net_cls` and egress shaping).

use super::{KeySpec, Kind};

/// Keys of the `net` group.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "net.egress.rate",
        kind: Kind::Bandwidth,
        help: "Guaranteed egress rate of the container (e.g. 100mbit, 10MB/s); at most the \
               operator's egress_max_rate.",
    },
    KeySpec {
        key: "net.egress.ceil",
        kind: Kind::Bandwidth,
        help: "Egress ceiling the container may borrow up to when the link is idle (default: the \
               rate); at most the operator's egress_max_rate.",
    },
    KeySpec {
        key: "net.egress.burst",
        kind: Kind::Bytes,
        help: "Bytes the container may send at once above its rate (e.g. 64KiB, at least \
               1600; default: 10 ms at the rate); at most the operator's egress_max_burst.",
    },
];
