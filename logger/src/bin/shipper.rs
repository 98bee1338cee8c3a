//! `rein-log-shipper`: the per-agent log shipper.
//!
//! ```text
//! rein-log-shipper run   --config FILE   # supervisor + worker (run this under systemd)
//! rein-log-shipper check --config FILE   # validate the settings and exit
//! rein-log-shipper stats --state-dir DIR # print the counters (the supervisor's under "supervisor")
//! ```

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use rein_logger::shipper::{supervisor, worker, ShipperConfig};

fn arg(args: &[String], name: &str) -> Option<PathBuf> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
}

fn inherited(var: &str) -> Result<OwnedFd, String> {
    let fd: i32 = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(format!("{var} not set"))?;
    // SAFETY: the supervisor passed this descriptor to us (it is ours alone in this process).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on the descriptor we now own.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        )
    };
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

fn main_inner() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let config = || -> Result<(PathBuf, ShipperConfig), String> {
        let p = arg(&args, "--config").ok_or("--config FILE is required")?;
        let c = ShipperConfig::load(&p)?;
        Ok((p, c))
    };
    match cmd {
        "run" => {
            let (p, c) = config()?;
            supervisor::run(&p, &c)
        }
        "worker" => {
            let (_, c) = config()?;
            rein_logger::sink::deadletter::set_limits(c.dead_letter);
            supervisor::raise_nofile();
            worker::install_stop_handler();
            let listen = inherited("REIN_SHIPPER_LISTEN_FD")?;
            let control = inherited("REIN_SHIPPER_CONTROL_FD")?;
            let mut w = worker::Worker::new(c, listen, control)?;
            w.adopt()?;
            Ok(w.run()?)
        }
        "check" => config().map(|(p, c)| check(&p, &c)),
        "stats" => {
            let d = arg(&args, "--state-dir").ok_or("--state-dir DIR is required")?;
            let read = |name: &str| -> Result<Option<serde_json::Value>, String> {
                match std::fs::read_to_string(d.join(name)) {
                    Ok(s) => serde_json::from_str(&s)
                        .map(Some)
                        .map_err(|e| format!("{}: {e}", d.join(name).display())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("{}: {e}", d.join(name).display())),
                }
            };
            // The worker's counters, and the supervisor's under `supervisor`
            // (there even when no worker could be started).
            let worker = read("counters.json")?;
            let sup = read(supervisor::STATS_FILE)?;
            let mut v = match (worker, &sup) {
                (Some(v), _) => v,
                (None, Some(_)) => serde_json::json!({}),
                (None, None) => return Err(format!("{}: no counters yet", d.display())),
            };
            if let (Some(obj), Some(s)) = (v.as_object_mut(), sup) {
                obj.insert("supervisor".into(), s);
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
        // Containers the module could not hand to this shipper (their output
        // is in their sandbox files only): one JSON line each.
        "fallbacks" => {
            let (_, c) = config()?;
            let dir = rein_logger::fallback::dir_for(&c.socket);
            for (_, r) in rein_logger::fallback::list(&dir) {
                let line = serde_json::json!({"container": r.key, "sandbox": r.sandbox,
                    "reason": r.reason, "at_ms": r.at_ms});
                println!("{line}");
            }
            Ok(())
        }
        _ => Err(
            "usage: rein-log-shipper run|check|fallbacks --config FILE | stats --state-dir DIR"
                .into(),
        ),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = main_inner() {
        eprintln!("rein-log-shipper: {e}");
        std::process::exit(1);
    }
}
