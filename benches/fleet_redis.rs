//! Fleet mode against a real Redis: publish lines per second through the publish script
//! (`EVALSHA`, pipelined batches, replies awaited), the same feed reading them back, raw
//! `XADD` for comparison, and Redis memory per retained entry (with and without an
//! idempotency key).
//!
//! Run with `cargo bench --bench fleet_redis`. It starts its own `redis-server` (from PATH, on
//! a Unix socket, no persistence) and says so when it cannot. Plain `Instant` timing, best of
//! `ROUNDS`; it measures and asserts nothing about speed.

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pnsd::fleet::{
    self, Applied, Entry, FeedSink, FleetOptions, FleetPublisher, PublishLine, RedisUrl,
};
use redis_server::RedisServer;

/// Timed rounds per case; the best is reported (the machine is shared and noisy).
const ROUNDS: usize = 3;
/// Lines per round of a throughput case.
const LINES: usize = 100_000;
/// Entries retained for the memory figure.
const MEM_ENTRIES: usize = 100_000;
/// A typical small notification payload (the store bench's).
const DATA: &str = r#"{"subject":"New mail from Alice","folder":"INBOX","unread":12}"#;
/// Long enough that the feed never skips an entry as too old.
const TTL_MS: u64 = 3_600_000;
/// Bound on waiting for the feed to catch up.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Counts what the feed applies.
#[derive(Default)]
struct Count(AtomicU64);

impl FeedSink for Count {
    fn epoch(&self, _: u64, _: u64) {}
    fn apply(&self, entries: &[Entry]) {
        self.0.fetch_add(entries.len() as u64, Ordering::Relaxed);
    }
    fn gap(&self, _: std::ops::RangeInclusive<u64>) {}
    fn link(&self, _: bool) {}
}

fn line(i: usize, keyed: bool) -> PublishLine {
    PublishLine {
        channels: vec![Box::from(format!("user:{}", i % 10_000))].into(),
        kind: Some(70),
        data: DATA.into(),
        key: keyed.then(|| format!("pub-7-{i:012}").into()),
    }
}

fn used_memory(redis: &RedisServer) -> u64 {
    let info: String = redis.cmd(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One node (feed + publisher) on a fresh prefix; publishes `n` lines in batches of `batch`;
/// returns (publish seconds, seconds until the feed applied the last one).
fn run(opts: &FleetOptions, n: usize, batch: usize, keyed: bool, base: usize) -> (f64, f64) {
    let count = Arc::new(Count::default());
    let (state, feed) = fleet::spawn(opts.clone(), TTL_MS, count.clone()).expect("feed");
    while !state.connected() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut publisher = FleetPublisher::new(opts.clone(), state.clone());
    let lines: Vec<PublishLine> = (base..base + n).map(|i| line(i, keyed)).collect();
    let start = Instant::now();
    let mut last = (0, 0);
    for chunk in lines.chunks(batch) {
        for r in publisher.publish(chunk) {
            let p = r.expect("bench publish accepted");
            last = (p.epoch, p.seq);
        }
    }
    let published = start.elapsed().as_secs_f64();
    let applied = state.wait_applied(last.0, last.1, CATCH_UP);
    let fed = start.elapsed().as_secs_f64();
    assert_eq!(applied, Applied::Yes, "the feed caught up");
    state.stop();
    let _ = feed.join();
    (published, fed)
}

fn main() {
    let Some(redis) = RedisServer::start("bench fleet_redis") else {
        return;
    };
    let version: String = redis.cmd(&["INFO", "server"]);
    let version = version
        .lines()
        .find(|l| l.starts_with("redis_version:"))
        .unwrap_or("redis_version:?")
        .to_string();
    println!(
        "{version}, Unix socket, no persistence; data {} bytes",
        DATA.len()
    );
    let url = RedisUrl::parse(&redis.url()).expect("url");

    for (batch, keyed, n) in [
        (1, false, LINES / 10),
        (100, false, LINES),
        (1000, false, LINES),
        (100, true, LINES),
    ] {
        let mut best = (f64::INFINITY, f64::INFINITY);
        for round in 0..ROUNDS {
            let _: () = redis.cmd(&["FLUSHALL"]);
            let mut opts = FleetOptions::new(url.clone());
            opts.prefix = format!("bench{round}");
            let (p, f) = run(&opts, n, batch, keyed, round * n);
            best = (best.0.min(p), best.1.min(f));
        }
        println!(
            "script publish, batch {batch:>4}{}: {:>9.0} lines/s published, {:>9.0} lines/s through the feed",
            if keyed { ", with key" } else { "          " },
            n as f64 / best.0,
            n as f64 / best.1
        );
    }

    // Raw XADD pipelined (no script, no counter): what one stream takes at most.
    let mut con = redis.connection();
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let _: () = redis.cmd(&["FLUSHALL"]);
        let start = Instant::now();
        for chunk in 0..LINES / 100 {
            let mut p = redis::pipe();
            for i in 0..100 {
                p.cmd("XADD")
                    .arg("raw:log")
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(1_000_000)
                    .arg("*")
                    .arg("c")
                    .arg(format!("user:{}", (chunk * 100 + i) % 10_000))
                    .arg("m")
                    .arg(1_700_000_000_000u64)
                    .arg("t")
                    .arg(70)
                    .arg("d")
                    .arg(DATA)
                    .ignore();
            }
            let _: () = p.query(&mut con).expect("raw XADD");
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "raw XADD, batch  100          : {:>9.0} lines/s",
        LINES as f64 / best
    );

    // Memory per retained entry.
    for keyed in [false, true] {
        let _: () = redis.cmd(&["FLUSHALL"]);
        let _: () = redis.cmd(&["MEMORY", "PURGE"]);
        let before = used_memory(&redis);
        let opts = FleetOptions::new(url.clone());
        run(&opts, MEM_ENTRIES, 1000, keyed, 0);
        let after = used_memory(&redis);
        let stream: u64 = redis.cmd(&["MEMORY", "USAGE", "pnsd:log", "SAMPLES", "0"]);
        println!(
            "memory, {MEM_ENTRIES} entries{}: {:.0} bytes/entry used_memory ({:.0} of it the stream, MEMORY USAGE)",
            if keyed { " with keys" } else { "" },
            (after - before) as f64 / MEM_ENTRIES as f64,
            stream as f64 / MEM_ENTRIES as f64
        );
    }
}
