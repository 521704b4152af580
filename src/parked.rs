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
//! - `delivered` is counted by the subscriber's `answer` (`conn::Conn::respond`), the one
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
use crate::session;
use crate::sse;
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
    /// Its request's CORS match (`config::Cors::matching`).
    fn cors(&self) -> u8;
    /// It is an event stream: it stays linked after each write (see `stream`).
    fn is_stream(&self) -> bool;
    /// A stream takes events (still linked); `next` is its new cursor, `None` for its last
    /// events; `more` when more may wait in the store.
    fn stream(
        &mut self,
        out: Out,
        delivered: bool,
        next: Option<u64>,
        more: bool,
        cx: &mut Ctx<'_>,
    ) -> Step;
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
    fn cors(&self) -> u8 {
        Conn::cors(self)
    }
    fn is_stream(&self) -> bool {
        Conn::is_stream(self)
    }
    fn stream(
        &mut self,
        out: Out,
        delivered: bool,
        next: Option<u64>,
        more: bool,
        cx: &mut Ctx<'_>,
    ) -> Step {
        Conn::stream(self, out, delivered, next, more, cx)
    }
    fn answer(&mut self, out: Out, delivered: bool, cx: &mut Ctx<'_>) -> Step {
        Conn::answer(self, out, delivered, cx)
    }
}

/// Why the reactor asks for answers (see `Parked::on_due`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Their hold or their token ran out: answer even if empty.
    HoldOver,
    /// The drain: c = 0 at each one's own cursor.
    Drain,
    /// Streams whose output drained: what the store holds after their cursor, if anything.
    CatchUp,
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
    /// Its session was ended: 401 `session_ended` (a stream: an `event: session_ended`).
    SessionEnded,
    /// A stream's output drained: whatever the store holds after its cursor, if anything.
    CatchUp,
    /// Fleet mode: the store took a new epoch (`new_epoch`: the cursor means nothing now, read
    /// from the start: answer `reset:true`) or lost entries to a gap (answer `reset:true` the
    /// subscribers whose cursor is below it).
    Reset { new_epoch: bool },
}

/// What a built answer says besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Built {
    /// It carries messages.
    delivered: bool,
    /// The seq it ends at (its cursor).
    end: u64,
    /// It holds a full batch: more may wait in the store.
    full: bool,
}

/// How an answer is encoded: a poll's HTTP response or a stream's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Poll,
    Events,
}

/// One shared encoding per (channel, cursor, close, CORS match, kind); `None` caches "nothing
/// for this cursor yet". A stream's events have no close flag or CORS (its head had them).
type Shared = HashMap<(Option<Arc<str>>, u64, bool, u8, Kind), Option<(Arc<Answer>, Built)>>;

/// See the module documentation.
pub struct Parked {
    waiters: Waiters,
    shared: Shared,
    /// Scratch list of the subscribers woken by one channel.
    keys: Vec<u32>,
    /// This reactor's index in `hub.gauges`.
    gauge: usize,
}

impl Parked {
    /// An index with room for `capacity` single-channel polls, for reactor `gauge`.
    pub fn new(capacity: usize, gauge: usize) -> Parked {
        Parked {
            waiters: Waiters::with_capacity(capacity),
            shared: HashMap::new(),
            keys: Vec::new(),
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
        let gauges = &hub.gauges[self.gauge];
        gauges.parked.fetch_add(1, Ordering::Relaxed);
        if sub.is_stream() {
            gauges.streams.fetch_add(1, Ordering::Relaxed);
        }
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
        let gauges = &hub.gauges[self.gauge];
        gauges.parked.fetch_sub(1, Ordering::Relaxed);
        if sub.is_stream() {
            gauges.streams.fetch_sub(1, Ordering::Relaxed);
        }
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

    /// Answers `keys` for `reason` (one slice of the wheel's expiries, the drain, streams to
    /// catch up), sharing encodings between them.
    pub fn on_due<C: Subscriber>(
        &mut self,
        keys: &[u32],
        reason: Due,
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        let why = match reason {
            Due::HoldOver => Why::HoldOver,
            Due::Drain => Why::Drain,
            Due::CatchUp => Why::CatchUp,
        };
        self.answer_all(keys, why, subs, cx, steps);
    }

    /// Session `sid` ended: its parked polls (waiting on its reserved channel) get 401
    /// `session_ended`.
    pub fn on_session_ended<C: Subscriber>(
        &mut self,
        sid: &str,
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        self.waiters.waiting_on(&session::wait_name(sid), &mut keys);
        self.answer_all(&keys, Why::SessionEnded, subs, cx, steps);
        self.keys = keys;
    }

    /// Fleet mode: answers `reset:true` those of `keys` (the parked subscribers) whose cursor
    /// the new epoch or the gap voided.
    pub fn on_reset<C: Subscriber>(
        &mut self,
        keys: &[u32],
        new_epoch: bool,
        subs: &mut Slab<C>,
        cx: &mut Ctx<'_>,
        steps: &mut Vec<(u32, Step)>,
    ) {
        self.answer_all(keys, Why::Reset { new_epoch }, subs, cx, steps);
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
        let (out, built) = self.build(sub, why, cx)?;
        if sub.is_stream() {
            let next = (!matches!(why, Why::SessionEnded)).then_some(built.end);
            return Some(sub.stream(out, built.delivered, next, built.full, cx));
        }
        self.unlink(sub, cx.hub);
        Some(sub.answer(out, built.delivered, cx))
    }

    /// The one function that builds a parked subscriber's answer (see the module
    /// documentation); `None` when a publish left nothing for it. A session poll's answer
    /// moves the session's position to where the answer ends.
    fn build<C: Subscriber>(
        &mut self,
        sub: &C,
        why: Why<'_>,
        cx: &Ctx<'_>,
    ) -> Option<(Out, Built)> {
        let kind = if sub.is_stream() {
            Kind::Events
        } else {
            Kind::Poll
        };
        let (close, cors) = match kind {
            Kind::Poll => (sub.closes_after(), sub.cors()),
            Kind::Events => (false, 0),
        };
        let cors_value = cx.hub.config.cors.header(cors);
        let after = sub.after();
        let error = |e: &response::ApiError| {
            let bytes = match kind {
                Kind::Poll => response::error_bytes(e, close, cors_value),
                Kind::Events => sse::error_event(e),
            };
            Some((Out::Own(Answer::Flat(bytes)), Built::default()))
        };
        if matches!(why, Why::SessionEnded) {
            return error(&response::SESSION_ENDED);
        }
        if sub.token_expired(cx.now) && !matches!(why, Why::Drain) {
            return error(&poll::token_expired());
        }
        // One channel (most polls: no allocation, the shared encoding's key) or several.
        let (mut one, mut many, session) = match why {
            Why::Published { last_seq, .. } if after >= last_seq => return None,
            Why::Published { channel, .. } if self.waiters.is_single(sub.waits()) => {
                (Some(channel.clone()), Vec::new(), None)
            }
            _ => {
                let mut v = self.waiters.channels_of(sub.waits());
                // A session poll waits on its reserved channel last (see `session`).
                let session = match v.last() {
                    Some(last) if session::sid_of(last).is_some() => v.pop(),
                    _ => None,
                };
                if v.len() == 1 {
                    (v.pop(), Vec::new(), session)
                } else {
                    (None, v, session)
                }
            }
        };
        if matches!(why, Why::Drain) {
            one = None;
            many.clear();
        }
        let (out, built) = if many.len() > 1 {
            let (a, b) = self.read(&many, after, close, cors_value, kind, why, cx)?;
            (Out::Own(a), b)
        } else {
            let key = (one, after, close, cors, kind);
            let made = match self.shared.get(&key) {
                Some(hit) => hit.clone(),
                None => {
                    let made = self
                        .read(key.0.as_slice(), after, close, cors_value, kind, why, cx)
                        .map(|(a, b)| (Arc::new(a), b));
                    self.shared.insert(key, made.clone());
                    made
                }
            };
            let (a, b) = made?;
            (Out::Shared(a), b)
        };
        if let Some(sid) = session.as_deref().and_then(session::sid_of) {
            cx.hub.sessions.advance(sid, built.end, cx.now);
        }
        Some((out, built))
    }

    /// Reads the store for `channels` after `after` and encodes the answer (the drain's is
    /// empty at `after`); `None` when a publish (or a stream's catch-up) found nothing.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        channels: &[Arc<str>],
        after: u64,
        close: bool,
        cors: Option<&str>,
        kind: Kind,
        why: Why<'_>,
        cx: &Ctx<'_>,
    ) -> Option<(Answer, Built)> {
        // The epoch is the store's: in fleet mode it changes at run time (`Why::Reset`).
        let store = cx.hub.read();
        let epoch = store.epoch();
        if matches!(why, Why::Drain) {
            let built = Built {
                end: after,
                ..Built::default()
            };
            return Some((poll::empty_answer(epoch, after, close, cors), built));
        }
        // A new epoch voids every cursor; after a gap the store's read tells which cursors
        // are below it (a poll waiting ahead of this node is not).
        let (after, void) = match why {
            Why::Reset { new_epoch: true } => (0, true),
            _ => (after, false),
        };
        let mut found = store.read(channels, after, cx.now, MAX_PER_ANSWER);
        drop(store);
        found.reset |= void;
        let only_news = matches!(
            why,
            Why::Published { .. } | Why::CatchUp | Why::Reset { new_epoch: false }
        ) || kind == Kind::Events;
        if found.messages.is_empty() && !found.reset && only_news {
            return None;
        }
        let built = Built {
            delivered: !found.messages.is_empty(),
            end: found.end_seq(),
            full: found.messages.len() == MAX_PER_ANSWER,
        };
        let answer = match kind {
            Kind::Poll => answer::encode(&found, channels, epoch, close, cors),
            Kind::Events => sse::encode(&found, channels, epoch, Vec::new()),
        };
        Some((answer, built))
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
        stream: bool,
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
        fn cors(&self) -> u8 {
            0
        }
        fn is_stream(&self) -> bool {
            self.stream
        }
        fn stream(
            &mut self,
            out: Out,
            delivered: bool,
            next: Option<u64>,
            _more: bool,
            _cx: &mut Ctx<'_>,
        ) -> Step {
            self.answers.push((out, delivered));
            let next = match next {
                Some(seq) => {
                    self.after = seq;
                    Next::Wait
                }
                None => Next::Close,
            };
            Step {
                next,
                timer: None,
                delivered: u32::from(delivered),
                answered: 0,
            }
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
                parked: Parked::new(16, 0),
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
            Answer::Refs(_) | Answer::Events(_) => panic!("small answers are flat"),
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

    fn stream(w: &mut World, channels: &[&str], after: u64) -> u32 {
        let key = w.subs.insert(Fake {
            after,
            waits: waiters::NIL,
            stream: true,
            ..Fake::default()
        }) as u32;
        let sub = &mut w.subs[key as usize];
        w.parked.park(key, sub, channels, &w.hub);
        key
    }

    #[test]
    fn streams_share_one_encoding_and_stay_parked() {
        let mut w = World::new();
        let keys: Vec<u32> = (0..5).map(|_| stream(&mut w, &["a"], 0)).collect();
        let poll = w.park(&["a"], 0);
        assert_eq!(w.hub.streams(), 5);
        let seq = w.publish("a");
        let steps = w.wake("a", seq);
        assert_eq!(steps.len(), 6);
        let shared = |w: &World, k: u32| match &w.subs[k as usize].answers[0].0 {
            Out::Shared(a) => a.clone(),
            Out::Own(_) => panic!("a single-channel stream's events are shared"),
        };
        let first = shared(&w, keys[0]);
        for &k in &keys[1..] {
            assert!(Arc::ptr_eq(&first, &shared(&w, k)), "encoded once");
        }
        assert!(
            !Arc::ptr_eq(&first, &shared(&w, poll)),
            "events are not a poll answer"
        );
        let events = match &*first {
            Answer::Events(_) => "by reference",
            Answer::Flat(v) => panic!("{}", String::from_utf8_lossy(v)),
            Answer::Refs(_) => panic!("a poll answer"),
        };
        assert_eq!(events, "by reference");
        // The streams stay in the index at their new cursor; the poll left it.
        assert_eq!(w.gauge(), (5, 1));
        assert!(keys.iter().all(|&k| w.subs[k as usize].after == seq));
        // A second publish reaches them again.
        let seq2 = w.publish("a");
        assert_eq!(w.wake("a", seq2).len(), 5);
    }

    #[test]
    fn a_session_end_ends_its_streams_and_polls() {
        let mut w = World::new();
        let wait = session::wait_name("s");
        let st = stream(&mut w, &["a", &wait], 0);
        let poll = w.park(&["a", &wait], 0);
        let other = w.park(&["a"], 0);
        let mut steps = Vec::new();
        let mut observer = crate::observer::Observer::default();
        let mut cx = Ctx {
            hub: &w.hub,
            pool: &mut w.pool,
            now: 0,
            observer: &mut observer,
        };
        w.parked
            .on_session_ended("s", &mut w.subs, &mut cx, &mut steps);
        assert_eq!(steps.len(), 2);
        let ev = text(&w.subs[st as usize].answers[0].0);
        assert!(ev.starts_with("event: session_ended\n"), "{ev}");
        let of_stream = steps
            .iter()
            .find(|(k, _)| *k == st)
            .expect("the stream's step");
        assert!(matches!(of_stream.1.next, Next::Close), "the stream ends");
        let t = text(&w.subs[poll as usize].answers[0].0);
        assert!(
            t.starts_with("HTTP/1.1 401 ") && t.contains("session_ended"),
            "{t}"
        );
        assert!(w.subs[other as usize].answers.is_empty());
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
            .on_due(&[k1], Due::HoldOver, &mut w.subs, &mut cx, &mut steps);
        let t = text(&w.subs[k1 as usize].answers[0].0);
        assert!(t.contains("{\"c\":0,"), "{t}");
        w.subs[k2 as usize].close = true;
        w.parked
            .on_due(&[k2], Due::Drain, &mut w.subs, &mut cx, &mut steps);
        let t = text(&w.subs[k2 as usize].answers[0].0);
        let cursor = crate::cursor::encode(9, seq);
        assert!(t.contains(&format!("\"cursor\":\"{cursor}\"")), "{t}");
        assert!(t.contains("Connection: close"), "{t}");
        assert_eq!(w.gauge(), (0, 0));
    }
}
