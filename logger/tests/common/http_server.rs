//! The server side of HTTP/1.1 the test servers need (the fault-injecting
//! proxy, the stand-in Elasticsearch, the hostile servers): read a request,
//! write a response. Tests only: the shipper's client is `ureq`.

use std::io::{self, BufRead, Read, Write};

/// Requests larger than this are refused (the sink sends a few MiB at most).
const MAX_BODY: usize = 256 << 20;

/// Value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Start line, headers, body.
pub type Message = (String, Vec<(String, String)>, Vec<u8>);

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Reads one request (Content-Length or chunked body). `Ok(None)` at a
/// clean EOF before the start line.
pub fn read_request(r: &mut dyn BufRead) -> io::Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let start = start.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 100 {
            return Err(bad("too many headers"));
        }
    }
    let mut body = Vec::new();
    if header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let n = usize::from_str_radix(l.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if n == 0 {
                let mut crlf = String::new();
                r.read_line(&mut crlf)?;
                break;
            }
            if body.len() + n > MAX_BODY {
                return Err(bad("request too large"));
            }
            let at = body.len();
            body.resize(at + n, 0);
            r.read_exact(&mut body[at..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = header(&headers, "content-length") {
        let n: usize = n.parse().map_err(|_| bad("bad length"))?;
        if n > MAX_BODY {
            return Err(bad("request too large"));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Some((start, headers, body)))
}

/// Writes a response with a JSON body.
pub fn write_response(w: &mut dyn Write, status: u16, reason: &str, body: &[u8]) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

/// The body as sent, gunzipped if it came with `Content-Encoding: gzip`.
pub fn decoded_body(headers: &[(String, String)], body: Vec<u8>) -> Vec<u8> {
    if header(headers, "content-encoding") != Some("gzip") {
        return body;
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}
