//! The module's circuit breaker in front of the shipper: once a conversation
//! timed out, the shipper is taken as wedged and every later launch falls
//! back to its sandbox files at once instead of waiting `shipper_timeout`
//! again. A background probe asks the shipper every [`PROBE_EVERY`] whether
//! it answers; the first answer closes the breaker. Only a timeout opens it:
//! a shipper that is simply not there (no socket, refused) fails fast anyway,
//! and the next launch should find it as soon as it is back.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::handoff::{self, HandoffError};

/// How often an open breaker probes the shipper.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct State {
    /// When it opened, and why (`None`: closed).
    open: Option<(Instant, String)>,
    /// A probe thread runs.
    probing: bool,
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    timeout: Duration,
    state: Mutex<State>,
}

/// The breaker of one module instance (cheap to share: the state is behind
/// an `Arc`).
#[derive(Debug, Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

impl Breaker {
    /// A closed breaker for the shipper at `socket`, probing with `timeout`.
    pub fn new(socket: PathBuf, timeout: Duration) -> Breaker {
        Breaker {
            inner: Arc::new(Inner {
                socket,
                timeout,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-written (plain fields).
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Some(why)` while open: the shipper is taken as wedged.
    pub fn open_reason(&self) -> Option<String> {
        self.state().open.as_ref().map(|(since, why)| {
            format!(
                "the shipper has not answered for {:.1?} ({why}); launches fall back until it answers a probe",
                since.elapsed()
            )
        })
    }

    /// True while open.
    pub fn is_open(&self) -> bool {
        self.state().open.is_some()
    }

    /// Records the outcome of a conversation: a timeout opens the breaker
    /// (and starts the probe), a registration taken closes it (a launch that
    /// started before it opened may be the first to see the shipper back),
    /// anything else leaves it as it is.
    pub fn observe(&self, outcome: &Result<(), HandoffError>) {
        let e = match outcome {
            Ok(()) => {
                if let Some((since, _)) = self.state().open.take() {
                    tracing::warn!(
                        socket = %self.inner.socket.display(),
                        "log shipper took a container again after {:.1?}: launches are handed to it again",
                        since.elapsed()
                    );
                }
                return;
            }
            Err(e @ HandoffError::Timeout(..)) => e,
            Err(_) => return,
        };
        let mut st = self.state();
        if st.open.is_none() {
            tracing::warn!(
                socket = %self.inner.socket.display(),
                "log shipper wedged ({e}): later launches write their sandbox files at once until it answers again"
            );
            st.open = Some((Instant::now(), e.to_string()));
        }
        if !st.probing {
            st.probing = true;
            let weak = Arc::downgrade(&self.inner);
            let started = std::thread::Builder::new()
                .name("rein-logger-probe".into())
                .spawn(move || probe_until_closed(weak));
            if let Err(e) = started {
                // Nothing would close it: it stays closed (each launch then
                // waits for the shipper itself, at most shipper_timeout).
                tracing::error!("starting the shipper probe: {e}; the breaker stays closed");
                st.probing = false;
                st.open = None;
            }
        }
    }
}

/// The probe thread: ends when the breaker closed or the module is gone.
fn probe_until_closed(weak: Weak<Inner>) {
    loop {
        std::thread::sleep(PROBE_EVERY);
        let Some(inner) = weak.upgrade() else { return };
        let b = Breaker { inner };
        let outcome = handoff::probe(&b.inner.socket, b.inner.timeout);
        let mut st = b.state();
        match outcome {
            Err(HandoffError::Timeout(..)) => {
                if st.open.is_none() {
                    st.probing = false;
                    return;
                }
            }
            other => {
                if let Some((since, _)) = st.open.take() {
                    tracing::warn!(
                        socket = %b.inner.socket.display(),
                        "log shipper answers again after {:.1?} ({}): launches are handed to it again",
                        since.elapsed(),
                        other.err().map_or_else(|| "ok".into(), |e| e.to_string()),
                    );
                }
                st.probing = false;
                return;
            }
        }
    }
}
