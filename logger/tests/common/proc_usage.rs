//! A process's own CPU time and memory from `/proc` (benches compare
//! shippers by these: user + system time of the process and all its threads,
//! peak and current resident set).

use std::path::Path;

/// Clock ticks a second (the unit of `utime` and `stime`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) reads a constant of the system; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in ticks from a `stat` file (`/proc/PID/stat` or a
/// thread's `/proc/PID/task/TID/stat`), with the command name.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    // After ") ": state is field 3; utime and stime are fields 14 and 15.
    let mut f = s[close + 2..].split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU seconds (user + system) process `pid` has used so far, all threads.
pub fn cpu_seconds(pid: i32) -> f64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat")))
        .map_or(0.0, |(_, t)| t as f64 / ticks_per_second())
}

/// CPU seconds per thread name of process `pid` (live threads only), most first.
pub fn thread_cpu_seconds(pid: i32) -> Vec<(String, f64)> {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in d.flatten() {
            if let Some((comm, t)) = stat_ticks(&e.path().join("stat")) {
                *by_name.entry(comm).or_default() += t as f64 / ticks_per_second();
            }
        }
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set (VmHWM) of process `pid` in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmHWM:")
}
