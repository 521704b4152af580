//! Nanoseconds per channel append (publish) and per read of a poll's answer from the store.
//!
//! Run with `cargo bench --bench store`. Plain `std::time::Instant` timing, no harness: each
//! case runs several rounds and the best is printed (the machine is shared and noisy). This
//! measures; it asserts nothing about speed.

use std::hint::black_box;
use std::time::Instant;

use pnsd::line::{parse_line, Request};
use pnsd::poll::{answer, MAX_PER_ANSWER};
use pnsd::store::Store;

/// Timed rounds per case; the best is reported.
const ROUNDS: u32 = 7;
/// Messages kept per channel: pnsd's default `--buffer`.
const BUFFER: usize = 64;
/// Message lifetime: pnsd's default `--message-ttl` (600 s); nothing expires during a run.
const TTL_MS: u64 = 600_000;
/// A typical small notification payload.
const DATA: &str = r#"{"subject":"New mail from Alice","folder":"INBOX","unread":12}"#;

/// Runs `op(0..per_round)` once to warm up, then `ROUNDS` times, and prints the best ns per op.
fn best(name: &str, per_round: u32, mut op: impl FnMut(usize)) {
    let mut round = || {
        for i in 0..per_round as usize {
            op(i);
        }
    };
    round();
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        round();
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(per_round));
    }
    println!("{name:<44} {best:>9.1} ns/op");
}

fn names(n: usize) -> Vec<Box<[Box<str>]>> {
    (0..n)
        .map(|i| vec![Box::<str>::from(format!("user:{i}"))].into_boxed_slice())
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; any other argument is ignored too.

    // Append to one hot channel (ring full: every append evicts).
    let one = names(1);
    let mut s = Store::new(1, BUFFER, TTL_MS);
    const N: u32 = 200_000;
    best("publish, one channel, ring full", N, |_| {
        black_box(s.publish(one[0].clone(), Some(70), DATA, 0));
    });

    // Append spread over 10,000 channels (hash lookups, cold rings).
    let many = names(10_000);
    let mut s = Store::new(1, BUFFER, TTL_MS);
    best("publish, 10,000 channels round-robin", N, |i| {
        black_box(s.publish(many[i % many.len()].clone(), None, DATA, 0));
    });

    // Append to three channels at once.
    let three: Box<[Box<str>]> = vec!["a".into(), "b".into(), "c".into()].into_boxed_slice();
    let mut s = Store::new(1, BUFFER, TTL_MS);
    best("publish, three channels per message", N, |_| {
        black_box(s.publish(three.clone(), None, DATA, 0));
    });

    // Reads: a poll one message behind, and one 64 behind, on one channel; a 3-channel poll.
    let mut s = Store::new(1, BUFFER, TTL_MS);
    for _ in 0..BUFFER {
        s.publish(one[0].clone(), None, DATA, 0);
    }
    let chan = ["user:0"];
    let last = s.last_seq();
    const R: u32 = 200_000;
    best("read, 1 message after the cursor", R, |_| {
        black_box(s.read(&chan, last - 1, 0, MAX_PER_ANSWER));
    });
    best("read, 64 messages after the cursor", R / 10, |_| {
        black_box(s.read(&chan, last - 64, 0, MAX_PER_ANSWER));
    });
    best("read, nothing after the cursor (park)", R, |_| {
        black_box(s.read(&chan, last, 0, MAX_PER_ANSWER));
    });
    let mut s3 = Store::new(1, BUFFER, TTL_MS);
    for _ in 0..BUFFER {
        s3.publish(three.clone(), None, DATA, 0);
    }
    let abc = ["a", "b", "c"];
    let last3 = s3.last_seq();
    best("read, 3 channels, 8 shared messages after", R / 10, |_| {
        black_box(s3.read(&abc, last3 - 8, 0, MAX_PER_ANSWER));
    });

    // Encoding a whole HTTP answer of one message (done once per fan-out).
    let found = s.read(&chan, last - 1, 0, MAX_PER_ANSWER);
    best("encode answer, 1 message", R, |_| {
        black_box(answer(&found, &chan, 1, false, None));
    });

    wide_publish();
}

/// Issue 8.6: one line naming `WIDE` channels (about as many short names as a 64 KiB line
/// holds), parsed (repeats removed) and appended. Both were quadratic once (~170 ms).
fn wide_publish() {
    const WIDE: usize = 8000;
    let names: Vec<String> = (0..WIDE).map(|i| format!("c{i}")).collect();
    let line = format!(
        "{{\"channels\":[\"{}\"],\"data\":{DATA}}}",
        names.join("\",\"")
    );
    best("parse a line naming 8,000 channels", 20, |_| {
        black_box(parse_line(line.as_bytes()).is_ok());
    });
    let Ok(Request::Publish(p)) = parse_line(line.as_bytes()) else {
        panic!("the wide line parses");
    };
    let mut s = Store::new(1, BUFFER, TTL_MS);
    best("publish, one message on 8,000 channels", 20, |_| {
        black_box(s.publish(p.channels.clone(), None, &p.data, 0));
    });
}
