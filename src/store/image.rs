//! The store's part of the server's state image (`state`): what another process needs to go on
//! serving the same run, so a client's cursor stays valid (same epoch, same seqs, no reset).
//!
//! Invariants:
//! - Times travel as remaining milliseconds, never as clock values: each process has its own
//!   clock origin (`hub::Clock`). `restore` subtracts the time the image spent between
//!   processes (`elapsed_ms`); a message whose time ran out meanwhile is restored as evicted
//!   (its seq folds into its channels' `evicted_upto`), so a cursor below it is told `reset`,
//!   exactly as if it had expired in this process.
//! - A message shared by several rings is one `MessageImage` (by seq), and one `Arc` again after
//!   `restore`; each `ChannelImage` lists its ring's seqs in ascending order.
//! - `restore` checks what it relies on (a known seq in each ring, ascending rings, seqs up to
//!   `last_seq`, the forgotten table's size) and refuses the image otherwise: a corrupt image
//!   never becomes a store that answers wrongly.
//! - The forgotten-channel table travels with its bucket seed, so every forgotten channel keeps
//!   its bucket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{message_head, ChannelBuffer, Due, Message, Store, FORGOTTEN_BUCKETS};

/// One buffered message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageImage {
    pub seq: u64,
    pub channels: Vec<String>,
    /// Milliseconds until it expires, when the image was taken.
    pub remaining_ms: u64,
    /// The encoded answer object after the channel name (`,"type":N,"data":DATA}`).
    pub tail: String,
}

/// One channel's ring.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelImage {
    pub name: String,
    pub evicted_upto: u64,
    /// Seqs of its ring, oldest first.
    pub ring: Vec<u64>,
}

/// See the module documentation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreImage {
    pub epoch: u64,
    pub last_seq: u64,
    /// Fleet mode: the highest seq lost to a gap in the log (a cursor below it is reset).
    #[serde(default)]
    pub lost_upto: u64,
    pub published: u64,
    pub bucket_seed: u64,
    pub forgotten: Vec<u64>,
    /// By ascending seq.
    pub messages: Vec<MessageImage>,
    pub channels: Vec<ChannelImage>,
}

impl Store {
    /// The image of this store at clock time `now_ms`. Messages already expired (not yet swept)
    /// are left out and counted as evicted, as a read would count them.
    pub fn snapshot(&self, now_ms: u64) -> StoreImage {
        let mut messages = BTreeMap::new();
        let mut channels = Vec::with_capacity(self.held_count());
        let held = self
            .channels
            .iter()
            .chain(self.retiring.iter().flat_map(|r| r.iter()));
        for (name, buf) in held {
            let live = buf.expired_prefix(now_ms);
            let mut evicted_upto = buf.evicted_upto;
            if live > 0 {
                evicted_upto = evicted_upto.max(buf.ring[live - 1].seq);
            }
            let mut ring = Vec::with_capacity(buf.ring.len() - live);
            for m in buf.ring.range(live..) {
                ring.push(m.seq);
                messages.entry(m.seq).or_insert_with(|| MessageImage {
                    seq: m.seq,
                    channels: m.channels.iter().map(|c| c.to_string()).collect(),
                    remaining_ms: m.expires_ms.saturating_sub(now_ms),
                    tail: m.tail.to_string(),
                });
            }
            channels.push(ChannelImage {
                name: name.to_string(),
                evicted_upto,
                ring,
            });
        }
        StoreImage {
            epoch: self.epoch,
            last_seq: self.last_seq,
            lost_upto: self.lost_upto,
            published: self.published,
            bucket_seed: self.bucket_seed,
            forgotten: self.forgotten.to_vec(),
            messages: messages.into_values().collect(),
            channels,
        }
    }

    /// The store an image describes, `elapsed_ms` after it was taken, on a clock now at
    /// `now_ms`, with this process's limits (a smaller `buffer` evicts the oldest of a ring).
    pub fn restore(
        image: StoreImage,
        buffer: usize,
        ttl_ms: u64,
        max_channels: usize,
        now_ms: u64,
        elapsed_ms: u64,
    ) -> Result<Store, String> {
        if image.forgotten.len() != FORGOTTEN_BUCKETS {
            return Err(format!(
                "{} forgotten buckets, expected {FORGOTTEN_BUCKETS}",
                image.forgotten.len()
            ));
        }
        let mut store = Store::new(image.epoch, buffer, ttl_ms, max_channels);
        store.last_seq = image.last_seq;
        store.lost_upto = image.lost_upto;
        store.published = image.published;
        store.bucket_seed = image.bucket_seed;
        store.forgotten = image.forgotten.into_boxed_slice();
        let mut by_seq: HashMap<u64, Option<Arc<Message>>> = HashMap::new();
        for m in image.messages {
            if m.seq == 0 || m.seq > image.last_seq {
                return Err(format!("message seq {} beyond {}", m.seq, image.last_seq));
            }
            let live = m.remaining_ms > elapsed_ms;
            let msg = live.then(|| {
                Arc::new(Message {
                    seq: m.seq,
                    channels: m.channels.into_iter().map(Box::from).collect(),
                    expires_ms: now_ms + (m.remaining_ms - elapsed_ms),
                    head: message_head(image.epoch, m.seq),
                    tail: m.tail.into_boxed_str(),
                    held: AtomicU32::new(0),
                })
            });
            by_seq.insert(m.seq, msg);
        }
        for c in image.channels {
            let mut ring = VecDeque::with_capacity(c.ring.len().min(store.buffer));
            let mut evicted_upto = c.evicted_upto;
            let mut prev = evicted_upto;
            let keep_from = c.ring.len().saturating_sub(store.buffer);
            for (i, seq) in c.ring.iter().enumerate() {
                if *seq <= prev {
                    return Err(format!("channel {:?}: ring not ascending", c.name));
                }
                prev = *seq;
                match by_seq.get(seq) {
                    None => return Err(format!("channel {:?}: unknown seq {seq}", c.name)),
                    Some(Some(m)) if i >= keep_from => {
                        m.held.fetch_add(1, Ordering::Relaxed);
                        ring.push_back(m.clone());
                    }
                    Some(_) => evicted_upto = evicted_upto.max(*seq),
                }
            }
            let name: Arc<str> = Arc::from(c.name);
            match ring.front() {
                Some(front) => {
                    store.due.push(Due {
                        at_ms: front.expires_ms,
                        name: name.clone(),
                    });
                    store
                        .channels
                        .insert(name, ChannelBuffer { ring, evicted_upto });
                }
                None => {
                    let b = store.bucket(&name);
                    store.forgotten[b] = store.forgotten[b].max(evicted_upto);
                }
            }
        }
        // Expiry times never decrease along the seq order: the next append starts from here.
        store.last_expires_ms = by_seq
            .values()
            .flatten()
            .map(|m| m.expires_ms)
            .max()
            .unwrap_or(0);
        store.messages = by_seq
            .values()
            .flatten()
            .filter(|m| m.held.load(Ordering::Relaxed) > 0)
            .count();
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans(names: &[&str]) -> Box<[Box<str>]> {
        names.iter().map(|n| Box::<str>::from(*n)).collect()
    }

    fn seqs(s: &Store, channels: &[&str], after: u64, now_ms: u64) -> (Vec<u64>, bool) {
        let f = s.read(channels, after, now_ms, 100);
        (f.messages.iter().map(|m| m.seq).collect(), f.reset)
    }

    /// A store with a shared message, an evicted one, an expired-not-swept one and a
    /// forgotten channel.
    fn sample() -> Store {
        let mut s = Store::new(7, 2, 1000, 100);
        s.publish(chans(&["gone"]), None, "0", 0).expect("room");
        s.expire(1000, 100); // "gone" is forgotten with evicted_upto 1
        s.publish(chans(&["a"]), Some(3), "1", 500).expect("room");
        s.publish(chans(&["a", "b"]), None, "{\"x\":2}", 900)
            .expect("room");
        s.publish(chans(&["a"]), None, "3", 1000).expect("room"); // evicts seq 2 from a
        s
    }

    #[test]
    fn a_restored_store_answers_every_read_as_the_original() {
        let s = sample();
        let image = s.snapshot(1200);
        let r = Store::restore(image.clone(), 2, 1000, 100, 5, 0).expect("restores");
        assert_eq!(r.epoch(), 7);
        assert_eq!(r.last_seq(), 4);
        assert_eq!(r.stats(), s.stats());
        for (chs, after) in [
            (&["a"][..], 0),
            (&["a"], 2),
            (&["a", "b"], 0),
            (&["b"], 3),
            (&["gone"], 0),
            (&["gone"], 1),
            (&["never"], 0),
        ] {
            assert_eq!(
                seqs(&r, chs, after, 5),
                seqs(&s, chs, after, 1200),
                "{chs:?} after {after}"
            );
        }
        let a = r.read(&["a"], 2, 5, 10);
        let mut out = Vec::new();
        a.messages[0].encode_into(&mut out, "a");
        let mut want = Vec::new();
        s.read(&["a"], 2, 1200, 10).messages[0].encode_into(&mut want, "a");
        assert_eq!(out, want);
        // The same image again (channels in index order: sorted to compare), at the same
        // remaining times.
        let by_name = |mut i: StoreImage| {
            i.channels.sort_by(|a, b| a.name.cmp(&b.name));
            i
        };
        assert_eq!(by_name(r.snapshot(5)), by_name(image));
    }

    #[test]
    fn time_spent_between_processes_expires_what_ran_out() {
        let s = sample();
        // At 1200: seq 3 has 700 ms left, seq 4 has 800.
        let r = Store::restore(s.snapshot(1200), 2, 1000, 100, 0, 750).expect("restores");
        assert_eq!(seqs(&r, &["a"], 0, 0), (vec![4], true));
        assert_eq!(seqs(&r, &["b"], 0, 0), (vec![], true), "b is forgotten");
        assert_eq!(r.stats().messages, 1);
        assert_eq!(seqs(&r, &["a"], 4, 49), (vec![], false));
        assert_eq!(seqs(&r, &["a"], 3, 50), (vec![], true), "4 expires at 50");
    }

    #[test]
    fn a_smaller_buffer_keeps_the_newest() {
        let r = Store::restore(sample().snapshot(1200), 1, 1000, 100, 0, 0).expect("restores");
        assert_eq!(seqs(&r, &["a"], 0, 0), (vec![4], true));
        assert_eq!(seqs(&r, &["b"], 0, 0), (vec![3], false));
    }

    #[test]
    fn a_corrupt_image_is_refused() {
        let good = sample().snapshot(1200);
        let mut bad = good.clone();
        bad.channels[0].ring = vec![4, 3];
        assert!(Store::restore(bad, 2, 1000, 100, 0, 0).is_err());
        let mut bad = good.clone();
        bad.channels[0].ring.push(99);
        assert!(Store::restore(bad, 2, 1000, 100, 0, 0).is_err());
        let mut bad = good.clone();
        bad.forgotten.pop();
        assert!(Store::restore(bad, 2, 1000, 100, 0, 0).is_err());
        let mut bad = good;
        bad.messages[0].seq = 5;
        assert!(Store::restore(bad, 2, 1000, 100, 0, 0).is_err());
    }

    #[test]
    fn later_publishes_continue_the_sequence() {
        let mut r = Store::restore(sample().snapshot(1200), 2, 1000, 100, 0, 0).expect("ok");
        let m = r.publish(chans(&["a"]), None, "5", 0).expect("room");
        assert_eq!(m.seq, 5);
        assert_eq!(seqs(&r, &["a"], 3, 0), (vec![4, 5], false));
    }
}
