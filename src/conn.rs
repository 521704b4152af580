//! One HTTP connection's life: a state machine over a transport, with private state and one
//! entry point per event. Each entry point returns a [`Step`]: what the owner (the reactor)
//! must do next — wait, come back later, park the poll, let `parked` answer it, or close — and
//! the tick to re-arm the connection's one timer at.
//!
//! A connection is in one phase at a time:
//! - `Head`: a request head is expected and has started (or the connection is new): the head
//!   deadline (`--head-timeout`, 10 s) runs.
//! - `Idle`: keep-alive between requests, no byte of the next one yet: the idle deadline
//!   (`--idle-timeout`, 75 s) runs.
//! - `Parked`: a poll waits; `waits` links it into `parked`'s waiter index, `after` is its
//!   cursor, the hold deadline runs (or the token's expiry, when that comes first). Nothing is
//!   read while parked (a pipelined request waits in the kernel or in `pending.input`), but a
//!   hang-up is noticed through RDHUP.
//!
//! Every response starts in `respond`, which reports it to `cx.observer` (metrics, access log)
//! and counts it in `Step::answered`.
//! A Server-Sent Events stream (`conn_stream`) is `Parked` for its whole life, with the
//! `STREAM` flag: after each write it waits again at its new cursor; its one timer is the
//! next heartbeat (or the stream's end) instead of a hold.
//!
//! Output that could not be written at once is in `pending.out`; while it is there no further
//! request is taken (one response in flight per connection bounds its memory) and the write
//! deadline (`--write-timeout`, 30 s) runs instead of the phase's.
//!
//! Invariants (density): an idle or parked connection without pipelined input owns no heap
//! memory at all (`pending` is `None`); its own state beside the socket is at most 40 bytes
//! (the flags and the phase share one byte; the CORS match is one byte, a stream's heartbeat
//! count two; an idle event stream is such a parked connection); its one timer is the `TimerLink` inside it. A response in
//! flight owns at most one [`Answer`] (bounded, see `answer`). Readiness is edge-triggered: the
//! readable bit is cleared only by a read that drained the socket or hit its end.

use std::io::{Read, Write};
use std::sync::Arc;

use slab::Slab;

use crate::answer::Answer;
use crate::http::{self, Method, MAX_HEAD};
use crate::hub::Hub;
use crate::observer::{Observer, Served};
use crate::poll::{self, Outcome, Park};
use crate::pool::BufferPool;
use crate::response::{self, ApiError};
use crate::sockio::{self, ReadEnd};
use crate::waiters;
use crate::wheel::{tick_down, tick_up, TimerLink, TimerNodes};

mod image;

/// What a connection reads and writes: a TCP stream, or an in-memory fake in the tests.
pub trait Transport: Read + Write {}
impl<T: Read + Write> Transport for T {}

/// Requests one connection may have handled per turn (pipelining) before others get a turn.
pub const MAX_REQUESTS_PER_TURN: usize = 32;
/// A body larger than this on a non-GET request is not skipped: the connection is closed.
const MAX_SKIP: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Head = 0,
    Idle = 1,
    Parked = 2,
}

/// Close once the response in flight is written.
const CLOSE_AFTER: u8 = 1;
/// A readable edge arrived and the socket was not drained since.
const READABLE: u8 = 2;
/// The peer shut down its side (EOF or RDHUP).
const READ_CLOSED: u8 = 4;
/// Parked, and the armed timer is the token's expiry (not the hold's end).
const TOKEN_TIMER: u8 = 8;
/// The connection is a Server-Sent Events stream (parked between writes, never idle).
const STREAM: u8 = 16;
/// The phase's two bits in `flags`: `Phase as u8` shifted by `PHASE_SHIFT`.
const PHASE_SHIFT: u8 = 5;
const PHASE_BITS: u8 = 3 << PHASE_SHIFT;

/// Response bytes: owned by one connection, or one encoding shared by every subscriber that
/// gets the same answer.
#[derive(Debug)]
pub enum Out {
    Own(Answer),
    Shared(Arc<Answer>),
}

impl Out {
    fn answer(&self) -> &Answer {
        match self {
            Out::Own(a) => a,
            Out::Shared(a) => a,
        }
    }
}

/// What a connection owns beyond its entry, only while it has it.
#[derive(Debug, Default)]
struct Pending {
    /// Received bytes not yet parsed (the start of the next request).
    input: Vec<u8>,
    /// Body bytes of the previous request still to discard.
    skip: u64,
    /// A response not yet fully written, and how much of it was.
    out: Option<(Out, usize)>,
}

/// What the owner does next with a connection.
#[derive(Debug)]
pub enum Next {
    /// Nothing until the next readiness, wake-up or timer.
    Wait,
    /// More to do: call `on_turn` after the others had a turn.
    Later,
    /// The connection parked this poll: link it into the waiter index under its channels.
    Park(Park),
    /// A parked poll must be answered now (hold or token over, drain): `parked` builds it.
    Answer,
    /// A stream is parked again after a write: `parked` sends what the store holds after its
    /// cursor, if anything (publishes that came while it was writing).
    CatchUp,
    /// Close the connection (and forget it everywhere).
    Close,
}

/// The result of one entry point.
#[derive(Debug)]
pub struct Step {
    pub next: Next,
    /// Re-arm the connection's timer at this tick.
    pub timer: Option<u32>,
    /// Answers with at least one message this step started (already added to the `delivered`
    /// counter by `respond`, where every answer passes; kept for the step's callers and tests).
    pub delivered: u32,
    /// Responses started by this step, each reported to `cx.observer` in order (the access
    /// log takes this many of its records for this connection).
    pub answered: u32,
}

impl Step {
    fn new(next: Next) -> Step {
        Step {
            next,
            timer: None,
            delivered: 0,
            answered: 0,
        }
    }
}

/// What an entry point needs from its reactor.
pub struct Ctx<'a> {
    pub hub: &'a Hub,
    pub pool: &'a mut BufferPool,
    /// The reactor's clock (ms) for this turn.
    pub now: u64,
    /// Where every response started is reported (metrics, access log).
    pub observer: &'a mut Observer,
}

impl Ctx<'_> {
    fn after_secs(&self, secs: u64) -> u32 {
        tick_up(self.now.saturating_add(secs.saturating_mul(1000)))
    }

    /// CORS for an answer with no parsed request (a bad head, a timeout): `*` only.
    fn cors(&self) -> Option<&str> {
        self.hub.config.cors.without_request()
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Conn<S> {
    sock: S,
    timer: TimerLink,
    /// First waiter node while parked, else `waiters::NIL` (set by `parked`).
    waits: u32,
    /// The parked poll's cursor seq.
    after: u64,
    pending: Option<Box<Pending>>,
    /// Flag bits, and the phase in `PHASE_BITS` (one byte for both keeps the entry small).
    flags: u8,
    /// The parked request's CORS match (`config::Cors::matching`).
    cors: u8,
    /// A stream's heartbeats left before it ends (see `conn_stream`).
    beats: u16,
}

impl<S: Transport> Conn<S> {
    /// A new connection, with its head deadline to arm.
    pub fn new(sock: S, cx: &Ctx<'_>) -> (Conn<S>, Step) {
        let c = Conn {
            sock,
            timer: TimerLink::new(),
            waits: waiters::NIL,
            after: 0,
            pending: None,
            flags: 0,
            cors: 0,
            beats: 0,
        };
        let mut step = Step::new(Next::Wait);
        step.timer = Some(cx.after_secs(cx.hub.config.head_timeout_secs));
        (c, step)
    }

    pub fn sock(&self) -> &S {
        &self.sock
    }

    pub fn sock_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    fn phase(&self) -> Phase {
        match (self.flags & PHASE_BITS) >> PHASE_SHIFT {
            0 => Phase::Head,
            1 => Phase::Idle,
            _ => Phase::Parked,
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.flags = (self.flags & !PHASE_BITS) | ((phase as u8) << PHASE_SHIFT);
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Parked: a poll waiting for its answer, or a stream waiting for its next events (not
    /// while the previous ones are still being written).
    pub fn is_parked(&self) -> bool {
        self.phase() == Phase::Parked && !(self.has(STREAM) && self.has_output())
    }

    /// The parked poll's cursor seq.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The parked request's CORS match.
    pub fn cors(&self) -> u8 {
        self.cors
    }

    /// The first waiter node of the parked poll.
    pub fn waits(&self) -> u32 {
        self.waits
    }

    pub fn set_waits(&mut self, first: u32) {
        self.waits = first;
    }

    /// The connection closes after its next answer.
    pub fn closes_after(&self) -> bool {
        self.has(CLOSE_AFTER)
    }

    pub fn timer_armed(&self) -> bool {
        self.timer.is_armed()
    }

    /// A parked poll whose token has expired at `now`: its timer was the token's and is due (or
    /// already fired), so no message may be delivered to it any more.
    pub fn token_expired(&self, now: u64) -> bool {
        self.is_parked()
            && self.has(TOKEN_TIMER)
            && self.timer.deadline().is_none_or(|d| tick_up(now) >= d)
    }

    fn has_output(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.out.is_some())
    }

    fn has_input(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| !p.input.is_empty())
    }

    // ---- entry points

    /// A readiness event from the poller.
    pub fn on_ready(
        &mut self,
        readable: bool,
        read_closed: bool,
        error: bool,
        cx: &mut Ctx<'_>,
    ) -> Step {
        if error {
            return Step::new(Next::Close);
        }
        if readable {
            self.set(READABLE, true);
        }
        if read_closed {
            self.set(READ_CLOSED, true);
        }
        if self.is_parked() && self.has(READ_CLOSED) {
            // Contract: a client that hangs up or half-closes while parked is forgotten at once.
            return Step::new(Next::Close);
        }
        self.drive(cx)
    }

    /// The turn it asked for with `Next::Later`.
    pub fn on_turn(&mut self, cx: &mut Ctx<'_>) -> Step {
        self.drive(cx)
    }

    /// Its timer fired.
    pub fn on_timer(&mut self, cx: &mut Ctx<'_>) -> Step {
        if self.has_output() {
            log::debug!("dropping a client that stopped reading");
            return Step::new(Next::Close);
        }
        if self.has(STREAM) {
            return self.stream_timer(cx);
        }
        match self.phase() {
            Phase::Idle => Step::new(Next::Close),
            Phase::Parked => Step::new(Next::Answer),
            Phase::Head => {
                let mut step = Step::new(Next::Wait);
                let err = self.error(&response::REQUEST_TIMEOUT, cx);
                self.respond(err, false, true, Served::OTHER, cx, &mut step);
                step
            }
        }
    }

    /// The drain began: close after the answer in flight; a parked poll is to be answered.
    pub fn on_drain(&mut self, cx: &mut Ctx<'_>) -> Step {
        self.set(CLOSE_AFTER, true);
        if self.has_output() {
            return Step::new(Next::Wait);
        }
        match self.phase() {
            // A stream ends cleanly: its events so far are written, the close ends its body.
            Phase::Parked if self.has(STREAM) => Step::new(Next::Close),
            Phase::Parked => Step::new(Next::Answer),
            Phase::Head if self.has_input() => {
                let mut step = Step::new(Next::Wait);
                let err = self.error(&response::DRAINING, cx);
                self.respond(err, false, true, Served::OTHER, cx, &mut step);
                step
            }
            _ => Step::new(Next::Close),
        }
    }

    /// A parked poll's answer (from `parked`, which has unlinked it); `delivered` when it
    /// carries messages.
    pub fn answer(&mut self, out: Out, delivered: bool, cx: &mut Ctx<'_>) -> Step {
        let mut step = Step::new(Next::Wait);
        if !self.is_parked() {
            return step;
        }
        self.set_phase(Phase::Idle);
        self.waits = waiters::NIL;
        self.set(TOKEN_TIMER, false);
        let close = self.has(CLOSE_AFTER);
        if self.respond(out, delivered, close, Served::PARKED, cx, &mut step)
            && (self.has(READABLE) || self.has_input())
        {
            // A pipelined request waits behind the answer: serve it after this turn.
            step.next = Next::Later;
        }
        step
    }

    // ---- transitions

    fn error(&self, err: &ApiError, cx: &Ctx<'_>) -> Out {
        Out::Own(Answer::Flat(response::error_bytes(err, true, cx.cors())))
    }

    /// Starts sending a response; false (and `step.next = Close`) if the connection is to be
    /// closed now.
    /// Starts writing `out`; `delivered` when it carries messages. Every response of the
    /// connection passes here, so this is the one place `delivered` is counted — before the
    /// write, so a client that reads the answer and then asks for the stats finds it counted.
    fn respond(
        &mut self,
        out: Out,
        delivered: bool,
        close: bool,
        served: Served,
        cx: &mut Ctx<'_>,
        step: &mut Step,
    ) -> bool {
        if close {
            self.set(CLOSE_AFTER, true);
        }
        count_delivered(delivered, cx, step);
        cx.observer.response(cx.hub, out.answer(), served);
        step.answered += 1;
        let mut pos = 0;
        match sockio::write_segments(&mut self.sock, out.answer(), &mut pos) {
            Ok(true) => {
                if self.has(CLOSE_AFTER) {
                    step.next = Next::Close;
                    return false;
                }
                self.set_phase(if self.has_input() {
                    Phase::Head
                } else {
                    Phase::Idle
                });
                step.timer = Some(self.next_request_timer(cx));
                true
            }
            Ok(false) => {
                self.set_phase(Phase::Idle);
                self.pending.get_or_insert_with(Box::default).out = Some((out, pos));
                step.timer = Some(cx.after_secs(cx.hub.config.write_timeout_secs));
                true
            }
            Err(_) => {
                step.next = Next::Close;
                false
            }
        }
    }

    /// Continues writing `pending.out`; Ok(true) when nothing is left.
    fn flush(&mut self) -> std::io::Result<bool> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(true);
        };
        let Some((out, pos)) = p.out.as_mut() else {
            return Ok(true);
        };
        if !sockio::write_segments(&mut self.sock, out.answer(), pos)? {
            return Ok(false);
        }
        p.out = None;
        self.drop_pending_if_empty();
        Ok(true)
    }

    /// The deadline of a connection waiting for its next request: the head deadline when
    /// bytes of it are already here, else the keep-alive idle deadline.
    fn next_request_timer(&self, cx: &Ctx<'_>) -> u32 {
        let c = &cx.hub.config;
        cx.after_secs(if self.has_input() {
            c.head_timeout_secs
        } else {
            c.idle_timeout_secs
        })
    }

    /// Parks the poll `p`: Ok(timer tick), or Err(the answer now) when its token is about to
    /// expire before the next tick.
    fn park(&mut self, p: &Park, cx: &Ctx<'_>) -> Result<u32, ()> {
        let hold = tick_up(cx.now.saturating_add(p.hold_ms));
        let mut timer = hold;
        let mut token_timer = false;
        if let Some(t) = p.token_ms {
            // Rounded down: the timer fires no later than the token's exp.
            let exp = tick_down(cx.now.saturating_add(t));
            if exp <= tick_up(cx.now) {
                return Err(());
            }
            if exp < hold {
                timer = exp;
                token_timer = true;
            }
        }
        self.set_phase(Phase::Parked);
        self.after = p.after;
        self.cors = p.cors;
        self.set(CLOSE_AFTER, p.close);
        self.set(TOKEN_TIMER, token_timer);
        Ok(timer)
    }

    fn take_input(&mut self) -> (Vec<u8>, u64) {
        match self.pending.as_mut() {
            Some(p) => (std::mem::take(&mut p.input), std::mem::take(&mut p.skip)),
            None => (Vec::new(), 0),
        }
    }

    /// Keeps `rest` (copied to an exact-size buffer) and `skip` for later.
    fn keep_input(&mut self, rest: &[u8], skip: u64) {
        if rest.is_empty() && skip == 0 {
            self.drop_pending_if_empty();
            return;
        }
        let p = self.pending.get_or_insert_with(Box::default);
        p.input = rest.to_vec();
        p.skip = skip;
    }

    fn drop_pending_if_empty(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.input.is_empty() && p.skip == 0 && p.out.is_none())
        {
            self.pending = None;
        }
    }

    /// Moves the connection forward as far as it can go now: flush, parse and handle requests,
    /// read. Borrows a pool buffer only for the call.
    fn drive(&mut self, cx: &mut Ctx<'_>) -> Step {
        if self.has(STREAM) {
            return self.drive_stream(cx);
        }
        let mut step = Step::new(Next::Wait);
        let mut buf: Option<Vec<u8>> = None;
        let mut filled = 0;
        let mut start = 0;
        let mut skip = 0u64;
        let mut loaded = false;
        let mut requests = 0;
        let next = loop {
            if self.has_output() {
                match self.flush() {
                    Ok(true) if !self.has(CLOSE_AFTER) => {
                        // The write deadline is over; the connection waits for a request again.
                        step.timer = Some(self.next_request_timer(cx));
                        continue;
                    }
                    Ok(true) => {}
                    Ok(false) => break Next::Wait,
                    Err(_) => break Next::Close,
                }
            }
            if self.is_parked() {
                // Even with CLOSE_AFTER: a parked HTTP/1.0 or `Connection: close` poll is
                // answered first (`respond` closes after its answer is written).
                break Next::Wait;
            }
            if self.has(CLOSE_AFTER) {
                break Next::Close;
            }
            if requests == MAX_REQUESTS_PER_TURN {
                break Next::Later;
            }
            if !loaded {
                let (input, s) = self.take_input();
                skip = s;
                if !input.is_empty() || self.has(READABLE) {
                    let mut b = cx.pool.take();
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
                break Next::Wait;
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
                            self.set(CLOSE_AFTER, true);
                        } else {
                            skip = head.content_length;
                        }
                    }
                    let close_anyway = self.has(CLOSE_AFTER);
                    if self.phase() == Phase::Idle {
                        self.set_phase(Phase::Head);
                    }
                    match poll::handle(&head, cx.hub, cx.now) {
                        Outcome::Respond {
                            bytes,
                            close,
                            delivered,
                            channels,
                        } => {
                            let (out, close) = (Out::Own(bytes), close || close_anyway);
                            let served = Served::at_once(channels);
                            if !self.respond(out, delivered, close, served, cx, &mut step) {
                                break Next::Close;
                            }
                        }
                        Outcome::Stream {
                            bytes,
                            delivered,
                            park,
                        } => {
                            if self.has(READ_CLOSED) {
                                break Next::Close;
                            }
                            count_delivered(delivered, cx, &mut step);
                            // The stream's start is its one answer in the access log.
                            let out = Out::Own(bytes);
                            let served = Served::at_once(park.channels.len() as u8);
                            cx.observer.response(cx.hub, out.answer(), served);
                            step.answered += 1;
                            break self.start_stream(out, park, cx, &mut step);
                        }
                        Outcome::Park(p) => {
                            if self.has(READ_CLOSED) {
                                break Next::Close;
                            }
                            match self.park(&p, cx) {
                                Ok(tick) => {
                                    step.timer = Some(tick);
                                    break Next::Park(p);
                                }
                                Err(()) => {
                                    let err = Out::Own(Answer::Flat(response::error_bytes(
                                        &poll::token_expired(),
                                        p.close,
                                        cx.hub.config.cors.header(p.cors),
                                    )));
                                    let served = Served::at_once(p.channels.len() as u8);
                                    if !self.respond(err, false, p.close, served, cx, &mut step) {
                                        break Next::Close;
                                    }
                                }
                            }
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
                    let err = self.error(&err, cx);
                    if !self.respond(err, false, true, Served::OTHER, cx, &mut step) {
                        break Next::Close;
                    }
                    continue;
                }
            }
            // Need more bytes.
            if !self.has(READABLE) {
                if self.has(READ_CLOSED) && start == filled {
                    // The peer sent its last request and everything is answered.
                    break Next::Close;
                }
                break Next::Wait;
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
            let end = sockio::read_into(&mut self.sock, b, &mut filled);
            match end {
                Ok(ReadEnd::Full) => {}
                Ok(ReadEnd::Drained) => self.set(READABLE, false),
                Ok(ReadEnd::Eof) => {
                    self.set(READABLE, false);
                    self.set(READ_CLOSED, true);
                    // Whatever complete requests remain are served; an incomplete one is not.
                    if filled == 0 || (!http::may_be_complete(&b[..filled], 0) && skip == 0) {
                        break Next::Close;
                    }
                }
                Err(_) => break Next::Close,
            }
            if was_empty && filled > 0 && self.phase() == Phase::Idle {
                // The first byte of a later request: the head deadline starts now.
                self.set_phase(Phase::Head);
                step.timer = Some(cx.after_secs(cx.hub.config.head_timeout_secs));
            }
        };
        // Settle: keep unparsed bytes in an exact-size buffer, give the pool buffer back.
        if let Some(b) = buf {
            self.keep_input(&b[start..filled], skip);
            cx.pool.give(b);
        } else if loaded {
            self.keep_input(&[], skip);
        }
        if self.phase() == Phase::Idle && self.has_input() && !self.has_output() {
            // Bytes of a pipelined request arrived with the previous one: its head deadline
            // runs from now, not the idle deadline.
            self.set_phase(Phase::Head);
            step.timer = Some(cx.after_secs(cx.hub.config.head_timeout_secs));
        }
        step.next = next;
        step
    }
}

/// Counts an answer (or a stream's batch of events) that carries messages: in the step, and in
/// the `delivered` counter before its bytes are written, so a client that reads them and then
/// asks for the stats finds them counted. The one place `delivered` moves.
pub(crate) fn count_delivered(delivered: bool, cx: &mut Ctx<'_>, step: &mut Step) {
    if delivered {
        step.delivered += 1;
        cx.observer.delivered(cx.hub, 1);
    }
}

/// The wheel reaches each connection's link through the reactor's slab.
impl<S> TimerNodes for Slab<Conn<S>> {
    fn timer_link(&mut self, id: u32) -> &mut TimerLink {
        &mut self[id as usize].timer
    }
}

/// A Server-Sent Events stream's side of the connection.
#[path = "conn_stream.rs"]
mod stream;

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
