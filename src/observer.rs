//! What a reactor reports about its work, in one place: every response it starts
//! (`Observer::response`, called by the connection where every response passes, `conn`'s
//! `respond`) is counted in the reactor's metrics tally and, when the access log is on,
//! recorded for the log; the reactor reports the rest (delivered answers, refusals, accept
//! pauses, fan-out times, parks, closes, the end of each loop turn) through the other methods.
//!
//! Invariants: the metrics side is O(1) relaxed atomics on this reactor's own tally (the
//! answer's `summary` reads a bounded number of its bytes); the log side is taken only with
//! `--access-log` and appends to a reused buffer (no allocation in the steady state). Records
//! are taken by the reactor in the order they were made, `Step::answered` at a time per
//! connection (see `reactor`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::access_log::{ReactorLog, Record};
use crate::answer::Answer;
use crate::hub::Hub;
use crate::metrics::{Outcome, ReactorTally};
use crate::response::OVER_CAPACITY;
use crate::sockio::Segments;

/// What the connection knows of a response beyond its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Channels a poll's answer is for (0 for errors and other paths).
    pub channels: u8,
    /// The answer of a parked poll (its hold time is the reactor's to measure).
    pub parked: bool,
}

impl Served {
    /// An error or another path's answer, given at once.
    pub const OTHER: Served = Served {
        channels: 0,
        parked: false,
    };
    /// A parked poll's answer.
    pub const PARKED: Served = Served {
        channels: 0,
        parked: true,
    };

    /// An answer given at once to a poll on `channels` channels.
    pub fn at_once(channels: u8) -> Served {
        Served {
            channels,
            parked: false,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Observer {
    /// This reactor's index in `hub.gauges`.
    reactor: usize,
    log: Option<ReactorLog>,
}

impl Observer {
    pub fn new(reactor: usize, log: Option<ReactorLog>) -> Observer {
        Observer { reactor, log }
    }

    /// A response was started (see the module documentation).
    pub fn response(&mut self, hub: &Hub, answer: &Answer, served: Served) {
        let s = answer.summary();
        let outcome = if s.status >= 400 {
            Some(Outcome::Error)
        } else if !s.poll {
            None
        } else if s.reset {
            Some(Outcome::Reset)
        } else if s.messages {
            Some(Outcome::Message)
        } else {
            Some(Outcome::Timeout)
        };
        if let Some(g) = hub.gauges.get(self.reactor) {
            g.tally.response(s.status, outcome);
        }
        if let Some(log) = &mut self.log {
            log.record(Record {
                status: s.status,
                channels: served.channels,
                messages: u16::try_from(answer.message_count()).unwrap_or(u16::MAX),
                bytes: u32::try_from(answer.total_len()).unwrap_or(u32::MAX),
                parked: served.parked,
            });
        }
    }

    fn tally<'h>(&self, hub: &'h Hub) -> Option<&'h ReactorTally> {
        hub.gauges.get(self.reactor).map(|g| &g.tally)
    }

    /// `n` answers carrying messages were handed to the kernel.
    pub fn delivered(&self, hub: &Hub, n: u32) {
        if let Some(g) = hub.gauges.get(self.reactor) {
            g.delivered.fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }

    /// A connection from `peer` was answered 503 (`bytes` long) and closed at the limit.
    pub fn refused(&mut self, hub: &Hub, peer: Option<SocketAddr>, bytes: usize) {
        if let Some(t) = self.tally(hub) {
            t.refused();
            t.response(OVER_CAPACITY.status, None);
        }
        if let Some(log) = &mut self.log {
            let r = Record {
                status: OVER_CAPACITY.status,
                channels: 0,
                messages: 0,
                bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
                parked: false,
            };
            log.line(peer, &r, 0);
        }
    }

    /// Accepting paused for want of descriptors.
    pub fn accept_paused(&self, hub: &Hub) {
        if let Some(t) = self.tally(hub) {
            t.accept_paused();
        }
    }

    /// One publish wake-up answered its last subscriber on this reactor after `d`.
    pub fn fanout(&self, hub: &Hub, d: Duration) {
        if let Some(t) = self.tally(hub) {
            t.fanout(d);
        }
    }

    /// Connection `key` just started `n` responses (see `Step::answered`); `peer` reads its
    /// address, called only with the log on and once per connection.
    pub fn answered_by(
        &mut self,
        key: u32,
        n: u32,
        peer: impl FnOnce() -> Option<SocketAddr>,
        now_ms: u64,
    ) {
        if let Some(log) = &mut self.log {
            log.take(key, n, peer, now_ms);
        }
    }

    /// Connection `key` parked a poll on `channels` channels.
    pub fn parked(&mut self, key: u32, now_ms: u64, channels: usize) {
        if let Some(log) = &mut self.log {
            log.parked(key, now_ms, channels);
        }
    }

    /// Connection `key` is closed.
    pub fn forget(&mut self, key: u32) {
        if let Some(log) = &mut self.log {
            log.forget(key);
        }
    }

    /// The end of a loop turn: the log's buffer goes out.
    pub fn end_turn(&mut self) {
        if let Some(log) = &mut self.log {
            log.end_turn();
        }
    }
}
