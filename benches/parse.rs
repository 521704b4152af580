//! Nanoseconds per call of the request-head and poll-query parsers on a typical poll.
//!
//! Run with `cargo bench --bench parse`. Plain `std::time::Instant` timing, no harness: each
//! case is warmed up, then timed over several rounds of a fixed iteration count, and the best
//! round is printed (the machine is shared and noisy; the minimum is the least disturbed run).
//! This measures; it asserts nothing about speed.

use std::hint::black_box;
use std::time::Instant;

use pnsd::http::{may_be_complete, parse_head};
use pnsd::query::parse_poll_query;

/// A browser-like long poll: 10 headers, about 500 bytes.
const POLL: &[u8] = b"GET /pns/poll?channel=user%3A42&channel=news&cursor=1.AAAAAAAAAAE&hold=30&comefrom=100 HTTP/1.1\r\n\
Host: push.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjaGFubmVscyI6WyJ1c2VyOjQyIl0sImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJl\r\n\
If-None-Match: \"1.AAAAAAAAAAE\"\r\n\
Origin: https://app.example.com\r\n\
Referer: https://app.example.com/inbox\r\n\
Connection: keep-alive\r\n\
\r\n";

/// The query of the request above.
const QUERY: &str = "channel=user%3A42&channel=news&cursor=1.AAAAAAAAAAE&hold=30&comefrom=100";

/// A minimal poll, as a script or load generator sends it.
const SMALL: &[u8] = b"GET /pns/poll?channel=a&hold=30 HTTP/1.1\r\nHost: x\r\n\r\n";

/// Iterations per timed round: enough for a round to last milliseconds at ~1 us per call.
const ITERS: u32 = 100_000;
/// Timed rounds per case; the best is reported.
const ROUNDS: u32 = 7;

fn bench(name: &str, bytes: usize, mut f: impl FnMut()) {
    for _ in 0..ITERS / 10 {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..ITERS {
            f();
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(ITERS);
        best = best.min(ns);
    }
    let mbps = if bytes > 0 {
        bytes as f64 / best * 1e3
    } else {
        0.0
    };
    println!("{name:<32} {best:>9.1} ns/op  ({bytes} bytes, {mbps:.0} MB/s)");
}

fn main() {
    // Sanity: the inputs are what they claim to be.
    let head = parse_head(POLL);
    assert!(matches!(&head, Ok(Some(h)) if h.query == QUERY && h.head_len == POLL.len()));
    assert!(parse_poll_query(QUERY).is_ok_and(|q| q.channels.len() == 2));

    bench("parse_head (typical poll)", POLL.len(), || {
        let _ = black_box(parse_head(black_box(POLL)));
    });
    bench("parse_head (minimal poll)", SMALL.len(), || {
        let _ = black_box(parse_head(black_box(SMALL)));
    });
    bench("parse_head (incomplete, half)", POLL.len() / 2, || {
        let _ = black_box(parse_head(black_box(&POLL[..POLL.len() / 2])));
    });
    bench("may_be_complete (whole head)", POLL.len(), || {
        black_box(may_be_complete(black_box(POLL), black_box(0)));
    });
    bench("parse_poll_query (typical)", QUERY.len(), || {
        let _ = black_box(parse_poll_query(black_box(QUERY)));
    });
    bench("head + query (typical poll)", POLL.len(), || {
        if let Ok(Some(h)) = parse_head(black_box(POLL)) {
            let _ = black_box(parse_poll_query(&h.query));
        }
    });
}
