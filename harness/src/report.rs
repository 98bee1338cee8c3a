//! What the harness prints: status and statistics of a container, for people or as JSON.

use rein_modules::{StatisticsView, StatusView};
use serde_json::{json, Value};

/// JSON form of the per-isolator status and statistics.
pub fn to_json(
    id: &str,
    pid: i32,
    status: &[(String, StatusView)],
    usage: &[(String, StatisticsView)],
    errors: &[String],
) -> Value {
    let status: Vec<Value> = status
        .iter()
        .map(|(kind, s)| {
            json!({
                "isolator": kind,
                "net_cls_classid": s.has_net_cls_classid.then_some(s.net_cls_classid),
            })
        })
        .collect();
    let usage: Vec<Value> = usage
        .iter()
        .map(|(kind, s)| {
            json!({
                "isolator": kind,
                "net_tx": s.has_net_tx.then(|| json!({
                    "bytes": s.net_tx_bytes, "packets": s.net_tx_packets, "dropped": s.net_tx_dropped,
                    "rate_limit_bytes_per_s": s.net_tx_rate_limit,
                    "burst_rate_limit_bytes_per_s": s.net_tx_burst_rate_limit,
                    "burst_size_bytes": s.net_tx_burst_size,
                })),
                "disk_used_bytes": s.has_disk_used.then_some(s.disk_used_bytes),
                "disk_limit_bytes": s.has_disk_limit.then_some(s.disk_limit_bytes),
                "blkio": s.blkio.iter().map(|d| json!({
                    "device": format!("{}:{}", d.major, d.minor),
                    "read_bytes": d.read_bytes, "write_bytes": d.write_bytes,
                    "read_ops": d.read_ops, "write_ops": d.write_ops,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "container": id, "pid": pid, "status": status, "usage": usage, "errors": errors })
}

/// Human form: one line per fact that is set.
pub fn to_text(
    status: &[(String, StatusView)],
    usage: &[(String, StatisticsView)],
    errors: &[String],
) -> String {
    let mut out = String::new();
    for (kind, s) in status {
        if s.has_net_cls_classid {
            out.push_str(&format!(
                "  {kind}: net_cls classid {:#x} ({:x}:{:x})\n",
                s.net_cls_classid,
                s.net_cls_classid >> 16,
                s.net_cls_classid & 0xffff
            ));
        }
    }
    for (kind, s) in usage {
        if s.has_net_tx {
            out.push_str(&format!(
                "  {kind}: net_tx {} bytes, {} packets, {} dropped; rate {} B/s, ceil {} B/s, burst {} B\n",
                s.net_tx_bytes,
                s.net_tx_packets,
                s.net_tx_dropped,
                s.net_tx_rate_limit,
                s.net_tx_burst_rate_limit,
                s.net_tx_burst_size
            ));
        }
        if s.has_disk_used || s.has_disk_limit {
            out.push_str(&format!(
                "  {kind}: disk used {} bytes, limit {}\n",
                s.disk_used_bytes,
                if s.has_disk_limit {
                    format!("{} bytes", s.disk_limit_bytes)
                } else {
                    "none".into()
                }
            ));
        }
        for d in &s.blkio {
            out.push_str(&format!(
                "  {kind}: device {}:{} read {} B / {} ops, written {} B / {} ops\n",
                d.major, d.minor, d.read_bytes, d.read_ops, d.write_bytes, d.write_ops
            ));
        }
    }
    for e in errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}
