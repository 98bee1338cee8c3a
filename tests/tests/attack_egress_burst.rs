//! Attack: a task asks for more egress than the operator allows through the
//! shaping labels it controls (a huge burst beside a capped rate, a rate or
//! ceiling above the cap), then sends as an unprivileged user as fast as it can.
//!
//! Expect: every over-cap value is refused at prepare with a message naming the
//! label and the cap; a task at the caps sends no more than rate * time + burst
//! cap (plus a small tolerance); and what usage() reports is what the kernel
//! holds. Real kernel: two network namespaces joined by a veth pair, the net_cls
//! isolator's HTB tree and BPF classifier. Root only.

#[path = "support/egress_net.rs"]
mod egress_net;
#[path = "support/net_cls_mount.rs"]
mod net_cls_mount;

use std::path::Path;
use std::time::Duration;

use rein_core::Isolator;
use rein_isolators::net_cls::NetClsIsolator;

use egress_net::{
    in_netns, labelled_spec as spec, shaping_params, NetPair, Receiver, Sender, CLIENT_DEV,
};

/// The task's user (`nobody`).
const TASK_UID: u32 = 65534;
const RATE_CAP: &str = "100mbit";
const RATE_CAP_BYTES: f64 = 12_500_000.0;
const BURST_CAP: u64 = 4 << 20;

/// The isolator's settings: shaping on the client device, rates capped at
/// `RATE_CAP`, bursts at `max_burst`.
fn params(root_name: &str, state: &Path, max_burst: &str) -> Vec<(String, String)> {
    let mut p = shaping_params(root_name, state, "net_cls");
    p.push(("egress_max_rate".into(), RATE_CAP.into()));
    p.push(("egress_max_burst".into(), max_burst.into()));
    p
}

#[test]
#[ignore = "needs root"]
fn attack_egress_over_cap_shaping_is_refused_and_the_cap_holds() {
    if !rein_tests::require_root("attack_egress_over_cap_shaping_is_refused_and_the_cap_holds") {
        return;
    }
    let pair = NetPair::new("atk");
    let hierarchy = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-eg-{}-atk", std::process::id());
    let root = hierarchy.cgroup(&root_name);
    let state = tempfile::tempdir().unwrap();
    let params = params(&root_name, state.path(), "4MiB");
    let mut iso = in_netns(&pair.client, || NetClsIsolator::from_params(&params))
        .unwrap_or_else(|e| panic!("creating the isolator: {e}"));

    // Every shaping label above its cap fails the launch, naming label and cap.
    for (label, value, cap) in [
        ("rein.net.egress.burst", "1TiB", "4MiB (egress_max_burst)"),
        (
            "rein.net.egress.burst",
            "4194305B",
            "4MiB (egress_max_burst)",
        ),
        (
            "rein.net.egress.rate",
            "101mbit",
            "100Mbit (egress_max_rate)",
        ),
        (
            "rein.net.egress.ceil",
            "10gbit",
            "100Mbit (egress_max_rate)",
        ),
    ] {
        let s = spec(
            "greedy",
            &[("rein.net.egress.rate", RATE_CAP), (label, value)],
        );
        let err = iso.prepare(&s).expect_err(label).to_string();
        eprintln!("refused: {err}");
        assert!(
            err.contains(label) && err.contains(value) && err.contains(cap),
            "{err}"
        );
    }
    assert!(
        pair.client_tc(&["class", "show", "dev", CLIENT_DEV])
            .lines()
            .all(|l| !l.contains("1:10 ")),
        "a refused container left a class"
    );

    // At the caps: bounded by rate * time + burst.
    let s = spec(
        "capped",
        &[
            ("rein.net.egress.rate", RATE_CAP),
            ("rein.net.egress.ceil", RATE_CAP),
            ("rein.net.egress.burst", "4MiB"),
        ],
    );
    iso.prepare(&s).unwrap();
    let secs = 1.5;
    let receiver = Receiver::start(&pair.server, &[(0.0, secs)]);
    let port = receiver.port;
    let mut sender = in_netns(&pair.client, || {
        Sender::fork_as(port, Duration::from_secs_f64(secs + 0.2), Some(TASK_UID))
    });
    iso.isolate(&s.id, sender.pid).unwrap();
    sender.go();
    let received = receiver.goodput()[0] * secs / 8.0;
    sender.wait();
    let usage = iso.usage(&s.id).unwrap().net_tx.expect("net_tx");
    let bound = RATE_CAP_BYTES * secs + BURST_CAP as f64;
    eprintln!(
        "capped task sent {received:.0} bytes in {secs} s; bound {bound:.0} (rate * time + burst cap); usage {usage:?}"
    );
    assert!(
        received > RATE_CAP_BYTES * secs * 0.5,
        "the sender hardly sent ({received:.0} bytes): the test measures nothing; {usage:?}"
    );
    assert!(
        received <= bound * 1.05 + 65536.0,
        "sent {received:.0} bytes in {secs} s, above rate * time + burst cap = {bound:.0}; {usage:?}"
    );

    // What is reported is what the kernel holds.
    assert_eq!(usage.rate_limit, 12_500_000, "{usage:?}");
    assert_eq!(usage.burst_rate_limit, 12_500_000, "{usage:?}");
    assert!(
        usage.burst_size <= BURST_CAP && usage.burst_size + 64 >= BURST_CAP,
        "{usage:?}"
    );
    let class = pair.client_tc(&["class", "show", "dev", CLIENT_DEV, "classid", "1:10"]);
    assert!(class.contains("rate 100Mbit"), "{class}");
    assert!(
        class.contains("burst 4Mb") || class.contains("burst 4194"),
        "{class}"
    );

    iso.cleanup(&s.id).unwrap();
    drop(iso);
    let _ = root.remove();
}

#[test]
#[ignore = "needs root"]
fn attack_egress_burst_granted_before_a_cap_is_capped_at_recovery() {
    if !rein_tests::require_root("attack_egress_burst_granted_before_a_cap_is_capped_at_recovery") {
        return;
    }
    let pair = NetPair::new("rcap");
    let hierarchy = net_cls_mount::net_cls_hierarchy();
    let root_name = format!("rein-eg-{}-rcap", std::process::id());
    let root = hierarchy.cgroup(&root_name);
    let state = tempfile::tempdir().unwrap();
    // An agent whose operator allowed 512 MiB bursts shapes a container.
    let s = spec(
        "old",
        &[
            ("rein.net.egress.rate", RATE_CAP),
            ("rein.net.egress.burst", "512MiB"),
        ],
    );
    {
        let p = params(&root_name, state.path(), "1GiB");
        let mut iso = in_netns(&pair.client, || NetClsIsolator::from_params(&p)).unwrap();
        iso.prepare(&s).unwrap();
        let child = in_netns(&pair.client, || Sender::fork(1, Duration::from_secs(1)));
        iso.isolate(&s.id, child.pid).unwrap();
        let held = iso.usage(&s.id).unwrap().net_tx.unwrap().burst_size;
        assert!(held > 500 << 20, "{held}");
        // The agent stops; the container and its class stay.
    }
    // The operator lowers the cap; the agent restarts and recovers the container.
    let p = params(&root_name, state.path(), "4MiB");
    let mut iso = in_netns(&pair.client, || NetClsIsolator::from_params(&p)).unwrap();
    iso.recover(
        &[rein_core::RecoveredContainer {
            id: s.id.clone(),
            pid: None,
            sandbox: None,
        }],
        &[],
    )
    .unwrap();
    let usage = iso.usage(&s.id).unwrap().net_tx.expect("net_tx");
    eprintln!("after recovery under a 4 MiB cap: {usage:?}");
    assert!(usage.burst_size <= BURST_CAP, "{usage:?}");
    assert_eq!(iso.egress_shape(&s.id).unwrap().burst, BURST_CAP);
    iso.cleanup(&s.id).unwrap();
    drop(iso);
    let _ = root.remove();
}
