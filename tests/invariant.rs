//! The invariant of issue 2 point 7, under load on the real binary: with `--threads 2`,
//! concurrent publishers and ~200 keep-alive subscribers re-polling with their cursors,
//! every subscriber receives every message of its channels exactly once, in the one global
//! order of the server run, and that order respects each publisher's ack order.
//!
//! How it is checked: the global order G is the single publisher's ack order, or (with
//! several publishers) the sequence of the first of a few observers subscribed to every
//! channel (the observers must agree, and G must hold every acked id once, each
//! publisher's ids in ack order). Every other subscriber's sequence must equal G filtered
//! to the messages published on at least one of its channels, each labelled with the first
//! of the publish's channels that it subscribes to, with no `reset`. Subscribers stop on a
//! sentinel published to every channel after all publishers finished (one per group of 16
//! channels, the most one publish may name; a subscriber waits for each of its groups').
//!
//! Two regimes: `burst` (4 publishers, 8 busy channels: wake-ups and catch-up reads race)
//! and `trickle` (1 publisher, 64 quiet channels, `hold=1`: hold expiries race publishes).
//! A third test drives eviction (`--buffer 4`) and checks that every gap a subscriber sees
//! is flagged `reset` and every `reset` answer has a gap.
//!
//! The fleet regime runs the same check on 2 nodes sharing one `redis-server` (`--redis`):
//! publishers spread over the nodes, and every subscriber hops between the nodes at random
//! with its cursor, so the check is that a cursor means the same position on every node
//! (skipped loudly without `redis-server`, see `common::redis_server`).
//!
//! Every loop is bounded by a deadline; nothing asserts speed.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Bound on a whole run; a test fails (not hangs) past it.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Stack of a subscriber thread: they only hold a socket and a Vec.
const SUB_STACK: usize = 256 * 1024;

/// A tiny deterministic generator (LCG), so runs are reproducible without extra crates.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `k` distinct indices below `n`, in random order.
    fn distinct(&mut self, k: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        while out.len() < k {
            let c = self.below(n);
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

/// One load shape.
struct Regime {
    /// Channels in play (an observer subscribes to all, so at most 16 when observers > 0).
    channels: usize,
    /// Subscriber connections, observers included.
    subscribers: usize,
    /// Subscribers on every channel; they define G when there are several publishers.
    observers: usize,
    /// Concurrent publisher connections.
    publishers: usize,
    /// Messages per publisher.
    per_publisher: usize,
    /// Most lines pipelined before reading their acks (each batch is 1..=batch).
    batch: usize,
    /// Pause between a publisher's batches.
    pace: Duration,
    /// Out of 10 publishes, how many name several channels.
    multi_in_10: usize,
    /// `hold` of every poll.
    hold: u64,
    /// Fleet mode: this many nodes on one Redis, subscribers hopping between them at random
    /// (0: one local node).
    fleet_nodes: usize,
}

fn channel_name(i: usize) -> String {
    format!("inv.{i}")
}

fn channel_index(name: &str) -> u64 {
    name.strip_prefix("inv.")
        .and_then(|n| n.parse().ok())
        .expect("an inv.N channel")
}

/// Channels per sentinel publish (16, the most a poll may name, keeps groups simple).
const GROUP: usize = 16;

struct Received {
    channels: Vec<String>,
    /// (id, channel label, data) in arrival order.
    msgs: Vec<(String, String, Value)>,
    resets: usize,
    /// Every exchange (one per answer received), for the counts and the failure report:
    /// (cursor sent, ids received, cursor returned).
    log: Vec<(String, Vec<String>, String)>,
    finished: bool,
}

/// Polls `channels` on one keep-alive connection from "now" (taken before the barrier)
/// until the sentinel of every group of its channels arrived or `deadline` passes.
fn subscribe(
    addrs: Vec<std::net::SocketAddr>,
    index: usize,
    channels: Vec<String>,
    hold: u64,
    start: Arc<Barrier>,
    deadline: Instant,
) -> Received {
    // One keep-alive connection per node; each poll goes to a node drawn at random.
    let mut conns: Vec<HttpConn> = addrs.iter().map(|a| HttpConn::connect(*a)).collect();
    let mut hops = Lcg(0xb0b + index as u64);
    let refs: Vec<&str> = channels.iter().map(String::as_str).collect();
    let first = check_poll(&conns[0].request(&poll_target(&refs, None, Some(0))));
    let mut cursor = first.cursor;
    start.wait();
    // Every fourth subscriber sends its cursor as If-None-Match instead.
    let use_etag = index % 4 == 1;
    // Groups whose sentinel ({"end": group}) is still due.
    let mut due: HashSet<u64> = channels
        .iter()
        .map(|c| channel_index(c) / GROUP as u64)
        .collect();
    let mut out = Received {
        channels: channels.clone(),
        msgs: Vec::new(),
        resets: 0,
        log: Vec::new(),
        finished: false,
    };
    while Instant::now() < deadline {
        let conn = &mut conns[hops.below(addrs.len())];
        if use_etag {
            let target = poll_target(&refs, None, Some(hold));
            conn.send(format!(
                "GET {target} HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"{cursor}\"\r\n\r\n"
            ));
        } else {
            conn.get(&poll_target(&refs, Some(&cursor), Some(hold)));
        }
        let r = conn.read_response();
        assert!(!r.closes(), "subscriber {index}: keep-alive answer closes");
        let p = check_poll(&r);
        if p.reset {
            out.resets += 1;
        }
        let mut end = false;
        for m in &p.msgs {
            let id = m["id"].as_str().expect("id").to_string();
            let ch = m["channel"].as_str().expect("channel").to_string();
            if let Some(g) = m["data"].get("end").and_then(Value::as_u64) {
                due.remove(&g);
                end = due.is_empty();
            }
            out.msgs.push((id, ch, m["data"].clone()));
        }
        out.log.push((cursor.clone(), p.ids(), p.cursor.clone()));
        cursor = p.cursor;
        if end {
            out.finished = true;
            break;
        }
    }
    out
}

/// What one publisher sent, in ack order: (id, channels, data).
type Acked = Vec<(String, Vec<String>, Value)>;

fn publish_load(socket: std::path::PathBuf, k: usize, rg: &Regime) -> Acked {
    let mut rng = Lcg(1000 + k as u64);
    let mut p = Publisher::connect(&socket);
    let mut acked = Vec::new();
    let mut n = 0;
    while n < rg.per_publisher {
        let mut batch = String::new();
        let mut pending = Vec::new();
        let size = 1 + rng.below(rg.batch);
        for _ in 0..size.min(rg.per_publisher - n) {
            let multi = rng.below(10) < rg.multi_in_10;
            let chans: Vec<String> = if multi {
                let count = 2 + rng.below(2);
                rng.distinct(count, rg.channels)
                    .into_iter()
                    .map(channel_name)
                    .collect()
            } else {
                vec![channel_name(rng.below(rg.channels))]
            };
            let data = json!({"p": k, "n": n});
            let line = if multi {
                json!({"channels": chans, "data": data})
            } else {
                json!({"channel": chans[0], "data": data})
            };
            batch.push_str(&line.to_string());
            batch.push('\n');
            pending.push((chans, data));
            n += 1;
        }
        p.send(&batch);
        for (chans, data) in pending {
            acked.push((ack_id(&p.read_answer()), chans, data));
        }
        thread::sleep(rg.pace);
    }
    acked
}

fn run(name: &str, rg: &Regime) {
    assert!(rg.observers == 0 || rg.channels <= 16);
    assert!(rg.observers > 0 || rg.publishers == 1, "G needs observers");
    let redis = if rg.fleet_nodes > 0 {
        match redis_server::RedisServer::start(&format!("invariant::{name}")) {
            Some(r) => Some(r),
            None => return,
        }
    } else {
        None
    };
    let url = redis.as_ref().map(|r| r.url());
    let mut args = vec!["--threads", "2", "--buffer", "10000", "--max-hold", "120"];
    if let Some(u) = &url {
        args.extend(["--redis", u.as_str()]);
    }
    let nodes: Vec<Server> = (0..rg.fleet_nodes.max(1))
        .map(|_| Server::start(&args))
        .collect();
    let s = &nodes[0];
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    assert_eq!(s.threads, 2);
    let deadline = Instant::now() + RUN_LIMIT;
    let start = Arc::new(Barrier::new(rg.subscribers + 1));
    let all_channels: Vec<String> = (0..rg.channels).map(channel_name).collect();
    let mut rng = Lcg(0x5eed);
    let mut subs = Vec::new();
    for i in 0..rg.subscribers {
        let channels: Vec<String> = if i < rg.observers {
            all_channels.clone()
        } else {
            let k = 1 + rng.below(3);
            rng.distinct(k, rg.channels)
                .into_iter()
                .map(channel_name)
                .collect()
        };
        let start = Arc::clone(&start);
        let addrs = addrs.clone();
        let hold = rg.hold;
        subs.push(
            thread::Builder::new()
                .name(format!("sub{i}"))
                .stack_size(SUB_STACK)
                .spawn(move || subscribe(addrs, i, channels, hold, start, deadline))
                .expect("spawn subscriber"),
        );
    }
    start.wait();

    let per_pub: Vec<Acked> = thread::scope(|scope| {
        let handles: Vec<_> = (0..rg.publishers)
            .map(|k| {
                let socket = nodes[k % nodes.len()].socket.clone();
                scope.spawn(move || publish_load(socket, k, rg))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .collect()
    });
    // The sentinel(s), after every publisher is done: last in the global order.
    let mut end_ids = Vec::new();
    {
        let mut p = s.publisher();
        for (g, chunk) in all_channels.chunks(GROUP).enumerate() {
            let line = json!({"channels": chunk, "data": {"end": g}}).to_string();
            end_ids.push((ack_id(&p.request(&line)), chunk.to_vec(), g));
        }
    }

    let received: Vec<Received> = subs
        .into_iter()
        .map(|h| h.join().expect("subscriber thread"))
        .collect();

    // What was published, by id.
    let mut published: HashMap<String, (Vec<String>, Value)> = HashMap::new();
    for acked in &per_pub {
        for (id, chans, data) in acked {
            let dup = published.insert(id.clone(), (chans.clone(), data.clone()));
            assert!(dup.is_none(), "id {id} acked twice");
        }
    }
    for (id, chans, g) in &end_ids {
        published.insert(id.clone(), (chans.clone(), json!({"end": g})));
    }
    assert_eq!(
        published.len(),
        rg.publishers * rg.per_publisher + end_ids.len()
    );

    for (i, r) in received.iter().enumerate() {
        assert!(
            r.finished,
            "{name}: subscriber {i} on {:?} did not finish: {} messages",
            r.channels,
            r.msgs.len()
        );
        assert_eq!(r.resets, 0, "{name}: subscriber {i} saw reset");
    }
    let deliveries: usize = received.iter().map(|r| r.msgs.len()).sum();
    // Answers received, and how many of them were empty (hold expired).
    let answers: usize = received.iter().map(|r| r.log.len()).sum();
    let empty: usize = received
        .iter()
        .flat_map(|r| &r.log)
        .filter(|(_, ids, _)| ids.is_empty())
        .count();
    eprintln!(
        "{name}: {} messages, {} subscribers, {deliveries} deliveries in {answers} answers \
         ({empty} empty)",
        published.len(),
        rg.subscribers
    );

    // The global order G.
    let g: Vec<String> = if rg.publishers == 1 {
        per_pub[0]
            .iter()
            .map(|a| a.0.clone())
            .chain(end_ids.iter().map(|e| e.0.clone()))
            .collect()
    } else {
        received[0].msgs.iter().map(|m| m.0.clone()).collect()
    };
    let unique: HashSet<&String> = g.iter().collect();
    assert_eq!(unique.len(), g.len(), "{name}: G holds a message twice");
    assert_eq!(g.len(), published.len(), "{name}: G misses messages");
    let rank: HashMap<&String, usize> = g.iter().enumerate().map(|(i, id)| (id, i)).collect();
    for (k, acked) in per_pub.iter().enumerate() {
        let ranks: Vec<usize> = acked.iter().map(|(id, _, _)| rank[id]).collect();
        assert!(
            ranks.windows(2).all(|w| w[0] < w[1]),
            "{name}: publisher {k}'s messages out of ack order"
        );
    }

    // Every subscriber: exactly G filtered to its channels, labelled and intact.
    for (i, r) in received.iter().enumerate() {
        let mine: HashSet<&String> = r.channels.iter().collect();
        let expected: Vec<&String> = g
            .iter()
            .filter(|id| published[*id].0.iter().any(|c| mine.contains(c)))
            .collect();
        let got: Vec<&String> = r.msgs.iter().map(|m| &m.0).collect();
        if got != expected {
            let got_set: HashSet<&String> = got.iter().copied().collect();
            let exp_set: HashSet<&String> = expected.iter().copied().collect();
            let missing = exp_set.difference(&got_set).count();
            let extra = got_set.difference(&exp_set).count();
            let dups = got.len() - got_set.len();
            for id in exp_set.difference(&got_set) {
                eprintln!(
                    "{name}: subscriber {i} missed {id} on {:?}",
                    published[*id].0
                );
                // The exchanges around it: which answer's cursor stepped over it.
                let seq = |c: &str| pnsd::cursor::decode(c).map_or(0, |c| c.seq);
                for (sent, ids, back) in &r.log {
                    if seq(sent) < seq(id) && seq(id) <= seq(back) {
                        eprintln!("  stepped over by: sent {sent} got {ids:?} cursor {back}");
                    }
                }
            }
            panic!(
                "{name}: subscriber {i} on {:?}: got {} messages, expected {}; missing \
                 {missing}, extra {extra}, duplicates {dups}, or out of order",
                r.channels,
                got.len(),
                expected.len()
            );
        }
        for (id, label, data) in &r.msgs {
            let (chans, want) = &published[id];
            let first = chans
                .iter()
                .find(|c| mine.contains(c))
                .expect("a subscribed channel");
            assert_eq!(
                label, first,
                "{name}: subscriber {i}: channel label of {id}"
            );
            assert_eq!(data, want, "{name}: subscriber {i}: data of {id}");
        }
    }
}

#[test]
fn burst_every_subscriber_gets_every_message_once_in_order() {
    run(
        "burst",
        &Regime {
            channels: 8,
            subscribers: 200,
            observers: 3,
            publishers: 4,
            per_publisher: 1000,
            batch: 8,
            // Short pauses, so subscribers are often parked when a message arrives
            // (wake-ups across threads), while others catch up 100 at a time.
            pace: Duration::from_millis(4),
            multi_in_10: 3,
            hold: 1,
            fleet_nodes: 0,
        },
    );
}

#[test]
fn fleet_subscribers_hopping_between_two_nodes_get_every_message_once_in_order() {
    run(
        "fleet",
        &Regime {
            channels: 8,
            subscribers: 100,
            observers: 3,
            publishers: 4,
            per_publisher: 300,
            batch: 8,
            pace: Duration::from_millis(4),
            multi_in_10: 3,
            hold: 1,
            fleet_nodes: 2,
        },
    );
}

#[test]
fn trickle_hold_expiries_lose_nothing() {
    run(
        "trickle",
        &Regime {
            channels: 64,
            subscribers: 200,
            observers: 0,
            publishers: 1,
            per_publisher: 500,
            batch: 2,
            // About 1 message per channel per second with hold=1: expiries and publishes
            // on the same channel keep meeting.
            pace: Duration::from_millis(20),
            multi_in_10: 2,
            hold: 1,
            fleet_nodes: 0,
        },
    );
}

/// Follows channel `ev` from "now" with `hold=1` until the `"end"` message; returns every
/// answer as (reset, ids).
fn follow(addr: std::net::SocketAddr, start: Arc<Barrier>) -> Vec<(bool, Vec<String>)> {
    let mut conn = HttpConn::connect(addr);
    let first = check_poll(&conn.request(&poll_target(&["ev"], None, Some(0))));
    let mut cursor = first.cursor;
    start.wait();
    let mut answers = Vec::new();
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "eviction follower did not finish"
        );
        let p = check_poll(&conn.request(&poll_target(&["ev"], Some(&cursor), Some(1))));
        let done = p.msgs.iter().any(|m| m["data"] == "end");
        answers.push((p.reset, p.ids()));
        cursor = p.cursor;
        if done {
            return answers;
        }
    }
}

/// Checks one follower's answers against the ack order of the single publisher (all on one
/// channel): without `reset` an answer continues exactly after its cursor; with `reset` it
/// starts later (a gap). Every answer is contiguous. Returns the number of gaps.
fn check_gaps(answers: &[(bool, Vec<String>)], acked: &[String]) -> usize {
    let index: HashMap<&String, usize> = acked.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut next = 0;
    let mut gaps = 0;
    for (reset, ids) in answers {
        let Some(first) = ids.first() else {
            // The ring always holds the newest messages, all after any cursor that lost
            // one, so an empty answer never has a gap.
            assert!(!reset, "empty answer with reset");
            continue;
        };
        let k = *index.get(first).expect("delivered id was acked");
        assert!(k >= next, "answer repeats message {k} (expected {next})");
        if *reset {
            assert!(k > next, "reset without a gap at {k}");
            gaps += 1;
        } else {
            assert_eq!(k, next, "gap of {} messages without reset", k - next);
        }
        for (j, id) in ids.iter().enumerate() {
            assert_eq!(index.get(id), Some(&(k + j)), "answer not contiguous");
        }
        next = k + ids.len();
    }
    assert_eq!(next, acked.len(), "follower did not reach the end");
    gaps
}

#[test]
fn eviction_gaps_are_always_reported() {
    // --buffer 4 and bursts of up to 12: followers re-polling with hold=1 sometimes keep
    // up and sometimes lose messages to eviction; every loss must be flagged, and only
    // losses.
    let s = Server::start(&["--threads", "2", "--buffer", "4"]);
    let followers = 6;
    let n = 1500;
    let start = Arc::new(Barrier::new(followers + 1));
    let handles: Vec<_> = (0..followers)
        .map(|_| {
            let addr = s.addr;
            let start = Arc::clone(&start);
            thread::spawn(move || follow(addr, start))
        })
        .collect();
    start.wait();
    let mut p = s.publisher();
    let mut rng = Lcg(77);
    let mut acked = Vec::new();
    while acked.len() < n {
        let size = 1 + rng.below(12);
        let mut batch = String::new();
        for _ in 0..size {
            batch.push_str(&format!(
                "{{\"channel\":\"ev\",\"data\":{}}}\n",
                acked.len()
            ));
        }
        p.send(&batch);
        for _ in 0..size {
            acked.push(ack_id(&p.read_answer()));
        }
        thread::sleep(Duration::from_millis(rng.below(4) as u64));
    }
    acked.push(ack_id(&p.request(r#"{"channel":"ev","data":"end"}"#)));
    let mut gaps = 0;
    for h in handles {
        gaps += check_gaps(&h.join().expect("follower"), &acked);
    }
    eprintln!(
        "eviction: {} messages, {followers} followers, {gaps} reset gaps",
        acked.len()
    );
}
