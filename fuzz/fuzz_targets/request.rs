//! Fuzz target `request`: raw request bytes -> `http::parse_head` -> `poll::handle` -> bytes.
//!
//! Input layout: byte 0 picks the hub (bits 0-1: open, token-protected with CORS, draining) and
//! the clock (bits 2-3: messages live, live, expired at the exact boundary, far future); byte 1
//! picks a split point (`byte1 * len / 255`); the rest is what a client sent.
//!
//! Invariants checked for every input:
//! - split invariance: `parse_head` on a prefix is `Ok(None)` or the whole buffer's answer, and
//!   once the prefix holds the whole head it is that head;
//! - a complete head is within the buffer and `MAX_HEAD`, and `may_be_complete` says so (the
//!   reactor only parses when it does), HTTP/1.0 never keeps alive;
//! - every `Respond` is one HTTP/1.1 response (httparse) with an exact `Content-Length` (none
//!   and no body for 204), `Connection: close` exactly when `close`, `delivered` exactly when
//!   it carries a message, a JSON body of the contract's shape (errors: `errorcode` and
//!   `message`; polls: `c`, `msg`, `cursor`, the ETag naming the cursor), CORS headers exactly
//!   on `/pns/poll` of a CORS hub, and no body after a HEAD request unless the connection closes;
//! - a poll's answer names only the poll's channels, and polling again with its cursor
//!   continues exactly there (nothing repeated, no `reset`);
//! - every `Park` has 1..=16 distinct valid channels, a positive hold within `--max-hold`, and a
//!   cursor at or before the newest message.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pnsd::config::Config;
use pnsd::http::{self, HeadError, Method, MAX_HEAD};
use pnsd::hub::Hub;
use pnsd::poll::{self, Outcome, MAX_PER_ANSWER, POLL_PATH};
use pnsd::query::{self, valid_channel, MAX_CHANNELS};
use pnsd::{cursor, token};
use serde_json::Value;

/// The CORS origin of the token-protected hub.
const ORIGIN: &str = "https://app.example";

/// Three hubs built once: open (epoch 1, default config), token-protected with key `k` and
/// CORS (epoch 0xabc, buffer 4), and open but draining (epoch 2).
fn hubs() -> &'static [Hub; 3] {
    static HUBS: OnceLock<[Hub; 3]> = OnceLock::new();
    HUBS.get_or_init(|| {
        let open = Hub::new(Config::default(), 1000, None, 1);
        let secure_config = Config {
            buffer: 4,
            cors_origin: Some(ORIGIN.to_owned()),
            ..Config::default()
        };
        let secure = Hub::new(
            secure_config,
            1000,
            Some(token::Secret::from_bytes(b"k")),
            0xabc,
        );
        let draining = Hub::new(Config::default(), 1000, None, 2);
        draining.draining.store(true, Ordering::Relaxed);
        for hub in [&open, &secure, &draining] {
            fill(hub);
        }
        [open, secure, draining]
    })
}

/// Messages at clock 0 (so they expire at the default TTL, 600,000 ms): single and multi-channel,
/// with and without type, odd JSON, and enough on `a` to evict from every buffer.
fn fill(hub: &Hub) {
    let chans = |names: &[&str]| -> Box<[Box<str>]> { names.iter().map(|&n| n.into()).collect() };
    let mut st = hub.write();
    st.publish(chans(&["user:42"]), Some(70), r#"{"subject":"hi"}"#, 0);
    st.publish(
        chans(&["news", "user:42"]),
        None,
        r#""plain \u00e9 \"q\"""#,
        0,
    );
    st.publish(chans(&["a", "b", "c"]), Some(-1), "[1,2.50e3,null,true]", 0);
    st.publish(chans(&["t"]), None, r#""\ud83d\ude00 </script>""#, 0);
    for i in 0..70 {
        st.publish(chans(&["a"]), Some(i), &i.to_string(), 0);
    }
    st.publish(chans(&["b", "news"]), None, "{}", 0);
}

/// The clock of a call: live messages, live, the exact expiry instant, far future.
fn now_ms(flags: u8) -> u64 {
    match (flags >> 2) & 3 {
        0 => 0,
        1 => 1_000,
        2 => 600_000,
        _ => u64::MAX,
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, split, req @ ..] = data else {
        return;
    };
    let hub = &hubs()[usize::from(flags & 3) % 3];

    let full = http::parse_head(req);
    let at = usize::from(*split) * req.len() / 255;
    let prefix = http::parse_head(&req[..at]);
    assert!(
        prefix == Ok(None) || prefix == full,
        "prefix {at}: {prefix:?} vs {full:?}"
    );
    if !matches!(full, Ok(Some(_))) {
        // `Ok(None)` and errors: a shorter buffer cannot be complete.
        assert!(!matches!(prefix, Ok(Some(_))), "prefix {at} completes");
    }
    let head = match full {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert!(req.len() < MAX_HEAD, "incomplete at {} bytes", req.len());
            return;
        }
        Err(HeadError::Malformed) | Err(HeadError::TooLarge) => return,
    };
    assert!(head.head_len <= req.len().min(MAX_HEAD));
    assert!(http::may_be_complete(req, 0), "complete head not hinted");
    if !http::may_be_complete(&req[..at], 0) {
        assert!(http::may_be_complete(req, at), "incremental hint from {at}");
    }
    if at >= head.head_len {
        assert_eq!(prefix, Ok(Some(head.clone())));
    }
    if head.http10 {
        assert!(!head.keep_alive);
    }

    let now = now_ms(*flags);
    match poll::handle(&head, hub, now) {
        Outcome::Respond {
            bytes,
            close,
            delivered,
        } => {
            let json = check_response(&bytes, close, &head, hub, now, 0);
            assert_eq!(delivered, json["c"].as_u64().is_some_and(|c| c > 0));
        }
        Outcome::Park(p) => {
            assert!(head.method == Method::Get && head.path == POLL_PATH);
            assert!((1..=MAX_CHANNELS).contains(&p.channels.len()), "{p:?}");
            for (i, c) in p.channels.iter().enumerate() {
                assert!(valid_channel(c), "{p:?}");
                assert!(!p.channels[..i].contains(c), "repeat in {p:?}");
            }
            assert!(p.hold_ms > 0 && p.hold_ms <= hub.config.max_hold_secs * 1000);
            assert!(p.after <= hub.read().last_seq());
            assert_eq!(p.close, !head.keep_alive || hub.is_draining());
        }
    }
});

/// Checks one response and returns its JSON body (`Null` for 204 and HEAD); `depth` 0 is the
/// fuzzer's request, 1 its continuation.
fn check_response(
    bytes: &[u8],
    close: bool,
    head: &http::RequestHead,
    hub: &Hub,
    now_ms: u64,
    depth: u8,
) -> Value {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut slots);
    let n = match res.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "unparsable response {other:?}: {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    assert_eq!(res.version, Some(1));
    let code = res.code.unwrap_or(0);
    assert!(
        matches!(code, 200 | 204 | 400 | 401 | 403 | 404 | 405 | 503),
        "status {code}"
    );
    let body = &bytes[n..];
    let values = |name: &str| -> Vec<&str> {
        res.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or("<not utf-8>"))
            .collect()
    };
    let lengths = values("content-length");
    if head.method == Method::Head {
        // RFC 9112 section 6.3: no content in a response to HEAD; a keep-alive client would read
        // any body bytes as the start of the next response.
        assert!(
            body.is_empty() || close,
            "HEAD answered with a body on a kept connection"
        );
    } else if code == 204 {
        assert!(lengths.is_empty() && body.is_empty());
    } else {
        assert_eq!(lengths, [body.len().to_string()]);
        assert_eq!(values("content-type"), ["application/json"]);
    }
    assert_eq!(
        values("connection") == ["close"],
        close,
        "Connection vs close={close}"
    );
    if !head.keep_alive || hub.is_draining() || matches!(code, 400 | 503) {
        assert!(close, "status {code} keeps the connection");
    }
    let cors = head.path == POLL_PATH && hub.config.cors_origin.is_some();
    assert_eq!(values("access-control-allow-origin") == [ORIGIN], cors);
    if code == 405 {
        assert_eq!(values("allow").len(), 1);
    }
    if code == 503 {
        assert_eq!(values("retry-after").len(), 1);
    }
    if code == 204 || head.method == Method::Head {
        return Value::Null;
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        ),
    };
    if code != 200 {
        assert!(
            json["errorcode"].is_string() && json["message"].is_string(),
            "{json}"
        );
        return json;
    }
    if head.path != POLL_PATH {
        assert_eq!(json, serde_json::json!({"ok": true}));
        return json;
    }
    // A poll's answer.
    let msgs = json["msg"].as_array().expect("msg array");
    assert_eq!(json["c"].as_u64(), Some(msgs.len() as u64));
    assert!(msgs.len() <= MAX_PER_ANSWER);
    assert!(
        matches!(json.get("reset"), None | Some(Value::Bool(true))),
        "{json}"
    );
    let text = json["cursor"].as_str().expect("cursor string");
    let end = cursor::decode(text).expect("cursor decodes");
    let epoch = hub.read().epoch();
    assert_eq!(end.epoch, epoch);
    assert_eq!(values("etag"), [format!("\"{text}\"")]);
    let mut last = None;
    for m in msgs {
        let id = cursor::decode(m["id"].as_str().expect("id")).expect("id decodes");
        assert_eq!(id.epoch, epoch);
        assert!(last.is_none_or(|l| l < id.seq), "ids out of order: {json}");
        last = Some(id.seq);
        assert!(valid_channel(m["channel"].as_str().expect("channel")));
        assert!(m.get("data").is_some());
    }
    if let Some(l) = last {
        assert_eq!(end.seq, l, "cursor is not the last id");
    }
    if let Ok(q) = query::parse_poll_query(&head.query) {
        for m in msgs {
            let ch = m["channel"].as_str().unwrap_or("");
            assert!(
                q.channels.is_empty() || q.channels.iter().any(|c| c == ch),
                "{json}"
            );
        }
    }
    if depth == 0 {
        continuation(head, hub, now_ms, text, msgs.len());
    }
    json
}

/// Polls again with the answer's cursor (the first `cursor` and `hold` of a query win) and
/// checks it continues exactly there. The hubs hold fewer than `MAX_PER_ANSWER` messages per
/// poll and nothing is published between the two polls, so the first answer took everything
/// and the second must be empty and not `reset`.
fn continuation(head: &http::RequestHead, hub: &Hub, now_ms: u64, cursor: &str, c: usize) {
    assert!(c < MAX_PER_ANSWER, "the hubs hold fewer messages per poll");
    let mut next = head.clone();
    next.query = format!("cursor={cursor}&hold=0&{}", head.query);
    match poll::handle(&next, hub, now_ms) {
        Outcome::Respond {
            bytes,
            close,
            delivered,
        } => {
            let json = check_response(&bytes, close, &next, hub, now_ms, 1);
            assert!(!delivered);
            assert_eq!(
                json["c"].as_u64(),
                Some(0),
                "continuation of {cursor}: {json}"
            );
            assert_eq!(json.get("reset"), None, "continuation of {cursor}: {json}");
        }
        Outcome::Park(p) => panic!("hold=0 parked: {p:?}"),
    }
}
