//! Egress traffic shaping per container, behind the `net_cls` isolator kind.
//!
//! Policy ([`policy`]): the operator's module parameters and the task's labels
//! `rein.net.egress.rate`, `rein.net.egress.ceil` and `rein.net.egress.burst` give
//! each container a rate, a ceiling and a burst. Mechanism ([`shaper`]): an HTB tree
//! per shaped device, one class (with a fair-queueing leaf) per container, and a tc
//! BPF classifier that maps packets to classes by net_cls classid (cgroup v1) or by
//! cgroup v2 id. The kernel is reached through rtnetlink ([`netlink`], [`tc`]) and
//! the bpf(2) syscall ([`bpf`]); no tool is spawned. Containers with their own
//! network namespace are shaped on their own devices ([`netns`], [`netns_shaping`]).
//! The isolator reaches all of it through one seam, [`EgressKernel`] ([`kernel`]),
//! whose real implementation is [`Shaper`]; its policy is unit-tested on a
//! recording fake.
//!
//! Every value a task sets (rate, ceiling, burst) is capped by an operator
//! setting (`egress_max_rate`, else `egress_line_rate`; `egress_max_burst`); a
//! task asking for more fails to launch with a message naming the label and the
//! cap. What `usage()` reports is what the kernel holds: the class's parameters
//! are read back with its counters (HTB keeps bursts as time in 64 ns ticks, so a
//! burst is reported as the bytes that time allows at the rate).
//! See `README.md` beside this file.

pub mod bpf;
pub mod error;
#[cfg(test)]
pub(crate) mod fake;
pub mod kernel;
pub mod netlink;
pub mod netns;
pub mod netns_shaping;
pub mod policy;
pub mod shaper;
pub mod tc;
pub mod tree;

pub use error::EgressError;
pub use kernel::{EgressKernel, Unclaimed, UnclaimedFailure};
pub use policy::{ClassifierChoice, EgressParams, Shape, PARAMS};
pub use shaper::{Classifier, Shaper};
pub use tc::{ClassStats, HeldRates};
pub use tree::{expected_held, DEFAULT_MINOR, FILTER_NAME, LINK_MINOR};
