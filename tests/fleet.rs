//! Fleet mode end to end: real `pnsd serve --redis` nodes on one real `redis-server`, driven
//! over their HTTP and publish sockets. Each test starts its own Redis (`common::redis_server`,
//! on a Unix socket in a temp dir; append-only and fsynced where it is killed and restarted)
//! and its own nodes; without `redis-server` each test prints one loud line and is skipped
//! (a failure under `PNSD_REQUIRE_ALL=1`).
//!
//! Tests wait for conditions (a stat, an answer), never for fixed times, except to keep Redis
//! down "for a while" during a stream of publishes.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{
    ack_id, check_poll, error_text, poll_target, startup_store, PollAnswer, Server, DEADLINE,
};
use serde_json::Value;

/// A pnsd node of the fleet on `redis`, with `extra` options.
fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--threads", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Waits (bounded) until `f` holds for the node's stats; returns them.
fn wait_stats(n: &Server, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = n.stats();
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the node has applied the log up to `seq`.
fn wait_seq(n: &Server, seq: u64) {
    wait_stats(n, &format!("redis_last_seq {seq}"), |s| {
        s["redis_last_seq"].as_u64().is_some_and(|l| l >= seq)
    });
}

/// The seq part of a cursor (12 hex digits of epoch, then hex seq).
fn seq_of(cursor: &str) -> u64 {
    u64::from_str_radix(&cursor[12..], 16).expect("hex seq")
}

fn epoch_of(cursor: &str) -> &str {
    &cursor[..12]
}

/// One `hold=0` poll.
fn poll_now(n: &Server, channels: &[&str], cursor: &str) -> PollAnswer {
    check_poll(
        &n.http()
            .request(&poll_target(channels, Some(cursor), Some(0))),
    )
}

/// Every message after `cursor`, polling until an empty answer; asserts no reset.
fn read_all(n: &Server, channel: &str, cursor: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = cursor.to_string();
    loop {
        let a = poll_now(n, &[channel], &cursor);
        assert!(!a.reset, "unexpected reset on {}: {}", n.addr, a.body);
        if a.c == 0 {
            return out;
        }
        out.extend(a.msgs);
        cursor = a.cursor;
    }
}

fn data_numbers(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["data"]["i"].as_u64().expect("numbered data"))
        .collect()
}

#[test]
fn a_publish_on_one_node_answers_a_poll_parked_on_the_other_and_cursors_travel() {
    let Some(redis) = RedisServer::start("fleet::two_nodes") else {
        return;
    };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    assert_eq!(startup_store(&a.line), redis.url());
    let start = b.cursor_now("news");
    // Both nodes hand out the fleet's cursor: same epoch, same position.
    assert_eq!(a.cursor_now("news"), start);

    let mut parked = b.http();
    parked.get(&poll_target(&["news"], Some(&start), Some(30)));
    b.wait_parked(1);
    let id = a.publish("news", r#"{"i":1}"#);
    let got = check_poll(&parked.read_response());
    assert_eq!(got.ids(), std::slice::from_ref(&id));
    assert_eq!(got.msgs[0]["data"]["i"], 1);

    // A cursor from A continues exactly on B, and the other way round.
    let ids: Vec<String> = (2..=4)
        .map(|i| a.publish("news", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    wait_seq(&b, seq_of(&ids[2]));
    let on_b = read_all(&b, "news", &id);
    assert_eq!(common::ids_of(&on_b), ids);
    let last_a = a.publish("news", r#"{"i":5}"#);
    let from_b = b.publish("news", r#"{"i":6}"#);
    assert_eq!(seq_of(&from_b), seq_of(&last_a) + 1, "one dense sequence");
    wait_seq(&a, seq_of(&from_b));
    assert_eq!(data_numbers(&read_all(&a, "news", &ids[2])), [5, 6]);

    // Health and stats in fleet mode.
    let h = a.http().request("/pns/health");
    assert_eq!(h.status, 200);
    let s = wait_stats(&a, "lag 0", |s| s["redis_lag"] == 0);
    assert_eq!(s["store"], startup_store(&a.line));
    assert_eq!(s["redis_connected"], true);
    assert_eq!(s["redis_last_seq"], seq_of(&from_b));
    assert_eq!(s["redis_reconnects"], 0);
    assert_eq!(s["published"], 6);
}

#[test]
fn a_local_node_says_store_local_and_has_no_redis_fields() {
    let n = Server::start(&[]);
    assert_eq!(startup_store(&n.line), "local");
    let s = n.stats();
    assert_eq!(s["store"], "local");
    assert!(s.get("redis_connected").is_none(), "{s}");
}

#[test]
fn the_password_is_masked_in_the_startup_line_and_stats() {
    let Some(redis) = RedisServer::start("fleet::masked") else {
        return;
    };
    // A password Redis does not ask for is refused by AUTH, so the link stays down; the node
    // still starts (after its bounded wait) only when Redis answers: use a reachable URL with
    // the password in a form the crate accepts for a Unix socket.
    let url = format!("{}?pass=sekrit", redis.url());
    let _: () = redis.cmd(&["CONFIG", "SET", "requirepass", "sekrit"]);
    let n = Server::start(&["--redis", &url, "--threads", "1"]);
    assert!(!n.line.contains("sekrit"), "{}", n.line);
    let s = n.stats();
    assert!(!s.to_string().contains("sekrit"), "{s}");
    assert_eq!(s["redis_connected"], true);
}

#[test]
fn a_node_killed_and_started_again_continues_its_clients_cursors() {
    let Some(redis) = RedisServer::start("fleet::restart") else {
        return;
    };
    let a = node(&redis, &[]);
    let mut b = node(&redis, &[]);
    let start = b.cursor_now("c");
    let first: Vec<String> = (0..3)
        .map(|i| b.publish("c", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    let seen = read_all(&b, "c", &start);
    assert_eq!(common::ids_of(&seen), first);
    let client_cursor = first[2].clone();

    b.signal(libc::SIGKILL);
    assert!(b.wait_exit(DEADLINE).is_some());
    // Published while B is gone.
    let missed: Vec<String> = (3..6)
        .map(|i| a.publish("c", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    let b2 = node(&redis, &[]);
    // The restarted node filled its rings from the log before it printed its startup line.
    let got = poll_now(&b2, &["c"], &client_cursor);
    assert!(!got.reset, "reset after a restart: {}", got.body);
    assert_eq!(got.ids(), missed);
    // And the oldest cursor too: everything, no gap.
    assert_eq!(
        data_numbers(&read_all(&b2, "c", &start)),
        [0, 1, 2, 3, 4, 5]
    );
}

#[test]
fn flushall_gives_a_new_epoch_and_resets_old_cursors_and_parked_polls() {
    let Some(redis) = RedisServer::start("fleet::flushall") else {
        return;
    };
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let old = a.publish("f", r#"{"i":1}"#);
    wait_seq(&b, seq_of(&old));
    let mut parked = b.http();
    parked.get(&poll_target(&["f"], Some(&old), Some(60)));
    b.wait_parked(1);

    let _: () = redis.cmd(&["FLUSHALL"]);
    // The parked poll is answered reset:true in the new epoch, without waiting for its hold.
    let r = check_poll(&parked.read_response());
    assert!(r.reset, "{}", r.body);
    assert_ne!(epoch_of(&r.cursor), epoch_of(&old));
    // A publish after the flush gets the new epoch (after the nodes took it) and an old
    // cursor is reset, never silently moved.
    let new_epoch = epoch_of(&r.cursor).to_string();
    wait_stats(&a, "a on the new epoch", |_| {
        epoch_of(&a.cursor_now("f")) == new_epoch
    });
    let id = a.publish("f", r#"{"i":2}"#);
    assert_eq!(epoch_of(&id), new_epoch);
    assert_eq!(seq_of(&id), 1);
    wait_seq(&b, 1);
    let again = poll_now(&b, &["f"], &old);
    assert!(again.reset, "{}", again.body);
    assert_eq!(again.ids(), [id]);
}

#[test]
fn while_redis_is_down_health_is_503_publishes_fail_at_once_and_parked_polls_stay() {
    let Some(mut redis) = RedisServer::start_durable("fleet::down") else {
        return;
    };
    let a = node(&redis, &["--hold", "60"]);
    let start = a.publish("d", r#"{"i":0}"#);
    let mut parked = a.http();
    parked.get(&poll_target(&["d"], Some(&start), None));
    a.wait_parked(1);

    redis.kill();
    wait_stats(&a, "the link down", |s| s["redis_connected"] == false);
    let h = a.http().request("/pns/health");
    assert_eq!(h.status, 503);
    assert_eq!(h.json(), serde_json::json!({"ok": false, "redis": "down"}));
    let refused = a.publisher().request(r#"{"channel":"d","data":{"i":1}}"#);
    assert!(error_text(&refused).contains("not sent"), "{refused}");
    // The node still serves what it holds, and the parked poll is still parked.
    let held = poll_now(&a, &["d"], &epoch_and_seq(&start, 0));
    assert_eq!(data_numbers(&held.msgs), [0]);
    assert_eq!(a.stats()["parked"], 1);

    redis.restart();
    let s = wait_stats(&a, "the link up again", |s| s["redis_connected"] == true);
    assert!(s["redis_reconnects"].as_u64() >= Some(1), "{s}");
    assert_eq!(a.http().request("/pns/health").status, 200);
    let id = a.publish("d", r#"{"i":2}"#);
    assert_eq!(
        epoch_of(&id),
        epoch_of(&start),
        "the data came back: same epoch"
    );
    let got = check_poll(&parked.read_response());
    assert!(!got.reset);
    assert_eq!(got.ids(), [id]);
}

/// `cursor` with its seq replaced by `seq`.
fn epoch_and_seq(cursor: &str, seq: u64) -> String {
    format!("{}{seq:x}", epoch_of(cursor))
}

/// What a publisher thread saw: per line number, the ack id or the error text.
type Outcomes = Arc<Mutex<Vec<(u64, Result<String, String>)>>>;

/// Publishes `{"i":n}` on `channel` with key `k<n>` for n = 0, 1, ... one line at a time until
/// `stop`; records each outcome.
fn publish_stream(
    n: &Server,
    channel: &str,
    stop: Arc<AtomicBool>,
) -> (thread::JoinHandle<()>, Outcomes) {
    let out: Outcomes = Arc::default();
    let mut p = n.publisher();
    let (out2, channel) = (out.clone(), channel.to_string());
    let h = thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let v = p.request(&format!(
                r#"{{"channel":"{channel}","data":{{"i":{i}}},"key":"k{i}"}}"#
            ));
            let r = if v["ok"] == true {
                Ok(ack_id(&v))
            } else {
                Err(error_text(&v))
            };
            // A refusal comes at once while Redis is down: a publisher backs off a little.
            if r.is_err() {
                thread::sleep(Duration::from_millis(5));
            }
            out2.lock().unwrap().push((i, r));
            i += 1;
        }
    });
    (h, out)
}

#[test]
fn redis_killed_during_publishes_reconciles_acks_refusals_and_deliveries_on_every_node() {
    let Some(mut redis) = RedisServer::start_durable("fleet::redis_killed") else {
        return;
    };
    // Every message stays in the buffer, so the reconciliation reads the whole stream.
    let a = node(&redis, &["--buffer", "100000"]);
    let b = node(&redis, &["--buffer", "100000"]);
    let start = a.cursor_now("s");
    let stop = Arc::new(AtomicBool::new(false));
    let (h, outcomes) = publish_stream(&a, "s", stop.clone());
    let count = |f: &dyn Fn(&Result<String, String>) -> bool| {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| f(r))
            .count()
    };
    wait_until("some acks", || count(&|r| r.is_ok()) >= 20);
    redis.kill();
    wait_until("refusals while down", || count(&|r| r.is_err()) >= 5);
    thread::sleep(Duration::from_secs(2));
    redis.restart();
    let acked_before = count(&|r| r.is_ok());
    wait_until("acks after the restart", || {
        count(&|r| r.is_ok()) >= acked_before + 20
    });
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();

    let outcomes = outcomes.lock().unwrap().clone();
    let acked: HashMap<u64, String> = outcomes
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|id| (*i, id.clone())))
        .collect();
    let not_sent: HashSet<u64> = outcomes
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.starts_with("not sent")))
        .map(|(i, _)| *i)
        .collect();
    assert!(
        !not_sent.is_empty(),
        "no line was refused while Redis was down"
    );
    let last = acked.values().map(|id| seq_of(id)).max().unwrap();
    for n in [&a, &b] {
        wait_seq(n, last);
        let got = read_all(n, "s", &start);
        let numbers = data_numbers(&got);
        let mut seen = HashSet::new();
        for (m, i) in got.iter().zip(&numbers) {
            assert!(seen.insert(*i), "line {i} delivered twice on {}", n.addr);
            assert!(!not_sent.contains(i), "line {i} was refused but delivered");
            if let Some(id) = acked.get(i) {
                assert_eq!(m["id"].as_str(), Some(id.as_str()), "line {i}'s id");
            }
        }
        let ids: Vec<u64> = got
            .iter()
            .map(|m| seq_of(m["id"].as_str().unwrap()))
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "out of order on {}",
            n.addr
        );
        for i in acked.keys() {
            assert!(
                seen.contains(i),
                "acked line {i} not delivered on {}",
                n.addr
            );
        }
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn redis_stopped_answers_within_the_timeout_and_a_keyed_retry_is_delivered_once() {
    let Some(mut redis) = RedisServer::start("fleet::redis_stopped") else {
        return;
    };
    let a = node(&redis, &[]);
    let start = a.cursor_now("k");
    redis.pause();
    let mut p = a.publisher();
    let line = r#"{"channel":"k","data":{"i":7},"key":"order-7"}"#;
    let first = p.request(line);
    assert_eq!(first["ok"], false, "{first}");
    redis.resume();
    // Retry with the same key until the fleet answers; the message is appended once.
    let id = loop {
        let v = p.request(line);
        if v["ok"] == true {
            break ack_id(&v);
        }
        thread::sleep(Duration::from_millis(50));
    };
    let again = ack_id(&p.request(line));
    assert_eq!(again, id, "a repeat of the key is acked with the first id");
    let got = read_all(&a, "k", &start);
    assert_eq!(common::ids_of(&got), [id]);
}

#[test]
fn a_node_stopped_past_maxlen_gets_reset_never_a_silent_gap() {
    let Some(redis) = RedisServer::start("fleet::maxlen") else {
        return;
    };
    let a = node(&redis, &["--redis-maxlen", "10"]);
    let b = node(&redis, &[]);
    let start = b.cursor_now("m");
    let first = a.publish("m", r#"{"i":0}"#);
    wait_seq(&b, seq_of(&first));
    let mut parked = b.http();
    parked.get(&poll_target(&["m"], Some(&first), Some(60)));
    b.wait_parked(1);

    b.signal(libc::SIGSTOP);
    // `MAXLEN ~` trims whole nodes of the stream (100 entries each): publish well past that.
    let mut p = a.publisher();
    let batch: String = (1..=1000)
        .map(|i| format!("{{\"channel\":\"other\",\"data\":{{\"i\":{i}}}}}\n"))
        .collect();
    p.send(&batch);
    let last = (0..1000).map(|_| ack_id(&p.read_answer())).last().unwrap();
    let len: u64 = redis.cmd(&["XLEN", "pnsd:log"]);
    assert!(len < 500, "the log was not trimmed: {len}");
    b.signal(libc::SIGCONT);

    let r = check_poll(&parked.read_response());
    assert!(r.reset, "the parked poll was not reset: {}", r.body);
    wait_seq(&b, seq_of(&last));
    for c in [&start, &first] {
        let again = poll_now(&b, &["m"], c);
        assert!(
            again.reset,
            "cursor {c} below the gap not reset: {}",
            again.body
        );
    }
    // After the gap, cursors continue normally.
    let next = a.publish("m", r#"{"i":2000}"#);
    wait_seq(&b, seq_of(&next));
    let after = poll_now(&b, &["m"], &last);
    assert!(!after.reset);
    assert_eq!(after.ids(), [next]);
}

#[test]
fn bad_fleet_options_exit_2_with_one_line() {
    let dir = common::TempDir::new();
    for (args, says) in [
        (&["--redis", "http://x"][..], "--redis"),
        (&["--redis", "rediss://h:1"][..], "--redis"),
        (&["--redis-prefix", "p"][..], "need --redis"),
        (
            &["--redis", "redis://h:1", "--redis-maxlen", "0"][..],
            "--redis-maxlen",
        ),
        (
            &["--redis", "redis://h:1", "--dedup-window", "0"][..],
            "--dedup-window",
        ),
        (
            &["--redis", "redis://h:1", "--redis-prefix", "a b"][..],
            "--redis-prefix",
        ),
    ] {
        let run = common::run_pnsd(args, &dir.path);
        assert_eq!(run.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(
            run.one_stderr_line().contains(says),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_key_is_validated_on_the_publish_socket() {
    let n = Server::start(&[]);
    let mut p = n.publisher();
    let long = "k".repeat(129);
    let v = p.request(&format!(r#"{{"channel":"a","data":1,"key":"{long}"}}"#));
    assert!(error_text(&v).contains("1-128 bytes"), "{v}");
    // Without --redis a key is accepted and has no effect.
    let a = ack_id(&p.request(r#"{"channel":"a","data":1,"key":"x"}"#));
    let b = ack_id(&p.request(r#"{"channel":"a","data":1,"key":"x"}"#));
    assert_ne!(a, b);
}
