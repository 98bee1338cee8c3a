//! The harness survives its own restart the way the agent does: a detached
//! container is recovered by a new harness process (root only: real cgroups).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn rein_run(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rein-run"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("rein-run runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    root: String,
}

fn setup(name: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = format!("rein-harness-test-{name}-{}", std::process::id());
    let config = dir.path().join("config.json");
    let state = dir.path().join("state");
    fs::write(
        &config,
        format!(
            r#"{{"state_dir": "{}", "sandbox_dir": "{}", "isolators": [{{"kind": "net_cls", "parameters": [
                ["net_cls_primary_handle", "0xe"], ["mount_net_cls", "true"], ["cgroups_root", "{root}"]]}}]}}"#,
            state.display(),
            dir.path().join("sandboxes").display()
        ),
    )
    .unwrap();
    Setup { dir, config, root }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mount) = net_cls_mount() {
            let _ = rein_core::cgroupfs::Cgroup::at(mount.join(&self.root)).remove();
        }
    }
}

fn net_cls_mount() -> Option<std::path::PathBuf> {
    let mounts = rein_core::cgroupfs::cgroup_mounts(Path::new("/proc/self/mountinfo")).ok()?;
    mounts
        .into_iter()
        .find(|m| m.controllers.iter().any(|c| c == "net_cls"))
        .map(|m| m.mount_point)
}

#[test]
#[ignore = "needs root"]
fn detached_container_is_recovered_and_destroyed_by_a_new_harness() {
    if !rein_tests::require_root("detached_container_is_recovered_and_destroyed_by_a_new_harness") {
        return;
    }
    let s = setup("recover");
    let out = rein_run(
        &s.config,
        &["--id", "rt1", "--detach", "--json", "--", "sleep", "60"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let pid = report["pid"].as_i64().unwrap();
    let classid = report["status"][0]["net_cls_classid"].as_u64().unwrap();
    let cgroup = net_cls_mount()
        .expect("net_cls mounted by the harness")
        .join(&s.root)
        .join("rt1");
    assert_eq!(
        fs::read_to_string(cgroup.join("net_cls.classid"))
            .unwrap()
            .trim(),
        classid.to_string()
    );
    assert!(fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .contains(&format!("/{}/rt1", s.root)));

    // A new harness process: recovers the live container with the same classid.
    let out = rein_run(&s.config, &["--json", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("recovered 1 live container"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("\"net_cls_classid\":{classid}")),
        "{}",
        text(&out)
    );

    // Another one destroys it: process gone, cgroup and state removed.
    let out = rein_run(&s.config, &["destroy", "rt1"]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    );
    assert!(!cgroup.exists());
    let leftovers: Vec<_> = walk(&s.dir.path().join("state/isolators"));
    assert!(leftovers.is_empty(), "state left: {leftovers:?}");
}

#[test]
#[ignore = "needs root"]
fn container_that_died_while_the_harness_was_away_is_cleaned_as_an_orphan() {
    if !rein_tests::require_root(
        "container_that_died_while_the_harness_was_away_is_cleaned_as_an_orphan",
    ) {
        return;
    }
    let s = setup("orphan");
    let out = rein_run(
        &s.config,
        &["--id", "gone", "--detach", "--json", "--", "sleep", "60"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let pid = i32::try_from(report["pid"].as_i64().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = rein_run(&s.config, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("cleaned up orphan container gone"),
        "{}",
        text(&out)
    );
    assert!(!net_cls_mount()
        .expect("net_cls mounted by the harness")
        .join(&s.root)
        .join("gone")
        .exists());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}
