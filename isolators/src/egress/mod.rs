//! Egress traffic shaping per container, behind the `net_cls` isolator kind.
//!
//! Policy ([`policy`]): the operator's module parameters and the task's labels
//! `rein.net.egress.rate`, `rein.net.egress.ceil` and `rein.net.egress.burst` give
//! each container a rate, a ceiling and a burst. Mechanism ([`shaper`]): an HTB tree
//! per shaped device, one class (with a fair-queueing leaf) per container, and a tc
//! BPF classifier that maps packets to classes by net_cls classid (cgroup v1) or by
//! cgroup v2 id. The kernel is reached through rtnetlink ([`netlink`], [`tc`]) and
//! the bpf(2) syscall ([`bpf`]); no tool is spawned. Containers with their own
//! network namespace are shaped on their own devices ([`netns`]).
//! See `README.md` beside this file.

pub mod bpf;
pub mod netlink;
pub mod netns;
pub mod netns_shaping;
pub mod policy;
pub mod shaper;
pub mod tc;

pub use policy::{ClassifierChoice, EgressParams, Shape, PARAMS};
pub use shaper::{Classifier, Shaper, DEFAULT_MINOR, FILTER_NAME, LINK_MINOR};
