//! The publisher's client: sends a batch of publishes to Redis pipelined, in order, on one
//! blocking connection, and says per line what became of it.
//!
//! It lives on the thread that owns it (the publish thread), never on a reactor, and blocks at
//! most one reply timeout per batch read (plus one connect timeout when it reconnects).
//!
//! Invariants:
//! - Every line gets exactly one result, in the batch's order; the lines are sent in that order
//!   on one connection, so their seqs increase in that order (a line refused `NOSCRIPT` is sent
//!   again after the script is loaded, behind the lines that went through).
//! - `NoLink` means the line was not sent: the feed reports the link down (this client trusts
//!   the feed's view, so a publish is never accepted that this node could not make visible),
//!   or no connection could be opened. `Unknown` means it was sent (or may have been) and no
//!   reply came within the reply timeout: Redis may or may not have appended it, so a retry
//!   should carry an idempotency key. `Refused` means Redis ran the script and it appended
//!   nothing.
//! - Every publish names the feed's epoch and last seq; the script refuses it if either is
//!   stale, so an entry is never appended under an epoch this node does not follow.
//! - After a read failed or timed out the connection is dropped (its replies are out of step).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use redis::{Connection, RedisResult, Value};

use super::epoch;
use super::link::{self, LinkLog};
use super::options::{FleetOptions, Keys};
use super::script::{self, PublishLine, PublishScript, Reply};
use super::state::FeedState;

/// What Redis made of one accepted line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub epoch: u64,
    pub seq: u64,
    /// The line repeated an idempotency key within the window: `seq` is the first append's.
    pub duplicate: bool,
}

/// Why a line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    NoLink,
    Unknown,
    Refused(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::NoLink => f.write_str("not sent: no link to redis"),
            PublishError::Unknown => f.write_str(
                "outcome unknown: redis did not answer in time; retry with the same key",
            ),
            PublishError::Refused(why) => write!(f, "not appended: {why}"),
        }
    }
}

/// Why a line is refused when Redis lost data.
const LOST: &str = "redis lost data and the fleet is taking a new epoch; retry";

/// What a refusal asks of the epoch.
#[derive(Debug, Clone, Copy)]
enum Repair {
    /// The epoch key is gone: create one.
    Create,
    /// `P:seq` went back under this epoch: replace it.
    Bump(u64),
}

/// The result of one line.
pub type LineResult = Result<Published, PublishError>;

/// See the module documentation.
pub struct FleetPublisher {
    opts: FleetOptions,
    script: PublishScript,
    feed: Arc<FeedState>,
    /// The connection and the feed's `link_changes` when it was opened.
    con: Option<(Connection, u64)>,
    /// No connect is tried before this instant after a failed one.
    retry_at: Option<Instant>,
    log: LinkLog,
    out: Vec<u8>,
    keys: Keys,
    repair: Option<Repair>,
}

impl FleetPublisher {
    pub fn new(opts: FleetOptions, feed: Arc<FeedState>) -> FleetPublisher {
        FleetPublisher {
            script: PublishScript::new(&opts),
            keys: opts.keys(),
            log: LinkLog::new(&format!("{} (publisher)", opts.url.display())),
            opts,
            feed,
            con: None,
            retry_at: None,
            out: Vec::new(),
            repair: None,
        }
    }

    /// True while this client holds a connection.
    pub fn connected(&self) -> bool {
        self.con.is_some()
    }

    /// Publishes `lines` in order; one result per line, in order.
    pub fn publish(&mut self, lines: &[PublishLine]) -> Vec<LineResult> {
        let mut results: Vec<LineResult> = vec![Err(PublishError::NoLink); lines.len()];
        let pos = self.feed.position();
        if !self.feed.connected() || pos.epoch == 0 {
            self.con = None;
            return results;
        }
        if lines.is_empty() || !self.ensure_connection() {
            return results;
        }
        let mut todo: Vec<usize> = (0..lines.len()).collect();
        for with_load in [false, true] {
            let mut again = Vec::new();
            if let Err(e) = self.round(lines, &todo, with_load, pos, &mut results, &mut again) {
                self.con = None;
                self.log.down(&e);
                return results;
            }
            if again.is_empty() {
                break;
            }
            todo = again;
        }
        self.repair_epoch();
        results
    }

    /// Redis told a line it lost data: take the new epoch now rather than when the feed next
    /// looks (the feed adopts it after its next read). Both steps are safe to race with other
    /// nodes (`SET NX`, compare-and-set).
    fn repair_epoch(&mut self) {
        let (Some(repair), Some((con, _))) = (self.repair.take(), self.con.as_mut()) else {
            return;
        };
        let done = match repair {
            Repair::Create => epoch::ensure(con, &self.keys),
            Repair::Bump(stale) => epoch::bump(con, &self.keys, stale),
        };
        if let Err(e) = done {
            self.con = None;
            self.log.down(&e);
        }
    }

    /// Opens the connection if there is none (and no recent failure); true when there is one.
    fn ensure_connection(&mut self) -> bool {
        let changes = self.feed.link_changes();
        if self.con.as_ref().is_some_and(|(_, seen)| *seen != changes) {
            // The feed lost its link since this connection opened: it is likely dead too.
            self.con = None;
        }
        if self.con.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match self.open() {
            Ok(c) => {
                self.log.up();
                self.con = Some((c, changes));
                self.retry_at = None;
                true
            }
            Err(e) => {
                self.log.down(&e);
                self.retry_at = Some(Instant::now() + link::FIRST);
                false
            }
        }
    }

    fn open(&self) -> RedisResult<Connection> {
        let mut con = link::connect(&self.opts, self.opts.reply_timeout)?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script::SOURCE)
            .query(&mut con)?;
        if sha != self.script.sha() {
            return Err(epoch::redis_error("SCRIPT LOAD answered another SHA1"));
        }
        Ok(con)
    }

    /// Sends the lines `todo` (after a `SCRIPT LOAD` when `with_load`) and reads their replies
    /// into `results`; lines refused `NOSCRIPT` go to `again`. An error means the connection
    /// failed: every line of `todo` without a reply is then `Unknown`.
    fn round(
        &mut self,
        lines: &[PublishLine],
        todo: &[usize],
        with_load: bool,
        pos: super::state::Position,
        results: &mut [LineResult],
        again: &mut Vec<usize>,
    ) -> RedisResult<()> {
        let Some((con, _)) = self.con.as_mut() else {
            return Ok(());
        };
        self.out.clear();
        if with_load {
            self.out.extend_from_slice(&self.script.pack_load());
        }
        for &i in todo {
            self.script
                .pack_call(&mut self.out, &lines[i], pos.epoch, pos.last_seq);
        }
        for &i in todo {
            results[i] = Err(PublishError::Unknown);
        }
        con.send_packed_command(&self.out)?;
        if with_load {
            if let Value::ServerError(e) = con.recv_response()? {
                let why = format!("SCRIPT LOAD failed: {}", e.code());
                for &i in todo {
                    results[i] = Err(PublishError::Refused(why.clone()));
                }
                // The calls behind it were still sent: read and discard their replies.
                for _ in todo {
                    con.recv_response()?;
                }
                return Ok(());
            }
        }
        for &i in todo {
            let v = con.recv_response()?;
            results[i] = match script::reply(&v) {
                Reply::Appended(seq) => Ok(Published {
                    epoch: pos.epoch,
                    seq,
                    duplicate: false,
                }),
                Reply::Duplicate(seq) => Ok(Published {
                    epoch: pos.epoch,
                    seq,
                    duplicate: true,
                }),
                Reply::NoScript if !with_load => {
                    again.push(i);
                    Err(PublishError::Unknown)
                }
                Reply::NoScript => Err(PublishError::Refused("the script is not loaded".into())),
                Reply::NoEpoch => {
                    self.repair = Some(Repair::Create);
                    Err(PublishError::Refused(LOST.into()))
                }
                Reply::Rollback => {
                    self.repair = Some(Repair::Bump(pos.epoch));
                    Err(PublishError::Refused(LOST.into()))
                }
                // Another node took the new epoch already; the feed adopts it on its next read.
                Reply::Epoch(_) => Err(PublishError::Refused(LOST.into())),
                Reply::Failed(why) => Err(PublishError::Refused(why)),
            };
        }
        Ok(())
    }
}

impl fmt::Debug for FleetPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetPublisher")
            .field("url", &self.opts.url)
            .field("connected", &self.connected())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_say_what_happened() {
        assert_eq!(
            PublishError::NoLink.to_string(),
            "not sent: no link to redis"
        );
        assert!(PublishError::Unknown
            .to_string()
            .starts_with("outcome unknown"));
        assert_eq!(
            PublishError::Refused("x".into()).to_string(),
            "not appended: x"
        );
    }
}
