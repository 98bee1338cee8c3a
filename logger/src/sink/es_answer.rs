//! The answer of Elasticsearch to a `_bulk` request, classified: per item
//! stored, duplicate, to resend, refused by its index, or refused for good;
//! or the request as a whole to resend or refuse. An answer that is no
//! answer to the request (not JSON, items missing or extra) stores nothing.

use std::collections::HashMap;

use serde::Deserialize;

/// What became of one item of a `_bulk` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Stored (200/201).
    Stored,
    /// Already stored under the same id (409 on `create`): a resend.
    Duplicate,
    /// Resend later (429, 5xx).
    Retry(u16),
    /// The target index refuses it (a write block, a missing or closed index,
    /// no permission...): up to the route policy.
    RouteRefused(u16, String),
    /// The document itself can never be stored (mapping or parse error, too
    /// large): to the dead-letter file with this reason.
    Dead(u16, String),
}

/// What to do with a `_bulk` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Per-item results, in request order.
    Items(Vec<ItemOutcome>),
    /// The request failed as a whole and is resent (reason for the log).
    RetryAll(u16, String),
    /// The request was refused as a whole for good (a 4xx such as 400).
    DeadAll(u16, String),
    /// A success status with a body that is no answer to the request (not
    /// JSON, items missing or extra): nothing is known stored, resend all.
    Unusable(u16, String),
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

fn short(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Classifies a `_bulk` response to a request of `n` items.
pub fn classify(status: u16, body: &[u8], n: usize) -> Outcome {
    match status {
        200..=299 => {}
        // 401/403: credentials or permissions; 404: wrong URL; 408/413/429/5xx: transient
        // or too large. None of these is the records' fault: keep them.
        401 | 403 | 404 | 408 | 413 | 429 | 500..=599 => {
            return Outcome::RetryAll(status, short(body));
        }
        _ => return Outcome::DeadAll(status, short(body)),
    }
    let resp: BulkResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Outcome::Unusable(status, format!("unreadable _bulk response: {e}")),
    };
    if resp.items.len() != n {
        return Outcome::Unusable(
            status,
            format!("{} items in the response for {n} sent", resp.items.len()),
        );
    }
    // Each item is `{"<action>": {...}}`: one result per record sent.
    if let Some(i) = resp.items.iter().position(|m| m.len() != 1) {
        return Outcome::Unusable(
            status,
            format!(
                "item {i} of the response has {} results",
                resp.items[i].len()
            ),
        );
    }
    if !resp.errors
        && resp
            .items
            .iter()
            .all(|i| i.values().all(|v| v.status < 300))
    {
        return Outcome::Items(vec![ItemOutcome::Stored; n]);
    }
    let items = resp
        .items
        .into_iter()
        .map(|m| {
            let Some(item) = m.into_values().next() else {
                return ItemOutcome::Retry(0);
            };
            let etype = item
                .error
                .as_ref()
                .and_then(|e| e.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string();
            let reason = |e: Option<serde_json::Value>, s: u16| {
                e.map(|e| e.to_string())
                    .unwrap_or_else(|| format!("status {s}"))
            };
            match item.status {
                200..=299 => ItemOutcome::Stored,
                409 if etype == "version_conflict_engine_exception" => ItemOutcome::Duplicate,
                429 | 500..=599 => ItemOutcome::Retry(item.status),
                // The document's own fault: the same answer from any index.
                s @ (400 | 409 | 413)
                    if !etype.starts_with("index_") && etype != "invalid_index_name_exception" =>
                {
                    ItemOutcome::Dead(s, reason(item.error, s))
                }
                // The index's: a write block (which a flood-stage watermark lifts by
                // itself, or an operator's block never does), missing, closed, forbidden.
                s => ItemOutcome::RouteRefused(s, reason(item.error, s)),
            }
        })
        .collect();
    Outcome::Items(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies as returned by Elasticsearch 8 / the ES-compatible test servers.
    const MIXED: &str = r#"{"errors":true,"took":3,"items":[
      {"create":{"_index":"logs","_id":"a","_version":1,"result":"created","status":201}},
      {"create":{"_index":"logs","_id":"b","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[b]: version conflict, document already exists (current version [1])","index":"logs"}}},
      {"create":{"_index":"logs","_id":"c","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=0]"}}},
      {"create":{"_index":"logs","_id":"d","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [pct] of type [long] in document with id 'd'. Preview of field's value: 'x'","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"x\""}}}},
      {"create":{"_index":"logs","_id":"e","status":503,"error":{"type":"unavailable_shards_exception","reason":"[logs][0] primary shard is not active Timeout: [1m]"}}},
      {"create":{"_index":"logs","_id":"f","status":403,"error":{"type":"cluster_block_exception","reason":"index [logs] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}},
      {"create":{"_index":"logs","_id":"g","status":404,"error":{"type":"index_not_found_exception","reason":"no such index [logs] and [action.auto_create_index] is [false]"}}}
    ]}"#;

    #[test]
    fn classifies_real_bodies() {
        let Outcome::Items(items) = classify(200, MIXED.as_bytes(), 7) else {
            panic!()
        };
        assert_eq!(items[0], ItemOutcome::Stored);
        assert_eq!(items[1], ItemOutcome::Duplicate);
        assert_eq!(items[2], ItemOutcome::Retry(429));
        assert!(
            matches!(&items[3], ItemOutcome::Dead(400, r) if r.contains("mapper_parsing_exception"))
        );
        assert_eq!(items[4], ItemOutcome::Retry(503));
        assert!(
            matches!(&items[5], ItemOutcome::RouteRefused(403, r) if r.contains("cluster_block_exception"))
        );
        assert!(matches!(&items[6], ItemOutcome::RouteRefused(404, _)));
        let ok = r#"{"errors":false,"items":[{"create":{"status":201}},{"index":{"status":200}}]}"#;
        assert_eq!(
            classify(200, ok.as_bytes(), 2),
            Outcome::Items(vec![ItemOutcome::Stored; 2])
        );
        // Whole-request failures.
        let rejected = r#"{"error":{"root_cause":[{"type":"es_rejected_execution_exception","reason":"rejected execution"}],"type":"es_rejected_execution_exception","reason":"rejected execution"},"status":429}"#;
        assert!(matches!(
            classify(429, rejected.as_bytes(), 2),
            Outcome::RetryAll(429, _)
        ));
        assert!(matches!(classify(503, b"", 2), Outcome::RetryAll(503, _)));
        assert!(matches!(classify(413, b"", 2), Outcome::RetryAll(413, _)));
        assert!(matches!(classify(401, b"", 2), Outcome::RetryAll(401, _)));
        let bad = r#"{"error":{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"},"status":400}"#;
        assert!(matches!(
            classify(400, bad.as_bytes(), 2),
            Outcome::DeadAll(400, _)
        ));
        // A truncated or mismatched response never loses items.
        for bad in [
            &b"{\"errors\":fal"[..],
            b"\x00\xff garbage",
            b"",
            b"{\"errors\":false}",
            br#"{"errors":false,"items":[{},{}]}"#,
            br#"{"errors":false,"items":[{"create":{"status":201},"index":{"status":201}},{"create":{"status":201}}]}"#,
        ] {
            assert!(
                matches!(classify(200, bad, 2), Outcome::Unusable(200, _)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            classify(200, ok.as_bytes(), 3),
            Outcome::Unusable(..)
        ));
    }
}
