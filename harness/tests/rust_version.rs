//! The workspace's `rust-version` is set once (`[workspace.package]`), inherited
//! by every crate, repeated in the fuzz crate (a workspace of its own), and no
//! lower than what the locked dependencies need. Clippy's `incompatible_msrv`
//! lint checks the code's use of std APIs against the same value.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `key = "value"` in `[section]` of a manifest (enough TOML for these lines).
fn value(manifest: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                return Some(v.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

fn workspace_rust_version() -> String {
    let root = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    value(&root, "workspace.package", "rust-version")
        .expect("[workspace.package] sets rust-version")
}

#[test]
fn every_crate_inherits_the_workspace_rust_version() {
    let msrv = workspace_rust_version();
    let found = rein_tests::files_under(&repo(), &|name| name == "Cargo.toml");
    let mut wrong = Vec::new();
    let mut packages = 0;
    for path in found {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.lines().any(|l| l.trim() == "[package]") {
            continue;
        }
        packages += 1;
        let own_workspace = text.lines().any(|l| l.trim() == "[workspace]");
        let ok = if own_workspace {
            // Not a member: the same value, written out.
            value(&text, "package", "rust-version").as_deref() == Some(msrv.as_str())
        } else {
            value(&text, "package", "rust-version.workspace").as_deref() == Some("true")
        };
        if !ok {
            wrong.push(path.strip_prefix(repo()).unwrap_or(&path).to_owned());
        }
    }
    assert!(
        packages >= 7,
        "only {packages} crates found under {:?}",
        repo()
    );
    assert!(
        wrong.is_empty(),
        "these crates do not take rust-version {msrv} from the workspace \
         (`rust-version.workspace = true`, or the value itself in a separate workspace): {wrong:?}"
    );
}

#[test]
fn the_workspace_rust_version_covers_the_code_and_the_locked_dependencies() {
    let msrv = workspace_rust_version();
    // `&raw` and `Option::is_none_or` are 1.82.
    assert!(version(&msrv) >= version("1.82"), "rust-version {msrv}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let info = Command::new(&rustc).arg("-vV").output().expect("rustc -vV");
    let info = String::from_utf8(info.stdout).unwrap();
    let host = info
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", host, "--manifest-path"])
        .arg(repo().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used: std::collections::HashSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut too_new = Vec::new();
    let mut not_inherited = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap();
        let needs = p["rust_version"].as_str();
        let name = format!("{} {}", p["name"], p["version"]);
        if members.contains(&id) {
            if needs != Some(msrv.as_str()) {
                not_inherited.push(format!("{name}: {needs:?}"));
            }
        } else if let Some(needs) = needs {
            if used.contains(id) && version(needs) > version(&msrv) {
                too_new.push(format!("{name} needs {needs}"));
            }
        }
    }
    assert!(not_inherited.is_empty(), "members: {not_inherited:?}");
    assert!(
        too_new.is_empty(),
        "rust-version {msrv} is below what locked dependencies need: {too_new:?}"
    );
}
