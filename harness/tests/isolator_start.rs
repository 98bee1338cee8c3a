//! A configured isolator (or logger) that cannot start fails the run before any
//! container starts, naming it and the reason: a container must never run with
//! less isolation than its configuration asks for. Needs no root: the modules
//! refuse their parameters before touching the kernel.

use std::path::Path;
use std::process::{Command, Output};

fn rein_run(dir: &Path, isolators: &str, logger: &str) -> Output {
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"state_dir": "{d}/state", "sandbox_dir": "{d}/sandboxes",
                "isolators": [{isolators}] {logger}}}"#,
            d = dir.display()
        ),
    )
    .unwrap();
    let marker = dir.join("ran");
    Command::new(env!("CARGO_BIN_EXE_rein-run"))
        .arg("--config")
        .arg(&config)
        .args(["--id", "c1", "--", "touch"])
        .arg(&marker)
        .env("NO_COLOR", "1")
        .output()
        .expect("rein-run runs")
}

/// Runs `rein-run` in a directory of its own with these isolators and logger
/// settings, and checks that it refused to run, naming each of `names`.
fn refused(isolators: &str, logger: &str, names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = rein_run(dir.path(), isolators, logger);
    assert_refused(dir.path(), &out, names);
}

fn assert_refused(dir: &Path, out: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "'{name}' not in: {stderr}");
    }
    assert!(
        !dir.join("ran").exists(),
        "the command ran without its isolator: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes off a terminal: {stderr:?}"
    );
}

#[test]
fn an_isolator_with_a_bad_parameter_fails_the_run_naming_it_and_the_reason() {
    refused(
        r#"{"kind": "net_cls", "parameters": [["net_cls_primary_handle", "zz"]]}"#,
        "",
        &[
            "isolator 'net_cls' cannot start",
            "net_cls_primary_handle",
            "not a whole number",
        ],
    );
}

#[test]
fn each_isolator_kind_that_cannot_start_fails_the_run() {
    // The first that cannot start is named; none is left out silently.
    refused(
        r#"{"kind": "net_cls", "parameters": [["net_cls_primary_handle", "zz"]]},
           {"kind": "disk", "parameters": [["default_mode", "bogus"]]}"#,
        "",
        &["isolator 'net_cls' cannot start"],
    );
    refused(
        r#"{"kind": "disk", "parameters": [["default_mode", "bogus"]]}"#,
        "",
        &["isolator 'disk' cannot start", "default_mode", "bogus"],
    );
}

#[test]
fn an_unknown_isolator_kind_fails_the_run() {
    refused(
        r#"{"kind": "nope"}"#,
        "",
        &["isolator 'nope' cannot start", "unknown isolator kind"],
    );
}

#[test]
fn a_logger_that_cannot_start_fails_the_run() {
    refused(
        "",
        r#", "logger": {"parameters": [["default_sink", "carrier-pigeon"]]}"#,
        &["the container logger cannot start", "default_sink"],
    );
}
