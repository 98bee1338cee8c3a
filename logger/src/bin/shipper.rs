//! `rein-log-shipper`: the per-agent log shipper.
//!
//! ```text
//! rein-log-shipper run   --config FILE   # supervisor + worker (run this under systemd)
//! rein-log-shipper check --config FILE   # validate the settings and exit
//! rein-log-shipper stats --state-dir DIR # print the counters (the supervisor's under "supervisor")
//! rein-log-shipper fallbacks --config FILE # containers the module wrote to their sandbox files
//! ```

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use rein_logger::shipper::{supervisor, worker, ShipperConfig};

/// The per-agent log shipper of the rein container logger.
#[derive(Debug, Parser)]
#[command(name = "rein-log-shipper")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Supervisor and worker (run this under systemd).
    Run {
        /// The settings file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The worker, started by the supervisor (descriptors in the environment).
    #[command(hide = true)]
    Worker {
        /// The settings file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validates the settings, prints them (secrets redacted) and exits.
    Check {
        /// The settings file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Prints the counters (the supervisor's under "supervisor").
    Stats {
        /// The shipper's state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Lists the containers the module could not hand to this shipper, one
    /// JSON line each.
    Fallbacks {
        /// The settings file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Why the shipper stopped with an error.
#[derive(Debug, thiserror::Error)]
enum ShipperError {
    /// The settings file.
    #[error("{0}")]
    Config(String),
    /// The supervisor could not start or go on.
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// The worker could not start or go on.
    #[error("{0}")]
    Worker(String),
    /// A descriptor the supervisor should have passed.
    #[error("{var}: {why}")]
    Inherited {
        /// The environment variable naming it.
        var: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A counters file that cannot be read.
    #[error("{}: {why}", path.display())]
    Counters {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Neither the worker nor the supervisor wrote counters yet.
    #[error("{}: no counters yet", .0.display())]
    NoCounters(PathBuf),
}

/// A descriptor the supervisor passed in `var`, made close-on-exec.
fn inherited(var: &'static str) -> Result<OwnedFd, ShipperError> {
    let bad = |why: String| ShipperError::Inherited { var, why };
    let fd: i32 = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("not set".into()))?;
    // SAFETY: the supervisor passed this descriptor to us (it is ours alone in this process).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| bad(e.to_string()))?;
    Ok(fd)
}

/// `check`: the effective settings (secrets redacted by their `Debug`) and
/// a warning for every file holding credentials that other users can read.
fn check(path: &std::path::Path, c: &ShipperConfig) {
    println!("{c:#?}");
    let settings_hold_secrets = c.kafka.as_ref().is_some_and(|k| !k.secrets().is_empty())
        || c.redis
            .as_ref()
            .is_some_and(|r| !r.url.secrets().is_empty());
    let files = [
        (
            "the settings file",
            settings_hold_secrets.then(|| path.to_path_buf()),
        ),
        (
            "es_auth_file",
            c.es.as_ref().and_then(|e| e.auth_file.clone()),
        ),
        (
            "redis_auth_file",
            c.redis.as_ref().and_then(|r| r.auth_file.clone()),
        ),
        (
            "nats_auth_file",
            c.nats.as_ref().and_then(|n| n.auth_file.clone()),
        ),
        (
            "s3_credentials_file",
            c.s3.as_ref().map(|s| s.credentials_file.clone()),
        ),
    ];
    for (key, path) in files {
        let Some(path) = path else { continue };
        match std::fs::metadata(&path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => eprintln!(
                "warning: {key} {} is open to other users (mode {:o}): chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o7777
            ),
            Ok(_) => {}
            Err(e) => eprintln!("warning: {key} {}: {e}", path.display()),
        }
    }
}

/// `stats`: the worker's counters, and the supervisor's under `supervisor`
/// (there even when no worker could be started).
fn stats(d: &Path) -> Result<(), ShipperError> {
    let read = |name: &str| -> Result<Option<serde_json::Value>, ShipperError> {
        let path = d.join(name);
        let bad = |why: String| ShipperError::Counters {
            path: path.clone(),
            why,
        };
        match std::fs::read_to_string(&path) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| bad(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(bad(e.to_string())),
        }
    };
    let worker = read("counters.json")?;
    let sup = read(supervisor::STATS_FILE)?;
    let mut v = match (worker, &sup) {
        (Some(v), _) => v,
        (None, Some(_)) => serde_json::json!({}),
        (None, None) => return Err(ShipperError::NoCounters(d.to_path_buf())),
    };
    if let (Some(obj), Some(s)) = (v.as_object_mut(), sup) {
        obj.insert("supervisor".into(), s);
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

fn main_inner(cli: Cli) -> Result<(), ShipperError> {
    let load = |p: &Path| ShipperConfig::load(p).map_err(|e| ShipperError::Config(e.to_string()));
    // The worker's own errors, whatever their type.
    let worker_err = |e: &dyn std::fmt::Display| ShipperError::Worker(e.to_string());
    match cli.command {
        Cmd::Run { config } => {
            let c = load(&config)?;
            Ok(supervisor::run(&config, &c)?)
        }
        Cmd::Worker { config } => {
            let c = load(&config)?;
            rein_logger::sink::deadletter::set_limits(c.dead_letter);
            supervisor::raise_nofile();
            worker::install_stop_handler();
            let listen = inherited("REIN_SHIPPER_LISTEN_FD")?;
            let control = inherited("REIN_SHIPPER_CONTROL_FD")?;
            let mut w = worker::Worker::new(c, listen, control).map_err(|e| worker_err(&e))?;
            w.adopt().map_err(|e| worker_err(&e))?;
            w.run().map_err(|e| worker_err(&e))
        }
        Cmd::Check { config } => load(&config).map(|c| check(&config, &c)),
        Cmd::Stats { state_dir } => stats(&state_dir),
        // Containers the module could not hand to this shipper (their output
        // is in their sandbox files only).
        Cmd::Fallbacks { config } => {
            let c = load(&config)?;
            let dir = rein_logger::fallback::dir_for(&c.socket);
            for (_, r) in rein_logger::fallback::list(&dir) {
                let line = serde_json::json!({"container": r.key, "sandbox": r.sandbox,
                    "reason": r.reason, "at_ms": r.at_ms});
                println!("{line}");
            }
            Ok(())
        }
    }
}

fn main() {
    // Usage errors, --help: clap prints them and exits (2, or 0 for help).
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(rein_core::terminal::colour_on_stderr())
        .init();
    if let Err(e) = main_inner(cli) {
        eprintln!("rein-log-shipper: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_supervisor_s_own_invocations_parse() {
        // `spawn` and `exec_upgrade` run these.
        for args in [
            ["rein-log-shipper", "worker", "--config", "/etc/s.conf"],
            ["rein-log-shipper", "run", "--config", "/etc/s.conf"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        let s = Cli::try_parse_from(["x", "stats", "--state-dir", "/d"]).unwrap();
        assert!(matches!(s.command, Cmd::Stats { state_dir } if state_dir == Path::new("/d")));
        assert!(
            Cli::try_parse_from(["x", "run"]).is_err(),
            "--config is required"
        );
        assert!(Cli::try_parse_from(["x", "frobnicate"]).is_err());
    }
}
