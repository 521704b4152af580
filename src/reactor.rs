//! One reactor thread: a `mio::Poll`, its own listeners (SO_REUSEPORT), its own connections,
//! hold wheel, parked subscribers and buffer pool. The loop only dispatches: listener
//! readiness to `accept`, connection readiness to `Conn::on_ready`, wake-ups from the publish
//! thread to `Parked::on_published`, wheel ticks to `Conn::on_timer` and
//! `Parked::on_due`; each connection answers with a `conn::Step` that `apply` carries out
//! (arm the timer, park, queue for later, close).
//!
//! Tokens: `WAKER` (0) is the publish thread's wake-up; `LISTENER_BASE + i` are the listeners;
//! `CONN_BASE + key` are connections (slab keys). A token whose entry is gone is ignored.
//!
//! Invariants:
//! - Time is a parameter: the clock is handed in (`hub::Clock`, manual in tests) and read once
//!   per loop turn; every deadline and store read of the turn uses that instant.
//! - Every armed timer belongs to a live connection: `close` cancels before removing.
//! - Work per turn is bounded: accepts per listener (`ACCEPT_BATCH`), requests per connection
//!   (`conn::MAX_REQUESTS_PER_TURN`) and expiries (`EXPIRE_SLICE`); what is left waits in the
//!   `ready` queue or the expiry backlog and is served after a zero-timeout poll, so a publish
//!   wake-up or an accept is never held behind it. A backlog expiry whose connection was
//!   re-armed (or replaced: a new connection is armed at once) since is skipped.
//! - This reactor's `connections` gauge moves with the slab; `parked` owns the other gauges.
//! - Everything `/metrics` and the access log learn goes through `observer`: relaxed counters
//!   on this reactor's own gauges, and (with `--access-log`) records taken `Step::answered` at
//!   a time in `apply`, before a close can forget the connection; the log's buffer is written
//!   once at the end of each loop turn. A publish wake-up that answered someone records its
//!   fan-out time (`Command::Published::accepted` to the end of the wake-up).
//! - An event stream is parked after each write; a stream whose output drained (or whose
//!   batch was full) is queued to catch up from its cursor (`Ready::CatchUp`), a batch a turn.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::backoff::AcceptBackoff;
use crate::conn::{Conn, Ctx, Next, Step};
use crate::http::MAX_HEAD;
use crate::hub::{Clock, Command, Hub};
use crate::observer::Observer;
use crate::parked::{Due, Parked};
use crate::pool::BufferPool;
use crate::response;
use crate::sockio::{self, Accepted, Lingering};
use crate::wheel::{tick_up, HoldWheel, TICK_MS};

/// A connection's context from the reactor's fields (a macro, so the other fields stay free
/// to borrow).
macro_rules! cx {
    ($r:expr) => {
        Ctx {
            hub: &$r.hub,
            pool: &mut $r.pool,
            now: $r.now,
            observer: &mut $r.observer,
        }
    };
}

pub const WAKER: Token = Token(0);
pub const LISTENER_BASE: usize = 1;
/// Connections start here; at most `CONN_BASE - LISTENER_BASE` listen addresses.
pub const CONN_BASE: usize = 64;
pub const MAX_LISTENERS: usize = CONN_BASE - LISTENER_BASE;

/// Accepts per listener readiness before other work gets a turn.
pub const ACCEPT_BATCH: usize = 256;
/// Expiries handled per loop turn: thousands of holds due in the same tick are answered in
/// slices of this many (about a millisecond of work each), with a poll for new events between
/// them (condure caps its expiries per turn the same way).
pub const EXPIRE_SLICE: usize = 1024;
/// Events taken from epoll per wake-up.
const EVENTS: usize = 1024;
/// Connections refused at `--max-connections` kept at once per reactor after their 503 (a
/// connect flood past it closes the oldest at once: refusals never pin more descriptors).
const REFUSED_KEPT: usize = 32;
/// How long a refused connection is kept, its request read and dropped, so that closing it
/// sends a FIN and not a reset that could cost the client its 503.
const REFUSED_LINGER_MS: u64 = 200;
/// Read buffers kept free in the pool: enough for a burst, bounded whatever the load was.
const POOL_KEEP: usize = 64;
/// The drain's deadline: the process must exit within 5 s of the signal.
pub const DRAIN_MS: u64 = 4_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    Listener(usize),
    Conn(u32),
    /// A stream to catch up from its cursor (queued, so a long backlog is sent a batch per
    /// turn, not in one recursion).
    CatchUp(u32),
}

/// See the module documentation.
pub struct Reactor {
    poll: Poll,
    listeners: Vec<TcpListener>,
    conns: Slab<Conn<TcpStream>>,
    wheel: HoldWheel,
    parked: Parked,
    pool: BufferPool,
    hub: Arc<Hub>,
    clock: Clock,
    /// This reactor's index in `hub.gauges`.
    index: usize,
    commands: Receiver<Command>,
    ready: VecDeque<Ready>,
    /// Connections whose timer fired, handled from `expired_at` on in slices.
    expired: Vec<u32>,
    expired_at: usize,
    /// Scratch: the subscribers of one slice whose hold ran out.
    held: Vec<u32>,
    /// Scratch: steps to apply after a walk over many connections.
    steps: Vec<(u32, Step)>,
    drain_until: Option<u64>,
    accept_backoff: AcceptBackoff,
    /// Connections refused at `--max-connections`, kept a moment after their 503.
    refused: Lingering<TcpStream>,
    /// Counts every response for `/metrics` and records it for the access log.
    observer: Observer,
    /// The clock (ms) read once per loop turn.
    now: u64,
}

impl Reactor {
    /// Reactor `index` (of `hub.gauges`) on `clock`; registers `listeners` with `poll` (whose
    /// waker uses `WAKER`).
    pub fn new(
        poll: Poll,
        listeners: Vec<TcpListener>,
        hub: Arc<Hub>,
        commands: Receiver<Command>,
        index: usize,
        clock: Clock,
    ) -> io::Result<Reactor> {
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        let max_hold_ticks = tick_up(hub.config.max_hold_secs.saturating_mul(1000)) as usize;
        // One revolution covers the longest hold, so a tick walks only due timers; capped so a
        // huge --max-hold does not allocate a huge wheel (later revolutions are still correct).
        let slots = (max_hold_ticks + 1)
            .next_power_of_two()
            .clamp(1024, 1 << 16);
        let now = clock.now_ms();
        // Capacities fixed at start: the slab's virtual size is the connection limit; pages are
        // touched only as connections arrive.
        let capacity = hub.max_connections.min(1 << 20);
        let index = index.min(hub.gauges.len().saturating_sub(1));
        let log = match &hub.access_log {
            Some(l) => Some(l.for_reactor()?),
            None => None,
        };
        Ok(Reactor {
            poll,
            listeners,
            conns: Slab::with_capacity(capacity),
            wheel: HoldWheel::new(slots, tick_up(now)),
            parked: Parked::new(capacity, index),
            pool: BufferPool::new(MAX_HEAD, POOL_KEEP),
            hub,
            clock,
            index,
            commands,
            ready: VecDeque::new(),
            expired: Vec::new(),
            expired_at: 0,
            held: Vec::new(),
            steps: Vec::new(),
            drain_until: None,
            accept_backoff: AcceptBackoff::default(),
            refused: Lingering::new(REFUSED_KEPT, REFUSED_LINGER_MS),
            observer: Observer::new(index, log),
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
            self.now = self.clock.now_ms();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if (LISTENER_BASE..CONN_BASE).contains(&t) => {
                        self.accept(t - LISTENER_BASE)
                    }
                    Token(t) => {
                        let key = (t - CONN_BASE) as u32;
                        let (r, c, e) = (ev.is_readable(), ev.is_read_closed(), ev.is_error());
                        self.on_conn(key, |conn, cx| conn.on_ready(r, c, e, cx));
                    }
                }
            }
            self.commands();
            self.tick();
            self.serve_ready();
            self.observer.end_turn();
            if let Some(until) = self.drain_until {
                if self.conns.is_empty() || self.now >= until {
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || self.expired_at < self.expired.len() {
            return Some(Duration::ZERO);
        }
        if self.wheel.is_empty()
            && self.drain_until.is_none()
            && !self.accept_backoff.is_paused()
            && self.refused.is_empty()
        {
            return None;
        }
        let now = self.clock.now_ms();
        Some(Duration::from_millis(TICK_MS - now % TICK_MS))
    }

    /// Runs one entry point of connection `key` (if it is still there) and applies its step.
    fn on_conn(&mut self, key: u32, f: impl FnOnce(&mut Conn<TcpStream>, &mut Ctx<'_>) -> Step) {
        let (mut cx, conns) = (cx!(self), &mut self.conns);
        let Some(c) = conns.get_mut(key as usize) else {
            return;
        };
        let step = f(c, &mut cx);
        self.apply(key, step);
    }

    /// Carries out what a connection asked for.
    fn apply(&mut self, key: u32, step: Step) {
        if step.answered > 0 {
            let conn = self.conns.get(key as usize);
            let peer = || conn.and_then(|c| c.sock().peer_addr().ok());
            self.observer
                .answered_by(key, step.answered, peer, self.now);
        }
        if matches!(step.next, Next::Close) || !self.conns.contains(key as usize) {
            self.close(key);
            return;
        }
        if let Some(tick) = step.timer {
            self.wheel.insert(&mut self.conns, key, tick);
        }
        match step.next {
            Next::Wait | Next::Close => {}
            Next::Later => self.ready.push_back(Ready::Conn(key)),
            Next::Park(p) => {
                if let Some(c) = self.conns.get_mut(key as usize) {
                    self.parked.park(key, c, &p.channels, &self.hub);
                    self.observer.parked(key, self.now, p.channels.len());
                }
                if p.more {
                    self.ready.push_back(Ready::CatchUp(key));
                }
            }
            Next::Answer => self.answer_parked(&[key], Due::HoldOver),
            Next::CatchUp => self.ready.push_back(Ready::CatchUp(key)),
        }
    }

    /// Has `parked` answer the parked subscribers `keys` (hold or token over, or the drain's
    /// answer) with one encode-once cache, and applies their steps.
    fn answer_parked(&mut self, keys: &[u32], reason: Due) {
        let mut steps = std::mem::take(&mut self.steps);
        let (mut cx, conns) = (cx!(self), &mut self.conns);
        self.parked.on_due(keys, reason, conns, &mut cx, &mut steps);
        self.apply_all(&mut steps);
        self.steps = steps;
    }

    /// Runs the timer (or, `drain`, the drain) entry point of each of `keys`; those that ask
    /// for their parked answer are answered together. A timer entry whose connection is armed
    /// again (re-armed, or a new connection in the slot) since its timer fired is skipped.
    fn due(&mut self, keys: &[u32], drain: bool) {
        let mut held = std::mem::take(&mut self.held);
        for &key in keys {
            let (mut cx, conns) = (cx!(self), &mut self.conns);
            let Some(c) = conns.get_mut(key as usize) else {
                continue;
            };
            let step = if drain {
                c.on_drain(&mut cx)
            } else if c.timer_armed() {
                continue;
            } else {
                c.on_timer(&mut cx)
            };
            if matches!(step.next, Next::Answer) {
                held.push(key);
            } else {
                self.apply(key, step);
            }
        }
        let reason = if drain { Due::Drain } else { Due::HoldOver };
        self.answer_parked(&held, reason);
        held.clear();
        self.held = held;
    }

    fn apply_all(&mut self, steps: &mut Vec<(u32, Step)>) {
        for (key, step) in steps.drain(..) {
            self.apply(key, step);
        }
    }

    fn serve_ready(&mut self) {
        for _ in 0..self.ready.len() {
            match self.ready.pop_front() {
                Some(Ready::Listener(i)) => self.accept(i),
                Some(Ready::Conn(k)) => self.on_conn(k, |c, cx| c.on_turn(cx)),
                Some(Ready::CatchUp(k)) => self.answer_parked(&[k], Due::CatchUp),
                None => break,
            }
        }
    }

    // ---- accepting

    fn accept(&mut self, i: usize) {
        if self.drain_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            let was_paused = self.accept_backoff.is_paused();
            match sockio::accept(listener, &mut self.accept_backoff, self.now, "HTTP") {
                Accepted::Stream(sock) => self.admit(sock),
                Accepted::Empty => return,
                Accepted::Paused => {
                    if !was_paused {
                        self.observer.accept_paused(&self.hub);
                    }
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
            let cors = self.hub.config.cors.without_request();
            let bytes = response::error_bytes(&response::OVER_CAPACITY, true, cors);
            // Best effort: a fresh socket's send buffer takes this small answer at once. Then
            // FIN, and its request is read and dropped for a moment instead of a reset.
            self.observer
                .refused(&self.hub, sock.peer_addr().ok(), bytes.len());
            if sockio::write_some(&mut sock, &bytes).is_ok() {
                let _ = sock.shutdown(std::net::Shutdown::Write);
                self.refused.push(sock, self.now);
            }
            return;
        }
        let _ = sock.set_nodelay(true);
        let key = self.conns.vacant_key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(CONN_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register failed: {e}");
            counters.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.hub.gauges[self.index]
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let cx = cx!(self);
        let (conn, step) = Conn::new(sock, &cx);
        self.conns.insert(conn);
        self.apply(key as u32, step);
    }

    fn close(&mut self, key: u32) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        self.parked.unlink(c, &self.hub);
        self.wheel.cancel(&mut self.conns, key);
        self.observer.forget(key);
        let mut c = self.conns.remove(key as usize);
        let _ = self.poll.registry().deregister(c.sock_mut());
        self.hub
            .counters
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.hub.gauges[self.index]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    // ---- time

    /// Advances the wheel (once the previous expiries are done) and handles one slice of
    /// the due connections.
    fn tick(&mut self) {
        self.refused.service(self.now);
        if self.accept_backoff.resume(self.now) {
            for i in 0..self.listeners.len() {
                self.ready.push_back(Ready::Listener(i));
            }
        }
        let mut expired = std::mem::take(&mut self.expired);
        if self.expired_at >= expired.len() {
            expired.clear();
            self.expired_at = 0;
            self.wheel
                .advance(&mut self.conns, tick_up(self.now), &mut expired);
        }
        let end = expired.len().min(self.expired_at + EXPIRE_SLICE);
        self.due(&expired[self.expired_at..end], false);
        self.expired_at = end;
        self.expired = expired;
    }

    // ---- commands from other threads

    fn commands(&mut self) {
        // Bounded by what was queued: the publish thread sends at most one command per batch.
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd),
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

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Published {
                last_seq,
                channels,
                accepted,
            } => self.on_published(last_seq, &channels, accepted),
            Command::WaitingChannels(reply) => {
                let _ = reply.send(self.parked.channel_names().map(Box::from).collect());
            }
            Command::SessionEnded(sid) => {
                let mut steps = std::mem::take(&mut self.steps);
                let (mut cx, conns) = (cx!(self), &mut self.conns);
                self.parked
                    .on_session_ended(&sid, conns, &mut cx, &mut steps);
                self.apply_all(&mut steps);
                self.steps = steps;
            }
            Command::Drain => self.drain(),
            Command::Reset { new_epoch } => self.reset_parked(new_epoch),
            Command::Freeze(reply) => self.freeze(reply),
            Command::Thaw => {}
        }
    }

    /// Fleet mode: a new epoch or a gap (see `Command::Reset`): every parked poll is looked at.
    fn reset_parked(&mut self, new_epoch: bool) {
        let keys: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_parked())
            .map(|(k, _)| k as u32)
            .collect();
        let mut steps = std::mem::take(&mut self.steps);
        let (mut cx, conns) = (cx!(self), &mut self.conns);
        self.parked
            .on_reset(&keys, new_epoch, conns, &mut cx, &mut steps);
        self.apply_all(&mut steps);
        self.steps = steps;
    }

    /// Wakes the polls parked on `channels`; if any was answered, observes the fan-out time
    /// (accepted by `ingest` → the last answer handed to the kernel, see `metrics`).
    fn on_published(&mut self, last_seq: u64, channels: &[Box<str>], accepted: Instant) {
        if self.wake(last_seq, channels) {
            self.observer.fanout(&self.hub, accepted.elapsed());
        }
    }

    /// Wakes the subscribers parked on `channels`, where messages up to `last_seq` are; true
    /// when any was answered.
    fn wake<S: AsRef<str>>(&mut self, last_seq: u64, channels: &[S]) -> bool {
        let mut steps = std::mem::take(&mut self.steps);
        let mut answered = false;
        for ch in channels {
            let (mut cx, conns) = (cx!(self), &mut self.conns);
            self.parked
                .on_published(ch.as_ref(), last_seq, conns, &mut cx, &mut steps);
            answered |= !steps.is_empty();
            self.apply_all(&mut steps);
        }
        self.steps = steps;
        answered
    }

    /// Section 6: stop accepting, answer every parked poll c=0 without advancing its cursor,
    /// let writes in flight finish, close the rest.
    fn drain(&mut self) {
        self.drain_until = Some(self.now + DRAIN_MS);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        self.due(&keys, true);
    }
}

mod handover;

#[cfg(test)]
#[path = "reactor_tests.rs"]
mod tests;
