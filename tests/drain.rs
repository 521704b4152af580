//! PROTOCOL.md section 6 over the real binary: SIGTERM and SIGINT drain. Parked polls are
//! answered `c` = 0 with `Connection: close` and a cursor that skips no undelivered message,
//! publishers get their pending acks and are closed, new connections are refused (or at
//! least never served), the socket file is removed and the process exits 0.
//!
//! The contract's 5 s exit bound is waited for with the generous common deadline, so a
//! noisy machine cannot make the test flaky.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn drain_on(sig: i32) {
    let mut s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("a");
    // A message the `a` pollers are not subscribed to: their drain cursor may pass it.
    let id_b = s.publish("b", "1");
    let mut parked: Vec<HttpConn> = (0..6).map(|_| s.http()).collect();
    for c in &mut parked {
        c.get(&poll_target(&["a"], Some(&c0), Some(120)));
    }
    // One more poll on `b` with an old cursor gets its message at once, before the drain.
    let mut got_b = s.http();
    assert_eq!(
        check_poll(&got_b.request(&poll_target(&["b"], Some(&c0), Some(0)))).ids(),
        vec![id_b.clone()]
    );
    s.wait_parked(6);
    let mut idle = s.http();
    assert_eq!(idle.request("/pns/health").status, 200);
    let mut quiet_pub = s.publisher();
    quiet_pub.publish("c", "1");
    // A publisher with a burst in flight: the first ack proves the server is reading it.
    let mut busy_pub = s.publisher();
    let burst: String = (0..50)
        .map(|i| format!("{{\"channel\":\"burst\",\"data\":{i}}}\n"))
        .collect();
    busy_pub.send(&burst);
    ack_id(&busy_pub.read_answer());
    let socket = s.socket.clone();
    let addr = s.addr;

    s.signal(sig);

    for c in &mut parked {
        let r = c.read_response();
        let p = check_poll(&r);
        assert_eq!(p.c, 0, "drain answer carries no message: {}", p.raw);
        assert!(!p.reset);
        assert!(r.closes(), "drain answer must say Connection: close");
        assert!(
            p.cursor == c0 || p.cursor == id_b,
            "drain cursor {} is neither the poll's cursor nor the newest position {id_b}",
            p.cursor
        );
        c.expect_closed();
    }
    // New connections are refused, or at least never served.
    if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        let mut late = HttpConn::from_stream(stream);
        // The write may fail if the server already closed; the read below decides.
        late.send_tolerant(get_request("/pns/health"));
        if let Ok(r) = late.try_read_response(DEADLINE) {
            check_error(&r, 503);
            assert!(r.header("retry-after").is_some());
        }
    }
    idle.expect_closed();
    got_b.expect_closed();
    // Publishers: pending acks, then EOF.
    assert!(quiet_pub.read_until_eof().is_empty());
    let rest = busy_pub.read_until_eof();
    assert!(rest.len() <= 49, "{} answers for 49 lines", rest.len());
    for line in &rest {
        let v: serde_json::Value = serde_json::from_str(line).expect("answer JSON");
        ack_id(&v);
    }
    let status = s
        .wait_exit(DEADLINE)
        .unwrap_or_else(|| panic!("pnsd still running {DEADLINE:?} after the signal"));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "socket file {} not removed",
        socket.display()
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err(),
        "listener still accepting after exit"
    );
}

#[test]
fn sigterm_drains() {
    drain_on(libc::SIGTERM);
}

#[test]
fn sigint_drains() {
    drain_on(libc::SIGINT);
}

#[test]
fn idle_server_exits_0_on_sigterm_and_removes_its_socket() {
    let mut s = Server::start(&["--threads", "1"]);
    let socket = s.socket.clone();
    assert!(socket.exists());
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(DEADLINE).expect("exited");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(std::fs::symlink_metadata(&socket).is_err());
}

#[test]
fn answer_being_written_at_drain_is_finished() {
    // A ~6 MB answer the client has only begun to read when the signal arrives must still
    // arrive complete before the connection closes.
    let mut s = Server::start(&["--threads", "2", "--buffer", "200"]);
    let c0 = s.cursor_now("big");
    let mut p = s.publisher();
    let chunk = "w".repeat(60_000);
    let ids: Vec<String> = (0..100)
        .map(|i| p.publish("big", &format!("\"{i}:{chunk}\"")))
        .collect();
    drop(p);
    let mut c = s.http();
    c.get(&poll_target(&["big"], Some(&c0), Some(0)));
    // Wait for the first bytes (the server is writing), then signal.
    c.wait_first_byte();
    s.signal(libc::SIGTERM);
    let a = check_poll(&c.read_response());
    assert_eq!(a.ids(), ids);
    c.expect_closed();
    let status = s.wait_exit(DEADLINE).expect("exited");
    assert_eq!(status.code(), Some(0));
}
