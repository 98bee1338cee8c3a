//! The part of the NATS client protocol the sink speaks: the client's
//! operations (`CONNECT`, `HPUB` with headers, `SUB`, `PING`, `PONG`)
//! encoded into a buffer, and the server's (`INFO`, `MSG`, `HMSG`, `PING`,
//! `PONG`, `+OK`, `-ERR`) read with bounds: a line longer than
//! [`MAX_LINE_BYTES`] or a message larger than [`MAX_MESSAGE_BYTES`] (an
//! acknowledgement is about 60 bytes) ends the connection, so a server
//! answering garbage or endless lines cannot grow the shipper's memory.

use std::io::{self, Read};

/// Longest server line (`INFO` with a cluster's addresses included).
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Largest message the sink accepts from the server (headers and payload).
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// An operation of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`.
    Info(Vec<u8>),
    /// `MSG` or `HMSG`: a message on a subscription.
    Msg(Msg),
    /// `PING`: to be answered with `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK` (verbose mode only; never asked for).
    Ok,
    /// `-ERR 'text'`.
    Err(String),
}

/// A message delivered on one of the client's subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub struct Msg {
    /// Its subject.
    pub subject: String,
    /// The subscription id.
    pub sid: u64,
    /// The status code of its header block (`NATS/1.0 503`), if any.
    pub status: Option<u16>,
    /// The status description, if any.
    pub description: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Why the server's bytes could not be read as its operations.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading failed, timed out or the connection closed.
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    /// The connection closed between two operations.
    #[error("the server closed the connection")]
    Closed,
    /// A line or message over its bound.
    #[error("{what} over {limit} bytes")]
    TooLarge {
        /// A line or a message.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// Not a NATS operation.
    #[error("not a NATS operation: {0:.120}")]
    Malformed(String),
}

/// Reads the server's operations from a byte stream, keeping at most one
/// line or message at a time.
#[derive(Debug, Default)]
pub struct OpReader {
    buf: Vec<u8>,
    start: usize,
}

impl OpReader {
    /// Bytes buffered and not yet read as operations.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next operation of the server.
    pub fn next<R: Read>(&mut self, r: &mut R) -> Result<ServerOp, ProtoError> {
        let line = self.line(r)?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let (op, args) = text.split_once([' ', '\t']).unwrap_or((&text, ""));
        let args = args.trim();
        match op.to_ascii_uppercase().as_str() {
            "INFO" => Ok(ServerOp::Info(args.as_bytes().to_vec())),
            "PING" => Ok(ServerOp::Ping),
            "PONG" => Ok(ServerOp::Pong),
            "+OK" => Ok(ServerOp::Ok),
            "-ERR" => Ok(ServerOp::Err(args.trim_matches('\'').to_string())),
            "MSG" => self.msg(r, args, false, &text),
            "HMSG" => self.msg(r, args, true, &text),
            _ => Err(ProtoError::Malformed(text)),
        }
    }

    /// `MSG subject sid [reply] size` or `HMSG subject sid [reply] hsize size`,
    /// then the bytes and CRLF.
    fn msg<R: Read>(
        &mut self,
        r: &mut R,
        args: &str,
        headers: bool,
        text: &str,
    ) -> Result<ServerOp, ProtoError> {
        let bad = || ProtoError::Malformed(text.to_string());
        let a: Vec<&str> = args.split_ascii_whitespace().collect();
        let sizes = if headers { 2 } else { 1 };
        if a.len() != 2 + sizes && a.len() != 3 + sizes {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<usize>().map_err(|_| bad());
        let total = num(a[a.len() - 1])?;
        let hlen = if headers { num(a[a.len() - 2])? } else { 0 };
        if hlen > total {
            return Err(bad());
        }
        if total > MAX_MESSAGE_BYTES {
            return Err(ProtoError::TooLarge {
                what: "a message",
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let sid = a[1].parse::<u64>().map_err(|_| bad())?;
        let body = self.exact(r, total + 2)?;
        if &body[total..] != b"\r\n" {
            return Err(bad());
        }
        let (status, description) = if headers {
            status_of(&body[..hlen]).ok_or_else(bad)?
        } else {
            (None, String::new())
        };
        Ok(ServerOp::Msg(Msg {
            subject: a[0].to_string(),
            sid,
            status,
            description,
            payload: body[hlen..total].to_vec(),
        }))
    }

    /// The next CRLF-terminated line, without its CRLF.
    fn line<R: Read>(&mut self, r: &mut R) -> Result<Vec<u8>, ProtoError> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start..];
            if let Some(i) = memchr::memchr(b'\n', &avail[scanned..]) {
                let end = scanned + i;
                let line = avail[..end].strip_suffix(b"\r").unwrap_or(&avail[..end]);
                let line = line.to_vec();
                self.start += end + 1;
                return Ok(line);
            }
            scanned = avail.len();
            if scanned > MAX_LINE_BYTES {
                return Err(ProtoError::TooLarge {
                    what: "a line",
                    limit: MAX_LINE_BYTES,
                });
            }
            if self.fill(r)? == 0 {
                return Err(if self.pending() == 0 {
                    ProtoError::Closed
                } else {
                    io::Error::from(io::ErrorKind::UnexpectedEof).into()
                });
            }
        }
    }

    /// Exactly `n` bytes.
    fn exact<R: Read>(&mut self, r: &mut R, n: usize) -> Result<Vec<u8>, ProtoError> {
        while self.pending() < n {
            if self.fill(r)? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(out)
    }

    /// Reads more bytes (what was consumed is dropped first).
    fn fill<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + (16 << 10), 0);
        let n = loop {
            match r.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        n
    }
}

/// The status of a header block: `NATS/1.0[ CODE[ DESCRIPTION]]` then headers.
fn status_of(h: &[u8]) -> Option<(Option<u16>, String)> {
    let text = String::from_utf8_lossy(h);
    let first = text.lines().next()?;
    let rest = first.strip_prefix("NATS/1.0")?.trim();
    if rest.is_empty() {
        return Some((None, String::new()));
    }
    let (code, desc) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((Some(code.parse().ok()?), desc.trim().to_string()))
}

/// A header value the protocol can carry: printable ASCII only.
pub fn header_safe(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Appends `HPUB subject reply HLEN TOTAL\r\n` + headers + payload + CRLF.
/// The header values must be [`header_safe`].
pub fn hpub(
    out: &mut Vec<u8>,
    subject: &str,
    reply: &str,
    headers: &[(&str, &[u8])],
    payload: &[u8],
) {
    let hlen = header_block_len(headers);
    let total = hlen + payload.len();
    out.extend_from_slice(
        format!("HPUB {subject} {reply} {hlen} {total}\r\nNATS/1.0\r\n").as_bytes(),
    );
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Bytes of the header block [`hpub`] writes (what counts toward `max_payload`).
pub fn header_block_len(headers: &[(&str, &[u8])]) -> usize {
    "NATS/1.0\r\n".len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2
}

/// Appends `PUB subject reply SIZE\r\n` + payload + CRLF.
pub fn publish(out: &mut Vec<u8>, subject: &str, reply: &str, payload: &[u8]) {
    out.extend_from_slice(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(bytes: &[u8]) -> Vec<Result<ServerOp, String>> {
        let mut r = OpReader::default();
        let mut input = bytes;
        let mut out = Vec::new();
        loop {
            match r.next(&mut input) {
                Ok(op) => out.push(Ok(op)),
                Err(ProtoError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn reads_every_server_operation() {
        let got = ops(
            b"INFO {\"max_payload\":1048576}\r\nPING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\n\
              MSG _INBOX.a.1 1 25\r\n{\"stream\":\"LOGS\",\"seq\":1}\r\n\
              HMSG _INBOX.a.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n\
              HMSG x 7 r 32 34\r\nNATS/1.0 408 Request Timeout\r\n\r\nhi\r\n",
        );
        let msg = |subject: &str, sid, status, description: &str, payload: &[u8]| {
            Ok(ServerOp::Msg(Msg {
                subject: subject.into(),
                sid,
                status,
                description: description.into(),
                payload: payload.to_vec(),
            }))
        };
        assert_eq!(
            got,
            vec![
                Ok(ServerOp::Info(b"{\"max_payload\":1048576}".to_vec())),
                Ok(ServerOp::Ping),
                Ok(ServerOp::Pong),
                Ok(ServerOp::Ok),
                Ok(ServerOp::Err("Authorization Violation".into())),
                msg(
                    "_INBOX.a.1",
                    1,
                    None,
                    "",
                    b"{\"stream\":\"LOGS\",\"seq\":1}"
                ),
                msg("_INBOX.a.2", 1, Some(503), "", b""),
                msg("x", 7, Some(408), "Request Timeout", b"hi"),
            ]
        );
    }

    #[test]
    fn garbage_and_oversized_input_end_the_connection() {
        let e = |b: &[u8]| ops(b).pop().unwrap().unwrap_err();
        assert!(e(b"HELLO\r\n").contains("not a NATS operation"));
        assert!(e(b"MSG a 1 x\r\n").contains("not a NATS operation"));
        assert!(e(b"MSG a 1 3\r\nabcd\r\n").contains("not a NATS operation"));
        assert!(e(b"HMSG a 1 9 3\r\n").contains("not a NATS operation"));
        assert!(e(b"HMSG a 1 3 3\r\nxyz\r\n").contains("not a NATS operation"));
        assert!(e(b"MSG a 1 1099511627776\r\n").contains("a message over"));
        let long = vec![b'x'; MAX_LINE_BYTES + 40_000];
        assert!(e(&long).contains("a line over"));
        assert!(e(b"MSG a 1 10\r\nabc").contains("reading"));
        assert!(e(b"PI").contains("reading"));
    }

    #[test]
    fn one_byte_at_a_time_reads_the_same() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut r = OpReader::default();
        let mut t = Trickle(b"PING\r\nMSG s 1 2\r\nok\r\n");
        assert_eq!(r.next(&mut t).unwrap(), ServerOp::Ping);
        let ServerOp::Msg(m) = r.next(&mut t).unwrap() else {
            panic!()
        };
        assert_eq!(m.payload, b"ok");
    }

    #[test]
    fn hpub_counts_what_the_server_counts() {
        let mut out = Vec::new();
        let h: [(&str, &[u8]); 1] = [("Nats-Msg-Id", b"abc-o-1")];
        hpub(&mut out, "logs", "_INBOX.x.1", &h, b"{}");
        let want = "HPUB logs _INBOX.x.1 34 36\r\nNATS/1.0\r\nNats-Msg-Id: abc-o-1\r\n\r\n{}\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!(header_block_len(&h), 34);
        assert!(header_safe(b"a-b.c 1"));
        assert!(!header_safe(b"a\r\nb") && !header_safe(b"") && !header_safe(b"\xff"));
        let mut out = Vec::new();
        publish(&mut out, "$JS.API.INFO", "_INBOX.x.2", b"");
        assert_eq!(out, b"PUB $JS.API.INFO _INBOX.x.2 0\r\n\r\n");
    }
}
