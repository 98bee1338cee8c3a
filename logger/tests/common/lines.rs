//! Checks shared by the tests that count loadgen lines (`prefix seq=N ...`)
//! through the shipper: which arrived, how often, and waiting for them.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use super::shipper::Shipper;

/// (prefix, seq) of every `prefix seq=N ...` line of `text`.
pub fn seqs_of(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .map(|l| {
            let mut w = l.split(' ');
            let p = w.next().unwrap_or_default().to_string();
            let s = w
                .next()
                .and_then(|s| s.strip_prefix("seq="))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a loadgen line: {l:.60}"));
            (p, s)
        })
        .collect()
}

/// Checks that `got` holds every line `prefix seq=0..n` of `expected`,
/// each at least once (`exact`: exactly once) and nothing else.
pub fn check_lines(
    got: &[(String, u64)],
    expected: &[(&str, u64)],
    exact: bool,
) -> Result<(), String> {
    let mut seen: BTreeMap<&str, Vec<u32>> = expected
        .iter()
        .map(|(p, n)| (*p, vec![0; usize::try_from(*n).unwrap()]))
        .collect();
    for (p, s) in got {
        let v = seen
            .get_mut(p.as_str())
            .ok_or_else(|| format!("unexpected line {p} seq={s}"))?;
        *v.get_mut(usize::try_from(*s).unwrap())
            .ok_or_else(|| format!("unexpected line {p} seq={s}"))? += 1;
    }
    for (p, v) in &seen {
        let lost: Vec<usize> = (0..v.len()).filter(|&i| v[i] == 0).collect();
        let dup: Vec<usize> = (0..v.len()).filter(|&i| v[i] > 1).collect();
        if !lost.is_empty() {
            return Err(format!(
                "{} lines of {p} lost: {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            ));
        }
        if exact && !dup.is_empty() {
            return Err(format!(
                "{} lines of {p} duplicated: {:?}",
                dup.len(),
                &dup[..dup.len().min(20)]
            ));
        }
    }
    Ok(())
}

/// Polls `f` until true; on timeout fails with `what` and the counters.
pub fn wait_for(sh: &Shipper, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "{what} (after {limit:?}); counters: {}",
            sh.counters()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn reader(sh: &Shipper, name: &str) -> u64 {
    sh.counters()["reader"][name].as_u64().unwrap_or(0)
}

/// Waits for a container to exit and checks it saw no EPIPE (or worse).
pub fn wait_exit(sh: &Shipper, name: &str, c: &mut Child, limit: Duration) {
    let mut status = None;
    wait_for(
        sh,
        &format!("container {name} still blocked"),
        limit,
        || {
            status = c.try_wait().unwrap();
            status.is_some()
        },
    );
    let st = status.unwrap();
    assert!(
        st.success(),
        "container {name} failed ({st}): EPIPE or worse; counters: {}",
        sh.counters()
    );
}
