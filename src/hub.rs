//! State shared by every thread of one server run: the channel store, the counters of the
//! stats line, the clock, the token secret, and the way to reach each reactor.
//!
//! Invariants: the store is only written through `ingest` (appends and the TTL sweep), from
//! whichever threads publish; the counters are updated with relaxed atomics (they are reports, not synchronisation); the clock
//! is monotonic milliseconds since start, and every deadline in pnsd is expressed on it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use crate::config::Config;
use crate::stats::WaitingReply;
use crate::store::Store;
use crate::token::Secret;

/// Milliseconds since the server started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Counters of the stats line that the store does not know.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicUsize,
    pub parked: AtomicUsize,
    pub delivered: AtomicU64,
}

/// A message for a reactor thread.
#[derive(Debug)]
pub enum Command {
    /// Messages up to seq `last_seq` were appended to these channels: wake their waiters.
    Published {
        last_seq: u64,
        channels: Arc<[Box<str>]>,
    },
    /// Report the channels that have parked polls on this thread, through the reply (which
    /// wakes the asker; see `stats`).
    WaitingChannels(WaitingReply),
    /// Start the drain of section 6.
    Drain,
}

/// How to reach one reactor.
#[derive(Debug)]
pub struct ReactorLink {
    pub commands: mpsc::Sender<Command>,
    pub waker: mio::Waker,
}

impl ReactorLink {
    /// Queues `cmd` and wakes the reactor; false if it is gone.
    pub fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok() && self.waker.wake().is_ok()
    }

    /// A link to no reactor, for tests: its commands are read from the receiver; its waker
    /// belongs to the returned poll, which nobody runs.
    #[cfg(test)]
    pub fn detached() -> (ReactorLink, mpsc::Receiver<Command>, mio::Poll) {
        let poll = mio::Poll::new().expect("poll");
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
        let (commands, rx) = mpsc::channel();
        (ReactorLink { commands, waker }, rx, poll)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Hub {
    pub config: Config,
    pub max_connections: usize,
    pub secret: Option<Secret>,
    pub clock: Clock,
    pub counters: Counters,
    pub draining: AtomicBool,
    store: RwLock<Store>,
}

impl Hub {
    pub fn new(config: Config, max_connections: usize, secret: Option<Secret>, epoch: u64) -> Hub {
        let store = Store::new(
            epoch,
            config.buffer,
            config.message_ttl_secs.saturating_mul(1000),
        );
        Hub {
            config,
            max_connections,
            secret,
            clock: Clock::new(),
            counters: Counters::default(),
            draining: AtomicBool::new(false),
            store: RwLock::new(store),
        }
    }

    /// The store for reading. A poisoned lock (a panic while publishing) still holds a
    /// consistent store: every write is a sequence of infallible steps.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
