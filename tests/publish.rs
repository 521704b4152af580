//! PROTOCOL.md section 5 over the real Unix socket: the ack, pipelining, several
//! publishers, blank lines and CRLF, every kind of bad line (each answered with an error
//! line while the connection stays usable), the line-length limit, invalid UTF-8, the
//! unterminated last line, ack-before-visible, and the stats fields.
//!
//! Each test starts its own server. Error lines are checked for shape only
//! (`{"ok":false,"error":STRING}`) except where the contract fixes the text.

mod common;

use std::thread;

use common::*;
use serde_json::Value;

/// Sends `line` and asserts an error answer; then checks the same connection still
/// publishes. Returns the error text.
fn expect_bad_line(p: &mut Publisher, line: &[u8]) -> String {
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    p.send(&bytes);
    let err = error_text(&p.read_answer());
    assert!(!err.is_empty());
    ack_id(&p.request(r#"{"channel":"ok","data":"still usable"}"#));
    err
}

#[test]
fn ack_shape_and_visibility_on_poll() {
    let s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("user:42");
    let mut p = s.publisher();
    let v = p.request(r#"{"channel":"user:42","type":70,"data":{"subject":"hi"}}"#);
    let id = ack_id(&v);
    let v2 = p.request(r#"{"channels":["a","b"],"data":1}"#);
    let id2 = ack_id(&v2);
    assert_ne!(id, id2);
    let poll = check_poll(
        &s.http()
            .request(&poll_target(&["user:42", "b"], Some(&c0), Some(0))),
    );
    assert_eq!(poll.ids(), vec![id, id2]);
    assert_eq!(poll.msgs[0]["type"], 70);
    assert_eq!(poll.msgs[0]["data"], serde_json::json!({"subject":"hi"}));
    assert_eq!(poll.msgs[1]["channel"], "b");
}

#[test]
fn ack_means_visible_to_the_next_poll_on_any_thread() {
    let s = Server::start(&["--threads", "2"]);
    let mut cursor = s.cursor_now("a");
    let mut p = s.publisher();
    for i in 0..100 {
        let id = p.publish("a", &i.to_string());
        // A fresh connection each time, so both reactor threads get to answer.
        let poll = check_poll(
            &s.http()
                .request(&poll_target(&["a"], Some(&cursor), Some(0))),
        );
        assert_eq!(poll.ids(), vec![id.clone()], "round {i}");
        cursor = id;
    }
}

#[test]
fn pipelined_lines_are_answered_in_order() {
    // A buffer larger than the burst, so the poll below sees every message.
    let s = Server::start(&["--threads", "2", "--buffer", "1000"]);
    let c0 = s.cursor_now("a");
    let mut p = s.publisher();
    let mut batch = String::new();
    let mut good = Vec::new();
    for i in 0..300 {
        if i % 7 == 3 {
            batch.push_str("{\"channel\":\"a\"}\n"); // no data: error
            good.push(false);
        } else if i % 11 == 5 {
            batch.push_str("{\"op\":\"stats\"}\n");
            good.push(true);
        } else {
            batch.push_str(&format!("{{\"channel\":\"a\",\"data\":{i}}}\n"));
            good.push(true);
        }
    }
    p.send(&batch);
    let mut ids = Vec::new();
    for (i, ok) in good.iter().enumerate() {
        let v = p.read_answer();
        assert_eq!(v["ok"], Value::Bool(*ok), "line {i}: {v}");
        if i % 11 == 5 && i % 7 != 3 {
            assert!(
                v.get("published").is_some(),
                "line {i} should be stats: {v}"
            );
        } else if *ok {
            ids.push((i, ack_id(&v)));
        }
    }
    // The messages are held in that order.
    let seen: Vec<(usize, String)> = drain_polls(&s, &["a"], &c0, ids.len())
        .iter()
        .map(|m| {
            (
                m["data"].as_u64().expect("index") as usize,
                m["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    assert_eq!(seen, ids);
}

#[test]
fn several_publishers_at_once() {
    let s = Server::start(&["--threads", "2", "--buffer", "1000"]);
    let c0 = s.cursor_now("a");
    let socket = s.socket.clone();
    let per = 150;
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut p = Publisher::connect(&socket);
                let mut ids = Vec::new();
                for chunk in 0..(per / 10) {
                    let mut batch = String::new();
                    for j in 0..10 {
                        let n = chunk * 10 + j;
                        batch.push_str(&format!(
                            "{{\"channel\":\"a\",\"data\":{{\"p\":{k},\"n\":{n}}}}}\n"
                        ));
                    }
                    p.send(&batch);
                    for _ in 0..10 {
                        ids.push(ack_id(&p.read_answer()));
                    }
                }
                ids
            })
        })
        .collect();
    let per_pub: Vec<Vec<String>> = handles
        .into_iter()
        .map(|h| h.join().expect("publisher thread"))
        .collect();
    // Every ack is distinct; the poll sees all of them, each publisher's in its ack order.
    let seen: Vec<(u64, u64, String)> = drain_polls(&s, &["a"], &c0, 4 * per)
        .iter()
        .map(|m| {
            (
                m["data"]["p"].as_u64().expect("p"),
                m["data"]["n"].as_u64().expect("n"),
                m["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 4 * per);
    for (k, ids) in per_pub.iter().enumerate() {
        let mine: Vec<&(u64, u64, String)> = seen.iter().filter(|t| t.0 == k as u64).collect();
        let got_ids: Vec<String> = mine.iter().map(|t| t.2.clone()).collect();
        let got_n: Vec<u64> = mine.iter().map(|t| t.1).collect();
        assert_eq!(&got_ids, ids, "publisher {k}: ids in ack order");
        assert_eq!(got_n, (0..per as u64).collect::<Vec<_>>());
    }
    assert_eq!(s.stats()["published"], 4 * per as u64);
}

#[test]
fn blank_lines_are_skipped_and_crlf_accepted() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let mut p = s.publisher();
    p.send("\n\n{\"channel\":\"a\",\"data\":1}\r\n\r\n\n{\"channel\":\"a\",\"data\":2}\n\r\n{\"op\":\"stats\"}\r\n");
    let id1 = ack_id(&p.read_answer());
    let id2 = ack_id(&p.read_answer());
    let st = p.read_answer();
    assert_eq!(st["ok"], true);
    assert_eq!(st["published"], 2, "third answer must be the stats: {st}");
    let poll = check_poll(&s.http().request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert_eq!(poll.ids(), vec![id1, id2]);
}

#[test]
fn invalid_json_names_the_column() {
    let s = Server::start(&["--threads", "1"]);
    let mut p = s.publisher();
    let err = expect_bad_line(&mut p, b"not json");
    assert_eq!(err, "invalid JSON at column 2");
    for (line, col) in [
        (&b"{\"channel\":\"a\",}"[..], 16),
        (&b"{\"channel\":\"a\",\"data\":[1,2}"[..], 27),
        (&b"{\"channel\":\"a\""[..], 14),
    ] {
        let err = expect_bad_line(&mut p, line);
        assert!(err.starts_with("invalid JSON"), "{err}");
        let n: usize = err
            .rsplit("column ")
            .next()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no column in {err:?}"));
        assert!(
            n > 0 && n <= col + 1,
            "column {n} for {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn bad_publish_lines_are_errors_and_the_connection_stays_usable() {
    let s = Server::start(&["--threads", "1"]);
    let mut p = s.publisher();
    let long = "c".repeat(129);
    let bad_name_129 = format!("{{\"channel\":\"{long}\",\"data\":1}}");
    let cases: Vec<&[u8]> = vec![
        // Not an object.
        b"[1,2]",
        b"\"str\"",
        b"42",
        b"null",
        // No data.
        b"{\"channel\":\"a\"}",
        b"{\"channel\":\"a\",\"type\":1}",
        // Both channel and channels, or neither.
        b"{\"channel\":\"a\",\"channels\":[\"b\"],\"data\":1}",
        b"{\"data\":1}",
        // Empty or malformed channels.
        b"{\"channels\":[],\"data\":1}",
        b"{\"channels\":\"a\",\"data\":1}",
        b"{\"channels\":[\"a\",5],\"data\":1}",
        b"{\"channel\":5,\"data\":1}",
        b"{\"channel\":null,\"data\":1}",
        // type not an integer.
        b"{\"channel\":\"a\",\"type\":1.5,\"data\":1}",
        b"{\"channel\":\"a\",\"type\":\"70\",\"data\":1}",
        b"{\"channel\":\"a\",\"type\":true,\"data\":1}",
        // Bad channel names.
        b"{\"channel\":\"\",\"data\":1}",
        b"{\"channel\":\"a b\",\"data\":1}",
        b"{\"channel\":\"a/b\",\"data\":1}",
        b"{\"channel\":\"\xc3\xa9\",\"data\":1}",
        b"{\"channels\":[\"ok\",\"not ok\"],\"data\":1}",
        bad_name_129.as_bytes(),
        // Unknown op, and op of the wrong type.
        b"{\"op\":\"frobnicate\"}",
        b"{\"op\":5}",
        // Trailing garbage after the object.
        b"{\"channel\":\"a\",\"data\":1} x",
    ];
    for line in &cases {
        expect_bad_line(&mut p, line);
    }
    // Every "still usable" publish went through; no bad line was published.
    let st = s.stats();
    assert_eq!(st["published"], cases.len() as u64, "{st}");
}

#[test]
fn data_null_and_unknown_fields_are_accepted() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let mut p = s.publisher();
    let id1 = ack_id(&p.request(r#"{"channel":"a","data":null}"#));
    let id2 = ack_id(&p.request(r#"{"channel":"a","data":0,"extra":{"x":[1]},"ttl":5}"#));
    let id3 = ack_id(&p.request(r#"{"channels":["a","a","b"],"data":"dup"}"#));
    let poll = check_poll(
        &s.http()
            .request(&poll_target(&["a", "b"], Some(&c0), Some(0))),
    );
    assert_eq!(poll.ids(), vec![id1, id2, id3]);
    assert_eq!(poll.msgs[0]["data"], Value::Null);
    assert!(poll.msgs[0].as_object().expect("obj").contains_key("data"));
    assert_eq!(poll.msgs[2]["channel"], "a");
}

#[test]
fn line_limit_is_65536_bytes_and_the_connection_survives() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("big");
    let mut p = s.publisher();
    let exact = line_of_len("big", 65_536);
    assert_eq!(exact.len(), 65_536);
    let id = ack_id(&p.request(&exact));
    expect_bad_line(&mut p, line_of_len("big", 65_537).as_bytes());
    // A much longer line (1 MiB) too, followed at once by a good line in the same write.
    let mut huge = line_of_len("big", 1 << 20);
    huge.push('\n');
    huge.push_str("{\"channel\":\"big\",\"data\":\"after\"}\n");
    p.send(&huge);
    error_text(&p.read_answer());
    let after = ack_id(&p.read_answer());
    let poll = check_poll(&s.http().request(&poll_target(&["big"], Some(&c0), Some(0))));
    assert_eq!(poll.ids(), vec![id, after]);
    assert_eq!(
        poll.msgs[0]["data"].as_str().map(str::len),
        Some(65_536 - "{\"channel\":\"big\",\"data\":\"\"}".len())
    );
}

#[test]
fn invalid_utf8_is_an_error() {
    let s = Server::start(&["--threads", "1"]);
    let mut p = s.publisher();
    expect_bad_line(&mut p, b"{\"channel\":\"a\",\"data\":\"\xff\xfe\"}");
    expect_bad_line(&mut p, b"\xc3\x28");
    assert_eq!(s.stats()["published"], 2);
}

#[test]
fn unterminated_last_line_is_not_published() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let mut p = s.publisher();
    p.send("{\"channel\":\"a\",\"data\":1}\n{\"channel\":\"a\",\"data\":2}");
    p.shutdown_write();
    let lines = p.read_until_eof();
    assert_eq!(
        lines.len(),
        1,
        "only the terminated line is answered: {lines:?}"
    );
    let id = ack_id(&serde_json::from_str(&lines[0]).expect("json"));
    // Dropping the connection with a partial line (no shutdown) publishes nothing either.
    let mut q = s.publisher();
    q.send("{\"channel\":\"a\",\"data\":3}");
    drop(q);
    // A later line on a new connection is the next message after `id`.
    let id4 = s.publish("a", "4");
    let poll = check_poll(&s.http().request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert_eq!(poll.ids(), vec![id, id4]);
    assert_eq!(s.stats()["published"], 2);
}

#[test]
fn stats_fields_count_what_the_contract_says() {
    let s = Server::start(&["--threads", "2"]);
    let st = s.stats();
    let keys: Vec<&str> = st
        .as_object()
        .expect("obj")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(keys.contains(&"ok"), "stats lacks ok: {st}");
    for k in STATS_FIELDS {
        assert!(keys.contains(&k), "stats lacks {k}: {st}");
        assert_eq!(st[k], 0, "fresh server {k}: {st}");
    }
    let mut c = s.http();
    let c0 = check_poll(&c.request(&poll_target(&["a"], None, Some(0)))).cursor;
    let mut p = s.publisher();
    p.publish("a", "1");
    p.publish("a", "2");
    ack_id(&p.request(r#"{"channels":["b","c"],"data":3}"#));
    let st = s.stats();
    assert_eq!(st["published"], 3, "{st}");
    assert_eq!(st["messages"], 3, "distinct messages: {st}");
    assert_eq!(st["channels"], 3, "{st}");
    assert_eq!(st["connections"], 1, "{st}");
    assert_eq!(st["delivered"], 0, "{st}");
    // A waiter on an empty channel `d`.
    let mut w = s.http();
    w.get(&poll_target(&["d"], None, Some(60)));
    let st = s.wait_parked(1);
    assert_eq!(st["connections"], 2, "{st}");
    assert_eq!(st["channels"], 4, "a channel with waiters counts: {st}");
    // A delivering answer.
    let poll = check_poll(&c.request(&poll_target(&["a", "b"], Some(&c0), Some(0))));
    assert_eq!(poll.c, 3);
    // An empty answer does not count as delivered.
    check_poll(&c.request(&poll_target(&["a"], Some(&poll.cursor), Some(0))));
    assert_eq!(s.stats()["delivered"], 1);
    // Waking the waiter.
    p.publish("d", "4");
    assert_eq!(check_poll(&w.read_response()).c, 1);
    let st = s.stats();
    assert_eq!(st["parked"], 0, "{st}");
    assert_eq!(st["delivered"], 2, "{st}");
    assert_eq!(st["published"], 4, "{st}");
    assert_eq!(st["messages"], 4, "{st}");
    assert_eq!(st["channels"], 4, "{st}");
    // A waiter that hangs up leaves no channel behind.
    let mut gone = s.http();
    gone.get(&poll_target(&["e"], None, Some(60)));
    let st = s.wait_parked(1);
    assert_eq!(st["channels"], 5, "{st}");
    drop(gone);
    s.wait_parked(0);
    let st = s.wait_stat("channels", 4);
    assert_eq!(st["messages"], 4, "{st}");
    drop(w);
    drop(c);
    s.wait_stat("connections", 0);
}

#[test]
fn a_line_split_across_many_writes_is_one_request() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let mut p = s.publisher();
    let line = "{\"channel\":\"a\",\"type\":3,\"data\":{\"k\":[1,2,3]}}\r\n";
    for b in line.as_bytes() {
        p.send([*b]);
        thread::sleep(std::time::Duration::from_millis(1));
    }
    let id = ack_id(&p.read_answer());
    let poll = check_poll(&s.http().request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert_eq!(poll.ids(), vec![id]);
    assert_eq!(poll.msgs[0]["type"], 3);
}

#[test]
fn a_publisher_hanging_up_mid_burst_disturbs_nobody() {
    let s = Server::start(&["--threads", "2", "--buffer", "1000"]);
    let c0 = s.cursor_now("a");
    let mut other = s.publisher();
    {
        let mut p = s.publisher();
        let burst: String = (0..200)
            .map(|i| format!("{{\"channel\":\"a\",\"data\":{i}}}\n"))
            .collect();
        p.send(&burst);
        // Dropped without reading a single ack.
    }
    let id = other.publish("a", "\"other\"");
    // The server may still be working through the burst: wait (bounded) until `published`
    // has stopped changing for a while.
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut last = s.stats()["published"].as_u64().expect("published");
    let mut stable = 0;
    while stable < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "published never settled"
        );
        thread::sleep(std::time::Duration::from_millis(50));
        let now = s.stats()["published"].as_u64().expect("published");
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    // Whatever part of the burst was accepted is a contiguous prefix, in order, each once.
    let mut burst_seen = Vec::new();
    let mut other_seen = 0;
    for m in &drain_polls(&s, &["a"], &c0, 200 + 1) {
        if m["data"] == "other" {
            assert_eq!(m["id"], id.as_str());
            other_seen += 1;
        } else {
            burst_seen.push(m["data"].as_u64().expect("index"));
        }
    }
    assert!(burst_seen.len() <= 200);
    assert_eq!(other_seen, 1);
    let prefix: Vec<u64> = (0..burst_seen.len() as u64).collect();
    assert_eq!(
        burst_seen, prefix,
        "accepted lines must be a prefix, in order"
    );
    assert_eq!(last, burst_seen.len() as u64 + 1);
}

#[test]
fn many_publisher_connections_at_once() {
    let s = Server::start(&["--threads", "2", "--buffer", "1000"]);
    let c0 = s.cursor_now("m");
    let mut pubs: Vec<Publisher> = (0..40).map(|_| s.publisher()).collect();
    for (i, p) in pubs.iter_mut().enumerate() {
        p.send(format!("{{\"channel\":\"m\",\"data\":{i}}}\n"));
    }
    let mut ids = std::collections::HashSet::new();
    for p in &mut pubs {
        assert!(ids.insert(ack_id(&p.read_answer())), "duplicate id");
    }
    let mut c = s.http();
    let poll = check_poll(&c.request(&poll_target(&["m"], Some(&c0), Some(0))));
    assert_eq!(poll.c, 40);
    let got: std::collections::HashSet<String> = poll.ids().into_iter().collect();
    assert_eq!(got, ids);
}

#[test]
fn nul_and_control_bytes_are_errors() {
    let s = Server::start(&["--threads", "1"]);
    let mut p = s.publisher();
    expect_bad_line(&mut p, b"{\"channel\":\"a\",\"data\":\"a\x00b\"}");
    expect_bad_line(&mut p, b"\x00");
    expect_bad_line(&mut p, b"{\"channel\":\"a\x01\",\"data\":1}");
    assert_eq!(s.stats()["published"], 3);
}

/// Nested arrays `depth` deep around `0`.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn data_nested_up_to_128_levels_is_published_and_deeper_is_refused() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("deep");
    let mut p = s.publisher();
    let head = "{\"channel\":\"deep\",\"data\":";
    let data = nested(128);
    let id = ack_id(&p.request(&format!("{head}{data}}}")));
    let refusal = "data nested deeper than 128 levels";
    assert_eq!(
        expect_bad_line(&mut p, format!("{head}{}}}", nested(129)).as_bytes()),
        refusal
    );
    // As deep as a 65,536-byte line allows: refused, without harm to the thread's stack.
    let depth = (65_536 - head.len() - 2) / 2;
    assert_eq!(
        expect_bad_line(&mut p, format!("{head}{}}}", nested(depth)).as_bytes()),
        refusal
    );
    // Objects count as arrays do; brackets inside strings do not count.
    let objects = format!("{}0{}", "{\"a\":".repeat(129), "}".repeat(129));
    assert_eq!(
        expect_bad_line(&mut p, format!("{head}{objects}}}").as_bytes()),
        refusal
    );
    let text = format!("\"{}\"", "[".repeat(1000));
    let id2 = ack_id(&p.request(&format!("{head}{text}}}")));
    // Unclosed: invalid JSON, and the connection still works.
    expect_bad_line(&mut p, format!("{head}{}}}", "[".repeat(depth)).as_bytes());
    // The poll answer carries the data verbatim (checked on the raw body: with the answer's
    // own levels it is deeper than serde_json's default recursion limit).
    let r = s
        .http()
        .request(&poll_target(&["deep"], Some(&c0), Some(0)));
    assert_eq!(r.status, 200);
    let body = r.body_text();
    assert!(body.contains(&format!("\"data\":{data}}}")), "data altered");
    assert!(body.contains(&id) && body.contains(&id2));
    // The four refused lines published nothing; every "still usable" publish went through.
    assert_eq!(s.stats()["published"], 2 + 4);
}

#[test]
fn duplicate_keys_are_refused_naming_the_key() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("ok");
    let mut p = s.publisher();
    // The full table is line.rs's unit test; here, that the refusal reaches the socket.
    for (line, key) in [
        (r#"{"channel":"a","data":1,"channel":"b"}"#, "channel"),
        (r#"{"channels":["a"],"\u0064ata":1,"data":2}"#, "data"),
    ] {
        assert_eq!(
            expect_bad_line(&mut p, line.as_bytes()),
            format!("duplicate key \"{key}\""),
            "{line}"
        );
    }
    // Nothing but the "still usable" publishes (on `ok`) went through.
    let got = drain_polls(&s, &["a", "b", "ok"], &c0, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|m| m["data"] == "still usable"), "{got:?}");
}

/// A channel name of the wide publish.
fn wide_name(i: usize) -> String {
    format!("c{i}")
}

#[test]
fn a_publish_to_8000_channels_is_acked_and_delivered_on_each() {
    const WIDE: usize = 8000;
    let s = Server::start(&["--threads", "2"]);
    let names: Vec<String> = (0..WIDE).map(wide_name).collect();
    let c0 = s.cursor_now("c0");
    // Parked polls on the first, a middle and the last channel, on both threads.
    let mut parked: Vec<(HttpConn, &str)> = ["c0", "c4000", "c7999"]
        .into_iter()
        .map(|ch| {
            let mut c = s.http();
            c.get(&poll_target(&[ch], None, Some(60)));
            (c, ch)
        })
        .collect();
    s.wait_parked(3);
    let mut list = names.clone();
    list.push("c0".into()); // a repeat counts once
    let line = format!(
        "{{\"channels\":{},\"data\":\"wide\"}}",
        serde_json::to_string(&list).expect("json")
    );
    assert!(line.len() <= 65_536, "the line must fit: {}", line.len());
    let mut p = s.publisher();
    let id = ack_id(&p.request(&line));
    for (c, ch) in &mut parked {
        let poll = check_poll(&c.read_response());
        assert_eq!(poll.ids(), vec![id.clone()], "{ch}");
        assert_eq!(poll.msgs[0]["channel"], *ch);
    }
    // 16 of them (c7999, c7499, ..., c499) from an earlier cursor: one message, named by the
    // first of the publisher's list that the poll subscribes to.
    let some: Vec<&str> = names
        .iter()
        .rev()
        .step_by(500)
        .map(String::as_str)
        .collect();
    let poll = check_poll(&s.http().request(&poll_target(&some, Some(&c0), Some(0))));
    assert_eq!(poll.ids(), vec![id]);
    assert_eq!(poll.msgs[0]["channel"], "c499");
    let st = p.stats();
    assert_eq!(st["channels"], WIDE as u64, "{st}");
    assert_eq!(st["messages"], 1, "{st}");
}

#[test]
fn publishers_past_max_publishers_get_one_error_line_and_are_closed() {
    let s = Server::start(&["--threads", "1", "--max-publishers", "2"]);
    let c0 = s.cursor_now("m");
    let mut served: Vec<Publisher> = (0..2).map(|_| s.publisher()).collect();
    for p in &mut served {
        p.stats(); // accepted and served
    }
    let mut extra = s.publisher();
    extra.send("{\"channel\":\"m\",\"data\":\"refused\"}\n");
    let lines = extra.read_until_eof();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(
        error_text(&v),
        "too many publisher connections (--max-publishers 2)"
    );
    // The command-line client shows the same line and fails.
    let run = run_pnsd(
        &[
            "publish",
            "--socket",
            s.socket.to_str().expect("path"),
            "m",
            "1",
        ],
        &s.dir.path,
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(run.stdout.contains("--max-publishers 2"), "{}", run.stdout);
    // The served publishers are unaffected.
    let id = served[0].publish("m", "\"served\"");
    // Once one hangs up, a new publisher is served (when the server has seen the hang-up).
    drop(served.remove(1));
    let deadline = std::time::Instant::now() + DEADLINE;
    let id2 = loop {
        let mut p = s.publisher();
        p.send("{\"channel\":\"m\",\"data\":\"later\"}\n");
        let v = p.read_answer();
        if v["ok"] == true {
            break ack_id(&v);
        }
        assert!(std::time::Instant::now() < deadline, "never served: {v}");
        thread::sleep(std::time::Duration::from_millis(20));
    };
    let got = drain_polls(&s, &["m"], &c0, 2);
    assert_eq!(ids_of(&got), vec![id, id2]);
}
