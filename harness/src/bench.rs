//! `rein-run bench`: container lifecycle churn through the isolators, timing
//! prepare + isolate + cleanup per container and counting what leaked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rein_core::cgroupfs::cgroup_mounts;

use crate::bench_floor;
use crate::cli::{BenchOptions, Options};
use crate::config::Config;
use crate::error::HarnessError;
use crate::modules::{CallError, Modules};

/// The cgroups root the benchmark works under, apart from real containers and from
/// other benchmark runs.
fn bench_root() -> String {
    format!("rein-bench-{}", std::process::id())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Index into a non-empty slice, clamped: no truncation concern.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Child cgroups left under the benchmark root in every mounted hierarchy.
fn leftover_cgroups() -> usize {
    let mounts = cgroup_mounts(Path::new("/proc/self/mountinfo")).unwrap_or_default();
    mounts
        .iter()
        .map(|m| {
            std::fs::read_dir(m.mount_point.join(bench_root()))
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0)
        })
        .sum()
}

/// Removes the (empty) benchmark roots the isolators created.
fn remove_bench_roots() {
    for m in cgroup_mounts(Path::new("/proc/self/mountinfo")).unwrap_or_default() {
        let _ = std::fs::remove_dir(m.mount_point.join(bench_root()));
    }
}

/// Runs the churn and prints the figures.
pub fn run(
    config: &Config,
    options: &Options,
    bench: &BenchOptions,
) -> Result<ExitCode, HarnessError> {
    let scratch = tempdir()?;
    let mut config = config.clone().with_state_dir(&scratch);
    for iso in &mut config.isolators {
        iso.parameters.retain(|(k, _)| k != "cgroups_root");
        iso.parameters.push(("cgroups_root".into(), bench_root()));
    }
    let modules = Modules::load(&config)?;
    let sandbox = scratch.join("sandbox");
    std::fs::create_dir_all(&sandbox)
        .map_err(HarnessError::io(format!("creating {}", sandbox.display())))?;
    let fds_before = open_fds();
    let mut times = Vec::with_capacity(bench.containers);
    let mut phases: [Vec<Duration>; 3] =
        std::array::from_fn(|_| Vec::with_capacity(bench.containers));
    let mut settled = Vec::with_capacity(bench.containers);
    // Time spent starting, settling and reaping the processes.
    let mut starting = Duration::ZERO;
    let started = Instant::now();
    for i in 0..bench.containers {
        let chain = vec![format!("bench-{i}")];
        let view = crate::config_view(options, &chain, &sandbox);
        let t0 = Instant::now();
        modules.prepare(&view).map_err(|e| bench_error(i, &e))?;
        let prepared = t0.elapsed();
        // The container's process, started between prepare and isolate as the
        // agent forks its launch helper, and settled before isolate: on the agent
        // it waits, forked and not yet exec'd, while the isolators place it (see
        // [`parked`]). What the isolators do after prepare's answers runs meanwhile.
        let start = Instant::now();
        let mut held = parked(&sandbox)?;
        settle(&held);
        starting += start.elapsed();
        modules.watch(&view.container);
        let t1 = Instant::now();
        let isolated = modules.isolate(&view.container, pid_of(&held));
        let isolate = t1.elapsed();
        let reap = Instant::now();
        let _ = held.kill();
        let _ = held.wait();
        starting += reap.elapsed();
        isolated.map_err(|e| bench_error(i, &e))?;
        let t2 = Instant::now();
        let answered = modules.cleanup_answered(&view.container);
        let cleaned = t2.elapsed();
        // The isolators' cleanup work runs on after the answers, as on the agent;
        // the next lifecycle starts once it is done (on an agent, one container's
        // end and another's start are not one chain), and its time is shown apart.
        if let Some(e) = answered.settle().first() {
            return Err(bench_error(i, e));
        }
        settled.push(t2.elapsed());
        times.push(prepared + isolate + cleaned);
        for (phase, spent) in phases.iter_mut().zip([prepared, isolate, cleaned]) {
            phase.push(spent);
        }
    }
    let wall = started.elapsed();
    drop(modules);
    // The isolators finish their last calls (records removed after answering) and
    // are dropped on the bridge's threads: what is left after a generous while leaked.
    let leaks = || {
        (
            leftover_cgroups(),
            count_files(&scratch.join("isolators")),
            open_fds().saturating_sub(fds_before),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut leaked = leaks();
    while leaked != (0, 0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        leaked = leaks();
    }
    let (leaked_cgroups, leaked_state, leaked_fds) = leaked;
    times.sort();
    for phase in &mut phases {
        phase.sort();
    }
    settled.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    #[allow(clippy::cast_precision_loss)]
    let rate = bench.containers as f64 / wall.as_secs_f64();
    println!(
        "isolators: {}",
        config
            .isolators
            .iter()
            .map(|i| i.kind.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "lifecycles: {}  prepare+isolate+cleanup per container: p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us",
        bench.containers,
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99)),
        us(percentile(&times, 0.999)),
        us(percentile(&times, 1.0)),
    );
    for (name, phase) in ["prepare", "isolate", "cleanup"].iter().zip(&phases) {
        println!(
            "  {name:<8} (every isolator): p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us",
            us(percentile(phase, 0.5)),
            us(percentile(phase, 0.99)),
            us(percentile(phase, 0.999)),
        );
    }
    println!(
        "  cleanup work done (from the first cleanup call, after the answers): p50 {:.0} us  p99 {:.0} us",
        us(percentile(&settled, 0.5)),
        us(percentile(&settled, 0.99)),
    );
    // The per-container figure leaves out starting and reaping the process; the
    // first rate counts them, the second does not (it counts everything else,
    // the cleanup work after the answers included).
    #[allow(clippy::cast_precision_loss)]
    let rate_modules =
        bench.containers as f64 / wall.saturating_sub(starting).as_secs_f64().max(1e-9);
    println!("throughput: {rate:.0} lifecycles/s including starting and reaping each process, {rate_modules:.0} without");
    println!("leaked: cgroups {leaked_cgroups}  state files (handles, ids) {leaked_state}  file descriptors {leaked_fds}");
    print_floor(bench.containers, &scratch, &sandbox);
    let _ = std::fs::remove_dir_all(&scratch);
    remove_bench_roots();
    Ok(if leaked_cgroups + leaked_state + leaked_fds == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(5)
    })
}

/// The same lifecycles' kernel operations without the modules ([`bench_floor`]).
fn print_floor(containers: usize, scratch: &Path, sandbox: &Path) {
    let spawn = || {
        let mut child = parked(sandbox).map_err(|e| std::io::Error::other(e.to_string()))?;
        settle(&child);
        let pid = pid_of(&child);
        let end: Box<dyn FnOnce()> = Box::new(move || {
            let _ = child.kill();
            let _ = child.wait();
        });
        Ok((pid, end))
    };
    let root = format!("{}-floor", bench_root());
    match bench_floor::run(containers, &root, &scratch.join("floor"), spawn) {
        Ok(mut times) => {
            times.sort();
            println!(
                "kernel floor (the same cgroup v1 operations before the answers, in one thread, no module, no hop): p50 {:.0} us  p99 {:.0} us",
                percentile(&times, 0.5).as_secs_f64() * 1e6,
                percentile(&times, 0.99).as_secs_f64() * 1e6,
            );
        }
        Err(why) => println!("kernel floor: not measured ({why})"),
    }
}

/// The container's process: `cat` waiting on an empty pipe, started the way the
/// agent starts its launch helper (a new program at once, `vfork` and `exec` through
/// `posix_spawn`). A forked copy of this process left un-`exec`ed during `isolate()`
/// would share its memory copy-on-write, and every page the modules then touch would
/// cost a fault and a TLB shootdown: a cost of the benchmark, not of the modules.
/// The agent's helper waits on a pipe until the isolators have placed it, so the
/// benchmark lets `cat` finish loading ([`settle`]) before it times any call: the
/// new program's start-up is not part of the modules' cost either.
fn parked(sandbox: &Path) -> Result<Child, HarnessError> {
    Command::new("/bin/cat")
        .current_dir(sandbox)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(HarnessError::io("starting /bin/cat"))
}

/// Waits (at most a second) until `child` sleeps, waiting on its empty pipe. It
/// polls with short sleeps, not a spin: the agent's threads wait for the launch
/// helper without taking a CPU, which the modules' work after their answers needs
/// meanwhile.
fn settle(child: &Child) {
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let sleeping = std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('S'))
            })
            .unwrap_or(true);
        if sleeping {
            return;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn pid_of(child: &Child) -> i32 {
    // Linux pids fit in an i32 (pid_max is at most 2^22).
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

fn tempdir() -> Result<PathBuf, HarnessError> {
    let dir = std::env::temp_dir().join(format!("rein-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(HarnessError::io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn bench_error(index: usize, e: &CallError) -> HarnessError {
    HarnessError::Bench {
        index,
        message: e.to_string(),
    }
}
