//! Answers to waiting subscribers: the one home of a parked poll from the moment it parks to
//! its answer. It owns the reactor's waiter index (which subscriber waits on which channel) and
//! answers a subscriber for the three reasons there are — a publish woke it, its hold (or its
//! token) ran out, the server drains — through one function, `build`, the only place a parked
//! answer reads the store.
//!
//! Invariants:
//! - A subscriber is in the waiter index exactly while it is parked: `park` links it, and it
//!   is unlinked (`unlink`) before it is answered or forgotten; this reactor's `parked` and
//!   `waiting_channels` gauges move with the index and nowhere else.
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

    /// The channels a parked subscriber waits on, in subscription order (for its upgrade image).
    pub fn channels_of<C: Subscriber>(&self, sub: &C) -> Vec<String> {
        if sub.waits() == waiters::NIL {
            return Vec::new();
        }
        self.waiters
            .names_of(sub.waits())
            .map(|n| n.to_string())
            .collect()
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
        hub.gauges[self.gauge]
            .parked
            .fetch_sub(1, Ordering::Relaxed);
        self.update_channels(hub);
    }

    fn update_channels(&self, hub: &Hub) {
        let n = self.waiters.channel_count();
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
        self.answer_all(&keys, why, subs, cx, steps);
        if keys.len() >= 1000 {
            log::debug!("woke {} polls on {channel}", keys.len());
        }
        self.keys = keys;
    }

    /// Answers subscribers whose hold or token ran out (one slice of the wheel's expiries).
    pub fn on_hold_over<C: Subscriber>(
        &mut self,
        keys: &[u32],
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        self.answer_all(keys, Why::HoldOver, subs, cx, steps);
    }

    /// The drain's answers: c = 0 at each subscriber's own cursor.
    pub fn on_drain<C: Subscriber>(
        &mut self,
        keys: &[u32],
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        self.answer_all(keys, Why::Drain, subs, cx, steps);
    }

    /// Answers each of `keys` for `why`, sharing encodings between them.
    fn answer_all<C: Subscriber>(
        &mut self,
        keys: &[u32],
        why: Why<'_>,
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        for &key in keys {
            if let Some(step) = self.answer_one(key, why, subs, cx) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::conn::Next;
    use crate::pool::BufferPool;

    /// A subscriber that records its answers.
    #[derive(Default)]
    struct Fake {
        after: u64,
        waits: u32,
        close: bool,
        expired: bool,
        answers: Vec<(Out, bool)>,
    }

    impl Subscriber for Fake {
        fn is_parked(&self) -> bool {
            self.waits != waiters::NIL
        }
        fn after(&self) -> u64 {
            self.after
        }
        fn waits(&self) -> u32 {
            self.waits
        }
        fn set_waits(&mut self, first: u32) {
            self.waits = first;
        }
        fn closes_after(&self) -> bool {
            self.close
        }
        fn token_expired(&self, _now: u64) -> bool {
            self.expired
        }
        fn answer(&mut self, out: Out, delivered: bool, _cx: &mut Ctx<'_>) -> Step {
            self.answers.push((out, delivered));
            Step {
                next: Next::Wait,
                timer: None,
                delivered: u32::from(delivered),
                answered: 1,
            }
        }
    }

    struct World {
        hub: Hub,
        pool: BufferPool,
        parked: Parked,
        subs: Slab<Fake>,
    }

    impl World {
        fn new() -> World {
            let hub = Hub::new(Config::default(), 100, None, 9);
            World {
                parked: Parked::new(16, 9, 0),
                hub,
                pool: BufferPool::new(16, 1),
                subs: Slab::new(),
            }
        }

        fn park(&mut self, channels: &[&str], after: u64) -> u32 {
            let key = self.subs.insert(Fake {
                after,
                waits: waiters::NIL,
                ..Fake::default()
            }) as u32;
            let sub = &mut self.subs[key as usize];
            self.parked.park(key, sub, channels, &self.hub);
            key
        }

        fn publish(&self, channel: &str) -> u64 {
            let m = self
                .hub
                .write()
                .publish(vec![channel.into()].into(), None, "1", 0)
                .unwrap();
            m.seq
        }

        fn wake(&mut self, channel: &str, last_seq: u64) -> Vec<(u32, Step)> {
            let mut steps = Vec::new();
            let mut observer = crate::observer::Observer::default();
            let mut cx = Ctx {
                hub: &self.hub,
                pool: &mut self.pool,
                now: 0,
                observer: &mut observer,
            };
            self.parked
                .on_published(channel, last_seq, &mut self.subs, &mut cx, &mut steps);
            steps
        }

        fn gauge(&self) -> (usize, usize) {
            let g = &self.hub.gauges[0];
            (
                g.parked.load(Ordering::Relaxed),
                g.waiting_channels.load(Ordering::Relaxed),
            )
        }
    }

    fn text(out: &Out) -> String {
        let a = match out {
            Out::Own(a) => a,
            Out::Shared(a) => &**a,
        };
        match a {
            Answer::Flat(v) => String::from_utf8_lossy(v).into_owned(),
            Answer::Refs(_) => panic!("small answers are flat"),
        }
    }

    #[test]
    fn one_encoding_for_the_same_channel_and_cursor() {
        let mut w = World::new();
        let a1 = w.park(&["a"], 0);
        let a2 = w.park(&["a"], 0);
        let both = w.park(&["a", "b"], 0);
        let other = w.park(&["b"], 0);
        assert_eq!(w.gauge(), (4, 2));
        let seq = w.publish("a");
        let steps = w.wake("a", seq);
        assert_eq!(steps.len(), 3);
        let shared = |k: u32| match &w.subs[k as usize].answers[0].0 {
            Out::Shared(a) => a.clone(),
            Out::Own(_) => panic!("a single-channel answer is shared"),
        };
        assert!(Arc::ptr_eq(&shared(a1), &shared(a2)));
        let own = &w.subs[both as usize].answers[0];
        assert!(matches!(own.0, Out::Own(_)) && own.1);
        assert_eq!(text(&own.0), text(&w.subs[a1 as usize].answers[0].0));
        assert!(w.subs[other as usize].answers.is_empty());
        assert_eq!(w.gauge(), (1, 1), "the answered ones left the index");
    }

    #[test]
    fn an_expired_token_gets_401_not_the_message() {
        let mut w = World::new();
        let k = w.park(&["a"], 0);
        w.subs[k as usize].expired = true;
        let seq = w.publish("a");
        let steps = w.wake("a", seq);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].1.delivered, 0);
        let (out, delivered) = &w.subs[k as usize].answers[0];
        assert!(!delivered);
        let t = text(out);
        assert!(
            t.starts_with("HTTP/1.1 401 ") && t.contains("token_expired"),
            "{t}"
        );
        assert!(!t.contains("Connection: close"), "{t}");
    }

    #[test]
    fn hold_over_answers_even_if_empty_and_drain_keeps_the_cursor() {
        let mut w = World::new();
        let seq = w.publish("elsewhere");
        let k1 = w.park(&["a"], seq);
        let k2 = w.park(&["a"], seq);
        // A publish on another channel's seq does not wake them.
        assert!(w.wake("a", seq).is_empty());
        let mut steps = Vec::new();
        let mut observer = crate::observer::Observer::default();
        let mut cx = Ctx {
            hub: &w.hub,
            pool: &mut w.pool,
            now: 0,
            observer: &mut observer,
        };
        w.parked
            .on_hold_over(&[k1], &mut w.subs, &mut cx, &mut steps);
        let t = text(&w.subs[k1 as usize].answers[0].0);
        assert!(t.contains("{\"c\":0,"), "{t}");
        w.subs[k2 as usize].close = true;
        w.parked.on_drain(&[k2], &mut w.subs, &mut cx, &mut steps);
        let t = text(&w.subs[k2 as usize].answers[0].0);
        let cursor = crate::cursor::encode(9, seq);
        assert!(t.contains(&format!("\"cursor\":\"{cursor}\"")), "{t}");
        assert!(t.contains("Connection: close"), "{t}");
        assert_eq!(w.gauge(), (0, 0));
    }
}
