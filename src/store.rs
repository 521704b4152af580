//! The channel store: every message held by this server run, shared by all reactor threads.
//!
//! One `Store` lives behind an `RwLock` in `Shared`. The publish thread appends under the write
//! lock (so the ack, sent after `publish` returns, happens after the message is visible to every
//! thread); reactors read under the read lock.
//!
//! Invariants:
//! - `last_seq` is the sequence number of the newest accepted message; messages get
//!   `last_seq + 1` in acceptance order: one global order per run. A refused publish uses no seq.
//!   In fleet mode the seqs come from the fleet's log instead (`append_at`): increasing, with
//!   holes only where the log held nothing for this node (a gap, below).
//! - `lost_upto` is the highest seq this store may have missed on any channel (a gap in the
//!   fleet's log, the start of an epoch's backfill, an entry the channel limit kept out): a
//!   read whose cursor is below it is told `reset`, on every channel. Never a silent skip.
//! - `take_epoch` voids everything held: the store starts over under the new epoch.
//! - Expiry times never decrease along the seq order (`last_expires_ms` clamps an entry whose
//!   fleet time would put it before the previous one).
//! - Each `ChannelBuffer`'s ring is sorted by `seq` and holds at most `buffer` messages. A
//!   message published to several channels is one `Arc<Message>` shared by their rings.
//! - At most `max_channels` channels are held; a publish that would create more is refused as a
//!   whole (nothing appended).
//! - `evicted_upto` of a channel is the highest seq ever dropped from its ring (by length or TTL),
//!   or inherited from forgotten channels (below); a read whose cursor is below it has missed
//!   something and is told `reset`.
//! - Since every message gets the same TTL and seqs are assigned in time order, expired messages
//!   form a prefix of every ring; a read treats that prefix as evicted even before the sweep
//!   (`expire`) removes it, so the messages of an answer never depend on when the sweep ran, and
//!   a sweep can only add a (conservative) `reset`, never remove one.
//! - Every channel has exactly one entry in the `due` heap, at or before the expiry of its
//!   ring's oldest message; `expire` pops due entries in time order, a bounded number per call,
//!   so one slice costs O(max log channels) whatever the channel count.
//! - A channel with no message left is dropped by `expire` so memory does not grow with every
//!   name ever published to; its `evicted_upto` folds into `forgotten[bucket(name)]`, a fixed
//!   table of `FORGOTTEN_BUCKETS` maxima. A read of a channel the store does not hold with a
//!   cursor below its bucket's value is told `reset`, and a channel created later starts with
//!   `evicted_upto` = its bucket's value: what a forgotten channel lost is never lost silently
//!   (channels sharing a bucket may get a spurious reset, which is safe). See README,
//!   "Deviations".
//! - Memory of a burst of channels comes back once most of them expired: after a sweep, the
//!   index's capacity is at most 8 times its channels (or `SHRINK_FLOOR`), or a `retiring` index
//!   is being emptied. Up to `SHRINK_MAX_CAPACITY` the index is rehashed at once; a larger one
//!   becomes `retiring` behind a fresh small index, each of its channels moves over when the
//!   sweep or a publish next touches it (so within one TTL), and its table is freed on a thread
//!   of its own once empty: no slice rehashes or frees a large table under the write lock. A
//!   channel is in exactly one of the two; reads look in both.
//! - `messages` counts the distinct messages held by at least one ring (each message counts the
//!   rings holding it in `held`), so `stats` is O(1).

use std::cmp::Ordering as CmpOrdering;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::cursor;

mod image;
pub use image::{ChannelImage, MessageImage, StoreImage};

/// Maxima of forgotten channels' `evicted_upto`, by hash of the name: 32 KiB whatever the
/// number of names ever used, and few enough collisions that a cursor older than the TTL on a
/// recreated channel is rarely reset because of another channel.
const FORGOTTEN_BUCKETS: usize = 4096;
/// Capacity below which the channel index is never shrunk: a few tens of KiB, not worth a rehash.
const SHRINK_FLOOR: usize = 1024;
/// Largest index capacity that is shrunk by a rehash under the write lock (about a millisecond);
/// a table sized for a million channels takes 30 ms or more (measured: walking 2M buckets to
/// move 16k channels, then freeing 117 MB), so a larger index retires instead (`retiring`).
const SHRINK_MAX_CAPACITY: usize = 1 << 16;
/// Expired entries a refused-looking publish sweeps before giving up: enough to free room when
/// the sweep is merely behind, small enough to keep that publish's lock hold short.
const SWEEP_BEFORE_REFUSING: usize = 1024;

/// The forgotten bucket of `name`: seeded FNV-1a, not std's hasher, whose algorithm may change
/// between the Rust releases that built two binaries sharing a state image. A crafted name only
/// costs spurious resets on its bucket.
fn bucket_of(seed: u64, name: &str) -> usize {
    /// FNV-1a's 64-bit offset basis and prime.
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = BASIS;
    for b in seed.to_le_bytes().iter().chain(name.as_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    (h % FORGOTTEN_BUCKETS as u64) as usize
}

/// A message's encoded object up to its channel name: `{"id":"CURSOR","channel":`.
fn message_head(epoch: u64, seq: u64) -> Box<str> {
    let mut head = String::with_capacity(24 + cursor::MAX_LEN);
    head.push_str("{\"id\":\"");
    cursor::encode_into(&mut head, epoch, seq);
    head.push_str("\",\"channel\":");
    head.into_boxed_str()
}

/// A published message, encoded once as the JSON object of an answer's `msg` array except for
/// the channel name, which depends on the poll (the first of its channels the poll subscribes to).
#[derive(Debug)]
pub struct Message {
    pub seq: u64,
    /// The publish request's channels, repeats removed, in the publisher's order.
    pub channels: Box<[Box<str>]>,
    /// Clock time (ms) at which the message leaves its channels.
    pub expires_ms: u64,
    /// `{"id":"CURSOR","channel":`
    head: Box<str>,
    /// `,"type":N,"data":DATA}` (type only when given)
    tail: Box<str>,
    /// Rings holding this message; only changed under the store's write lock.
    held: AtomicU32,
}

impl Message {
    /// Appends this message's JSON object, naming `channel`, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>, channel: &str) {
        out.extend_from_slice(self.head.as_bytes());
        out.push(b'"');
        out.extend_from_slice(channel.as_bytes());
        out.push(b'"');
        out.extend_from_slice(self.tail.as_bytes());
    }

    /// The encoded object up to the channel name: `{"id":"CURSOR","channel":`.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// The encoded object after the channel name: `,"type":N,"data":DATA}`.
    pub fn tail(&self) -> &str {
        &self.tail
    }

    /// The first of this message's channels that `subscribed` names.
    pub fn first_channel_in<'a, S: AsRef<str>>(&'a self, subscribed: &[S]) -> Option<&'a str> {
        self.channels
            .iter()
            .map(|c| &**c)
            .find(|c| subscribed.iter().any(|s| s.as_ref() == *c))
    }
}

/// The ring of one channel.
#[derive(Debug, Default)]
struct ChannelBuffer {
    ring: VecDeque<Arc<Message>>,
    evicted_upto: u64,
}

impl ChannelBuffer {
    /// Number of leading messages expired at `now_ms`.
    fn expired_prefix(&self, now_ms: u64) -> usize {
        self.ring.partition_point(|m| m.expires_ms <= now_ms)
    }
}

/// A channel's turn in the sweep: no later than its oldest message expires.
#[derive(Debug)]
struct Due {
    at_ms: u64,
    name: Arc<str>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.at_ms == other.at_ms
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so the max-heap yields the earliest entry first.
    fn cmp(&self, other: &Due) -> CmpOrdering {
        other.at_ms.cmp(&self.at_ms)
    }
}

/// What a read found for a poll.
#[derive(Debug, Default)]
pub struct Found {
    /// Messages after the cursor, oldest first, at most the read's limit.
    pub messages: Vec<Arc<Message>>,
    /// True when something after the cursor on a subscribed channel has been evicted.
    pub reset: bool,
    /// The newest seq of the run when the read was made.
    pub last_seq: u64,
}

impl Found {
    /// The seq an answer of this read ends at (its cursor): the last message's when it carries
    /// some (more may follow), else the newest seq of the store at the read.
    pub fn end_seq(&self) -> u64 {
        self.messages.last().map_or(self.last_seq, |m| m.seq)
    }
}

/// Figures for the stats line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub published: u64,
    /// Distinct messages held.
    pub messages: usize,
    /// Channels holding messages.
    pub channels: usize,
}

/// Why a publish was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    /// Accepting it would hold more than `max` channels.
    TooManyChannels { max: usize },
    /// Fleet mode: entry `seq` is not above the newest held.
    OutOfOrder { seq: u64 },
}

impl fmt::Display for PublishRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishRefused::TooManyChannels { max } => write!(
                f,
                "channel limit reached: publishing would hold more than {max} channels (--max-channels)"
            ),
            PublishRefused::OutOfOrder { seq } => {
                write!(f, "log entry {seq} is not above the newest held")
            }
        }
    }
}

impl std::error::Error for PublishRefused {}

/// See the module documentation.
#[derive(Debug)]
pub struct Store {
    epoch: u64,
    last_seq: u64,
    lost_upto: u64,
    last_expires_ms: u64,
    buffer: usize,
    ttl_ms: u64,
    max_channels: usize,
    channels: HashMap<Arc<str>, ChannelBuffer>,
    /// A large index being given back: its channels move to `channels` as the sweep or a
    /// publish touches them, and its table is freed (off the lock) once it is empty.
    retiring: Option<HashMap<Arc<str>, ChannelBuffer>>,
    due: BinaryHeap<Due>,
    forgotten: Box<[u64]>,
    /// Seed of `bucket`: random per store, carried with the state image (`image`) so a
    /// restored store finds its forgotten channels in the same buckets.
    bucket_seed: u64,
    published: u64,
    messages: usize,
}

impl Store {
    /// An empty store for run `epoch`, keeping `buffer` (>= 1) messages per channel for `ttl_ms`
    /// in at most `max_channels` (>= 1) channels.
    pub fn new(epoch: u64, buffer: usize, ttl_ms: u64, max_channels: usize) -> Store {
        Store {
            epoch,
            last_seq: 0,
            lost_upto: 0,
            last_expires_ms: 0,
            buffer: buffer.max(1),
            ttl_ms,
            max_channels: max_channels.max(1),
            channels: HashMap::new(),
            retiring: None,
            due: BinaryHeap::new(),
            forgotten: vec![0; FORGOTTEN_BUCKETS].into_boxed_slice(),
            bucket_seed: RandomState::new().hash_one(FORGOTTEN_BUCKETS),
            published: 0,
            messages: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// `--message-ttl` in ms.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn bucket(&self, name: &str) -> usize {
        bucket_of(self.bucket_seed, name)
    }

    /// Channel `name`, for reading.
    fn held(&self, name: &str) -> Option<&ChannelBuffer> {
        match (self.channels.get(name), &self.retiring) {
            (None, Some(r)) => r.get(name),
            (found, _) => found,
        }
    }

    /// Channel `name`, for writing: one still in `retiring` moves to `channels` first.
    fn held_mut<'a>(
        channels: &'a mut HashMap<Arc<str>, ChannelBuffer>,
        retiring: &mut Option<HashMap<Arc<str>, ChannelBuffer>>,
        name: &str,
    ) -> Option<&'a mut ChannelBuffer> {
        if let Some(r) = retiring {
            if !channels.contains_key(name) {
                if let Some((key, buf)) = r.remove_entry(name) {
                    channels.insert(key, buf);
                }
            }
        }
        channels.get_mut(name)
    }

    /// Number of channels held.
    fn held_count(&self) -> usize {
        self.channels.len() + self.retiring.as_ref().map_or(0, HashMap::len)
    }

    /// Channels of `channels` the store does not hold.
    fn new_channels(&self, channels: &[Box<str>]) -> usize {
        channels.iter().filter(|c| self.held(c).is_none()).count()
    }

    /// Accepts one message: assigns the next seq, appends it to each channel's ring (evicting
    /// the oldest beyond `buffer`) and returns it. `channels` must be non-empty and free of
    /// repeats; `data` is the publisher's JSON text, kept verbatim. Refused as a whole, using
    /// no seq, when it would create channels beyond `max_channels`.
    pub fn publish(
        &mut self,
        channels: Box<[Box<str>]>,
        kind: Option<i64>,
        data: &str,
        now_ms: u64,
    ) -> Result<Arc<Message>, PublishRefused> {
        self.make_room(&channels, now_ms)?;
        let seq = self.last_seq + 1;
        Ok(self.insert(
            seq,
            channels,
            kind,
            data,
            now_ms.saturating_add(self.ttl_ms),
        ))
    }

    /// Fleet mode: appends the log's entry `seq` (above `last_seq`), expiring at `expires_ms`.
    /// An entry the channel limit keeps out is not held: every cursor below it is reset
    /// instead (`lost_upto`), so its loss is announced. Returns the message when held.
    pub fn append_at(
        &mut self,
        seq: u64,
        channels: Box<[Box<str>]>,
        kind: Option<i64>,
        data: &str,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<Arc<Message>, PublishRefused> {
        if seq <= self.last_seq {
            // Not reached: the feed hands each seq once, increasing. Holding it twice would
            // break the rings' order, so it is dropped.
            return Err(PublishRefused::OutOfOrder { seq });
        }
        if let Err(e) = self.make_room(&channels, now_ms) {
            self.lose_upto(seq);
            return Err(e);
        }
        Ok(self.insert(seq, channels, kind, data, expires_ms))
    }

    /// Fleet mode: entries up to `seq` may have been missed on any channel (see `lost_upto`).
    pub fn lose_upto(&mut self, seq: u64) {
        self.lost_upto = self.lost_upto.max(seq);
        self.last_seq = self.last_seq.max(seq);
    }

    /// Fleet mode: the fleet's epoch is now `epoch` and the log is read after `start_seq`.
    /// Everything held is void; cursors of this epoch below `start_seq` are reset.
    pub fn take_epoch(&mut self, epoch: u64, start_seq: u64) {
        let fresh = Store::new(epoch, self.buffer, self.ttl_ms, self.max_channels);
        let old = std::mem::replace(self, fresh);
        self.published = old.published;
        self.last_seq = start_seq;
        self.lost_upto = start_seq;
        // Freed off the lock holder's thread, as a retired index is.
        let _ = std::thread::Builder::new()
            .name("pnsd-free".into())
            .spawn(move || drop(old));
    }

    /// Checks the channel limit for a publish to `channels` (sweeping what is due first when
    /// it looks reached).
    fn make_room(&mut self, channels: &[Box<str>], now_ms: u64) -> Result<(), PublishRefused> {
        if self.held_count() + channels.len() > self.max_channels {
            let mut fresh = self.new_channels(channels);
            if self.held_count() + fresh > self.max_channels {
                // The sweep may merely be behind: free what is due, then look again.
                self.expire(now_ms, SWEEP_BEFORE_REFUSING);
                fresh = self.new_channels(channels);
            }
            if self.held_count() + fresh > self.max_channels {
                return Err(PublishRefused::TooManyChannels {
                    max: self.max_channels,
                });
            }
        }
        Ok(())
    }

    /// Holds message `seq` (above `last_seq`) on its channels, evicting the oldest beyond
    /// `buffer`.
    fn insert(
        &mut self,
        seq: u64,
        channels: Box<[Box<str>]>,
        kind: Option<i64>,
        data: &str,
        expires_ms: u64,
    ) -> Arc<Message> {
        self.last_seq = seq;
        self.published += 1;
        self.messages += 1;
        let expires_ms = expires_ms.max(self.last_expires_ms);
        self.last_expires_ms = expires_ms;
        let mut tail = String::with_capacity(data.len() + 32);
        if let Some(k) = kind {
            tail.push_str(",\"type\":");
            tail.push_str(&k.to_string());
        }
        tail.push_str(",\"data\":");
        tail.push_str(data);
        tail.push('}');
        let msg = Arc::new(Message {
            seq,
            held: AtomicU32::new(channels.len() as u32),
            channels,
            expires_ms,
            head: message_head(self.epoch, seq),
            tail: tail.into_boxed_str(),
        });
        for name in msg.channels.iter() {
            let buf = match Store::held_mut(&mut self.channels, &mut self.retiring, name) {
                Some(b) => b,
                None => {
                    let evicted_upto = self.forgotten[self.bucket(name)];
                    let name: Arc<str> = Arc::from(&**name);
                    self.due.push(Due {
                        at_ms: msg.expires_ms,
                        name: name.clone(),
                    });
                    self.channels.entry(name).or_insert(ChannelBuffer {
                        ring: VecDeque::with_capacity(1),
                        evicted_upto,
                    })
                }
            };
            if buf.ring.len() >= self.buffer {
                if let Some(old) = buf.ring.pop_front() {
                    buf.evicted_upto = buf.evicted_upto.max(old.seq);
                    if old.held.fetch_sub(1, Ordering::Relaxed) == 1 {
                        self.messages -= 1;
                    }
                }
            }
            buf.ring.push_back(msg.clone());
        }
        self.free_retired_if_empty();
        msg
    }

    /// Drops at most `max` expired messages from their rings (a channel's turn that drops none
    /// counts as one) and the channels left empty (see the module documentation); returns true
    /// when more is due at `now_ms`, so the caller can release the lock between slices.
    pub fn expire(&mut self, now_ms: u64, max: usize) -> bool {
        let mut work = 0;
        while work < max {
            if self.due.peek().is_none_or(|d| d.at_ms > now_ms) {
                break;
            }
            let Some(Due { name, .. }) = self.due.pop() else {
                break;
            };
            let Some(buf) = Store::held_mut(&mut self.channels, &mut self.retiring, &name) else {
                continue; // not reached: a channel leaves `due` only when it is dropped
            };
            let n = buf.expired_prefix(now_ms).min(max - work);
            work += n.max(1);
            for old in buf.ring.drain(..n) {
                buf.evicted_upto = buf.evicted_upto.max(old.seq);
                if old.held.fetch_sub(1, Ordering::Relaxed) == 1 {
                    self.messages -= 1;
                }
            }
            if let Some(front) = buf.ring.front() {
                let at_ms = front.expires_ms;
                self.due.push(Due { at_ms, name });
            } else {
                let evicted = buf.evicted_upto;
                self.channels.remove(&*name);
                let b = self.bucket(&name);
                self.forgotten[b] = self.forgotten[b].max(evicted);
            }
        }
        self.shrink_if_sparse();
        self.due.peek().is_some_and(|d| d.at_ms <= now_ms)
    }

    /// Gives back the index's memory once the channels fell to an eighth of its capacity,
    /// keeping room for twice what is left: a load that shrinks has to fall four times more, or
    /// double, before the next resize, so a load flapping around one size never resizes. Up to
    /// `SHRINK_MAX_CAPACITY` the index is rehashed at once; a larger one retires (see
    /// `retiring`), so no slice rehashes or frees a large table under the write lock.
    fn shrink_if_sparse(&mut self) {
        self.free_retired_if_empty();
        let (len, capacity) = (self.channels.len(), self.channels.capacity());
        if self.retiring.is_none() && capacity > SHRINK_FLOOR && len < capacity / 8 {
            if capacity <= SHRINK_MAX_CAPACITY {
                self.channels.shrink_to(2 * len);
            } else {
                let small = HashMap::with_capacity(2 * len);
                self.retiring = Some(std::mem::replace(&mut self.channels, small));
                self.free_retired_if_empty(); // nothing left to move over
            }
        }
        let (len, capacity) = (self.due.len(), self.due.capacity());
        if capacity > SHRINK_FLOOR && len < capacity / 8 {
            self.due.shrink_to(2 * len);
        }
    }

    /// Frees the table of an emptied `retiring` index on a thread of its own: unmapping the
    /// ~100 MB of a table sized for a million channels takes ~10 ms, not for the lock holder.
    fn free_retired_if_empty(&mut self) {
        if let Some(table) = self.retiring.take_if(|r| r.is_empty()) {
            // On a failed spawn the closure, and with it the table, is dropped here instead.
            let _ = std::thread::Builder::new()
                .name("pnsd-free".into())
                .spawn(move || drop(table));
        }
    }

    /// The messages after seq `after` on `channels` (no repeats), oldest first, at most `limit`;
    /// with `reset` set when something after `after` on one of them was evicted.
    pub fn read<S: AsRef<str>>(
        &self,
        channels: &[S],
        after: u64,
        now_ms: u64,
        limit: usize,
    ) -> Found {
        // A cursor ahead of this store (fleet mode: another node is further along the log)
        // is answered with itself, never moved back.
        let mut found = Found {
            messages: Vec::new(),
            reset: after < self.lost_upto,
            last_seq: self.last_seq.max(after),
        };
        if after >= self.last_seq {
            return found;
        }
        for name in channels {
            let name = name.as_ref();
            let Some(buf) = self.held(name) else {
                if after < self.forgotten[self.bucket(name)] {
                    found.reset = true;
                }
                continue;
            };
            let live = buf.expired_prefix(now_ms);
            let mut evicted = buf.evicted_upto;
            if live > 0 {
                evicted = evicted.max(buf.ring[live - 1].seq);
            }
            if evicted > after {
                found.reset = true;
            }
            let start = buf.ring.partition_point(|m| m.seq <= after).max(live);
            found
                .messages
                .extend(buf.ring.range(start..).take(limit).cloned());
        }
        if channels.len() > 1 {
            found.messages.sort_unstable_by_key(|m| m.seq);
            found.messages.dedup_by_key(|m| m.seq);
        }
        found.messages.truncate(limit);
        found
    }

    /// Names of the channels holding messages.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.channels
            .keys()
            .chain(self.retiring.iter().flat_map(HashMap::keys))
            .map(|k| &**k)
    }

    /// True when channel `name` holds messages (is counted in `stats().channels`): with it,
    /// the stats line counts channels with messages or waiters as `stats().channels` plus the
    /// waited-on channels not held, without walking every held name.
    pub fn holds(&self, name: &str) -> bool {
        self.held(name).is_some()
    }

    /// Figures for the stats line, kept as the store changes: O(1).
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            published: self.published,
            messages: self.messages,
            channels: self.held_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans(names: &[&str]) -> Box<[Box<str>]> {
        names.iter().map(|n| Box::<str>::from(*n)).collect()
    }

    fn seqs(f: &Found) -> Vec<u64> {
        f.messages.iter().map(|m| m.seq).collect()
    }

    /// `stats` recomputed by walking every ring.
    fn recount(s: &Store) -> StoreStats {
        let mut seen = std::collections::HashSet::new();
        for buf in s
            .channels
            .values()
            .chain(s.retiring.iter().flat_map(|r| r.values()))
        {
            seen.extend(buf.ring.iter().map(|m| m.seq));
        }
        StoreStats {
            published: s.published,
            messages: seen.len(),
            channels: s.held_count(),
        }
    }

    /// Stats of a store that accepted two messages on two channels.
    fn two_of_each() -> StoreStats {
        StoreStats {
            published: 2,
            messages: 2,
            channels: 2,
        }
    }

    #[test]
    fn fleet_appends_keep_the_logs_seqs_and_a_gap_resets_every_older_cursor() {
        let mut s = Store::new(5, 64, 1000, 10);
        let m = s.append_at(3, chans(&["a"]), None, "1", 0, 900).unwrap();
        assert_eq!((m.seq, m.expires_ms, s.last_seq()), (3, 900, 3));
        // An older entry time never makes expiry go back along the seq order.
        let m = s.append_at(4, chans(&["b"]), None, "2", 0, 100).unwrap();
        assert_eq!(m.expires_ms, 900);
        assert!(s.append_at(4, chans(&["a"]), None, "x", 0, 900).is_err());
        let f = s.read(&["a"], 2, 0, 100);
        assert_eq!((seqs(&f), f.reset), (vec![3], false));
        // A cursor ahead of this store is answered with itself, never moved back.
        let f = s.read(&["a"], 9, 0, 100);
        assert_eq!((f.last_seq, f.reset, f.messages.len()), (9, false, 0));

        s.lose_upto(8);
        s.append_at(9, chans(&["a"]), None, "3", 0, 900).unwrap();
        for (after, reset) in [(3, true), (7, true), (8, false)] {
            // On every channel, held or not.
            for ch in ["a", "b", "never"] {
                assert_eq!(
                    s.read(&[ch], after, 0, 100).reset,
                    reset,
                    "{ch} after {after}"
                );
            }
        }
        assert_eq!(seqs(&s.read(&["a"], 3, 0, 100)), vec![9]);
    }

    #[test]
    fn the_channel_limit_in_fleet_mode_loses_the_entry_loudly() {
        let mut s = Store::new(5, 64, 1000, 1);
        s.append_at(1, chans(&["a"]), None, "1", 0, 900).unwrap();
        assert!(s.append_at(2, chans(&["b"]), None, "2", 0, 900).is_err());
        assert_eq!(s.last_seq(), 2);
        assert!(s.read(&["b"], 1, 0, 100).reset);
        assert!(!s.read(&["b"], 2, 0, 100).reset);
    }

    #[test]
    fn a_new_epoch_voids_what_was_held() {
        let mut s = Store::new(5, 64, 1000, 10);
        s.append_at(1, chans(&["a"]), None, "1", 0, 900).unwrap();
        s.take_epoch(6, 4);
        assert_eq!((s.epoch(), s.last_seq()), (6, 4));
        assert_eq!(s.stats().messages, 0);
        assert_eq!(s.stats().published, 1);
        assert!(
            s.read(&["a"], 3, 0, 100).reset,
            "below the new epoch's start"
        );
        let m = s.append_at(5, chans(&["a"]), None, "2", 0, 900).unwrap();
        assert!(m.head().contains(&cursor::encode(6, 5)));
        assert_eq!(seqs(&s.read(&["a"], 4, 0, 100)), vec![5]);
    }

    #[test]
    fn a_recreated_channel_remembers_what_its_predecessor_lost() {
        for buffer in [1, 64] {
            let mut s = Store::new(1, buffer, 100, 1 << 20);
            s.publish(chans(&["other"]), None, "0", 0).unwrap(); // the cursor c0 = 1
            s.publish(chans(&["x"]), None, "1", 0).unwrap(); // m1 = 2
            assert!(!s.expire(100, usize::MAX));
            assert_eq!(s.channel_names().count(), 0, "buffer {buffer}");
            let f = s.read(&["x"], 1, 150, 100);
            assert!(f.reset && f.messages.is_empty(), "buffer {buffer}");
            s.publish(chans(&["x"]), None, "2", 150).unwrap(); // m2 = 3
            let f = s.read(&["x"], 1, 150, 100);
            assert_eq!((seqs(&f), f.reset), (vec![3], true), "buffer {buffer}");
            let f = s.read(&["x"], 2, 150, 100);
            assert_eq!((seqs(&f), f.reset), (vec![3], false), "buffer {buffer}");
            // Still known after the recreated channel lost m2 by length or TTL.
            s.publish(chans(&["x"]), None, "3", 150).unwrap(); // 4
            let f = s.read(&["x"], 1, 150, 100);
            assert!(f.reset, "buffer {buffer}");
        }
    }

    #[test]
    fn the_channel_bound_refuses_a_whole_publish_and_uses_no_seq() {
        let mut s = Store::new(1, 4, 100, 2);
        s.publish(chans(&["a"]), None, "1", 0).unwrap();
        s.publish(chans(&["b"]), None, "2", 0).unwrap();
        let e = s.publish(chans(&["a", "c"]), None, "3", 10).unwrap_err();
        assert_eq!(e, PublishRefused::TooManyChannels { max: 2 });
        let text = e.to_string();
        assert!(
            text.contains("--max-channels") && text.contains('2'),
            "{text}"
        );
        assert_eq!(s.last_seq(), 2);
        assert_eq!(seqs(&s.read(&["a", "c"], 0, 10, 100)), vec![1]);
        assert_eq!(s.stats(), two_of_each());
        // Existing channels only: accepted at the bound.
        assert_eq!(s.publish(chans(&["b", "a"]), None, "4", 10).unwrap().seq, 3);
        // Once a and b have expired, a new channel fits without waiting for the sweep.
        s.publish(chans(&["b"]), None, "5", 50).unwrap(); // 4, expires at 150
        assert_eq!(s.publish(chans(&["c"]), None, "6", 110).unwrap().seq, 5);
        let mut names: Vec<&str> = s.channel_names().collect();
        names.sort_unstable();
        assert_eq!(names, vec!["b", "c"]);
        assert!(s.holds("c") && !s.holds("a"));
        assert_eq!(s.stats(), recount(&s));
    }

    #[test]
    fn expire_works_in_bounded_slices() {
        let mut s = Store::new(1, 64, 10, 1 << 20);
        for i in 0..100 {
            s.publish(chans(&[&format!("c{i}")]), None, "0", 0).unwrap();
        }
        for _ in 0..5 {
            s.publish(chans(&["c0"]), None, "0", 0).unwrap();
        }
        assert!(!s.expire(9, usize::MAX));
        assert_eq!(s.stats().messages, 105);
        // 105 messages leave, 7 per slice: 15 slices, the last one says nothing more is due.
        let mut slices = 1;
        let mut before = s.stats().messages;
        while s.expire(10, 7) {
            let now = s.stats().messages;
            assert_eq!(before - now, 7);
            before = now;
            slices += 1;
        }
        assert_eq!(slices, 15);
        assert_eq!(s.stats(), recount(&s));
        assert_eq!((s.stats().messages, s.stats().channels), (0, 0));
        assert!(s.due.is_empty());
    }

    #[test]
    fn the_index_gives_memory_back_after_a_burst() {
        let mut s = Store::new(1, 4, 10, 1 << 20);
        for i in 0..20_000 {
            s.publish(chans(&[&format!("c{i}")]), None, "0", i / 1000)
                .unwrap();
        }
        assert!(s.channels.capacity() >= 20_000);
        // Four fifths expire: no resize yet (hysteresis: it takes a fall to an eighth).
        while s.expire(25, 100) {}
        assert_eq!(s.stats().channels, 4000);
        assert!(s.channels.capacity() > 16_000, "{}", s.channels.capacity());
        // All but 1000 expire: the index shrank to a few times what is left.
        while s.expire(28, 100) {}
        assert_eq!(s.stats().channels, 1000);
        assert!(s.channels.capacity() < 16_000, "{}", s.channels.capacity());
        assert!(s.due.capacity() < 16_000, "{}", s.due.capacity());
        assert_eq!(s.stats(), recount(&s));
    }

    #[test]
    fn a_large_index_retires_and_its_channels_move_over() {
        let mut s = Store::new(1, 4, 100, 1 << 20);
        // Channel ci gets message i + 1 at time i / 1000, expiring at i / 1000 + 100.
        for i in 0..80_000u64 {
            s.publish(chans(&[&format!("c{i}")]), None, "0", i / 1000)
                .unwrap();
        }
        let peak = s.channels.capacity();
        assert!(peak > SHRINK_MAX_CAPACITY);
        // c0..c73999 expire: the rest is under an eighth of the index, which retires.
        while s.expire(173, 500) {}
        assert_eq!(s.stats(), recount(&s));
        assert_eq!(s.stats().channels, 6000);
        assert_eq!(s.retiring.as_ref().map(HashMap::len), Some(6000));
        assert_eq!(s.channels.len(), 0);
        assert!(s.channels.capacity() < peak / 2);
        // A retiring channel is read as any other; a publish moves it over first.
        let f = s.read(&["c79999"], 0, 173, 10);
        assert_eq!((seqs(&f), f.reset), (vec![80_000], false));
        assert!(s.holds("c79999"));
        let m = s.publish(chans(&["c79999"]), None, "1", 173).unwrap();
        assert!(s.channels.contains_key("c79999"));
        assert!(!s.retiring.as_ref().unwrap().contains_key("c79999"));
        let f = s.read(&["c79999"], 0, 173, 10);
        assert_eq!(seqs(&f), vec![80_000, m.seq]);
        s.publish(chans(&["new"]), None, "2", 173).unwrap();
        assert_eq!(s.channel_names().count(), 6001);
        // The sweep moves over or drops every other: the retired table is freed.
        while s.expire(179, 500) {}
        assert!(s.retiring.is_none());
        let mut names: Vec<&str> = s.channel_names().collect();
        names.sort_unstable();
        assert_eq!(names, vec!["c79999", "new"]);
        assert_eq!(s.stats(), recount(&s));
    }

    /// Two stores against a slow model with time: the model keeps every message with its
    /// channels and publish time, and says a channel lost a message when it fell out by length
    /// or expired. One store is swept in random small slices, the other never: both answer the
    /// model's messages; the unswept one's `reset` is exact, the swept one's may only add to it
    /// (never a silent loss, whenever the sweep ran); both keep exact stats.
    #[test]
    fn answers_do_not_depend_on_when_the_sweep_ran() {
        let mut rng = crate::xorshift::XorShift::new(0x1234_5678_9abc_def1);
        let mut next = move || rng.next_u64();
        let names = ["a", "b", "c", "d", "e", "f"];
        let (buffer, ttl) = (3, 40);
        let mut swept = Store::new(1, buffer, ttl, 1 << 20);
        let mut unswept = Store::new(1, buffer, ttl, 1 << 20);
        let mut all: Vec<(u64, u64, Vec<&str>)> = Vec::new();
        let mut now = 0;
        for _ in 0..3000 {
            now += next() % 8;
            let cs: Vec<&str> = names.iter().copied().filter(|_| next() % 4 == 0).collect();
            if !cs.is_empty() {
                let m = swept.publish(chans(&cs), None, "0", now).unwrap();
                unswept.publish(chans(&cs), None, "0", now).unwrap();
                all.push((m.seq, now, cs));
            }
            if next() % 3 == 0 {
                swept.expire(now, (next() % 4) as usize);
            }
            let sub: Vec<&str> = names.iter().copied().filter(|_| next() % 2 == 0).collect();
            let after = next() % (swept.last_seq() + 1);
            let mut want: Vec<u64> = Vec::new();
            let mut lost = false;
            for ch in &sub {
                let on: Vec<(u64, u64)> = all
                    .iter()
                    .filter(|(_, _, c)| c.contains(ch))
                    .map(|(q, t, _)| (*q, *t))
                    .collect();
                let kept = on.len().saturating_sub(buffer);
                for (i, (q, t)) in on.iter().enumerate() {
                    if i >= kept && t + ttl > now {
                        if *q > after {
                            want.push(*q);
                        }
                    } else if *q > after {
                        lost = true;
                    }
                }
            }
            want.sort_unstable();
            want.dedup();
            want.truncate(7);
            let exact = unswept.read(&sub, after, now, 7);
            let late = swept.read(&sub, after, now, 7);
            assert_eq!(seqs(&exact), want, "sub {sub:?} after {after} at {now}");
            assert_eq!(seqs(&late), want, "sub {sub:?} after {after} at {now}");
            assert_eq!(exact.reset, lost, "sub {sub:?} after {after} at {now}");
            assert!(
                late.reset || !lost,
                "silent loss: sub {sub:?} after {after}"
            );
            assert_eq!(swept.stats(), recount(&swept));
            assert_eq!(unswept.stats(), recount(&unswept));
        }
    }

    #[test]
    fn publish_assigns_global_order_and_encodes_once() {
        let mut s = Store::new(7, 4, 1000, 1 << 20);
        let a = s
            .publish(chans(&["a"]), Some(70), r#"{"x": 1.50}"#, 0)
            .unwrap();
        let b = s.publish(chans(&["b", "a"]), None, "null", 0).unwrap();
        assert_eq!((a.seq, b.seq, s.last_seq()), (1, 2, 2));
        let mut out = Vec::new();
        a.encode_into(&mut out, "a");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                r#"{{"id":"{}","channel":"a","type":70,"data":{{"x": 1.50}}}}"#,
                cursor::encode(7, 1)
            )
        );
        assert_eq!(b.first_channel_in(&["a"]), Some("a"));
        assert_eq!(b.first_channel_in(&["a", "b"]), Some("b"));
        assert_eq!(s.stats(), two_of_each());
    }

    #[test]
    fn read_merges_dedups_and_limits() {
        let mut s = Store::new(1, 64, 1000, 1 << 20);
        for i in 0..10 {
            let c: &[&str] = match i % 3 {
                0 => &["a"],
                1 => &["b"],
                _ => &["a", "b"],
            };
            s.publish(chans(c), None, "1", 0).unwrap();
        }
        let f = s.read(&["a", "b"], 0, 0, 100);
        assert_eq!(seqs(&f), (1..=10).collect::<Vec<_>>());
        assert!(!f.reset);
        let f = s.read(&["a"], 3, 0, 100);
        assert_eq!(seqs(&f), vec![4, 6, 7, 9, 10]);
        let f = s.read(&["a", "b"], 2, 0, 3);
        assert_eq!(seqs(&f), vec![3, 4, 5]);
        let f = s.read(&["zzz"], 0, 0, 100);
        assert!(f.messages.is_empty() && !f.reset && f.last_seq == 10);
    }

    #[test]
    fn eviction_by_length_resets_only_older_cursors() {
        let mut s = Store::new(1, 3, 1000, 1 << 20);
        for _ in 0..5 {
            s.publish(chans(&["a"]), None, "1", 0).unwrap();
        }
        s.publish(chans(&["b"]), None, "1", 0).unwrap();
        // a holds 3,4,5; 1 and 2 were evicted.
        let f = s.read(&["a"], 0, 0, 100);
        assert_eq!((seqs(&f), f.reset), (vec![3, 4, 5], true));
        let f = s.read(&["a"], 1, 0, 100);
        assert_eq!((seqs(&f), f.reset), (vec![3, 4, 5], true));
        let f = s.read(&["a"], 2, 0, 100);
        assert_eq!((seqs(&f), f.reset), (vec![3, 4, 5], false));
        let f = s.read(&["a"], 5, 0, 100);
        assert_eq!((seqs(&f), f.reset), (vec![], false));
        // b never evicted anything
        let f = s.read(&["b"], 0, 0, 100);
        assert_eq!((seqs(&f), f.reset), (vec![6], false));
    }

    #[test]
    fn ttl_is_eviction_before_and_after_the_sweep() {
        let mut s = Store::new(1, 64, 100, 1 << 20);
        s.publish(chans(&["a"]), None, "1", 0).unwrap(); // expires at 100
        s.publish(chans(&["a"]), None, "2", 50).unwrap(); // expires at 150
        let f = s.read(&["a"], 0, 99, 100);
        assert_eq!((seqs(&f), f.reset), (vec![1, 2], false));
        let f = s.read(&["a"], 0, 100, 100);
        assert_eq!((seqs(&f), f.reset), (vec![2], true));
        let f = s.read(&["a"], 1, 100, 100);
        assert_eq!((seqs(&f), f.reset), (vec![2], false));
        s.expire(100, usize::MAX);
        let f = s.read(&["a"], 0, 100, 100);
        assert_eq!((seqs(&f), f.reset), (vec![2], true));
        assert_eq!(s.stats().messages, 1);
        // Everything expires: the channel is dropped, older cursors still learn of the loss.
        s.expire(150, usize::MAX);
        assert_eq!(s.channel_names().count(), 0);
        s.publish(chans(&["c"]), None, "3", 200).unwrap();
        let f = s.read(&["a"], 1, 200, 100);
        assert!(f.reset && f.messages.is_empty());
        let f = s.read(&["a"], 2, 200, 100);
        assert!(!f.reset && f.messages.is_empty());
    }

    /// The store against a slow model: every message kept forever with its channels, eviction
    /// by length recomputed from scratch.
    #[test]
    fn matches_a_reference_model() {
        let mut rng = crate::xorshift::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        let names = ["a", "b", "c", "d"];
        let buffer = 5;
        let mut s = Store::new(1, buffer, u64::MAX / 4, 1 << 20);
        let mut all: Vec<(u64, Vec<&str>)> = Vec::new();
        for _ in 0..400 {
            let mut cs: Vec<&str> = Vec::new();
            for n in names {
                if next() % 3 == 0 {
                    cs.push(n);
                }
            }
            if cs.is_empty() {
                cs.push(names[(next() % 4) as usize]);
            }
            let m = s.publish(chans(&cs), None, "0", 0).unwrap();
            all.push((m.seq, cs));
            let sub: Vec<&str> = names.iter().copied().filter(|_| next() % 2 == 0).collect();
            let after = next() % (m.seq + 1);
            let got = s.read(&sub, after, 0, 7);
            // model: per channel, the last `buffer` messages are held
            let held = |ch: &str| -> Vec<u64> {
                let v: Vec<u64> = all
                    .iter()
                    .filter(|(_, c)| c.contains(&ch))
                    .map(|(q, _)| *q)
                    .collect();
                v[v.len().saturating_sub(buffer)..].to_vec()
            };
            let mut want: Vec<u64> = Vec::new();
            let mut reset = false;
            for ch in &sub {
                let h = held(ch);
                let total = all.iter().filter(|(_, c)| c.contains(ch)).count();
                let dropped_max = all
                    .iter()
                    .filter(|(_, c)| c.contains(ch))
                    .map(|(q, _)| *q)
                    .take(total.saturating_sub(buffer))
                    .max()
                    .unwrap_or(0);
                if dropped_max > after {
                    reset = true;
                }
                want.extend(h.into_iter().filter(|q| *q > after));
            }
            want.sort_unstable();
            want.dedup();
            want.truncate(7);
            assert_eq!(seqs(&got), want, "sub {sub:?} after {after}");
            assert_eq!(got.reset, reset, "sub {sub:?} after {after}");
        }
    }
}
