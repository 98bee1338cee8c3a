//! Each container's share of a dead-letter file: bytes per container id,
//! rebuilt from the file when it is opened (every line starts with its
//! container id), at most [`MAX_TRACKED_CONTAINERS`] in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

/// Containers whose share is tracked per file; beyond, the one with the
/// fewest bytes is forgotten (it starts a new share; the file's own bound
/// still holds), so a flood of container ids cannot grow the shipper's memory.
pub const MAX_TRACKED_CONTAINERS: usize = 10_000;

/// What one container has in the file.
#[derive(Debug, Default)]
pub(super) struct Share {
    /// Bytes written or queued.
    pub(super) bytes: u64,
    /// Records not written since it passed its share.
    pub(super) over: u64,
    /// Its over-share line was logged.
    pub(super) logged: bool,
}

/// The shares of one file, by container id as escaped in it.
pub(super) type Shares = HashMap<Vec<u8>, Share>;

/// How every line starts; the container id (a JSON string) follows.
pub(super) const CONTAINER_PREFIX: &[u8] = b"{\"container\":\"";

/// The share of `key`, tracked from now on (the least used one is forgotten
/// when [`MAX_TRACKED_CONTAINERS`] are tracked).
pub(super) fn share_of<'m>(m: &'m mut Shares, key: &[u8]) -> &'m mut Share {
    if !m.contains_key(key) && m.len() >= MAX_TRACKED_CONTAINERS {
        if let Some(k) = m
            .iter()
            .min_by_key(|(_, s)| s.bytes)
            .map(|(k, _)| k.clone())
        {
            m.remove(&k);
        }
    }
    m.entry(key.to_vec()).or_default()
}

/// The container id of a dead-letter line, as escaped in it (lines written
/// before the id led them: `None`).
fn line_container(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(CONTAINER_PREFIX)?;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..i]),
            _ => i += 1,
        }
    }
    None
}

/// The shares of the file `path`, opened as `ours`: one pass over its lines.
pub(super) fn read_shares(path: &Path, ours: &File) -> std::io::Result<Shares> {
    let mut m = HashMap::new();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)?;
    let (a, b) = (f.metadata()?, ours.metadata()?);
    if a.ino() != b.ino() || a.dev() != b.dev() {
        return Err(std::io::Error::other("replaced while being opened"));
    }
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if let Some(k) = line_container(&line) {
            share_of(&mut m, k).bytes += line.len() as u64;
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_containers_are_bounded() {
        let mut m = HashMap::new();
        for i in 0..MAX_TRACKED_CONTAINERS + 50 {
            share_of(&mut m, format!("c{i}").as_bytes()).bytes += 1 + i as u64;
        }
        assert_eq!(m.len(), MAX_TRACKED_CONTAINERS);
        // The least used were forgotten first.
        assert!(!m.contains_key(&b"c0"[..]));
        assert!(m.contains_key(format!("c{}", MAX_TRACKED_CONTAINERS + 49).as_bytes()));
    }

    #[test]
    fn a_line_names_its_container_as_escaped() {
        assert_eq!(
            line_container(br#"{"container":"a\"b","sink":"es"}"#),
            Some(&br#"a\"b"#[..])
        );
        assert_eq!(line_container(br#"{"sink":"es"}"#), None);
        assert_eq!(line_container(br#"{"container":"cut"#), None);
    }
}
