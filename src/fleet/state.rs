//! What the feed thread shares with the rest of the node: the link state and position for
//! stats and health, the stop request, and a way for the publish side to wait until an entry
//! is applied locally (ack after visibility).
//!
//! Invariants: `epoch` and `last_seq` change together under `pos` and only after the sink
//! returned from the call that made them true, so a waiter woken with "applied" may rely on the
//! sink holding the entry; `connected` is true only between a successful (re)connect with the
//! epoch checked and the next failure; the counters are relaxed atomics (reports, not
//! synchronisation).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The feed's position: the epoch in force and the last seq applied in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// 0 until the feed first read the fleet's epoch.
    pub epoch: u64,
    pub last_seq: u64,
}

/// A snapshot for stats and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// `redis_connected`.
    pub connected: bool,
    pub epoch: u64,
    /// `redis_last_seq`: the last seq applied to this node.
    pub last_seq: u64,
    /// `redis_lag`: entries in the log not yet applied here (as of the last read).
    pub lag: u64,
    /// `redis_reconnects`: successful connects after the first.
    pub reconnects: u64,
}

/// What a wait for an entry's visibility ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The node's store holds the entry, or the feed is past it in the same epoch (an entry
    /// trimmed before this node read it was announced as a gap, which resets older cursors).
    Yes,
    /// The fleet moved to another epoch first: the entry's log is gone.
    EpochChanged,
    /// Not yet, when the timeout passed.
    TimedOut,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FeedState {
    pos: Mutex<Position>,
    moved: Condvar,
    connected: AtomicBool,
    head_seq: AtomicU64,
    reconnects: AtomicU64,
    link_changes: AtomicU64,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    stop_cv: Condvar,
}

impl FeedState {
    fn pos(&self) -> MutexGuard<'_, Position> {
        // A panic while holding this lock leaves a plain pair of numbers behind: still usable.
        self.pos.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn position(&self) -> Position {
        *self.pos()
    }

    pub fn stats(&self) -> FeedStats {
        let p = self.position();
        FeedStats {
            connected: self.connected(),
            epoch: p.epoch,
            last_seq: p.last_seq,
            lag: self
                .head_seq
                .load(Ordering::Relaxed)
                .saturating_sub(p.last_seq),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Counts changes of the link state: a publisher compares it to the value it saw when it
    /// connected to know whether its own connection may be stale.
    pub fn link_changes(&self) -> u64 {
        self.link_changes.load(Ordering::Acquire)
    }

    /// Waits until the entry `seq` of `epoch` is applied, or `timeout` passes. `epoch` must be
    /// one this feed was in (the publisher takes it from `position`).
    pub fn wait_applied(&self, epoch: u64, seq: u64, timeout: Duration) -> Applied {
        let deadline = Instant::now() + timeout;
        let mut p = self.pos();
        loop {
            if p.epoch == epoch && p.last_seq >= seq {
                return Applied::Yes;
            }
            // The publisher used the feed's epoch at the time, and the feed never returns to
            // an epoch it left: the entry's log is gone.
            if p.epoch != epoch {
                return Applied::EpochChanged;
            }
            let now = Instant::now();
            if now >= deadline {
                return Applied::TimedOut;
            }
            p = match self.moved.wait_timeout(p, deadline - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Asks the feed thread to end; it does within one `XREAD` block or back-off pause.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _g = self.stop_lock.lock();
        self.stop_cv.notify_all();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps `d` unless a stop is requested first; true when stopping.
    pub(crate) fn pause(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = self.stop_lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = match self.stop_cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        self.stopping()
    }

    pub(crate) fn set_position(&self, epoch: u64, last_seq: u64) {
        *self.pos() = Position { epoch, last_seq };
        self.moved.notify_all();
    }

    pub(crate) fn set_connected(&self, up: bool, reconnect: bool) {
        if reconnect {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if self.connected.swap(up, Ordering::AcqRel) != up {
            self.link_changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn set_head(&self, head: u64) {
        self.head_seq.store(head, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_for_position_or_epoch_change() {
        let s = Arc::new(FeedState::default());
        s.set_position(7, 3);
        let short = Duration::from_millis(10);
        assert_eq!(s.wait_applied(7, 3, short), Applied::Yes);
        assert_eq!(s.wait_applied(7, 4, short), Applied::TimedOut);
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait_applied(7, 5, Duration::from_secs(30)));
        s.set_position(7, 5);
        assert_eq!(t.join().unwrap(), Applied::Yes);
        s.set_position(8, 0);
        assert_eq!(s.wait_applied(7, 6, short), Applied::EpochChanged);
    }

    #[test]
    fn counts_link_changes_and_stops() {
        let s = FeedState::default();
        s.set_connected(true, false);
        s.set_connected(true, false);
        s.set_connected(false, false);
        s.set_connected(true, true);
        assert_eq!(s.link_changes(), 3);
        assert_eq!(s.stats().reconnects, 1);
        assert!(s.stats().connected);
        s.stop();
        assert!(s.pause(Duration::from_secs(30)));
    }
}
