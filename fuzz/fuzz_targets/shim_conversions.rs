//! Fuzzes the conversions the C++ shim relies on: every field it copies out of a
//! Mesos protobuf arrives as arbitrary bytes (Mesos does not check UTF-8), and
//! decoding must never panic; it either succeeds with our settings exact and the
//! rest carried, or fails naming the field.
//!
//! Input: fields separated by 0x00 (container id segments, split by 0x01; sandbox
//! directory; user; task id; task name; executor id; framework id), then pairs
//! (first byte picks task label, executor label or variable; key and value split
//! by 0x01; a leading digit in the key picks a real key of our schema).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rein_core::container::{
    exact_pair, shown, utf8_problem, ContainerId, RawContainerConfig, ResourceEntry,
};
use rein_core::schema::{self, ENV_PREFIX, LABEL_PREFIX};

/// Field names a refusal may start with.
const FIELDS: &[&str] = &[
    "container id: ",
    "sandbox directory: ",
    "user: ",
    "task label '",
    "executor label '",
    "variable '",
];

fn split(bytes: &[u8], sep: u8) -> Vec<Vec<u8>> {
    bytes.split(|b| *b == sep).map(<[u8]>::to_vec).collect()
}

fn real_key(key: Vec<u8>, env: bool) -> Vec<u8> {
    let keys: Vec<&str> = schema::all_keys().map(|k| k.key).collect();
    match key.first() {
        Some(b @ b'0'..=b'9') => {
            let k = keys[usize::from(b - b'0') % keys.len()];
            let mut out = if env {
                format!("{ENV_PREFIX}{}", k.replace('.', "_").to_uppercase()).into_bytes()
            } else {
                format!("{LABEL_PREFIX}{k}").into_bytes()
            };
            out.extend_from_slice(&key[1..]);
            out
        }
        _ => key,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut fields = split(data, 0).into_iter();
    let mut next = || fields.next().unwrap_or_default();
    let mut raw = RawContainerConfig {
        container: split(&next(), 1),
        directory: next(),
        user: next(),
        task_id: next(),
        task_name: next(),
        executor_id: next(),
        framework_id: next(),
        ..RawContainerConfig::default()
    };
    for pair in fields {
        let Some((&which, rest)) = pair.split_first() else {
            continue;
        };
        let mut kv = rest.splitn(2, |b| *b == 1);
        let key = kv.next().unwrap_or_default().to_vec();
        let value = kv.next().unwrap_or_default().to_vec();
        match which % 4 {
            0 => raw.task_labels.push((real_key(key, false), value)),
            1 => raw.executor_labels.push((real_key(key, false), value)),
            2 => raw.environment.push((real_key(key, true), value)),
            _ => raw
                .resources
                .push(ResourceEntry::from_bytes(key, 1.0, value.is_empty())),
        }
    }
    let input = raw.clone();
    match raw.decode() {
        Ok(decoded) => {
            let spec = &decoded.spec;
            // Exact fields are exact.
            let chain: Vec<Vec<u8>> = spec
                .id
                .chain()
                .iter()
                .map(|s| s.clone().into_bytes())
                .collect();
            assert_eq!(chain, input.container);
            assert_eq!(
                spec.sandbox.as_os_str().as_encoded_bytes(),
                &input.directory[..]
            );
            assert_eq!(
                spec.user.clone().unwrap_or_default().into_bytes(),
                input.user
            );
            // Our labels are exact; others are carried (lossily) in order.
            for ((key, value), (raw_key, raw_value)) in
                spec.task_labels.iter().zip(&input.task_labels)
            {
                if raw_key.starts_with(LABEL_PREFIX.as_bytes()) {
                    assert_eq!(
                        (key.as_bytes(), value.as_bytes()),
                        (&raw_key[..], &raw_value[..])
                    );
                } else {
                    assert_eq!(*key, String::from_utf8_lossy(raw_key));
                    assert_eq!(*value, String::from_utf8_lossy(raw_value));
                }
            }
            assert_eq!(spec.task_labels.len(), input.task_labels.len());
            assert_eq!(spec.executor_labels.len(), input.executor_labels.len());
            assert!(spec
                .environment
                .iter()
                .all(|(k, _)| k.starts_with(ENV_PREFIX)));
            // Whatever was altered is reported.
            let lossy_input = [
                &input.task_id,
                &input.task_name,
                &input.executor_id,
                &input.framework_id,
            ]
            .into_iter()
            .any(|f| utf8_problem(f).is_some())
                || input
                    .task_labels
                    .iter()
                    .chain(&input.executor_labels)
                    .any(|(k, v)| utf8_problem(k).is_some() || utf8_problem(v).is_some());
            assert_eq!(
                lossy_input,
                !decoded.altered.is_empty(),
                "{:?}",
                decoded.altered
            );
            assert_eq!(
                ContainerId::from_file_name(&spec.id.file_name()).as_ref(),
                Some(&spec.id)
            );
        }
        Err(err) => {
            let message = err.to_string();
            assert!(FIELDS.iter().any(|f| message.starts_with(f)), "{message}");
            assert!(!message.chars().any(|c| c.is_control()), "{message:?}");
        }
    }
    // Module parameters: exact, or refused naming the parameter.
    let key = input.user.clone();
    match exact_pair("module parameter", key.clone(), input.task_name.clone()) {
        Ok((k, v)) => assert_eq!((k.into_bytes(), v.into_bytes()), (key, input.task_name)),
        Err(err) => assert!(err.to_string().starts_with("module parameter '"), "{err}"),
    }
    let text = shown(data);
    assert!(!text.chars().any(|c| c.is_control()));
    // At most 128 characters or bytes shown, each escaped to at most 10 characters.
    assert!(text.chars().count() <= 128 * 10 + 1);
});
