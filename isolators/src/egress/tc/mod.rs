//! Traffic-control operations over rtnetlink: the HTB root qdisc, its classes and
//! leaf qdiscs, the classifier filter and class counters. HTB's parameter encoding
//! is in `htb`, the device and route look-ups in `links`.

mod htb;
mod links;

pub use htb::{held_rates, ClassRates, HeldRates};
pub use links::{default_route_device, link_index, links, Link};

use super::error::class_name;
use super::netlink::{
    attr_string, find_attr, u32_at, u64_at, Msg, Netlink, NlError, NLM_F_CREATE, NLM_F_ECHO,
    NLM_F_EXCL, NLM_F_REPLACE,
};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTCLASS: u16 = 40;
const RTM_DELTCLASS: u16 = 41;
const RTM_GETTCLASS: u16 = 42;
const RTM_NEWTFILTER: u16 = 44;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;

const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;

/// The parent value naming a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// `ETH_P_ALL` in network byte order, as `tcm_info` wants it.
const ETH_P_ALL_BE: u16 = 0x0003_u16.to_be();

/// A tc handle `major:minor`.
pub fn handle(major: u16, minor: u16) -> u32 {
    (u32::from(major) << 16) | u32::from(minor)
}

/// `tcmsg`: family, padding, ifindex, handle, parent, info.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    b
}

/// Parsed `tcmsg` of a reply: (ifindex, handle, parent, attributes).
fn parse_tcmsg(p: &[u8]) -> Option<(u32, u32, u32, &[u8])> {
    Some((u32_at(p, 4)?, u32_at(p, 8)?, u32_at(p, 12)?, p.get(20..)?))
}

/// A device's root qdisc: its handle and kind; `None` if the kernel's default is in place.
pub fn root_qdisc(nl: &mut Netlink, ifindex: u32) -> Result<Option<(u32, String)>, NlError> {
    let mut m = Msg::new(RTM_GETQDISC, 0, "listing qdiscs");
    m.header(&tcmsg(ifindex, 0, 0, 0));
    for r in nl.dump(m)? {
        let Some((idx, handle, parent, a)) = parse_tcmsg(&r.payload) else {
            continue;
        };
        if idx == ifindex && parent == TC_H_ROOT {
            let kind = find_attr(a, TCA_KIND).map(attr_string).unwrap_or_default();
            // Built-in defaults (noqueue, pfifo_fast, mq) carry handle 0.
            return Ok((handle != 0).then_some((handle, kind)));
        }
    }
    Ok(None)
}

/// Creates an HTB root qdisc `major:` whose unclassified traffic goes to `default_minor`.
pub fn add_htb_root(
    nl: &mut Netlink,
    ifindex: u32,
    major: u16,
    default_minor: u16,
) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_NEWQDISC,
        NLM_F_CREATE | NLM_F_EXCL,
        format!("creating the HTB root qdisc {major:x}: on device {ifindex}"),
    );
    m.header(&tcmsg(ifindex, handle(major, 0), TC_H_ROOT, 0));
    m.attr_str(TCA_KIND, "htb");
    htb::root_options(&mut m, default_minor);
    nl.request(m)
}

/// Removes a device's root qdisc (and so everything below it).
pub fn del_root_qdisc(nl: &mut Netlink, ifindex: u32) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_DELQDISC,
        0,
        format!("removing the root qdisc of device {ifindex}"),
    );
    m.header(&tcmsg(ifindex, 0, TC_H_ROOT, 0));
    match nl.request(m) {
        // EINVAL: only the kernel's default (handle 0) is left, nothing of ours.
        Err(e) if e.errno() == Some(libc::EINVAL) => Ok(()),
        other => ignore_missing(other),
    }
}

/// Creates or changes the HTB class `classid` under `parent`.
pub fn set_class(
    nl: &mut Netlink,
    ifindex: u32,
    parent: u32,
    classid: u32,
    rates: &ClassRates,
) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_NEWTCLASS,
        NLM_F_CREATE,
        format!(
            "setting HTB class {} on device {ifindex}",
            class_name(classid)
        ),
    );
    m.header(&tcmsg(ifindex, classid, parent, 0));
    m.attr_str(TCA_KIND, "htb");
    htb::class_options(&mut m, rates);
    nl.request(m)
}

/// Removes a class (and its leaf qdisc); a missing class is fine.
pub fn del_class(nl: &mut Netlink, ifindex: u32, classid: u32) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_DELTCLASS,
        0,
        format!("removing class {} of device {ifindex}", class_name(classid)),
    );
    m.header(&tcmsg(ifindex, classid, 0, 0));
    ignore_missing(nl.request(m))
}

/// Attaches a leaf qdisc of `kind` (no options) below a class.
pub fn add_leaf(nl: &mut Netlink, ifindex: u32, classid: u32, kind: &str) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_NEWQDISC,
        NLM_F_CREATE | NLM_F_REPLACE,
        format!(
            "attaching a {kind} leaf to class {} of device {ifindex}",
            class_name(classid)
        ),
    );
    m.header(&tcmsg(ifindex, 0, classid, 0));
    m.attr_str(TCA_KIND, kind);
    nl.request(m)
}

/// Counters of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Rates and bursts as the kernel holds them (read back with the counters).
    pub held: Option<HeldRates>,
}

impl ClassStats {
    /// Adds the counters of one more device (a missing class adds nothing); the
    /// held parameters are the first device's.
    pub fn add(&mut self, other: Option<ClassStats>) {
        if let Some(s) = other {
            self.bytes += s.bytes;
            self.packets += s.packets;
            self.drops += s.drops;
            self.held = self.held.or(s.held);
        }
    }
}

fn parse_stats(a: &[u8]) -> ClassStats {
    let mut s = ClassStats {
        held: htb::parse_held(a),
        ..ClassStats::default()
    };
    if let Some(stats) = find_attr(a, TCA_STATS2) {
        if let Some(basic) = find_attr(stats, TCA_STATS_BASIC) {
            s.bytes = u64_at(basic, 0).unwrap_or_default();
            s.packets = u32_at(basic, 8).map(u64::from).unwrap_or_default();
        }
        if let Some(queue) = find_attr(stats, TCA_STATS_QUEUE) {
            s.drops = u32_at(queue, 8).map(u64::from).unwrap_or_default();
        }
    }
    s
}

/// Reads one class's counters; `None` if the class does not exist.
pub fn class_stats(
    nl: &mut Netlink,
    ifindex: u32,
    classid: u32,
) -> Result<Option<ClassStats>, NlError> {
    // Without ECHO the kernel only notifies the tc multicast group of the class.
    let mut m = Msg::new(
        RTM_GETTCLASS,
        NLM_F_ECHO,
        format!("reading class {} of device {ifindex}", class_name(classid)),
    );
    m.header(&tcmsg(ifindex, classid, 0, 0));
    match nl.get(m) {
        Ok(r) => Ok(parse_tcmsg(&r.payload).map(|(_, _, _, a)| parse_stats(a))),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The class ids present on a device.
pub fn classes(nl: &mut Netlink, ifindex: u32) -> Result<Vec<u32>, NlError> {
    let mut m = Msg::new(
        RTM_GETTCLASS,
        0,
        format!("listing classes of device {ifindex}"),
    );
    m.header(&tcmsg(ifindex, 0, 0, 0));
    Ok(nl
        .dump(m)?
        .iter()
        .filter_map(|r| parse_tcmsg(&r.payload))
        .filter(|(idx, _, _, a)| {
            *idx == ifindex && find_attr(a, TCA_KIND).map(attr_string).as_deref() == Some("htb")
        })
        .map(|(_, h, _, _)| h)
        .collect())
}

/// Installs (or replaces) a cls_bpf filter, in classid mode (the program's return value
/// is the class), on the qdisc `major:` with priority `prio` and filter handle 1.
pub fn set_bpf_filter(
    nl: &mut Netlink,
    ifindex: u32,
    major: u16,
    prio: u16,
    prog_fd: i32,
    name: &str,
) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_NEWTFILTER,
        NLM_F_CREATE | NLM_F_REPLACE,
        format!("installing the BPF classifier on device {ifindex}"),
    );
    let info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL_BE);
    m.header(&tcmsg(ifindex, 1, handle(major, 0), info));
    m.attr_str(TCA_KIND, "bpf");
    m.nest(TCA_OPTIONS)
        .attr_u32(TCA_BPF_FD, u32::try_from(prog_fd).unwrap_or_default())
        .attr_str(TCA_BPF_NAME, name)
        .end_nest();
    nl.request(m)
}

fn ignore_missing(r: Result<(), NlError>) -> Result<(), NlError> {
    match r {
        // Gone already, or its device is.
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
        other => other,
    }
}

/// Whether the kernel lacks a qdisc kind (`ENOENT` on create).
pub fn is_unknown_kind(e: &NlError) -> bool {
    e.errno() == Some(libc::ENOENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_filter_info() {
        assert_eq!(handle(1, 0x10), 0x10010);
        assert_eq!(ETH_P_ALL_BE.to_ne_bytes(), [0, 3]);
    }
}
