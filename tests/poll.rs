//! PROTOCOL.md section 2 (`GET /pns/poll`) over the real binary: parking and waking, hold
//! expiry, cursor continuity, the 100-message cap, multi-channel delivery, `type` and `data`
//! fidelity, `reset`, cursor errors, `If-None-Match`, answer headers, `hold`, channel lists
//! and names (with the section 3 error shape for each bad query).
//!
//! Each test starts its own server; a poll that must wait is only released after
//! `wait_parked` has seen it parked, so no test depends on timing.

mod common;

use std::time::Duration;

use common::*;

/// Reads a poll answer expected to be an error with `status` and checks the connection
/// closes when the contract says it must.
fn expect_poll_error(s: &Server, target: &str, status: u16) {
    let mut c = s.http();
    let r = c.request(target);
    check_error(&r, status);
    if r.closes() {
        c.expect_closed();
    }
}

/// A cursor of the same run as `id`, `k` positions after it. Cursors are opaque to clients,
/// so this uses the crate's own cursor encoding.
fn cursor_after(id: &str, k: u64) -> String {
    let c = pnsd::cursor::decode(id).unwrap_or_else(|| panic!("id {id} is not a cursor"));
    pnsd::cursor::encode(c.epoch, c.seq + k)
}

#[test]
fn parked_poll_is_woken_by_a_publish() {
    let s = Server::start(&["--threads", "2"]);
    let mut c = s.http();
    c.get(&poll_target(&["a"], None, Some(60)));
    s.wait_parked(1);
    let id = s.publish("a", r#"{"x":1}"#);
    let p = check_poll(&c.read_response());
    assert!(!p.reset);
    assert_eq!(p.c, 1);
    assert_eq!(p.ids(), vec![id.clone()]);
    assert_eq!(p.msgs[0]["channel"], "a");
    assert_eq!(p.msgs[0]["data"], serde_json::json!({"x":1}));
    assert!(p.msgs[0].get("type").is_none());
    assert_eq!(p.cursor, id);
    s.wait_parked(0);
}

#[test]
fn publish_wakes_parked_polls_on_every_thread() {
    let s = Server::start(&["--threads", "2"]);
    let mut conns: Vec<HttpConn> = (0..12).map(|_| s.http()).collect();
    for c in &mut conns {
        c.get(&poll_target(&["a"], None, Some(60)));
    }
    s.wait_parked(12);
    let id = s.publish("a", "\"all\"");
    for c in &mut conns {
        let p = check_poll(&c.read_response());
        assert_eq!(p.ids(), vec![id.clone()]);
    }
}

#[test]
fn publish_to_another_channel_does_not_wake() {
    let s = Server::start(&["--threads", "1", "--hold", "1"]);
    let mut c = s.http();
    c.get(&poll_target(&["a"], None, None));
    s.wait_parked(1);
    s.publish("b", "1");
    // The hold (1 s) expires with nothing for `a`.
    let p = check_poll(&c.read_response());
    assert_eq!(p.c, 0, "{}", p.raw);
}

#[test]
fn hold_expiry_answers_empty_with_the_newest_cursor() {
    let s = Server::start(&["--threads", "2", "--hold", "1"]);
    let c0 = s.cursor_now("b");
    let id_b = s.publish("b", "1");
    // Default hold (1 s) on `a`: nothing arrives.
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a"], None, None)));
    assert_eq!(p.c, 0);
    assert!(p.msgs.is_empty());
    assert!(!p.reset);
    let expired = p.cursor.clone();
    // The expired cursor names the newest position, after `b`'s message.
    let q = check_poll(&c.request(&poll_target(&["b"], Some(&expired), Some(0))));
    assert_eq!(
        q.c, 0,
        "message before the expired cursor repeated: {}",
        q.raw
    );
    assert!(!q.reset);
    // ... while the older cursor still sees it.
    let q = check_poll(&c.request(&poll_target(&["b"], Some(&c0), Some(0))));
    assert_eq!(q.ids(), vec![id_b]);
    // Polling on with the expired cursor gets what comes next.
    let id = s.publish("a", "2");
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&expired), Some(0))));
    assert_eq!(q.ids(), vec![id]);
}

#[test]
fn hold_param_expires_and_keeps_cursor() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&c0), Some(1))));
    assert_eq!(p.c, 0);
    assert!(!p.reset);
    // Nothing was published: the cursor names the same position.
    assert_eq!(p.cursor, c0);
}

#[test]
fn cursor_continuity_and_every_id_is_a_cursor() {
    let s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("a");
    let mut pubr = s.publisher();
    let ids: Vec<String> = (0..5).map(|i| pubr.publish("a", &i.to_string())).collect();
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert_eq!(p.ids(), ids);
    for (i, m) in p.msgs.iter().enumerate() {
        assert_eq!(m["data"], i);
    }
    // After the last id: nothing.
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&ids[4]), Some(0))));
    assert_eq!(q.c, 0);
    assert!(!q.reset);
    // After any id: exactly the messages after it.
    for k in 0..5 {
        let q = check_poll(&c.request(&poll_target(&["a"], Some(&ids[k]), Some(0))));
        assert_eq!(q.ids(), ids[k + 1..].to_vec(), "after id {k}");
        assert!(!q.reset);
    }
    // A parked poll with the newest cursor gets only the next message.
    c.get(&poll_target(&["a"], Some(&ids[4]), Some(60)));
    s.wait_parked(1);
    let id5 = pubr.publish("a", "5");
    let q = check_poll(&c.read_response());
    assert_eq!(q.ids(), vec![id5]);
}

#[test]
fn ids_are_unique_across_channels_and_order_is_global() {
    let s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("a");
    let mut pubr = s.publisher();
    let mut all = Vec::new();
    for i in 0..6 {
        let ch = if i % 2 == 0 { "a" } else { "b" };
        all.push(pubr.publish(ch, &i.to_string()));
    }
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a", "b"], Some(&c0), Some(0))));
    assert_eq!(p.ids(), all);
    let p = check_poll(&c.request(&poll_target(&["b"], Some(&c0), Some(0))));
    assert_eq!(
        p.ids(),
        vec![all[1].clone(), all[3].clone(), all[5].clone()]
    );
    // A cursor of channel `a` continues channel `b` correctly.
    let p = check_poll(&c.request(&poll_target(&["b"], Some(&all[2]), Some(0))));
    assert_eq!(p.ids(), vec![all[3].clone(), all[5].clone()]);
}

#[test]
fn at_most_100_messages_per_answer() {
    let s = Server::start(&["--threads", "2", "--buffer", "400"]);
    let c0 = s.cursor_now("a");
    let ids = s.publisher().publish_pipelined("a", 250);
    let mut c = s.http();
    let mut cursor = c0;
    let mut got = Vec::new();
    for want in [100, 100, 50] {
        let p = check_poll(&c.request(&poll_target(&["a"], Some(&cursor), Some(0))));
        assert_eq!(p.c, want);
        assert!(!p.reset);
        got.extend(p.ids());
        cursor = p.cursor;
    }
    assert_eq!(got, ids);
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&cursor), Some(0))));
    assert_eq!(p.c, 0);
}

#[test]
fn multi_channel_publish_is_delivered_once_with_first_matching_channel() {
    let s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("x");
    let mut pubr = s.publisher();
    let id = ack_id(&pubr.request(r#"{"channels":["x","y","z"],"data":"m"}"#));
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["z", "y"], Some(&c0), Some(0))));
    assert_eq!(p.ids(), vec![id.clone()]);
    assert_eq!(p.msgs[0]["channel"], "y");
    let p = check_poll(&c.request(&poll_target(&["z"], Some(&c0), Some(0))));
    assert_eq!(p.ids(), vec![id.clone()]);
    assert_eq!(p.msgs[0]["channel"], "z");
    let p = check_poll(&c.request(&poll_target(&["z", "y", "x"], Some(&c0), Some(0))));
    assert_eq!(p.ids(), vec![id.clone()]);
    assert_eq!(p.msgs[0]["channel"], "x");
    assert_eq!(s.stats()["messages"], 1, "one message held, not three");
    // Woken from a park on several channels: once, with the first listed match.
    c.get(&poll_target(&["y", "z"], Some(&id), Some(60)));
    s.wait_parked(1);
    let id2 = ack_id(&pubr.request(r#"{"channels":["q","z","y"],"data":"n"}"#));
    let p = check_poll(&c.read_response());
    assert_eq!(p.ids(), vec![id2]);
    assert_eq!(p.msgs[0]["channel"], "z");
}

#[test]
fn type_is_present_only_when_given() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let mut pubr = s.publisher();
    ack_id(&pubr.request(r#"{"channel":"a","type":70,"data":1}"#));
    ack_id(&pubr.request(r#"{"channel":"a","data":2}"#));
    ack_id(&pubr.request(r#"{"channel":"a","type":0,"data":3}"#));
    ack_id(&pubr.request(r#"{"channel":"a","type":-5,"data":4}"#));
    let p = check_poll(&s.http().request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert_eq!(p.c, 4);
    assert_eq!(p.msgs[0]["type"], 70);
    assert!(p.msgs[1].as_object().expect("obj").get("type").is_none());
    assert_eq!(p.msgs[2]["type"], 0);
    assert_eq!(p.msgs[3]["type"], -5);
}

/// Removes whitespace outside JSON strings.
fn compact(json: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut esc = false;
    for ch in json.chars() {
        if in_str {
            out.push(ch);
            if esc {
                esc = false;
            } else if ch == '\\' {
                esc = true;
            } else if ch == '"' {
                in_str = false;
            }
        } else if ch == '"' {
            in_str = true;
            out.push(ch);
        } else if !ch.is_whitespace() {
            out.push(ch);
        }
    }
    out
}

#[test]
fn data_tokens_are_preserved_exactly() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let datas = [
        r#"{"b":1.50,"a":"\u00e9"}"#,
        r#"{ "z" : [1e5, -0, 1E+2, 0.10, 123456789012345678901234567890],
             "y" : {"s":"tab\there \"q\" \/ é 😀", "t":true, "n":null} }"#,
        r#""plain""#,
        "-12.3400",
        "[]",
        "{}",
        "null",
    ];
    let mut pubr = s.publisher();
    for d in datas {
        let line = format!("{{\"channel\":\"a\",\"data\":{}}}", d.replace('\n', " "));
        ack_id(&pubr.request(&line));
    }
    let p = check_poll(&s.http().request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert_eq!(p.c as usize, datas.len());
    let body = compact(&p.body);
    let mut from = 0;
    for d in datas {
        let want = format!("\"data\":{}", compact(d));
        let at = body[from..]
            .find(&want)
            .unwrap_or_else(|| panic!("{want} not found (in order) in {body}"));
        from += at + want.len();
    }
}

#[test]
fn cursor_of_another_run_resets_and_returns_everything_held() {
    let a = Server::start(&["--threads", "1"]);
    let b = Server::start(&["--threads", "1"]);
    // Run A is further along than run B, so its cursor is also "past newest" for B: the
    // run must be checked first.
    let mut pa = a.publisher();
    let foreign: Vec<String> = (0..10).map(|i| pa.publish("a", &i.to_string())).collect();
    let foreign = foreign.last().expect("ids").clone();
    let mut c = b.http();
    // Nothing held on B: answered at once (despite hold=120) with reset and no message.
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&foreign), Some(120))));
    assert!(p.reset, "{}", p.raw);
    assert_eq!(p.c, 0);
    let next = p.cursor.clone();
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&next), Some(0))));
    assert!(!q.reset, "the reset answer's cursor belongs to this run");
    // Messages held on B: all of them, oldest first, on the poll's channels only.
    let mut pb = b.publisher();
    let b1 = pb.publish("a", "1");
    let _other = pb.publish("zz", "2");
    let b3 = pb.publish("a", "3");
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&foreign), Some(120))));
    assert!(p.reset);
    assert_eq!(p.ids(), vec![b1, b3.clone()]);
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&p.cursor), Some(0))));
    assert!(!q.reset);
    assert_eq!(q.c, 0);
    // An answer's own cursor never resets.
    assert_eq!(p.cursor, b3);
}

#[test]
fn reset_answer_is_capped_at_100_and_continues_cleanly() {
    let a = Server::start(&["--threads", "1"]);
    let b = Server::start(&["--threads", "2", "--buffer", "300"]);
    let foreign = a.publish("a", "0");
    let ids = b.publisher().publish_pipelined("a", 250);
    let mut c = b.http();
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&foreign), Some(0))));
    assert!(p.reset);
    assert_eq!(p.ids(), ids[..100].to_vec(), "oldest first, 100 at most");
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&p.cursor), Some(0))));
    assert!(!q.reset);
    assert_eq!(q.ids(), ids[100..200].to_vec());
    let r = check_poll(&c.request(&poll_target(&["a"], Some(&q.cursor), Some(0))));
    assert!(!r.reset);
    assert_eq!(r.ids(), ids[200..].to_vec());
}

#[test]
fn eviction_by_buffer_length_resets() {
    let s = Server::start(&["--threads", "2", "--buffer", "3"]);
    let c0 = s.cursor_now("a");
    let mut pubr = s.publisher();
    let ids: Vec<String> = (0..5).map(|i| pubr.publish("a", &i.to_string())).collect();
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&c0), Some(0))));
    assert!(p.reset, "{}", p.raw);
    assert_eq!(p.ids(), ids[2..].to_vec());
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&ids[0]), Some(0))));
    assert!(p.reset, "message 2 after the cursor was evicted: {}", p.raw);
    assert_eq!(p.ids(), ids[2..].to_vec());
    // Nothing evicted after ids[1]: no reset.
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&ids[1]), Some(0))));
    assert!(!p.reset, "{}", p.raw);
    assert_eq!(p.ids(), ids[2..].to_vec());
    // Eviction on `a` does not reset a poll on `b` only.
    let p = check_poll(&c.request(&poll_target(&["b"], Some(&c0), Some(0))));
    assert!(!p.reset, "{}", p.raw);
    assert_eq!(p.c, 0);
    // ... but does when `a` is among the channels, and the answer is sent at once.
    let p = check_poll(&c.request(&poll_target(&["b", "a"], Some(&c0), Some(120))));
    assert!(p.reset);
    assert_eq!(p.ids(), ids[2..].to_vec());
    // The reset answer's cursor continues cleanly.
    let p = check_poll(&c.request(&poll_target(&["a"], Some(&p.cursor), Some(0))));
    assert!(!p.reset);
    assert_eq!(p.c, 0);
}

#[test]
fn eviction_by_message_ttl_resets() {
    let s = Server::start(&["--threads", "2", "--message-ttl", "1"]);
    let c0 = s.cursor_now("a");
    let id = s.publish("a", "1");
    let mut c = s.http();
    // Wait (bounded) until the message has expired; until then it is delivered normally.
    let deadline = std::time::Instant::now() + DEADLINE;
    let p = loop {
        let p = check_poll(&c.request(&poll_target(&["a"], Some(&c0), Some(0))));
        if p.reset {
            break p;
        }
        assert_eq!(p.ids(), vec![id.clone()], "before expiry");
        assert!(
            std::time::Instant::now() < deadline,
            "message never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(p.c, 0, "expired message delivered: {}", p.raw);
    // An expired message is no longer held, and a channel with no message and no waiter
    // is no longer counted.
    s.wait_stat("messages", 0);
    s.wait_stat("channels", 0);
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&p.cursor), Some(0))));
    assert!(!q.reset);
    assert_eq!(q.c, 0);
    // A cursor at the expired message itself has lost nothing after it.
    let q = check_poll(&c.request(&poll_target(&["a"], Some(&id), Some(0))));
    assert!(!q.reset, "{}", q.raw);
}

#[test]
fn cursor_past_newest_is_400() {
    let s = Server::start(&["--threads", "1"]);
    let mut pubr = s.publisher();
    pubr.publish("a", "1");
    let b = pubr.publish("a", "2");
    // Sanity: `b` itself, the newest position, is fine.
    let p = check_poll(&s.http().request(&poll_target(&["a"], Some(&b), Some(0))));
    assert_eq!(p.c, 0);
    for k in [1, 1000] {
        let past = cursor_after(&b, k);
        expect_poll_error(&s, &poll_target(&["a"], Some(&past), Some(0)), 400);
    }
    // Also when parked polls would otherwise wait for it.
    let past = cursor_after(&b, 1);
    expect_poll_error(&s, &poll_target(&["a"], Some(&past), Some(60)), 400);
}

#[test]
fn unparseable_cursor_is_400() {
    let s = Server::start(&["--threads", "1"]);
    let id = s.publish("a", "1");
    for bad in ["garbage", "0", "-1", "%FF%FE", "x%00y"] {
        expect_poll_error(&s, &format!("/pns/poll?channel=a&hold=0&cursor={bad}"), 400);
    }
    let mangled = format!("{id}!");
    expect_poll_error(&s, &poll_target(&["a"], Some(&mangled), Some(0)), 400);
}

#[test]
fn empty_cursor_means_from_now() {
    let s = Server::start(&["--threads", "1"]);
    s.publish("a", "1");
    let mut c = s.http();
    let p = check_poll(&c.request("/pns/poll?channel=a&cursor=&hold=0"));
    assert_eq!(p.c, 0);
    assert!(!p.reset);
    c.get("/pns/poll?channel=a&cursor=&hold=60");
    s.wait_parked(1);
    let id = s.publish("a", "2");
    assert_eq!(check_poll(&c.read_response()).ids(), vec![id]);
}

#[test]
fn if_none_match_is_a_cursor_and_cursor_param_wins() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let id = s.publish("a", "1");
    let mut c = s.http();
    let poll = |c: &mut HttpConn, query: &str, inm: &str| {
        c.send(format!(
            "GET /pns/poll?{query} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {inm}\r\n\r\n"
        ));
        check_poll(&c.read_response())
    };
    let p = poll(&mut c, "channel=a&hold=0", &format!("\"{c0}\""));
    assert_eq!(p.ids(), vec![id.clone()]);
    let p = poll(&mut c, "channel=a&hold=0", &format!("W/\"{c0}\""));
    assert_eq!(p.ids(), vec![id.clone()]);
    // The previous answer's ETag works as-is.
    let p = poll(&mut c, "channel=a&hold=0", &format!("\"{id}\""));
    assert_eq!(p.c, 0);
    // cursor param wins over the header, both ways.
    let p = poll(
        &mut c,
        &format!("channel=a&hold=0&cursor={}", pct(&id)),
        &format!("\"{c0}\""),
    );
    assert_eq!(p.c, 0, "{}", p.raw);
    let p = poll(
        &mut c,
        &format!("channel=a&hold=0&cursor={}", pct(&c0)),
        &format!("\"{id}\""),
    );
    assert_eq!(p.ids(), vec![id]);
}

#[test]
fn garbage_if_none_match_is_400_bad_cursor() {
    // Issue 8: a header that is not one entity tag is a cursor that does not parse.
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    for inm in [
        "garbage".to_string(),
        "*".to_string(),
        "\"\"".to_string(),
        format!("\"{c0}\", \"{c0}\""),
        "\"not-a-cursor\"".to_string(),
    ] {
        let mut c = s.http();
        c.send(format!(
            "GET /pns/poll?channel=a&hold=0 HTTP/1.1\r\nHost: t\r\nIf-None-Match: {inm}\r\n\r\n"
        ));
        let r = c.read_response();
        assert_eq!(check_error(&r, 400), "bad_cursor", "If-None-Match: {inm}");
    }
    // A cursor parameter still wins over a garbage header, and a valid weak tag works.
    let mut c = s.http();
    c.send(format!(
        "GET /pns/poll?channel=a&hold=0&cursor={} HTTP/1.1\r\nHost: t\r\nIf-None-Match: garbage\r\n\r\n",
        pct(&c0)
    ));
    assert_eq!(check_poll(&c.read_response()).c, 0);
    c.send(format!(
        "GET /pns/poll?channel=a&hold=0 HTTP/1.1\r\nHost: t\r\nIf-None-Match: W/\"{c0}\"\r\n\r\n"
    ));
    assert_eq!(check_poll(&c.read_response()).c, 0);
}

#[test]
fn answer_headers() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    let r = c.request(&poll_target(&["a"], None, Some(0)));
    // check_poll asserts Content-Type, Cache-Control and ETag; be explicit here too.
    let p = check_poll(&r);
    assert_eq!(r.header("etag"), Some(format!("\"{}\"", p.cursor).as_str()));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    assert!(!r.closes());
    assert_eq!(r.version, 1);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "no CORS by default"
    );
}

#[test]
fn hold_zero_answers_at_once_and_large_hold_is_clamped() {
    let s = Server::start(&["--threads", "1", "--hold", "1", "--max-hold", "1"]);
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a"], None, Some(0))));
    assert_eq!(p.c, 0);
    // hold=100000 is clamped to --max-hold 1: answered empty after about a second.
    let p = check_poll(&c.request(&poll_target(&["a"], None, Some(100_000))));
    assert_eq!(p.c, 0);
    // So is a hold that does not fit any integer type.
    let p = check_poll(&c.request("/pns/poll?channel=a&hold=99999999999999999999999999"));
    assert_eq!(p.c, 0);
}

#[test]
fn bad_hold_is_400() {
    let s = Server::start(&["--threads", "1"]);
    for bad in ["-1", "abc", "1.5", "1e3", "%2B1x", "0x10"] {
        expect_poll_error(&s, &format!("/pns/poll?channel=a&hold={bad}"), 400);
    }
}

#[test]
fn repeated_channel_counts_once() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let id = s.publish("a", "1");
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a", "a", "a"], Some(&c0), Some(0))));
    assert_eq!(p.ids(), vec![id]);
    // 16 distinct names plus repeats is still 16.
    let mut names: Vec<String> = (0..16).map(|i| format!("ch{i}")).collect();
    names.push("ch0".into());
    names.push("ch15".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let p = check_poll(&c.request(&poll_target(&refs, None, Some(0))));
    assert_eq!(p.c, 0);
}

#[test]
fn sixteen_channels_ok_seventeen_is_400() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let id = s.publish("ch15", "1");
    let names: Vec<String> = (0..17).map(|i| format!("ch{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let p = check_poll(
        &s.http()
            .request(&poll_target(&refs[..16], Some(&c0), Some(0))),
    );
    assert_eq!(p.ids(), vec![id]);
    expect_poll_error(&s, &poll_target(&refs, Some(&c0), Some(0)), 400);
}

#[test]
fn no_channel_is_400() {
    let s = Server::start(&["--threads", "1"]);
    expect_poll_error(&s, "/pns/poll", 400);
    expect_poll_error(&s, "/pns/poll?hold=0", 400);
    expect_poll_error(&s, "/pns/poll?", 400);
}

#[test]
fn bad_channel_names_are_400() {
    let s = Server::start(&["--threads", "1"]);
    let long = "a".repeat(129);
    for bad in [
        "channel=",
        "channel=a%20b",
        "channel=a+b",
        "channel=a/b",
        "channel=%C3%A9",
        "channel=a%00",
        "channel=a%zz",
        "channel=a%2",
        "channel=ok&channel=not%20ok",
    ] {
        expect_poll_error(&s, &format!("/pns/poll?{bad}&hold=0"), 400);
    }
    expect_poll_error(&s, &format!("/pns/poll?channel={long}&hold=0"), 400);
}

#[test]
fn valid_names_and_form_decoding() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let longest = "b".repeat(128);
    let odd = "Az09_.:@-";
    let mut pubr = s.publisher();
    let id1 = pubr.publish("user:42", "1");
    let id2 = pubr.publish(&longest, "2");
    let id3 = pubr.publish(odd, "3");
    let mut c = s.http();
    // %3A decodes to ':'; other parameters (the historic comefrom=100) are ignored.
    let p = check_poll(&c.request(&format!(
        "/pns/poll?comefrom=100&channel=user%3A42&cursor={}&hold=0&x=y",
        pct(&c0)
    )));
    assert_eq!(p.ids(), vec![id1]);
    assert_eq!(p.msgs[0]["channel"], "user:42");
    let p = check_poll(&c.request(&format!(
        "/pns/poll?channel={longest}&channel=Az09_.:@-&cursor={}&hold=0",
        pct(&c0)
    )));
    assert_eq!(p.ids(), vec![id2, id3]);
    assert_eq!(p.msgs[1]["channel"], odd);
}

#[test]
fn sid_is_ignored_without_a_secret() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("a");
    let id = s.publish("a", "1");
    let p = check_poll(&s.http().request(&format!(
        "/pns/poll?channel=a&sid=not.a.token&cursor={}&hold=0",
        pct(&c0)
    )));
    assert_eq!(p.ids(), vec![id]);
}
