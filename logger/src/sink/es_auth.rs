//! Credentials of the Elasticsearch sink, read from the operator's auth
//! file (`es_auth_file`): basic or API key, sent as the `Authorization`
//! header and never shown.

use std::path::Path;

use super::SinkError;

/// Credentials read from the operator's auth file.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `basic USER:PASSWORD`
    Basic(String),
    /// `apikey KEY` (the base64 `id:key` form ES returns as `encoded`), or `apikey ID:KEY`.
    ApiKey(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Basic(_) => "Auth::Basic(<redacted>)",
            Auth::ApiKey(_) => "Auth::ApiKey(<redacted>)",
        })
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Auth {
    /// Reads `basic USER:PASSWORD` or `apikey KEY` from the first line of `path`.
    pub fn load(path: &Path) -> Result<Auth, SinkError> {
        let s =
            std::fs::read_to_string(path).map_err(|e| SinkError::file("es_auth_file", path, e))?;
        let line = s.lines().next().unwrap_or("").trim();
        match line.split_once(char::is_whitespace) {
            Some(("basic", v)) if v.trim().contains(':') => Ok(Auth::Basic(v.trim().to_string())),
            Some(("apikey", v)) if !v.trim().is_empty() => Ok(Auth::ApiKey(v.trim().to_string())),
            _ => Err(SinkError::file(
                "es_auth_file",
                path,
                "expected `basic USER:PASSWORD` or `apikey KEY` on the first line",
            )),
        }
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        match self {
            Auth::Basic(up) => format!("Basic {}", base64(up.as_bytes())),
            Auth::ApiKey(k) if k.contains(':') => format!("ApiKey {}", base64(k.as_bytes())),
            Auth::ApiKey(k) => format!("ApiKey {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_auth() {
        assert_eq!(base64(b"elastic:changeme"), "ZWxhc3RpYzpjaGFuZ2VtZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth");
        std::fs::write(&p, "basic elastic:changeme\n").unwrap();
        assert_eq!(
            Auth::load(&p).unwrap().header(),
            "Basic ZWxhc3RpYzpjaGFuZ2VtZQ=="
        );
        std::fs::write(
            &p,
            "apikey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
        )
        .unwrap();
        assert_eq!(
            Auth::load(&p).unwrap().header(),
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
        std::fs::write(&p, "password").unwrap();
        assert!(Auth::load(&p).is_err());
        assert!(!format!("{:?}", Auth::Basic("u:p".into())).contains("u:p"));
    }
}
