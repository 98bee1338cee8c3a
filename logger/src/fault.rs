//! Fault-injection points, compiled in only with the `fault-injection`
//! feature (the integration tests enable it; release builds never have it).
//!
//! `REIN_FAULT_PANIC=site:n[,site:n...]` makes the thread that passes point
//! `site` for the `n`th time (counted per process, from 1) panic there, once
//! per entry. `REIN_FAULT_STALL=site:n:ms[,...]` makes it sleep `ms`
//! milliseconds there instead. `site@thread` counts (and faults) only the
//! passes of the thread named `thread` (e.g. `parser@parser-1:3`). Points: `parser` (before a stream's parse
//! turn), `parser_file` (before a log file's read), `parser_record` (after
//! the parser framed a record, inside a turn: counted per record), `sink`
//! (after a batch was shipped, before it is acknowledged), `s3_part` (before
//! each part of a multipart upload).

/// A fault-injection point named `site` (a no-op without the feature).
#[inline]
pub fn point(site: &'static str) {
    #[cfg(feature = "fault-injection")]
    imp::point(site);
    #[cfg(not(feature = "fault-injection"))]
    let _ = site;
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    struct Trigger {
        site: String,
        nth: u64,
        stall_ms: Option<u64>,
    }

    struct Plan {
        triggers: Vec<Trigger>,
        hits: Vec<(String, AtomicU64)>,
    }

    fn parse(var: &str, stall: bool) -> Vec<Trigger> {
        std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .filter_map(|t| {
                let mut p = t.trim().split(':');
                let site = p.next()?.to_string();
                let nth = p.next()?.parse().ok()?;
                let stall_ms = if stall {
                    Some(p.next()?.parse().ok()?)
                } else {
                    None
                };
                Some(Trigger {
                    site,
                    nth,
                    stall_ms,
                })
            })
            .collect()
    }

    fn plan() -> &'static Plan {
        static PLAN: OnceLock<Plan> = OnceLock::new();
        PLAN.get_or_init(|| {
            let mut triggers = parse("REIN_FAULT_PANIC", false);
            triggers.extend(parse("REIN_FAULT_STALL", true));
            let mut hits: Vec<(String, AtomicU64)> = Vec::new();
            for t in &triggers {
                if !hits.iter().any(|(s, _)| *s == t.site) {
                    hits.push((t.site.clone(), AtomicU64::new(0)));
                }
            }
            Plan { triggers, hits }
        })
    }

    /// True if trigger key `key` (`site` or `site@thread`) counts a pass
    /// of `site` on the current thread.
    fn counts(key: &str, site: &str) -> bool {
        match key.split_once('@') {
            None => key == site,
            Some((s, thread)) => s == site && std::thread::current().name() == Some(thread),
        }
    }

    pub(super) fn point(site: &'static str) {
        let plan = plan();
        for (key, hits) in plan.hits.iter().filter(|(k, _)| counts(k, site)) {
            let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
            fire(plan, key, site, n);
        }
    }

    fn fire(plan: &Plan, key: &str, site: &'static str, n: u64) {
        for t in plan.triggers.iter().filter(|t| t.site == key && t.nth == n) {
            match t.stall_ms {
                Some(ms) => {
                    tracing::warn!(site, "injected stall of {ms} ms");
                    std::thread::sleep(Duration::from_millis(ms));
                }
                None => panic!("injected fault at {site} (pass {n})"),
            }
        }
    }
}
