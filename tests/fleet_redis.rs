//! Fleet mode's Redis layer (`pnsd::fleet`) against a real `redis-server`: the publisher
//! client, the publish script, the epoch and the feed thread, without the HTTP server (the
//! wiring into ingest comes later). Each test starts its own Redis on a Unix socket
//! (`common::redis_server`) and is skipped loudly when `redis-server` is not installed.
//!
//! The sink records what the feed hands over; tests assert on that record and on Redis's own
//! state, and wait for conditions (never for fixed times) except where Redis's clock has to move.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::DEADLINE;
use pnsd::fleet::{
    self, Applied, Entry, FeedSink, FeedState, FleetOptions, FleetPublisher, LineResult,
    PublishError, PublishLine, RedisUrl,
};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Epoch(u64, u64),
    Apply(Entry),
    Gap(u64, u64),
    Link(bool),
}

/// A `FeedSink` that records every call; `apply` can be held shut to stop the reader.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Condvar,
    gate_shut: Mutex<bool>,
    gate: Condvar,
    held: AtomicBool,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
        self.changed.notify_all();
    }

    /// Waits until `f` finds what it looks for in the record.
    fn wait_for<T>(&self, what: &str, f: impl Fn(&[Event]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut ev = self.events.lock().unwrap();
        loop {
            if let Some(t) = f(&ev) {
                return t;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {what}; record: {ev:?}"
            );
            ev = self.changed.wait_timeout(ev, deadline - now).unwrap().0;
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn applied(&self) -> Vec<Entry> {
        applied(&self.events())
    }

    fn shut(&self) {
        *self.gate_shut.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.gate_shut.lock().unwrap() = false;
        self.gate.notify_all();
    }
}

fn applied(ev: &[Event]) -> Vec<Entry> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Apply(x) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

fn epochs(ev: &[Event]) -> Vec<(u64, u64)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Epoch(a, b) => Some((*a, *b)),
            _ => None,
        })
        .collect()
}

impl FeedSink for Recorder {
    fn epoch(&self, epoch: u64, start_seq: u64) {
        self.push(Event::Epoch(epoch, start_seq));
    }

    fn apply(&self, entries: &[Entry]) {
        let mut shut = self.gate_shut.lock().unwrap();
        while *shut {
            self.held.store(true, Ordering::SeqCst);
            self.changed.notify_all();
            shut = self.gate.wait(shut).unwrap();
        }
        self.held.store(false, Ordering::SeqCst);
        drop(shut);
        for e in entries {
            self.push(Event::Apply(e.clone()));
        }
    }

    fn gap(&self, lost: std::ops::RangeInclusive<u64>) {
        self.push(Event::Gap(*lost.start(), *lost.end()));
    }

    fn link(&self, up: bool) {
        self.push(Event::Link(up));
    }
}

/// One node's Redis side: a feed thread with its recorder, and a publisher.
struct Node {
    sink: Arc<Recorder>,
    state: Arc<FeedState>,
    feed: Option<JoinHandle<()>>,
    publisher: FleetPublisher,
}

/// A message TTL long enough that no test's entry is ever too old to backfill.
const LONG_TTL_MS: u64 = 3_600_000;

impl Node {
    fn start(opts: &FleetOptions) -> Node {
        Node::start_with(opts, opts, LONG_TTL_MS)
    }

    /// Feed and publisher with their own options (e.g. different timeouts).
    fn start_with(feed_opts: &FleetOptions, pub_opts: &FleetOptions, ttl_ms: u64) -> Node {
        let sink = Arc::new(Recorder::default());
        let (state, feed) = fleet::spawn(feed_opts.clone(), ttl_ms, sink.clone()).unwrap();
        let publisher = FleetPublisher::new(pub_opts.clone(), state.clone());
        let node = Node {
            sink,
            state,
            feed: Some(feed),
            publisher,
        };
        node.wait_up();
        node
    }

    fn wait_up(&self) {
        wait_until("the feed to connect", || self.state.connected());
    }

    fn epoch(&self) -> u64 {
        self.state.position().epoch
    }

    fn publish(&mut self, lines: &[PublishLine]) -> Vec<LineResult> {
        self.publisher.publish(lines)
    }

    /// Publishes, expects every line accepted, returns the seqs.
    fn publish_ok(&mut self, lines: &[PublishLine]) -> Vec<u64> {
        self.publish(lines)
            .into_iter()
            .map(|r| r.expect("publish accepted").seq)
            .collect()
    }

    fn wait_applied(&self, seq: u64) {
        assert_eq!(
            self.state.wait_applied(self.epoch(), seq, DEADLINE),
            Applied::Yes,
            "seq {seq} applied; record {:?}",
            self.sink.events()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.state.stop();
        self.sink.open();
        if let Some(h) = self.feed.take() {
            let _ = h.join();
        }
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn options(redis: &RedisServer) -> FleetOptions {
    FleetOptions::new(RedisUrl::parse(&redis.url()).unwrap())
}

fn line(channels: &[&str], kind: Option<i64>, data: &str, key: Option<&str>) -> PublishLine {
    PublishLine {
        channels: channels.iter().map(|c| Box::from(*c)).collect(),
        kind,
        data: data.into(),
        key: key.map(Box::from),
    }
}

/// `{"i":n}` on channel `a`, with key `k<n>` when `keyed`.
fn numbered(n: usize, keyed: bool) -> PublishLine {
    let key = format!("k{n}");
    line(
        &["a"],
        None,
        &format!("{{\"i\":{n}}}"),
        keyed.then_some(key.as_str()),
    )
}

fn numbered_lines(range: std::ops::Range<usize>, keyed: bool) -> Vec<PublishLine> {
    range.map(|i| numbered(i, keyed)).collect()
}

/// A node that published lines 0..5 (keyed) and applied them; returns it and its epoch.
fn node_with_five(redis: &RedisServer) -> (Node, u64) {
    let mut a = Node::start(&options(redis));
    let epoch = a.epoch();
    assert_eq!(a.publish_ok(&numbered_lines(0..5, true)), [1, 2, 3, 4, 5]);
    a.wait_applied(5);
    (a, epoch)
}

/// `P:epoch` holds `epoch`.
fn assert_stored_epoch(redis: &RedisServer, epoch: u64) {
    let stored: String = redis.cmd(&["GET", "pnsd:epoch"]);
    assert_eq!(stored, fleet::format_epoch(epoch));
}

fn number_of(e: &Entry) -> usize {
    let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    v["i"].as_u64().unwrap() as usize
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[test]
fn publishes_come_back_in_order_with_dense_seqs_on_every_node() {
    let Some(redis) = RedisServer::start("fleet_redis::round_trip") else {
        return;
    };
    let opts = options(&redis);
    let mut a = Node::start(&opts);
    let lines: Vec<PublishLine> = (0..100)
        .map(|i| {
            let chans: &[&str] = if i % 3 == 0 { &["x", "y:1"] } else { &["x"] };
            let kind = (i % 2 == 0).then_some(i as i64 - 50);
            line(chans, kind, &format!("{{\"n\":[{i},\"s\\u00e9\"]}}"), None)
        })
        .collect();
    let mut got = a.publish_ok(&lines[..40]);
    // A Redis that forgot the script (SCRIPT FLUSH, a failover) gets it again, same order.
    let _: () = redis.cmd(&["SCRIPT", "FLUSH"]);
    got.extend(a.publish_ok(&lines[40..]));
    assert_eq!(got, (1..=100).collect::<Vec<u64>>());
    a.wait_applied(100);
    let entries = a.sink.applied();
    assert_eq!(seqs(&entries), (1..=100).collect::<Vec<u64>>());
    for (e, l) in entries.iter().zip(&lines) {
        assert_eq!(
            (&e.channels, e.kind, &e.data),
            (&l.channels, l.kind, &l.data)
        );
    }
    assert!(entries.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert_eq!(epochs(&a.sink.events()), [(a.epoch(), 0)]);
    assert_stored_epoch(&redis, a.epoch());
    assert_eq!(redis.cmd::<u64>(&["XLEN", "pnsd:log"]), 100);

    // A second node takes the same epoch and reads the same log; its publishes continue it.
    let mut b = Node::start(&opts);
    assert_eq!(b.epoch(), a.epoch());
    b.wait_applied(100);
    assert_eq!(b.sink.applied(), entries);
    assert_eq!(b.publish_ok(&lines[..1]), [101]);
    a.wait_applied(101);
    assert_eq!(a.state.stats().last_seq, 101);
}

#[test]
fn a_repeated_key_within_the_window_gets_the_first_seq_and_appends_once() {
    let Some(redis) = RedisServer::start("fleet_redis::idempotency") else {
        return;
    };
    let mut opts = options(&redis);
    opts.dedup_window_s = 1;
    let mut a = Node::start(&opts);
    let r = a.publish(&[numbered(1, true), numbered(2, true), numbered(1, true)]);
    let r: Vec<(u64, bool)> = r
        .into_iter()
        .map(|r| r.unwrap())
        .map(|p| (p.seq, p.duplicate))
        .collect();
    assert_eq!(r, [(1, false), (2, false), (1, true)]);
    let again = a.publish(&[numbered(1, true)]).remove(0).unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    a.wait_applied(2);
    assert_eq!(redis.cmd::<u64>(&["XLEN", "pnsd:log"]), 2);
    assert_eq!(seqs(&a.sink.applied()), [1, 2]);

    // Past the window the key is forgotten: the same key appends anew.
    wait_until("the key to expire", || {
        redis.cmd::<u64>(&["EXISTS", "pnsd:key:k1"]) == 0
    });
    assert_eq!(a.publish_ok(&[numbered(1, true)]), [3]);
}

/// Every line a background publisher sent, by number, with its result.
type ResultLog = Arc<Mutex<Vec<(usize, LineResult)>>>;

/// Publishes numbered lines in batches on its own thread until told to stop, keeping every
/// line's result.
fn publish_in_background(
    mut node: Node,
    keyed: bool,
) -> (Arc<AtomicBool>, ResultLog, JoinHandle<Node>) {
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (s, l) = (stop.clone(), log.clone());
    let h = std::thread::spawn(move || {
        let mut n = 0;
        while !s.load(Ordering::SeqCst) {
            let batch: Vec<PublishLine> = (n..n + 5).map(|i| numbered(i, keyed)).collect();
            let results = node.publish(&batch);
            l.lock().unwrap().extend((n..n + 5).zip(results));
            n += 5;
            std::thread::sleep(Duration::from_millis(5));
        }
        node
    });
    (stop, log, h)
}

fn count(log: &Mutex<Vec<(usize, LineResult)>>, f: impl Fn(&LineResult) -> bool) -> usize {
    log.lock().unwrap().iter().filter(|(_, r)| f(r)).count()
}

#[test]
fn redis_killed_and_restarted_resumes_without_loss_or_repeat() {
    let Some(mut redis) = RedisServer::start_durable("fleet_redis::kill_restart") else {
        return;
    };
    let opts = options(&redis);
    let node = Node::start(&opts);
    let (state, sink) = (node.state.clone(), node.sink.clone());
    let epoch = node.epoch();
    let (stop, log, h) = publish_in_background(node, false);
    wait_until("some accepted lines", || count(&log, |r| r.is_ok()) >= 20);
    redis.kill();
    wait_until("the feed to see the link down", || !state.connected());
    let refused_before = count(&log, |r| *r == Err(PublishError::NoLink));
    wait_until("lines refused while down", || {
        count(&log, |r| *r == Err(PublishError::NoLink)) >= refused_before + 10
    });
    redis.restart();
    wait_until("the feed to reconnect", || state.connected());
    let ok_before = count(&log, |r| r.is_ok());
    wait_until("lines accepted after the restart", || {
        count(&log, |r| r.is_ok()) >= ok_before + 20
    });
    stop.store(true, Ordering::SeqCst);
    let node = h.join().unwrap();
    let log = log.lock().unwrap().clone();
    let last = log
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|p| p.seq)
        .max()
        .unwrap();
    node.wait_applied(last);

    let entries = sink.applied();
    // Every acked line applied exactly once, at its seq, in order; the log is dense.
    assert_eq!(
        seqs(&entries),
        (1..=entries.len() as u64).collect::<Vec<u64>>()
    );
    let by_number: HashMap<usize, u64> = entries.iter().map(|e| (number_of(e), e.seq)).collect();
    assert_eq!(by_number.len(), entries.len(), "a line applied twice");
    for (n, r) in &log {
        match r {
            Ok(p) => assert_eq!(by_number.get(n), Some(&p.seq), "acked line {n}"),
            Err(PublishError::NoLink) => assert!(!by_number.contains_key(n), "refused {n}"),
            Err(_) => {} // outcome unknown: at most once, checked above
        }
    }
    assert!(entries.len() as u64 >= last);
    let ev = sink.events();
    assert_eq!(
        epochs(&ev),
        [(epoch, 0)],
        "no new epoch: Redis kept its data"
    );
    let links: Vec<&Event> = ev.iter().filter(|e| matches!(e, Event::Link(_))).collect();
    assert_eq!(
        links,
        [&Event::Link(true), &Event::Link(false), &Event::Link(true)]
    );
    let stats = state.stats();
    assert_eq!((stats.reconnects, stats.lag, stats.last_seq), (1, 0, last));
}

#[test]
fn redis_stopped_answers_outcome_unknown_and_a_keyed_retry_appends_once() {
    let Some(mut redis) = RedisServer::start("fleet_redis::sigstop") else {
        return;
    };
    let feed_opts = options(&redis);
    // The publisher gives up long before the feed would call the link down, so the lines are
    // sent (the link is up) and their replies do not come.
    let mut pub_opts = feed_opts.clone();
    pub_opts.reply_timeout = Duration::from_millis(300);
    let mut a = Node::start_with(&feed_opts, &pub_opts, LONG_TTL_MS);
    assert_eq!(a.publish_ok(&[numbered(0, true)]), [1]);
    redis.pause();
    let batch: Vec<PublishLine> = (1..4).map(|i| numbered(i, true)).collect();
    let r = a.publish(&batch);
    assert_eq!(r, vec![Err(PublishError::Unknown); 3]);
    assert!(r[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .starts_with("outcome unknown"));
    redis.resume();
    a.wait_up();
    let retried = loop {
        // The feed may still be reconnecting after the stop: "no link" lines are retried.
        let r = a.publish(&batch);
        if r.iter().all(|r| r.is_ok()) {
            break r;
        }
        assert!(r.iter().all(|r| *r == Err(PublishError::NoLink)), "{r:?}");
        a.wait_up();
    };
    let max = retried
        .iter()
        .map(|r| r.as_ref().unwrap().seq)
        .max()
        .unwrap();
    a.wait_applied(max);
    let numbers: Vec<usize> = a.sink.applied().iter().map(number_of).collect();
    assert_eq!(
        numbers,
        [0, 1, 2, 3],
        "every keyed line exactly once, in order"
    );
    assert_eq!(redis.cmd::<u64>(&["XLEN", "pnsd:log"]), 4);
}

#[test]
fn trimming_past_a_stopped_reader_is_reported_as_a_gap() {
    let Some(redis) = RedisServer::start("fleet_redis::gap") else {
        return;
    };
    let mut opts = options(&redis);
    opts.maxlen = 10;
    let mut a = Node::start(&opts);
    a.sink.shut();
    assert_eq!(a.publish_ok(&[numbered(0, false)]), [1]);
    wait_until("the feed to be held in apply", || {
        a.sink.held.load(Ordering::SeqCst)
    });
    for chunk in (1..=400).collect::<Vec<usize>>().chunks(50) {
        let lines: Vec<PublishLine> = chunk.iter().map(|&i| numbered(i, false)).collect();
        a.publish_ok(&lines);
    }
    assert!(
        redis.cmd::<u64>(&["XLEN", "pnsd:log"]) < 400,
        "MAXLEN trimmed"
    );
    a.sink.open();
    a.wait_applied(401);
    let ev = a.sink.events();
    // Every seq is applied or announced lost, exactly once, in order; something was lost.
    let mut next = 1;
    let mut gaps = 0;
    for e in &ev {
        match e {
            Event::Apply(x) => {
                assert_eq!(x.seq, next);
                next += 1;
            }
            Event::Gap(from, to) => {
                assert_eq!((*from, from <= to), (next, true));
                next = to + 1;
                gaps += 1;
            }
            _ => {}
        }
    }
    assert_eq!((next, gaps), (402, 1), "{ev:?}");
    let first_gap = ev.iter().find_map(|e| match e {
        Event::Gap(from, _) => Some(*from),
        _ => None,
    });
    assert_eq!(
        first_gap,
        Some(2),
        "entry 1 was read before the reader stopped"
    );
}

#[test]
fn flushall_starts_a_new_epoch() {
    let Some(redis) = RedisServer::start("fleet_redis::flushall") else {
        return;
    };
    let (mut a, old) = node_with_five(&redis);
    let _: () = redis.cmd(&["FLUSHALL"]);
    let (new, start) = a
        .sink
        .wait_for("a new epoch", |ev| epochs(ev).get(1).copied());
    assert_ne!(new, old);
    assert_eq!(start, 0);
    // The feed tells its sink first and moves its shared position (what the publisher names in
    // every call) only after the sink returned: asserting the position at once raced with the
    // feed thread (1 run in 3 on a loaded machine), and a publish naming the old epoch is
    // refused. Wait for the position the publisher will use.
    wait_until("the feed's position to take the new epoch", || {
        a.epoch() == new
    });
    // The new log starts at 1 under the new epoch; the old keys are gone with the data.
    let p = a.publish(&[numbered(0, true)]).remove(0).unwrap();
    assert_eq!((p.epoch, p.seq, p.duplicate), (new, 1, false));
    a.wait_applied(1);
    assert_stored_epoch(&redis, new);
}

#[test]
fn a_starting_node_backfills_only_entries_younger_than_the_message_ttl() {
    let Some(redis) = RedisServer::start("fleet_redis::backfill") else {
        return;
    };
    let opts = options(&redis);
    let mut a = Node::start(&opts);
    a.publish_ok(&numbered_lines(0..5, false));
    // Redis's clock must move past the TTL below between the two groups.
    std::thread::sleep(Duration::from_millis(1500));
    a.publish_ok(&numbered_lines(5..10, false));

    let young = Node::start_with(&opts, &opts, 1000);
    let (_, start) = epochs(&young.sink.events())[0];
    assert!(
        start >= 5,
        "an entry older than the TTL was read: start {start}"
    );
    young.wait_applied(10);
    assert_eq!(
        seqs(&young.sink.applied()),
        (start + 1..=10).collect::<Vec<u64>>()
    );

    let all = Node::start(&opts);
    all.wait_applied(10);
    assert_eq!(epochs(&all.sink.events()), [(a.epoch(), 0)]);
    assert_eq!(seqs(&all.sink.applied()), (1..=10).collect::<Vec<u64>>());
}

#[test]
fn a_counter_that_went_back_starts_a_new_epoch() {
    let Some(redis) = RedisServer::start("fleet_redis::rollback") else {
        return;
    };
    let (mut a, old) = node_with_five(&redis);
    // What a restart from an older snapshot leaves behind: the log and its counter back at 3,
    // the epoch key unchanged. Entries 4 and 5 were seen by this node and are gone.
    let _: u64 = redis.cmd(&["XDEL", "pnsd:log", "4-0", "5-0"]);
    let _: () = redis.cmd(&["XSETID", "pnsd:log", "3-0"]);
    let _: () = redis.cmd(&["SET", "pnsd:seq", "3"]);
    // Line 4 (key k4, first at seq 5, now lost) is retried until the fleet moved on: a
    // refusal says Redis lost data and appends nothing; the key naming a lost seq is not
    // taken for a repeat.
    let first = loop {
        match a.publish(&[numbered(4, true)]).remove(0) {
            Ok(p) => break p,
            Err(PublishError::Refused(why)) => assert!(why.contains("lost data"), "{why}"),
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_ne!(first.epoch, old);
    assert_eq!((first.seq, first.duplicate), (4, false));
    a.wait_applied(4);
    let ev = a.sink.events();
    let at = ev.iter().position(|e| *e == Event::Epoch(first.epoch, 0));
    let after: Vec<u64> = seqs(&applied(&ev[at.expect("the new epoch announced") + 1..]));
    assert_eq!(
        after,
        [1, 2, 3, 4],
        "the surviving entries again, under the new epoch"
    );
    assert_eq!(epochs(&ev).len(), 2);
    assert_stored_epoch(&redis, first.epoch);
}
