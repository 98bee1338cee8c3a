//! `rein.log.files`: the log files a task asks the shipper to follow in its
//! sandbox, besides stdout and stderr, checked against the operator's caps.
//!
//! Syntax: entries separated by `,`; each is `[TAG=]GLOB` followed by
//! options `;multiline=off|indented|inherit`, `;sink=SINK` (within the
//! operator's allowed sinks) and `;route=ROUTE` (checked for the file's sink):
//!
//! ```text
//! app=logs/*.log,gc=gc.log;multiline=off,audit=audit/*.log;sink=kafka;route=team-a-audit
//! ```
//!
//! A glob is relative to the sandbox, its components separated by `/`; `*`
//! matches any run of characters and `?` one character, within a component
//! (neither matches a leading `.`). Nothing else is special: no `**`, no
//! brackets, no `..`, no absolute path. The sandbox's own `stdout*` and
//! `stderr*` files are never matched (they are shipped as streams).

use serde::{Deserialize, Serialize};

use crate::proto::{MultilineSpec, SinkKind};

/// Longest `rein.log.files` value (also the schema's bound).
pub const MAX_FILES_LABEL: usize = 1024;
/// Longest glob.
const MAX_GLOB: usize = 256;
/// Longest tag.
const MAX_TAG: usize = 64;

/// How a file's lines are joined into records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMultiline {
    /// As the container's `log.multiline` says.
    #[default]
    Inherit,
    /// One record per line.
    Off,
    /// The built-in `indented` rule, within these limits (the container's
    /// `log.multiline.*` limits, capped by the operator).
    Indented(MultilineSpec),
}

/// One entry of `rein.log.files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Written in `log.file.tag` of every record (what operators route on).
    pub tag: String,
    /// Sandbox-relative glob.
    pub glob: String,
    /// Multiline joining of this file's lines.
    #[serde(default)]
    pub multiline: FileMultiline,
    /// Index, topic or stream of this file's records (`None`: the
    /// container's, or with a sink of its own that sink's default).
    #[serde(default)]
    pub route: Option<String>,
    /// Sink of this file's records (`None`: the container's).
    #[serde(default, deserialize_with = "crate::proto::opt_sink_or_none")]
    pub sink: Option<SinkKind>,
}

/// The operator's bounds on a container's log files, sent with its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCaps {
    /// Files followed at once (`max_log_files`).
    pub max_files: u32,
    /// Directory entries looked at per directory and scan (`max_log_dir_entries`).
    pub max_dir_entries: u32,
    /// Bytes of a file's existing content read when it is first found
    /// (`log_file_max_backlog`); older bytes are skipped and counted.
    pub max_backlog: u64,
}

impl Default for FileCaps {
    fn default() -> Self {
        FileCaps {
            max_files: 32,
            max_dir_entries: 4096,
            max_backlog: 256 << 20,
        }
    }
}

/// Bounds `rein.log.files` is checked against (module parameters).
#[derive(Clone, Copy, Debug)]
pub struct SpecCaps {
    /// Entries (`max_log_file_globs`).
    pub max_globs: usize,
    /// Components of a glob (`max_log_file_depth`).
    pub max_depth: usize,
}

/// Parses `raw` for a container whose sink is `sink`; `sink_ok` reads a
/// per-file sink (within the allowed ones), `route_ok` checks a per-file
/// route for a sink, `indented` gives the multiline limits of a file that
/// asks for `multiline=indented`.
pub fn parse(
    raw: &str,
    caps: SpecCaps,
    sink: SinkKind,
    sink_ok: &dyn Fn(&str) -> Result<SinkKind, String>,
    route_ok: &dyn Fn(SinkKind, &str) -> Result<(), String>,
    indented: &dyn Fn() -> Result<MultilineSpec, String>,
) -> Result<Vec<FileSpec>, String> {
    let mut out: Vec<FileSpec> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if out.len() == caps.max_globs {
            return Err(format!(
                "more than {} entries (the operator's max_log_file_globs)",
                caps.max_globs
            ));
        }
        let mut parts = entry.split(';');
        let head = parts.next().unwrap_or_default();
        let (tag, glob) = match head.split_once('=') {
            Some((t, g)) => (t.trim(), g.trim()),
            None => (head.trim(), head.trim()),
        };
        check_glob(glob, caps.max_depth)?;
        check_tag(tag)?;
        if out.iter().any(|s| s.tag == tag) {
            return Err(format!("tag '{tag}' is used twice"));
        }
        let mut spec = FileSpec {
            tag: tag.to_string(),
            glob: glob.to_string(),
            multiline: FileMultiline::Inherit,
            route: None,
            sink: None,
        };
        let mut route = None;
        for opt in parts {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("option '{opt}' of '{tag}' is not KEY=VALUE"))?;
            match (k.trim(), v.trim()) {
                ("multiline", "off") => spec.multiline = FileMultiline::Off,
                ("multiline", "indented") => spec.multiline = FileMultiline::Indented(indented()?),
                ("multiline", "inherit") => spec.multiline = FileMultiline::Inherit,
                ("multiline", v) => {
                    return Err(format!(
                        "multiline '{v}' of '{tag}': expected off, indented or inherit"
                    ))
                }
                ("route", v) => route = Some(v),
                ("sink", v) => {
                    let k = sink_ok(v).map_err(|e| format!("sink '{v}' of '{tag}': {e}"))?;
                    spec.sink = (k != sink).then_some(k);
                }
                (k, _) => {
                    return Err(format!(
                        "unknown option '{k}' of '{tag}' (expected multiline, sink or route)"
                    ))
                }
            }
        }
        if let Some(v) = route {
            let k = spec.sink.unwrap_or(sink);
            route_ok(k, v).map_err(|e| format!("route '{v}' of '{tag}': {e}"))?;
            spec.route = Some(v.to_string());
        }
        out.push(spec);
    }
    Ok(out)
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/*?".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag '{tag}': 1 to {MAX_TAG} of [A-Za-z0-9_.-] (or the glob itself)"
        ))
    }
}

fn check_glob(glob: &str, max_depth: usize) -> Result<(), String> {
    if glob.is_empty() || glob.len() > MAX_GLOB {
        return Err(format!("glob '{glob}': 1 to {MAX_GLOB} bytes"));
    }
    if glob.starts_with('/') {
        return Err(format!("glob '{glob}': must be relative to the sandbox"));
    }
    let parts: Vec<&str> = glob.split('/').collect();
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." {
            return Err(format!("glob '{glob}': empty, '.' or '..' component"));
        }
        if p.contains("**") {
            return Err(format!("glob '{glob}': '**' is not supported"));
        }
        if let Some(b) = p
            .bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || b"_.-+@*?".contains(b)))
        {
            return Err(format!(
                "glob '{glob}': character {:?} not allowed (letters, digits, _.-+@ and * ?)",
                char::from(b)
            ));
        }
    }
    if parts.len() > max_depth {
        return Err(format!(
            "glob '{glob}': {} levels, above the operator's max_log_file_depth of {max_depth}",
            parts.len()
        ));
    }
    Ok(())
}

/// True when the glob component `pat` matches the name `name` (bytes).
/// `*` and `?` never match a leading `.`.
pub fn component_matches(pat: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pat.first() != Some(&b'.') {
        return false;
    }
    // Iterative wildcard match with one backtrack point: linear in practice,
    // O(len(pat) * len(name)) at worst (both bounded).
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// True for the sandbox's own stream files (`stdout`, `stderr.3`, ...) and
/// what the shipper and the module keep beside them: never a task's log file.
pub fn is_stream_file(top_level_name: &[u8]) -> bool {
    top_level_name.starts_with(b"stdout") || top_level_name.starts_with(b"stderr")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: SpecCaps = SpecCaps {
        max_globs: 3,
        max_depth: 3,
    };

    fn ok(_: SinkKind, _: &str) -> Result<(), String> {
        Ok(())
    }

    fn sinks(v: &str) -> Result<SinkKind, String> {
        match SinkKind::parse(v) {
            Some(k) if k != SinkKind::Redis => Ok(k),
            _ => Err("not allowed".into()),
        }
    }

    fn limits() -> Result<MultilineSpec, String> {
        Ok(MultilineSpec {
            pattern: None,
            max_lines: 7,
            max_bytes: 700,
            timeout_ms: 70,
        })
    }

    fn p(raw: &str) -> Result<Vec<FileSpec>, String> {
        parse(raw, CAPS, SinkKind::Elasticsearch, &sinks, &ok, &limits)
    }

    #[test]
    fn entries_with_tags_and_options() {
        let v = p("app=logs/*.log, gc.log;multiline=off,audit=a/b/*.log;route=team-a;sink=kafka;multiline=indented")
            .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].multiline, FileMultiline::Indented(limits().unwrap()));
        assert_eq!((v[0].sink, v[2].sink), (None, Some(SinkKind::Kafka)));
        assert_eq!(
            (v[0].tag.as_str(), v[0].glob.as_str()),
            ("app", "logs/*.log")
        );
        assert_eq!(
            (v[1].tag.as_str(), &v[1].multiline),
            ("gc.log", &FileMultiline::Off)
        );
        assert_eq!(v[2].route.as_deref(), Some("team-a"));
    }

    #[test]
    fn bad_entries_name_the_reason() {
        for (raw, want) in [
            ("/etc/shadow", "relative"),
            ("../x.log", "'..'"),
            ("a/../../x", "'..'"),
            ("a/b/c/d.log", "max_log_file_depth"),
            ("a,b,c,d", "max_log_file_globs"),
            ("**/x.log", "'**'"),
            ("logs/[ab].log", "not allowed"),
            ("logs/a b.log", "not allowed"),
            ("x=a.log,x=b.log", "used twice"),
            ("a.log;multiline=joined", "expected off"),
            ("a.log;colour=red", "unknown option"),
            ("a.log;oops", "KEY=VALUE"),
            ("t a=a.log", "tag"),
            ("a.log;sink=redis", "sink 'redis' of 'a.log': not allowed"),
        ] {
            let e = p(raw).unwrap_err();
            assert!(e.contains(want), "{raw}: {e}");
        }
        let refuse_kafka = |k: SinkKind, _: &str| match k {
            SinkKind::Kafka => Err("refused for kafka".to_string()),
            _ => Ok(()),
        };
        let e = parse(
            "a.log;route=x;sink=kafka",
            CAPS,
            SinkKind::Elasticsearch,
            &sinks,
            &refuse_kafka,
            &limits,
        )
        .unwrap_err();
        assert!(e.contains("route 'x' of 'a.log': refused for kafka"), "{e}");
        // The route is checked for the file's own sink, whatever the order.
        assert!(parse(
            "a.log;route=x",
            CAPS,
            SinkKind::Elasticsearch,
            &sinks,
            &refuse_kafka,
            &limits,
        )
        .is_ok());
    }

    #[test]
    fn wildcards_stay_within_a_component_and_skip_dot_files() {
        for (p, n, want) in [
            ("*.log", "app.log", true),
            ("*.log", "app.log.1", false),
            ("*.log*", "app.log.1", true),
            ("app-?.log", "app-1.log", true),
            ("app-?.log", "app-12.log", false),
            ("*", ".hidden", false),
            (".*", ".hidden", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("gc.log", "gc.log", true),
        ] {
            assert_eq!(
                component_matches(p.as_bytes(), n.as_bytes()),
                want,
                "{p} {n}"
            );
        }
    }
}
