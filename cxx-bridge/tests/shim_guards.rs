//! A source-level guard over the C++ shim (modules/src), which is only compiled
//! where Mesos is: every function the agent or Rust calls must catch everything,
//! because an exception unwinding into a libprocess thread (or into Rust) aborts the
//! agent; and no protobuf string may become a `rust::String`/`rust::Str`, whose
//! constructors throw on bytes that are not UTF-8.
//!
//! What counts as guarded: a body whose first statement is `try {` with a
//! `catch (...)`, a `= default` destructor, or a `return`/call of a helper from
//! guard.hpp whose own body catches everything. A module create function may also
//! forward (`return f(...)`) to a guarded function.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// The shim's sources, comments removed, by file name.
fn sources() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules/src");
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("modules/src") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".cpp") || name.ends_with(".hpp") {
            out.insert(name, strip_comments(&fs::read_to_string(&path).unwrap()));
        }
    }
    out
}

/// Removes `//` and `/* */` comments, keeping string literals intact.
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            (b'"' | b'\'', _) => {
                let quote = b[i];
                let start = i;
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str(&text[start..i.min(b.len())]);
            }
            _ => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The text between the brace at `open` and its match.
fn block(text: &str, open: usize) -> &str {
    assert_eq!(text.as_bytes()[open], b'{');
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after offset {open}");
}

/// After the parameter list that starts at `paren`: the body, or `None` for a
/// declaration (`;`) or `= default`.
fn body_after_params(text: &str, paren: usize) -> Option<&str> {
    let mut depth = 0;
    let mut end = paren;
    for (i, c) in text[paren..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    end = paren + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    let rest = &text[end..];
    let stop = rest.find(['{', ';', '='])?;
    match rest.as_bytes()[stop] {
        b'{' => Some(block(text, end + stop)),
        _ => None,
    }
}

/// Helpers from guard.hpp whose own bodies catch everything.
fn guard_helpers(files: &BTreeMap<String, String>) -> Vec<String> {
    let guard = files.get("guard.hpp").expect("modules/src/guard.hpp");
    let mut helpers = Vec::new();
    for (at, _) in guard.match_indices('(') {
        let name: String = guard[..at]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if name.is_empty() || helpers.contains(&name) {
            continue;
        }
        if let Some(body) = body_after_params(guard, at) {
            if is_try_catch_all(body) {
                helpers.push(name);
            }
        }
    }
    helpers
}

fn is_try_catch_all(body: &str) -> bool {
    body.trim_start().starts_with("try {") && body.contains("catch (...)")
}

/// Whether a body catches everything, following `return f(...)` forwards.
fn guarded(body: &str, helpers: &[String], files: &BTreeMap<String, String>, depth: u32) -> bool {
    let first = body.trim_start();
    if is_try_catch_all(first) {
        return true;
    }
    let call = first.strip_prefix("return ").unwrap_or(first);
    let callee: String = call
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let callee = callee.rsplit("::").next().unwrap_or_default().to_owned();
    if helpers.contains(&callee) {
        return true;
    }
    depth < 3
        && !callee.is_empty()
        && definitions(files, &callee)
            .iter()
            .all(|b| guarded(b, helpers, files, depth + 1))
        && !definitions(files, &callee).is_empty()
}

/// Bodies of every definition of a function named `name` (free or `X::name`).
fn definitions<'a>(files: &'a BTreeMap<String, String>, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for text in files.values() {
        for (at, _) in text.match_indices(name) {
            let before = text[..at].chars().next_back();
            let after = &text[at + name.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '>') {
                continue;
            }
            let trimmed = after.trim_start();
            if !trimmed.starts_with('(') {
                continue;
            }
            // A definition's name is preceded by a return type or `X::`, not by
            // `return`, `=`, `(` or `,` (calls and arguments).
            let prefix = text[..at].trim_end();
            if prefix.ends_with("return") || prefix.ends_with(['=', '(', ',', '!', '&', '|']) {
                continue;
            }
            let paren = text.len() - trimmed.len();
            if let Some(body) = body_after_params(text, paren) {
                out.push(body);
            }
        }
    }
    out
}

/// Every method marked `override`: (file, name, body or `None` when declared only).
fn overrides(files: &BTreeMap<String, String>) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for (file, text) in files {
        for (at, _) in text.match_indices("override") {
            let head = &text[..at];
            let Some(close) = head.rfind(')') else {
                continue;
            };
            // Walk back to the matching '(' and the name before it.
            let mut depth = 0;
            let mut open = close;
            for (i, c) in head[..=close].char_indices().rev() {
                match c {
                    ')' => depth += 1,
                    '(' => {
                        depth -= 1;
                        if depth == 0 {
                            open = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let name: String = head[..open]
                .trim_end()
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '~')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let body = body_after_params(text, open).map(str::to_owned);
            out.push((file.clone(), name, body));
        }
    }
    out
}

#[test]
fn every_entry_point_of_the_shim_catches_everything() {
    let files = sources();
    let helpers = guard_helpers(&files);
    for needed in ["guarded", "guardedCallback"] {
        assert!(
            helpers.iter().any(|h| h == needed),
            "guard.hpp: {needed} must catch everything (found {helpers:?})"
        );
    }
    let mut unguarded = Vec::new();
    let mut seen = Vec::new();
    for (file, name, body) in overrides(&files) {
        seen.push(name.clone());
        let bodies: Vec<String> = match body {
            Some(body) => vec![body],
            None => {
                // Declared in a header: check every out-of-line `X::name(...)` body.
                let defs: Vec<String> = definitions(&files, &name)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                if defs.is_empty() && !name.starts_with('~') {
                    unguarded.push(format!("{file}: {name} (no definition found)"));
                }
                defs
            }
        };
        for body in bodies {
            if !guarded(&body, &helpers, &files, 0) {
                unguarded.push(format!("{file}: {name}"));
            }
        }
    }
    // The parse found what the shim is known to override (so a change in layout
    // cannot make this test pass vacuously).
    for expected in [
        "supportsNesting",
        "recover",
        "prepare",
        "isolate",
        "watch",
        "update",
        "usage",
        "status",
        "cleanup",
        "initialize",
        "fail",
        "nothing",
        "launch_info",
        "statistics",
        "limitation",
        "container_io",
        "write",
        "debug",
        "~PromiseCompletion",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "no override named {expected} found; seen {seen:?}"
        );
    }
    assert!(
        unguarded.is_empty(),
        "entry points without a catch-all: {unguarded:#?}"
    );
}

#[test]
fn every_module_create_function_catches_everything() {
    let files = sources();
    let helpers = guard_helpers(&files);
    let mut creators = Vec::new();
    for text in files.values() {
        for (at, _) in text.match_indices("mesos::modules::Module<") {
            let decl = &text[at..];
            let end = decl.find(");").expect("module declaration ends");
            let last = decl[..end].rsplit(',').next().unwrap().trim();
            creators.push(last.rsplit("::").next().unwrap().to_owned());
        }
    }
    for expected in ["createNetCls", "createBlkio", "createDisk", "createLogger"] {
        assert!(
            creators.iter().any(|c| c == expected),
            "module {expected} not found; found {creators:?}"
        );
    }
    for creator in &creators {
        let bodies = definitions(&files, creator);
        assert!(!bodies.is_empty(), "no definition of {creator}");
        for body in bodies {
            assert!(
                guarded(body, &helpers, &files, 0),
                "{creator} does not catch everything:\n{body}"
            );
        }
    }
}

#[test]
fn no_protobuf_string_becomes_a_rust_string() {
    for (file, text) in sources() {
        for needle in ["rust::String(", "rust::Str(", "rust::String{", "rust::Str{"] {
            assert!(
                !text.contains(needle),
                "{file} builds a {needle}...): protobuf strings must cross as bytes"
            );
        }
    }
}

/// `text` with the contents of string and character literals blanked (their
/// quotes kept), so operators and words inside messages do not count.
fn blank_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' || c == '\'' {
            while let Some(inner) = chars.next() {
                if inner == '\\' {
                    chars.next();
                } else if inner == c {
                    out.push(c);
                    break;
                }
            }
        }
    }
    out
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
}

/// Whether an `if` condition is one of the two mechanical forms: a presence flag
/// Rust set (`if (view.has_x)`) or Rust's own answer (`if (rein::f(...))`).
fn mechanical_if(after_if: &str) -> bool {
    let cond = after_if.trim_start();
    let Some(cond) = cond.strip_prefix('(') else {
        return false;
    };
    if let Some(flag) = cond.strip_prefix("view.has_") {
        let name_len = flag
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(flag.len());
        return flag[name_len..].starts_with(')');
    }
    cond.starts_with("rein::")
}

/// The shim copies; Rust decides. No branch in modules/src but the two mechanical
/// `if` forms above (and `catch`, which only turns an exception into a failure), no
/// state of its own and nothing read from the host.
#[test]
fn the_shim_decides_nothing() {
    let mut found = Vec::new();
    for (file, text) in sources() {
        for needle in ["/proc", "getenv", "ifstream", "fopen", "prctl"] {
            if text.contains(needle) {
                found.push(format!("{file}: reads the host ({needle})"));
            }
        }
        let code = blank_literals(&text);
        for word in words(&code) {
            if matches!(
                word,
                "switch"
                    | "else"
                    | "while"
                    | "goto"
                    | "std::map"
                    | "std::set"
                    | "std::unordered_map"
                    | "std::mutex"
            ) {
                found.push(format!("{file}: `{word}`"));
            }
        }
        for op in ["?", " && ", " || "] {
            if code.contains(op) {
                found.push(format!("{file}: `{}`", op.trim()));
            }
        }
        for (at, _) in code.match_indices("if") {
            let before = code[..at].chars().next_back();
            let after = &code[at + 2..];
            let is_word = !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.starts_with(|c: char| c.is_alphanumeric() || c == '_');
            if is_word && !mechanical_if(after) {
                let line = code[..at].lines().count();
                found.push(format!(
                    "{file}:{line}: if{}",
                    after.lines().next().unwrap()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the shim decides something (move it into Rust):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_decision_check_catches_what_it_must() {
    assert!(mechanical_if(" (view.has_net_tx) {"));
    assert!(mechanical_if(" (rein::is_module_variable(plain, x)) {"));
    assert!(!mechanical_if(" (view.has_net_tx && x) {"));
    assert!(!mechanical_if(" (agentSetsCapabilities()) {"));
    assert!(!mechanical_if(" (!view.resource_name.empty()) {"));
    assert_eq!(blank_literals(r#"a("x ? y", '?') ? b"#), r#"a("", '') ? b"#);
}
