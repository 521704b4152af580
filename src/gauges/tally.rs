//! One reactor's counters for `/metrics`: answers by outcome, HTTP errors by status,
//! connections refused at the limit, accept pauses, and the fan-out time histogram.
//!
//! Invariants: only the owning reactor writes (relaxed `fetch_add`s on fixed arrays: no lock,
//! no allocation, nothing another thread can hold up); any thread reads, and `/metrics` sums
//! the reactors. A histogram observation is a bucket increment, a sum and a count; a reader
//! may see one observation half-recorded (bucket but not yet count), which a scrape tolerates:
//! every figure is monotonic and exact once the reactor's turn is over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a poll was answered with (`pnsd_answers_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one message.
    Message,
    /// No message: the hold ran out (or was 0), or the drain answered it.
    Timeout,
    /// `reset: true` (something after the cursor was evicted, or a foreign cursor).
    Reset,
    /// An error status (4xx, 5xx) to a request on the poll path or anywhere else.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Message,
        Outcome::Timeout,
        Outcome::Reset,
        Outcome::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Message => "message",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
            Outcome::Error => "error",
        }
    }
}

/// Every error status pnsd answers with (`response`'s errors); anything else is counted under
/// the last slot, labelled `other`.
pub const ERROR_STATUSES: [u16; 9] = [400, 401, 403, 404, 405, 408, 413, 431, 503];
const OTHER_STATUS: usize = ERROR_STATUSES.len();

fn status_slot(status: u16) -> usize {
    ERROR_STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(OTHER_STATUS)
}

/// Upper bounds of `pnsd_fanout_seconds`' buckets, in µs: from 100 µs (one small wake-up on an
/// idle reactor) to 10 s (a reactor answering a million polls), about 2.5x apart, so p50 and
/// p99 are read within one bucket's width at every scale between.
pub const FANOUT_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ReactorTally {
    answers: [AtomicU64; 4],
    errors: [AtomicU64; ERROR_STATUSES.len() + 1],
    refused: AtomicU64,
    accept_pauses: AtomicU64,
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    fanout: [AtomicU64; FANOUT_BOUNDS_US.len() + 1],
    fanout_sum_us: AtomicU64,
    fanout_count: AtomicU64,
}

/// A summed snapshot of every reactor's tally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TallySnapshot {
    pub answers: [u64; 4],
    pub errors: [u64; ERROR_STATUSES.len() + 1],
    pub refused: u64,
    pub accept_pauses: u64,
    pub fanout: [u64; FANOUT_BOUNDS_US.len() + 1],
    pub fanout_sum_us: u64,
    pub fanout_count: u64,
}

impl TallySnapshot {
    /// The `status` label of error slot `i`.
    pub fn status_label(i: usize) -> String {
        ERROR_STATUSES
            .get(i)
            .map_or_else(|| "other".to_string(), |s| s.to_string())
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ReactorTally {
    /// One response started: `status`, and for a poll's answer its outcome (`None` for health
    /// checks and preflights, which are not poll answers).
    pub fn response(&self, status: u16, outcome: Option<Outcome>) {
        if status >= 400 {
            bump(&self.errors[status_slot(status)]);
        }
        if let Some(o) = outcome {
            bump(&self.answers[o as usize]);
        }
    }

    /// A connection turned away at `--max-connections`.
    pub fn refused(&self) {
        bump(&self.refused);
    }

    /// Accepting paused for want of descriptors (EMFILE and kin).
    pub fn accept_paused(&self) {
        bump(&self.accept_pauses);
    }

    /// One fan-out took `d` (see `metrics` for the definition).
    pub fn fanout(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = FANOUT_BOUNDS_US.partition_point(|b| *b < us);
        bump(&self.fanout[slot]);
        self.fanout_sum_us.fetch_add(us, Ordering::Relaxed);
        bump(&self.fanout_count);
    }

    /// Adds this reactor's figures to `into`.
    pub fn add_to(&self, into: &mut TallySnapshot) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (a, b) in into.answers.iter_mut().zip(&self.answers) {
            *a += get(b);
        }
        for (a, b) in into.errors.iter_mut().zip(&self.errors) {
            *a += get(b);
        }
        into.refused += get(&self.refused);
        into.accept_pauses += get(&self.accept_pauses);
        for (a, b) in into.fanout.iter_mut().zip(&self.fanout) {
            *a += get(b);
        }
        into.fanout_sum_us += get(&self.fanout_sum_us);
        into.fanout_count += get(&self.fanout_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_outcomes_land_in_their_slots() {
        let t = ReactorTally::default();
        t.response(200, Some(Outcome::Message));
        t.response(200, None);
        t.response(404, Some(Outcome::Error));
        t.response(404, None);
        t.response(599, None);
        let mut s = TallySnapshot::default();
        t.add_to(&mut s);
        t.add_to(&mut s);
        assert_eq!(s.answers, [2, 0, 0, 2]);
        assert_eq!(s.errors[status_slot(404)], 4);
        assert_eq!(s.errors[OTHER_STATUS], 2);
        assert_eq!(TallySnapshot::status_label(OTHER_STATUS), "other");
        assert_eq!(TallySnapshot::status_label(3), "404");
    }

    #[test]
    fn every_error_of_the_contract_has_its_own_slot() {
        use crate::response::*;
        for e in [
            BAD_REQUEST,
            TOKEN_MISSING,
            FORBIDDEN_CHANNEL,
            NOT_FOUND,
            METHOD_NOT_ALLOWED,
            REQUEST_TIMEOUT,
            HEAD_TOO_LARGE,
            OVER_CAPACITY,
        ] {
            assert_ne!(status_slot(e.status), OTHER_STATUS, "{}", e.status);
        }
    }

    #[test]
    fn fanout_buckets_take_their_upper_bound_inclusive() {
        let t = ReactorTally::default();
        for us in [0, 100, 101, 10_000_000, 10_000_001] {
            t.fanout(Duration::from_micros(us));
        }
        let mut s = TallySnapshot::default();
        t.add_to(&mut s);
        assert_eq!(s.fanout[0], 2);
        assert_eq!(s.fanout[1], 1);
        assert_eq!(s.fanout[FANOUT_BOUNDS_US.len() - 1], 1);
        assert_eq!(s.fanout[FANOUT_BOUNDS_US.len()], 1);
        assert_eq!(s.fanout_count, 5);
        assert_eq!(s.fanout_sum_us, 100 + 101 + 10_000_000 + 10_000_001);
    }
}
