//! Command-line parsing (no shell, no config file sees task strings: labels are
//! passed as data to the same parser the agent modules use).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

/// The forms of a command line, shown by `--help` and with every usage error.
const USAGE: &str = "\
rein-run [OPTIONS] -- COMMAND [ARGS...]     run a command as a container
       rein-run [OPTIONS] wait ID                 adopt a detached container and wait for it
       rein-run [OPTIONS] destroy ID              kill a detached container and clean up
       rein-run [OPTIONS] status                  recover and show live containers
       rein-run [OPTIONS] bench [--containers N]  lifecycle churn benchmark
       rein-run defaults                          print the embedded default configuration
       rein-run labels                            print the label schema (Markdown)";

/// Runs a command as a container through the lifecycle a Mesos agent drives.
#[derive(Debug, Parser)]
#[command(name = "rein-run", override_usage = USAGE, disable_help_subcommand = true)]
struct Cli {
    #[command(flatten)]
    options: Flags,
    #[command(subcommand)]
    command: Option<Sub>,
    /// The command to run as a container, and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    argv: Vec<String>,
}

/// The options every form takes (before or after the subcommand).
#[derive(Debug, Args)]
struct Flags {
    /// Task label, e.g. rein.net.egress.rate=10mbit (repeatable; the value may be
    /// any bytes, as a framework may send).
    #[arg(long = "label", value_name = "KEY=VALUE", global = true,
          value_parser = OsStringValueParser::new().try_map(byte_pair))]
    labels: Vec<(Vec<u8>, Vec<u8>)>,
    /// Environment variable, e.g. REIN_NET_EGRESS_RATE=10mbit (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", global = true, value_parser = env_pair)]
    env: Vec<(String, String)>,
    /// The container's cpus resource.
    #[arg(long, value_name = "N", global = true, allow_negative_numbers = true,
          value_parser = number)]
    cpus: Option<f64>,
    /// The container's mem resource, in MB.
    #[arg(long = "mem", value_name = "MB", global = true, allow_negative_numbers = true,
          value_parser = number)]
    mem_mb: Option<f64>,
    /// The container's disk resource, in MB.
    #[arg(long = "disk", value_name = "MB", global = true, allow_negative_numbers = true,
          value_parser = number)]
    disk_mb: Option<f64>,
    /// Container id (default: generated); parent.child for a nested one.
    #[arg(long, value_name = "ID", global = true)]
    id: Option<String>,
    /// Task id (default: the container id).
    #[arg(long, value_name = "ID", global = true)]
    task_id: Option<String>,
    /// Sandbox directory (default: STATE/sandboxes/ID).
    #[arg(long, value_name = "DIR", global = true)]
    sandbox: Option<PathBuf>,
    /// Run the command as this user (name or uid), in a sandbox it owns, as the
    /// agent's --switch_user does.
    #[arg(long, value_name = "USER", global = true)]
    user: Option<String>,
    /// Isolators and module parameters (default: embedded, see `defaults`).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Where state is kept (default: from the configuration).
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Accepted for older scripts: a configured isolator that cannot start always
    /// fails the run.
    #[arg(long = "strict", global = true, hide = true)]
    _strict: bool,
    /// Leave the container running; adopt it later with `wait`.
    #[arg(long, global = true)]
    detach: bool,
    /// Print statistics periodically (e.g. 1s).
    #[arg(long, value_name = "DURATION", global = true, value_parser = duration)]
    interval: Option<Duration>,
    /// Print reports as JSON lines on stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Adopt a detached container and wait for it.
    Wait {
        /// The container id.
        id: String,
    },
    /// Kill a detached container and clean up.
    Destroy {
        /// The container id.
        id: String,
    },
    /// Recover and show live containers.
    Status,
    /// Lifecycle churn benchmark.
    Bench {
        /// Lifecycles to run.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        containers: usize,
    },
    /// Print the embedded default configuration.
    Defaults,
    /// Print the label schema (Markdown).
    Labels,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run a command.
    Run {
        /// The command and its arguments.
        argv: Vec<String>,
    },
    /// Adopt and wait for a detached container.
    Wait {
        /// Its id.
        id: String,
    },
    /// Kill and clean up a detached container.
    Destroy {
        /// Its id.
        id: String,
    },
    /// Show live containers.
    Status,
    /// The lifecycle benchmark.
    Bench(BenchOptions),
    /// Print the default configuration.
    Defaults,
    /// Print the label schema.
    Labels,
}

/// Benchmark options.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Lifecycles to run.
    pub containers: usize,
}

/// All options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The command.
    pub command: Command,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--label`s, as bytes: a framework may send labels that are not UTF-8, and
    /// the modules must see them as the agent's shim passes them.
    pub labels: Vec<(Vec<u8>, Vec<u8>)>,
    /// `--env`s.
    pub env: Vec<(String, String)>,
    /// `--id`.
    pub id: Option<String>,
    /// `--sandbox`.
    pub sandbox: Option<PathBuf>,
    /// `--user`.
    pub user: Option<String>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--mem`.
    pub mem_mb: Option<f64>,
    /// `--disk`.
    pub disk_mb: Option<f64>,
    /// `--task-id`.
    pub task_id: Option<String>,
    /// `--detach`.
    pub detach: bool,
    /// `--json`.
    pub json: bool,
    /// `--interval`.
    pub interval: Option<Duration>,
}

impl Options {
    /// The container id chain (generated when not given).
    pub fn id_chain(&self) -> Vec<String> {
        match &self.id {
            Some(id) => id.split('.').map(str::to_owned).collect(),
            None => vec![generated_id()],
        }
    }
}

fn generated_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("rein-{:x}{:08x}", std::process::id(), nanos)
}

/// Why one argument's value is refused (clap prints it after the flag's name).
#[derive(Debug, thiserror::Error)]
enum ArgError {
    /// An `--env` value without `=`.
    #[error("variable '{0}' is not KEY=VALUE")]
    Env(String),
    /// A `--label` value without `=`.
    #[error("label '{0}' is not KEY=VALUE")]
    Label(String),
    /// A negative, infinite or malformed number.
    #[error("'{0}' is not a non-negative number")]
    Number(String),
    /// A malformed duration.
    #[error(transparent)]
    Duration(#[from] rein_core::units::UnitError),
}

fn env_pair(s: &str) -> Result<(String, String), ArgError> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| ArgError::Env(s.to_owned()))
}

fn byte_pair(s: OsString) -> Result<(Vec<u8>, Vec<u8>), ArgError> {
    let bytes = s.into_vec();
    let eq = bytes
        .iter()
        .position(|b| *b == b'=')
        .ok_or_else(|| ArgError::Label(String::from_utf8_lossy(&bytes).into_owned()))?;
    Ok((bytes[..eq].to_vec(), bytes[eq + 1..].to_vec()))
}

fn number(s: &str) -> Result<f64, ArgError> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| ArgError::Number(s.to_owned()))
}

fn duration(s: &str) -> Result<Duration, ArgError> {
    Ok(rein_core::units::parse_duration(s)?)
}

/// Parses the arguments (without the program name). Only label values may be
/// other than UTF-8. `--help` comes back as an error that prints the help and
/// exits 0 (`clap::Error::exit`).
pub fn parse(args: Vec<OsString>) -> Result<Options, clap::Error> {
    let program = std::iter::once(OsString::from("rein-run"));
    let cli = Cli::try_parse_from(program.chain(args))?;
    let command = match (cli.command, cli.argv) {
        (Some(Sub::Wait { id }), _) => Command::Wait { id },
        (Some(Sub::Destroy { id }), _) => Command::Destroy { id },
        (Some(Sub::Status), _) => Command::Status,
        (Some(Sub::Bench { containers }), _) => Command::Bench(BenchOptions { containers }),
        (Some(Sub::Defaults), _) => Command::Defaults,
        (Some(Sub::Labels), _) => Command::Labels,
        (None, argv) if argv.is_empty() => {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "nothing to do: give `-- COMMAND [ARGS...]` or a subcommand\n\n\
                 For more information, try '--help'.\n",
            )
            .with_cmd(&<Cli as clap::CommandFactory>::command()))
        }
        (None, argv) => Command::Run { argv },
    };
    let o = cli.options;
    Ok(Options {
        command,
        config: o.config,
        state_dir: o.state_dir,
        labels: o.labels,
        env: o.env,
        id: o.id,
        sandbox: o.sandbox,
        user: o.user,
        cpus: o.cpus,
        mem_mb: o.mem_mb,
        disk_mb: o.disk_mb,
        task_id: o.task_id,
        detach: o.detach,
        json: o.json,
        interval: o.interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn the_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn run_with_labels() {
        let o = parse(args(&[
            "--label",
            "rein.net.egress.rate=10mbit",
            "--disk",
            "64",
            "--",
            "sh",
            "-c",
            "x",
        ]))
        .unwrap();
        assert_eq!(
            o.labels,
            vec![(b"rein.net.egress.rate".to_vec(), b"10mbit".to_vec())]
        );
        assert_eq!(o.disk_mb, Some(64.0));
        assert_eq!(
            o.command,
            Command::Run {
                argv: strings(&["sh", "-c", "x"])
            }
        );
    }

    #[test]
    fn subcommands_and_errors() {
        assert_eq!(
            parse(args(&["wait", "c1"])).unwrap().command,
            Command::Wait { id: "c1".into() }
        );
        assert_eq!(
            parse(args(&["bench", "--containers", "10"]))
                .unwrap()
                .command,
            Command::Bench(BenchOptions { containers: 10 })
        );
        assert!(parse(args(&["--label", "novalue", "--", "true"])).is_err());
        let o = parse(vec![
            "--label".into(),
            OsString::from_vec(b"rein.log.sink=r\xffd".to_vec()),
            "--".into(),
            "true".into(),
        ])
        .unwrap();
        assert_eq!(o.labels[0].1, b"r\xffd");
        assert!(parse(vec![OsString::from_vec(b"--id=\xff".to_vec())]).is_err());
        assert!(parse(args(&["--cpus", "-1", "--", "true"])).is_err());
        assert!(parse(args(&["--"])).is_err());
        assert!(parse(args(&[])).is_err());
        let o = parse(args(&["--id", "a.b", "--", "true"])).unwrap();
        assert_eq!(o.id_chain(), vec!["a", "b"]);
        assert!(parse(args(&["--", "true"])).unwrap().id_chain()[0].starts_with("rein-"));
    }

    /// The forms the README and the tests use keep working.
    #[test]
    fn documented_forms() {
        let o = parse(args(&[
            "--label",
            "rein.blkio.write_bps=10MiB/s",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=f bs=1M count=20 oflag=direct",
        ]))
        .unwrap();
        assert_eq!(o.labels[0].0, b"rein.blkio.write_bps");
        let o = parse(args(&[
            "--disk",
            "10",
            "--label",
            "rein.disk.mode=kill",
            "--user",
            "nobody",
            "--env",
            "REIN_NET_EGRESS_RATE=10mbit",
            "--cpus",
            "0.5",
            "--mem",
            "128",
            "--task-id",
            "t1",
            "--sandbox",
            "/tmp/s",
            "--",
            "true",
        ]))
        .unwrap();
        assert_eq!(o.disk_mb, Some(10.0));
        assert_eq!(o.user.as_deref(), Some("nobody"));
        assert_eq!(
            o.env,
            vec![("REIN_NET_EGRESS_RATE".into(), "10mbit".into())]
        );
        assert_eq!((o.cpus, o.mem_mb), (Some(0.5), Some(128.0)));
        assert_eq!(o.task_id.as_deref(), Some("t1"));
        assert_eq!(o.sandbox, Some(PathBuf::from("/tmp/s")));
        // Options go before or after the subcommand, as before.
        let o = parse(args(&[
            "--json",
            "--interval",
            "200ms",
            "--state-dir",
            "/s",
            "wait",
            "c1",
        ]))
        .unwrap();
        assert!(o.json);
        assert_eq!(o.interval, Some(Duration::from_millis(200)));
        assert_eq!(o.state_dir, Some(PathBuf::from("/s")));
        let o = parse(args(&["destroy", "c1", "--config", "/c.json"])).unwrap();
        assert_eq!(o.command, Command::Destroy { id: "c1".into() });
        assert_eq!(o.config, Some(PathBuf::from("/c.json")));
        let o = parse(args(&["--config", "/c", "bench", "--containers", "5"])).unwrap();
        assert_eq!(o.command, Command::Bench(BenchOptions { containers: 5 }));
        assert_eq!(
            parse(args(&["bench"])).unwrap().command,
            Command::Bench(BenchOptions { containers: 1000 })
        );
        assert!(
            parse(args(&["--strict", "--detach", "--", "true"]))
                .unwrap()
                .detach
        );
        assert_eq!(parse(args(&["status"])).unwrap().command, Command::Status);
        assert_eq!(
            parse(args(&["defaults"])).unwrap().command,
            Command::Defaults
        );
        assert_eq!(parse(args(&["labels"])).unwrap().command, Command::Labels);
        // Errors name the option and the reason.
        let e = parse(args(&["--cpus", "-1", "--", "true"])).unwrap_err();
        assert!(e.to_string().contains("--cpus"), "{e}");
        assert!(e.to_string().contains("non-negative"), "{e}");
        let e = parse(args(&["--interval", "soon", "status"])).unwrap_err();
        assert!(e.to_string().contains("--interval"), "{e}");
        let e = parse(args(&["--nope"])).unwrap_err();
        assert!(e.to_string().contains("--nope"), "{e}");
        let help = parse(args(&["--help"])).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("wait ID"), "{help}");
    }
}
