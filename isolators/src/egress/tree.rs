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
use super::netlink::{Netlink, NlError};
use super::policy::Shape;
use super::tc::{self, handle, ClassRates, HeldRates};

/// The tc requests the tree is built with: rtnetlink ([`Netlink`]), or a fake in
/// the tests of what is created, adopted or refused.
pub(super) trait TreeOps {
    /// The device's root qdisc: handle and kind (`None`: the kernel's default).
    fn root_qdisc(&mut self, index: u32) -> Result<Option<(u32, String)>, NlError>;
    /// Creates the HTB root `major:` with `default_minor` as its default class.
    fn add_htb_root(&mut self, index: u32, major: u16, default_minor: u16) -> Result<(), NlError>;
    /// Creates or changes an HTB class.
    fn set_class(
        &mut self,
        index: u32,
        parent: u32,
        classid: u32,
        rates: &ClassRates,
    ) -> Result<(), NlError>;
    /// Attaches a leaf qdisc of `kind` below a class.
    fn add_leaf(&mut self, index: u32, classid: u32, kind: &str) -> Result<(), NlError>;
}

impl TreeOps for Netlink {
    fn root_qdisc(&mut self, index: u32) -> Result<Option<(u32, String)>, NlError> {
        tc::root_qdisc(self, index)
    }

    fn add_htb_root(&mut self, index: u32, major: u16, default_minor: u16) -> Result<(), NlError> {
        tc::add_htb_root(self, index, major, default_minor)
    }

    fn set_class(
        &mut self,
        index: u32,
        parent: u32,
        classid: u32,
        rates: &ClassRates,
    ) -> Result<(), NlError> {
        tc::set_class(self, index, parent, classid, rates)
    }

    fn add_leaf(&mut self, index: u32, classid: u32, kind: &str) -> Result<(), NlError> {
        tc::add_leaf(self, index, classid, kind)
    }
}

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
    nl: &mut impl TreeOps,
    index: u32,
    name: &str,
    major: u16,
    default_minor: u16,
    line_rate: u64,
) -> Result<(), EgressError> {
    match nl.root_qdisc(index)? {
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
            nl.add_htb_root(index, major, default_minor)?;
            info!(
                device = name,
                major = format!("{major:x}"),
                "created the egress shaping tree"
            );
        }
    }
    // Upserts: a tree left by an earlier run gets the current line rate.
    let link = handle(major, LINK_MINOR);
    nl.set_class(index, handle(major, 0), link, &line_rates(line_rate))?;
    if default_minor == DEFAULT_MINOR {
        nl.set_class(
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
    nl: &mut impl TreeOps,
    index: u32,
    major: u16,
    classid: u32,
    shape: &Shape,
) -> Result<(), EgressError> {
    let parent = handle(major, LINK_MINOR);
    Ok(nl.set_class(index, parent, classid, &container_rates(shape))?)
}

/// Adds a container's class and its leaf on one device; a kernel without the
/// leaf's qdisc keeps HTB's FIFO from then on (logged once).
pub(super) fn add_container_class(
    nl: &mut impl TreeOps,
    leaf: &mut Leaf,
    index: u32,
    major: u16,
    classid: u32,
    shape: &Shape,
) -> Result<(), EgressError> {
    set_container_class(nl, index, major, classid, shape)?;
    match leaf.clone() {
        Leaf::Builtin => {}
        Leaf::Kind(kind) => nl.add_leaf(index, classid, &kind)?,
        Leaf::Untried(kind) => match nl.add_leaf(index, classid, &kind) {
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
    use std::io;

    use super::super::error::class_name;
    use super::*;

    /// A device as tc sees it: its root qdisc, and every request made.
    #[derive(Default)]
    struct FakeTc {
        root: Option<(u32, String)>,
        /// Leaf kinds the kernel lacks.
        missing: Vec<&'static str>,
        calls: Vec<String>,
    }

    impl TreeOps for FakeTc {
        fn root_qdisc(&mut self, _index: u32) -> Result<Option<(u32, String)>, NlError> {
            Ok(self.root.clone())
        }

        fn add_htb_root(
            &mut self,
            index: u32,
            major: u16,
            default_minor: u16,
        ) -> Result<(), NlError> {
            self.calls
                .push(format!("root {index} {major:x}: default {default_minor:x}"));
            self.root = Some((handle(major, 0), "htb".into()));
            Ok(())
        }

        fn set_class(
            &mut self,
            index: u32,
            parent: u32,
            classid: u32,
            rates: &ClassRates,
        ) -> Result<(), NlError> {
            self.calls.push(format!(
                "class {index} {} < {} rate {}",
                class_name(classid),
                class_name(parent),
                rates.rate
            ));
            Ok(())
        }

        fn add_leaf(&mut self, index: u32, classid: u32, kind: &str) -> Result<(), NlError> {
            if self.missing.contains(&kind) {
                return Err(NlError {
                    what: format!("attaching a {kind} leaf"),
                    source: io::Error::from_raw_os_error(libc::ENOENT),
                    ext: None,
                });
            }
            self.calls
                .push(format!("leaf {index} {} {kind}", class_name(classid)));
            Ok(())
        }
    }

    fn shape() -> Shape {
        Shape {
            rate: 10_000_000,
            ceil: 10_000_000,
            burst: 12_500,
            from_cpus: false,
        }
    }

    #[test]
    fn a_tree_is_created_once_then_adopted_with_the_current_line_rate() {
        let mut tc = FakeTc::default();
        ensure_tree(&mut tc, 3, "eth0", 1, DEFAULT_MINOR, 1_000_000_000).unwrap();
        assert_eq!(
            tc.calls,
            [
                "root 3 1: default ffff",
                "class 3 1:fffe < 1:0 rate 1000000000",
                "class 3 1:ffff < 1:fffe rate 1000000000"
            ]
        );
        tc.calls.clear();
        ensure_tree(&mut tc, 3, "eth0", 1, DEFAULT_MINOR, 2_000_000_000).unwrap();
        assert_eq!(
            tc.calls,
            [
                "class 3 1:fffe < 1:0 rate 2000000000",
                "class 3 1:ffff < 1:fffe rate 2000000000"
            ],
            "adopted, not created again"
        );
        // In a container's namespace its own class is the default: no default class.
        let mut tc = FakeTc::default();
        ensure_tree(&mut tc, 2, "veth0", 1, 0x10, 1_000_000_000).unwrap();
        assert_eq!(
            tc.calls,
            [
                "root 2 1: default 10",
                "class 2 1:fffe < 1:0 rate 1000000000"
            ]
        );
    }

    #[test]
    fn a_root_qdisc_that_is_not_ours_is_never_replaced() {
        for root in [(handle(1, 0), "fq_codel"), (handle(2, 0), "htb")] {
            let mut tc = FakeTc {
                root: Some((root.0, root.1.into())),
                ..FakeTc::default()
            };
            let err = ensure_tree(&mut tc, 3, "eth0", 1, DEFAULT_MINOR, 1_000_000_000)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("device eth0")
                    && err.contains(root.1)
                    && err.contains("net_cls_primary_handle"),
                "{err}"
            );
            assert!(tc.calls.is_empty(), "{:?}", tc.calls);
        }
    }

    #[test]
    fn a_missing_leaf_qdisc_falls_back_to_htbs_fifo_once() {
        let mut tc = FakeTc {
            missing: vec!["fq_codel"],
            ..FakeTc::default()
        };
        let mut leaf = Leaf::Untried("fq_codel".into());
        add_container_class(&mut tc, &mut leaf, 3, 1, 0x1_0010, &shape()).unwrap();
        assert_eq!(leaf, Leaf::Builtin);
        add_container_class(&mut tc, &mut leaf, 3, 1, 0x1_0011, &shape()).unwrap();
        assert_eq!(
            tc.calls,
            [
                "class 3 1:10 < 1:fffe rate 10000000",
                "class 3 1:11 < 1:fffe rate 10000000"
            ],
            "not tried again"
        );
        let mut tc = FakeTc::default();
        let mut leaf = Leaf::Untried("pfifo".into());
        add_container_class(&mut tc, &mut leaf, 3, 1, 0x1_0012, &shape()).unwrap();
        assert_eq!(leaf, Leaf::Kind("pfifo".into()));
        assert_eq!(tc.calls.last().unwrap(), "leaf 3 1:12 pfifo");
    }

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
