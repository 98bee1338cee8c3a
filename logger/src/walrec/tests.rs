use super::*;

#[test]
fn roundtrip() {
    let r = WalRecord {
        stream: Stream::Stderr,
        ts_ms: -5,
        id: b"abc-e-1",
        container: b"root.child",
        route: b"",
        doc: b"{\"a\":1}",
    };
    let mut out = Vec::new();
    r.encode_into(&mut out);
    assert_eq!(WalRecord::decode(&out), Some(r));
    assert_eq!(WalRecord::decode(&out[..5]), None);
}
