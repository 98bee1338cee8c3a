//! The kernel's own share of a lifecycle, printed beside `rein-run bench`'s figures:
//! the cgroup v1 operations the three isolators make for a container before their
//! answers, done in one thread through the same cgroupfs code, without the modules,
//! the bridge or any thread hop: a spare cgroup renamed in each hierarchy (the
//! net_cls one with its classid written when it was made) and the process moved
//! into both. What is done after the answers is done too, untimed, as in the
//! modules: the state records written (after `prepare`'s) and removed (after
//! `cleanup`'s), the next spares made, the cgroups removed. What the benchmark
//! measures above this is the modules' and the bridge's cost; this part no module
//! can remove on this machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rein_core::atomic_file::AtomicFile;
use rein_core::cgroupfs::{Cgroup, Hierarchy};

/// Per container: a record about the size of an isolator's state record.
const RECORD: &[u8] = br#"{"boot_id":"00000000-0000-0000-0000-000000000000","record":{"handle":"10:1","owned":true,"limit":null}}"#;

/// The v1 hierarchy a controller is bound to, if there is one.
fn v1(controller: &str) -> Option<Hierarchy> {
    Hierarchy::find_v1(Path::new("/proc/self/mountinfo"), controller)
        .ok()
        .flatten()
}

/// Runs `containers` floor lifecycles under `<hierarchy>/<root>` with the records in
/// `state_dir`, through the same cgroupfs and state-file code the isolators use;
/// `spawn` starts the container's process (as the benchmark does) and returns its
/// pid and a way to end it. Returns each lifecycle's time (prepare + isolate +
/// cleanup), or why there are none.
pub fn run(
    containers: usize,
    root: &str,
    state_dir: &Path,
    mut spawn: impl FnMut() -> std::io::Result<(i32, Box<dyn FnOnce()>)>,
) -> Result<Vec<Duration>, String> {
    let (Some(net_cls), Some(blkio)) = (v1("net_cls"), v1("blkio")) else {
        return Err("no cgroup v1 net_cls and blkio hierarchies here".into());
    };
    let roots = [net_cls.cgroup(root), blkio.cgroup(root)];
    for r in &roots {
        r.create().map_err(|e| e.to_string())?;
    }
    fs::create_dir_all(state_dir).map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
    let mut times = Vec::with_capacity(containers);
    // The spares the next container's cgroups are renamed from, made as after an
    // earlier answer.
    let make_spares = |i: usize| -> Result<[Cgroup; 2], String> {
        let name = format!(".floor-spare-{i}");
        let spares = [roots[0].child(&name), roots[1].child(&name)];
        for s in &spares {
            s.create().map_err(|e| e.to_string())?;
        }
        spares[0]
            .write("net_cls.classid", &format!("{}", 0x1_0000 + i % 0xffff))
            .map_err(|e| e.to_string())?;
        Ok(spares)
    };
    let mut spares = make_spares(0)?;
    let result = (0..containers).try_for_each(|i| {
        let name = format!("floor-{i}");
        let (pid, end) = spawn().map_err(|e| format!("starting the process: {e}"))?;
        let groups: [Cgroup; 2] = [roots[0].child(&name), roots[1].child(&name)];
        let records: Vec<PathBuf> = ["net_cls", "blkio", "disk"]
            .iter()
            .map(|kind| state_dir.join(format!("{kind}-{name}.json")))
            .collect();
        let t = Instant::now();
        // prepare: a spare renamed in each hierarchy
        for (spare, group) in spares.iter().zip(&groups) {
            fs::rename(spare.path(), group.path()).map_err(|e| e.to_string())?;
        }
        let prepared = t.elapsed();
        // after the answers: three records (temporary file, rename), the next spares
        for r in &records {
            AtomicFile::new(r)
                .write(RECORD)
                .map_err(|e| e.to_string())?;
        }
        spares = make_spares(i + 1)?;
        // isolate: the process into both
        let t = Instant::now();
        for g in &groups {
            g.add_process(pid).map_err(|e| e.to_string())?;
        }
        times.push(prepared + t.elapsed());
        end();
        // cleanup, after its answer: both cgroups, then the records
        for g in &groups {
            g.remove().map_err(|e| e.to_string())?;
        }
        for r in &records {
            fs::remove_file(r).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    for r in &roots {
        let _ = r.remove_now();
    }
    result.map(|()| times)
}
