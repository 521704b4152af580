//! The link to Redis: connecting with a bound, the reconnect back-off, and logging its changes.
//!
//! Invariants: a connect never blocks longer than the caller's timeout (the `redis` crate
//! applies it to the socket connect and to the handshake); the back-off starts at `FIRST` and
//! doubles up to `CAP`, and a success starts it over; `LinkLog` writes one line per change of
//! state (up → down, down → up), never one per failed try.

use std::time::Duration;

use log::{info, warn};
use redis::{Client, Connection, RedisResult};

use super::options::FleetOptions;

/// First pause after a failure: a Redis restart takes about this long to accept again.
pub const FIRST: Duration = Duration::from_millis(100);
/// Longest pause: a Redis that comes back is noticed within 5 s, and a down Redis costs one
/// failed connect per 5 s per thread.
pub const CAP: Duration = Duration::from_secs(5);

/// Opens a connection whose replies are awaited at most `read_timeout` each.
pub fn connect(opts: &FleetOptions, read_timeout: Duration) -> RedisResult<Connection> {
    let client = Client::open(opts.url.info().clone())?;
    let con = client.get_connection_with_timeout(opts.reply_timeout)?;
    con.set_read_timeout(Some(read_timeout))?;
    con.set_write_timeout(Some(opts.reply_timeout))?;
    Ok(con)
}

/// Capped exponential back-off: `FIRST`, doubling, at most `CAP`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// The pause before the next try; each call doubles the following one, up to `CAP`.
    pub fn pause(&mut self) -> Duration {
        let p = self.next;
        self.next = (self.next * 2).min(CAP);
        p
    }

    /// After a success: the next failure pauses `FIRST` again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// Logs the link's state once per change. Starts unknown, so the first state is logged.
#[derive(Debug)]
pub struct LinkLog {
    up: Option<bool>,
    what: String,
}

impl LinkLog {
    /// `what` names the link in the log lines (e.g. the masked URL).
    pub fn new(what: &str) -> LinkLog {
        LinkLog {
            up: None,
            what: what.to_string(),
        }
    }

    /// Records the link up; true (and one log line) when that is a change.
    pub fn up(&mut self) -> bool {
        if self.up == Some(true) {
            return false;
        }
        info!("redis link up: {}", self.what);
        self.up = Some(true);
        true
    }

    /// Records the link down because of `err`; true (and one log line) when that is a change.
    pub fn down(&mut self, err: &dyn std::fmt::Display) -> bool {
        if self.up == Some(false) {
            return false;
        }
        warn!(
            "redis link down: {}: {err}; retrying with back-off up to {} s",
            self.what,
            CAP.as_secs()
        );
        self.up = Some(false);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_starts_over() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..8).map(|_| b.pause().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.pause(), FIRST);
    }

    #[test]
    fn logs_changes_only() {
        let mut l = LinkLog::new("x");
        assert!(l.down(&"refused"));
        assert!(!l.down(&"refused"));
        assert!(l.up());
        assert!(!l.up());
        assert!(l.down(&"eof"));
    }
}
