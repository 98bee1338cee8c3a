//! The body of one object: its records' documents as NDJSON (one document
//! per line, as the disk buffer holds it), gzip-compressed.

use std::io::Write;

use crate::record::json::one_line;
use crate::walrec::WalRecord;

/// One object's body.
#[derive(Debug, Default)]
pub struct ObjectBody {
    /// The gzip stream.
    pub gz: Vec<u8>,
    /// Bytes before compression.
    pub raw_bytes: u64,
}

/// Compresses the documents of `records` (the indices `which`) at `level` (0-9).
pub fn encode(records: &[WalRecord<'_>], which: &[usize], level: u32) -> ObjectBody {
    let guess: usize = which.iter().map(|&i| records[i].doc.len() + 1).sum();
    let mut raw = 0;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(guess / 4 + 64),
        flate2::Compression::new(level.min(9)),
    );
    for &i in which {
        // Writing to a Vec cannot fail.
        let line = one_line(records[i].doc);
        raw += line.len() + 1;
        let _ = enc.write_all(&line);
        let _ = enc.write_all(b"\n");
    }
    ObjectBody {
        gz: enc.finish().unwrap_or_default(),
        raw_bytes: raw as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Stream;
    use std::io::Read;

    #[test]
    fn ndjson_gzip_one_line_per_document() {
        let docs: [&[u8]; 3] = [b"{\"a\":1}", b"{\"b\":\"x\ny\"}", b"{\n\"c\":2}"];
        let recs: Vec<WalRecord<'_>> = docs
            .iter()
            .map(|d| WalRecord {
                stream: Stream::Stdout,
                ts_ms: 0,
                id: b"i",
                container: b"c",
                route: b"",
                doc: d,
            })
            .collect();
        let body = encode(&recs, &[0, 2], 6);
        let mut text = String::new();
        flate2::read::GzDecoder::new(body.gz.as_slice())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"c\":2}\n");
        assert_eq!(body.raw_bytes, 16);
    }
}
