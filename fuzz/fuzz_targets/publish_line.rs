//! Fuzz target `publish_line`: one publish-socket line -> `line::parse_line` -> the store.
//!
//! Invariants checked for every input:
//! - `parse_line` never panics; an error text makes a well-formed JSON error line, and a line
//!   that is strict JSON is never refused as invalid JSON;
//! - a `Publish` comes from valid UTF-8 holding a JSON object, has 1 or more valid, distinct
//!   channels and a `data` taken verbatim from the line that is strict JSON (serde_json parses
//!   it into a `Value`: escapes decode, numbers fit) nested at most `line::MAX_DEPTH` levels;
//! - publishing it into a fresh store gives seq 1 on the store's epoch, and the message encodes,
//!   under each of its channels, to one JSON object whose `id`, `channel`, `type` and `data` are
//!   the ones published (`data` equal as a JSON value);
//! - the ack line is one JSON object with the message's id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pnsd::cursor;
use pnsd::line::{self, Request};
use pnsd::query::valid_channel;
use pnsd::store::Store;
use serde::Deserialize as _;
use serde_json::Value;

/// Epoch of the store each accepted line is published into.
const EPOCH: u64 = 0x1234_5678_9abc;

fuzz_target!(|line: &[u8]| {
    let req = match line::parse_line(line) {
        Ok(r) => r,
        Err(e) => {
            let mut out = Vec::new();
            line::error_line(&mut out, &e);
            let v: Value = serde_json::from_slice(&out).expect("error line is JSON");
            assert_eq!(v["ok"], Value::Bool(false));
            assert_eq!(out.last(), Some(&b'\n'));
            if e.starts_with("invalid JSON") {
                assert!(strict(line).is_err(), "strict JSON refused: {e}");
            }
            return;
        }
    };
    let text = std::str::from_utf8(line).expect("accepted line is UTF-8");
    assert!(text.trim_start().starts_with('{'));
    let Request::Publish(p) = req else {
        return; // Stats
    };
    let (channels, kind, data) = (p.channels, p.kind, p.data);
    assert!(!channels.is_empty());
    for (i, c) in channels.iter().enumerate() {
        assert!(valid_channel(c), "{c:?}");
        assert!(!channels[..i].contains(c), "repeat {c:?}");
    }
    assert!(text.contains(&*data), "data is not the publisher's text");
    assert!(depth(&data) <= line::MAX_DEPTH, "data nested too deep: {data}");
    let data_value = match strict(data.as_bytes()) {
        Ok(v) => v,
        Err(e) => panic!("data is not strict JSON ({e}): {data}"),
    };

    let mut store = Store::new(EPOCH, 4, 1000);
    let msg = store.publish(channels.clone(), kind, &data, 0);
    assert_eq!(msg.seq, 1);
    let id = cursor::encode(EPOCH, msg.seq);
    for c in channels.iter() {
        let mut out = Vec::new();
        msg.encode_into(&mut out, c);
        let v = match strict(&out) {
            Ok(v) => v,
            Err(e) => panic!(
                "message is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(v["id"].as_str(), Some(id.as_str()));
        assert_eq!(v["channel"].as_str(), Some(&**c));
        assert_eq!(v.get("type").and_then(Value::as_i64), kind);
        assert_eq!(v.get("type").is_some(), kind.is_some());
        assert_eq!(v["data"], data_value);
    }
    let found = store.read(&channels, 0, 0, 10);
    assert_eq!(found.messages.len(), 1);
    let mut ack = Vec::new();
    line::ack_line(&mut ack, &id);
    let v: Value = serde_json::from_slice(&ack).expect("ack is JSON");
    assert_eq!(v["id"].as_str(), Some(id.as_str()));
});

/// The deepest nesting of brackets in `json`, a well-formed JSON text (strings skipped).
fn depth(json: &str) -> usize {
    let (mut deepest, mut now, mut in_string, mut escaped) = (0, 0usize, false, false);
    for b in json.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                now += 1;
                deepest = deepest.max(now);
            }
            (false, _, b']' | b'}') => now = now.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// serde_json's strict parse (escapes decoded, numbers in range) without its depth limit, so
/// the oracle parses whatever it is given; pnsd's own limit is checked by `depth`.
fn strict(text: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}
