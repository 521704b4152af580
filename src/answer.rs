//! A poll's answer as response bytes: small answers encoded flat (one contiguous buffer, one
//! `send`), large ones written from the store's own message bytes by reference.
//!
//! Invariants:
//! - An answer's bytes are exactly `response::write` of the contract's JSON body, whichever
//!   form holds them (the unit tests compare both forms byte for byte).
//! - What an answer owns is bounded by a constant whatever the message sizes: a flat answer's
//!   body is at most `FLAT_MAX` bytes; a referenced answer owns its HTTP head, the body's
//!   first and last few bytes and one `(Arc<Message>, channel index)` pair per message (at
//!   most `poll::MAX_PER_ANSWER`); the message bytes stay the store's, shared by reference.
//! - Error answers and other small responses are `Answer::Flat` too.

use std::io::IoSlice;
use std::sync::Arc;

use crate::cursor;
use crate::response::{self, Extra};
use crate::sockio::{self, Segments};
use crate::store::{Found, Message};

pub mod events;
pub use events::EventBatch;

/// Bodies up to this size are copied into one buffer, so the common answer of a few small
/// messages (the fan-out and re-poll hot paths) is one `send` of contiguous bytes; larger ones
/// are written by reference. 2 KiB is about what the references of a full answer (100 x 16
/// bytes) cost anyway, so a client that does not read holds at most ~2.5 KiB either way.
pub const FLAT_MAX: usize = 2048;

/// Response bytes; see the module documentation.
#[derive(Debug)]
pub enum Answer {
    Flat(Vec<u8>),
    Refs(RefAnswer),
    /// Server-Sent Events by reference (built by `sse`).
    Events(EventBatch),
}

/// An answer written from the messages' stored encodings.
#[derive(Debug)]
pub struct RefAnswer {
    /// Status line, headers and `{"c":N,"msg":[`.
    head: Vec<u8>,
    /// Each message and the index (in `Message::channels`) of the channel it is named by.
    msgs: Vec<(Arc<Message>, u32)>,
    /// `],"cursor":"…"` with `,"reset":true` if set, and `}`.
    trailer: Vec<u8>,
    len: usize,
}

const QUOTE: &[u8] = b"\"";
const COMMA: &[u8] = b",";

impl RefAnswer {
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let msgs = self.msgs.iter().enumerate().flat_map(|(i, (m, ch))| {
            let sep: &[u8] = if i > 0 { COMMA } else { b"" };
            let name = m.channels.get(*ch as usize).map_or("", |c| &**c);
            [
                sep,
                m.head().as_bytes(),
                QUOTE,
                name.as_bytes(),
                QUOTE,
                m.tail().as_bytes(),
            ]
        });
        std::iter::once(&self.head[..])
            .chain(msgs)
            .chain(std::iter::once(&self.trailer[..]))
    }

    /// Bytes this answer owns beside the shared messages (for the memory bound's test).
    pub fn owned_bytes(&self) -> usize {
        std::mem::size_of::<RefAnswer>()
            + self.head.capacity()
            + self.trailer.capacity()
            + self.msgs.capacity() * std::mem::size_of::<(Arc<Message>, u32)>()
    }
}

impl Answer {
    /// Bytes this answer owns beside shared messages.
    pub fn owned_bytes(&self) -> usize {
        match self {
            Answer::Flat(v) => std::mem::size_of::<Answer>() + v.capacity(),
            Answer::Refs(r) => r.owned_bytes(),
            Answer::Events(e) => e.owned_bytes(),
        }
    }
}

impl Segments for Answer {
    fn total_len(&self) -> usize {
        match self {
            Answer::Flat(v) => v.len(),
            Answer::Refs(r) => r.len,
            Answer::Events(e) => e.total_len(),
        }
    }

    fn slices_from<'a>(&'a self, pos: usize, out: &mut [IoSlice<'a>]) -> usize {
        match self {
            Answer::Flat(v) => v[..].slices_from(pos, out),
            Answer::Refs(r) => sockio::slices_of(r.parts(), pos, out),
            Answer::Events(e) => e.slices_from(pos, out),
        }
    }

    fn contiguous(&self) -> Option<&[u8]> {
        match self {
            Answer::Flat(v) => Some(v),
            Answer::Refs(_) | Answer::Events(_) => None,
        }
    }
}

/// What a response says of itself, read back from its own bytes by `Answer::summary`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub status: u16,
    /// A poll's answer (`encode`'s form), not a health check, preflight or error.
    pub poll: bool,
    /// A poll's answer with at least one message.
    pub messages: bool,
    /// A poll's answer with `reset: true`.
    pub reset: bool,
}

const RESET_END: &[u8] = b",\"reset\":true}";
const CURSOR_KEY: &[u8] = b"],\"cursor\":\"";

impl Answer {
    fn first_bytes(&self) -> &[u8] {
        match self {
            Answer::Flat(v) => v,
            Answer::Refs(r) => &r.head,
            Answer::Events(e) => e.preamble(),
        }
    }

    fn last_bytes(&self) -> &[u8] {
        match self {
            Answer::Flat(v) => v,
            Answer::Refs(r) => &r.trailer,
            Answer::Events(e) => e.preamble(),
        }
    }

    /// Status, kind and outcome in O(1): the status line's code, and the body's end (`encode`
    /// ends a poll's answer with its trailer, `],"cursor":"…"}` with `,"reset":true` before
    /// the brace when set; a cursor holds no quote, so the last `],"cursor":"` is the
    /// trailer's, and the byte before it is `[` exactly when no message precedes it).
    pub fn summary(&self) -> Summary {
        let first = self.first_bytes();
        let status = first
            .get(9..12)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let mut s = Summary {
            status,
            ..Summary::default()
        };
        let last = self.last_bytes();
        if status != 200 || !(last.ends_with(b"\"}") || last.ends_with(RESET_END)) {
            return s;
        }
        let tail = &last[last
            .len()
            .saturating_sub(CURSOR_KEY.len() + cursor::MAX_LEN + 16)..];
        let Some(at) = tail
            .windows(CURSOR_KEY.len())
            .rposition(|w| w == CURSOR_KEY)
        else {
            return s;
        };
        s.poll = true;
        s.reset = last.ends_with(RESET_END);
        s.messages = match self {
            Answer::Refs(r) => !r.msgs.is_empty(),
            Answer::Events(e) => e.message_count() > 0,
            Answer::Flat(_) => at == 0 || tail[at - 1] != b'[',
        };
        s
    }

    /// The number of messages of a poll's answer (`c`); 0 for anything else. Reads the body's
    /// start: O(head length), for the access log only.
    pub fn message_count(&self) -> usize {
        match self {
            Answer::Refs(r) => return r.msgs.len(),
            Answer::Events(e) => return e.message_count(),
            Answer::Flat(_) => {}
        }
        let bytes = self.first_bytes();
        let Some(body) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return 0;
        };
        let rest = &bytes[body + 4..];
        let Some(digits) = rest.strip_prefix(b"{\"c\":") else {
            return 0;
        };
        digits
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0, |n, d| n * 10 + usize::from(d - b'0'))
    }
}

/// The whole HTTP response answering a poll on `channels` with what `found` holds.
pub fn encode<S: AsRef<str>>(
    found: &Found,
    channels: &[S],
    epoch: u64,
    close: bool,
    cors: Option<&str>,
) -> Answer {
    let tag = cursor::encode(epoch, found.end_seq());
    let mut prefix = Vec::with_capacity(24);
    prefix.extend_from_slice(b"{\"c\":");
    prefix.extend_from_slice(found.messages.len().to_string().as_bytes());
    prefix.extend_from_slice(b",\"msg\":[");
    let mut trailer = Vec::with_capacity(48);
    trailer.extend_from_slice(b"],\"cursor\":\"");
    trailer.extend_from_slice(tag.as_bytes());
    trailer.push(b'"');
    if found.reset {
        trailer.extend_from_slice(b",\"reset\":true");
    }
    trailer.push(b'}');
    let named = |m: &Message| m.named_by(channels);
    let mut body_len = prefix.len() + trailer.len();
    for (i, m) in found.messages.iter().enumerate() {
        let ch = m.channels.get(named(m) as usize).map_or(0, |c| c.len());
        body_len += usize::from(i > 0) + m.head().len() + 2 + ch + m.tail().len();
    }
    let extra = Extra {
        close,
        cors,
        etag: Some(&tag),
        ..Extra::default()
    };
    if body_len <= FLAT_MAX {
        let mut out = Vec::with_capacity(body_len + 256);
        response::write_head(&mut out, 200, &extra, body_len);
        out.extend_from_slice(&prefix);
        for (i, m) in found.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let ch = m.channels.get(named(m) as usize).map_or("", |c| &**c);
            m.encode_into(&mut out, ch);
        }
        out.extend_from_slice(&trailer);
        return Answer::Flat(out);
    }
    let mut head = Vec::with_capacity(256 + prefix.len());
    response::write_head(&mut head, 200, &extra, body_len);
    head.extend_from_slice(&prefix);
    let len = head.len() + body_len - prefix.len();
    Answer::Refs(RefAnswer {
        head,
        msgs: found
            .messages
            .iter()
            .map(|m| (m.clone(), named(m)))
            .collect(),
        trailer,
        len,
    })
}

/// All the bytes of `a`, walked as a socket write would (for tests).
#[cfg(test)]
pub fn flatten(a: &Answer) -> Vec<u8> {
    let mut out = Vec::new();
    let mut iov = [IoSlice::new(&[]); 16];
    let mut pos = 0;
    loop {
        let n = a.slices_from(pos, &mut iov);
        if n == 0 {
            break;
        }
        for s in &iov[..n] {
            out.extend_from_slice(s);
            pos += s.len();
        }
    }
    assert_eq!(out.len(), a.total_len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn found(size: usize, n: usize, reset: bool) -> (Store, Found) {
        let mut store = Store::new(7, 200, 60_000, 16);
        let data = format!("\"{}\"", "x".repeat(size));
        for _ in 0..n {
            store
                .publish(vec!["b".into(), "a".into()].into(), Some(3), &data, 0)
                .unwrap();
        }
        let mut f = store.read(&["a"], 0, 0, 100);
        f.reset = reset;
        (store, f)
    }

    #[test]
    fn both_forms_are_the_same_bytes() {
        for (size, n, reset) in [(10, 3, false), (5000, 3, true), (60_000, 100, false)] {
            let (_store, f) = found(size, n, reset);
            let a = encode(&f, &["a"], 7, false, Some("*"));
            assert_eq!(matches!(a, Answer::Refs(_)), size * n > FLAT_MAX);
            let bytes = flatten(&a);
            let text = String::from_utf8(bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["c"], n);
            assert_eq!(v["msg"][0]["channel"], "a");
            assert_eq!(v["reset"].as_bool().unwrap_or(false), reset);
            // The flat encoding of the same answer is byte for byte the same.
            let mut flat = Vec::new();
            let mut body_flat = Vec::new();
            body_flat.extend_from_slice(body.as_bytes());
            response::write(
                &mut flat,
                200,
                &Extra {
                    cors: Some("*"),
                    etag: Some(v["cursor"].as_str().unwrap()),
                    ..Extra::default()
                },
                &body_flat,
            );
            assert_eq!(flat, text.as_bytes());
        }
    }

    #[test]
    fn a_summary_reads_every_form_back() {
        for (size, n, reset) in [
            (10, 0, false),
            (10, 0, true),
            (10, 3, false),
            (10, 3, true),
            (5000, 3, true),
            (60_000, 100, false),
        ] {
            let (_store, f) = found(size, n, reset);
            let a = encode(&f, &["a"], 7, false, Some("*"));
            let s = a.summary();
            let want = Summary {
                status: 200,
                poll: true,
                messages: n > 0,
                reset,
            };
            assert_eq!(s, want, "{size} x {n}, reset {reset}");
            assert_eq!(a.message_count(), n);
        }
        // A message whose data looks like a trailer does not fool it: the trailer is last.
        let mut store = Store::new(7, 10, 60_000, usize::MAX);
        let _ = store.publish(vec!["a".into()].into(), None, r#"{"a":[],"cursor":"x"}"#, 0);
        let a = encode(&store.read(&["a"], 0, 0, 100), &["a"], 7, false, None);
        assert!(a.summary().messages);
        for (err, status) in [(response::NOT_FOUND, 404), (response::OVER_CAPACITY, 503)] {
            let a = Answer::Flat(response::error_bytes(&err, false, None));
            let s = a.summary();
            assert_eq!((s.status, s.poll, a.message_count()), (status, false, 0));
        }
        let mut health = Vec::new();
        response::write(&mut health, 200, &Extra::default(), b"{\"ok\":true}");
        assert!(!Answer::Flat(health).summary().poll);
    }

    #[test]
    fn held_size_does_not_depend_on_message_size() {
        let (_s1, small) = found(5_000, 100, false);
        let (_s2, large) = found(60_000, 100, false);
        let a = encode(&small, &["a"], 7, false, None).owned_bytes();
        let b = encode(&large, &["a"], 7, false, None).owned_bytes();
        assert_eq!(a, b);
        // Far below a copy of even one message.
        assert!(a < 4096, "{a}");
        let flat = encode(&found(30, 100, false).1, &["a"], 7, false, None).owned_bytes();
        assert!(flat <= FLAT_MAX + 512, "{flat}");
    }
}
