//! Answers to waiting subscribers: the one home of a parked poll from the moment it parks to
//! its answer. It owns the reactor's waiter index (which subscriber waits on which channel) and
//! answers a subscriber for the three reasons there are — a publish woke it, its hold (or its
//! token) ran out, the server drains — through one function, `build`, the only place a parked
//! answer reads the store.
//!
//! Invariants:
//! - A subscriber is in the waiter index exactly while it is parked: `park` links it, and it
//!   is unlinked (`unlink`) before it is answered or forgotten; the `parked` counter, this
//!   reactor's `parked` and `waiting_channels` gauges move with the index and nowhere else.
//! - An answer is always built from a fresh read with the subscriber's own cursor, so it never
//!   skips a message published after the poll looked.
//! - Encode once: within one call (one woken channel, one slice of expiries, one drain)
//!   single-channel subscribers with the same channel, cursor and close flag share one
//!   encoding (`Arc<Answer>`); multi-channel subscribers get their own.
//! - No message is delivered on an expired token: a subscriber whose token deadline is due gets
//!   401 `token_expired` instead, whichever path reaches it first (its timer or a wake-up).
//! - `delivered` is counted by the subscriber's `answer` (see `conn::Step::delivered`), the one
//!   function every answer passes.
//!
//! A subscriber is anything that implements [`Subscriber`]: today an HTTP long-poll
//! (`conn::Conn`); a streaming subscriber (Server-Sent Events) implements `answer` by writing
//! the event and asking to be parked again (`Next::Park`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use slab::Slab;

use crate::answer::{self, Answer};
use crate::conn::{Conn, Ctx, Out, Step, Transport};
use crate::hub::Hub;
use crate::poll::{self, MAX_PER_ANSWER};
use crate::response;
use crate::waiters::{self, Waiters};

/// A parked subscriber, as `Parked` sees it.
pub trait Subscriber {
    fn is_parked(&self) -> bool;
    /// The cursor seq it wants messages after.
    fn after(&self) -> u64;
    /// Its first waiter node (`waiters::NIL` when not linked).
    fn waits(&self) -> u32;
    fn set_waits(&mut self, first: u32);
    /// Its answer closes the connection (HTTP/1.0, `Connection: close`, drain).
    fn closes_after(&self) -> bool;
    /// Its token has expired at `now` (ms).
    fn token_expired(&self, now: u64) -> bool;
    /// Takes its answer (already unlinked); returns what the reactor does next.
    fn answer(&mut self, out: Out, delivered: bool, cx: &mut Ctx<'_>) -> Step;
}

impl<S: Transport> Subscriber for Conn<S> {
    fn is_parked(&self) -> bool {
        Conn::is_parked(self)
    }
    fn after(&self) -> u64 {
        Conn::after(self)
    }
    fn waits(&self) -> u32 {
        Conn::waits(self)
    }
    fn set_waits(&mut self, first: u32) {
        Conn::set_waits(self, first)
    }
    fn closes_after(&self) -> bool {
        Conn::closes_after(self)
    }
    fn token_expired(&self, now: u64) -> bool {
        Conn::token_expired(self, now)
    }
    fn answer(&mut self, out: Out, delivered: bool, cx: &mut Ctx<'_>) -> Step {
        Conn::answer(self, out, delivered, cx)
    }
}

/// Why a subscriber is answered.
#[derive(Debug, Clone, Copy)]
enum Why<'a> {
    /// Messages up to `last_seq` were published to `channel`: answer only if there is
    /// something for it.
    Published {
        channel: &'a Arc<str>,
        last_seq: u64,
    },
    /// Its hold or its token ran out: answer even if empty.
    HoldOver,
    /// The drain: c = 0 at its own cursor, never advancing it past anything not given.
    Drain,
}

/// One shared encoding per (channel, cursor, close) and whether it carries messages;
/// `None` caches "nothing for this cursor yet".
type Shared = HashMap<(Option<Arc<str>>, u64, bool), Option<(Arc<Answer>, bool)>>;

/// See the module documentation.
pub struct Parked {
    waiters: Waiters,
    shared: Shared,
    /// Scratch list of the subscribers woken by one channel.
    keys: Vec<u32>,
    epoch: u64,
    /// This reactor's index in `hub.gauges`.
    gauge: usize,
}

impl Parked {
    /// An index with room for `capacity` single-channel polls, for reactor `gauge`.
    pub fn new(capacity: usize, epoch: u64, gauge: usize) -> Parked {
        Parked {
            waiters: Waiters::with_capacity(capacity),
            shared: HashMap::new(),
            keys: Vec::new(),
            epoch,
            gauge,
        }
    }

    /// Names of the channels with at least one parked subscriber here.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.waiters.channel_names()
    }

    /// Links subscriber `key` (just parked) under `channels`.
    pub fn park<C: Subscriber, S: AsRef<str>>(
        &mut self,
        key: u32,
        sub: &mut C,
        channels: &[S],
        hub: &Hub,
    ) {
        sub.set_waits(self.waiters.park(key, channels));
        hub.counters.parked.fetch_add(1, Ordering::Relaxed);
        hub.gauges[self.gauge]
            .parked
            .fetch_add(1, Ordering::Relaxed);
        self.update_channels(hub);
    }

    /// Unlinks a subscriber that is parked (a no-op otherwise): before its answer, or when it
    /// is forgotten (hang-up, close).
    pub fn unlink<C: Subscriber>(&mut self, sub: &mut C, hub: &Hub) {
        if sub.waits() == waiters::NIL {
            return;
        }
        self.waiters.unpark(sub.waits());
        sub.set_waits(waiters::NIL);
        hub.counters.parked.fetch_sub(1, Ordering::Relaxed);
        hub.gauges[self.gauge]
            .parked
            .fetch_sub(1, Ordering::Relaxed);
        self.update_channels(hub);
    }

    fn update_channels(&self, hub: &Hub) {
        // The name index is a HashMap: its keys' size hint is its exact length, O(1).
        let n = self.waiters.channel_names().size_hint().0;
        hub.gauges[self.gauge]
            .waiting_channels
            .store(n, Ordering::Relaxed);
    }

    /// Wakes the subscribers parked on `channel` that have something to receive; each answered
    /// one's next step is pushed onto `steps`.
    pub fn on_published<C: Subscriber>(
        &mut self,
        channel: &str,
        last_seq: u64,
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        self.waiters.waiting_on(channel, &mut keys);
        if keys.is_empty() {
            self.keys = keys;
            return;
        }
        // One name for the whole walk: the cache key of every single-channel subscriber.
        let channel: Arc<str> = Arc::from(channel);
        let why = Why::Published {
            channel: &channel,
            last_seq,
        };
        for &key in &keys {
            if let Some(step) = self.answer_one(key, why, subs, cx) {
                steps.push((key, step));
            }
        }
        if keys.len() >= 1000 {
            log::debug!("woke {} polls on {channel}", keys.len());
        }
        self.keys = keys;
        self.shared.clear();
    }

    /// Answers subscribers whose hold or token ran out (one slice of the wheel's expiries).
    pub fn on_hold_over<C: Subscriber>(
        &mut self,
        keys: &[u32],
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        for &key in keys {
            if let Some(step) = self.answer_one(key, Why::HoldOver, subs, cx) {
                steps.push((key, step));
            }
        }
        self.shared.clear();
    }

    /// The drain's answers: c = 0 at each subscriber's own cursor.
    pub fn on_drain<C: Subscriber>(
        &mut self,
        keys: &[u32],
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        for &key in keys {
            if let Some(step) = self.answer_one(key, Why::Drain, subs, cx) {
                steps.push((key, step));
            }
        }
        self.shared.clear();
    }

    fn answer_one<C: Subscriber>(
        &mut self,
        key: u32,
        why: Why<'_>,
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
    ) -> Option<Step> {
        let sub = subs.get_mut(key as usize)?;
        if !sub.is_parked() {
            return None;
        }
        let (out, delivered) = self.build(sub, why, cx)?;
        self.unlink(sub, cx.hub);
        Some(sub.answer(out, delivered, cx))
    }

    /// The one function that builds a parked subscriber's answer (see the module
    /// documentation); `None` when a publish left nothing for it.
    fn build<C: Subscriber>(&mut self, sub: &C, why: Why<'_>, cx: &Ctx<'_>) -> Option<(Out, bool)> {
        let cors = cx.hub.config.cors_origin.as_deref();
        let after = sub.after();
        let close = sub.closes_after();
        if sub.token_expired(cx.now) && !matches!(why, Why::Drain) {
            let bytes = response::error_bytes(&poll::token_expired(), close, cors);
            return Some((Out::Own(Answer::Flat(bytes)), false));
        }
        let (single, several) = match why {
            Why::Published { last_seq, .. } if after >= last_seq => return None,
            Why::Published { channel, .. } if self.waiters.is_single(sub.waits()) => {
                (Some(channel.clone()), Vec::new())
            }
            Why::Drain => (None, Vec::new()),
            _ => {
                let mut v = self.waiters.channels_of(sub.waits());
                if v.len() == 1 {
                    (v.pop(), v)
                } else {
                    (None, v)
                }
            }
        };
        if !several.is_empty() {
            return self
                .read(&several, after, close, why, cx)
                .map(|(a, d)| (Out::Own(a), d));
        }
        let key = (single, after, close);
        if let Some(hit) = self.shared.get(&key) {
            return hit.clone().map(|(a, d)| (Out::Shared(a), d));
        }
        let made = self
            .read(key.0.as_slice(), after, close, why, cx)
            .map(|(a, d)| (Arc::new(a), d));
        self.shared.insert(key, made.clone());
        made.map(|(a, d)| (Out::Shared(a), d))
    }

    /// Reads the store for `channels` after `after` and encodes the answer (the drain's is
    /// empty at `after`); `None` when a publish left nothing to answer.
    fn read(
        &self,
        channels: &[Arc<str>],
        after: u64,
        close: bool,
        why: Why<'_>,
        cx: &Ctx<'_>,
    ) -> Option<(Answer, bool)> {
        let cors = cx.hub.config.cors_origin.as_deref();
        if matches!(why, Why::Drain) {
            return Some((poll::empty_answer(self.epoch, after, close, cors), false));
        }
        let found = cx.hub.read().read(channels, after, cx.now, MAX_PER_ANSWER);
        if found.messages.is_empty() && !found.reset && matches!(why, Why::Published { .. }) {
            return None;
        }
        let delivered = !found.messages.is_empty();
        Some((
            answer::encode(&found, channels, self.epoch, close, cors),
            delivered,
        ))
    }
}
