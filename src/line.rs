//! The publish socket's line protocol (PROTOCOL.md section 5), without I/O: framing a byte
//! stream into lines, parsing one line into a `Request`, rendering the ack and error lines.
//! (The stats line's figures and rendering live in `stats`.)
//!
//! Invariants:
//! - `parse_line` never panics and never recurses on its input: every scan of the line is a
//!   loop, so nesting depth costs no stack.
//! - A `Publish` it returns has 1 or more valid channel names, repeats removed in linear time
//!   with the publisher's order kept; `data` is the publisher's JSON text verbatim, strict
//!   (strings decode, numbers fit an f64) and nested at most `MAX_DEPTH` levels.
//! - The line's top-level object names each key at most once (a repeat is refused, naming it).
//! - Every line gets exactly one answer line; an error's text is the whole reason, fit for a
//!   script to print.
//!
//! Ops: a publish (no `op`, or `publish`), `stats`, `session` and `end_session` (see
//! `session`). A new op is a `Request` variant and one arm of `request_for_op`, which
//! receives every top-level field of the line.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde_json::value::RawValue;

use crate::ingest::Publish;
use crate::query::{valid_channel, MAX_CHANNELS};
use crate::response::json_string;
use crate::session;

/// Contract: a line over 65,536 bytes (excluding its newline) is an error.
pub const MAX_LINE: usize = 65_536;
/// Deepest nesting of `data` accepted: serde_json's default recursion limit, the strictest
/// common parser a subscriber may use (Python's `json` stops near 1,000).
pub const MAX_DEPTH: usize = 128;
/// Up to this many channels, repeats are found by comparing with the ones kept (no hashing,
/// no allocation); above it, with a hash set, so a wide publish stays linear.
const LINEAR_DEDUP: usize = 16;

/// One line's meaning.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Append one message (also the meaning of a line without `op`).
    Publish(Publish),
    /// Answer the stats line.
    Stats,
    /// Hand the server over to the binary at its path (see `upgrade`): answered
    /// `upgrade_line` by the new process, or an error line by this one.
    Upgrade,
    /// Register (or replace) a session: `{"op":"session","sid":S,"channels":[...],"ttl":SECS}`.
    Session {
        sid: String,
        channels: Box<[Box<str>]>,
        ttl_secs: u64,
    },
    /// End a session: `{"op":"end_session","sid":S}`.
    EndSession { sid: String },
}

/// One step of `Framer::next`.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete, non-blank line without its LF or CRLF, at most `MAX_LINE` bytes.
    Line(&'a [u8]),
    /// A line over `MAX_LINE` bytes was skipped: answer it with `too_long_error`.
    TooLong,
}

/// Splits one publisher's byte stream into lines. Blank lines are skipped; a line over
/// `MAX_LINE` is one `TooLong`, however much of it arrives, and only its first bytes are kept.
#[derive(Debug, Default)]
pub struct Framer {
    /// Inside a line that is too long: drop bytes until its newline.
    discarding: bool,
}

impl Framer {
    /// A framer continuing another's work: `discarding` when that one was inside an overlong
    /// line (an upgrade carries it, see `state::PublisherImage`).
    pub fn resuming(discarding: bool) -> Framer {
        Framer { discarding }
    }

    /// Inside an overlong line: bytes up to its newline are dropped.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// The next line of `input[*start..]`, advancing `*start` past it; `None` when no
    /// complete line is left.
    pub fn next<'a>(&mut self, input: &'a [u8], start: &mut usize) -> Option<Frame<'a>> {
        loop {
            let rest = input.get(*start..)?;
            let nl = rest.iter().position(|&b| b == b'\n')?;
            *start += nl + 1;
            let raw = &rest[..nl];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if std::mem::take(&mut self.discarding) || line.len() > MAX_LINE {
                return Some(Frame::TooLong);
            }
            if !line.iter().all(|b| b.is_ascii_whitespace()) {
                return Some(Frame::Line(line));
            }
        }
    }

    /// Called with the unterminated rest of the input once every complete line was taken:
    /// a rest already too long to become a valid line is dropped and its line will be one
    /// `TooLong`, so a publisher's held input stays under `MAX_LINE` + one read.
    pub fn keep_tail(&mut self, tail: &mut Vec<u8>) {
        // The +1 leaves room for a CR before the newline.
        if self.discarding || tail.len() > MAX_LINE + 1 {
            self.discarding = true;
            tail.clear();
        }
    }
}

/// The error text of a line over `MAX_LINE` bytes.
pub fn too_long_error() -> String {
    format!("line longer than {MAX_LINE} bytes")
}

/// The top-level fields of a line's object, each key once, values as raw JSON text.
pub struct Fields<'a> {
    map: HashMap<Cow<'a, str>, &'a str>,
}

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.map.get(key).copied()
    }
}

/// Interprets one line (without its line ending). Errors are the `error` text of the answer.
pub fn parse_line(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1))?;
    // Checks the whole line's syntax without building it (serde_json skips values with a loop).
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON at column {}", e.column()))?;
    let fields = object_fields(value.get())?;
    match fields.get("op") {
        None => publish_fields(&fields).map(Request::Publish),
        Some(op) => match serde_json::from_str::<Cow<str>>(op) {
            Ok(name) => request_for_op(&name, &fields),
            Err(_) => Err("op must be a string".into()),
        },
    }
}

/// The request an `op` names.
fn request_for_op(op: &str, fields: &Fields) -> Result<Request, String> {
    match op {
        "publish" => publish_fields(fields).map(Request::Publish),
        "stats" => Ok(Request::Stats),
        "upgrade" => Ok(Request::Upgrade),
        "session" => session_fields(fields),
        "end_session" => Ok(Request::EndSession {
            sid: sid_field(fields)?,
        }),
        _ => Err(format!("unknown op {}", quoted(op))),
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The members of `json`, a well-formed JSON value (as `RawValue` checked it), which must be
/// an object naming each key once.
fn object_fields(json: &str) -> Result<Fields<'_>, String> {
    let b = json.as_bytes();
    if b.first() != Some(&b'{') {
        return Err("a request must be a JSON object".into());
    }
    let mut map = HashMap::new();
    let mut i = skip_space(b, 1);
    while b.get(i) == Some(&b'"') {
        let key_end = string_end(b, i);
        let raw_key = json.get(i..key_end).unwrap_or_default();
        let key: Cow<str> = match raw_key.get(1..raw_key.len().saturating_sub(1)) {
            Some(k) if !k.contains('\\') => Cow::Borrowed(k),
            _ => Cow::Owned(
                serde_json::from_str::<String>(raw_key)
                    .map_err(|e| format!("invalid JSON in a key: {e}"))?,
            ),
        };
        // Past the colon to the value, then past the value to the comma or the brace.
        let start = skip_space(b, skip_space(b, key_end) + 1);
        let end = value_end(b, start);
        let value = json.get(start..end).unwrap_or_default().trim_end();
        if map.contains_key(&key) {
            return Err(format!("duplicate key {}", quoted(&key)));
        }
        map.insert(key, value);
        i = skip_space(b, end);
        if b.get(i) == Some(&b',') {
            i = skip_space(b, i + 1);
        }
    }
    Ok(Fields { map })
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Index just past the string starting with the quote at `b[i]`.
fn string_end(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while let Some(&c) = b.get(i) {
        if c == b'"' {
            return i + 1;
        }
        i += if c == b'\\' { 2 } else { 1 };
    }
    b.len()
}

/// Index just past the well-formed value starting at `b[i]` (before any following comma).
fn value_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                i = string_end(b, i);
                if depth == 0 {
                    return i;
                }
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth == 0 => return i,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

/// The `channel` or `channels` field, validated, repeats removed.
fn channel_fields(fields: &Fields) -> Result<Box<[Box<str>]>, String> {
    let names: Vec<String> = match (fields.get("channel"), fields.get("channels")) {
        (Some(_), Some(_)) => return Err("give channel or channels, not both".into()),
        (None, None) => return Err("channel or channels is required".into()),
        (Some(c), None) => vec![serde_json::from_str::<String>(c)
            .map_err(|_| "channel must be a string".to_string())?],
        (None, Some(cs)) => {
            let v = serde_json::from_str::<Vec<String>>(cs)
                .map_err(|_| "channels must be an array of strings".to_string())?;
            if v.is_empty() {
                return Err("channels must not be empty".into());
            }
            v
        }
    };
    if let Some(bad) = names.iter().find(|c| !valid_channel(c)) {
        return Err(format!(
            "invalid channel name {} (1-128 bytes of A-Z a-z 0-9 _ . : @ -)",
            quoted(bad)
        ));
    }
    Ok(without_repeats(names))
}

/// The `sid` field: a string of 1-128 bytes of `[A-Za-z0-9_-]`.
fn sid_field(fields: &Fields) -> Result<String, String> {
    let raw = fields.get("sid").ok_or("sid is required")?;
    let sid = serde_json::from_str::<String>(raw).map_err(|_| "sid must be a string")?;
    if !session::valid_sid(&sid) {
        return Err(format!(
            "invalid sid {} (1-{} bytes of A-Z a-z 0-9 _ -)",
            quoted(&sid),
            session::MAX_SID_LEN
        ));
    }
    Ok(sid)
}

fn session_fields(fields: &Fields) -> Result<Request, String> {
    let sid = sid_field(fields)?;
    let channels = channel_fields(fields)?;
    if channels.len() > MAX_CHANNELS {
        return Err(format!(
            "a session may name at most {MAX_CHANNELS} channels, like a poll"
        ));
    }
    let ttl_secs = fields
        .get("ttl")
        .ok_or("ttl is required")?
        .parse::<u64>()
        .ok()
        .filter(|t| (1..=session::MAX_TTL_SECS).contains(t))
        .ok_or_else(|| {
            format!(
                "ttl must be an integer number of seconds from 1 to {}",
                session::MAX_TTL_SECS
            )
        })?;
    Ok(Request::Session {
        sid,
        channels,
        ttl_secs,
    })
}

fn publish_fields(fields: &Fields) -> Result<Publish, String> {
    let channels = channel_fields(fields)?;
    let data = fields.get("data").ok_or("data is required")?;
    strict_json(data)?;
    let kind = match fields.get("type") {
        None => None,
        Some(t) => Some(parse_type(t).ok_or("type must be an integer")?),
    };
    let key = match fields.get("key") {
        None => None,
        Some(k) => Some(idempotency_key(k)?),
    };
    Ok(Publish {
        channels,
        kind,
        data: data.into(),
        key,
    })
}

/// Longest idempotency key, in bytes: room for a UUID or a hash with a prefix, and a bound on
/// what Redis remembers per key.
pub const MAX_KEY: usize = 128;

/// The `key` field: a string of 1-`MAX_KEY` bytes (any text; Redis keys are binary-safe).
fn idempotency_key(raw: &str) -> Result<Box<str>, String> {
    let k = serde_json::from_str::<String>(raw).map_err(|_| "key must be a string".to_string())?;
    if k.is_empty() || k.len() > MAX_KEY {
        return Err(format!("key must be 1-{MAX_KEY} bytes"));
    }
    Ok(k.into())
}

/// `names` with repeats removed, the first of each kept in place; linear in the count.
fn without_repeats(names: Vec<String>) -> Box<[Box<str>]> {
    let keep: Vec<bool> = if names.len() <= LINEAR_DEDUP {
        (0..names.len())
            .map(|i| !names[..i].contains(&names[i]))
            .collect()
    } else {
        let mut seen = HashSet::with_capacity(names.len());
        names.iter().map(|n| seen.insert(n.as_str())).collect()
    };
    names
        .into_iter()
        .zip(keep)
        .filter_map(|(n, k)| k.then(|| n.into_boxed_str()))
        .collect()
}

/// Checks what `RawValue` skips: every string of `data` decodes (no lone surrogate escape such
/// as `"\ud83d"`), every number fits an f64 (no `1e999`), and nesting stays within
/// `MAX_DEPTH`. `data` is forwarded verbatim, so without this one publish makes every answer
/// carrying it unparsable for strict JSON clients. `data` is already well-formed JSON; the scan
/// is a loop, so an attacker's nesting costs no stack.
fn strict_json(data: &str) -> Result<(), String> {
    let bad = |e: serde_json::Error| format!("invalid JSON in data: {e}");
    let b = data.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let start = i;
        match c {
            b'"' => {
                i = string_end(b, i);
                let token = data.get(start..i).unwrap_or_default();
                serde_json::from_str::<String>(token).map_err(bad)?;
            }
            b'-' | b'0'..=b'9' => {
                while b
                    .get(i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let token = data.get(start..i).unwrap_or_default();
                serde_json::from_str::<serde_json::Number>(token).map_err(bad)?;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("data nested deeper than {MAX_DEPTH} levels"));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// A JSON integer (no fraction or exponent) that fits i64.
fn parse_type(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The answer line of a successful publish.
pub fn ack_line(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"{\"ok\":true,\"id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// The answer line of a successful upgrade, written by the process that took over.
pub fn upgrade_line(out: &mut Vec<u8>, pid: u32, generation: u64) {
    out.extend_from_slice(
        format!("{{\"ok\":true,\"pid\":{pid},\"generation\":{generation}}}\n").as_bytes(),
    );
}

/// The answer line of a request that succeeded with nothing to report.
pub fn ok_line(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ok\":true}\n");
}

/// The answer line of a failed request.
pub fn error_line(out: &mut Vec<u8>, error: &str) {
    out.extend_from_slice(b"{\"ok\":false,\"error\":");
    json_string(out, error);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(line: &str) -> (Vec<String>, Option<i64>, String) {
        match parse_line(line.as_bytes()) {
            Ok(Request::Publish(p)) => (
                p.channels.iter().map(|c| c.to_string()).collect(),
                p.kind,
                p.data.to_string(),
            ),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &[u8]) -> String {
        match parse_line(line) {
            Err(e) => e,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn publishes() {
        assert_eq!(
            publish(r#"{"channel":"user:42","type":70,"data":{"subject":"hi"}}"#),
            (
                vec!["user:42".into()],
                Some(70),
                r#"{"subject":"hi"}"#.into()
            )
        );
        assert_eq!(
            publish(r#"{"channels":["a","b","a"],"data":1, "x":[1]}"#),
            (vec!["a".into(), "b".into()], None, "1".into())
        );
        assert_eq!(publish(r#"{"channel":"a","data":null}"#).2, "null");
        // Tokens are kept as sent.
        assert_eq!(
            publish(r#"{"channel":"a","data":{"b":1.50,"a":"\u00e9"}}"#).2,
            r#"{"b":1.50,"a":"\u00e9"}"#
        );
        assert_eq!(publish(r#"{"channel":"a","type":-3,"data":0}"#).1, Some(-3));
        assert_eq!(parse_line(br#"{"op":"stats"}"#), Ok(Request::Stats));
        assert_eq!(parse_line(br#"{"op":"upgrade"}"#), Ok(Request::Upgrade));
        assert_eq!(
            publish(r#"{"op":"publish","channel":"a","data":true}"#).2,
            "true"
        );
    }

    #[test]
    fn values_are_cut_exactly_whatever_their_kind_and_spacing() {
        for (data, want) in [
            (r#""s,}]\"x""#, r#""s,}]\"x""#),
            ("[1,[2,{\"a\":\"]\"}]] ", "[1,[2,{\"a\":\"]\"}]]"),
            ("-1.5e3", "-1.5e3"),
            ("false", "false"),
            ("{} ", "{}"),
        ] {
            let line = format!("{{ \"data\" : {data} , \"channel\" : \"a\" }}");
            assert_eq!(publish(&line).2, want, "{line}");
            let last = format!("{{\"channel\":\"a\",\"data\":{data}}}");
            assert_eq!(publish(&last).2, want, "{last}");
        }
        assert_eq!(
            publish(r#"{"x":{"channel":"nested"},"channel":"top","data":1}"#).0,
            vec!["top".to_string()]
        );
    }

    #[test]
    fn an_idempotency_key_is_a_short_string() {
        match parse_line(br#"{"channel":"a","data":1,"key":"order-7"}"#) {
            Ok(Request::Publish(p)) => assert_eq!(p.key.as_deref(), Some("order-7")),
            other => panic!("{other:?}"),
        }
        let long = format!(r#"{{"channel":"a","data":1,"key":"{}"}}"#, "k".repeat(129));
        assert!(error(long.as_bytes()).contains("1-128 bytes"));
        assert!(error(br#"{"channel":"a","data":1,"key":""}"#).contains("1-128 bytes"));
        assert!(error(br#"{"channel":"a","data":1,"key":7}"#).contains("key must be a string"));
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(error(b"not json"), "invalid JSON at column 2");
        assert!(error(b"[1]").contains("object"));
        assert!(error(br#"{"channel":"a"}"#).contains("data"));
        assert!(error(br#"{"data":1}"#).contains("required"));
        assert!(error(br#"{"channel":"a","channels":["b"],"data":1}"#).contains("not both"));
        assert!(error(br#"{"channels":[],"data":1}"#).contains("empty"));
        assert!(error(br#"{"channels":"a","data":1}"#).contains("array"));
        assert!(error(br#"{"channel":7,"data":1}"#).contains("string"));
        assert!(error(br#"{"channel":"a b","data":1}"#).contains("invalid channel"));
        assert!(error(br#"{"channel":"","data":1}"#).contains("invalid channel"));
        assert!(error(br#"{"channel":"a","type":1.5,"data":1}"#).contains("integer"));
        assert!(error(br#"{"channel":"a","type":"7","data":1}"#).contains("integer"));
        assert!(
            error(br#"{"channel":"a","type":99999999999999999999,"data":1}"#).contains("integer")
        );
        assert!(error(br#"{"op":"nope"}"#).contains("unknown op"));
        assert_eq!(
            parse_line(br#"{"op":"session","sid":"s-1_A","channels":["a","b","a"],"ttl":60}"#),
            Ok(Request::Session {
                sid: "s-1_A".into(),
                channels: vec![Box::from("a"), Box::from("b")].into(),
                ttl_secs: 60
            })
        );
        assert_eq!(
            parse_line(br#"{"op":"end_session","sid":"s"}"#),
            Ok(Request::EndSession { sid: "s".into() })
        );
        let many: Vec<String> = (0..17).map(|i| format!("\"c{i}\"")).collect();
        let wide = format!(
            r#"{{"op":"session","sid":"s","channels":[{}],"ttl":1}}"#,
            many.join(",")
        );
        for (line, want) in [
            (
                r#"{"op":"session","channels":["a"],"ttl":1}"#,
                "sid is required",
            ),
            (
                r#"{"op":"session","sid":"a.b","channels":["a"],"ttl":1}"#,
                "invalid sid",
            ),
            (
                r#"{"op":"session","sid":7,"channels":["a"],"ttl":1}"#,
                "sid must be a string",
            ),
            (
                r#"{"op":"session","sid":"s","ttl":1}"#,
                "channel or channels is required",
            ),
            (
                r#"{"op":"session","sid":"s","channels":["a b"],"ttl":1}"#,
                "invalid channel",
            ),
            (
                r#"{"op":"session","sid":"s","channels":["a"]}"#,
                "ttl is required",
            ),
            (
                r#"{"op":"session","sid":"s","channels":["a"],"ttl":0}"#,
                "ttl must be",
            ),
            (
                r#"{"op":"session","sid":"s","channels":["a"],"ttl":86401}"#,
                "ttl must be",
            ),
            (
                r#"{"op":"session","sid":"s","channels":["a"],"ttl":1.5}"#,
                "ttl must be",
            ),
            (&wide, "at most 16 channels"),
            (r#"{"op":"end_session"}"#, "sid is required"),
        ] {
            assert!(
                error(line.as_bytes()).contains(want),
                "{line}: {}",
                error(line.as_bytes())
            );
        }
        assert!(error(br#"{"op":5}"#).contains("op must be a string"));
        assert!(error(b"{\"channel\":\"a\",\"data\":\"\xff\"}").contains("UTF-8"));
    }

    #[test]
    fn duplicate_top_level_keys_are_refused_by_name() {
        for (line, key) in [
            (r#"{"channel":"a","channel":"b","data":1}"#, "channel"),
            (r#"{"channel":"a","data":1,"data":2}"#, "data"),
            (
                r#"{"channels":["a"],"channels":["b"],"data":1}"#,
                "channels",
            ),
            (r#"{"channel":"a","type":1,"data":1,"type":2}"#, "type"),
            (r#"{"op":"stats","op":"stats"}"#, "op"),
            (r#"{"channel":"a","data":1,"x":1,"x":2}"#, "x"),
            // The same key spelled with an escape is the same key.
            (r#"{"channel":"a","\u0063hannel":"b","data":1}"#, "channel"),
        ] {
            assert_eq!(
                error(line.as_bytes()),
                format!("duplicate key \"{key}\""),
                "{line}"
            );
        }
        // Repeats inside data are the publisher's business: data is forwarded verbatim.
        assert_eq!(
            publish(r#"{"channel":"a","data":{"k":1,"k":2}}"#).2,
            r#"{"k":1,"k":2}"#
        );
    }

    #[test]
    fn nesting_deeper_than_128_is_refused() {
        let nested = |depth: usize| {
            format!(
                "{{\"channel\":\"a\",\"data\":{}{}}}",
                "[{\"k\":".repeat(depth / 2) + &"[".repeat(depth % 2) + "0",
                "]".repeat(depth % 2) + &"}]".repeat(depth / 2)
            )
        };
        assert_eq!(publish(&nested(MAX_DEPTH)).0, vec!["a".to_string()]);
        assert_eq!(
            error(nested(MAX_DEPTH + 1).as_bytes()),
            "data nested deeper than 128 levels"
        );
        // Far deeper than any stack would allow if the check recursed.
        let deep = format!(
            "{{\"channel\":\"a\",\"data\":{}{}}}",
            "[".repeat(30_000),
            "]".repeat(30_000)
        );
        assert_eq!(error(deep.as_bytes()), "data nested deeper than 128 levels");
        // Brackets inside strings do not count.
        let text = format!("\"{}\"", "[".repeat(1000));
        assert_eq!(
            publish(&format!("{{\"channel\":\"a\",\"data\":{text}}}")).2,
            text
        );
    }

    #[test]
    fn a_wide_publish_keeps_the_first_of_each_name_in_order() {
        let names: Vec<String> = (0..8000).map(|i| format!("c{}", i % 5000)).collect();
        let line = format!(
            "{{\"channels\":{},\"data\":1}}",
            serde_json::to_string(&names).expect("json")
        );
        let got = publish(&line).0;
        let want: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
        assert_eq!(got, want);
        // The short path (no hash set) agrees.
        assert_eq!(
            publish(r#"{"channels":["b","a","b","c","a"],"data":1}"#).0,
            vec!["b", "a", "c"]
        );
    }

    /// Found by the `publish_line` fuzz target (fuzz/README.md): `RawValue` does not check
    /// `\u` escapes or number ranges, so these lines were acked and their `data` forwarded
    /// verbatim, making every poll answer that carries the message unparsable for strict JSON
    /// clients (serde_json among them) until it left the buffer.
    #[test]
    fn rejects_json_that_strict_parsers_refuse() {
        for line in [
            r#"{"channel":"a","type":-9223308,"data":"\ud83d~ude00"}"#,
            r#"{"channel":"a","data":"\udc00"}"#,
            r#"{"channel":"a","data":{"x":["\ud800"]}}"#,
            r#"{"channel":"a","data":1e999}"#,
            r#"{"channel":"a","data":[[{"\udc00":-1E400}]]}"#,
        ] {
            assert!(error(line.as_bytes()).contains("invalid JSON"), "{line}");
        }
    }

    #[test]
    fn framing_splits_lines_skips_blanks_and_bounds_long_ones() {
        let mut f = Framer::default();
        let input = b"\n  \r\n{\"a\":1}\r\nx\ny";
        let mut start = 0;
        assert_eq!(f.next(input, &mut start), Some(Frame::Line(b"{\"a\":1}")));
        assert_eq!(f.next(input, &mut start), Some(Frame::Line(b"x")));
        assert_eq!(f.next(input, &mut start), None);
        assert_eq!(&input[start..], b"y");
        // Exactly MAX_LINE is a line; one more byte is too long (a CR does not count).
        let exact = vec![b'x'; MAX_LINE];
        let mut input = exact.clone();
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(&exact);
        input.extend_from_slice(b"x\n");
        let mut start = 0;
        assert_eq!(f.next(&input, &mut start), Some(Frame::Line(&exact[..])));
        assert_eq!(f.next(&input, &mut start), Some(Frame::TooLong));
        // A long tail is dropped as it arrives; its line is one TooLong, then lines resume.
        let mut tail = vec![b'x'; MAX_LINE + 2];
        f.keep_tail(&mut tail);
        assert!(tail.is_empty());
        let mut more = b"xxxx".to_vec();
        f.keep_tail(&mut more);
        assert!(more.is_empty());
        let mut start = 0;
        assert_eq!(f.next(b"xx\nok\n", &mut start), Some(Frame::TooLong));
        assert_eq!(f.next(b"xx\nok\n", &mut start), Some(Frame::Line(b"ok")));
        // A tail that may still become a valid line is kept.
        let mut tail = vec![b'x'; MAX_LINE + 1];
        f.keep_tail(&mut tail);
        assert_eq!(tail.len(), MAX_LINE + 1);
    }

    #[test]
    fn answer_lines_are_json() {
        let mut out = Vec::new();
        ack_line(&mut out, "1.AAB");
        error_line(&mut out, "bad \"x\"\n");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines[0], serde_json::json!({"ok":true,"id":"1.AAB"}));
        assert_eq!(
            lines[1],
            serde_json::json!({"ok":false,"error":"bad \"x\"\n"})
        );
        assert!(text.ends_with('\n'));
    }
}
