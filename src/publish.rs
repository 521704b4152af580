//! The publish socket: newline-delimited JSON over a Unix socket, on its own thread.
//!
//! `parse_line` turns one line into a `Request` or an error text, without I/O. The
//! `Publisher` thread reads lines from every publisher connection, applies them in order,
//! answers each with one line, and tells every reactor which channels got messages.
//!
//! Invariants:
//! - Answers go out in line order per connection; every line gets exactly one answer, except
//!   an unterminated last line at hang-up, which is discarded, never published.
//! - A publish is acknowledged only after `Store::publish` returned, i.e. after the message is
//!   in its channel buffers: a poll that arrives after the ack sees it.
//! - Per connection at most `MAX_LINE` + one read of input and `MAX_OUT` of unsent answers are
//!   held; past `MAX_OUT` the connection is not read until its answers drain.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::value::RawValue;
use slab::Slab;

use crate::backoff::{self, AcceptBackoff};
use crate::hub::{Command, Hub, ReactorLink};
use crate::query::valid_channel;
use crate::response::json_string;

/// Contract: a line over 65,536 bytes (excluding its newline) is an error.
pub const MAX_LINE: usize = 65_536;
/// Unsent answers after which a publisher that does not read them is not read either.
pub const MAX_OUT: usize = 1 << 20;
/// Bytes read from one publisher per turn before others get theirs.
const READ_CHUNK: usize = 64 * 1024;
const READS_PER_TURN: usize = 4;
/// How often expired messages are swept from the store.
const SWEEP_MS: u64 = 1000;
/// Expired messages dropped per write-lock hold of the sweep: about 0.15 ms of work with a
/// million channels (benches/store.rs), so a poll never waits behind the sweep for long.
const SWEEP_SLICE: usize = 256;
/// Pause between two sweep slices: the write lock is free at least 1 ms in every ~1.2 ms while
/// a long sweep runs (about 200,000 expired channels a second).
const SWEEP_GAP_MS: u64 = 1;
/// How long a stats request waits for the reactors' reports.
const STATS_WAIT: Duration = Duration::from_secs(1);

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const CONN_BASE: usize = 2;

/// One line's meaning.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Publish {
        channels: Box<[Box<str>]>,
        kind: Option<i64>,
        data: Box<str>,
    },
    Stats,
}

/// Interprets one line (without its line ending). Errors are the `error` text of the answer.
pub fn parse_line(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1))?;
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON at column {}", e.column()))?;
    if !value.get().starts_with('{') {
        return Err("a request must be a JSON object".into());
    }
    let fields: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_str(value.get())
            .map_err(|e| format!("invalid JSON at column {}", e.column()))?;
    let get = |k: &str| fields.get(k).copied();
    if let Some(op) = get("op") {
        return match serde_json::from_str::<String>(op.get()) {
            Ok(s) if s == "stats" => Ok(Request::Stats),
            Ok(s) if s == "publish" => publish_fields(&get),
            Ok(s) => Err(format!("unknown op {}", quoted(&s))),
            Err(_) => Err("op must be a string".into()),
        };
    }
    publish_fields(&get)
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn publish_fields<'a>(get: &dyn Fn(&str) -> Option<&'a RawValue>) -> Result<Request, String> {
    let channels: Vec<String> = match (get("channel"), get("channels")) {
        (Some(_), Some(_)) => return Err("give channel or channels, not both".into()),
        (None, None) => return Err("channel or channels is required".into()),
        (Some(c), None) => vec![serde_json::from_str::<String>(c.get())
            .map_err(|_| "channel must be a string".to_string())?],
        (None, Some(cs)) => {
            let v = serde_json::from_str::<Vec<String>>(cs.get())
                .map_err(|_| "channels must be an array of strings".to_string())?;
            if v.is_empty() {
                return Err("channels must not be empty".into());
            }
            v
        }
    };
    let mut unique: Vec<Box<str>> = Vec::with_capacity(channels.len());
    for c in channels {
        if !valid_channel(&c) {
            return Err(format!(
                "invalid channel name {} (1-128 bytes of A-Z a-z 0-9 _ . : @ -)",
                quoted(&c)
            ));
        }
        if !unique.iter().any(|u| **u == *c) {
            unique.push(c.into_boxed_str());
        }
    }
    let data = get("data").ok_or("data is required")?;
    strict_json(data.get())?;
    let kind = match get("type") {
        None => None,
        Some(t) => Some(parse_type(t.get()).ok_or("type must be an integer")?),
    };
    Ok(Request::Publish {
        channels: unique.into_boxed_slice(),
        kind,
        data: data.get().into(),
    })
}

/// Checks what `RawValue` skips: every string of `data` decodes (no lone surrogate escape such
/// as `"\ud83d"`) and every number fits an f64 (no `1e999`). `data` is forwarded verbatim, so
/// without this one publish makes every answer carrying it unparsable for strict JSON clients.
/// `data` is already well-formed JSON; the scan is iterative, so any nesting depth is fine.
fn strict_json(data: &str) -> Result<(), String> {
    let bad = |e: serde_json::Error| format!("invalid JSON in data: {e}");
    let b = data.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let start = i;
        match c {
            b'"' => {
                i += 1;
                while let Some(&c) = b.get(i) {
                    if c == b'"' {
                        break;
                    }
                    i += if c == b'\\' { 2 } else { 1 };
                }
                i += 1;
                let token = data.get(start..i.min(b.len())).unwrap_or_default();
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

/// The answer line of a failed request.
pub fn error_line(out: &mut Vec<u8>, error: &str) {
    out.extend_from_slice(b"{\"ok\":false,\"error\":");
    json_string(out, error);
    out.extend_from_slice(b"}\n");
}

#[derive(Debug)]
struct PubConn {
    sock: UnixStream,
    input: Vec<u8>,
    /// Inside a line that is too long: drop bytes until its newline.
    discarding: bool,
    out: Vec<u8>,
    out_pos: usize,
    readable: bool,
    eof: bool,
}

/// See the module documentation.
pub struct Publisher {
    poll: Poll,
    listener: Option<UnixListener>,
    conns: Slab<PubConn>,
    hub: Arc<Hub>,
    reactors: Arc<Vec<ReactorLink>>,
    commands: Receiver<()>,
    /// Channels that got messages since the reactors were last told, and the newest seq.
    touched: BTreeSet<Box<str>>,
    touched_upto: u64,
    /// The one read buffer of this thread, zeroed once; bytes read are appended to the
    /// publisher's input, so a read costs no per-call zeroing or allocation.
    scratch: Box<[u8]>,
    next_sweep: u64,
    accept_backoff: AcceptBackoff,
}

/// How the main thread reaches the publish thread: a drain request.
pub struct PublisherLink {
    pub drain: mpsc::Sender<()>,
    pub waker: mio::Waker,
}

impl Publisher {
    pub fn new(
        mut listener: UnixListener,
        hub: Arc<Hub>,
        reactors: Arc<Vec<ReactorLink>>,
    ) -> io::Result<(Publisher, PublisherLink)> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (tx, rx) = mpsc::channel();
        let now = hub.clock.now_ms();
        Ok((
            Publisher {
                poll,
                listener: Some(listener),
                conns: Slab::new(),
                hub,
                reactors,
                commands: rx,
                touched: BTreeSet::new(),
                touched_upto: 0,
                scratch: vec![0; READ_CHUNK].into_boxed_slice(),
                next_sweep: now + SWEEP_MS,
                accept_backoff: AcceptBackoff::default(),
            },
            PublisherLink { drain: tx, waker },
        ))
    }

    /// Runs until drained.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut again: Vec<usize> = Vec::new();
        loop {
            let timeout = if !again.is_empty() {
                Duration::ZERO
            } else if self.accept_backoff.is_paused() {
                Duration::from_millis(backoff::PAUSE_MS)
            } else {
                let to_sweep = self.next_sweep.saturating_sub(self.hub.clock.now_ms());
                Duration::from_millis(to_sweep.min(SWEEP_MS))
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("publish poll failed: {e}");
                }
                continue;
            }
            let mut work: Vec<usize> = std::mem::take(&mut again);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(t) => {
                        let key = t - CONN_BASE;
                        if let Some(c) = self.conns.get_mut(key) {
                            if ev.is_readable() || ev.is_read_closed() {
                                c.readable = true;
                            }
                            work.push(key);
                        }
                    }
                }
            }
            work.sort_unstable();
            work.dedup();
            for key in work {
                if self.serve(key) {
                    again.push(key);
                }
            }
            self.notify();
            let now = self.hub.clock.now_ms();
            if self.accept_backoff.resume(now) {
                self.accept();
            }
            if now >= self.next_sweep {
                // One bounded slice per turn, then a gap: polls read and publishes go on between
                // slices (a writer taking the lock again at once can starve the readers).
                let more = self.hub.write().expire(now, SWEEP_SLICE);
                self.next_sweep = now + if more { SWEEP_GAP_MS } else { SWEEP_MS };
            }
            match self.commands.try_recv() {
                Ok(()) | Err(TryRecvError::Disconnected) => {
                    self.drain();
                    return;
                }
                Err(TryRecvError::Empty) => {}
            }
        }
    }

    fn accept(&mut self) {
        if self.accept_backoff.is_paused() {
            return;
        }
        // Bounded: the backlog is finite and each pass takes one connection or stops.
        while let Some(l) = self.listener.as_ref() {
            match l.accept() {
                Ok((mut sock, _)) => {
                    let entry = self.conns.vacant_entry();
                    let token = Token(CONN_BASE + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(PubConn {
                            sock,
                            input: Vec::new(),
                            discarding: false,
                            out: Vec::new(),
                            out_pos: 0,
                            readable: true,
                            eof: false,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the waiting publisher stays in the backlog and no new
                    // edge will come for it, so retry after a pause.
                    self.accept_backoff
                        .failed(self.hub.clock.now_ms(), "publish", &e);
                    return;
                }
            }
        }
    }

    /// Reads, answers and writes for one publisher; true when it has more to do at once.
    fn serve(&mut self, key: usize) -> bool {
        let mut more = false;
        for _ in 0..READS_PER_TURN {
            let Some(c) = self.conns.get_mut(key) else {
                return false;
            };
            if !flush(c) {
                self.close(key);
                return false;
            }
            if c.out.len() - c.out_pos > MAX_OUT || !c.readable || c.eof {
                break;
            }
            match c.sock.read(&mut self.scratch[..]) {
                Ok(0) => {
                    c.eof = true;
                    c.readable = false;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&self.scratch[..n]);
                    more = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    more = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(key);
                    return false;
                }
            }
            self.lines(key);
        }
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if !flush(c) {
            self.close(key);
            return false;
        }
        if c.eof && c.out_pos == c.out.len() {
            // An unterminated last line is discarded, never published.
            self.close(key);
            return false;
        }
        more && c.readable && c.out.len() - c.out_pos <= MAX_OUT
    }

    /// Answers every complete line in the connection's input.
    fn lines(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let input = std::mem::take(&mut c.input);
        let mut out = std::mem::take(&mut c.out);
        let mut discarding = c.discarding;
        let mut start = 0;
        let mut store = None;
        let mut id = String::with_capacity(crate::cursor::MAX_LEN);
        while let Some(nl) = input[start..].iter().position(|&b| b == b'\n') {
            let mut line = &input[start..start + nl];
            start += nl + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if discarding {
                discarding = false;
                error_line(&mut out, &format!("line longer than {MAX_LINE} bytes"));
                continue;
            }
            if line.len() > MAX_LINE {
                error_line(&mut out, &format!("line longer than {MAX_LINE} bytes"));
                continue;
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue; // blank lines are skipped
            }
            match parse_line(line) {
                Ok(Request::Publish {
                    channels,
                    kind,
                    data,
                }) => {
                    let now = self.hub.clock.now_ms();
                    let st = store.get_or_insert_with(|| self.hub.write());
                    let msg = match st.publish(channels, kind, &data, now) {
                        Ok(msg) => msg,
                        Err(e) => {
                            error_line(&mut out, &e.to_string());
                            continue;
                        }
                    };
                    id.clear();
                    crate::cursor::encode_into(&mut id, st.epoch(), msg.seq);
                    ack_line(&mut out, &id);
                    for c in msg.channels.iter() {
                        if !self.touched.contains(c) {
                            self.touched.insert(c.clone());
                        }
                    }
                    self.touched_upto = msg.seq;
                }
                Ok(Request::Stats) => {
                    store = None;
                    self.stats_line(&mut out);
                }
                Err(e) => error_line(&mut out, &e),
            }
        }
        drop(store);
        let mut rest = input;
        rest.drain(..start);
        if !discarding && rest.len() > MAX_LINE + 1 {
            // Too long already (the +1 leaves room for a CR before the newline).
            discarding = true;
        }
        if discarding {
            rest.clear();
        }
        // A burst or a long line grew the buffer; an idle publisher keeps at most a read's worth.
        if rest.capacity() > 2 * READ_CHUNK && rest.len() <= READ_CHUNK {
            rest.shrink_to(READ_CHUNK);
        }
        if let Some(c) = self.conns.get_mut(key) {
            c.input = rest;
            c.out = out;
            c.discarding = discarding;
        }
    }

    fn stats_line(&self, out: &mut Vec<u8>) {
        // The counters first: a poll counted as parked was linked into its reactor's waiters
        // before it was counted (same thread), and that reactor answers the question below
        // after that, so the channel of every poll counted here is among the channels listed.
        let c = &self.hub.counters;
        let connections = c.connections.load(Ordering::Relaxed);
        let parked = c.parked.load(Ordering::Relaxed);
        let delivered = c.delivered.load(Ordering::Relaxed);
        let mut names: BTreeSet<Box<str>> = BTreeSet::new();
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for r in self.reactors.iter() {
            if r.send(Command::WaitingChannels(tx.clone())) {
                asked += 1;
            }
        }
        drop(tx);
        for _ in 0..asked {
            match rx.recv_timeout(STATS_WAIT) {
                Ok(v) => names.extend(v),
                Err(_) => break,
            }
        }
        let st = self.hub.read();
        names.extend(st.channel_names().map(Box::from));
        let s = st.stats();
        drop(st);
        out.extend_from_slice(
            format!(
                "{{\"ok\":true,\"connections\":{},\"parked\":{},\"channels\":{},\"messages\":{},\"published\":{},\"delivered\":{}}}\n",
                connections,
                parked,
                names.len(),
                s.messages,
                s.published,
                delivered,
            )
            .as_bytes(),
        );
    }

    /// Tells every reactor which channels got messages in this turn.
    fn notify(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let channels: Arc<[Box<str>]> = std::mem::take(&mut self.touched).into_iter().collect();
        for r in self.reactors.iter() {
            r.send(Command::Published {
                last_seq: self.touched_upto,
                channels: channels.clone(),
            });
        }
    }

    fn close(&mut self, key: usize) {
        if self.conns.contains(key) {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
    }

    /// Section 6: stop accepting, answer what was received, flush, close.
    fn drain(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for &k in &keys {
            self.lines(k);
        }
        self.notify();
        // Give slow readers a bounded moment to take their acks.
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        for k in keys {
            if let Some(c) = self.conns.get_mut(k) {
                while c.out_pos < c.out.len() && std::time::Instant::now() < deadline {
                    if !flush(c) {
                        break;
                    }
                    if c.out_pos < c.out.len() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            self.close(k);
        }
    }
}

/// Writes a publisher's pending answers; false on a dead socket.
fn flush(c: &mut PubConn) -> bool {
    while c.out_pos < c.out.len() {
        match c.sock.write(&c.out[c.out_pos..]) {
            Ok(0) => return false,
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.out.clear();
    c.out_pos = 0;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(line: &str) -> (Vec<String>, Option<i64>, String) {
        match parse_line(line.as_bytes()) {
            Ok(Request::Publish {
                channels,
                kind,
                data,
            }) => (
                channels.iter().map(|c| c.to_string()).collect(),
                kind,
                data.to_string(),
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
        assert!(error(b"{\"channel\":\"a\",\"data\":\"\xff\"}").contains("UTF-8"));
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
}
