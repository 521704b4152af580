//! What a reactor is told (`Command`, sent through its `ReactorLink`) and what it answers: the
//! channels its parked polls wait on (`WaitingReply`, for `stats`) and, when frozen for an
//! upgrade, its image (`ReactorImage` of `ConnImage`s, which `state` carries to the new
//! process).
//!
//! Invariants: a command is queued before the reactor is woken (`ReactorLink::send`), so a
//! woken reactor finds it; a reply whose asker is gone is dropped (`AskerGone`), never blocks.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use serde::{Deserialize, Serialize};

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

/// The reactors' side of an ask: where to send the names of the channels with parked polls.
#[derive(Debug)]
pub struct WaitingReply {
    query: u64,
    to: mpsc::Sender<(u64, Vec<Box<str>>)>,
    waker: Arc<mio::Waker>,
}

/// The asking thread is gone (drained); the reply is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskerGone;

impl WaitingReply {
    /// A reply to the ask numbered `query`, sent on `to`, waking the asker through `waker`.
    pub fn new(
        query: u64,
        to: mpsc::Sender<(u64, Vec<Box<str>>)>,
        waker: Arc<mio::Waker>,
    ) -> WaitingReply {
        WaitingReply { query, to, waker }
    }

    /// Sends `names` and wakes the asking thread.
    pub fn send(&self, names: Vec<Box<str>>) -> Result<(), AskerGone> {
        self.to.send((self.query, names)).map_err(|_| AskerGone)?;
        self.waker.wake().map_err(|_| AskerGone)
    }
}

/// One HTTP connection (`conn`): its phase, flags and buffered bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnImage {
    pub fd: i32,
    /// `conn`'s flag bits (close after, readable, read closed, token timer, stream) and its
    /// phase (bits 5-6: 0 head, 1 idle, 2 parked).
    pub flags: u8,
    /// The parked request's CORS match (`config::Cors::matching`).
    pub cors: u8,
    /// An event stream's heartbeats left.
    pub beats: u16,
    /// The parked poll's cursor seq.
    pub after: u64,
    /// The parked poll's channels, in subscription order.
    pub channels: Vec<String>,
    /// Milliseconds until its timer (hold, token, head, idle or write deadline) fires.
    pub timer_ms: Option<u64>,
    /// Received bytes not yet parsed, and body bytes still to skip.
    pub input: Vec<u8>,
    pub skip: u64,
    /// Response bytes not yet written.
    pub out: Vec<u8>,
}
