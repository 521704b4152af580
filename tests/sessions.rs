//! Sessions end to end (issue 11 item 1), against the real binary: the application registers
//! a session over the publish socket, the seed's page polls `?sid=S&comefrom=100` without a
//! cursor and the server keeps its position, so a cursor-less loop with pauses loses nothing;
//! tabs share the position, an explicit cursor wins, ending a session answers its parked polls
//! 401 `session_ended`, an unknown or expired sid is 401 `session_unknown`, `--max-sessions`
//! bounds the table, and all of it works with and without `--secret-file`.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;
use pnsd::token::{self, Secret};

/// The seed page's poll: no cursor, `comefrom=100`, the default hold (or `hold`).
fn seed_poll(sid: &str, hold: Option<u64>) -> String {
    let mut t = format!("/pns/poll?sid={sid}&comefrom=100");
    if let Some(h) = hold {
        t.push_str(&format!("&hold={h}"));
    }
    t
}

fn ok(v: &Value) {
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
}

fn refused(v: &Value, text: &str) {
    assert_eq!(v["ok"], Value::Bool(false), "{v}");
    let e = v["error"].as_str().expect("error text");
    assert!(e.contains(text), "{e:?} should say {text:?}");
}

#[test]
fn a_cursorless_session_loop_gets_every_message_once_in_order() {
    let server = Server::start(&[]);
    ok(&server.publisher().session("s1", &["inbox"], 60));
    // Published before the first poll, after registration: not lost either.
    let mut p = server.publisher();
    p.publish("inbox", "-1");
    const N: i64 = 200;
    let socket = server.socket.clone();
    let publisher = thread::spawn(move || {
        let mut p = Publisher::connect(&socket);
        for i in 0..N {
            p.publish("inbox", &i.to_string());
            p.publish("elsewhere", &i.to_string());
            // Bursts of 50, with pauses so publishes land both in polls and in the pauses.
            if i % 50 == 49 {
                thread::sleep(Duration::from_millis(300));
            } else if i % 7 == 0 {
                thread::sleep(Duration::from_millis(15));
            }
        }
    });
    let mut conn = server.http();
    let mut got: Vec<i64> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < (N + 1) as usize && Instant::now() < deadline {
        let a = check_poll(&conn.request(&seed_poll("s1", Some(5))));
        assert!(!a.reset, "{}", a.body);
        for m in &a.msgs {
            assert_eq!(m["channel"], "inbox");
            got.push(m["data"].as_i64().expect("number"));
        }
        // The seed re-polls 500 ms after an answer; shorter here, same effect.
        thread::sleep(Duration::from_millis(40));
    }
    publisher.join().expect("publisher");
    let want: Vec<i64> = (-1..N).collect();
    assert_eq!(got, want, "every message exactly once, in order");
}

#[test]
fn tabs_share_the_position_and_an_explicit_cursor_wins() {
    let server = Server::start(&[]);
    let mut p = server.publisher();
    ok(&p.session("shared", &["a", "b"], 60));
    let start = server.cursor_now("a");
    let (mut tab1, mut tab2) = (server.http(), server.http());
    p.publish("a", "1");
    p.publish("b", "2");
    let first = check_poll(&tab1.request(&seed_poll("shared", Some(0))));
    assert_eq!(first.c, 2);
    p.publish("a", "3");
    let second = check_poll(&tab2.request(&seed_poll("shared", Some(0))));
    assert_eq!(second.msgs.len(), 1, "tab 2 continues where tab 1 ended");
    assert_eq!(second.msgs[0]["data"], 3);
    assert_eq!(
        check_poll(&tab1.request(&seed_poll("shared", Some(0)))).c,
        0
    );
    // A tab that passes its cursor gets what it asks for, whatever the session's position.
    let t = format!("/pns/poll?sid=shared&hold=0&cursor={}", pct(&start));
    let all = check_poll(&tab1.request(&t));
    assert_eq!(all.c, 3, "{}", all.body);
}

#[test]
fn ending_a_session_answers_its_parked_polls_401_at_once() {
    let server = Server::start(&["--cors-origin", "*"]);
    let mut p = server.publisher();
    ok(&p.session("gone", &["a"], 60));
    ok(&p.session("stays", &["a"], 60));
    let mut parked = server.http();
    parked.get(&seed_poll("gone", Some(60)));
    let mut other = server.http();
    other.get(&seed_poll("stays", Some(60)));
    server.wait_parked(2);
    // The reserved wait channel is not a channel of the contract.
    assert_eq!(server.stats()["channels"], 1);
    assert_eq!(server.stats()["sessions"], 2);
    ok(&p.end_session("gone"));
    let r = parked
        .try_read_response(Duration::from_secs(10))
        .expect("the parked poll is answered when its session ends");
    assert_eq!(check_error(&r, 401), "session_ended");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // The same connection stays usable; the session is unknown from now on.
    let r = parked.request(&seed_poll("gone", Some(0)));
    assert_eq!(check_error(&r, 401), "session_unknown");
    refused(&p.end_session("gone"), "no such session");
    // The other session's poll still waits, and gets its message.
    server.wait_parked(1);
    p.publish("a", "\"hi\"");
    let a = check_poll(&other.read_response());
    assert_eq!(a.msgs[0]["data"], "hi");
}

#[test]
fn unknown_sids_without_a_secret() {
    let server = Server::start(&[]);
    let mut conn = server.http();
    let r = conn.request(&seed_poll("nobody", Some(0)));
    assert_eq!(check_error(&r, 401), "session_unknown");
    // Naming channels keeps contract v1: the unknown sid is ignored.
    check_poll(&conn.request("/pns/poll?sid=nobody&channel=a&hold=0"));
    // A sid that cannot be a session (it has dots) is ignored as before.
    let r = conn.request("/pns/poll?hold=0&sid=x.y.z");
    assert_eq!(check_error(&r, 400), "no_channel");
}

#[test]
fn registrations_are_validated_and_bounded() {
    let server = Server::start(&["--max-sessions", "2"]);
    let mut p = server.publisher();
    refused(
        &p.request(r#"{"op":"session","sid":"a.b","channels":["a"],"ttl":5}"#),
        "invalid sid",
    );
    refused(
        &p.request(r#"{"op":"session","sid":"a","channels":["a"],"ttl":0}"#),
        "ttl must be",
    );
    refused(
        &p.request(r#"{"op":"session","sid":"a","channels":["no space"],"ttl":5}"#),
        "invalid channel",
    );
    ok(&p.session("one", &["a"], 60));
    ok(&p.session("two", &["a"], 60));
    refused(&p.session("three", &["a"], 60), "session table full");
    // Re-registering replaces (and is not a new session).
    ok(&p.session("two", &["b"], 60));
    p.publish("a", "1");
    p.publish("b", "2");
    let mut conn = server.http();
    let a = check_poll(&conn.request(&seed_poll("two", Some(0))));
    assert_eq!(a.msgs.len(), 1);
    assert_eq!(a.msgs[0]["channel"], "b");
    ok(&p.end_session("one"));
    ok(&p.session("three", &["a"], 60));
}

#[test]
fn a_session_expires_after_its_ttl_without_a_poll() {
    let server = Server::start(&[]);
    let mut p = server.publisher();
    ok(&p.session("brief", &["a"], 1));
    ok(&p.session("kept", &["a"], 1));
    let mut conn = server.http();
    // "kept" is polled more often than its TTL and stays; "brief" is not and expires.
    let deadline = Instant::now() + DEADLINE;
    loop {
        check_poll(&conn.request(&seed_poll("kept", Some(0))));
        // A poll of "brief" would refresh it: watch the sweep reclaim it instead.
        if server.stats()["sessions"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the session never expired");
        thread::sleep(Duration::from_millis(200));
    }
    let r = conn.request(&seed_poll("brief", Some(0)));
    assert_eq!(check_error(&r, 401), "session_unknown");
    check_poll(&conn.request(&seed_poll("kept", Some(0))));
    // Not polled any more, "kept" expires too, and the sweep reclaims both records.
    server.wait_stat("sessions", 0);
}

#[test]
fn sessions_and_tokens_with_a_secret() {
    let key = b"correct horse battery staple";
    let (server, _secret) = Server::start_with_secret(key, &[]);
    let mut p = server.publisher();
    ok(&p.session("S42", &["user:42"], 60));
    let mut conn = server.http();
    let first = check_poll(&conn.request(&seed_poll("S42", Some(0))));
    assert_eq!(first.c, 0);
    p.publish("user:42", "\"mail\"");
    let a = check_poll(&conn.request(&seed_poll("S42", Some(0))));
    assert_eq!(a.msgs[0]["data"], "mail");
    // Tokens work as before, in sid and in the header.
    let tok = token::mint(
        &Secret::from_bytes(key),
        &["user:42".to_string()],
        token::unix_now() as u64 + 3600,
        None,
    );
    check_poll(&conn.request(&format!("/pns/poll?sid={}&hold=0", pct(&tok))));
    // A sid that is neither a token nor a session.
    let r = conn.request(&seed_poll("nobody", Some(0)));
    assert_eq!(check_error(&r, 401), "session_unknown");
    let r = conn.request("/pns/poll?sid=a.b.c&hold=0");
    check_error(&r, 401);
}
