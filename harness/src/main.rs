//! `rein-run`: runs a command as a container through the same lifecycle a Mesos
//! agent drives through the rein modules (recover, prepare, watch, isolate(pid),
//! usage/status, cleanup), configured by the same labels and module parameters.

mod bench;
mod bench_floor;
mod cli;
mod config;
mod error;
mod modules;
mod process;
mod records;
mod report;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rein_core::state::StateStore;
use rein_modules::{ContainerChain, ContainerConfigView, KeyValue, RecoveredView, ResourceEntry};

use crate::cli::{Command, Options};
use crate::config::Config;
use crate::error::HarnessError;
use crate::modules::Modules;
use crate::records::ContainerRecord;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REIN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(rein_core::terminal::colour_on_stderr())
        .init();
    // Usage errors exit 2, `--help` exits 0 (clap's conventions).
    let options = cli::parse(std::env::args_os().skip(1).collect()).unwrap_or_else(|e| e.exit());
    let outcome = run(options);
    rein_modules::flush_removals();
    match outcome {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("rein-run: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(options: Options) -> Result<ExitCode, HarnessError> {
    match options.command {
        Command::Defaults => {
            println!("{}", config::DEFAULT);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Labels => {
            print!("{}", rein_core::schema::markdown_table());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let mut config = Config::load(options.config.as_deref())?;
    if let Some(dir) = &options.state_dir {
        config = config.with_state_dir(dir);
    }
    let records = StateStore::open(&config.state_dir, "harness")?;
    if let Command::Bench(bench) = &options.command {
        return bench::run(&config, &options, bench);
    }
    let modules = Modules::load(&config)?;
    eprintln!("rein-run: isolators: {}", modules.kinds().join(", "));
    let live = recover(&modules, &records)?;
    match &options.command {
        Command::Run { argv } => launch(&modules, &records, &config, &options, argv),
        Command::Wait { id } => {
            let record = find(&live, id)?;
            let chain = record.container();
            modules.watch(&chain);
            supervise(&modules, &records, &options, record, None)
        }
        Command::Destroy { id } => {
            let record = find(&live, id)?;
            process::kill_group(record.pid);
            finish(&modules, &records, &options, record, "destroyed")
        }
        Command::Status => {
            for record in &live {
                print_report(&modules, &options, record);
            }
            if live.is_empty() {
                eprintln!("rein-run: no live containers");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Defaults | Command::Labels | Command::Bench(_) => unreachable!("handled above"),
    }
}

fn find(live: &[ContainerRecord], id: &str) -> Result<ContainerRecord, HarnessError> {
    live.iter()
        .find(|r| r.chain.join(".") == id)
        .cloned()
        .ok_or_else(|| HarnessError::NoLiveContainer(id.to_owned()))
}

/// Recovers the isolators as an agent does at start: live containers are adopted,
/// dead ones (orphans) are cleaned up.
fn recover(modules: &Modules, records: &StateStore) -> Result<Vec<ContainerRecord>, HarnessError> {
    let all: Vec<(rein_core::ContainerId, ContainerRecord)> = records.load_all()?;
    let (live, dead): (Vec<_>, Vec<_>) = all
        .into_iter()
        .map(|(_, r)| r)
        .partition(ContainerRecord::is_alive);
    let live_views: Vec<RecoveredView> = live
        .iter()
        .map(|r| RecoveredView {
            container: r.container(),
            pid: r.pid,
            directory: r.sandbox.as_os_str().as_encoded_bytes().to_vec(),
        })
        .collect();
    let orphans: Vec<ContainerChain> = dead.iter().map(ContainerRecord::container).collect();
    modules
        .recover(&live_views, &orphans)
        .map_err(HarnessError::Recover)?;
    for record in &dead {
        for e in cleanup(modules, records, record)? {
            eprintln!(
                "rein-run: cleaning up orphan {}: {e}",
                record.chain.join(".")
            );
        }
        eprintln!(
            "rein-run: cleaned up orphan container {}",
            record.chain.join(".")
        );
    }
    if !live.is_empty() {
        eprintln!("rein-run: recovered {} live container(s)", live.len());
    }
    Ok(live)
}

/// Builds what the shim would copy out of `ContainerConfig`.
pub(crate) fn config_view(
    options: &Options,
    chain: &[String],
    sandbox: &Path,
) -> ContainerConfigView {
    let kv = |pairs: &[(String, String)]| -> Vec<KeyValue> {
        pairs
            .iter()
            .map(|(k, v)| KeyValue::new(k.as_str(), v.as_str()))
            .collect()
    };
    let labels = options
        .labels
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let mut resources = Vec::new();
    for (name, value) in [
        ("cpus", options.cpus),
        ("mem", options.mem_mb),
        ("disk", options.disk_mb),
    ] {
        if let Some(scalar) = value {
            resources.push(ResourceEntry {
                name: name.as_bytes().to_vec(),
                scalar,
                has_disk_info: false,
            });
        }
    }
    ContainerConfigView {
        container: ContainerChain::new(chain.iter().map(String::as_str)),
        directory: sandbox.as_os_str().as_encoded_bytes().to_vec(),
        user: options.user.clone().unwrap_or_default().into_bytes(),
        task_id: options
            .task_id
            .clone()
            .unwrap_or_else(|| chain.join("."))
            .into(),
        task_name: options.task_id.clone().unwrap_or_default().into(),
        executor_id: Vec::new(),
        framework_id: Vec::new(),
        task_labels: labels,
        executor_labels: Vec::new(),
        environment: kv(&options.env),
        resources,
        debug: false,
    }
}

fn launch(
    modules: &Modules,
    records: &StateStore,
    config: &Config,
    options: &Options,
    argv: &[String],
) -> Result<ExitCode, HarnessError> {
    let chain = options.id_chain();
    let id = rein_core::ContainerId::new(chain.clone())?;
    let sandbox = options
        .sandbox
        .clone()
        .unwrap_or_else(|| config.sandbox_dir.join(id.file_name()));
    let user = options
        .user
        .as_deref()
        .map(process::Credentials::of)
        .transpose()
        .map_err(HarnessError::io("--user"))?;
    std::fs::create_dir_all(&sandbox).map_err(HarnessError::io(format!(
        "creating sandbox {}",
        sandbox.display()
    )))?;
    if let Some(c) = user {
        // The sandbox belongs to the task's user, as the agent's --switch_user makes it.
        std::os::unix::fs::chown(&sandbox, Some(c.uid), Some(c.gid)).map_err(HarnessError::io(
            format!("giving sandbox {} to --user", sandbox.display()),
        ))?;
    }
    let view = config_view(options, &chain, &sandbox);
    let container = view.container.clone();

    // The logger comes last, as Mesos's IOSwitchboard does.
    let prepared = modules
        .prepare(&view)
        .and_then(|env| Ok((env, modules.logger_prepare(&view)?)));
    let (environment, stdio) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            // As the agent does for a failed launch: clean up what was prepared.
            modules.cleanup(&container);
            eprintln!("rein-run: launch of {id} failed: {e}");
            return Ok(ExitCode::from(3));
        }
    };
    // A detached container must not hold the harness's terminal or pipes: without a
    // logger its output goes to the sandbox files, as in Mesos.
    let stdio = match stdio {
        None if options.detach => Some(process::Stdio::sandbox_files(&sandbox).map_err(
            HarnessError::io(format!(
                "opening the sandbox files in {}",
                sandbox.display()
            )),
        )?),
        stdio => stdio,
    };
    let mut env = environment;
    env.extend(options.env.iter().cloned());
    let held = process::Held::spawn(argv, &sandbox, &env, stdio.as_ref(), user)
        .map_err(HarnessError::io(format!("starting {argv:?}")))?;
    // The container holds its own copies now; ours must not keep its pipes open.
    drop(stdio);
    let pid = held.pid();
    let record = ContainerRecord {
        chain: chain.clone(),
        pid,
        start_time: process::start_time(pid),
        sandbox: sandbox.clone(),
        argv: argv.to_vec(),
    };
    records.save(&id, &record)?;
    modules.watch(&container);
    if let Err(e) = modules.isolate(&container, pid) {
        held.abort();
        modules.cleanup(&container);
        let _ = records.remove(&id);
        eprintln!("rein-run: isolating {id} failed: {e}");
        return Ok(ExitCode::from(3));
    }
    let child = held
        .release()
        .map_err(HarnessError::io("releasing the container"))?;
    eprintln!("rein-run: container {id} running as pid {pid}");
    if options.detach {
        print_report(modules, options, &record);
        println!("{id}");
        // The process outlives the harness; `wait ID` adopts it later.
        let _ = child;
        return Ok(ExitCode::SUCCESS);
    }
    supervise(modules, records, options, record, Some(child))
}

/// Waits for the container to end (or to hit a limitation), printing statistics
/// every `--interval`, then cleans up.
fn supervise(
    modules: &Modules,
    records: &StateStore,
    options: &Options,
    record: ContainerRecord,
    child: Option<process::Running>,
) -> Result<ExitCode, HarnessError> {
    let mut last_report = Instant::now();
    let mut outcome = "exited".to_owned();
    loop {
        let ended = match child.as_ref() {
            Some(c) => match c.try_wait() {
                Ok(Some(status)) => {
                    outcome = format!("exited ({status})");
                    true
                }
                Ok(None) => false,
                Err(e) => return Err(HarnessError::io("waiting for the container")(e)),
            },
            None => !record.is_alive(),
        };
        if ended {
            break;
        }
        if let Some(limited) = modules.limitation(Duration::from_millis(50)) {
            outcome = format!(
                "killed by {} ({}: {})",
                limited.kind, limited.limitation.reason, limited.limitation.message
            );
            process::kill_group(record.pid);
            if let Some(c) = child.as_ref() {
                c.wait();
            }
            break;
        }
        if let Some(every) = options.interval {
            if last_report.elapsed() >= every {
                print_report(modules, options, &record);
                last_report = Instant::now();
            }
        }
    }
    finish(modules, records, options, record, &outcome)
}

fn finish(
    modules: &Modules,
    records: &StateStore,
    options: &Options,
    record: ContainerRecord,
    outcome: &str,
) -> Result<ExitCode, HarnessError> {
    print_report(modules, options, &record);
    let errors = cleanup(modules, records, &record)?;
    let id = record.chain.join(".");
    eprintln!("rein-run: container {id} {outcome}; cleaned up");
    for e in &errors {
        eprintln!("rein-run: {e}");
    }
    Ok(if errors.is_empty() && !outcome.starts_with("killed") {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

/// Cleans a container up in every isolator (all are tried; their errors are
/// returned) and forgets it.
fn cleanup(
    modules: &Modules,
    records: &StateStore,
    record: &ContainerRecord,
) -> Result<Vec<modules::CallError>, HarnessError> {
    let errors = modules.cleanup(&record.container());
    records.remove(&record.id()?)?;
    Ok(errors)
}

fn print_report(modules: &Modules, options: &Options, record: &ContainerRecord) {
    let chain = record.container();
    let (status, status_errors) = modules.status(&chain);
    let (usage, usage_errors) = modules.usage(&chain);
    let errors: Vec<String> = status_errors
        .iter()
        .chain(&usage_errors)
        .map(ToString::to_string)
        .collect();
    if options.json {
        println!(
            "{}",
            report::to_json(
                &record.chain.join("."),
                record.pid,
                &status,
                &usage,
                &errors
            )
        );
    } else {
        eprint!("{}", report::to_text(&status, &usage, &errors));
    }
}
