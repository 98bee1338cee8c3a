//! HTB's parameters as the kernel takes and keeps them: rates in bytes per
//! second (64-bit beyond 4 GB/s), bursts as time in 64 ns ticks; and what a class
//! really holds, decoded from a reply.

use super::super::netlink::{find_attr, u32_at, u64_at, Msg};
use super::TCA_OPTIONS;

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
const TC_LINKLAYER_ETHERNET: u8 = 1;

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

/// What the kernel will hold for `rates` once [`set_class`](super::set_class) applied them, computed
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
pub(super) fn parse_held(a: &[u8]) -> Option<HeldRates> {
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

/// The options of an HTB root qdisc whose unclassified traffic goes to `default_minor`.
pub(super) fn root_options(m: &mut Msg, default_minor: u16) {
    let mut glob = [0u8; 20];
    glob[0..4].copy_from_slice(&TC_HTB_PROTOVER.to_ne_bytes());
    glob[4..8].copy_from_slice(&10u32.to_ne_bytes()); // rate2quantum, unused: quantum is explicit
    glob[8..12].copy_from_slice(&u32::from(default_minor).to_ne_bytes());
    m.nest(TCA_OPTIONS).attr(TCA_HTB_INIT, &glob).end_nest();
}

/// The options of an HTB class with `rates`.
pub(super) fn class_options(m: &mut Msg, rates: &ClassRates) {
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
        let held = super::super::parse_stats(&bytes[16..])
            .held
            .expect("held rates");
        assert_eq!((held.rate, held.ceil), (10_000_000_000, 10_000_000_000));
        assert!(
            held.burst <= 10_000_000 && held.burst > 9_999_000,
            "{held:?}"
        );
    }
}
