//! One entry of the fleet's log and how it is read back from a stream reply.
//!
//! An entry's stream id is `<seq>-0`; its fields are `c` (channels, comma separated), `m` (the
//! publish time, Redis clock ms), `t` (the type, only when the publisher gave one) and `d` (the
//! publisher's JSON, verbatim). Field names are one byte because Redis stores them with every
//! entry whose field set differs from its node's master entry.
//!
//! Invariants: `parse_entries` returns the entries in the reply's order (stream order); an
//! entry that is not of this shape is returned as `Err` with its seq when the id still names
//! one, so a reader can tell a foreign entry from a missing one.

use redis::Value;

/// One publish as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The global position: the stream id is `<seq>-0`.
    pub seq: u64,
    /// The publish request's channels, in its order, without repeats.
    pub channels: Box<[Box<str>]>,
    pub kind: Option<i64>,
    /// The publisher's JSON text.
    pub data: Box<str>,
    /// When Redis appended it (Redis `TIME`, ms since the Unix epoch): every node sees the same
    /// value, so a message expires at the same moment on every node.
    pub time_ms: u64,
}

/// An entry that is not of pnsd's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// The seq its id names, when it names one.
    pub seq: Option<u64>,
    pub reason: &'static str,
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// The seq of a stream id `<seq>-0`.
pub fn seq_of_id(id: &str) -> Option<u64> {
    let (ms, n) = id.split_once('-')?;
    if n != "0" {
        return None;
    }
    ms.parse().ok()
}

fn parse_one(item: &Value) -> Result<Entry, BadEntry> {
    let bad = |seq, reason| BadEntry { seq, reason };
    let Value::Array(pair) = item else {
        return Err(bad(None, "not an [id, fields] pair"));
    };
    let (Some(id), Some(Value::Array(fields))) = (pair.first().and_then(text), pair.get(1)) else {
        return Err(bad(None, "not an [id, fields] pair"));
    };
    let seq = seq_of_id(id).ok_or(bad(None, "id is not <seq>-0"))?;
    let (mut channels, mut time_ms, mut kind, mut data) = (None, None, None, None);
    for kv in fields.chunks(2) {
        let (Some(k), Some(v)) = (kv.first().and_then(text), kv.get(1).and_then(text)) else {
            return Err(bad(Some(seq), "a field is not text"));
        };
        match k {
            "c" => channels = Some(v),
            "m" => time_ms = Some(v.parse().map_err(|_| bad(Some(seq), "m is not ms"))?),
            "t" => {
                kind = Some(
                    v.parse()
                        .map_err(|_| bad(Some(seq), "t is not an integer"))?,
                )
            }
            "d" => data = Some(v),
            _ => {}
        }
    }
    let (Some(c), Some(time_ms), Some(d)) = (channels, time_ms, data) else {
        return Err(bad(Some(seq), "c, m or d missing"));
    };
    let channels: Box<[Box<str>]> = c
        .split(',')
        .filter(|s| !s.is_empty())
        .map(Box::from)
        .collect();
    if channels.is_empty() {
        return Err(bad(Some(seq), "no channel"));
    }
    Ok(Entry {
        seq,
        channels,
        kind,
        data: d.into(),
        time_ms,
    })
}

/// The entries of an `XRANGE` reply, or of one stream of an `XREAD` reply.
pub fn parse_entries(items: &Value) -> Vec<Result<Entry, BadEntry>> {
    match items {
        Value::Array(list) => list.iter().map(parse_one).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREAD` reply for a single stream; `Nil` (the block timed out) is none.
pub fn parse_xread(reply: &Value) -> Result<Vec<Result<Entry, BadEntry>>, &'static str> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some(Value::Array(s)) => Ok(s.get(1).map(parse_entries).unwrap_or_default()),
            Some(_) => Err("XREAD reply is not [[stream, entries]]"),
        },
        Value::Map(streams) => Ok(streams
            .first()
            .map(|(_, e)| parse_entries(e))
            .unwrap_or_default()),
        _ => Err("XREAD reply is not an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn item(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn parses_xread_in_order() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("p:log"),
            Value::Array(vec![
                item(
                    "7-0",
                    &["c", "a,b", "m", "1000", "t", "-3", "d", "{\"x\":1}"],
                ),
                item("8-0", &["c", "a", "m", "1001", "d", "\"s\""]),
                item("9-1", &["c", "a", "m", "1", "d", "1"]),
                item("10-0", &["c", "a", "d", "1"]),
            ]),
        ])]);
        let got = parse_xread(&reply).unwrap();
        assert_eq!(
            got[0],
            Ok(Entry {
                seq: 7,
                channels: vec!["a".into(), "b".into()].into(),
                kind: Some(-3),
                data: "{\"x\":1}".into(),
                time_ms: 1000
            })
        );
        assert_eq!(got[1].as_ref().map(|e| (e.seq, e.kind)), Ok((8, None)));
        assert_eq!(got[2].as_ref().map_err(|b| b.seq), Err(None));
        assert_eq!(got[3].as_ref().map_err(|b| b.seq), Err(Some(10)));
        assert!(parse_xread(&Value::Nil).unwrap().is_empty());
        assert!(parse_xread(&Value::Int(1)).is_err());
    }

    #[test]
    fn ids() {
        assert_eq!(seq_of_id("12-0"), Some(12));
        assert_eq!(seq_of_id("12-1"), None);
        assert_eq!(seq_of_id("x-0"), None);
        assert_eq!(seq_of_id("12"), None);
    }
}
