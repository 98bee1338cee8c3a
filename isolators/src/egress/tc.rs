//! Traffic-control operations over rtnetlink: the HTB tree, its classes and leaf
//! qdiscs, the classifier filter, class counters, and the link and route look-ups
//! that find the devices to shape.

use super::netlink::{
    attr_string, find_attr, u32_at, u64_at, Msg, Netlink, NlError, NLM_F_CREATE, NLM_F_ECHO,
    NLM_F_EXCL, NLM_F_REPLACE,
};

const RTM_GETLINK: u16 = 18;
const RTM_GETROUTE: u16 = 26;
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

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
const TC_LINKLAYER_ETHERNET: u8 = 1;

const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;

const IFLA_IFNAME: u16 = 3;
const IFF_LOOPBACK: u32 = 0x8;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;

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

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Whether it is a loopback device.
    pub loopback: bool,
}

/// Lists the devices of the socket's network namespace.
pub fn links(nl: &mut Netlink) -> Result<Vec<Link>, NlError> {
    let mut m = Msg::new(RTM_GETLINK, 0, "listing network devices");
    m.header(&[0u8; 16]);
    let mut out = Vec::new();
    for r in nl.dump(m)? {
        let p = &r.payload;
        let (Some(index), Some(flags)) = (u32_at(p, 4), u32_at(p, 8)) else {
            continue;
        };
        let name = p
            .get(16..)
            .and_then(|a| find_attr(a, IFLA_IFNAME))
            .map(attr_string)
            .unwrap_or_default();
        out.push(Link {
            index,
            name,
            loopback: flags & IFF_LOOPBACK != 0,
        });
    }
    Ok(out)
}

/// The index of the device with this name.
pub fn link_index(nl: &mut Netlink, name: &str) -> Result<Option<u32>, NlError> {
    Ok(links(nl)?
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index))
}

/// The output device of the IPv4 (else IPv6) default route of the main table.
pub fn default_route_device(nl: &mut Netlink) -> Result<Option<u32>, NlError> {
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut m = Msg::new(RTM_GETROUTE, 0, "listing routes");
        let mut rtmsg = [0u8; 12];
        rtmsg[0] = u8::try_from(family).unwrap_or_default();
        m.header(&rtmsg);
        for r in nl.dump(m)? {
            let p = &r.payload;
            let (Some(&dst_len), Some(&table)) = (p.get(1), p.get(4)) else {
                continue;
            };
            let a = p.get(12..).unwrap_or_default();
            let table = find_attr(a, RTA_TABLE)
                .and_then(|d| u32_at(d, 0))
                .unwrap_or(u32::from(table));
            if dst_len != 0 || table != RT_TABLE_MAIN {
                continue;
            }
            if let Some(oif) = find_attr(a, RTA_OIF).and_then(|d| u32_at(d, 0)) {
                return Ok(Some(oif));
            }
        }
    }
    Ok(None)
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
    let mut glob = [0u8; 20];
    glob[0..4].copy_from_slice(&TC_HTB_PROTOVER.to_ne_bytes());
    glob[4..8].copy_from_slice(&10u32.to_ne_bytes()); // rate2quantum, unused: quantum is explicit
    glob[8..12].copy_from_slice(&u32::from(default_minor).to_ne_bytes());
    m.nest(TCA_OPTIONS).attr(TCA_HTB_INIT, &glob).end_nest();
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

/// Rate, ceiling and bursts of an HTB class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRates {
    /// Guaranteed rate, bits per second.
    pub rate: u64,
    /// Ceiling, bits per second.
    pub ceil: u64,
    /// Bytes sendable at once at the rate.
    pub burst: u64,
    /// Bytes sendable at once at the ceiling.
    pub cburst: u64,
}

/// psched ticks (64 ns, `PSCHED_TICKS2NS`) to send `bytes` at `bytes_per_sec`.
fn xmit_ticks(bytes: u64, bytes_per_sec: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(bytes_per_sec.max(1));
    u32::try_from(ns / 64).unwrap_or(u32::MAX)
}

/// The bytes a class may send at once with a bucket of `ticks` at `bytes_per_sec`:
/// HTB keeps the bucket as time (ticks of 64 ns, saturated at `u32::MAX`, about
/// 275 s), so this is what it really allows, whatever was asked.
fn ticks_to_bytes(ticks: u32, bytes_per_sec: u64) -> u64 {
    let bytes = u128::from(ticks) * 64 * u128::from(bytes_per_sec) / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// What the kernel holds for an HTB class: byte rates and bursts in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldRates {
    /// Guaranteed rate, bytes per second.
    pub rate: u64,
    /// Ceiling, bytes per second.
    pub ceil: u64,
    /// Bytes sendable at once at the rate.
    pub burst: u64,
    /// Bytes sendable at once at the ceiling.
    pub cburst: u64,
}

/// What the kernel will hold for `rates` once [`set_class`] applied them, computed
/// with the kernel's own rounding (byte rates, bursts as whole ticks).
pub fn held_rates(rates: &ClassRates) -> HeldRates {
    let (opt, rate, ceil) = htb_opt(rates);
    held_from_opt(&opt, rate, ceil).unwrap_or_default()
}

/// Decodes a `tc_htb_opt` (with the 64-bit rates where the kernel sent them).
fn held_from_opt(opt: &[u8], rate64: u64, ceil64: u64) -> Option<HeldRates> {
    let rate = rate64.max(u64::from(u32_at(opt, 8)?));
    let ceil = ceil64.max(u64::from(u32_at(opt, 20)?));
    Some(HeldRates {
        rate,
        ceil,
        burst: ticks_to_bytes(u32_at(opt, 24)?, rate),
        cburst: ticks_to_bytes(u32_at(opt, 28)?, ceil),
    })
}

/// The HTB parameters in a class reply's attributes.
fn parse_held(a: &[u8]) -> Option<HeldRates> {
    let options = find_attr(a, TCA_OPTIONS)?;
    let opt = find_attr(options, TCA_HTB_PARMS)?;
    let rate64 = find_attr(options, TCA_HTB_RATE64)
        .and_then(|d| u64_at(d, 0))
        .unwrap_or_default();
    let ceil64 = find_attr(options, TCA_HTB_CEIL64)
        .and_then(|d| u64_at(d, 0))
        .unwrap_or_default();
    held_from_opt(opt, rate64, ceil64)
}

/// `tc_ratespec` for a byte rate (saturated; the 64-bit attribute carries the rest).
fn ratespec(bytes_per_sec: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    // Link-layer aware: the kernel computes transmit times itself, no rate table needed.
    b[1] = TC_LINKLAYER_ETHERNET;
    let r = u32::try_from(bytes_per_sec).unwrap_or(u32::MAX);
    b[8..12].copy_from_slice(&r.to_ne_bytes());
    b
}

/// The `TCA_HTB_PARMS` payload (`tc_htb_opt`) and the byte rates.
fn htb_opt(rates: &ClassRates) -> ([u8; 44], u64, u64) {
    let rate = (rates.rate / 8).max(1);
    let ceil = (rates.ceil / 8).max(rate);
    let mut b = [0u8; 44];
    b[0..12].copy_from_slice(&ratespec(rate));
    b[12..24].copy_from_slice(&ratespec(ceil));
    b[24..28].copy_from_slice(&xmit_ticks(rates.burst, rate).to_ne_bytes());
    b[28..32].copy_from_slice(&xmit_ticks(rates.cburst, ceil).to_ne_bytes());
    // One tenth of a second's worth per round, within HTB's sane bounds (as r2q=10 would).
    let quantum = u32::try_from((rate / 10).clamp(1514, 200_000)).unwrap_or(200_000);
    b[32..36].copy_from_slice(&quantum.to_ne_bytes());
    (b, rate, ceil)
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
            "setting HTB class {:x}:{:x} on device {ifindex}",
            classid >> 16,
            classid & 0xffff
        ),
    );
    m.header(&tcmsg(ifindex, classid, parent, 0));
    m.attr_str(TCA_KIND, "htb");
    let (opt, rate, ceil) = htb_opt(rates);
    m.nest(TCA_OPTIONS);
    m.attr(TCA_HTB_PARMS, &opt);
    if rate > u64::from(u32::MAX) {
        m.attr(TCA_HTB_RATE64, &rate.to_ne_bytes());
    }
    if ceil > u64::from(u32::MAX) {
        m.attr(TCA_HTB_CEIL64, &ceil.to_ne_bytes());
    }
    m.end_nest();
    nl.request(m)
}

/// Removes a class (and its leaf qdisc); a missing class is fine.
pub fn del_class(nl: &mut Netlink, ifindex: u32, classid: u32) -> Result<(), NlError> {
    let mut m = Msg::new(
        RTM_DELTCLASS,
        0,
        format!(
            "removing class {:x}:{:x} of device {ifindex}",
            classid >> 16,
            classid & 0xffff
        ),
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
            "attaching a {kind} leaf to class {:x}:{:x} of device {ifindex}",
            classid >> 16,
            classid & 0xffff
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
        held: parse_held(a),
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
        format!(
            "reading class {:x}:{:x} of device {ifindex}",
            classid >> 16,
            classid & 0xffff
        ),
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
    fn htb_parameters_encode_rates_bursts_and_quantum() {
        let (b, rate, ceil) = htb_opt(&ClassRates {
            rate: 10_000_000,
            ceil: 20_000_000,
            burst: 12_500,
            cburst: 1600,
        });
        assert_eq!((rate, ceil), (1_250_000, 2_500_000));
        assert_eq!(u32_at(&b, 8), Some(1_250_000));
        assert_eq!(u32_at(&b, 20), Some(2_500_000));
        assert_eq!(b[1], TC_LINKLAYER_ETHERNET);
        // 12500 bytes at 1.25 MB/s = 10 ms = 156250 ticks of 64 ns.
        assert_eq!(u32_at(&b, 24), Some(156_250));
        assert_eq!(u32_at(&b, 32), Some(125_000));
        let (b, rate, _) = htb_opt(&ClassRates {
            rate: 100_000_000_000,
            ceil: 0,
            burst: 1,
            cburst: 1,
        });
        assert_eq!(rate, 12_500_000_000);
        assert_eq!(u32_at(&b, 8), Some(u32::MAX));
        assert_eq!(u32_at(&b, 32), Some(200_000));
    }

    #[test]
    fn held_rates_follow_the_kernels_rounding() {
        // 100mbit with a 64 KiB burst: 65536 bytes in ticks of 64 ns, rounded down.
        let held = held_rates(&ClassRates {
            rate: 100_000_000,
            ceil: 100_000_000,
            burst: 65_536,
            cburst: 65_536,
        });
        assert_eq!((held.rate, held.ceil), (12_500_000, 12_500_000));
        assert!(held.burst <= 65_536 && held.burst > 65_536 - 1, "{held:?}");
        // A burst the bucket cannot hold is reported as what it holds: u32::MAX
        // ticks at 12.5 MB/s, about 3.4 GB, not the 1 TiB asked.
        let held = held_rates(&ClassRates {
            rate: 100_000_000,
            ceil: 100_000_000,
            burst: 1 << 40,
            cburst: 1 << 40,
        });
        assert_eq!(
            held.burst,
            u64::from(u32::MAX) * 64 * 12_500_000 / 1_000_000_000
        );
        assert!(held.burst < 4_000_000_000, "{held:?}");
        // Rates above 4 GB/s travel in the 64-bit attributes.
        let held = held_rates(&ClassRates {
            rate: 40_000_000_000,
            ceil: 40_000_000_000,
            burst: 5_000_000,
            cburst: 5_000_000,
        });
        assert_eq!(held.rate, 5_000_000_000);
        assert!(
            held.burst <= 5_000_000 && held.burst > 4_999_000,
            "{held:?}"
        );
    }

    #[test]
    fn class_replies_yield_the_held_rates() {
        let (opt, _, _) = htb_opt(&ClassRates {
            rate: 80_000_000_000,
            ceil: 80_000_000_000,
            burst: 10_000_000,
            cburst: 10_000_000,
        });
        let mut m = Msg::new(0, 0, "test");
        m.nest(TCA_OPTIONS)
            .attr(TCA_HTB_PARMS, &opt)
            .attr(TCA_HTB_RATE64, &10_000_000_000u64.to_ne_bytes())
            .attr(TCA_HTB_CEIL64, &10_000_000_000u64.to_ne_bytes())
            .end_nest();
        let bytes = m.bytes();
        let held = parse_stats(&bytes[16..]).held.expect("held rates");
        assert_eq!((held.rate, held.ceil), (10_000_000_000, 10_000_000_000));
        assert!(
            held.burst <= 10_000_000 && held.burst > 9_999_000,
            "{held:?}"
        );
    }

    #[test]
    fn handles_and_filter_info() {
        assert_eq!(handle(1, 0x10), 0x10010);
        assert_eq!(ETH_P_ALL_BE.to_ne_bytes(), [0, 3]);
    }
}
