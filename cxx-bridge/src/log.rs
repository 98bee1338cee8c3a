//! Module logs into the agent's own log: `tracing` events are formatted (with the
//! span naming module, call and container) and handed to the shim's glog sink.

use std::io::{self, Write};
use std::sync::OnceLock;

use cxx::UniquePtr;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::bridge::ffi::LogSink;

struct Sink(UniquePtr<LogSink>);

// SAFETY: the shim's LogSink only calls glog, which is thread-safe; it is never
// mutated after installation (write is a const method).
unsafe impl Send for Sink {}
// SAFETY: as above: concurrent const calls into glog are safe.
unsafe impl Sync for Sink {}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the sink and a global `tracing` subscriber writing to it. Later calls
/// (a second module instance in the same library) keep the first sink.
pub fn install_log_sink(sink: UniquePtr<LogSink>) {
    if sink.is_null() || SINK.set(Sink(sink)).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_max_level(Level::DEBUG)
        .with_writer(GlogWriter)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    // A panic is caught and becomes a failed call; its report belongs in the agent's
    // log with the span naming the container, not on the agent's stderr.
    std::panic::set_hook(Box::new(|info| tracing::error!("rein: {info}")));
}

#[derive(Clone, Copy)]
struct GlogWriter;

/// One formatted event, sent to glog when dropped.
struct Line {
    level: Option<i32>,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let Some(sink) = SINK.get() else { return };
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if let Some(sink) = sink.0.as_ref() {
            match self.level {
                Some(severity) => sink.write(severity, text),
                None => sink.debug(text),
            }
        }
    }
}

/// The glog severity of a level (0 info, 1 warning, 2 error); `None` for debug
/// and trace, which go to `VLOG(1)`.
fn glog_severity(level: &Level) -> Option<i32> {
    match *level {
        Level::ERROR => Some(2),
        Level::WARN => Some(1),
        Level::INFO => Some(0),
        _ => None,
    }
}

impl<'a> MakeWriter<'a> for GlogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            level: Some(0),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            level: glog_severity(meta.level()),
            buf: Vec::new(),
        }
    }
}
