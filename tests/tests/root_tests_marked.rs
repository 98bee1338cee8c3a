//! A test that returns early without root must be `#[ignore = "needs root"]`, so a
//! plain `cargo test` reports it as not run rather than passed (tests/run runs them
//! as root with `--include-ignored`). Checks every test in the repository whose body
//! holds a root check (`require_root(`, `!is_root()`, `!common::is_root()`).

use std::path::Path;

const ROOT_CHECKS: &[&str] = &["require_root(", "!is_root()", "!common::is_root()"];
const MARK: &str = "#[ignore = \"needs root\"]";

/// `(name, attributes, body)` of every `#[test]` function of a file.
fn tests_of(text: &str) -> Vec<(String, Vec<String>, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut tests = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "#[test]" {
            continue;
        }
        let mut attrs = vec![line.trim().to_owned()];
        let mut j = i + 1;
        while j < lines.len() && lines[j].trim_start().starts_with("#[") {
            attrs.push(lines[j].trim().to_owned());
            j += 1;
        }
        let Some(head) = lines.get(j) else { continue };
        let Some(name) = head
            .trim_start()
            .strip_prefix("fn ")
            .and_then(|r| r.split('(').next())
        else {
            continue;
        };
        // The body ends at the closing brace indented as the `fn` line.
        let indent = &head[..head.len() - head.trim_start().len()];
        let end = lines[j + 1..]
            .iter()
            .position(|l| *l == format!("{indent}}}"))
            .map_or(lines.len(), |k| j + 1 + k);
        tests.push((name.to_owned(), attrs, lines[j..end].join("\n")));
    }
    tests
}

#[test]
fn tests_that_need_root_are_marked_so() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = rein_tests::files_under(&repo, &|name| name.ends_with(".rs"));
    let mut unmarked = Vec::new();
    let mut marked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (name, attrs, body) in tests_of(&text) {
            if attrs.iter().any(|a| a == MARK) {
                marked += 1;
            } else if ROOT_CHECKS.iter().any(|c| body.contains(c)) {
                let rel = file.strip_prefix(&repo).unwrap_or(&file).to_owned();
                unmarked.push(format!("{}: {name}", rel.display()));
            }
        }
    }
    assert!(marked >= 70, "only {marked} tests marked {MARK}");
    assert!(
        unmarked.is_empty(),
        "these tests check for root in their body but are not marked {MARK}: {unmarked:#?}"
    );
}

#[test]
fn the_scan_finds_an_unmarked_root_test() {
    // The checks spelt out here would flag this very test.
    let text = "#[test]\nfn a() {\n    if !rein_tests::CHECK\"a\") {\n        return;\n    }\n}\n\
                #[test]\n#[ignore = \"needs root\"]\nfn b() {\n    if CHECK {}\n}\n\
                mod m {\n    #[test]\n    fn c() {\n        let _ = 1;\n    }\n}\n"
        .replace("CHECK", ROOT_CHECKS[0]);
    let tests = tests_of(&text);
    let names: Vec<&str> = tests.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(tests[0].2.contains(ROOT_CHECKS[0]));
    assert!(tests[1].1.iter().any(|a| a == MARK));
    assert!(!tests[2].2.contains(ROOT_CHECKS[0]));
}
