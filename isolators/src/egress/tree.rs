//! The shaping tree on one device, and a container's class in it.
//!
//! ```text
//! <dev> root qdisc  M:  htb default ffff         (created once, then adopted)
//!  |-- filter prio P: bpf "rein_egress"           (packet -> container class)
//!  `-- class M:fffe  htb rate=ceil=line rate      (the link; lets classes borrow)
//!       |-- class M:ffff  rate=ceil=line rate     (unclassified traffic: not ours)
//!       |-- class M:10    rate R1 ceil C1 -> leaf fq_codel   (a container)
//!       `-- class M:11    rate R2 ceil C2 -> leaf fq_codel   (another container)
//! ```
//! M is the net_cls primary handle, a container's class minor its secondary
//! handle, so a net_cls classid is its HTB class id as well. A container with its
//! own network namespace gets the same tree on each of its own devices, with its
//! class as the default class (everything it sends is its own).

use tracing::{info, warn};

use super::error::EgressError;
use super::netlink::Netlink;
use super::policy::Shape;
use super::tc::{self, handle, ClassRates, HeldRates};

/// Minor of the link class every container class hangs below.
pub const LINK_MINOR: u16 = 0xfffe;
/// Minor of the default class (traffic that is not a shaped container's).
pub const DEFAULT_MINOR: u16 = 0xffff;
/// The name of rein's tc filter (`tc filter show` lists it).
pub const FILTER_NAME: &str = "rein_egress";

/// The queue below each container class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Leaf {
    /// Not tried on this kernel yet.
    Untried(String),
    /// Known to work.
    Kind(String),
    /// Keep HTB's built-in FIFO.
    Builtin,
}

impl Leaf {
    /// The operator's choice (`None`: HTB's FIFO).
    pub(super) fn from_param(kind: Option<String>) -> Self {
        kind.map_or(Leaf::Builtin, Leaf::Untried)
    }
}

/// Whether `classid` is a container class of rein's tree with major `major` (not
/// the link or default class, not another tree's).
pub(super) fn is_container_class(major: u16, classid: u32) -> bool {
    let minor = classid & 0xffff;
    classid >> 16 == u32::from(major)
        && minor != u32::from(LINK_MINOR)
        && minor != u32::from(DEFAULT_MINOR)
}

fn line_rates(line_rate: u64) -> ClassRates {
    let burst = (line_rate / 8 / 1000).max(1600);
    ClassRates {
        rate: line_rate,
        ceil: line_rate,
        burst,
        cburst: burst,
    }
}

/// The class parameters of a container's shape.
pub(super) fn container_rates(shape: &Shape) -> ClassRates {
    ClassRates {
        rate: shape.rate,
        ceil: shape.ceil,
        burst: shape.burst,
        cburst: shape.burst,
    }
}

/// What the kernel holds for a container's shape once applied (its rounding of
/// rates and bursts); what is reported when no class could be read back.
pub fn expected_held(shape: &Shape) -> HeldRates {
    tc::held_rates(&container_rates(shape))
}

/// Creates the tree on a device, or adopts it if rein's tree is already there.
pub(super) fn ensure_tree(
    nl: &mut Netlink,
    index: u32,
    name: &str,
    major: u16,
    default_minor: u16,
    line_rate: u64,
) -> Result<(), EgressError> {
    match tc::root_qdisc(nl, index)? {
        Some((h, kind)) if h == handle(major, 0) && kind == "htb" => {}
        Some((h, kind)) => {
            return Err(EgressError::ForeignRoot {
                device: name.to_owned(),
                handle: h,
                kind,
                major,
            })
        }
        None => {
            tc::add_htb_root(nl, index, major, default_minor)?;
            info!(
                device = name,
                major = format!("{major:x}"),
                "created the egress shaping tree"
            );
        }
    }
    // Upserts: a tree left by an earlier run gets the current line rate.
    let link = handle(major, LINK_MINOR);
    tc::set_class(nl, index, handle(major, 0), link, &line_rates(line_rate))?;
    if default_minor == DEFAULT_MINOR {
        tc::set_class(
            nl,
            index,
            link,
            handle(major, DEFAULT_MINOR),
            &line_rates(line_rate),
        )?;
    }
    Ok(())
}

/// Sets a container's class below the link class of a device (created, or changed
/// in place).
pub(super) fn set_container_class(
    nl: &mut Netlink,
    index: u32,
    major: u16,
    classid: u32,
    shape: &Shape,
) -> Result<(), EgressError> {
    let parent = handle(major, LINK_MINOR);
    Ok(tc::set_class(
        nl,
        index,
        parent,
        classid,
        &container_rates(shape),
    )?)
}

/// Adds a container's class and its leaf on one device; a kernel without the
/// leaf's qdisc keeps HTB's FIFO from then on (logged once).
pub(super) fn add_container_class(
    nl: &mut Netlink,
    leaf: &mut Leaf,
    index: u32,
    major: u16,
    classid: u32,
    shape: &Shape,
) -> Result<(), EgressError> {
    set_container_class(nl, index, major, classid, shape)?;
    match leaf.clone() {
        Leaf::Builtin => {}
        Leaf::Kind(kind) => tc::add_leaf(nl, index, classid, &kind)?,
        Leaf::Untried(kind) => match tc::add_leaf(nl, index, classid, &kind) {
            Ok(()) => *leaf = Leaf::Kind(kind),
            Err(e) if tc::is_unknown_kind(&e) => {
                warn!(
                    qdisc = kind,
                    "the kernel has no such qdisc; container classes keep HTB's FIFO"
                );
                *leaf = Leaf::Builtin;
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_container_classes_of_our_major_are_ours() {
        assert!(is_container_class(1, 0x1_0010));
        assert!(is_container_class(1, 0x1_0001));
        assert!(!is_container_class(1, handle(1, LINK_MINOR)));
        assert!(!is_container_class(1, handle(1, DEFAULT_MINOR)));
        assert!(!is_container_class(1, 0x2_0010), "another tree's class");
        assert!(!is_container_class(0x10, 0x1_0010));
    }

    #[test]
    fn container_classes_carry_the_shape_and_the_link_the_line_rate() {
        let shape = Shape {
            rate: 10_000_000,
            ceil: 20_000_000,
            burst: 64 << 10,
            from_cpus: false,
        };
        assert_eq!(
            container_rates(&shape),
            ClassRates {
                rate: 10_000_000,
                ceil: 20_000_000,
                burst: 64 << 10,
                cburst: 64 << 10
            }
        );
        // One millisecond at line rate, at least a full frame.
        assert_eq!(line_rates(10_000_000_000).burst, 1_250_000);
        assert_eq!(line_rates(1_000_000).burst, 1600);
        assert_eq!(
            Leaf::from_param(Some("pfifo".into())),
            Leaf::Untried("pfifo".into())
        );
        assert_eq!(Leaf::from_param(None), Leaf::Builtin);
    }
}
