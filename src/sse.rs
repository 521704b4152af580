//! Server-Sent Events: the bytes of a `text/event-stream` answer to `GET /pns/poll` with
//! `Accept: text/event-stream`. No I/O; the stream's life is `conn`'s (a parked subscriber that
//! is parked again after each write) and `parked`'s (its events are built there, encoded once
//! per channel and cursor like poll answers).
//!
//! The stream: the response head (`200`, `Content-Type: text/event-stream`,
//! `Cache-Control: no-store`, `X-Accel-Buffering: no`, no `Content-Length`: the stream ends by
//! closing), a `retry:` line, then per message
//!
//! ```text
//! id: <the message's cursor>
//! event: message
//! data: <the message object, as in a poll answer, on one line>
//! ```
//!
//! and a blank line. A reset (same rules as a poll's `reset:true`) is `event: reset` with
//! `data: {"cursor":"…"}` before the messages; a session's end is `event: session_ended`
//! with the error object as data, then the close; a heartbeat is the comment `: keep-alive`.
//!
//! Invariants:
//! - Every event ends with a blank line and no `data:` line holds a CR or LF: a message whose
//!   JSON text has line breaks (whitespace the publisher sent inside `data`) is split over
//!   several `data:` lines, which `EventSource` joins with LF into the same JSON.
//! - A batch owns a bounded amount whatever the message sizes: like `answer::RefAnswer`, its (`answer::EventBatch`)
//!   messages are written from the store's bytes by reference; it owns one `id:` prefix per
//!   message (at most `poll::MAX_PER_ANSWER`) and its preamble. A batch with a message that
//!   needs splitting is encoded flat (rare: publishers send compact JSON).

use crate::answer::events::END;
use crate::answer::{Answer, EventBatch};
use crate::cursor;
use crate::response::{self, ApiError};
use crate::store::{Found, Message};

/// The comment written every `--sse-heartbeat` seconds so proxies keep an idle stream open.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";
/// Milliseconds a browser waits before reconnecting (`retry:`): a stream that ends after
/// `--sse-max` comes back almost at once, a server that restarts is not stormed.
pub const RETRY_MS: u64 = 2000;

/// The response head and the `retry:` line.
pub fn head(cors: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = cors {
        response::write_cors(&mut out, origin, false);
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
    out
}

/// The event that ends a stream whose session ended (or another error `e`).
pub fn error_event(e: &ApiError) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(e.code.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&e.body());
    out.extend_from_slice(END);
    out
}

fn has_line_break(m: &Message) -> bool {
    let lb = |s: &str| s.bytes().any(|b| b == b'\n' || b == b'\r');
    lb(m.head()) || lb(m.tail())
}

/// Appends `json` as `data:` lines, one per line of it.
fn data_lines(out: &mut Vec<u8>, json: &[u8]) {
    let text = String::from_utf8_lossy(json);
    for (i, line) in text.split(['\n', '\r']).enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
    }
}

/// The events of `found` for a stream on `channels`, after `preamble` (the response head, or
/// nothing); a reset comes first as `event: reset`.
pub fn encode<S: AsRef<str>>(
    found: &Found,
    channels: &[S],
    epoch: u64,
    preamble: Vec<u8>,
) -> Answer {
    let mut head = preamble;
    if found.reset {
        let end = cursor::encode(epoch, found.end_seq());
        if found.messages.is_empty() {
            // Nothing follows to carry the new position: the reset event carries it.
            head.extend_from_slice(format!("id: {end}\n").as_bytes());
        }
        head.extend_from_slice(b"event: reset\ndata: {\"cursor\":\"");
        head.extend_from_slice(end.as_bytes());
        head.extend_from_slice(b"\"}\n\n");
    }
    let named = |m: &Message| m.named_by(channels);
    if found.messages.iter().any(|m| has_line_break(m)) {
        let mut out = head;
        let mut json = Vec::new();
        for m in &found.messages {
            json.clear();
            let ch = m.channels.get(named(m) as usize).map_or("", |c| &**c);
            m.encode_into(&mut json, ch);
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(cursor::encode(epoch, m.seq).as_bytes());
            out.extend_from_slice(b"\nevent: message\n");
            data_lines(&mut out, &json);
            out.extend_from_slice(END);
        }
        return Answer::Flat(out);
    }
    if found.messages.is_empty() {
        return Answer::Flat(head);
    }
    Answer::Events(EventBatch::new(head, &found.messages, epoch, named))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn text(a: &Answer) -> String {
        String::from_utf8(crate::answer::flatten(a)).unwrap()
    }

    /// Parses events as EventSource does: (id, event, data joined with LF) per event.
    fn events(s: &str) -> Vec<(Option<String>, String, String)> {
        let mut out = Vec::new();
        for block in s.split("\n\n").filter(|b| !b.is_empty()) {
            let (mut id, mut ev, mut data) = (None, "message".to_string(), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v.to_string());
                }
            }
            if !data.is_empty() {
                out.push((id, ev, data.join("\n")));
            }
        }
        out
    }

    #[test]
    fn messages_become_events_with_their_cursor_as_id() {
        let mut store = Store::new(7, 100, 60_000, usize::MAX);
        let _ = store.publish(vec!["a".into()].into(), Some(3), "{\"x\":1}", 0);
        let _ = store.publish(vec!["b".into(), "a".into()].into(), None, "\"two\"", 0);
        let _ = store.publish(
            vec!["a".into()].into(),
            None,
            "{\n\"multi\":\r\n\"line\"}",
            0,
        );
        let found = store.read(&["a"], 0, 0, 100);
        let a = encode(&found, &["a"], 7, Vec::new());
        assert!(matches!(a, Answer::Flat(_)), "a line break makes it flat");
        let evs = events(&text(&a));
        assert_eq!(evs.len(), 3);
        for (i, (id, ev, data)) in evs.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(data).expect(data);
            assert_eq!(ev, "message");
            assert_eq!(id.as_deref(), v["id"].as_str());
            assert_eq!(id.as_deref(), Some(&*cursor::encode(7, i as u64 + 1)));
            assert_eq!(v["channel"], "a");
        }
        // Without line breaks the batch is by reference and the same events.
        let found = store.read(&["a"], 0, 0, 2);
        let a = encode(&found, &["a"], 7, b"pre\n\n".to_vec());
        assert!(matches!(a, Answer::Events(_)));
        let t = text(&a);
        assert!(t.starts_with("pre\n\nid: "), "{t}");
        assert_eq!(events(&t).len(), 2);
        assert!(a.owned_bytes() < 1024);
    }

    #[test]
    fn a_reset_comes_first_and_carries_the_position_when_alone() {
        let mut store = Store::new(7, 100, 60_000, usize::MAX);
        let _ = store.publish(vec!["a".into()].into(), None, "1", 0);
        let mut found = store.read(&["a"], 1, 0, 100);
        found.reset = true;
        let t = text(&encode(&found, &["a"], 7, Vec::new()));
        let evs = events(&t);
        let c1 = cursor::encode(7, 1);
        assert_eq!(
            evs,
            vec![(
                Some(c1.clone()),
                "reset".into(),
                format!("{{\"cursor\":\"{c1}\"}}")
            )]
        );
        let h = String::from_utf8(head(Some("*"))).unwrap();
        assert!(h.contains("Content-Type: text/event-stream\r\n") && !h.contains("Content-Length"));
        assert!(h.ends_with("\r\n\r\nretry: 2000\n\n"), "{h}");
        let e = String::from_utf8(error_event(&response::SESSION_ENDED)).unwrap();
        assert!(e.starts_with("event: session_ended\ndata: {\"errorcode\":\"session_ended\""));
    }
}
