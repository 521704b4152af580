//! One reactor thread: a `mio::Poll`, its own listeners (SO_REUSEPORT), its own connections,
//! hold wheel, waiter index and buffer pool. The loop only dispatches: sockets to `Conn`,
//! requests to `poll::handle`, wake-ups from the publish thread to `on_published`, ticks to the
//! wheel.
//!
//! Tokens: `WAKER` (0) is the publish thread's wake-up; `LISTENER_BASE + i` are the listeners;
//! `CONN_BASE + key` are connections (slab keys). A token whose entry is gone is ignored.
//!
//! Invariants:
//! - Readiness is edge-triggered; a connection's `readable` bit is cleared only by a read that
//!   reached `WouldBlock`, end of stream, or came back short (the socket held less than asked:
//!   anything later raises a new edge), so no edge is lost when work is deferred.
//! - Every armed timer belongs to a live connection: `close` cancels before removing.
//! - A parked connection is in `Waiters` exactly while `phase == Parked`; the `parked` counter
//!   moves with `park` and `unpark` only.
//! - Work per event is capped (`MAX_REQUESTS_PER_TURN`, `ACCEPT_BATCH`); what is left goes to
//!   the `ready` queue and is served before the next blocking poll, so one busy client cannot
//!   starve the others.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::backoff::AcceptBackoff;
use crate::conn::{Conn, OutBytes, Phase, ReadEnd};
use crate::http::{self, Method, MAX_HEAD};
use crate::hub::{Command, Hub};
use crate::poll::{self, Outcome, Park, MAX_PER_ANSWER};
use crate::pool::BufferPool;
use crate::response::{self, Extra};
use crate::waiters::{self, Waiters};
use crate::wheel::HoldWheel;

pub const WAKER: Token = Token(0);
pub const LISTENER_BASE: usize = 1;
/// Connections start here; at most `CONN_BASE - LISTENER_BASE` listen addresses.
pub const CONN_BASE: usize = 64;
pub const MAX_LISTENERS: usize = CONN_BASE - LISTENER_BASE;

/// Wheel resolution: hold times are whole seconds, so 100 ms is ample and keeps ticks cheap.
pub const TICK_MS: u64 = 100;
/// Contract: the head must be complete within 10 s of accept or of a request's first byte.
pub const HEAD_TIMEOUT_MS: u64 = 10_000;
/// Contract: a connection with no request in flight is closed after 75 s.
pub const IDLE_TIMEOUT_MS: u64 = 75_000;
/// A client that does not take a response within this time is dropped (its output is
/// bounded to one response, but the slot is not given away forever).
pub const WRITE_TIMEOUT_MS: u64 = 30_000;
/// Accepts per listener readiness before other work gets a turn.
pub const ACCEPT_BATCH: usize = 256;
/// Requests one connection may have handled per turn (pipelining) before others get a turn.
pub const MAX_REQUESTS_PER_TURN: usize = 32;
/// Events taken from epoll per wake-up.
const EVENTS: usize = 1024;
/// Read buffers kept free in the pool: enough for a burst, bounded whatever the load was.
const POOL_KEEP: usize = 64;
/// A body larger than this on a non-GET request is not skipped: the connection is closed.
const MAX_SKIP: u64 = 1 << 20;
/// The drain's deadline: the process must exit within 5 s of the signal.
pub const DRAIN_MS: u64 = 4_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    Listener(usize),
    Conn(u32),
}

/// See the module documentation.
pub struct Reactor {
    poll: Poll,
    listeners: Vec<TcpListener>,
    conns: Slab<Conn>,
    wheel: HoldWheel,
    waiters: Waiters,
    pool: BufferPool,
    hub: Arc<Hub>,
    commands: Receiver<Command>,
    ready: VecDeque<Ready>,
    expired: Vec<u32>,
    scratch: Vec<u32>,
    /// `on_published`'s answers by (cursor, close), empty between calls.
    shared: HashMap<(u64, bool), Option<SharedAnswer>>,
    drain_until: Option<u64>,
    accept_backoff: AcceptBackoff,
    epoch: u64,
    /// The clock (ms) read once per loop turn: every deadline and store read of the turn uses
    /// it, so a turn is one instant and the clock costs one read, not one per request.
    now: u64,
}

fn tick_of(ms: u64) -> u32 {
    // Round up so a deadline never fires early; saturates after 13 years.
    u32::try_from(ms.div_ceil(TICK_MS)).unwrap_or(u32::MAX)
}

impl Reactor {
    /// Registers `listeners` with `poll` (whose waker uses `WAKER`).
    pub fn new(
        poll: Poll,
        listeners: Vec<TcpListener>,
        hub: Arc<Hub>,
        commands: Receiver<Command>,
    ) -> io::Result<Reactor> {
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        let max_hold_ticks = tick_of(hub.config.max_hold_secs.saturating_mul(1000)) as usize;
        // One revolution covers the longest hold, so a tick walks only due timers; capped so a
        // huge --max-hold does not allocate a huge wheel (later revolutions are still correct).
        let slots = (max_hold_ticks + 1)
            .next_power_of_two()
            .clamp(1024, 1 << 16);
        let now = hub.clock.now_ms();
        let epoch = hub.read().epoch();
        // Capacities fixed at start: the slab's virtual size is the connection limit; pages are
        // touched only as connections arrive.
        let capacity = hub.max_connections.min(1 << 20);
        let conns = Slab::with_capacity(capacity);
        Ok(Reactor {
            poll,
            listeners,
            conns,
            wheel: HoldWheel::new(slots, tick_of(now)),
            waiters: Waiters::with_capacity(capacity),
            pool: BufferPool::new(MAX_HEAD, POOL_KEEP),
            hub,
            commands,
            ready: VecDeque::new(),
            expired: Vec::new(),
            scratch: Vec::new(),
            shared: HashMap::new(),
            drain_until: None,
            accept_backoff: AcceptBackoff::default(),
            epoch,
            now,
        })
    }

    /// Runs until the drain is complete.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("poll failed: {e}");
                }
                continue;
            }
            self.now = self.hub.clock.now_ms();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if (LISTENER_BASE..CONN_BASE).contains(&t) => {
                        self.accept(t - LISTENER_BASE)
                    }
                    Token(t) => self.conn_event(t - CONN_BASE, ev),
                }
            }
            self.commands();
            self.tick();
            self.serve_ready();
            if let Some(until) = self.drain_until {
                if self.conns.is_empty() || self.now >= until {
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        if self.wheel.is_empty() && self.drain_until.is_none() && !self.accept_backoff.is_paused() {
            return None;
        }
        let now = self.hub.clock.now_ms();
        Some(Duration::from_millis(TICK_MS - now % TICK_MS))
    }

    // ---- accepting

    fn accept(&mut self, i: usize) {
        if self.accept_backoff.is_paused() || self.drain_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => self.admit(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connections stay in the
                    // backlog; retry after a pause instead of spinning on the edge.
                    self.accept_backoff.failed(self.now, "HTTP", &e);
                    return;
                }
            }
        }
        self.ready.push_back(Ready::Listener(i));
    }

    fn admit(&mut self, mut sock: TcpStream) {
        let counters = &self.hub.counters;
        let held = counters.connections.fetch_add(1, Ordering::Relaxed);
        if held >= self.hub.max_connections {
            counters.connections.fetch_sub(1, Ordering::Relaxed);
            let mut bytes = Vec::with_capacity(256);
            response::write_error(&mut bytes, &response::OVER_CAPACITY, &Extra::default());
            // Best effort: a fresh socket's send buffer takes this small answer at once.
            let _ = io::Write::write(&mut sock, &bytes);
            return;
        }
        let _ = sock.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(CONN_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register failed: {e}");
            counters.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        entry.insert(Conn::new(sock));
        self.arm(key as u32, HEAD_TIMEOUT_MS);
    }

    // ---- events

    fn conn_event(&mut self, key: usize, ev: &mio::event::Event) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if ev.is_error() {
            self.close(key as u32);
            return;
        }
        if ev.is_readable() {
            c.readable = true;
        }
        if ev.is_read_closed() {
            c.read_closed = true;
        }
        if c.phase == Phase::Parked && c.read_closed {
            // Contract: a client that hangs up or half-closes while parked is forgotten at once.
            self.close(key as u32);
            return;
        }
        self.drive(key as u32);
    }

    fn serve_ready(&mut self) {
        for _ in 0..self.ready.len() {
            match self.ready.pop_front() {
                Some(Ready::Listener(i)) => self.accept(i),
                Some(Ready::Conn(k)) => {
                    if self.conns.contains(k as usize) {
                        self.drive(k)
                    }
                }
                None => break,
            }
        }
    }

    // ---- the connection state machine

    /// Moves connection `key` forward as far as it can go now.
    fn drive(&mut self, key: u32) {
        let mut buf: Option<Vec<u8>> = None; // borrowed from the pool for this turn
        let mut filled = 0;
        let mut start = 0;
        let mut skip = 0u64;
        let mut loaded = false;
        let mut requests = 0;
        let outcome = loop {
            let Some(c) = self.conns.get_mut(key as usize) else {
                break Step::Gone;
            };
            if c.has_output() {
                match c.flush() {
                    Ok(true) if !c.close_after => {
                        // The write deadline is over; the connection waits for a request again.
                        let t = next_request_timeout(c);
                        self.arm(key, t);
                        continue;
                    }
                    Ok(true) => {}
                    Ok(false) => break Step::Wait,
                    Err(_) => break Step::Close,
                }
            }
            if c.phase == Phase::Parked {
                // Even with close_after: a parked HTTP/1.0 or `Connection: close` poll is
                // answered first (`respond` closes after its answer is written).
                break Step::Wait;
            }
            if c.close_after {
                break Step::Close;
            }
            if requests == MAX_REQUESTS_PER_TURN {
                break Step::Later;
            }
            if !loaded {
                let (input, s) = c.take_input();
                skip = s;
                if !input.is_empty() || c.readable {
                    let mut b = self.pool.take();
                    if input.len() > b.len() {
                        b.resize(input.len(), 0);
                    }
                    b[..input.len()].copy_from_slice(&input);
                    filled = input.len();
                    buf = Some(b);
                }
                loaded = true;
            }
            let Some(b) = buf.as_mut() else {
                break Step::Wait;
            };
            // Discard a previous request's body.
            let n = skip.min((filled - start) as u64) as usize;
            start += n;
            skip -= n as u64;
            let pending = &b[start..filled];
            let parsed = if skip == 0
                && !pending.is_empty()
                && (http::may_be_complete(pending, 0) || pending.len() >= MAX_HEAD)
            {
                http::parse_head(pending)
            } else {
                Ok(None)
            };
            match parsed {
                Ok(Some(head)) => {
                    start += head.head_len;
                    requests += 1;
                    if head.method != Method::Get {
                        if head.transfer_encoding || head.content_length > MAX_SKIP {
                            c.close_after = true;
                        } else {
                            skip = head.content_length;
                        }
                    }
                    let close_anyway = c.close_after;
                    if c.phase == Phase::Idle {
                        c.phase = Phase::Head;
                    }
                    let now = self.now;
                    match poll::handle(&head, &self.hub, now) {
                        Outcome::Respond {
                            bytes,
                            close,
                            delivered,
                        } => {
                            if delivered {
                                self.hub.counters.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            if !self.respond(key, OutBytes::Owned(bytes), close || close_anyway) {
                                break Step::Gone;
                            }
                        }
                        Outcome::Park(p) => {
                            self.park(key, p);
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let err = match e {
                        http::HeadError::TooLarge => response::HEAD_TOO_LARGE,
                        http::HeadError::Malformed => response::BAD_REQUEST,
                    };
                    self.respond_error(key, &err);
                    continue;
                }
            }
            // Need more bytes.
            if !c.readable {
                if c.read_closed && start == filled {
                    // The peer sent its last request and everything is answered.
                    break Step::Close;
                }
                break Step::Wait;
            }
            if start > 0 {
                b.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            }
            if b.len() < MAX_HEAD {
                b.resize(MAX_HEAD, 0);
            }
            let was_empty = filled == 0;
            match c.read_into(b, &mut filled) {
                Ok(ReadEnd::Eof) if filled == 0 => break Step::Close,
                Ok(ReadEnd::Eof) => {
                    // Whatever complete requests remain are served; an incomplete one is not.
                    if !http::may_be_complete(&b[..filled], 0) && skip == 0 {
                        break Step::Close;
                    }
                }
                Ok(_) => {}
                Err(_) => break Step::Close,
            }
            if was_empty && filled > 0 && c.phase == Phase::Idle {
                // The first byte of a later request: the head deadline starts now.
                c.phase = Phase::Head;
                self.arm(key, HEAD_TIMEOUT_MS);
            }
        };
        // Settle: keep unparsed bytes in an exact-size buffer, give the pool buffer back.
        if let Some(b) = buf {
            if let Some(c) = self.conns.get_mut(key as usize) {
                c.keep_input(&b[start..filled], skip);
            }
            self.pool.give(b);
        } else if loaded {
            if let Some(c) = self.conns.get_mut(key as usize) {
                c.keep_input(&[], skip);
            }
        }
        match outcome {
            Step::Close => self.close(key),
            Step::Later => self.ready.push_back(Ready::Conn(key)),
            Step::Wait | Step::Gone => {}
        }
    }

    /// Starts sending a response; false if the connection was closed on the way.
    fn respond(&mut self, key: u32, bytes: OutBytes, close: bool) -> bool {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return false;
        };
        c.close_after |= close;
        match c.send(bytes) {
            Ok(true) => {
                if c.close_after {
                    self.close(key);
                    return false;
                }
                c.phase = if c.has_input() {
                    Phase::Head
                } else {
                    Phase::Idle
                };
                let t = next_request_timeout(c);
                self.arm(key, t);
                true
            }
            Ok(false) => {
                c.phase = Phase::Idle;
                self.arm(key, WRITE_TIMEOUT_MS);
                true
            }
            Err(_) => {
                self.close(key);
                false
            }
        }
    }

    fn respond_error(&mut self, key: u32, err: &response::ApiError) {
        let mut bytes = Vec::with_capacity(256);
        response::write_error(&mut bytes, err, &Extra::default());
        self.respond(key, OutBytes::Owned(bytes), err.closes());
    }

    fn park(&mut self, key: u32, p: Park) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if c.read_closed {
            self.close(key);
            return;
        }
        c.phase = Phase::Parked;
        c.after = p.after;
        c.close_after = p.close;
        c.waits = self.waiters.park(key, &p.channels);
        self.hub.counters.parked.fetch_add(1, Ordering::Relaxed);
        self.arm(key, p.hold_ms);
    }

    /// Takes a parked poll out of the waiter index (its timer is re-armed by the caller).
    fn unpark(&mut self, key: u32) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            if c.phase == Phase::Parked {
                self.waiters.unpark(c.waits);
                c.waits = waiters::NIL;
                c.phase = Phase::Idle;
                self.hub.counters.parked.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers a parked poll with `bytes` and carries on with the connection.
    fn answer_parked(&mut self, key: u32, bytes: OutBytes, delivered: bool) {
        self.unpark(key);
        if delivered {
            self.hub.counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
        let close = self.conns.get(key as usize).is_some_and(|c| c.close_after);
        if self.respond(key, bytes, close) {
            let behind = self
                .conns
                .get(key as usize)
                .is_some_and(|c| c.readable || c.has_input());
            if behind {
                // A pipelined request waits behind the answer: serve it after this turn.
                self.ready.push_back(Ready::Conn(key));
            }
        }
    }

    /// Reads the store for a parked poll; `None` when nothing is there for it yet.
    fn parked_answer(&self, key: u32, even_if_empty: bool) -> Option<(Vec<u8>, bool)> {
        let c = self.conns.get(key as usize)?;
        let chans = self.waiters.channels_of(c.waits);
        let now = self.now;
        let found = self.hub.read().read(&chans, c.after, now, MAX_PER_ANSWER);
        if found.messages.is_empty() && !found.reset && !even_if_empty {
            return None;
        }
        let delivered = !found.messages.is_empty();
        let cors = self.hub.config.cors_origin.as_deref();
        Some((
            poll::answer(&found, &chans, self.epoch, c.close_after, cors),
            delivered,
        ))
    }

    fn close(&mut self, key: u32) {
        if !self.conns.contains(key as usize) {
            return;
        }
        self.unpark(key);
        self.wheel.cancel(&mut self.conns, key);
        let mut c = self.conns.remove(key as usize);
        let _ = self.poll.registry().deregister(&mut c.sock);
        self.hub
            .counters
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    fn arm(&mut self, key: u32, after_ms: u64) {
        let deadline = tick_of(self.now.saturating_add(after_ms));
        self.wheel.insert(&mut self.conns, key, deadline);
    }

    // ---- time

    fn tick(&mut self) {
        let now = self.now;
        if self.accept_backoff.resume(now) {
            for i in 0..self.listeners.len() {
                self.ready.push_back(Ready::Listener(i));
            }
        }
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel
            .advance(&mut self.conns, tick_of(now), &mut expired);
        for &key in &expired {
            self.expire(key);
        }
        expired.clear();
        self.expired = expired;
    }

    fn expire(&mut self, key: u32) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if c.has_output() {
            debug!("dropping a client that stopped reading");
            self.close(key);
            return;
        }
        match c.phase {
            Phase::Idle => self.close(key),
            Phase::Head => self.respond_error(key, &response::REQUEST_TIMEOUT),
            Phase::Parked => {
                // The hold ran out: answer from a fresh read, so a message published just now
                // (its wake-up still queued) is delivered, not skipped.
                if let Some((bytes, delivered)) = self.parked_answer(key, true) {
                    self.answer_parked(key, OutBytes::Owned(bytes), delivered);
                }
            }
        }
    }

    // ---- commands from other threads

    fn commands(&mut self) {
        // Bounded by what was queued: the publish thread sends at most one command per batch.
        loop {
            match self.commands.try_recv() {
                Ok(Command::Published { last_seq, channels }) => {
                    for ch in channels.iter() {
                        self.on_published(ch, last_seq);
                    }
                }
                Ok(Command::WaitingChannels(reply)) => {
                    let _ = reply.send(self.waiters.channel_names().map(Box::from).collect());
                }
                Ok(Command::Drain) => self.drain(),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    if self.drain_until.is_none() {
                        self.drain();
                    }
                    return;
                }
            }
        }
    }

    /// Wakes the polls parked on `channel` that have something to receive. Polls on this one
    /// channel with the same cursor get the same answer: it is encoded once and shared.
    fn on_published(&mut self, channel: &str, last_seq: u64) {
        let started = std::time::Instant::now();
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.waiters.waiting_on(channel, &mut keys);
        let mut shared = std::mem::take(&mut self.shared);
        // A handle on the hub (one refcount), so the origin is borrowed while `self` changes.
        let hub = self.hub.clone();
        let cors = hub.config.cors_origin.as_deref();
        for &key in &keys {
            let Some(c) = self.conns.get(key as usize) else {
                continue;
            };
            if c.phase != Phase::Parked || c.after >= last_seq {
                continue;
            }
            if self.waiters.is_single(c.waits) {
                let k = (c.after, c.close_after);
                let entry = shared.entry(k).or_insert_with(|| {
                    let now = self.now;
                    let found = self.hub.read().read(&[channel], k.0, now, MAX_PER_ANSWER);
                    if found.messages.is_empty() && !found.reset {
                        return None;
                    }
                    let bytes = poll::answer(&found, &[channel], self.epoch, k.1, cors);
                    Some((Arc::new(bytes), !found.messages.is_empty()))
                });
                if let Some((bytes, delivered)) = entry.clone() {
                    self.answer_parked(key, OutBytes::Shared(bytes), delivered);
                }
            } else if let Some((bytes, delivered)) = self.parked_answer(key, false) {
                self.answer_parked(key, OutBytes::Owned(bytes), delivered);
            }
        }
        if keys.len() >= 1000 {
            debug!(
                "woke {} polls on {channel} in {} us",
                keys.len(),
                started.elapsed().as_micros()
            );
        }
        self.scratch = keys;
        // Emptied (the answers are owned by the connections now), its table kept for the next.
        shared.clear();
        self.shared = shared;
    }

    /// Section 6: stop accepting, answer every parked poll c=0 without advancing its cursor,
    /// let writes in flight finish, close the rest.
    fn drain(&mut self) {
        let now = self.now;
        self.drain_until = Some(now + DRAIN_MS);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        let hub = self.hub.clone();
        let cors = hub.config.cors_origin.as_deref();
        for key in keys {
            let Some(c) = self.conns.get_mut(key as usize) else {
                continue;
            };
            c.close_after = true;
            if c.has_output() {
                continue;
            }
            match c.phase {
                Phase::Parked => {
                    let bytes = poll::empty_answer(self.epoch, c.after, true, cors);
                    self.answer_parked(key, OutBytes::Owned(bytes), false);
                }
                Phase::Head if c.has_input() => self.respond_error(key, &response::DRAINING),
                _ => self.close(key),
            }
        }
    }
}

/// One encoded answer for every poll with the same cursor, and whether it carries messages.
type SharedAnswer = (Arc<Vec<u8>>, bool);

/// The deadline of a connection waiting for its next request: the head deadline when bytes of
/// it are already here, else the keep-alive idle deadline.
fn next_request_timeout(c: &Conn) -> u64 {
    if c.has_input() {
        HEAD_TIMEOUT_MS
    } else {
        IDLE_TIMEOUT_MS
    }
}

enum Step {
    /// Waiting for readiness or a wake-up.
    Wait,
    /// More to do; come back after others had a turn.
    Later,
    Close,
    /// Already closed.
    Gone,
}
