//! The kernel's own share of a lifecycle, printed beside `rein-run bench`'s figures:
//! the cgroup v1 and file operations the three isolators make for a container before
//! their answers (the state records' removal comes after, as in the modules), done
//! in one thread without the modules, the bridge or any thread hop. What the
//! benchmark measures above this is the modules' and the bridge's cost; this part
//! no module can remove on this machine.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rein_core::cgroupfs::{cgroup_mounts, Version};

/// Per container: a record about the size of an isolator's state record.
const RECORD: &[u8] = br#"{"boot_id":"00000000-0000-0000-0000-000000000000","record":{"handle":"10:1","owned":true,"limit":null}}"#;

/// The floor's lifecycle times (prepare + isolate + cleanup), or why there are none.
pub struct Floor {
    pub times: Vec<Duration>,
}

/// Where a v1 controller is mounted, if it is.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    cgroup_mounts(Path::new("/proc/self/mountinfo"))
        .ok()?
        .into_iter()
        .find(|m| m.version == Version::V1 && m.controllers.iter().any(|c| c == controller))
        .map(|m| m.mount_point)
}

/// Runs `containers` floor lifecycles under `<hierarchy>/<root>` with the records in
/// `state_dir`; `spawn` starts the container's process (as the benchmark does) and
/// returns its pid and a way to end it.
pub fn run(
    containers: usize,
    root: &str,
    state_dir: &Path,
    mut spawn: impl FnMut() -> std::io::Result<(i32, Box<dyn FnOnce()>)>,
) -> Result<Floor, String> {
    let (Some(net_cls), Some(blkio)) = (v1_mount("net_cls"), v1_mount("blkio")) else {
        return Err("no cgroup v1 net_cls and blkio hierarchies here".into());
    };
    let roots = [net_cls.join(root), blkio.join(root)];
    for r in &roots {
        fs::create_dir_all(r).map_err(|e| format!("creating {}: {e}", r.display()))?;
    }
    fs::create_dir_all(state_dir).map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
    let mut times = Vec::with_capacity(containers);
    let result = (0..containers).try_for_each(|i| {
        let name = format!("floor-{i}");
        let (pid, end) = spawn().map_err(|e| format!("starting the process: {e}"))?;
        let groups = [roots[0].join(&name), roots[1].join(&name)];
        let records: Vec<PathBuf> = ["net_cls", "blkio", "disk"]
            .iter()
            .map(|kind| state_dir.join(format!("{kind}-{name}.json")))
            .collect();
        let t = Instant::now();
        // prepare: both cgroups, the classid, three records (temporary file, rename)
        fs::create_dir(&groups[0]).map_err(|e| e.to_string())?;
        fs::write(
            groups[0].join("net_cls.classid"),
            format!("{}", 0x1_0000 + i % 0xffff),
        )
        .map_err(|e| e.to_string())?;
        fs::create_dir(&groups[1]).map_err(|e| e.to_string())?;
        for r in &records {
            save(r).map_err(|e| format!("{}: {e}", r.display()))?;
        }
        // isolate: the process into both
        for g in &groups {
            fs::write(g.join("cgroup.procs"), pid.to_string()).map_err(|e| e.to_string())?;
        }
        let prepared_and_isolated = t.elapsed();
        end();
        // cleanup: both cgroups; the records after the answer, as the modules
        // remove them (off the timed path)
        let t = Instant::now();
        for g in &groups {
            remove_cgroup(g)?;
        }
        times.push(prepared_and_isolated + t.elapsed());
        for r in &records {
            fs::remove_file(r).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    for r in &roots {
        let _ = fs::remove_dir(r);
    }
    result.map(|()| Floor { times })
}

/// A record written as the state store writes it.
fn save(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(RECORD)?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Removes a cgroup whose process was just killed (the kernel may take a moment to
/// let it go: EBUSY until the exit is complete).
fn remove_cgroup(group: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(group) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::yield_now();
            }
            Err(e) => return Err(format!("removing {}: {e}", group.display())),
        }
    }
}
