//! The supervisor's command line as the fault tests and the chaos bench start it
//! (`#[path]`-included by the bench).

use std::path::Path;
use std::process::Command;

/// `EXE run --config DIR/shipper.conf`, logging errors only unless `RUST_LOG`
/// asks for more.
pub fn supervisor_command(exe: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--config"])
        .arg(dir.join("shipper.conf"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        );
    cmd
}
