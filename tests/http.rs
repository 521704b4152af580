//! PROTOCOL.md sections 2 and 3 at the HTTP level, over raw sockets: keep-alive, HTTP/1.0,
//! `Connection: close`, pipelining (also behind a parked poll), split requests, the header
//! size limit, bodies on GET, 404/405/OPTIONS, CORS, health, the error shape and which
//! errors close, the head, idle and write deadlines (fast, on short `--head-timeout` and
//! `--idle-timeout`; the contract's 10 s head deadline once in real time), hang-ups while
//! parked, `--max-connections`, CORS on every answer. The contract's 75 s idle default is
//! checked on a handed-in clock (`reactor::tests::idle_and_head_deadlines_follow_the_handed_in_clock`)
//! and the idle close in real time with `--idle-timeout 3`: a 75 s wall-clock wait alone would
//! hold `cargo test` above its 100 s budget, since cargo runs the test binaries one by one.
//!
//! Each test starts its own server. Where a request must be parked before something else
//! happens, the test waits for the `parked` stat instead of sleeping.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

const ORIGIN: &str = "https://app.example";

#[test]
fn health_answers_ok() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    let r = c.request("/pns/health");
    assert_eq!(r.status, 200);
    check_json_type(&r);
    assert_eq!(r.json(), serde_json::json!({"ok":true}));
    assert!(!r.closes());
    // Still usable.
    assert_eq!(c.request("/pns/health").status, 200);
}

#[test]
fn keep_alive_repoll_on_one_connection() {
    let s = Server::start(&["--threads", "2"]);
    let mut c = s.http();
    let p = check_poll(&c.request(&poll_target(&["a"], None, Some(0))));
    assert!(!s.http().request("/pns/health").closes());
    let mut cursor = p.cursor;
    let mut pubr = s.publisher();
    for round in 0..20 {
        let id = pubr.publish("a", &round.to_string());
        let r = c.request(&poll_target(&["a"], Some(&cursor), Some(30)));
        assert!(!r.closes(), "keep-alive answer must not close");
        let p = check_poll(&r);
        assert_eq!(p.ids(), vec![id]);
        cursor = p.cursor;
    }
    // A parked re-poll on the same connection.
    c.get(&poll_target(&["a"], Some(&cursor), Some(60)));
    s.wait_parked(1);
    let id = pubr.publish("a", "\"last\"");
    assert_eq!(check_poll(&c.read_response()).ids(), vec![id]);
    assert_eq!(s.stats()["connections"], 1);
}

#[test]
fn http_1_0_is_answered_then_closed() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    c.send("GET /pns/health HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    c.expect_closed();
    let mut c = s.http();
    c.send("GET /pns/poll?channel=a&hold=0 HTTP/1.0\r\nHost: t\r\n\r\n");
    check_poll(&c.read_response());
    c.expect_closed();
}

#[test]
fn connection_close_is_honoured() {
    let s = Server::start(&["--threads", "1"]);
    for req in [
        "GET /pns/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /pns/poll?channel=a&hold=0 HTTP/1.1\r\nConnection: Close\r\nHost: t\r\n\r\n",
        "GET /pns/health HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /pns/health HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
        // Followed by another request that must not be answered.
        "GET /pns/health HTTP/1.1\r\nConnection: close\r\n\r\nGET /pns/health HTTP/1.1\r\n\r\n",
    ] {
        let mut c = s.http();
        c.send(req);
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(r.closes(), "answer to Connection: close should say close");
        c.expect_closed();
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("a");
    let id = s.publish("a", "1");
    let mut c = s.http();
    let mut batch = String::new();
    batch.push_str(&get_request("/pns/health"));
    batch.push_str(&get_request(&poll_target(&["a"], Some(&c0), Some(0))));
    batch.push_str(&get_request("/nope"));
    batch.push_str(&get_request(&poll_target(&["a"], Some(&id), Some(0))));
    batch.push_str(&get_request("/pns/health"));
    c.send(&batch);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(check_poll(&c.read_response()).ids(), vec![id.clone()]);
    check_error(&c.read_response(), 404);
    assert_eq!(check_poll(&c.read_response()).c, 0);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"ok":true}));
    // Many pipelined requests in one write.
    let n = 200;
    c.send(get_request("/pns/health").repeat(n));
    for _ in 0..n {
        assert_eq!(c.read_response().status, 200);
    }
}

#[test]
fn request_queued_behind_parked_poll_waits_for_it() {
    let s = Server::start(&["--threads", "2"]);
    let mut c = s.http();
    let mut batch = get_request(&poll_target(&["a"], None, Some(60)));
    batch.push_str(&get_request("/pns/health"));
    batch.push_str(&get_request(&poll_target(&["b"], None, Some(0))));
    c.send(&batch);
    s.wait_parked(1);
    // Nothing may be answered while the first poll is parked (checked after the park was
    // observed, so this is an ordering check, not a timing one).
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "answered out of order"
    );
    let id = s.publish("a", "1");
    let p = check_poll(&c.read_response());
    assert_eq!(p.ids(), vec![id]);
    assert_eq!(c.read_response().status, 200);
    check_poll(&c.read_response());
}

#[test]
fn request_sent_after_the_poll_parked_waits_for_it() {
    let s = Server::start(&["--threads", "2"]);
    let mut c = s.http();
    c.get(&poll_target(&["a"], None, Some(60)));
    s.wait_parked(1);
    // Bytes arriving on a parked connection are a queued request, not a hang-up.
    c.get("/pns/health");
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "answered out of order"
    );
    assert_eq!(s.stats()["parked"], 1);
    let id = s.publish("a", "1");
    assert_eq!(check_poll(&c.read_response()).ids(), vec![id]);
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn parked_poll_with_connection_close_closes_after_its_answer() {
    let s = Server::start(&["--threads", "2"]);
    let mut c = s.http();
    c.send(format!(
        "GET {} HTTP/1.1\r\nConnection: close\r\n\r\n",
        poll_target(&["a"], None, Some(60))
    ));
    let mut old = s.http();
    old.send(format!(
        "GET {} HTTP/1.0\r\n\r\n",
        poll_target(&["a"], None, Some(60))
    ));
    s.wait_parked(2);
    let id = s.publish("a", "1");
    let r = c.read_response();
    assert!(r.closes());
    assert_eq!(check_poll(&r).ids(), vec![id.clone()]);
    c.expect_closed();
    assert_eq!(check_poll(&old.read_response()).ids(), vec![id]);
    old.expect_closed();
}

#[test]
fn request_split_into_one_byte_writes() {
    let s = Server::start(&["--threads", "2"]);
    let c0 = s.cursor_now("news");
    let id = s.publish("news", "\"split\"");
    let mut c = s.http();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: pnsd.test\r\nUser-Agent: split-test\r\nAccept: */*\r\n\r\n",
        poll_target(&["news"], Some(&c0), Some(0))
    );
    for b in req.as_bytes() {
        c.send([*b]);
        thread::sleep(Duration::from_millis(1));
    }
    let p = check_poll(&c.read_response());
    assert_eq!(p.ids(), vec![id]);
    // And again on the same connection, with CRLF split between writes.
    for chunk in req.as_bytes().chunks(3) {
        c.send(chunk);
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(check_poll(&c.read_response()).c, 1);
}

/// A GET of `/pns/health` whose request line plus headers, through the empty line, is
/// exactly `total` bytes.
fn sized_request(total: usize) -> String {
    let head = "GET /pns/health HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    let tail = "\r\n\r\n";
    let pad = total - head.len() - tail.len();
    format!("{head}{}{tail}", "p".repeat(pad))
}

#[test]
fn header_of_8192_bytes_is_accepted() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    let req = sized_request(8192);
    assert_eq!(req.len(), 8192);
    c.send(&req);
    assert_eq!(c.read_response().status, 200);
    // Keep-alive afterwards.
    assert_eq!(c.request("/pns/health").status, 200);
}

#[test]
fn header_over_8192_bytes_is_431() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    c.send_tolerant(sized_request(8193));
    check_error(&c.read_response(), 431);
    c.expect_closed();
    // A huge unterminated head is answered without waiting for its end.
    let mut c = s.http();
    let mut big = String::from("GET /pns/health HTTP/1.1\r\nX-Big: ");
    big.push_str(&"b".repeat(20_000));
    c.send_tolerant(&big);
    check_error(&c.read_response(), 431);
    c.expect_closed();
    // Other connections are unaffected.
    assert_eq!(s.http().request("/pns/health").status, 200);
}

#[test]
fn get_with_a_body_is_400_and_closes() {
    let s = Server::start(&["--threads", "1"]);
    for req in [
        "GET /pns/health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        "GET /pns/poll?channel=a&hold=0 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "GET /pns/poll?channel=a&hold=0 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /pns/health HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    ] {
        let mut c = s.http();
        c.send_tolerant(req);
        check_error(&c.read_response(), 400);
        c.expect_closed();
    }
    // Content-Length: 0 is not a body.
    let mut c = s.http();
    c.send("GET /pns/health HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.request("/pns/health").status, 200);
}

#[test]
fn malformed_requests_are_400_and_close() {
    let s = Server::start(&["--threads", "1"]);
    for req in [
        "GARBAGE\r\n\r\n",
        "GET /pns/health HTTP/1.1\r\nBad Header Line\r\n\r\n",
        "GET /pns/health HTTP/9.9\r\n\r\n",
        "GET\r\n\r\n",
        "\u{1}\u{2}\u{3}\r\n\r\n",
    ] {
        let mut c = s.http();
        c.send(req);
        check_error(&c.read_response(), 400);
        c.expect_closed();
    }
}

#[test]
fn bad_request_does_not_disturb_other_connections() {
    let s = Server::start(&["--threads", "2"]);
    let mut parked: Vec<HttpConn> = (0..4).map(|_| s.http()).collect();
    for c in &mut parked {
        c.get(&poll_target(&["a"], None, Some(60)));
    }
    s.wait_parked(4);
    for req in [
        "GARBAGE\r\n\r\n".to_string(),
        sized_request(9000),
        "GET /pns/poll?channel=%zz HTTP/1.1\r\n\r\n".to_string(),
    ] {
        let mut bad = s.http();
        bad.send_tolerant(req);
        let r = bad.read_response();
        assert!(r.status == 400 || r.status == 431, "{}", r.status);
        bad.expect_closed();
    }
    assert_eq!(s.stats()["parked"], 4);
    let id = s.publish("a", "1");
    for c in &mut parked {
        assert_eq!(check_poll(&c.read_response()).ids(), vec![id.clone()]);
    }
}

#[test]
fn unknown_path_is_404_for_any_method_and_keeps_alive() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    for req in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET /nope HTTP/1.1\r\n\r\n",
        "GET /pns/pollx?channel=a HTTP/1.1\r\n\r\n",
        "GET /pns/poll/x?channel=a HTTP/1.1\r\n\r\n",
        "GET /pns HTTP/1.1\r\n\r\n",
        "POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "PUT /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "DELETE /x/y HTTP/1.1\r\n\r\n",
        "OPTIONS /nope HTTP/1.1\r\n\r\n",
    ] {
        c.send(req);
        check_error(&c.read_response(), 404);
    }
    assert_eq!(c.request("/pns/health").status, 200);
    // HEAD on an unknown path: 404 (read up to close, since a HEAD answer has no body).
    let mut c = s.http();
    c.send("HEAD /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(c.read_response_until_close().status, 404);
}

#[test]
fn body_of_a_non_get_request_is_skipped() {
    // A 404/405 keeps the connection: the request's body must not be parsed as the next
    // request.
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    c.send("POST /nope HTTP/1.1\r\nContent-Length: 27\r\n\r\nGET /pns/health HTTP/1.1\r\n\r\n");
    check_error(&c.read_response(), 404);
    c.send("POST /pns/poll HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd");
    check_error(&c.read_response(), 405);
    let r = c.request("/pns/poll?channel=a&hold=0");
    check_poll(&r);
    assert!(
        c.quiet_for(Duration::from_millis(200)),
        "an extra answer arrived"
    );
}

#[test]
fn other_methods_on_known_paths_are_405_with_allow() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    for (req, allow) in [
        (
            "POST /pns/poll?channel=a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET, OPTIONS",
        ),
        (
            "PUT /pns/poll HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET, OPTIONS",
        ),
        ("DELETE /pns/poll HTTP/1.1\r\n\r\n", "GET, OPTIONS"),
        (
            "POST /pns/health HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET, HEAD",
        ),
        ("OPTIONS /pns/health HTTP/1.1\r\n\r\n", "GET, HEAD"),
        ("PATCH /pns/health HTTP/1.1\r\n\r\n", "GET, HEAD"),
    ] {
        c.send(req);
        let r = c.read_response();
        check_error(&r, 405);
        assert_eq!(r.header("allow"), Some(allow), "{req:?}");
    }
    // Kept alive through all of them.
    assert_eq!(c.request("/pns/health").status, 200);
}

/// Sends `HEAD path` and a closing `GET /pns/health` in one write, reads to the close; returns
/// the first answer's head, everything after it, and the whole text.
fn head_then_health(s: &Server, path: &str) -> (String, String, String) {
    let mut sock = std::net::TcpStream::connect(s.addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "HEAD {path} HTTP/1.1\r\n\r\nGET /pns/health HTTP/1.1\r\nConnection: close\r\n\r\n"
    );
    std::io::Write::write_all(&mut sock, req.as_bytes()).expect("send");
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut sock, &mut all).expect("read");
    let text = String::from_utf8(all).expect("utf-8");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
    (head.to_string(), rest.to_string(), text.clone())
}

#[test]
fn head_on_poll_is_405_and_on_health_is_answered_without_a_body() {
    // Issue 8: load balancers health-check with HEAD.
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    c.send("HEAD /pns/poll?channel=a HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.read_response_until_close();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    // HEAD /pns/health: 200, the GET's headers, no body, and the connection stays in step.
    let (head, rest, text) = head_then_health(&s, "/pns/health");
    assert!(head.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(head.contains("Content-Length: 11"), "{text}");
    assert!(
        rest.starts_with("HTTP/1.1 200 "),
        "a body after HEAD: {text}"
    );
    assert!(rest.ends_with("{\"ok\":true}"), "{text}");
}

#[test]
fn options_on_poll_is_204_with_allow_and_no_cors_by_default() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    c.send("OPTIONS /pns/poll HTTP/1.1\r\nOrigin: https://x.example\r\nAccess-Control-Request-Method: GET\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    assert!(r.body.is_empty());
    for h in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
    ] {
        assert!(r.header(h).is_none(), "{h} without --cors-origin");
    }
    let r = c.request(&poll_target(&["a"], None, Some(0)));
    assert!(r.header("access-control-allow-origin").is_none());
}

fn check_cors(r: &Response) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(ORIGIN),
        "{} {:?}",
        r.status,
        r.headers
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("ETag, Retry-After")
    );
    assert!(
        r.has_token("vary", "origin"),
        "Vary: Origin missing: {:?}",
        r.headers
    );
}

#[test]
fn cors_headers_on_answers_errors_and_preflight() {
    let s = Server::start(&["--threads", "1", "--cors-origin", ORIGIN]);
    let mut c = s.http();
    // Preflight.
    c.send(format!(
        "OPTIONS /pns/poll HTTP/1.1\r\nOrigin: {ORIGIN}\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: if-none-match\r\n\r\n"
    ));
    let r = c.read_response();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    check_cors(&r);
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Authorization, If-None-Match, Last-Event-ID")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    // A poll answer (empty, then with a message after a park).
    let r = c.request(&poll_target(&["a"], None, Some(0)));
    check_cors(&r);
    let p = check_poll(&r);
    c.get(&poll_target(&["a"], Some(&p.cursor), Some(60)));
    s.wait_parked(1);
    s.publish("a", "1");
    let r = c.read_response();
    check_cors(&r);
    assert_eq!(check_poll(&r).c, 1);
    // An expired hold.
    let r = c.request(&poll_target(&["a"], None, Some(1)));
    check_cors(&r);
    // 405 on /pns/poll keeps alive and carries CORS.
    c.send("POST /pns/poll HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_response();
    check_error(&r, 405);
    check_cors(&r);
    // 400 on /pns/poll.
    let r = c.request("/pns/poll?hold=0");
    check_error(&r, 400);
    check_cors(&r);
    c.expect_closed();
    // 400 for a bad cursor.
    let mut c = s.http();
    let r = c.request("/pns/poll?channel=a&cursor=bogus");
    check_error(&r, 400);
    check_cors(&r);
}

#[test]
fn cors_headers_on_every_answer_of_the_server() {
    // Issue 8: a page must see the JSON error, not status 0, whatever the error and path.
    let s = Server::start(&[
        "--threads",
        "1",
        "--cors-origin",
        ORIGIN,
        "--head-timeout",
        "1",
        "--max-connections",
        "2",
    ]);
    let mut c = s.http();
    let r = c.request("/pns/health");
    assert_eq!(r.status, 200);
    check_cors(&r);
    // 404 on a mistyped path, keep-alive.
    let r = c.request("/pns/pol?channel=a");
    check_error(&r, 404);
    check_cors(&r);
    // 405 on /pns/health.
    c.send("DELETE /pns/health HTTP/1.1\r\n\r\n");
    let r = c.read_response();
    check_error(&r, 405);
    check_cors(&r);
    // 400 on a malformed head (closes).
    c.send("GARBAGE\r\n\r\n");
    let r = c.read_response();
    check_error(&r, 400);
    check_cors(&r);
    c.expect_closed();
    // 431.
    let mut c = s.http();
    c.send(format!(
        "GET /pns/health HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(9000)
    ));
    let r = c.read_response();
    check_error(&r, 431);
    check_cors(&r);
    c.expect_closed();
    s.wait_stat("connections", 0);
    // 408 (head deadline of 1 s).
    let mut c = s.http();
    c.send("GET /pns/health HTTP/1.1\r\n");
    let r = c.read_response();
    check_error(&r, 408);
    check_cors(&r);
    c.expect_closed();
    s.wait_stat("connections", 0);
    // 503 over capacity: two held, the third is refused.
    let mut a = s.http();
    assert_eq!(a.request("/pns/health").status, 200);
    let mut b = s.http();
    assert_eq!(b.request("/pns/health").status, 200);
    let mut c = s.http();
    let r = c.read_response_until_close();
    check_error(&r, 503);
    check_cors(&r);
}

#[test]
fn draining_503_carries_cors() {
    let mut s = Server::start(&["--threads", "1", "--cors-origin", ORIGIN]);
    let mut c = s.http();
    // A head begun but not complete when the drain starts is answered 503. It comes in one
    // write behind a complete request, so once that is answered the server holds the rest.
    c.send("GET /pns/health HTTP/1.1\r\n\r\nGET /pns/health HTTP/1.1\r\n");
    assert_eq!(c.read_response().status, 200);
    s.signal(libc::SIGTERM);
    let r = c.read_response_until_close();
    check_error(&r, 503);
    check_cors(&r);
    assert!(s.wait_exit(Duration::from_secs(6)).is_some());
}

#[test]
fn error_bodies_have_errorcode_and_message() {
    // check_error checks the shape; here one of each status this server can produce
    // without tokens or load, on fresh connections.
    let s = Server::start(&["--threads", "1"]);
    let cases: [(&str, u16); 6] = [
        ("GET /pns/poll HTTP/1.1\r\n\r\n", 400),
        ("GET /pns/poll?channel=a&hold=x HTTP/1.1\r\n\r\n", 400),
        ("GET /pns/poll?channel=a&cursor=zz HTTP/1.1\r\n\r\n", 400),
        ("GET /missing HTTP/1.1\r\n\r\n", 404),
        (
            "POST /pns/health HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        ("BROKEN\r\n\r\n", 400),
    ];
    let mut codes = Vec::new();
    for (req, status) in cases {
        let mut c = s.http();
        c.send(req);
        codes.push(check_error(&c.read_response(), status));
    }
    // Different statuses are told apart by their codes too (400 vs 404 vs 405).
    assert_ne!(codes[0], codes[3]);
    assert_ne!(codes[3], codes[4]);
    assert_ne!(codes[0], codes[4]);
}

#[test]
fn kept_alive_after_404_and_405_closed_after_400() {
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    check_error(&c.request("/x"), 404);
    c.send("POST /pns/poll HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    check_error(&c.read_response(), 405);
    check_poll(&c.request(&poll_target(&["a"], None, Some(0))));
    check_error(&c.request("/pns/poll?channel=bad%20name"), 400);
    c.expect_closed();
}

/// The short head deadline of the fast deadline tests (`--head-timeout`).
const SHORT_HEAD_SECS: u64 = 2;

#[test]
fn head_deadline_is_408_and_idle_keep_alive_is_not() {
    // All four cases run at once against a server with a 2 s head deadline (the contract's
    // 10 s is checked in real time by `a_silent_connection_is_408_after_the_default_10_s`).
    let head = Duration::from_secs(SHORT_HEAD_SECS);
    let s = Server::start(&[
        "--threads",
        "2",
        "--head-timeout",
        &SHORT_HEAD_SECS.to_string(),
    ]);
    let addr = s.addr;
    let silent = thread::spawn(move || {
        // Nothing sent at all: the deadline after accept.
        let mut c = HttpConn::connect(addr);
        let r = c.read_response();
        check_error(&r, 408);
        c.expect_closed();
    });
    let partial = thread::spawn(move || {
        let mut c = HttpConn::connect(addr);
        c.send("GET /pns/health HTTP/1.1\r\nHost: t\r\n");
        let r = c.read_response();
        check_error(&r, 408);
        c.expect_closed();
    });
    let later = thread::spawn(move || {
        // A first request, then a later one that never completes.
        let mut c = HttpConn::connect(addr);
        assert_eq!(c.request("/pns/health").status, 200);
        // Idle first: the deadline runs from the later request's first byte, not from the
        // last answer (so nothing may arrive in the 0.9 deadline after that byte, 1.5
        // deadlines after the answer).
        thread::sleep(head * 6 / 10);
        c.send("GET /pns/heal");
        assert!(
            c.quiet_for(head * 9 / 10),
            "408 counted from the previous answer, not from the new request's first byte"
        );
        let r = c.read_response();
        check_error(&r, 408);
        c.expect_closed();
    });
    let idle = thread::spawn(move || {
        // After a complete exchange, an idle keep-alive connection is not subject to the
        // header deadline (its idle limit is 75 s).
        let mut c = HttpConn::connect(addr);
        assert_eq!(c.request("/pns/health").status, 200);
        assert!(
            c.quiet_for(head * 13 / 10),
            "idle keep-alive connection was answered or closed"
        );
        assert_eq!(c.request("/pns/health").status, 200);
    });
    for h in [silent, partial, later, idle] {
        h.join().expect("case thread");
    }
}

// The real-time check of the contract's default head deadline is named to sort first: the test
// harness starts tests in name order, as many at once as there are cores, so every other test
// of this file runs beside it.

#[test]
fn a_silent_connection_is_408_after_the_default_10_s() {
    // The contract's default, once, in real time: a silent connection is answered 408.
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    assert!(c.quiet_for(Duration::from_secs(8)), "408 before 10 s");
    let r = c.read_response();
    check_error(&r, 408);
    c.expect_closed();
}

#[test]
fn half_close_after_complete_requests_still_gets_the_answers() {
    // `printf 'GET ...' | nc -N`: the requests are complete, then the client half-closes.
    let s = Server::start(&["--threads", "1"]);
    let mut c = s.http();
    let mut batch = get_request(&poll_target(&["a"], None, Some(0)));
    batch.push_str(&get_request("/pns/health"));
    c.send(&batch);
    c.shutdown_write();
    check_poll(&c.read_response());
    assert_eq!(c.read_response().status, 200);
    c.expect_closed();
}

#[test]
fn parked_client_that_hangs_up_is_forgotten() {
    let s = Server::start(&["--threads", "2"]);
    let mut conns: Vec<HttpConn> = (0..4).map(|_| s.http()).collect();
    for c in &mut conns {
        c.get(&poll_target(&["a"], None, Some(120)));
    }
    s.wait_parked(4);
    assert_eq!(s.stats()["connections"], 4);
    // Two hang up, one half-closes.
    let half = conns.pop().expect("conn");
    half.shutdown_write();
    drop(conns.pop());
    drop(conns.pop());
    s.wait_parked(1);
    s.wait_stat("connections", 1);
    // The survivor still gets its message; the server did not trip over the dead ones.
    let id = s.publish("a", "1");
    assert_eq!(check_poll(&conns[0].read_response()).ids(), vec![id]);
    drop(half);
    assert_eq!(s.stats()["delivered"], 1);
}

#[test]
fn over_max_connections_is_503_with_retry_after() {
    let s = Server::start(&["--threads", "2", "--max-connections", "3"]);
    let mut held: Vec<HttpConn> = (0..3).map(|_| s.http()).collect();
    for c in &mut held {
        assert_eq!(c.request("/pns/health").status, 200);
    }
    s.wait_stat("connections", 3);
    let mut over = s.http();
    over.get("/pns/health");
    let r = over.read_response();
    check_error(&r, 503);
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    over.expect_closed();
    // The held ones are fine; after one leaves, a new connection is served.
    assert_eq!(held[0].request("/pns/health").status, 200);
    drop(held.pop());
    s.wait_stat("connections", 2);
    let mut fresh = s.http();
    assert_eq!(fresh.request("/pns/health").status, 200);
}

#[test]
fn refused_clients_whose_request_is_already_sent_read_their_503() {
    // A client over the limit that sent its request before the server took the connection:
    // closing with that request unread would send a reset, and the client could lose the 503
    // (a browser or proxy then reports a reset). The server shuts its side and reads first.
    let s = Server::start(&["--threads", "1", "--max-connections", "1"]);
    let mut held = s.http();
    assert_eq!(held.request("/pns/health").status, 200);
    s.wait_stat("connections", 1);
    let mut over: Vec<HttpConn> = (0..20)
        .map(|_| {
            let mut c = s.http();
            c.get("/pns/health");
            c
        })
        .collect();
    for c in &mut over {
        let r = c.read_response();
        check_error(&r, 503);
        c.expect_closed();
    }
    assert_eq!(held.request("/pns/health").status, 200);
}

#[test]
fn clients_hanging_up_mid_request_are_cleaned_up() {
    // A half-sent head whose client left is dropped at the latest by the head deadline: a
    // short one keeps the test quick.
    let s = Server::start(&["--threads", "2", "--head-timeout", "1"]);
    for partial in [
        "G",
        "GET /pns/poll?channel=a",
        "GET /pns/poll?channel=a HTTP/1.1\r\nHost: t\r\n",
        "POST /nope HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
    ] {
        let mut c = s.http();
        c.send(partial);
        drop(c);
    }
    // One that reads nothing of its answer either.
    let mut c = s.http();
    c.send(get_request("/pns/health").repeat(50));
    drop(c);
    s.wait_stat("connections", 0);
    assert_eq!(s.http().request("/pns/health").status, 200);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = Server::start(&["--threads", "1", "--idle-timeout", "3"]);
    let mut c = s.http();
    assert_eq!(c.request("/pns/health").status, 200);
    assert!(c.quiet_for(Duration::from_secs(1)), "closed too early");
    c.expect_closed();
    s.wait_stat("connections", 0);
    // A connection that keeps asking is not idle: requests 1.5 s apart keep it open.
    let mut c = s.http();
    for _ in 0..3 {
        assert_eq!(c.request("/pns/health").status, 200);
        thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(c.request("/pns/health").status, 200);
}

#[test]
fn large_answers_are_written_completely() {
    // 100 messages of ~60 KB: an answer of ~6 MB, far beyond socket buffers, so the server
    // must finish it across many partial writes; the same for 8 parked pollers at once, with
    // a pipelined request behind each.
    let s = Server::start(&["--threads", "2", "--buffer", "200"]);
    let c0 = s.cursor_now("big");
    let mut p = s.publisher();
    let chunk = "y".repeat(60_000);
    let ids: Vec<String> = (0..100)
        .map(|i| p.publish("big", &format!("\"{i}:{chunk}\"")))
        .collect();
    let mut c = s.http();
    let mut batch = get_request(&poll_target(&["big"], Some(&c0), Some(0)));
    batch.push_str(&get_request("/pns/health"));
    c.send(&batch);
    let a = check_poll(&c.read_response());
    assert_eq!(a.ids(), ids);
    for (i, m) in a.msgs.iter().enumerate() {
        assert_eq!(m["data"].as_str(), Some(format!("{i}:{chunk}").as_str()));
    }
    assert_eq!(c.read_response().status, 200);
    // Fan-out of one big message to parked pollers.
    let last = ids.last().expect("ids").clone();
    let mut conns: Vec<HttpConn> = (0..8).map(|_| s.http()).collect();
    for c in &mut conns {
        let mut batch = get_request(&poll_target(&["big"], Some(&last), Some(60)));
        batch.push_str(&get_request("/pns/health"));
        c.send(&batch);
    }
    s.wait_parked(8);
    // Near the 65,536-byte publish line limit.
    let big = "z".repeat(65_000);
    let id = p.publish("big", &format!("\"{big}\""));
    for c in &mut conns {
        let a = check_poll(&c.read_response());
        assert_eq!(a.ids(), vec![id.clone()]);
        assert_eq!(a.msgs[0]["data"].as_str().map(str::len), Some(65_000));
        assert_eq!(c.read_response().status, 200);
    }
}

#[test]
fn head_answer_has_no_body_and_keeps_the_connection_in_step() {
    // Found by fuzzing: a body after a HEAD answer would be read as the next response.
    let s = Server::start(&["--threads", "1"]);
    let (head, rest, text) = head_then_health(&s, "/pns/poll?channel=a");
    assert!(head.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(head.contains("Allow: GET, OPTIONS"), "{text}");
    assert!(
        rest.starts_with("HTTP/1.1 200 "),
        "bytes between the answers: {text}"
    );
    assert!(rest.ends_with("{\"ok\":true}"), "{text}");
}
