//! What the supervisor holds: per container, the read ends of its stdout and
//! stderr pipes, then the worker's two staging pipes if it uses them; and
//! the worker's messages that change it.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use crate::proto::Control;

/// Per container key: its descriptors, pipes first.
pub(super) type Table = BTreeMap<String, Vec<OwnedFd>>;

/// What a message of the worker did to the table.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handled {
    /// Held, replaced or released as asked.
    Applied,
    /// Not understood, or not a message a worker sends: nothing changed.
    Refused,
}

/// Applies one message of the worker: `Hold` (a new container, or a new
/// worker's staging pipes: replaces the entry), `Release` (closes them).
pub(super) fn handle(table: &mut Table, msg: &[u8], fds: Vec<OwnedFd>) -> Handled {
    match Control::decode(msg) {
        Ok(Control::Hold(key)) if matches!(fds.len(), 2 | 4) => {
            table.insert(key, fds);
            Handled::Applied
        }
        Ok(Control::Hold(key)) => {
            tracing::error!(
                container = key,
                fds = fds.len(),
                "the worker handed an unexpected number of descriptors; ignored"
            );
            Handled::Refused
        }
        Ok(Control::Release(key)) => {
            table.remove(&key);
            Handled::Applied
        }
        Ok(other) => {
            tracing::error!("the worker sent {other:?}, which only a supervisor sends; ignored");
            Handled::Refused
        }
        Err(e) => {
            tracing::error!("a message of the worker: {e}; ignored");
            Handled::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipes(n: usize) -> Vec<OwnedFd> {
        (0..n).map(|_| crate::module::pipe(0).unwrap().0).collect()
    }

    #[test]
    fn hold_replaces_and_release_closes() {
        let mut t = Table::new();
        let hold = Control::Hold("k".into()).encode();
        assert_eq!(handle(&mut t, &hold, pipes(2)), Handled::Applied);
        assert_eq!(handle(&mut t, &hold, pipes(4)), Handled::Applied);
        assert_eq!(t["k"].len(), 4);
        let release = Control::Release("k".into()).encode();
        assert_eq!(handle(&mut t, &release, vec![]), Handled::Applied);
        assert!(t.is_empty());
    }

    #[test]
    fn malformed_or_misplaced_messages_change_nothing() {
        let mut t = Table::new();
        let hold = Control::Hold("k".into()).encode();
        assert_eq!(handle(&mut t, &hold, pipes(3)), Handled::Refused);
        for msg in [&b"resize\nk"[..], b"add\n\xff", b"adopt\nk", b"done", b""] {
            assert_eq!(handle(&mut t, msg, pipes(2)), Handled::Refused, "{msg:?}");
        }
        assert!(t.is_empty());
    }
}
