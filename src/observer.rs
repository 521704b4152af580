//! What a reactor learns of every response it starts: one call, `Observer::response`, made by
//! the connection where every response passes (`conn`'s `respond`), counts it in the reactor's
//! metrics tally and, when the access log is on, records it for the log.
//!
//! Invariants: the metrics side is O(1) relaxed atomics on this reactor's own tally (the
//! answer's `summary` reads a bounded number of its bytes); the log side is taken only with
//! `--access-log` and appends to a reused buffer (no allocation in the steady state). Records
//! are taken by the reactor in the order they were made, `Step::answered` at a time per
//! connection (see `reactor`).

use crate::access_log::{ReactorLog, Record};
use crate::answer::Answer;
use crate::hub::Hub;
use crate::metrics::Outcome;
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

    /// The access log, when it is on.
    pub fn log(&mut self) -> Option<&mut ReactorLog> {
        self.log.as_mut()
    }
}
