//! The stats line's figures (PROTOCOL.md section 5) and where they are rendered (`/metrics`
//! renders its own, from the same gauges, in `metrics`).
//!
//! `channels` counts channels holding messages or waiters, each once, so it needs the names of
//! the channels every reactor has parked polls on. A stats request never stops anything to get
//! them: `PendingStats::ask` snapshots the counters and sends each reactor a
//! `Command::WaitingChannels` carrying a `WaitingReply`; the replies come back on a channel
//! that wakes the asking thread, which keeps serving everyone else meanwhile and renders the
//! line once every reactor replied or `STATS_WAIT` passed (then with the names it has).
//!
//! Invariants:
//! - The counters are read before the reactors are asked: `parked` and `delivered` are the
//!   sums of the reactors' own gauges (no counter shared between reactors); a poll counted as
//!   parked was linked into its reactor's waiters before its gauge moved (same thread), and
//!   that reactor replies after that, so the channel of every poll counted is among the names
//!   collected.
//! - The store's figures are read when the line is rendered, under the read lock only.
//! - An ask is answered exactly once, unless its asker is `forget`-ten first.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::fleet::{FeedState, FeedStats};
use crate::hub::{Command, Hub, ReactorLink};
use crate::session;

/// How long a stats request waits for the reactors' replies; a reactor stuck longer than
/// this is rare and only makes `channels` undercount its waiters for that one answer.
pub const STATS_WAIT: Duration = Duration::from_secs(1);

/// The figures of the stats line, in its field order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub connections: usize,
    pub parked: usize,
    pub channels: usize,
    pub messages: usize,
    pub published: u64,
    pub delivered: u64,
    /// Registered sessions (not yet reclaimed).
    pub sessions: usize,
    /// Server-Sent Events streams (also counted in `parked`).
    pub streams: usize,
    /// `local`, or the Redis URL (password masked) in fleet mode.
    pub store: String,
    /// Fleet mode: the feed's link and position (`redis_*` fields).
    pub fleet: Option<FeedStats>,
    /// This process's id: it changes with each upgrade.
    pub pid: u32,
    /// Processes this state has lived in: 1 at a first start, +1 per upgrade or state-file
    /// restart (see `state`).
    pub generation: u64,
}

impl Figures {
    /// The stats line, newline included.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "{{\"ok\":true,\"connections\":{},\"parked\":{},\"channels\":{},\"messages\":{},\"published\":{},\"delivered\":{},\"sessions\":{},\"streams\":{},\"pid\":{},\"generation\":{},\"store\":",
                self.connections,
                self.parked,
                self.channels,
                self.messages,
                self.published,
                self.delivered,
                self.sessions,
                self.streams,
                self.pid,
                self.generation,
            )
            .as_bytes(),
        );
        crate::response::json_string(out, &self.store);
        if let Some(f) = &self.fleet {
            out.extend_from_slice(
                format!(
                    ",\"redis_connected\":{},\"redis_last_seq\":{},\"redis_lag\":{},\"redis_reconnects\":{}",
                    f.connected, f.last_seq, f.lag, f.reconnects
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"}\n");
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
    /// Sends `names` and wakes the asking thread.
    pub fn send(&self, names: Vec<Box<str>>) -> Result<(), AskerGone> {
        self.to.send((self.query, names)).map_err(|_| AskerGone)?;
        self.waker.wake().map_err(|_| AskerGone)
    }
}

/// What was counted when the request arrived.
#[derive(Debug, Clone, Copy)]
struct Counted {
    connections: usize,
    parked: usize,
    streams: usize,
    delivered: u64,
}

#[derive(Debug)]
struct Ask<A> {
    query: u64,
    asker: A,
    counted: Counted,
    /// Reactors asked that have not replied yet.
    awaited: usize,
    names: HashSet<Box<str>>,
    deadline: Instant,
}

/// The stats requests of one thread that wait for the reactors' replies; `A` names the asker
/// (the publish thread's connection key).
#[derive(Debug)]
pub struct PendingStats<A> {
    replies_to: mpsc::Sender<(u64, Vec<Box<str>>)>,
    replies: mpsc::Receiver<(u64, Vec<Box<str>>)>,
    /// The asking thread's waker: a reply wakes it.
    waker: Arc<mio::Waker>,
    asks: Vec<Ask<A>>,
    next_query: u64,
    /// How long an ask waits for replies (`STATS_WAIT` but in tests).
    wait: Duration,
}

impl<A: Copy + PartialEq> PendingStats<A> {
    /// Asks that wait `wait` at most for replies (`STATS_WAIT`), waking `waker` per reply.
    pub fn new(waker: Arc<mio::Waker>, wait: Duration) -> PendingStats<A> {
        let (replies_to, replies) = mpsc::channel();
        PendingStats {
            replies_to,
            replies,
            waker,
            asks: Vec::new(),
            next_query: 0,
            wait,
        }
    }

    /// Starts a stats request for `asker`: snapshots the counters and asks every reactor.
    pub fn ask(&mut self, asker: A, hub: &Hub, reactors: &[ReactorLink], now: Instant) {
        let counted = Counted {
            connections: hub.counters.connections.load(Ordering::Relaxed),
            parked: hub.parked(),
            delivered: hub.delivered(),
            streams: hub.streams(),
        };
        let query = self.next_query;
        self.next_query += 1;
        let awaited = reactors
            .iter()
            .filter(|r| {
                r.send(Command::WaitingChannels(WaitingReply {
                    query,
                    to: self.replies_to.clone(),
                    waker: self.waker.clone(),
                }))
            })
            .count();
        self.asks.push(Ask {
            query,
            asker,
            counted,
            awaited,
            names: HashSet::new(),
            deadline: now + self.wait,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.asks.is_empty()
    }

    /// When the oldest ask gives up waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.asks.iter().map(|a| a.deadline).min()
    }

    /// Drops the asks of `asker` (it hung up); their replies are ignored.
    pub fn forget(&mut self, asker: A) {
        self.asks.retain(|a| a.asker != asker);
    }

    /// Takes the replies in, then renders the line of every ask that is complete (every
    /// reactor replied), past its deadline, or any at all when `force`, handing it to
    /// `answer` in the order the asks were made.
    pub fn collect(
        &mut self,
        hub: &Hub,
        now: Instant,
        force: bool,
        mut answer: impl FnMut(A, &[u8]),
    ) {
        for (query, names) in self.replies.try_iter() {
            if let Some(a) = self.asks.iter_mut().find(|a| a.query == query) {
                a.awaited = a.awaited.saturating_sub(1);
                a.names.extend(names);
            }
        }
        if !self
            .asks
            .iter()
            .any(|a| force || a.awaited == 0 || now >= a.deadline)
        {
            return;
        }
        let mut line = Vec::new();
        let mut i = 0;
        while i < self.asks.len() {
            let a = &self.asks[i];
            if force || a.awaited == 0 || now >= a.deadline {
                let a = self.asks.remove(i);
                line.clear();
                figures(hub, &a.counted, &a.names).write_line(&mut line);
                answer(a.asker, &line);
            } else {
                i += 1;
            }
        }
    }
}

/// The figures from the counters and the waiters' channel names, completed from the store.
fn figures(hub: &Hub, counted: &Counted, waiting: &HashSet<Box<str>>) -> Figures {
    let st = hub.read();
    // O(waiting channels), not O(held channels): a million held names are not walked. A
    // session's reserved wait channel is not a channel of the contract.
    let waiting_only = waiting
        .iter()
        .filter(|n| session::sid_of(n).is_none() && !st.holds(n))
        .count();
    let s = st.stats();
    Figures {
        connections: counted.connections,
        parked: counted.parked,
        channels: s.channels + waiting_only,
        sessions: hub.sessions.len(),
        streams: counted.streams,
        messages: s.messages,
        published: s.published,
        delivered: counted.delivered,
        store: hub.config.store_name().to_string(),
        fleet: hub.feed().map(FeedState::stats),
        pid: std::process::id(),
        generation: hub.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingest::{Ingest, Publish};

    fn reply(rx: &mpsc::Receiver<Command>, names: &[&str]) {
        match rx.try_recv() {
            Ok(Command::WaitingChannels(reply)) => reply
                .send(names.iter().map(|n| Box::from(*n)).collect())
                .expect("asker alive"),
            other => panic!("expected WaitingChannels, got {other:?}"),
        }
    }

    /// Asks waiting `STATS_WAIT`, with a waker on a poll nobody runs.
    fn pending() -> (PendingStats<usize>, mio::Poll) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        (PendingStats::new(waker, STATS_WAIT), poll)
    }

    fn line(bytes: &[u8]) -> serde_json::Value {
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(bytes).expect("json")
    }

    #[test]
    fn the_line_has_the_contract_fields_in_order() {
        let mut out = Vec::new();
        Figures {
            connections: 1,
            parked: 2,
            channels: 3,
            messages: 4,
            published: 5,
            delivered: 6,
            sessions: 7,
            streams: 8,
            store: "local".into(),
            fleet: None,
            pid: 9,
            generation: 10,
        }
        .write_line(&mut out);
        assert_eq!(
            out,
            b"{\"ok\":true,\"connections\":1,\"parked\":2,\"channels\":3,\"messages\":4,\"published\":5,\"delivered\":6,\"sessions\":7,\"streams\":8,\"pid\":9,\"generation\":10,\"store\":\"local\"}\n"
        );
        let mut out = Vec::new();
        let fleet = FeedStats {
            connected: true,
            epoch: 9,
            last_seq: 7,
            lag: 2,
            reconnects: 1,
        };
        Figures {
            store: "redis://h:1".into(),
            fleet: Some(fleet),
            ..Figures::default()
        }
        .write_line(&mut out);
        assert!(out.ends_with(
            b",\"store\":\"redis://h:1\",\"redis_connected\":true,\"redis_last_seq\":7,\"redis_lag\":2,\"redis_reconnects\":1}\n"
        ));
    }

    #[test]
    fn an_ask_is_answered_when_every_reactor_replied_with_the_union_of_names() {
        let hub = Arc::new(Hub::new(Config::default(), 10, None, 1));
        let ingest = Ingest::new(hub.clone(), Arc::new(Vec::new()));
        ingest
            .publish(Publish {
                channels: vec![Box::from("held"), Box::from("both")].into(),
                kind: None,
                data: "1".into(),
                key: None,
            })
            .expect("accepted");
        hub.gauges[0].parked.store(3, Ordering::Relaxed);
        let (l1, r1, _p1) = ReactorLink::detached();
        let (l2, r2, _p2) = ReactorLink::detached();
        let (mut pending, _poll) = pending();
        let now = Instant::now();
        pending.ask(7, &hub, &[l1, l2], now);
        // Counted when asked, not when answered.
        hub.gauges[0].parked.store(99, Ordering::Relaxed);
        let mut answers: Vec<(usize, Vec<u8>)> = Vec::new();
        pending.collect(&hub, now, false, |k, l| answers.push((k, l.to_vec())));
        assert!(answers.is_empty(), "answered before the reactors replied");
        reply(&r1, &["w1", "both"]);
        pending.collect(&hub, now, false, |k, l| answers.push((k, l.to_vec())));
        assert!(answers.is_empty(), "answered before every reactor replied");
        reply(&r2, &["w1", "w2"]);
        pending.collect(&hub, now, false, |k, l| answers.push((k, l.to_vec())));
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, 7);
        let v = line(&answers[0].1);
        assert_eq!(v["parked"], 3);
        // held, both, w1, w2
        assert_eq!(v["channels"], 4);
        assert_eq!(v["messages"], 1);
        assert_eq!(v["published"], 1);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_silent_reactor_delays_an_answer_until_the_deadline_only() {
        let hub = Arc::new(Hub::new(Config::default(), 10, None, 1));
        let (l1, r1, _p1) = ReactorLink::detached();
        let (silent, _rx, _p2) = ReactorLink::detached();
        let (mut pending, _poll) = pending();
        let t0 = Instant::now();
        pending.ask(1, &hub, &[l1, silent], t0);
        pending.ask(2, &hub, &[], t0);
        assert_eq!(pending.next_deadline(), Some(t0 + STATS_WAIT));
        reply(&r1, &["w"]);
        let mut answers: Vec<(usize, serde_json::Value)> = Vec::new();
        // Ask 2 asked no reactor: complete at once; ask 1 still waits for the silent one.
        pending.collect(&hub, t0, false, |k, l| answers.push((k, line(l))));
        assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), vec![2]);
        pending.collect(&hub, t0 + STATS_WAIT, false, |k, l| {
            answers.push((k, line(l)))
        });
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[1].0, 1);
        assert_eq!(answers[1].1["channels"], 1);
        // A forgotten asker is never answered; `force` answers the rest at once.
        pending.ask(3, &hub, &[], t0);
        pending.ask(4, &hub, &[], t0);
        pending.forget(3);
        pending.collect(&hub, t0, true, |k, l| answers.push((k, line(l))));
        assert_eq!(
            answers.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![2, 1, 4]
        );
    }
}
