//! The sse-density scenario (pnsd only): userland bytes per idle Server-Sent Events stream,
//! measured like density (server PSS before any stream, and after `--conns` streams are open
//! and `scenarios::DENSITY_PAUSE` has passed; growth / `--conns`), then one publish that every
//! stream must receive as one event (an `id:` line and a `data:` line holding the message).
//!
//! Invariants: at most `MAX_OPENING` streams are opening (connected, `retry:` preamble not yet
//! read) at once, so 15,000 connects never overflow the server's listen backlog; a stream keeps
//! only the unparsed tail of what it read, and more than `MAX_UNPARSED` bytes without an event
//! end fails the run (the server is not sending an event stream); an event before the publish,
//! a second event, a closed stream or a non-200 head fails the run; every wait has a deadline
//! and fails saying how many streams were still missing. Dropped streams are reset
//! (SO_LINGER 0), as the reactor's are, so no TIME_WAIT piles up between runs.

use crate::args::Options;
use crate::crowd::{channel_name, note};
use crate::dialect;
use crate::http::percent_encode;
use crate::procfs;
use crate::report::{Results, SseDensity};
use crate::scenarios::DENSITY_PAUSE;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Streams opening at once: the reactor's `MAX_OPENING`, well under the default `somaxconn`.
const MAX_OPENING: usize = 256;
/// Opening deadline: the settle deadline of `crowd` (15,000 streams -> 90 s).
const OPEN_BASE: Duration = Duration::from_secs(30);
const OPEN_PER_STREAM: Duration = Duration::from_millis(4);
/// Deadline for every stream to receive the published event (fan-out's deadline).
const EVENT_DEADLINE: Duration = Duration::from_secs(60);
/// Unparsed bytes one stream may hold: far above a head plus one event of the small message
/// published here, so reaching it means the answer is not an event stream.
const MAX_UNPARSED: usize = 64 * 1024;
/// mio events per turn and the read buffer shared by all streams.
const EVENTS_CAPACITY: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;
/// Turn length while waiting; short enough for a prompt deadline check.
const TICK: Duration = Duration::from_millis(10);
/// How often the server's `streams` count is asked for once every preamble is read.
const STATS_EVERY: Duration = Duration::from_millis(250);
/// The `seq` of the one message published.
const SEQ: u64 = 0;

/// Where one stream stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting, or its head and `retry:` preamble not read yet.
    Opening,
    /// Preamble read, no event yet.
    Idle,
    /// The published event arrived.
    Got,
}

struct Stream {
    sock: TcpStream,
    /// Request bytes still to write.
    unsent: usize,
    head_read: bool,
    phase: Phase,
    /// What was read and not yet parsed (an incomplete head or event).
    unparsed: Vec<u8>,
}

/// `--conns` streams on one channel and their event loop.
struct Streams {
    poll: Poll,
    streams: Vec<Stream>,
    request: Vec<u8>,
    opening: usize,
    idle: usize,
    got: usize,
    /// Whether the event has been published: before that, any event is an error.
    published: bool,
    /// The read buffer shared by all streams.
    chunk: Vec<u8>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for s in &self.streams {
            let _ = SockRef::from(&s.sock).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Runs the scenario; `res.sse` holds its figures.
pub fn sse_density(o: &Options, res: &mut Results) -> Result<(), String> {
    let n = o.conns;
    let before = if o.pids.is_empty() {
        note!("sse-density: no --pid given: opening streams without memory readings");
        None
    } else {
        Some(procfs::pss_kb(&o.pids)?)
    };
    let channel = channel_name("sse");
    let mut request = b"GET /pns/poll?channel=".to_vec();
    percent_encode(&channel, &mut request);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    request.extend_from_slice(o.host.as_bytes());
    request.extend_from_slice(b"\r\nAccept: text/event-stream\r\n\r\n");
    let mut s = Streams {
        poll: Poll::new().map_err(|e| format!("sse-density: cannot create poller: {e}"))?,
        streams: Vec::with_capacity(n),
        request,
        opening: 0,
        idle: 0,
        got: 0,
        published: false,
        chunk: vec![0; READ_CHUNK],
    };
    let mut events = Events::with_capacity(EVENTS_CAPACITY);
    let start = Instant::now();
    let deadline = start + OPEN_BASE + OPEN_PER_STREAM * n as u32;
    let mut next_stats = start;
    loop {
        while s.streams.len() < n && s.opening < MAX_OPENING {
            s.open(o)?;
        }
        s.turn(&mut events)?;
        let now = Instant::now();
        if s.idle == n && now >= next_stats {
            next_stats = now + STATS_EVERY;
            let v = dialect::pnsd_stats(o)?;
            let streams = v.get("streams").and_then(|p| p.as_u64());
            if streams == Some(n as u64) {
                break;
            }
            if now > deadline {
                return Err(format!(
                    "sse-density: every preamble read but the server reports {streams:?} streams of {n}"
                ));
            }
        } else if now > deadline {
            return Err(format!(
                "sse-density: {} of {n} streams open after {:.0} s ({} opening)",
                s.idle,
                (now - start).as_secs_f64(),
                s.opening
            ));
        }
    }
    note!(
        "sse-density: {n} streams open in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let pause_end = Instant::now() + DENSITY_PAUSE;
    while Instant::now() < pause_end {
        s.turn(&mut events)?;
    }
    let mut d = SseDensity {
        streams: n,
        ..SseDensity::default()
    };
    if let Some(b) = before {
        let after = procfs::pss_kb(&o.pids)?;
        d.pss_idle_kb = Some(b);
        d.pss_streams_kb = Some(after);
        d.bytes_per_stream = Some((after as f64 - b as f64) * 1024.0 / n as f64);
        note!(
            "sse-density: PSS {b} kB -> {after} kB: {:.0} B per idle SSE stream",
            d.bytes_per_stream.unwrap_or(0.0)
        );
    }
    s.published = true;
    let t0 = Instant::now();
    dialect::publish_blocking(o, &channel, &format!("{{\"seq\":{SEQ},\"sse\":true}}"))
        .map_err(|e| format!("sse-density: {e}"))?;
    while s.got < n {
        if t0.elapsed() > EVENT_DEADLINE {
            return Err(format!(
                "sse-density: {} of {n} streams received the event after {} s",
                s.got,
                EVENT_DEADLINE.as_secs()
            ));
        }
        s.turn(&mut events)?;
    }
    d.received = s.got;
    d.event_ms = t0.elapsed().as_secs_f64() * 1000.0;
    note!(
        "sse-density: every one of {n} streams received the event in {:.1} ms",
        d.event_ms
    );
    res.sse = Some(d);
    Ok(())
}

impl Streams {
    /// Opens the next stream (its request is written once it is writable).
    fn open(&mut self, o: &Options) -> Result<(), String> {
        let i = self.streams.len();
        let addr = o.addrs[i % o.addrs.len()];
        let mut sock = TcpStream::connect(addr)
            .map_err(|e| format!("sse-density: cannot connect to {addr}: {e}"))?;
        self.poll
            .registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("sse-density: cannot register stream {i}: {e}"))?;
        self.streams.push(Stream {
            sock,
            unsent: self.request.len(),
            head_read: false,
            phase: Phase::Opening,
            unparsed: Vec::new(),
        });
        self.opening += 1;
        Ok(())
    }

    /// One turn of the event loop: writes pending requests, reads and parses what arrived.
    fn turn(&mut self, events: &mut Events) -> Result<(), String> {
        match self.poll.poll(events, Some(TICK)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(format!("sse-density: poll: {e}")),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            if ev.is_writable() && self.streams[i].unsent > 0 {
                self.write(i)?;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                self.read(i)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, i: usize) -> Result<(), String> {
        let s = &mut self.streams[i];
        let from = self.request.len() - s.unsent;
        match s.sock.write(&self.request[from..]) {
            Ok(k) => s.unsent -= k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {}
            Err(e) => return Err(format!("sse-density: stream {i}: writing its request: {e}")),
        }
        Ok(())
    }

    fn read(&mut self, i: usize) -> Result<(), String> {
        loop {
            match self.streams[i].sock.read(&mut self.chunk) {
                Ok(0) => return Err(format!("sse-density: stream {i} closed by the server")),
                Ok(k) => {
                    let s = &mut self.streams[i];
                    s.unparsed.extend_from_slice(&self.chunk[..k]);
                    if s.unparsed.len() > MAX_UNPARSED {
                        return Err(format!(
                            "sse-density: stream {i}: {} bytes without an event's end",
                            s.unparsed.len()
                        ));
                    }
                    self.parse(i)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("sse-density: stream {i}: {e}")),
            }
        }
    }

    /// Consumes the complete head and events in stream `i`'s unparsed bytes.
    fn parse(&mut self, i: usize) -> Result<(), String> {
        let s = &mut self.streams[i];
        if !s.head_read {
            let Some(end) = find(&s.unparsed, b"\r\n\r\n") else {
                return Ok(());
            };
            let head = String::from_utf8_lossy(&s.unparsed[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200 ")
                || !head.contains("\r\ncontent-type: text/event-stream")
            {
                let first = head.lines().next().unwrap_or("");
                return Err(format!(
                    "sse-density: stream {i}: not an event stream: {first}"
                ));
            }
            s.head_read = true;
            s.unparsed.drain(..end + 4);
        }
        while let Some(end) = find(&s.unparsed, b"\n\n") {
            let block: Vec<u8> = s.unparsed.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let event = Event::of(&text);
            if event.retry {
                if s.phase != Phase::Opening {
                    return Err(format!("sse-density: stream {i}: a second retry: line"));
                }
                s.phase = Phase::Idle;
                self.opening -= 1;
                self.idle += 1;
            }
            let Some(data) = event.data else {
                continue; // a comment (heartbeat) or the preamble
            };
            if !self.published || s.phase != Phase::Idle {
                return Err(format!(
                    "sse-density: stream {i}: unexpected event {text:?}"
                ));
            }
            if !event.id || event.name.is_some_and(|n| n != "message") {
                return Err(format!(
                    "sse-density: stream {i}: not a message event: {text:?}"
                ));
            }
            let v: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| format!("sse-density: stream {i}: data is not JSON ({e}): {data}"))?;
            if v.pointer("/data/seq").and_then(|q| q.as_u64()) != Some(SEQ) {
                return Err(format!(
                    "sse-density: stream {i}: not the published message: {data}"
                ));
            }
            s.phase = Phase::Got;
            self.got += 1;
        }
        Ok(())
    }
}

/// The fields of one event block that the scenario checks.
struct Event<'a> {
    retry: bool,
    id: bool,
    name: Option<&'a str>,
    /// The `data:` lines joined with LF, as `EventSource` does.
    data: Option<String>,
}

impl<'a> Event<'a> {
    fn of(block: &'a str) -> Event<'a> {
        let mut e = Event {
            retry: false,
            id: false,
            name: None,
            data: None,
        };
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "retry" => e.retry = true,
                "id" => e.id = !value.is_empty(),
                "event" => e.name = Some(value),
                "data" => match e.data.as_mut() {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => e.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        e
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
