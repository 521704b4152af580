//! The channel store: every message held by this server run, shared by all reactor threads.
//!
//! One `Store` lives behind an `RwLock` in `Shared`. The publish thread appends under the write
//! lock (so the ack, sent after `publish` returns, happens after the message is visible to every
//! thread); reactors read under the read lock.
//!
//! Invariants:
//! - `last_seq` is the sequence number of the newest accepted message; messages get
//!   `last_seq + 1` in acceptance order: one global order per run.
//! - Each `ChannelBuffer`'s ring is sorted by `seq` and holds at most `buffer` messages. A
//!   message published to several channels is one `Arc<Message>` shared by their rings.
//! - `evicted_upto` of a channel is the highest seq ever dropped from its ring (by length or TTL);
//!   a read whose cursor is below it has missed something and is told `reset`.
//! - Since every message gets the same TTL and seqs are assigned in time order, expired messages
//!   form a prefix of every ring; a read treats that prefix as evicted even before the sweep
//!   (`expire`) removes it, so the answer never depends on when the sweep ran.
//! - A channel with no message left is dropped by `expire` so memory does not grow with every
//!   name ever published to; its `evicted_upto` folds into `forgotten_upto`, and a read of a
//!   channel the store does not hold with a cursor below `forgotten_upto` is conservatively
//!   told `reset` (it cannot be proven that nothing was missed). See README, "Deviations".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::cursor;

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
    ring: std::collections::VecDeque<Arc<Message>>,
    evicted_upto: u64,
}

impl ChannelBuffer {
    /// Number of leading messages expired at `now_ms`.
    fn expired_prefix(&self, now_ms: u64) -> usize {
        self.ring.partition_point(|m| m.expires_ms <= now_ms)
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
    pub messages: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Store {
    epoch: u64,
    last_seq: u64,
    buffer: usize,
    ttl_ms: u64,
    channels: HashMap<Box<str>, ChannelBuffer>,
    forgotten_upto: u64,
    published: u64,
}

impl Store {
    /// An empty store for run `epoch`, keeping `buffer` (>= 1) messages per channel for `ttl_ms`.
    pub fn new(epoch: u64, buffer: usize, ttl_ms: u64) -> Store {
        Store {
            epoch,
            last_seq: 0,
            buffer: buffer.max(1),
            ttl_ms,
            channels: HashMap::new(),
            forgotten_upto: 0,
            published: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Accepts one message: assigns the next seq, appends it to each channel's ring (evicting
    /// the oldest beyond `buffer`) and returns it. `channels` must be non-empty and free of
    /// repeats; `data` is the publisher's JSON text, kept verbatim.
    pub fn publish(
        &mut self,
        channels: Box<[Box<str>]>,
        kind: Option<i64>,
        data: &str,
        now_ms: u64,
    ) -> Arc<Message> {
        self.last_seq += 1;
        self.published += 1;
        let seq = self.last_seq;
        let mut head = String::with_capacity(24 + cursor::MAX_LEN);
        head.push_str("{\"id\":\"");
        cursor::encode_into(&mut head, self.epoch, seq);
        head.push_str("\",\"channel\":");
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
            channels,
            expires_ms: now_ms.saturating_add(self.ttl_ms),
            head: head.into_boxed_str(),
            tail: tail.into_boxed_str(),
        });
        for name in msg.channels.iter() {
            let buf = match self.channels.get_mut(&**name) {
                Some(b) => b,
                None => self.channels.entry(name.clone()).or_default(),
            };
            if buf.ring.len() >= self.buffer {
                if let Some(old) = buf.ring.pop_front() {
                    buf.evicted_upto = buf.evicted_upto.max(old.seq);
                }
            }
            buf.ring.push_back(msg.clone());
        }
        msg
    }

    /// Drops expired messages and channels left empty (see the module documentation).
    pub fn expire(&mut self, now_ms: u64) {
        let mut forgotten = self.forgotten_upto;
        self.channels.retain(|_, buf| {
            let n = buf.expired_prefix(now_ms);
            if n > 0 {
                if let Some(last) = buf.ring.get(n - 1) {
                    buf.evicted_upto = buf.evicted_upto.max(last.seq);
                }
                buf.ring.drain(..n);
            }
            if buf.ring.is_empty() {
                forgotten = forgotten.max(buf.evicted_upto);
                false
            } else {
                true
            }
        });
        self.forgotten_upto = forgotten;
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
        let mut found = Found {
            messages: Vec::new(),
            reset: false,
            last_seq: self.last_seq,
        };
        if after >= self.last_seq {
            return found;
        }
        for name in channels {
            let Some(buf) = self.channels.get(name.as_ref()) else {
                if after < self.forgotten_upto {
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
        self.channels.keys().map(|k| &**k)
    }

    /// Figures for the stats line; walks every ring (stats are rare).
    pub fn stats(&self) -> StoreStats {
        let mut seen = HashSet::new();
        let mut messages = 0;
        for buf in self.channels.values() {
            for m in &buf.ring {
                if m.channels.len() == 1 || seen.insert(m.seq) {
                    messages += 1;
                }
            }
        }
        StoreStats {
            published: self.published,
            messages,
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

    #[test]
    fn publish_assigns_global_order_and_encodes_once() {
        let mut s = Store::new(7, 4, 1000);
        let a = s.publish(chans(&["a"]), Some(70), r#"{"x": 1.50}"#, 0);
        let b = s.publish(chans(&["b", "a"]), None, "null", 0);
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
        assert_eq!(
            s.stats(),
            StoreStats {
                published: 2,
                messages: 2
            }
        );
    }

    #[test]
    fn read_merges_dedups_and_limits() {
        let mut s = Store::new(1, 64, 1000);
        for i in 0..10 {
            let c: &[&str] = match i % 3 {
                0 => &["a"],
                1 => &["b"],
                _ => &["a", "b"],
            };
            s.publish(chans(c), None, "1", 0);
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
        let mut s = Store::new(1, 3, 1000);
        for _ in 0..5 {
            s.publish(chans(&["a"]), None, "1", 0);
        }
        s.publish(chans(&["b"]), None, "1", 0);
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
        let mut s = Store::new(1, 64, 100);
        s.publish(chans(&["a"]), None, "1", 0); // expires at 100
        s.publish(chans(&["a"]), None, "2", 50); // expires at 150
        let f = s.read(&["a"], 0, 99, 100);
        assert_eq!((seqs(&f), f.reset), (vec![1, 2], false));
        let f = s.read(&["a"], 0, 100, 100);
        assert_eq!((seqs(&f), f.reset), (vec![2], true));
        let f = s.read(&["a"], 1, 100, 100);
        assert_eq!((seqs(&f), f.reset), (vec![2], false));
        s.expire(100);
        let f = s.read(&["a"], 0, 100, 100);
        assert_eq!((seqs(&f), f.reset), (vec![2], true));
        assert_eq!(s.stats().messages, 1);
        // Everything expires: the channel is dropped, older cursors still learn of the loss.
        s.expire(150);
        assert_eq!(s.channel_names().count(), 0);
        s.publish(chans(&["c"]), None, "3", 200);
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
        let mut s = Store::new(1, buffer, u64::MAX / 4);
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
            let m = s.publish(chans(&cs), None, "0", 0);
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
