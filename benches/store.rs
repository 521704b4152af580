//! Nanoseconds per channel append (publish) and per read of a poll's answer from the store;
//! the cost of one expiry slice with a million channels; bytes per channel held and per parked
//! poll in a reactor's `Waiters`, counted by a counting global allocator (requested bytes, so
//! exact and independent of the allocator's own rounding).
//!
//! Run with `cargo bench --bench store`. Plain `std::time::Instant` timing, no harness: each
//! case runs several rounds and the best is printed (the machine is shared and noisy). This
//! measures; it asserts nothing about speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pnsd::answer::encode as answer;
use pnsd::line::{parse_line, Request};
use pnsd::poll::MAX_PER_ANSWER;
use pnsd::store::Store;
use pnsd::waiters::Waiters;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Channels of the large-store cases: `--max-channels`' default.
const MANY: usize = 1_000_000;
/// Expired entries per sweep slice: publish.rs's `SWEEP_SLICE`.
const SLICE: usize = 256;
/// Parked polls of the waiters case, and their channels: the worst a poll may ask for (16 unique
/// channels of 128 bytes).
const POLLS: usize = 15_000;
const POLL_CHANNELS: usize = 16;
const NAME_LEN: usize = 128;

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
    let mut s = Store::new(1, BUFFER, TTL_MS, 1 << 20);
    const N: u32 = 200_000;
    best("publish, one channel, ring full", N, |_| {
        black_box(s.publish(one[0].clone(), Some(70), DATA, 0).ok());
    });

    // Append spread over 10,000 channels (hash lookups, cold rings).
    let many = names(10_000);
    let mut s = Store::new(1, BUFFER, TTL_MS, 1 << 20);
    best("publish, 10,000 channels round-robin", N, |i| {
        black_box(s.publish(many[i % many.len()].clone(), None, DATA, 0).ok());
    });

    // Append to three channels at once.
    let three: Box<[Box<str>]> = vec!["a".into(), "b".into(), "c".into()].into_boxed_slice();
    let mut s = Store::new(1, BUFFER, TTL_MS, 1 << 20);
    best("publish, three channels per message", N, |_| {
        black_box(s.publish(three.clone(), None, DATA, 0).ok());
    });

    // Reads: a poll one message behind, and one 64 behind, on one channel; a 3-channel poll.
    let mut s = Store::new(1, BUFFER, TTL_MS, 1 << 20);
    for _ in 0..BUFFER {
        s.publish(one[0].clone(), None, DATA, 0).ok();
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
    let mut s3 = Store::new(1, BUFFER, TTL_MS, 1 << 20);
    for _ in 0..BUFFER {
        s3.publish(three.clone(), None, DATA, 0).ok();
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
    drop((s, s3, found));
    wide_publish();

    big_store("glibc defaults");
    // Without fastbins, freed small chunks coalesce as they are freed, instead of all at once in
    // the first large allocation after a mass free (which then takes 20-170 ms, measured).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tuning; no allocation is in flight.
        unsafe { libc::mallopt(libc::M_MXFAST, 0) };
        big_store("M_MXFAST=0");
    }
    parked_polls();
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
    let mut s = Store::new(1, BUFFER, TTL_MS, MANY);
    best("publish, one message on 8,000 channels", 20, |_| {
        black_box(s.publish(p.channels.clone(), None, &p.data, 0).ok());
    });
}

/// A million channels of one message each: bytes per channel, publish cost at that size, and
/// the cost of each expiry slice once they all expired; `allocator` names the malloc tuning.
fn big_store(allocator: &str) {
    println!("-- {allocator}");
    let names: Vec<Box<str>> = (0..MANY)
        .map(|i| format!("user:{i}").into_boxed_str())
        .collect();
    let before = live();
    let mut s = Store::new(1, BUFFER, TTL_MS, MANY);
    let start = Instant::now();
    for n in &names {
        black_box(
            s.publish(vec![n.clone()].into_boxed_slice(), None, DATA, 0)
                .ok(),
        );
    }
    let took = start.elapsed();
    let held = live() - before;
    println!(
        "{:<44} {:>9.1} ns/op",
        "publish, creating 1,000,000 channels",
        took.as_nanos() as f64 / MANY as f64
    );
    println!(
        "{:<44} {:>9.1} bytes (message of {} bytes data included)",
        "store, per channel of one message",
        held as f64 / MANY as f64,
        DATA.len()
    );
    let mut slices: Vec<Duration> = Vec::new();
    loop {
        let t = Instant::now();
        let more = s.expire(TTL_MS, SLICE);
        slices.push(t.elapsed());
        if !more {
            break;
        }
    }
    let mean = slices.iter().sum::<Duration>() / slices.len() as u32;
    slices.sort_unstable();
    let at = |q: f64| slices[((slices.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{:<44} {:>9.1} us/slice (median {:.1}, p99 {:.1}, worst {:.1} us; {} slices)",
        "expire 1,000,000 channels, 256 per slice",
        mean.as_secs_f64() * 1e6,
        at(0.5),
        at(0.99),
        at(1.0),
        slices.len()
    );
    // A retired index is freed by a thread of its own: give it time.
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{:<44} {:>9} bytes",
        "store, left after everything expired",
        live() - before
    );
    drop(s);
}

/// `POLLS` polls of 16 unique 128-byte channels each parked in one `Waiters`, then all unparked.
fn parked_polls() {
    let names: Vec<Vec<String>> = (0..POLLS)
        .map(|p| {
            (0..POLL_CHANNELS)
                .map(|c| format!("{:0>width$}", p * POLL_CHANNELS + c, width = NAME_LEN))
                .collect()
        })
        .collect();
    let before = live();
    let mut w = Waiters::with_capacity(0);
    let firsts: Vec<u32> = names
        .iter()
        .enumerate()
        .map(|(i, cs)| w.park(i as u32, cs))
        .collect();
    let held = live() - before;
    println!(
        "{:<44} {:>9.1} bytes ({} of names)",
        "waiters, per poll on 16 unique 128 B channels",
        held as f64 / POLLS as f64,
        POLL_CHANNELS * NAME_LEN
    );
    for f in firsts {
        w.unpark(f);
    }
    println!(
        "{:<44} {:>9} bytes",
        "waiters, left after every poll unparked",
        live() - before
    );
}
