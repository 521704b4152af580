//! The feed: one thread per node that reads the fleet's log and hands it, in stream order, to
//! the node's store through a `FeedSink`.
//!
//! Each round is one pipelined round trip, `XREAD COUNT n BLOCK ms STREAMS P:log <last>`,
//! `GET P:epoch`, `GET P:seq`. Redis runs them in order, so the two `GET`s see the state after
//! the read: if `P:epoch` still holds the feed's epoch, every entry read was appended under it
//! (an epoch never comes back once replaced) and is applied; otherwise the read is dropped and
//! the feed takes the epoch in force, or creates one.
//!
//! Invariants:
//! - The sink sees, per epoch, `epoch(e, start)` first, then entries with strictly increasing
//!   seqs, each exactly once, starting after `start`; every seq after `start` is either applied
//!   or covered by one `gap` call (trimmed before it was read) or skipped as malformed with a
//!   warning. Across a reconnect the feed resumes from its last applied seq: nothing is lost or
//!   repeated.
//! - A new epoch (the key vanished, holds another value, or `P:seq` fell below the feed's last
//!   seq: Redis lost data) is announced with `epoch` before any entry of it.
//! - At start and on a new epoch the feed reads the entries younger than the message TTL (by
//!   Redis's clock), found by bisecting seqs, then follows the log.
//! - Link changes are logged once each (`LinkLog`), and told to the sink once each; retries
//!   back off from 100 ms doubling to 5 s; `state` reflects connected, position, lag and
//!   reconnects for stats.
//! - The feed never touches a reactor: the sink is the only way its data leaves this thread.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use redis::{Connection, RedisResult, Value};

use super::entry::{self, Entry};
use super::epoch;
use super::link::{self, Backoff, LinkLog};
use super::options::{FleetOptions, Keys};
use super::state::FeedState;

/// Where the log's entries go. Calls come from the feed thread only, one at a time.
pub trait FeedSink: Send + Sync {
    /// The fleet's epoch is `epoch` and the log is read after `start_seq`: called before the
    /// first entry and again whenever the epoch changes. Positions up to `start_seq` were not
    /// read (older than the message TTL, or trimmed); anything held from another epoch is void,
    /// so its cursors get `reset`.
    fn epoch(&self, epoch: u64, start_seq: u64);
    /// Entries in stream order, seqs increasing.
    fn apply(&self, entries: &[Entry]);
    /// The entries `lost` were trimmed before this node read them: every cursor below
    /// `lost.end()` must be reset, on every channel (which channels they touched is unknown).
    fn gap(&self, lost: RangeInclusive<u64>);
    /// The link went up (after the epoch was checked) or down.
    fn link(&self, up: bool);
}

/// Starts the feed thread. `message_ttl_ms` bounds the start-up backfill.
pub fn spawn(
    opts: FleetOptions,
    message_ttl_ms: u64,
    sink: Arc<dyn FeedSink>,
) -> std::io::Result<(Arc<FeedState>, JoinHandle<()>)> {
    let state = Arc::new(FeedState::default());
    let feed = Feed {
        keys: opts.keys(),
        log: LinkLog::new(opts.url.display()),
        opts,
        ttl_ms: message_ttl_ms,
        sink,
        state: state.clone(),
        backoff: Backoff::default(),
        epoch: 0,
        last: 0,
        connected_once: false,
        batch: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("pnsd-feed".into())
        .spawn(move || feed.run())?;
    Ok((state, handle))
}

struct Feed {
    opts: FleetOptions,
    keys: Keys,
    ttl_ms: u64,
    sink: Arc<dyn FeedSink>,
    state: Arc<FeedState>,
    log: LinkLog,
    backoff: Backoff,
    /// The epoch in force, 0 before the first connect.
    epoch: u64,
    /// The last seq applied (or announced as lost) in `epoch`.
    last: u64,
    connected_once: bool,
    /// Entries of one round, reused.
    batch: Vec<Entry>,
}

/// An integer reply (`GET` of a counter); a missing key is 0.
fn int_of(v: &Value) -> RedisResult<u64> {
    match v {
        Value::Nil => Ok(0),
        Value::Int(i) => Ok((*i).max(0) as u64),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| epoch::redis_error("P:seq is not an integer")),
        _ => Err(epoch::redis_error("P:seq reply is not an integer")),
    }
}

impl Feed {
    fn run(mut self) {
        while !self.state.stopping() {
            match self.session() {
                Ok(()) => break,
                Err(e) => {
                    if self.log.down(&e) {
                        self.sink.link(false);
                    }
                    self.state.set_connected(false, false);
                    if self.state.pause(self.backoff.pause()) {
                        break;
                    }
                }
            }
        }
        self.state.set_connected(false, false);
    }

    /// One connection's life: returns `Ok` only when asked to stop.
    fn session(&mut self) -> RedisResult<()> {
        let read_timeout = Duration::from_millis(self.opts.block_ms) + self.opts.reply_timeout;
        let mut con = link::connect(&self.opts, read_timeout)?;
        self.sync_epoch(&mut con)?;
        self.state.set_connected(true, self.connected_once);
        self.connected_once = true;
        self.backoff.reset();
        if self.log.up() {
            self.sink.link(true);
        }
        while !self.state.stopping() {
            self.round(&mut con)?;
        }
        Ok(())
    }

    /// Checks the epoch and `P:seq` against the feed's, and takes a new epoch when Redis lost
    /// data (see the module documentation).
    fn sync_epoch(&mut self, con: &mut Connection) -> RedisResult<()> {
        let (e, head): (Value, Value) = redis::pipe()
            .cmd("GET")
            .arg(&self.keys.epoch)
            .cmd("GET")
            .arg(&self.keys.seq)
            .query(con)?;
        let head = int_of(&head)?;
        self.state.set_head(head);
        match epoch::from_reply(&e).map_err(|e| epoch::redis_error(&e))? {
            None => {
                let e = epoch::ensure(con, &self.keys)?;
                self.adopt(con, e)
            }
            Some(e) if e != self.epoch => self.adopt(con, e),
            Some(e) if head < self.last => {
                warn!(
                    "redis: {} went back from {} to {head}: Redis lost data, taking a new epoch",
                    self.keys.seq, self.last
                );
                let fresh = epoch::bump(con, &self.keys, e)?;
                self.adopt(con, fresh)
            }
            Some(_) => Ok(()),
        }
    }

    /// Takes `e` as the epoch in force, reading the log from its young entries on.
    fn adopt(&mut self, con: &mut Connection, e: u64) -> RedisResult<()> {
        let start = self.backfill_start(con)?;
        if self.epoch != 0 {
            warn!(
                "redis: the fleet's epoch changed from {} to {}: every older cursor is reset",
                epoch::format(self.epoch),
                epoch::format(e)
            );
        } else {
            info!(
                "redis: fleet epoch {}, reading the log after seq {start}",
                epoch::format(e)
            );
        }
        self.epoch = e;
        self.last = start;
        self.sink.epoch(e, start);
        self.state.set_position(e, start);
        Ok(())
    }

    /// The seq after which every entry of the log is younger than the message TTL.
    fn backfill_start(&self, con: &mut Connection) -> RedisResult<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con)?;
        let cutoff = (secs * 1000 + micros / 1000).saturating_sub(self.ttl_ms);
        let head = int_of(&redis::cmd("GET").arg(&self.keys.seq).query(con)?)?;
        let Some((first, first_ms)) = self.first_from(con, "-")? else {
            return Ok(head);
        };
        if first_ms >= cutoff {
            return Ok(first - 1);
        }
        // The entry at `lo` is old; the first entry at or after `hi` is young or absent.
        let (mut lo, mut hi) = (first, head.max(first) + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.first_from(con, &format!("{mid}-0"))? {
                Some((s, ms)) if ms < cutoff && s < hi => lo = s,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The seq and time of the first entry at or after the stream id `from`.
    fn first_from(&self, con: &mut Connection, from: &str) -> RedisResult<Option<(u64, u64)>> {
        let v: Value = redis::cmd("XRANGE")
            .arg(&self.keys.log)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query(con)?;
        Ok(match entry::parse_entries(&v).into_iter().next() {
            Some(Ok(e)) => Some((e.seq, e.time_ms)),
            // A foreign entry counts as old: it is never applied anyway.
            Some(Err(b)) => b.seq.map(|s| (s, 0)),
            None => None,
        })
    }

    /// One read of the log, applied if the epoch held.
    fn round(&mut self, con: &mut Connection) -> RedisResult<()> {
        let replies: Vec<Value> = redis::pipe()
            .cmd("XREAD")
            .arg("COUNT")
            .arg(self.opts.read_count)
            .arg("BLOCK")
            .arg(self.opts.block_ms)
            .arg("STREAMS")
            .arg(&self.keys.log)
            .arg(format!("{}-0", self.last))
            .cmd("GET")
            .arg(&self.keys.epoch)
            .cmd("GET")
            .arg(&self.keys.seq)
            .query(con)?;
        let [read, e, head] = <[Value; 3]>::try_from(replies)
            .map_err(|_| epoch::redis_error("a pipeline of 3 commands got another count"))?;
        let head = int_of(&head)?;
        let same = epoch::from_reply(&e).ok().flatten() == Some(self.epoch);
        if !same || head < self.last {
            return self.sync_epoch(con);
        }
        self.state.set_head(head);
        let items = entry::parse_xread(&read).map_err(epoch::redis_error)?;
        for item in items {
            let seq = match &item {
                Ok(e) => e.seq,
                Err(bad) => match bad.seq {
                    Some(s) => s,
                    None => {
                        warn!("redis: skipping a log entry without a seq: {}", bad.reason);
                        continue;
                    }
                },
            };
            if seq <= self.last {
                continue;
            }
            if seq != self.last + 1 {
                self.flush();
                warn!(
                    "redis: entries {}..={} were trimmed before this node read them \
                     (raise --redis-maxlen?): older cursors are reset",
                    self.last + 1,
                    seq - 1
                );
                self.sink.gap(self.last + 1..=seq - 1);
                self.last = seq - 1;
                self.state.set_position(self.epoch, self.last);
            }
            match item {
                Ok(e) => self.batch.push(e),
                Err(bad) => warn!("redis: skipping log entry {seq}: {}", bad.reason),
            }
            self.last = seq;
        }
        self.flush();
        self.state.set_position(self.epoch, self.last);
        Ok(())
    }

    /// Hands the entries of this round so far to the sink.
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.sink.apply(&self.batch);
            self.batch.clear();
        }
    }
}
