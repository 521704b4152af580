//! The sessions' part of the server's state image (`state`): each live session with its
//! channels, position and the time it has left, so a session poll after an upgrade or a
//! planned restart continues from the same position.
//!
//! Invariants: times travel as remaining milliseconds (each process has its own clock); a
//! session whose time ran out between the processes is not restored; restoring never exceeds
//! `--max-sessions` (the oldest-expiring beyond it are dropped, as a full table would refuse
//! them).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Record, Sessions};

/// One live session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionImage {
    pub sid: String,
    pub channels: Vec<String>,
    pub position: u64,
    /// Milliseconds until it expires, when the image was taken.
    pub remaining_ms: u64,
    pub ttl_ms: u64,
}

impl Sessions {
    /// The live sessions at clock time `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> Vec<SessionImage> {
        let t = self.lock();
        t.records
            .iter()
            .filter(|(_, r)| r.expires_ms > now_ms)
            .map(|(_, r)| SessionImage {
                sid: r.sid.to_string(),
                channels: r.channels.iter().map(|c| c.to_string()).collect(),
                position: r.position,
                remaining_ms: r.expires_ms - now_ms,
                ttl_ms: r.ttl_ms,
            })
            .collect()
    }

    /// Adds the sessions of `images`, taken `elapsed_ms` ago, on a clock now at `now_ms`.
    pub fn restore(&self, mut images: Vec<SessionImage>, now_ms: u64, elapsed_ms: u64) {
        images.retain(|s| s.remaining_ms > elapsed_ms && super::valid_sid(&s.sid));
        images.sort_by_key(|s| std::cmp::Reverse(s.remaining_ms));
        let mut t = self.lock();
        for s in images {
            if t.records.len() >= self.max || t.by_sid.contains_key(s.sid.as_str()) {
                continue;
            }
            let sid: Arc<str> = Arc::from(s.sid);
            let key = t.records.insert(Record {
                sid: sid.clone(),
                channels: s.channels.into_iter().map(Box::from).collect(),
                position: s.position,
                expires_ms: now_ms + (s.remaining_ms - elapsed_ms),
                ttl_ms: s.ttl_ms,
            }) as u32;
            t.by_sid.insert(sid, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_travel_with_their_position_and_time_left() {
        let a = Sessions::new(10);
        let chans: Arc<[Box<str>]> = vec![Box::from("x")].into();
        a.register("s1", chans.clone(), 10, 5, 0).expect("room");
        a.register("s2", chans, 1, 5, 0).expect("room");
        a.advance("s1", 9, 500);
        let b = Sessions::new(10);
        // 2 s later s2 (1 s TTL) has expired; s1 has 8.5 s left.
        b.restore(a.snapshot(1000), 0, 1000);
        assert!(b.poll("s2", 0).is_none());
        let v = b.poll("s1", 0).expect("restored");
        assert_eq!((v.position, &*v.channels[0]), (9, "x"));
        // The poll at 0 refreshed the TTL: 10 s from then.
        assert!(b.poll("s1", 9_999).is_some());
        assert!(b.poll("s1", 19_998).is_some(), "refreshed at 9.999 s");
        assert!(b.poll("s1", 29_999).is_none());
    }
}
