//! Whether log lines may carry colour codes: only on a terminal, and never with
//! `NO_COLOR` set (<https://no-color.org>). Logs that go to a file or the agent's
//! log stay plain.

use std::io::IsTerminal;

/// True when `stream` is a terminal and `NO_COLOR` is unset or empty.
pub fn colour_on(stream: impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// [`colour_on`] standard error, where the binaries log.
pub fn colour_on_stderr() -> bool {
    colour_on(std::io::stderr())
}
