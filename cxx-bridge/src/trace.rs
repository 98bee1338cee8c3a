
use std::sync::Mutex;
use std::time::Instant;
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
pub fn now() -> u64 { EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 }
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
pub fn push(name: &str, method: &str, c: &str, q: u64, s: u64, e: u64) {
    if std::env::var_os("REIN_TRACE").is_none() { return; }
    let cpu = 0;
    LOG.lock().unwrap().push(format!("{c} {name} {method} {q} {s} {e} {cpu}"));
}
pub fn mark(c: &str, what: &str) {
    if std::env::var_os("REIN_TRACE").is_none() { return; }
    let cpu = 0;
    let t = now();
    if what == "p0" { set_last(c); }
    LOG.lock().unwrap().push(format!("{c} harness {what} {t} {t} {t} {cpu}"));
}
pub fn dump() {
    if let Some(p) = std::env::var_os("REIN_TRACE") { let _ = std::fs::write(p, LOG.lock().unwrap().join("\n")); }
}

static LAST: Mutex<String> = Mutex::new(String::new());
pub fn last() -> String { LAST.lock().unwrap().clone() }
pub fn set_last(c: &str) { *LAST.lock().unwrap() = c.to_owned(); }
