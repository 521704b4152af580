//! State shared by every thread of one server run: the channel store, the session table,
//! the global counters, each reactor's gauges and counters, the clock, the token secret, the
//! fleet link's figures (once fleet mode registers them), and the way to reach each reactor.
//!
//! Invariants: the store is only written through `ingest` (appends and the TTL sweep), from
//! whichever threads publish, and `ingest` mirrors its O(1) figures into `counters.store` after
//! each write; the counters and gauges are updated with relaxed atomics (they are reports, not
//! synchronisation; `counters.connections` is also the admission count, a fetch-add that
//! cannot overshoot); a reactor's gauges are written only by that reactor (each on its own
//! cache line, so no reactor contends with another) and read by anyone without a round trip:
//! the stats line and `/metrics` sum them. The clock is monotonic milliseconds since start, and
//! every deadline in pnsd is expressed on it; a `Clock::manual()` clock only moves when a test
//! advances it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::fleet::FeedState;
use crate::metrics::ReactorTally;
use crate::session::Sessions;
use crate::state::ConnImage;
use crate::stats::WaitingReply;
use crate::store::Store;
use crate::token::Secret;

/// Milliseconds since the server started: real time, or a manual time that tests drive.
#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    /// Set for a manual clock: the current time, moved only by `advance`.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            manual: None,
        }
    }

    /// A clock standing at 0 ms until `advance` moves it (its clones share the time).
    pub fn manual() -> Clock {
        Clock {
            start: Instant::now(),
            manual: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock forward by `ms`; no-op on a real one.
    pub fn advance(&self, ms: u64) {
        if let Some(t) = &self.manual {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }

    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => self.start.elapsed().as_millis() as u64,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Counters shared by the threads (the per-reactor ones are in `ReactorGauges`).
#[derive(Debug, Default)]
pub struct Counters {
    /// HTTP connections held: the admission count (see the module documentation).
    pub connections: AtomicUsize,
    /// Lines answered with an error on the publish socket (malformed, too long, refused).
    pub publish_errors: AtomicU64,
    /// The store's figures, as `ingest` left them after its last write.
    pub store: StoreFigures,
    /// Requests whose `Origin` is not in the `--cors-origin` list (answered without CORS
    /// headers, so the browser reports the CORS error); for the metrics.
    pub cors_mismatches: AtomicU64,
}

/// The store's O(1) figures, mirrored by `ingest` under the write lock so that a reader
/// (`/metrics`) never takes the store's lock.
#[derive(Debug, Default)]
pub struct StoreFigures {
    /// Channels holding at least one message.
    pub channels: AtomicUsize,
    /// Messages held in at least one channel buffer (each message once).
    pub messages: AtomicUsize,
    /// Messages accepted since start.
    pub published: AtomicU64,
}

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

/// A message for a reactor thread.
#[derive(Debug)]
pub enum Command {
    /// Messages up to seq `last_seq` were appended to these channels: wake their waiters.
    Published {
        last_seq: u64,
        channels: Arc<[Box<str>]>,
        /// When `ingest` accepted the first of these messages (fan-out time starts).
        accepted: Instant,
    },
    /// Report the channels that have parked polls on this thread, through the reply (which
    /// wakes the asker; see `stats`).
    WaitingChannels(WaitingReply),
    /// Start the drain of section 6.
    Drain,
    /// Session `sid` ended: answer its parked polls 401 `session_ended` (they also wait on
    /// the reserved channel `session::wait_name(sid)`).
    SessionEnded(Arc<str>),
    /// The upgrade: stop at a safe point, send the reactor's image, and touch no socket until
    /// `Thaw` (after a failed upgrade; a successful one ends the process instead).
    Freeze(mpsc::Sender<ReactorImage>),
    /// Serve again after `Freeze`.
    Thaw,
    /// Fleet mode: the store took a new epoch (`new_epoch`) or lost entries to a gap: answer
    /// `reset:true`, from the store as it now is, every parked poll whose cursor that voided.
    Reset { new_epoch: bool },
}

/// One reactor's part of the upgrade image: its listeners' and connections' descriptors and
/// state.
#[derive(Debug)]
pub struct ReactorImage {
    /// The reactor's index in `Hub::gauges`.
    pub index: usize,
    pub listeners: Vec<i32>,
    pub conns: Vec<ConnImage>,
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
    /// One entry per reactor (`config.threads`), by reactor index.
    pub gauges: Box<[ReactorGauges]>,
    pub draining: AtomicBool,
    /// Processes this server's state has lived in (see `state`): 1 for a fresh store.
    pub generation: u64,
    /// Fleet mode: the feed's state (link, position, lag), set once at start; health, stats
    /// and `/metrics` (through `metrics::FleetLink`) read it. Unset in local mode.
    pub fleet: OnceLock<Arc<FeedState>>,
    /// `--access-log`, opened at start; each reactor writes through its own descriptor.
    pub access_log: Option<AccessLog>,
    /// The registered sessions (`--max-sessions`).
    pub sessions: Sessions,
    store: RwLock<Store>,
}

impl Hub {
    pub fn new(config: Config, max_connections: usize, secret: Option<Secret>, epoch: u64) -> Hub {
        let store = Store::new(
            epoch,
            config.buffer,
            config.message_ttl_secs.saturating_mul(1000),
            config.max_channels,
        );
        let gauges = (0..config.threads.max(1))
            .map(|_| ReactorGauges::default())
            .collect();
        let sessions_max = config.max_sessions;
        Hub {
            sessions: Sessions::new(sessions_max),
            config,
            max_connections,
            secret,
            clock: Clock::new(),
            counters: Counters::default(),
            gauges,
            draining: AtomicBool::new(false),
            generation: 1,
            fleet: OnceLock::new(),
            access_log: None,
            store: RwLock::new(store),
        }
    }

    /// This hub serving a store carried over from an earlier process (`state`), which was
    /// generation `generation - 1`.
    pub fn restored(mut self, store: Store, generation: u64) -> Hub {
        self.store = RwLock::new(store);
        self.generation = generation;
        self
    }

    /// The store for reading. A poisoned lock (a panic while publishing) still holds a
    /// consistent store: every write is a sequence of infallible steps.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Fleet mode's feed state, `None` in local mode.
    pub fn feed(&self) -> Option<&FeedState> {
        self.fleet.get().map(|f| &**f)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Polls parked on every reactor (the sum of their gauges).
    pub fn parked(&self) -> usize {
        self.gauges
            .iter()
            .map(|g| g.parked.load(Ordering::Relaxed))
            .sum()
    }

    /// Server-Sent Events streams open on every reactor.
    pub fn streams(&self) -> usize {
        self.gauges
            .iter()
            .map(|g| g.streams.load(Ordering::Relaxed))
            .sum()
    }

    /// Answers with messages delivered by every reactor.
    pub fn delivered(&self) -> u64 {
        self.gauges
            .iter()
            .map(|g| g.delivered.load(Ordering::Relaxed))
            .sum()
    }
}
