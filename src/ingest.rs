//! Ingest: the one way into the store. Every publish source (the Unix socket thread in local
//! mode; the Redis feed in fleet mode, through `fleet::StoreSink`; an upgrade hand-over later)
//! appends through an `Ingest`, which writes the store and wakes the reactors whose polls wait
//! on the channels written.
//!
//! Invariants:
//! - The store is written only here (appends through `Batch::publish`, the TTL sweep through
//!   `Ingest::sweep`), from any number of threads; each append takes the write lock, so
//!   messages get one global order (their seq), the order in which their appends got the lock.
//! - `Batch::publish` returns after the message is in its channel buffers: a source acks a
//!   publish only after that, so a poll arriving after the ack sees it.
//! - The write lock is held for one slice at most: `SLICE_PUBLISHES` appends or `SLICE_TIME`,
//!   whichever comes first, and never across the caller's I/O (`Batch::release`), so a poll's
//!   read never waits behind a burst.
//! - Every appended message is announced to every reactor (`Command::Published`, naming its
//!   channels once each with a `last_seq` at or past its seq) at the latest when its slice
//!   ends or its `Batch` is finished or dropped, after the lock is released.
//! - A message's clock time is read under the write lock, so expiry times never decrease along
//!   the seq order even with several sources (the store's expiry relies on it).
//! - Fleet mode: a new epoch (`take_epoch`) or a gap (`lose_upto`) is followed by
//!   `Command::Reset` to every reactor after the lock is released, so every parked poll whose
//!   cursor that voided is answered `reset:true` from the store as it now is; nothing waits on
//!   a cursor that means nothing any more.
//! - After every write, still under the lock, the store's O(1) figures are mirrored into
//!   `hub.counters.store` (three relaxed stores), so `/metrics` never takes the lock.
//! - A `Command::Published` carries the instant its slice's first message was accepted: the
//!   start of `pnsd_fanout_seconds`.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::cursor;
use crate::hub::{Command, Hub, ReactorLink};
use crate::session::SessionError;
use crate::store::{Message, PublishRefused, Store};

mod fleet;
pub use fleet::StoreSink;

/// Appends per lock hold and per wake-up of the reactors: a burst of small publishes is
/// batched (one lock, one command per reactor) while a poll waits at most this many appends.
pub const SLICE_PUBLISHES: usize = 64;
/// Longest lock hold before a slice ends early (wide publishes): a poll's read waits about
/// this long at worst behind a burst.
pub const SLICE_TIME: Duration = Duration::from_millis(1);

/// One message to append, as a source parsed it: channels non-empty, valid and without
/// repeats (publisher's order); `data` strict JSON text, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub channels: Box<[Box<str>]>,
    pub kind: Option<i64>,
    pub data: Box<str>,
    /// The line's idempotency `key` (1-128 bytes): fleet mode appends a repeat within
    /// `--dedup-window` once; the local store, whose acks are never in doubt, ignores it.
    pub key: Option<Box<str>>,
}

/// A publish the store accepted: its place in the global order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub epoch: u64,
    pub seq: u64,
}

impl Accepted {
    /// The message's id (a cursor), as the ack carries it.
    pub fn id(&self) -> String {
        cursor::encode(self.epoch, self.seq)
    }
}

/// Why the store refused a publish; its text is the error line's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// See the module documentation. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct Ingest {
    hub: Arc<Hub>,
    reactors: Arc<Vec<ReactorLink>>,
}

impl Ingest {
    pub fn new(hub: Arc<Hub>, reactors: Arc<Vec<ReactorLink>>) -> Ingest {
        Ingest { hub, reactors }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn reactors(&self) -> &[ReactorLink] {
        &self.reactors
    }

    /// A batch of appends from one source; see `Batch`.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            ingest: self,
            store: None,
            held_since: Instant::now(),
            in_slice: 0,
            pending: Vec::new(),
            first_accepted: None,
        }
    }

    /// Appends one message on its own (a batch of one).
    pub fn publish(&self, p: Publish) -> Result<Accepted, Refused> {
        self.batch().publish(p)
    }

    /// Fleet mode: the fleet's epoch is `epoch`, the log read after `start_seq`; every
    /// parked poll is answered `reset:true`, unless the store already had this epoch (a
    /// process an upgrade started keeps its predecessor's): then its cursors still mean the
    /// same positions and only those below `start_seq` are reset, as after a gap.
    pub fn take_epoch(&self, epoch: u64, start_seq: u64) {
        let mut store = self.hub.write();
        let kept = store.epoch() == epoch;
        store.take_epoch(epoch, start_seq);
        mirror(&self.hub, &store);
        drop(store);
        self.tell_reset(!kept);
    }

    /// Fleet mode: entries up to `seq` were lost to this node; every parked poll with a
    /// cursor below it is answered `reset:true`.
    pub fn lose_upto(&self, seq: u64) {
        self.hub.write().lose_upto(seq);
        self.tell_reset(false);
    }

    fn tell_reset(&self, new_epoch: bool) {
        for r in self.reactors.iter() {
            r.send(Command::Reset { new_epoch });
        }
    }

    /// Drops at most `max` expired messages and the channels left empty, in one hold of the
    /// write lock: the one call of the store's sweep; and
    /// reclaims one slice of expired sessions. True when more is due (call again after
    /// letting the readers in).
    pub fn sweep(&self, max: usize) -> bool {
        let mut store = self.hub.write();
        let now = self.hub.clock.now_ms();
        let more = store.expire(now, max);
        mirror(&self.hub, &store);
        drop(store);
        self.hub.sessions.sweep(now);
        more
    }

    /// Registers (or replaces) session `sid`; a new one starts at the newest seq, so nothing
    /// published after this call is lost to it. The caller holds no store lock.
    pub fn register_session(
        &self,
        sid: &str,
        channels: Box<[Box<str>]>,
        ttl_secs: u64,
    ) -> Result<(), SessionError> {
        let newest = self.hub.read().last_seq();
        let now = self.hub.clock.now_ms();
        self.hub
            .sessions
            .register(sid, channels.into(), ttl_secs, newest, now)
    }

    /// Ends session `sid` and tells every reactor, which answers its parked polls 401
    /// `session_ended` (also when it had expired: its polls may still be parked). False when
    /// no live session had that sid.
    pub fn end_session(&self, sid: &str) -> bool {
        let known = self.hub.sessions.end(sid, self.hub.clock.now_ms());
        let sid: Arc<str> = Arc::from(sid);
        for r in self.reactors.iter() {
            r.send(Command::SessionEnded(sid.clone()));
        }
        known
    }
}

/// Copies the store's O(1) figures into the hub's atomics (under the write lock).
fn mirror(hub: &Hub, store: &Store) {
    let f = &hub.counters.store;
    let s = store.stats();
    f.channels.store(s.channels, Ordering::Relaxed);
    f.messages.store(s.messages, Ordering::Relaxed);
    f.published.store(s.published, Ordering::Relaxed);
}

/// Appends in order, holding the store's write lock for a slice at most; announces what it
/// appended to the reactors when a slice ends, on `finish`, or when dropped.
pub struct Batch<'a> {
    ingest: &'a Ingest,
    store: Option<RwLockWriteGuard<'a, Store>>,
    held_since: Instant,
    /// Appends since the reactors were last told.
    in_slice: usize,
    /// The messages appended since the reactors were last told.
    pending: Vec<Arc<Message>>,
    /// When the first of `pending` was accepted.
    first_accepted: Option<Instant>,
}

impl Batch<'_> {
    /// Appends one message; returns once it is in its channel buffers (ack it then).
    pub fn publish(&mut self, p: Publish) -> Result<Accepted, Refused> {
        self.append_with(|store, now| store.publish(p.channels, p.kind, &p.data, now))
    }

    /// Fleet mode: appends the log's entry `seq`, `age_ms` old by the fleet's clock (it
    /// expires `--message-ttl` after it was appended to the log, as on every node).
    pub fn append_at(&mut self, seq: u64, p: Publish, age_ms: u64) -> Result<Accepted, Refused> {
        self.append_with(|store, now| {
            let ttl = store.ttl_ms();
            let expires = now.saturating_add(ttl - age_ms.min(ttl));
            store.append_at(seq, p.channels, p.kind, &p.data, now, expires)
        })
    }

    /// One append under the write lock (taken if not held), counted in the slice.
    fn append_with(
        &mut self,
        f: impl FnOnce(&mut Store, u64) -> Result<Arc<Message>, PublishRefused>,
    ) -> Result<Accepted, Refused> {
        let ingest = self.ingest;
        let store = match &mut self.store {
            Some(s) => s,
            None => {
                self.held_since = Instant::now();
                self.store.insert(ingest.hub.write())
            }
        };
        let now = ingest.hub.clock.now_ms();
        let result = f(store, now)
            .map_err(|e| Refused(e.to_string()))
            .map(|msg| {
                let accepted = Accepted {
                    epoch: store.epoch(),
                    seq: msg.seq,
                };
                self.pending.push(msg);
                accepted
            });
        mirror(&ingest.hub, store);
        if result.is_ok() && self.first_accepted.is_none() {
            self.first_accepted = Some(Instant::now());
        }
        self.in_slice += 1;
        if self.in_slice >= SLICE_PUBLISHES || self.held_since.elapsed() >= SLICE_TIME {
            self.finish();
        }
        result
    }

    /// Releases the write lock (the caller is about to do I/O); the slice goes on.
    pub fn release(&mut self) {
        self.store = None;
    }

    /// Ends the slice: releases the lock and tells every reactor what was appended.
    pub fn finish(&mut self) {
        self.store = None;
        self.in_slice = 0;
        let Some(last) = self.pending.last() else {
            return;
        };
        let last_seq = last.seq;
        let channels: Arc<[Box<str>]> = if self.pending.len() == 1 {
            last.channels.iter().cloned().collect()
        } else {
            let mut seen: HashSet<&str> = HashSet::new();
            self.pending
                .iter()
                .flat_map(|m| m.channels.iter())
                .filter(|c| seen.insert(c))
                .cloned()
                .collect()
        };
        self.pending.clear();
        let accepted = self.first_accepted.take().unwrap_or_else(Instant::now);
        for r in self.ingest.reactors.iter() {
            r.send(Command::Published {
                last_seq,
                channels: channels.clone(),
                accepted,
            });
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::mpsc;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(Config::default(), 10, None, 7))
    }

    fn publish(channels: &[&str], data: &str) -> Publish {
        Publish {
            channels: channels.iter().map(|c| Box::from(*c)).collect(),
            kind: None,
            data: data.into(),
            key: None,
        }
    }

    fn published(rx: &mpsc::Receiver<Command>) -> Vec<(u64, Vec<String>)> {
        rx.try_iter()
            .map(|c| match c {
                Command::Published {
                    last_seq, channels, ..
                } => (last_seq, channels.iter().map(|c| c.to_string()).collect()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_accepted_publish_is_in_the_store_with_the_next_seq() {
        let hub = hub();
        let ingest = Ingest::new(hub.clone(), Arc::new(Vec::new()));
        let a = ingest.publish(publish(&["x", "y"], "1")).expect("accepted");
        assert_eq!(a, Accepted { epoch: 7, seq: 1 });
        assert_eq!(a.id(), cursor::encode(7, 1));
        let mut b = ingest.batch();
        let second = b.publish(publish(&["y"], "2")).expect("accepted");
        assert_eq!(second.seq, 2);
        // Visible to readers once the lock is released, before the batch ends.
        b.release();
        let found = hub.read().read(&["y"], 0, 0, 10);
        assert_eq!(
            found.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        drop(b);
        assert_eq!(hub.read().stats().published, 2);
    }

    #[test]
    fn reactors_are_told_once_per_slice_with_each_channel_once() {
        let hub = hub();
        let (link, rx, _poll) = ReactorLink::detached();
        let ingest = Ingest::new(hub, Arc::new(vec![link]));
        let mut b = ingest.batch();
        let n = SLICE_PUBLISHES * 2 + 3;
        let mut untold = 0;
        for i in 0..n {
            let ch = if i % 2 == 0 { "even" } else { "odd" };
            b.publish(publish(&[ch, "all"], "0")).expect("accepted");
            untold += 1;
            // A slice may end early (SLICE_TIME) but never later than SLICE_PUBLISHES.
            for (last_seq, channels) in published(&rx) {
                untold = 0;
                assert_eq!(last_seq, i as u64 + 1);
                assert_once_each(&channels);
            }
            assert!(
                untold < SLICE_PUBLISHES,
                "no slice end after {untold} appends"
            );
        }
        // The last partial slice is told when the batch ends.
        drop(b);
        let told = published(&rx);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].0, n as u64);
        assert_once_each(&told[0].1);
        assert!(told[0].1.contains(&"all".to_string()));
        // Nothing appended, nothing told.
        drop(ingest.batch());
        assert!(published(&rx).is_empty());
    }

    fn assert_once_each(channels: &[String]) {
        let mut sorted = channels.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), channels.len(), "repeats in {channels:?}");
    }

    #[test]
    fn a_batch_is_usable_from_another_thread() {
        let hub = hub();
        let ingest = Ingest::new(hub.clone(), Arc::new(Vec::new()));
        let other = ingest.clone();
        let t = std::thread::spawn(move || {
            (0..100)
                .map(|i| other.publish(publish(&["t"], &i.to_string())))
                .collect::<Vec<_>>()
        });
        let mine: Vec<_> = (0..100)
            .map(|_| ingest.publish(publish(&["m"], "0")))
            .collect();
        let theirs = t.join().expect("thread");
        let mut seqs: Vec<u64> = mine
            .iter()
            .chain(&theirs)
            .map(|r| r.as_ref().expect("accepted").seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn the_sweep_drops_expired_messages() {
        let config = Config {
            message_ttl_secs: 0,
            ..Config::default()
        };
        let hub = Arc::new(Hub::new(config, 10, None, 7));
        let ingest = Ingest::new(hub.clone(), Arc::new(Vec::new()));
        ingest.publish(publish(&["gone"], "1")).expect("accepted");
        assert!(!ingest.sweep(usize::MAX), "nothing left due");
        assert_eq!(hub.read().channel_names().count(), 0);
    }
}
