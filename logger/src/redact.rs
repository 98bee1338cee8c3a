//! What of the operator's settings may be shown. Every place that displays
//! settings (`rein-log-shipper check`, `Debug` of the settings and sinks,
//! log lines and errors naming a destination) goes through this module, so
//! a password, key or token is never printed: values of settings whose name
//! says they are secret, the password part of a URL, and the contents of
//! auth files (which are never read for display at all).

/// What stands in for a secret.
pub const REDACTED: &str = "<redacted>";

/// Whether a setting (a librdkafka property, a URL query parameter) holds a
/// secret, by its name: `sasl.password`, `ssl.key.password`,
/// `sasl.jaas.config`, `sasl.oauthbearer.client.secret`, `...token...`, any
/// `key` (a key's location is not secret, but hiding it costs nothing).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "key",
        "token",
        "sasl.jaas",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// `key = value` pairs with the values of secret names replaced.
pub fn pairs(p: &[(String, String)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| {
            let shown = if is_secret_name(k) { REDACTED } else { v };
            (k.clone(), shown.to_string())
        })
        .collect()
}

/// `key=value;key=value` text (`kafka_properties`) with secret values
/// replaced; a piece without `=` is replaced whole.
pub fn properties_text(text: &str) -> String {
    text.split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_secret_name(k) => format!("{k}={REDACTED}"),
            Some(_) => kv.to_string(),
            None if kv.trim().is_empty() => kv.to_string(),
            None => REDACTED.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// A setting's value as it may be shown, by the setting's name: URLs
/// without passwords, property lists without secret values, secret-named
/// settings not at all.
pub fn setting(key: &str, value: &str) -> String {
    if key.ends_with("_url") {
        url(value)
    } else if key.ends_with("_properties") {
        properties_text(value)
    } else if is_secret_name(key) {
        REDACTED.to_string()
    } else {
        value.to_string()
    }
}

/// A URL with its userinfo password (the whole userinfo when it has no `:`,
/// which some clients read as a password) and secret query values replaced.
pub fn url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((info, host)) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_name(k) => format!("{k}={REDACTED}"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The secrets a URL carries (userinfo password or the whole userinfo
/// without `:`, secret query values), to scrub from a library's messages.
pub fn url_secrets(u: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = u.split_once("://") else {
        return out;
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    if let Some((info, _)) = authority.rsplit_once('@') {
        out.push(info.split_once(':').map_or(info, |(_, p)| p).to_string());
    }
    if let Some((_, query)) = tail.split_once('?') {
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=') {
                if is_secret_name(k) {
                    out.push(v.to_string());
                }
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Replaces every occurrence of `secrets` in a message from a library (an
/// error may quote a URL or a setting's value).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

/// A URL that may carry credentials: `Display` and `Debug` show it
/// redacted; only [`SecretUrl::expose`] gives the real one, to the client
/// that connects with it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(u: impl Into<String>) -> Self {
        SecretUrl(u.into())
    }

    /// The URL itself, credentials included: for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secrets it carries (see [`url_secrets`]).
    pub fn secrets(&self) -> Vec<String> {
        url_secrets(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(u: String) -> Self {
        SecretUrl(u)
    }
}

impl From<&str> for SecretUrl {
    fn from(u: &str) -> Self {
        SecretUrl(u.to_string())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&url(&self.0))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", url(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_only() {
        assert_eq!(
            url("redis://logs:hunter2@10.0.0.1:6379/2"),
            "redis://logs:<redacted>@10.0.0.1:6379/2"
        );
        assert_eq!(
            url("rediss://:hunter2@r:6380"),
            "rediss://:<redacted>@r:6380"
        );
        assert_eq!(url("redis://hunter2@r"), "redis://<redacted>@r");
        assert_eq!(url("redis://r:6379/0"), "redis://r:6379/0");
        assert_eq!(
            url("redis://r/0?password=hunter2&protocol=resp3"),
            "redis://r/0?password=<redacted>&protocol=resp3"
        );
        assert_eq!(
            url("https://u:p@a@es:9200/x"),
            "https://u:<redacted>@es:9200/x"
        );
        assert_eq!(url("not a url"), "not a url");
        let s = SecretUrl::from("redis://u:hunter2@r:1");
        assert!(!format!("{s} {s:?} {:#?}", vec![&s]).contains("hunter2"));
        assert_eq!(s.expose(), "redis://u:hunter2@r:1");
        assert_eq!(s.secrets(), vec!["hunter2".to_string()]);
        assert_eq!(url_secrets("redis://r:1"), Vec::<String>::new());
    }

    #[test]
    fn secret_settings_by_name() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "sasl.jaas.config",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "SASL.PASSWORD",
            "ssl.key.pem",
        ] {
            assert!(is_secret_name(k), "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.username",
            "ssl.ca.location",
            "sasl.mechanism",
        ] {
            assert!(!is_secret_name(k), "{k}");
        }
        let p = pairs(&[
            ("sasl.username".into(), "logs".into()),
            ("sasl.password".into(), "hunter2".into()),
        ]);
        assert_eq!(p[0].1, "logs");
        assert_eq!(p[1].1, REDACTED);
        assert_eq!(
            properties_text("security.protocol=ssl;sasl.password=hunter2;junk"),
            "security.protocol=ssl;sasl.password=<redacted>;<redacted>"
        );
        assert_eq!(
            setting("redis_url", "redis://:hunter2@r"),
            "redis://:<redacted>@r"
        );
        assert_eq!(setting("es_index", "logs"), "logs");
        assert_eq!(
            scrub(
                "bad value hunter2 for x",
                &["hunter2".into(), String::new()]
            ),
            "bad value <redacted> for x"
        );
    }
}
