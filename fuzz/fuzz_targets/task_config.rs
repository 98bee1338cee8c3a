//! Fuzzes the per-task configuration parser: labels and prefixed variables built
//! from arbitrary bytes, biased towards our namespace so real keys are hit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rein_core::config::{parse_value, TaskConfig};
use rein_core::schema::{self, Kind};
use rein_core::{ContainerId, ContainerSpec};

const KINDS: &[Kind] = &[
    Kind::Bandwidth,
    Kind::ByteRate,
    Kind::Bytes,
    Kind::Count,
    Kind::Duration,
    Kind::Bool,
    Kind::Text(64),
    Kind::PerDevice(&Kind::ByteRate),
];

fn pairs(text: &str) -> Vec<(String, String)> {
    let keys: Vec<&str> = schema::all_keys().map(|k| k.key).collect();
    text.split('\n')
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            // A leading digit picks a real key, so values reach every kind's parser.
            let key = match k.as_bytes().first() {
                Some(b @ b'0'..=b'9') => format!("rein.{}", keys[usize::from(b - b'0') % keys.len()]),
                _ => k.to_owned(),
            };
            (key, v.to_owned())
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (labels, rest) = text.split_once('\u{1}').unwrap_or((text, ""));
    let env: Vec<(String, String)> = pairs(rest)
        .into_iter()
        .map(|(k, v)| (k.replace("rein.", "REIN_").replace('.', "_").to_uppercase(), v))
        .collect();
    let spec = ContainerSpec {
        task_labels: pairs(labels),
        environment: env,
        ..ContainerSpec::default()
    };
    match TaskConfig::parse(&spec) {
        Ok(config) => {
            // Everything accepted is in our schema, with its value as written.
            for (key, setting) in schema::all_keys().filter_map(|k| config.get(k.key).map(|s| (k.key, s))) {
                assert!(schema::lookup(key).is_some());
                assert!(!setting.raw.is_empty() || matches!(setting.value, rein_core::config::Value::Text(_)));
            }
        }
        Err(err) => {
            // Errors always name where the value came from.
            let message = err.to_string();
            assert!(message.contains("label '") || message.contains("variable '"), "{message}");
        }
    }
    for kind in KINDS {
        let _ = parse_value(*kind, labels);
    }
    if let Some(id) = ContainerId::from_file_name(labels) {
        assert_eq!(ContainerId::from_file_name(&id.file_name()), Some(id));
    }
});
