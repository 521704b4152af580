//! One reactor's figures, kept by that reactor and read by any thread without asking it: its
//! gauges (connections, parked polls, streams, waiting channels), its `delivered` count and its
//! `tally` for `/metrics`. `hub` holds one per reactor; `stats` and `metrics` sum them.
//!
//! Invariants: only the owning reactor writes (relaxed atomics: they are reports, not
//! synchronisation); each reactor's figures sit on their own cache lines, so no reactor's
//! increment bounces another's line.

use std::sync::atomic::{AtomicU64, AtomicUsize};

pub mod tally;
pub use tally::{Outcome, ReactorTally, TallySnapshot, ERROR_STATUSES, FANOUT_BOUNDS_US};

/// One reactor's gauges and counters, kept by that reactor, read by any thread without asking
/// it. Aligned to its own cache lines: a reactor's increments never bounce another's line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ReactorGauges {
    /// Connections this reactor holds.
    pub connections: AtomicUsize,
    /// Polls parked on this reactor (streams included).
    pub parked: AtomicUsize,
    /// Server-Sent Events streams on this reactor.
    pub streams: AtomicUsize,
    /// Channels with at least one parked poll on this reactor (its waiter index's size).
    pub waiting_channels: AtomicUsize,
    /// Answers with at least one message handed to the socket by this reactor.
    pub delivered: AtomicU64,
    /// Answers by outcome, errors by status, refusals, accept pauses, fan-out times.
    pub tally: ReactorTally,
}
