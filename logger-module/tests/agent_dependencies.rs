//! What the agent loads: the bridge's staticlib (linked into the modules'
//! `.so`) carries the logger's agent side only. The shipper's TLS, HTTP
//! client, compression, disk buffer and sink clients must not reach it
//! through any normal dependency, whatever feature turns them on.

use std::process::Command;

/// Crates that belong to the shipper alone.
const SHIPPER_ONLY: &[&str] = &[
    "rein-logger",
    "rustls",
    "ring",
    "flate2",
    "ureq",
    "rdkafka",
    "redis",
];

/// Package names in the normal dependency graph of `package`, all features on.
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "--manifest-path",
            manifest,
            "-p",
            package,
            "-e",
            "normal",
            "--all-features",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_agent_links_no_shipper_crate() {
    let deps = normal_dependencies("rein-bridge");
    assert!(
        deps.iter().any(|d| d == "rein-log-module"),
        "the bridge should use the module crate; its graph: {deps:?}"
    );
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| SHIPPER_ONLY.contains(&d.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "the agent's .so would carry {found:?} (graph: {deps:?})"
    );
}

#[test]
fn the_shipper_still_has_them() {
    // The check above looks at real names: they are in the shipper's graph.
    let deps = normal_dependencies("rein-logger");
    for name in ["rustls", "flate2", "ureq"] {
        assert!(deps.iter().any(|d| d == name), "{name} not in {deps:?}");
    }
}
