//! Parameters and shapes: defaults, caps, and errors naming the label or parameter.

use rein_core::config::TaskConfig;
use rein_core::params::{ParamError, Params};
use rein_core::ContainerSpec;

use super::params::{format_bytes, ClassifierChoice, DEFAULT_MAX_BURST, DEFAULT_ROUTE};
use super::*;

fn params(pairs: &[(&str, &str)]) -> Result<Option<EgressParams>, ParamError> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(a, b)| ((*a).into(), (*b).into()))
        .collect();
    EgressParams::from_params(&Params::new(&pairs, PARAMS).unwrap())
}

fn on(extra: &[(&str, &str)]) -> EgressParams {
    let mut all = vec![("egress_shaping", "true")];
    all.extend_from_slice(extra);
    params(&all).unwrap().unwrap()
}

fn config(labels: &[(&str, &str)]) -> TaskConfig {
    TaskConfig::parse(&ContainerSpec {
        task_labels: labels
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect(),
        ..ContainerSpec::default()
    })
    .unwrap()
}

#[test]
fn parameters_default_and_validate() {
    assert_eq!(params(&[]).unwrap(), None);
    let err = params(&[("egress_max_rate", "1gbit")]).unwrap_err();
    assert!(err.to_string().contains("egress_shaping"), "{err}");
    let p = on(&[]);
    assert_eq!(p.devices, vec![DEFAULT_ROUTE.to_owned()]);
    assert_eq!(p.line_rate, 10_000_000_000);
    assert_eq!(p.classifier, ClassifierChoice::Auto);
    assert_eq!(p.leaf_qdisc.as_deref(), Some("fq_codel"));
    assert!(on(&[("egress_devices", "none")]).devices.is_empty());
    for (name, value, reason) in [
        ("egress_devices", "eth0,../x", "not a network device"),
        ("egress_classifier", "iptables", "expected auto"),
        ("egress_leaf_qdisc", "cake", "expected fq_codel"),
        ("egress_filter_prio", "0", "1-65535"),
        ("egress_default_rate", "0mbit", "above 0"),
        ("egress_max_rate", "20gbit", "egress_line_rate"),
        ("egress_max_burst", "1000B", "1600B"),
        ("egress_max_burst", "2GiB", "1GiB"),
        ("egress_default_burst", "32MiB", "egress_max_burst (16MiB)"),
    ] {
        let err = params(&[("egress_shaping", "true"), (name, value)]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(reason), "{msg}");
    }
}

#[test]
fn labels_give_rate_ceiling_and_burst() {
    let p = on(&[("egress_max_rate", "1gbit")]);
    let s = p
        .shape_for(
            &config(&[
                ("rein.net.egress.rate", "10mbit"),
                ("rein.net.egress.ceil", "50mbit"),
                ("rein.net.egress.burst", "64KiB"),
            ]),
            None,
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        s,
        Shape {
            rate: 10_000_000,
            ceil: 50_000_000,
            burst: 65536,
            from_cpus: false
        }
    );
    // Ceiling defaults to the rate; burst to 10 ms at the rate, at least 1600 bytes.
    let s = p
        .shape_for(&config(&[("rein.net.egress.rate", "100mbit")]), None)
        .unwrap()
        .unwrap();
    assert_eq!((s.ceil, s.burst), (100_000_000, 125_000));
    let s = p
        .shape_for(&config(&[("rein.net.egress.rate", "1mbit")]), None)
        .unwrap()
        .unwrap();
    assert_eq!(s.burst, 1600);
}

#[test]
fn bad_labels_name_the_label_value_and_reason() {
    let p = on(&[("egress_max_rate", "100mbit")]);
    for (labels, needle) in [
        (vec![("rein.net.egress.rate", "200mbit")], "cap"),
        (vec![("rein.net.egress.ceil", "1gbit")], "cap"),
        (
            vec![
                ("rein.net.egress.rate", "20mbit"),
                ("rein.net.egress.ceil", "10mbit"),
            ],
            "below the egress rate",
        ),
        (vec![("rein.net.egress.burst", "100B")], "1600"),
        (vec![("rein.net.egress.rate", "0mbit")], "above 0"),
    ] {
        let err = p.shape_for(&config(&labels), None).unwrap_err().to_string();
        let (label, value) = labels.last().unwrap();
        assert!(
            err.contains(label) && err.contains(value) && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn every_shaping_label_is_capped_by_an_operator_setting() {
    // Without egress_max_rate, the line rate caps rate and ceiling.
    let p = on(&[("egress_line_rate", "1gbit")]);
    assert_eq!(p.max_burst, DEFAULT_MAX_BURST);
    for (label, value, needle) in [
        (
            "rein.net.egress.rate",
            "2gbit",
            "above the operator's cap of 1Gbit (egress_line_rate)",
        ),
        (
            "rein.net.egress.ceil",
            "2gbit",
            "above the operator's cap of 1Gbit (egress_line_rate)",
        ),
        (
            "rein.net.egress.burst",
            "1TiB",
            "above the operator's cap of 16MiB (egress_max_burst)",
        ),
    ] {
        let err = p
            .shape_for(&config(&[(label, value)]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(label) && err.contains(value) && err.contains(needle),
            "{err}"
        );
    }
    let p = on(&[("egress_max_rate", "100mbit"), ("egress_max_burst", "1MiB")]);
    let err = p
        .shape_for(
            &config(&[
                ("rein.net.egress.rate", "100mbit"),
                ("rein.net.egress.burst", "1048577B"),
            ]),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("cap of 1MiB (egress_max_burst)"), "{err}");
    assert!(err.contains("rein.net.egress.burst"), "{err}");
    let s = p
        .shape_for(
            &config(&[
                ("rein.net.egress.rate", "100mbit"),
                ("rein.net.egress.burst", "1MiB"),
            ]),
            None,
        )
        .unwrap()
        .unwrap();
    assert_eq!(s.burst, 1 << 20, "at the cap is accepted");
    // Default bursts (10 ms at the rate) are clamped to the cap, not refused.
    let p = on(&[("egress_max_burst", "64KiB")]);
    let s = p
        .shape_for(&config(&[("rein.net.egress.rate", "1gbit")]), None)
        .unwrap()
        .unwrap();
    assert_eq!(s.burst, 64 << 10);
    let p = on(&[
        ("egress_max_burst", "64KiB"),
        ("egress_rate_per_cpu", "1gbit"),
    ]);
    let s = p.shape_for(&config(&[]), Some(1.0)).unwrap().unwrap();
    assert_eq!(s.updated(&p, Some(4.0)).burst, 64 << 10);
    assert_eq!(format_bytes(1600), "1600B");
    assert_eq!(format_bytes(3 << 30), "3GiB");
}

#[test]
fn recovered_shapes_are_brought_within_the_caps() {
    let p = on(&[("egress_max_rate", "100mbit"), ("egress_max_burst", "1MiB")]);
    let old = Shape {
        rate: 200_000_000,
        ceil: 1_000_000_000,
        burst: 1 << 40,
        from_cpus: false,
    };
    let s = old.within_caps(&p);
    assert_eq!(
        (s.rate, s.ceil, s.burst),
        (100_000_000, 100_000_000, 1 << 20)
    );
    let fine = Shape {
        rate: 10_000_000,
        ceil: 50_000_000,
        burst: 65536,
        from_cpus: true,
    };
    assert_eq!(fine.within_caps(&p), fine);
}

#[test]
fn defaults_come_from_cpus_then_the_default_rate() {
    let p = on(&[
        ("egress_rate_per_cpu", "10mbit"),
        ("egress_default_rate", "5mbit"),
        ("egress_max_rate", "25mbit"),
    ]);
    let s = p.shape_for(&config(&[]), Some(1.5)).unwrap().unwrap();
    assert_eq!((s.rate, s.from_cpus), (15_000_000, true));
    // Derived rates are clamped to the cap, not refused.
    let s = p.shape_for(&config(&[]), Some(4.0)).unwrap().unwrap();
    assert_eq!(s.rate, 25_000_000);
    let s = p.shape_for(&config(&[]), None).unwrap().unwrap();
    assert_eq!((s.rate, s.from_cpus), (5_000_000, false));
    assert_eq!(on(&[]).shape_for(&config(&[]), Some(2.0)).unwrap(), None);
    // An asked rate wins over the derived one and does not follow cpus.
    let s = p
        .shape_for(&config(&[("rein.net.egress.rate", "1mbit")]), Some(2.0))
        .unwrap()
        .unwrap();
    assert_eq!(s.updated(&p, Some(8.0)), s);
}

#[test]
fn derived_rates_follow_cpus_and_keep_an_asked_ceiling() {
    let p = on(&[("egress_rate_per_cpu", "10mbit")]);
    let s = p
        .shape_for(&config(&[("rein.net.egress.ceil", "50mbit")]), Some(1.0))
        .unwrap()
        .unwrap();
    let u = s.updated(&p, Some(2.0));
    assert_eq!(
        (u.rate, u.ceil, u.from_cpus),
        (20_000_000, 50_000_000, true)
    );
    let u = s.updated(&p, Some(8.0));
    assert_eq!((u.rate, u.ceil), (80_000_000, 80_000_000));
    assert_eq!(s.updated(&p, None), s);
}
