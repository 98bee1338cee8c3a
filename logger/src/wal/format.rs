//! The on-disk format: frames and segment file names.
//!
//! A frame is `[len: u32 LE][crc32: u32 LE][payload]`; a payload is never
//! empty (the CRC of nothing is 0, so zeroed blocks, as a file system can
//! leave past its last good write, would read as records). Segments are files
//! `NNNNNNNNNNNNNNNNNNNN.wal` (their sequence number) in one directory.
//!
//! A frame holds a record, or a meta frame: `[META][key: u64 LE][meta]`,
//! the constant parts of the records that name `key` (their container's
//! metadata, see [`crate::walrec`]). A record naming a meta starts
//! `[META_REF][stream][key: u64 LE]`. A meta frame precedes, in the same
//! segment, every record naming it (the writer sees to it), so a segment
//! is read alone; meta frames are never handed to a sink nor counted as
//! records.

use std::path::{Path, PathBuf};

/// Bytes of a frame header.
pub(super) const HDR: usize = 8;
/// Largest accepted frame payload (a record is far smaller).
pub const MAX_FRAME: usize = 64 << 20;

/// First byte of a meta frame's payload.
pub const META: u8 = 3;
/// First byte of a record that names a meta frame.
pub const META_REF: u8 = 2;
/// Bytes of a meta frame's payload before the meta itself.
pub const META_HDR: usize = 9;

/// The key of a meta frame's payload (`None`: not a meta frame).
pub fn meta_key(payload: &[u8]) -> Option<u64> {
    match payload {
        [META, k @ ..] if k.len() >= 8 => Some(u64::from_le_bytes(k[..8].try_into().ok()?)),
        _ => None,
    }
}

/// The meta a record's payload names (`None`: it names none).
pub fn meta_ref(payload: &[u8]) -> Option<u64> {
    match payload {
        [META_REF, _, k @ ..] if k.len() >= 8 => Some(u64::from_le_bytes(k[..8].try_into().ok()?)),
        _ => None,
    }
}

/// The file of segment `seq`.
pub(super) fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The sequence number of a segment's file name (`None`: not a segment).
pub(super) fn seg_seq(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}

pub(super) fn frame_header(payload: &[u8]) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h
}

/// Frames one record at the end of `buf`: `encode` appends the payload.
pub(super) fn frame_into(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0u8; HDR]);
    encode(buf);
    let h = frame_header(&buf[at + HDR..]);
    buf[at..at + HDR].copy_from_slice(&h);
}

/// The header at `pos` of `buf`: payload length and checksum (`None`: fewer
/// than [`HDR`] bytes left).
pub(super) fn header(buf: &[u8], pos: usize) -> Option<(usize, u32)> {
    let h = buf.get(pos..pos.checked_add(HDR)?)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    Some((len, u32::from_le_bytes([h[4], h[5], h[6], h[7]])))
}

/// True when a header's length cannot be a record's.
pub(super) fn bad_len(len: usize) -> bool {
    len == 0 || len > MAX_FRAME
}

/// True when `payload` matches the header's checksum.
pub(super) fn crc_ok(payload: &[u8], crc: u32) -> bool {
    crc32fast::hash(payload) == crc
}

/// Scans frames of `data`; returns (valid length, record count (meta
/// frames are not records), whether a bad frame ended it).
pub(super) fn scan(data: &[u8]) -> (usize, u64, bool) {
    let (mut pos, mut n) = (0, 0);
    while let Some((len, crc)) = header(data, pos) {
        let end = pos + HDR + len;
        if bad_len(len) || end > data.len() || !crc_ok(&data[pos + HDR..end], crc) {
            return (pos, n, true);
        }
        n += u64::from(data[pos + HDR] != META);
        pos = end;
    }
    (pos, n, pos != data.len())
}

/// The end of the longest run of whole frames of `buf` from `from` that is at
/// most `max` bytes long (at least one frame), and how many records (frames
/// but meta frames) it holds.
pub(super) fn whole_frames(buf: &[u8], from: usize, max: usize) -> (usize, u64) {
    let (mut pos, mut n) = (from, 0);
    while let Some((len, _)) = header(buf, pos) {
        let end = pos + HDR + len;
        if end > buf.len() || (pos > from && end - from > max) {
            break;
        }
        n += u64::from(buf.get(pos + HDR) != Some(&META));
        pos = end;
    }
    if pos == from {
        // Not a frame (never queued so): the rest goes out as it is.
        return (buf.len(), 0);
    }
    (pos, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            frame_into(&mut buf, |b| b.extend_from_slice(p));
        }
        buf
    }

    #[test]
    fn scan_stops_at_a_torn_zeroed_or_corrupt_frame() {
        let buf = framed(&[b"one", b"two"]);
        assert_eq!(scan(&buf), (buf.len(), 2, false));
        assert_eq!(scan(&buf[..buf.len() - 1]), (HDR + 3, 1, true));
        let mut zeroed = buf.clone();
        zeroed.extend_from_slice(&[0; 64]);
        assert_eq!(
            scan(&zeroed),
            (buf.len(), 2, true),
            "a zero-length frame is invalid"
        );
        let mut flipped = buf.clone();
        flipped[HDR + 1] ^= 1;
        assert_eq!(scan(&flipped), (0, 0, true));
    }

    #[test]
    fn whole_frames_cuts_at_the_limit_but_takes_one_frame_at_least() {
        let buf = framed(&[b"aaaa", b"bbbb", b"cccc"]);
        let one = HDR + 4;
        assert_eq!(whole_frames(&buf, 0, usize::MAX), (3 * one, 3));
        assert_eq!(whole_frames(&buf, 0, 2 * one), (2 * one, 2));
        assert_eq!(whole_frames(&buf, one, 1), (2 * one, 1));
    }

    #[test]
    fn segment_names_round_trip() {
        let p = seg_path(Path::new("/b"), 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.wal");
        assert_eq!(seg_seq(name), Some(42));
        assert_eq!(seg_seq("cursor"), None);
    }
}
