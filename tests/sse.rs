//! Server-Sent Events end to end (issue 11 item 2) and the CORS origin list (item 3), against
//! the real binary: the stream's head and `retry:`, one `event: message` per message with its
//! cursor as `id:`, resuming from `Last-Event-ID`, `cursor` or `last_event_id`, the reset event,
//! heartbeats, the `--sse-max` end, a token's expiry, sessions, a client that does not read,
//! the drain, and the memory an idle stream costs.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use common::*;
use pnsd::token::{self, Secret};

fn stream_target(channels: &[&str], extra: &str) -> String {
    let q: Vec<String> = channels
        .iter()
        .map(|c| format!("channel={}", pct(c)))
        .collect();
    format!("/pns/poll?{}{extra}", q.join("&"))
}

/// Opens a stream and checks its head and `retry:` line.
fn open(server: &Server, target: &str, headers: &[(&str, &str)]) -> HttpConn {
    let mut c = server.http();
    let r = c.open_events(target, headers);
    assert_eq!(r.status, 200, "{:?}", r.body_text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert!(
        r.header("content-length").is_none(),
        "the stream ends by closing"
    );
    let first = c.next_event(DEADLINE).expect("retry").expect("retry");
    assert!(first.retry.is_some(), "{first:?}");
    c
}

/// The event's data checked against its id: the data is a message object whose id is the
/// event's id.
fn message(e: &SseEvent) -> Value {
    assert_eq!(e.event, "message", "{e:?}");
    let v = e.json();
    assert_eq!(v["id"].as_str(), e.id.as_deref(), "{e:?}");
    v
}

#[test]
fn messages_arrive_as_events_whose_ids_are_cursors() {
    let server = Server::start(&[]);
    let mut s = open(&server, &stream_target(&["a", "b"], ""), &[]);
    server.wait_stat("streams", 1);
    let mut p = server.publisher();
    p.request(r#"{"channel":"a","type":70,"data":{"subject":"hi"}}"#);
    p.publish("b", "2");
    p.publish("c", "3");
    // JSON whitespace the publisher sent: a CR inside the line.
    p.request("{\"channel\":\"a\",\"data\":{\r\"pretty\":\rtrue}}");
    let e1 = s.next_data_event();
    let v1 = message(&e1);
    assert_eq!(
        (v1["channel"].as_str(), v1["type"].as_i64()),
        (Some("a"), Some(70))
    );
    assert_eq!(v1["data"]["subject"], "hi");
    let e2 = s.next_data_event();
    assert_eq!(message(&e2)["data"], 2);
    let e3 = s.next_data_event();
    assert_eq!(
        message(&e3)["data"]["pretty"],
        true,
        "split data lines rejoin"
    );
    // An id is a cursor: a poll after the first event's id gets the rest.
    let mut c = server.http();
    let t = poll_target(&["a", "b"], Some(e1.id.as_deref().unwrap()), Some(0));
    let a = check_poll(&c.request(&t));
    assert_eq!(
        a.ids(),
        vec![e2.id.clone().unwrap(), e3.id.clone().unwrap()]
    );
    // The same message objects as a poll answer's.
    assert_eq!(a.msgs[0], message(&e2));
    // Answers and event batches with messages count: at least one batch and the poll.
    assert!(server.stats()["delivered"].as_u64().unwrap() >= 2);
}

#[test]
fn a_stream_resumes_from_last_event_id_cursor_or_last_event_id() {
    let server = Server::start(&[]);
    let start = server.cursor_now("a");
    let ids: Vec<String> = (0..3)
        .map(|i| server.publish("a", &i.to_string()))
        .collect();
    let header = [("Last-Event-ID", ids[0].as_str())];
    let bad = format!("&cursor={}", pct(&ids[2]));
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        // The header wins over a parameter (EventSource sends it on reconnect).
        (stream_target(&["a"], &bad), header.to_vec()),
        (
            stream_target(&["a"], &format!("&cursor={}", pct(&ids[0]))),
            vec![],
        ),
        (
            stream_target(&["a"], &format!("&last_event_id={}", pct(&ids[0]))),
            vec![],
        ),
    ];
    for (target, headers) in cases {
        let mut s = open(&server, &target, &headers);
        let got: Vec<String> = (0..2).map(|_| s.next_data_event().id.unwrap()).collect();
        assert_eq!(got, ids[1..].to_vec(), "{target} {headers:?}");
    }
    // Without a cursor a stream starts at the newest message, like a poll.
    let mut s = open(&server, &stream_target(&["a"], ""), &[]);
    server.wait_stat("streams", 1);
    let id = server.publish("a", "9");
    assert_eq!(s.next_data_event().id.unwrap(), id);
    let mut s = open(
        &server,
        &stream_target(&["a"], &format!("&cursor={}", pct(&start))),
        &[],
    );
    assert_eq!(s.next_data_event().id.unwrap(), ids[0]);
}

#[test]
fn a_reset_event_comes_before_the_messages() {
    let server = Server::start(&["--buffer", "2"]);
    let first = server.publish("a", "0");
    for i in 1..5 {
        server.publish("a", &i.to_string());
    }
    let mut s = open(
        &server,
        &stream_target(&["a"], ""),
        &[("Last-Event-ID", &first)],
    );
    let reset = s.next_data_event();
    assert_eq!(reset.event, "reset");
    assert!(reset.json()["cursor"].is_string());
    let data: Vec<Value> = (0..2)
        .map(|_| message(&s.next_data_event())["data"].clone())
        .collect();
    assert_eq!(data, vec![Value::from(3), Value::from(4)]);
    // A cursor of another run: a reset carrying the position when nothing follows.
    let foreign = pnsd::cursor::encode(0x5eed, 1);
    let mut s = open(
        &server,
        &stream_target(&["b"], &format!("&cursor={foreign}")),
        &[],
    );
    let reset = s.next_data_event();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id.as_deref(), reset.json()["cursor"].as_str());
}

#[test]
fn heartbeats_then_the_stream_ends_after_sse_max() {
    let server = Server::start(&["--sse-heartbeat", "1", "--sse-max", "3"]);
    let mut s = open(&server, &stream_target(&["a"], "&hold=0"), &[]);
    let events = s.events_until_close();
    let beats = events
        .iter()
        .filter(|e| e.comments.iter().any(|c| c == "keep-alive"));
    assert!(beats.count() >= 1, "{events:?}");
    assert!(events.iter().all(|e| e.data.is_none()), "{events:?}");
    server.wait_stat("streams", 0);
}

#[test]
fn a_token_expiring_ends_the_stream_and_the_reconnect_is_401() {
    let key = b"correct horse battery staple";
    let (server, _secret) = Server::start_with_secret(key, &[]);
    let exp = token::unix_now() as u64 + 3;
    let tok = token::mint(&Secret::from_bytes(key), &["a".to_string()], exp, None);
    let mut s = open(&server, &format!("/pns/poll?sid={}", pct(&tok)), &[]);
    server.wait_stat("streams", 1);
    server.publish("a", "1");
    assert_eq!(message(&s.next_data_event())["data"], 1);
    let rest = s.events_until_close();
    assert!(rest.iter().all(|e| e.data.is_none()), "{rest:?}");
    // The stream ends no later than exp (never a message after it); the browser reconnects
    // after `retry:`, by which time the token has expired.
    while token::unix_now() < exp as f64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = server.http();
    let r = c.open_events(&format!("/pns/poll?sid={}", pct(&tok)), &[]);
    assert_eq!(check_error(&r, 401), "token_expired");
    // A Bearer header works as for polls.
    let tok = token::mint(
        &Secret::from_bytes(key),
        &["a".to_string()],
        token::unix_now() as u64 + 600,
        None,
    );
    let auth = format!("Bearer {tok}");
    let mut s = open(&server, "/pns/poll", &[("Authorization", &auth)]);
    server.wait_stat("streams", 1);
    server.publish("a", "2");
    assert_eq!(message(&s.next_data_event())["data"], 2);
}

#[test]
fn session_streams_move_the_position_and_end_with_the_session() {
    let server = Server::start(&[]);
    let mut p = server.publisher();
    assert_eq!(p.session("tab", &["inbox"], 60)["ok"], true);
    let mut s = open(&server, "/pns/poll?sid=tab&comefrom=100", &[]);
    server.wait_stat("streams", 1);
    p.publish("inbox", "\"one\"");
    assert_eq!(message(&s.next_data_event())["data"], "one");
    // The stream moved the session's position: a cursor-less session poll does not get "one".
    let mut c = server.http();
    assert_eq!(check_poll(&c.request("/pns/poll?sid=tab&hold=0")).c, 0);
    assert_eq!(p.end_session("tab")["ok"], true);
    let end = s.next_data_event();
    assert_eq!(end.event, "session_ended");
    assert_eq!(end.json()["errorcode"], "session_ended");
    assert!(s.events_until_close().is_empty());
    let r = c.open_events("/pns/poll?sid=tab", &[]);
    assert_eq!(check_error(&r, 401), "session_unknown");
}

#[test]
fn a_stream_that_does_not_read_is_dropped_after_the_write_timeout() {
    let server = Server::start(&["--write-timeout", "1", "--sse-heartbeat", "600"]);
    let mut idle = server.http();
    idle.stream.set_nodelay(true).expect("nodelay");
    let _ = idle.open_events(&stream_target(&["big"], ""), &[]);
    let mut reader = open(&server, &stream_target(&["big"], ""), &[]);
    server.wait_stat("streams", 2);
    let rss_before = server.rss_kib();
    // Far more than the socket buffers hold: the server keeps one batch at most, then drops it.
    let data = format!("\"{}\"", "x".repeat(60_000));
    let mut p = server.publisher();
    let last = (0..200)
        .map(|_| p.publish("big", &data))
        .last()
        .expect("published");
    // The reader gets to the last message (through reset events where it fell more than the
    // buffer behind); the idle one is dropped.
    while reader.next_data_event().id.as_deref() != Some(last.as_str()) {}
    server.wait_stat("streams", 1);
    let grown = server.rss_kib().saturating_sub(rss_before);
    // The store holds its 64 messages (~4 MB); nothing near the 12 MB published is buffered
    // for the stream that did not read.
    assert!(grown < 10 * 1024, "RSS grew {grown} KiB");
    let mut sink = Vec::new();
    let _ = idle.stream.read_to_end(&mut sink);
}

#[test]
fn many_streams_receive_one_publish_and_the_drain_ends_them() {
    let mut server = Server::start(&["--threads", "1"]);
    let mut streams: Vec<HttpConn> = (0..50)
        .map(|_| open(&server, &stream_target(&["fan"], ""), &[]))
        .collect();
    server.wait_stat("streams", 50);
    let id = server.publish("fan", "\"all\"");
    for s in &mut streams {
        assert_eq!(s.next_data_event().id.as_deref(), Some(id.as_str()));
    }
    server.signal(libc::SIGTERM);
    for s in &mut streams {
        assert!(s.events_until_close().iter().all(|e| e.data.is_none()));
    }
    assert!(server.wait_exit(Duration::from_secs(6)).is_some());
}

#[test]
fn cors_origin_list_echoes_only_listed_origins() {
    let a = "https://a.example";
    let b = "https://b.example";
    let server = Server::start(&["--cors-origin", a, "--cors-origin", b]);
    let mut c = server.http();
    let t = poll_target(&["x"], None, Some(0));
    for origin in [a, b] {
        c.send(get_with(&t, &[("Origin", origin)]));
        let r = c.read_response();
        check_poll(&r);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(r.has_token("vary", "origin"));
    }
    c.send(get_with(&t, &[("Origin", "https://evil.example")]));
    let r = c.read_response();
    check_poll(&r);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );
    assert!(r.has_token("vary", "origin") || r.header("vary").is_none());
    // Errors too, and the event stream's head.
    c.send(get_with("/pns/nope", &[("Origin", b)]));
    let r = c.read_response();
    check_error(&r, 404);
    assert_eq!(r.header("access-control-allow-origin"), Some(b));
    let mut s = server.http();
    let r = s.open_events(&stream_target(&["x"], ""), &[("Origin", a)]);
    assert_eq!(r.header("access-control-allow-origin"), Some(a));
    // A preflight allows Last-Event-ID.
    c.send(format!(
        "OPTIONS /pns/poll HTTP/1.1\r\nOrigin: {a}\r\nAccess-Control-Request-Method: GET\r\n\r\n"
    ));
    let r = c.read_response();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(a));
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Last-Event-ID"));
    // `*` answers everyone.
    let any = Server::start(&["--cors-origin", "*"]);
    let mut c = any.http();
    c.send(get_with(&t, &[("Origin", "https://evil.example")]));
    assert_eq!(
        c.read_response().header("access-control-allow-origin"),
        Some("*")
    );
}

/// The userland memory of idle streams, measured like the density scenario: the server's RSS
/// growth over 2,000 idle streams (kernel socket buffers are not in RSS). Prints the figure;
/// asserts a generous bound (a parked poll costs ~100 B; a stream must stay in that class).
#[test]
fn idle_streams_cost_about_what_a_parked_poll_costs() {
    const N: usize = 2000;
    let server = Server::start(&["--threads", "1"]);
    // Warm up the allocator and the slab's first pages with a few streams.
    let warm: Vec<HttpConn> = (0..50)
        .map(|_| open(&server, &stream_target(&["d"], ""), &[]))
        .collect();
    server.wait_stat("streams", 50);
    let before = server.rss_kib();
    let mut streams = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = HttpConn::from_stream(TcpStream::connect(server.addr).expect("connect"));
        let _ = c.open_events(&stream_target(&[&format!("d{}", i % 100)], ""), &[]);
        streams.push(c);
    }
    server.wait_stat("streams", (N + warm.len()) as u64);
    let after = server.rss_kib();
    let per = (after.saturating_sub(before) * 1024) as f64 / N as f64;
    println!("idle SSE stream: {per:.0} bytes of RSS each over {N} streams");
    assert!(per < 1024.0, "{per} bytes per idle stream");
}
