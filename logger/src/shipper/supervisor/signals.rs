//! The supervisor's signals: SIGTERM/SIGINT stop it, SIGHUP restarts the
//! worker from the binary on disk, SIGUSR2 replaces the supervisor in place.
//! The handler only sets flags; the serving loop reads them.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);
static RESTART: AtomicBool = AtomicBool::new(false);
static UPGRADE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    let flag = match Signal::try_from(sig) {
        Ok(Signal::SIGHUP) => &RESTART,
        Ok(Signal::SIGUSR2) => &UPGRADE,
        _ => &STOP,
    };
    flag.store(true, Ordering::Relaxed);
}

/// Installs the handler for every signal above.
pub(super) fn install() {
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler only stores to atomics.
        let _ = unsafe { sigaction(s, &sa) };
    }
}

/// SIGTERM (or SIGINT) came: stop for good.
pub(super) fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// SIGHUP came since the last call.
pub(super) fn take_restart() -> bool {
    RESTART.swap(false, Ordering::Relaxed)
}

/// SIGUSR2 came since the last call.
pub(super) fn take_upgrade() -> bool {
    UPGRADE.swap(false, Ordering::Relaxed)
}
