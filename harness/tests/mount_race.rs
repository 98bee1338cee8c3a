//! Harness runs starting at the same moment on a machine where the net_cls
//! hierarchy is not mounted yet (each with `mount_net_cls=true`), as two agents
//! starting together would: every run must start its net_cls isolator and run its
//! container. The runs live in a mount namespace of the test's own where the
//! host's net_cls mount is detached, so the host is untouched. Root only.

#[path = "../../tests/tests/support/fresh_mount_ns.rs"]
mod fresh_mount_ns;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use fresh_mount_ns::{net_cls_mounts, unmount_all, without_net_cls_mounted};

const ROUNDS: usize = 30;
const RUNS: usize = 3;

/// A `rein-run` (an isolator that cannot start fails the run) that
/// waits for a line on its stdin before it starts, so all runs of a round start
/// together.
fn held_run(dir: &Path, round: usize, i: usize) -> Child {
    let config = dir.join(format!("config-{i}.json"));
    fs::write(
        &config,
        format!(
            r#"{{"state_dir": "{}", "isolators": [{{"kind": "net_cls", "parameters": [
                ["net_cls_primary_handle", "0xe"], ["mount_net_cls", "true"],
                ["cgroups_hierarchy", "{}"], ["cgroups_root", "rein-race-{}-{round}"]]}}]}}"#,
            dir.join(format!("state-{i}")).display(),
            dir.display(),
            std::process::id()
        ),
    )
    .unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(r#"echo ready; read -r go; exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_rein-run"))
        .arg("--config")
        .arg(&config)
        .args(["--id", &format!("r{i}"), "--", "true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning sh")
}

#[test]
#[ignore = "needs root"]
fn harness_runs_starting_together_on_a_fresh_machine_all_start_net_cls() {
    if !rein_tests::require_root(
        "harness_runs_starting_together_on_a_fresh_machine_all_start_net_cls",
    ) {
        return;
    }
    let failures = without_net_cls_mounted(|| {
        let mut failures = Vec::new();
        for round in 0..ROUNDS {
            let dir = tempfile::tempdir().unwrap();
            let mut runs: Vec<Child> = (0..RUNS).map(|i| held_run(dir.path(), round, i)).collect();
            let mut outputs: Vec<BufReader<_>> = runs
                .iter_mut()
                .map(|c| {
                    let mut out = BufReader::new(c.stdout.take().unwrap());
                    let mut line = String::new();
                    out.read_line(&mut line).unwrap();
                    assert_eq!(line.trim(), "ready");
                    out
                })
                .collect();
            for run in &mut runs {
                run.stdin.take().unwrap().write_all(b"go\n").unwrap();
            }
            for (i, (mut run, out)) in runs.into_iter().zip(&mut outputs).enumerate() {
                let status = run.wait().unwrap();
                let mut text = String::new();
                out.read_to_string(&mut text).unwrap();
                run.stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut text)
                    .unwrap();
                if !status.success() {
                    failures.push(format!("round {round}, run {i}: {status}: {text}"));
                }
            }
            let mounted = net_cls_mounts();
            assert!(
                mounted.iter().any(|m| m.starts_with(dir.path())),
                "round {round}: net_cls is not mounted below {}: {mounted:?}",
                dir.path().display()
            );
            // The hierarchy is the host's too: leave no cgroups root behind.
            let root = dir
                .path()
                .join("net_cls")
                .join(format!("rein-race-{}-{round}", std::process::id()));
            if let Err(e) = rein_core::cgroupfs::Cgroup::at(&root).remove() {
                failures.push(format!("round {round}: removing {}: {e}", root.display()));
            }
            unmount_all(&dir.path().join("net_cls"));
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of {} runs failed: {failures:#?}",
        failures.len(),
        ROUNDS * RUNS
    );
}
