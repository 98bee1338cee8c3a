//! SIGTERM and SIGINT: the worker finishes cleanly (parser stopped at synced
//! records, offsets saved, sinks stopped).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set by SIGTERM/SIGINT: finish cleanly.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the SIGTERM/SIGINT handlers of the worker.
pub fn install_stop_handler() {
    let sa = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &sa) };
    }
}
