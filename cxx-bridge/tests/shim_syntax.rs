//! CI has no Mesos, so the shim (modules/src) is compiled here with
//! `g++ -fsyntax-only` against minimal hand-written declarations of the Mesos,
//! libprocess, stout, glog and protobuf types it uses (tests/cpp/stubs) and the
//! bridge header cxx generated for this build: a signature change on the Rust side
//! that the shim does not follow fails here. Skips, saying so, without g++.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_shim_compiles_against_the_bridge_and_the_stubs() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        eprintln!("SKIPPED: {cxx} not found; the shim's syntax check did not run");
        return;
    }
    let out_dir = Path::new(env!("OUT_DIR"));
    let repo = repo();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(repo.join("modules/src"))
        .expect("modules/src")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cpp"))
        .collect();
    sources.sort();
    assert!(sources.len() >= 4, "shim sources: {sources:?}");
    let mut failures = Vec::new();
    for source in &sources {
        // c++11: the standard Mesos builds with (modules/build.sh's default).
        let output = Command::new(&cxx)
            .args(["-std=c++11", "-fsyntax-only", "-Wall", "-Werror"])
            .arg("-I")
            .arg(repo.join("tests/cpp/stubs"))
            .arg("-I")
            .arg(repo.join("modules/src"))
            .arg("-I")
            .arg(out_dir.join("cxxbridge/include"))
            .arg("-I")
            .arg(out_dir.join("cxxbridge/crate"))
            .arg(source)
            .output()
            .expect("run the compiler");
        if !output.status.success() {
            failures.push(format!(
                "{}:\n{}",
                source.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the shim does not compile:\n{}",
        failures.join("\n")
    );
}
