//! Sessions: the seed's `sid` as the application registers it over the publish socket
//! (`{"op":"session",...}`), a small table beside the store that the poll path consults when a
//! `sid` is not a token.
//!
//! A session names 1-16 channels and keeps a **position**: the seq where its previous answer
//! ended. A session poll without a cursor continues from there, so the seed's cursor-less loop
//! (answer, pause 500 ms, poll again) loses nothing published during its pauses. The position
//! starts at the newest seq when the session is first registered, only moves forward (tabs
//! sharing a session share it), and survives re-registration (which replaces the channels and
//! the TTL).
//!
//! Invariants:
//! - At most `max` sessions exist (`--max-sessions`); a registration beyond it is refused.
//! - A session expires `ttl` seconds after its registration or its last poll (a poll's start
//!   and its answer both refresh it; so do an event stream's start and each write of messages,
//!   not its heartbeats). An expired session is unknown to every lookup at once;
//!   its record is reclaimed by the incremental sweep (`sweep`: at most `SWEEP_SLICE` records
//!   looked at per call, resuming where the previous call stopped), or by a lookup that finds
//!   it expired: never a walk over the whole table.
//! - Record size: one slab slot (`Record`, 56 bytes on 64-bit, 64 with the slab's tag), one
//!   map entry (24 bytes and a control byte), the sid (16-byte `Arc` header plus its bytes) and
//!   the channel list (16-byte `Arc` header, 16 bytes per channel, and each name's own
//!   allocation): about 140 bytes plus the sid and the names for a one-channel session
//!   (`a_record_is_small` checks the fixed part).
//! - Parked session polls cost plain polls nothing: a parked session poll waits on its channels
//!   and on one reserved internal channel, [`wait_name`] (`!session:SID`, not a valid public
//!   channel name, so no publish can reach it). Ending a session wakes that channel on every
//!   reactor (`hub::Command::SessionEnded`), and the answer path (`parked`) recognises it to
//!   answer 401 `session_ended` or to move the session's position. The membership node and the
//!   name are per session poll, never per plain poll.
//!
//! The table sits behind one mutex; every operation is a hash lookup (no I/O, no allocation
//! except on registration), so the reactors' polls and the publish thread hold it briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use slab::Slab;

mod image;
pub use image::SessionImage;

/// Longest sid in bytes: the seed's session ids are short; 128 bytes hold any random id.
pub const MAX_SID_LEN: usize = 128;
/// Longest session TTL: a day, like the other timeouts.
pub const MAX_TTL_SECS: u64 = 86_400;
/// Default `--max-sessions`: a dense host holds about a million parked polls; one session per
/// subscriber at ~130 bytes each is ~130 MB at most.
pub const DEFAULT_MAX_SESSIONS: usize = 1_000_000;
/// Records looked at per sweep call (one per second from the publish thread): a full table of
/// a million is walked in about a minute, each call a fraction of a millisecond.
pub const SWEEP_SLICE: usize = 16_384;
/// Prefix of the reserved internal channel a parked session poll also waits on. `!` is not in
/// the public channel charset, so no publish or poll can name it.
pub const WAIT_PREFIX: &str = "!session:";

/// True when `sid` is 1..=128 bytes of `[A-Za-z0-9_-]` (the URL-safe base64 alphabet: it needs
/// no escaping in a query, and it has no `.`, so a token is never a session id).
pub fn valid_sid(sid: &str) -> bool {
    (1..=MAX_SID_LEN).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The reserved channel a parked poll of session `sid` also waits on.
pub fn wait_name(sid: &str) -> String {
    format!("{WAIT_PREFIX}{sid}")
}

/// The sid of a reserved session channel name; `None` for a public channel.
pub fn sid_of(name: &str) -> Option<&str> {
    name.strip_prefix(WAIT_PREFIX)
}

/// Why a registration is refused (the error line's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    Full(usize),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Full(max) => write!(f, "session table full ({max} sessions)"),
        }
    }
}

/// What a poll of a session needs: its channels and its position.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub channels: Arc<[Box<str>]>,
    pub position: u64,
}

#[derive(Debug)]
struct Record {
    sid: Arc<str>,
    channels: Arc<[Box<str>]>,
    position: u64,
    expires_ms: u64,
    ttl_ms: u64,
}

#[derive(Debug, Default)]
struct Table {
    records: Slab<Record>,
    by_sid: HashMap<Arc<str>, u32>,
    /// Where the next sweep slice starts.
    sweep_at: usize,
}

impl Table {
    fn remove(&mut self, key: u32) -> Record {
        let r = self.records.remove(key as usize);
        self.by_sid.remove(&r.sid);
        r
    }

    /// The live record of `sid` (an expired one is removed and not returned).
    fn live(&mut self, sid: &str, now_ms: u64) -> Option<&mut Record> {
        let key = *self.by_sid.get(sid)?;
        if self.records.get(key as usize)?.expires_ms <= now_ms {
            self.remove(key);
            return None;
        }
        self.records.get_mut(key as usize)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Sessions {
    max: usize,
    table: Mutex<Table>,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            max,
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every update is a sequence of infallible steps: a poisoned table is consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `sid` (already validated) on `channels` for `ttl_secs`, or replaces its
    /// channels and TTL; a new session's position is `newest` (the store's last seq).
    pub fn register(
        &self,
        sid: &str,
        channels: Arc<[Box<str>]>,
        ttl_secs: u64,
        newest: u64,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        let ttl_ms = ttl_secs.saturating_mul(1000);
        let expires_ms = now_ms.saturating_add(ttl_ms);
        let mut t = self.lock();
        if let Some(r) = t.live(sid, now_ms) {
            r.channels = channels;
            r.ttl_ms = ttl_ms;
            r.expires_ms = expires_ms;
            return Ok(());
        }
        if t.records.len() >= self.max {
            // Reclaim expired records before refusing: a full table of stale sessions must not
            // refuse a live application.
            sweep_slice(&mut t, now_ms);
            if t.records.len() >= self.max {
                return Err(SessionError::Full(self.max));
            }
        }
        let sid: Arc<str> = Arc::from(sid);
        let key = t.records.insert(Record {
            sid: sid.clone(),
            channels,
            position: newest,
            expires_ms,
            ttl_ms,
        }) as u32;
        t.by_sid.insert(sid, key);
        Ok(())
    }

    /// Ends `sid`; false when it was unknown (or already expired).
    pub fn end(&self, sid: &str, now_ms: u64) -> bool {
        let mut t = self.lock();
        let Some(&key) = t.by_sid.get(sid) else {
            return false;
        };
        let r = t.remove(key);
        r.expires_ms > now_ms
    }

    /// A poll of `sid` starts: refreshes its TTL and returns its channels and position.
    pub fn poll(&self, sid: &str, now_ms: u64) -> Option<SessionView> {
        let mut t = self.lock();
        let r = t.live(sid, now_ms)?;
        r.expires_ms = now_ms.saturating_add(r.ttl_ms);
        Some(SessionView {
            channels: r.channels.clone(),
            position: r.position,
        })
    }

    /// A session poll was answered up to `seq`: the position moves forward to it (never back)
    /// and the TTL is refreshed. An unknown sid is ignored.
    pub fn advance(&self, sid: &str, seq: u64, now_ms: u64) {
        let mut t = self.lock();
        if let Some(r) = t.live(sid, now_ms) {
            r.position = r.position.max(seq);
            r.expires_ms = now_ms.saturating_add(r.ttl_ms);
        }
    }

    /// Reclaims expired records among the next `SWEEP_SLICE` slots; returns how many.
    pub fn sweep(&self, now_ms: u64) -> usize {
        sweep_slice(&mut self.lock(), now_ms)
    }

    /// Live and not yet reclaimed sessions.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sweep_slice(t: &mut Table, now_ms: u64) -> usize {
    let cap = t.records.capacity();
    if cap == 0 {
        return 0;
    }
    let mut removed = 0;
    let start = t.sweep_at % cap;
    let end = (start + SWEEP_SLICE).min(cap);
    for key in start..end {
        if t.records.get(key).is_some_and(|r| r.expires_ms <= now_ms) {
            t.remove(key as u32);
            removed += 1;
        }
    }
    t.sweep_at = if end >= cap { 0 } else { end };
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans(names: &[&str]) -> Arc<[Box<str>]> {
        names.iter().map(|&n| Box::from(n)).collect()
    }

    #[test]
    fn sid_charset() {
        for (sid, ok) in [
            ("a", true),
            ("AZaz09_-", true),
            (&"x".repeat(MAX_SID_LEN), true),
            (&"x".repeat(MAX_SID_LEN + 1), false),
            ("", false),
            ("a.b", false),
            ("a b", false),
            ("a!", false),
            ("\u{e9}", false),
        ] {
            assert_eq!(valid_sid(sid), ok, "{sid:?}");
        }
        assert_eq!(sid_of(&wait_name("abc")), Some("abc"));
        assert_eq!(sid_of("abc"), None);
        assert!(!crate::query::valid_channel(&wait_name("abc")));
    }

    #[test]
    fn register_poll_advance_end() {
        let s = Sessions::new(10);
        s.register("s1", chans(&["a", "b"]), 10, 7, 0).unwrap();
        let v = s.poll("s1", 1000).unwrap();
        assert_eq!((&*v.channels, v.position), (&*chans(&["a", "b"]), 7));
        s.advance("s1", 12, 1000);
        s.advance("s1", 9, 1000);
        assert_eq!(s.poll("s1", 1000).unwrap().position, 12, "never back");
        // Re-registering replaces channels and keeps the position.
        s.register("s1", chans(&["c"]), 10, 99, 1000).unwrap();
        let v = s.poll("s1", 1000).unwrap();
        assert_eq!((&*v.channels, v.position), (&*chans(&["c"]), 12));
        assert!(s.end("s1", 1000));
        assert!(s.poll("s1", 1000).is_none());
        assert!(!s.end("s1", 1000));
    }

    #[test]
    fn ttl_counts_from_the_last_poll() {
        let s = Sessions::new(10);
        s.register("s", chans(&["a"]), 2, 0, 0).unwrap();
        assert!(s.poll("s", 1_999).is_some(), "refreshed to 3,999");
        assert!(s.poll("s", 3_998).is_some(), "refreshed to 5,998");
        assert!(s.poll("s", 5_998).is_none(), "expired");
        assert!(s.is_empty(), "the lookup reclaimed it");
    }

    #[test]
    fn bounded_and_swept() {
        let s = Sessions::new(3);
        for i in 0..3 {
            s.register(&format!("s{i}"), chans(&["a"]), 1, 0, 0)
                .unwrap();
        }
        assert_eq!(
            s.register("s3", chans(&["a"]), 1, 0, 0),
            Err(SessionError::Full(3))
        );
        // Once they expired, the sweep reclaims them, and a registration at the bound does too.
        assert_eq!(s.sweep(500), 0);
        s.register("s3", chans(&["a"]), 1, 0, 1000).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(5000), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_record_is_small() {
        assert!(
            std::mem::size_of::<Record>() <= 56,
            "{}",
            std::mem::size_of::<Record>()
        );
    }
}
