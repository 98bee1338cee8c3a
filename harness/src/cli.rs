//! Command-line parsing (no shell, no config file sees task strings: labels are
//! passed as data to the same parser the agent modules use).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

/// Usage text.
pub const USAGE: &str = "\
usage: rein-run [OPTIONS] -- COMMAND [ARGS...]   run a command as a container
       rein-run [OPTIONS] wait ID               adopt a detached container and wait for it
       rein-run [OPTIONS] destroy ID            kill a detached container and clean up
       rein-run [OPTIONS] status                recover and show live containers
       rein-run [OPTIONS] bench [--containers N]  lifecycle churn benchmark
       rein-run defaults                        print the embedded default configuration
       rein-run labels                          print the label schema (Markdown)

options:
  --label KEY=VALUE    task label, e.g. rein.net.egress.rate=10mbit (repeatable)
  --env KEY=VALUE      environment variable, e.g. REIN_NET_EGRESS_RATE=10mbit (repeatable)
  --cpus N --mem MB --disk MB   the container's resources
  --id ID              container id (default: generated); parent.child for a nested one
  --sandbox DIR        sandbox directory (default: STATE/sandboxes/ID)
  --user USER          run the command as this user (name or uid), in a sandbox it
                       owns, as the agent's --switch_user does
  --config FILE        isolators and module parameters (default: embedded, see `defaults`)
  --state-dir DIR      where state is kept (default: from the configuration)
  --strict             fail when a configured isolator cannot start
  --detach             leave the container running; adopt it later with `wait`
  --interval DURATION  print statistics periodically (e.g. 1s)
  --json               print reports as JSON lines on stdout";

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
    /// `--strict`.
    pub strict: bool,
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

fn pair(s: &str, what: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{what} '{s}' is not KEY=VALUE"))
}

fn byte_pair(s: OsString) -> Result<(Vec<u8>, Vec<u8>), String> {
    let bytes = s.into_vec();
    let eq = bytes.iter().position(|b| *b == b'=').ok_or_else(|| {
        format!(
            "label '{}' is not KEY=VALUE",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    Ok((bytes[..eq].to_vec(), bytes[eq + 1..].to_vec()))
}

fn number(s: &str, what: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{what} '{s}' is not a non-negative number"))
}

/// Parses the arguments (without the program name). Only label values may be
/// other than UTF-8.
pub fn parse(args: Vec<OsString>) -> Result<Options, String> {
    let mut o = Options {
        command: Command::Status,
        config: None,
        state_dir: None,
        strict: false,
        labels: Vec::new(),
        env: Vec::new(),
        id: None,
        sandbox: None,
        user: None,
        cpus: None,
        mem_mb: None,
        disk_mb: None,
        task_id: None,
        detach: false,
        json: false,
        interval: None,
    };
    let mut command = None;
    let mut containers = 1000;
    let mut it = args.into_iter();
    let text = |arg: OsString| {
        arg.into_string().map_err(|arg| {
            format!(
                "argument '{}' is not valid UTF-8",
                arg.to_string_lossy().escape_debug()
            )
        })
    };
    while let Some(arg) = it.next() {
        let arg = text(arg)?;
        if arg == "--label" {
            let label = it.next().ok_or("--label needs a value")?;
            o.labels.push(byte_pair(label)?);
            continue;
        }
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(text)
        };
        match arg.as_str() {
            "--" => {
                let argv: Vec<String> = it.by_ref().map(text).collect::<Result<_, _>>()?;
                if argv.is_empty() {
                    return Err("no command after --".into());
                }
                command = Some(Command::Run { argv });
            }
            "--env" => o.env.push(pair(&value("--env")?, "variable")?),
            "--cpus" => o.cpus = Some(number(&value("--cpus")?, "--cpus")?),
            "--mem" => o.mem_mb = Some(number(&value("--mem")?, "--mem")?),
            "--disk" => o.disk_mb = Some(number(&value("--disk")?, "--disk")?),
            "--id" => o.id = Some(value("--id")?),
            "--task-id" => o.task_id = Some(value("--task-id")?),
            "--sandbox" => o.sandbox = Some(PathBuf::from(value("--sandbox")?)),
            "--user" => o.user = Some(value("--user")?),
            "--config" => o.config = Some(PathBuf::from(value("--config")?)),
            "--state-dir" => o.state_dir = Some(PathBuf::from(value("--state-dir")?)),
            "--containers" => {
                containers = value("--containers")?
                    .parse()
                    .map_err(|_| "--containers needs a whole number")?
            }
            "--interval" => {
                o.interval =
                    Some(rein_core::units::parse_duration(&value("--interval")?).map_err(|e| e.0)?)
            }
            "--strict" => o.strict = true,
            "--detach" => o.detach = true,
            "--json" => o.json = true,
            "wait" => command = Some(Command::Wait { id: value("wait")? }),
            "destroy" => {
                command = Some(Command::Destroy {
                    id: value("destroy")?,
                })
            }
            "status" => command = Some(Command::Status),
            "bench" => command = Some(Command::Bench(BenchOptions { containers: 0 })),
            "defaults" => command = Some(Command::Defaults),
            "labels" => command = Some(Command::Labels),
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    o.command = match command {
        Some(Command::Bench(_)) => Command::Bench(BenchOptions { containers }),
        Some(c) => c,
        None => return Err("nothing to do".into()),
    };
    Ok(o)
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
}
