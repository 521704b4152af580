//! Soak harness for pnsd (issue 3, point 6): many subscribers that poll, hang up and come back
//! while publishers send at a steady rate; at the end every subscriber's stream is checked
//! against every publish ack, and the server's RSS after warm-up against its RSS at the end.
//!
//! Run: `cargo bench --bench soak -- --minutes 10` (with no option it prints its usage and
//! exits 0, so a plain `cargo bench` stays green). It starts the release `pnsd` built by cargo
//! for this bench (`--server PATH` to use another) as
//! `pnsd --threads 2 --listen 127.0.0.1:0 --publish-socket TMP/soak.sock --buffer 64`.
//!
//! What runs, all on std threads (no async runtime):
//! - publisher threads, one Unix socket connection each, pipeline NDJSON publishes at a steady
//!   combined rate to channels drawn from a skewed distribution (a few quiet channels get a
//!   message every ~10 s, so holds expire), a quarter of them to 2 or 3 channels at once;
//!   every ack id is recorded with its message;
//! - subscriber threads, each a mio loop over its share of subscribers; a subscriber waits on
//!   1-3 channels with a cursor on a keep-alive connection (bound to a source address among
//!   127.0.0.2-254 so closed connections in TIME_WAIT never exhaust ephemeral ports), hangs up
//!   at random (mostly while parked, sometimes between polls, sometimes with a reset) and comes
//!   back on a new connection with its last cursor, after a short pause or after a long one
//!   that outlives its channels' buffers, so it must be told `"reset":true`. Polls vary the
//!   way clients do: `hold` 0-25 s, the cursor as `cursor=` or `If-None-Match` (`W/` or not),
//!   channel names percent-encoded or not, a repeated channel, `comefrom=100`, and now and
//!   then `Connection: close` (`--no-connection-close` turns that off).
//!
//! Invariants the harness relies on and checks:
//! - A message is identified by its data `[publisher, n, [channels]]`; its channels and `type`
//!   are a pure function of `(seed, publisher, n)`, so a subscriber checks every message's
//!   content, channel field and type on arrival, and its id against the publisher's ack.
//! - Per subscriber, message positions (the cursor `seq`, decoded with `pnsd::cursor`: the
//!   harness is white-box here, as cursors are opaque to real clients) strictly increase over
//!   its whole life: nothing is repeated, nothing comes out of ack order.
//! - Every answer is a 200 with `Content-Type: application/json`, `Cache-Control: no-store`,
//!   an `ETag` equal to its cursor, `c` equal to the number of messages (at most 100), a
//!   non-empty answer's cursor equal to its last id, an empty one's never behind the poll's
//!   cursor, `reset` absent or true; a `Connection: close` poll is answered, then closed.
//! - At the end, publishers stop first, then every subscriber polls with `hold=0` until an
//!   empty answer; from its first cursor to that final cursor it must have received every
//!   message of its channels, except messages skipped by a reset answer; a skipped message is
//!   excused only if the same reset answer did not deliver an older message whose subscribed
//!   channels are a subset of its own (rings evict oldest first, so that would be a loss).
//! - The server's stats at the end: `published` equals the acks, `delivered` is at least the
//!   number of answers with messages the subscribers read. Its RSS (VmRSS) at the end is at
//!   most 10% above the sample after warm-up (60 s, or a quarter of a shorter run).
//! - Every wait is bounded: connects, answers (hold + grace), acks, the final drain and the
//!   server's exit after SIGTERM (5 s, contract section 6); the server gets SIGKILL if the
//!   harness dies first.
//!
//! Exit status: 0 when no violation was seen, 1 otherwise, 2 for a bad option.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;
use socket2::{Domain, SockRef, Socket, Type};

use pnsd::cursor;
use pnsd::xorshift::XorShift as Rng;

/// Issue 3 asks for a 10-minute soak.
const DEFAULT_MINUTES: f64 = 10.0;
/// About 2,000 subscribers: one socket each in both processes, far below the 20,000 open-file
/// limit, yet enough that fan-out, hang-ups and resets happen every second.
const DEFAULT_SUBSCRIBERS: usize = 2000;
/// Each subscriber holds at most one socket here and one in the server; both processes have a
/// hard limit of 20,000 open files, so 15,000 leaves room for everything else.
const MAX_SUBSCRIBERS: usize = 15_000;
/// 200 channels: ~15 subscribers per channel at the default population.
const DEFAULT_CHANNELS: usize = 200;
/// Channel ids are u16 in the harness's records.
const MAX_CHANNELS: usize = 10_000;
/// Combined publish rate, messages per second.
const DEFAULT_RATE: f64 = 2000.0;
/// A few publisher connections, so acks from several connections interleave in the global order.
const DEFAULT_PUBLISHERS: usize = 4;
/// The server's `--buffer`: its default (64). At the default rate every non-quiet channel gets
/// at least ~5 messages/s, so a 15 s absence overflows it and must end in a reset.
const DEFAULT_BUFFER: usize = 64;
/// The issue asks for 2 reactor threads.
const DEFAULT_SERVER_THREADS: usize = 2;
/// Subscriber threads of the harness: the machine has 2 cores, shared with the server.
const DEFAULT_CLIENT_THREADS: usize = 2;
/// RSS is first sampled after this warm-up (capped at a quarter of the run), when every
/// subscriber is connected and every channel buffer is full.
const DEFAULT_WARMUP: Duration = Duration::from_secs(60);
/// A shorter warm-up (runs under a minute) samples RSS before every channel buffer is full
/// (a non-quiet channel gets ≥ 5 messages/s at the defaults: 64 messages take ~13 s), when
/// RSS still grows by design; the RSS check is then skipped.
const MIN_CHECKED_WARMUP: Duration = Duration::from_secs(15);
/// The end RSS may exceed the warm-up RSS by at most this fraction (issue 3, point 6).
const RSS_TOLERANCE: f64 = 0.10;

/// The server prints its startup line at once; 10 s covers a cold start on a noisy machine.
const STARTUP_WAIT: Duration = Duration::from_secs(10);
/// Contract section 6: after SIGTERM the process exits 0 within 5 s.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// A poll not answered within its hold plus this grace is a violation. Generous: the harness
/// and the server share 2 noisy cores.
const ANSWER_GRACE: Duration = Duration::from_secs(30);
/// A TCP connect to loopback not finished within this is a violation.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Pause before retrying after an error (refused connect, non-200 answer).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Bound on the final drain (every subscriber polls until an empty answer).
const DRAIN_WAIT: Duration = Duration::from_secs(90);
/// Bound on waiting for one publish ack.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Subscribers are started over this span, so 2,000 connects do not hit the listen backlog at
/// once.
const START_SPREAD: Duration = Duration::from_secs(5);

/// Longest `hold` a subscriber asks for: below the server's `--max-hold` (120) and its 75 s
/// idle close, and long enough that holds on quiet channels expire.
const MAX_HOLD_SECS: u64 = 25;
/// Share of polls with `hold=0`: answered at once, often empty, racing the publishers.
const P_HOLD_ZERO: f64 = 0.05;
/// Share of polls sending the cursor as `If-None-Match` instead of `cursor=`.
const P_IF_NONE_MATCH: f64 = 0.10;
/// Share of polls that repeat a channel (a repeat counts once).
const P_REPEAT_CHANNEL: f64 = 0.02;
/// Share of polls sent with `Connection: close`.
const P_CONNECTION_CLOSE: f64 = 0.01;
/// Share of answers after which the subscriber hangs up instead of polling again (a
/// subscriber reads ~10 answers/s, so about one such hang-up per subscriber per minute).
const P_CLOSE_BETWEEN: f64 = 0.002;
/// Time on a connection before a random hang-up, uniform in this range (ms).
const HANGUP_AFTER_MS: (u64, u64) = (5_000, 35_000);
/// Share of hang-ups that are long absences.
const P_LONG_AWAY: f64 = 0.05;
/// A short absence, uniform in this range (ms).
const SHORT_AWAY_MS: (u64, u64) = (0, 2_000);
/// A long absence (ms): at ≥ 5 messages/s on a channel, 15 s overflows a 64-message buffer.
const LONG_AWAY_MS: (u64, u64) = (15_000, 45_000);
/// Share of hang-ups done with SO_LINGER 0 (the server sees a reset instead of a FIN).
const P_RESET_CLOSE: f64 = 0.2;

/// The server answers at most 100 messages per poll (contract section 2).
const MAX_PER_ANSWER: usize = 100;
/// An answer larger than this is a violation: 100 messages of the harness are ~10 KB.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Bytes asked of one `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Source addresses 127.0.0.2 ..= 127.0.0.254: 253 of them.
const SOURCE_ADDRS: u32 = 253;
/// Publishes one publisher may have sent but not yet seen acked.
const PUBLISH_WINDOW: usize = 1024;
/// Lines written in one `write` by a publisher that is behind schedule.
const MAX_BATCH: u64 = 256;
/// One in this many channels is quiet.
const QUIET_EVERY: usize = 20;
/// Messages per second on each quiet channel: holds there expire.
const QUIET_RATE: f64 = 0.1;
/// Mean channels per publish (70% one, 20% two, 10% three).
const MEAN_PUBLISH_CHANNELS: f64 = 1.4;
/// Interval of the sweep for overdue connects and polls; their bounds are seconds long.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Longest mio wait: flags (drain, abort) are noticed within this.
const LOOP_SLICE: Duration = Duration::from_millis(50);
/// Interval between RSS samples and progress lines of the monitor.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Examples printed per kind of violation; the rest are only counted.
const EXAMPLES_PER_GROUP: usize = 3;

fn main() {
    let code = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => run(&opts),
        Ok(None) => {
            println!("{USAGE}");
            0
        }
        Err(e) => {
            eprintln!("soak: {e}\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

const USAGE: &str = "\
soak: pnsd soak harness (issue 3, point 6); nothing runs without an option.
usage: cargo bench --bench soak -- --minutes M [options]
  --minutes M          run length, fractional allowed [10]
  --server PATH        pnsd binary [the release pnsd built by cargo]
  --subscribers N      subscriber population [2000, at most 15000]
  --channels N         channels [200]
  --rate R             publishes per second, all publishers [2000]
  --publishers N       publisher connections [4]
  --buffer N           the server's --buffer [64]
  --server-threads N   the server's --threads [2]
  --client-threads N   harness subscriber threads [2]
  --warmup SECS        RSS warm-up sample time [60, at most a quarter of the run]
  --seed N             random seed [from the clock; printed]
  --no-connection-close  never send a poll with `Connection: close` (to look past a server
                       that mishandles them)";

/// The harness's options.
#[derive(Debug, Clone)]
struct Opts {
    duration: Duration,
    server: PathBuf,
    subscribers: usize,
    channels: usize,
    rate: f64,
    publishers: usize,
    buffer: usize,
    server_threads: usize,
    client_threads: usize,
    warmup: Option<Duration>,
    seed: u64,
    /// Share of polls sent with `Connection: close`.
    p_close: f64,
}

/// `Ok(None)` when there is nothing to run (no option, only cargo's `--bench`, or `--help`).
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        duration: Duration::from_secs_f64(DEFAULT_MINUTES * 60.0),
        server: PathBuf::from(env!("CARGO_BIN_EXE_pnsd")),
        subscribers: DEFAULT_SUBSCRIBERS,
        channels: DEFAULT_CHANNELS,
        rate: DEFAULT_RATE,
        publishers: DEFAULT_PUBLISHERS,
        buffer: DEFAULT_BUFFER,
        server_threads: DEFAULT_SERVER_THREADS,
        client_threads: DEFAULT_CLIENT_THREADS,
        warmup: None,
        seed: seed_from_clock(),
        p_close: P_CONNECTION_CLOSE,
    };
    let mut any = false;
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a == "--bench" {
            continue;
        }
        if a == "--help" || a == "-h" {
            return Ok(None);
        }
        if a == "--no-connection-close" {
            o.p_close = 0.0;
            continue;
        }
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        any = true;
        match a.as_str() {
            "--minutes" => {
                let m: f64 = num(&a, &value()?)?;
                if !(m > 0.0 && m <= 24.0 * 60.0) {
                    return Err("--minutes must be in (0, 1440]".into());
                }
                o.duration = Duration::from_secs_f64(m * 60.0);
            }
            "--server" => o.server = PathBuf::from(value()?),
            "--subscribers" => o.subscribers = num(&a, &value()?)?,
            "--channels" => o.channels = num(&a, &value()?)?,
            "--rate" => o.rate = num(&a, &value()?)?,
            "--publishers" => o.publishers = num(&a, &value()?)?,
            "--buffer" => o.buffer = num(&a, &value()?)?,
            "--server-threads" => o.server_threads = num(&a, &value()?)?,
            "--client-threads" => o.client_threads = num(&a, &value()?)?,
            "--warmup" => {
                let w: f64 = num(&a, &value()?)?;
                if !(0.0..=86_400.0).contains(&w) {
                    return Err("--warmup must be in [0, 86400]".into());
                }
                o.warmup = Some(Duration::from_secs_f64(w));
            }
            "--seed" => o.seed = num(&a, &value()?)?,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if !any {
        return Ok(None);
    }
    if o.subscribers == 0 || o.subscribers > MAX_SUBSCRIBERS {
        return Err(format!("--subscribers must be 1..={MAX_SUBSCRIBERS}"));
    }
    if o.channels < 3 || o.channels > MAX_CHANNELS {
        return Err(format!("--channels must be 3..={MAX_CHANNELS}"));
    }
    if !(o.rate > 0.0 && o.rate <= 1e6) {
        return Err("--rate must be in (0, 1e6]".into());
    }
    if o.publishers == 0 || o.publishers > 64 {
        return Err("--publishers must be 1..=64".into());
    }
    if o.buffer == 0 || o.server_threads == 0 {
        return Err("--buffer and --server-threads must be positive".into());
    }
    if o.client_threads == 0 || o.client_threads > 16 {
        return Err("--client-threads must be 1..=16".into());
    }
    Ok(Some(o))
}

fn num<T: std::str::FromStr>(opt: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{opt}: bad value {v:?}"))
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

// ---------------------------------------------------------------------------------------------
// Randomness and the workload's pure functions.

/// A duration uniform in `lo..=hi` ms.
fn millis(rng: &mut Rng, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.between(lo, hi))
}

/// Up to three channel ids, in the publisher's (or subscriber's) order, no repeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Chans {
    ids: [u16; 3],
    len: u8,
}

impl Chans {
    fn as_slice(&self) -> &[u16] {
        &self.ids[..self.len as usize]
    }

    fn push_distinct(&mut self, c: u16) -> bool {
        if self.as_slice().contains(&c) || self.len as usize == self.ids.len() {
            return false;
        }
        self.ids[self.len as usize] = c;
        self.len += 1;
        true
    }
}

/// 1 channel 70% of the time, 2 channels 20%, 3 channels 10%.
fn how_many_channels(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=6 => 1,
        7 | 8 => 2,
        _ => 3,
    }
}

/// The workload shared by every thread: channel weights and the seed.
struct Workload {
    seed: u64,
    /// Cumulative publish weight per channel (last = total).
    cumulative: Vec<f64>,
}

impl Workload {
    /// Channel `i` weighs `1 / (1 + i/20)` (hot to lukewarm, ratio ~11 at 200 channels),
    /// except every `QUIET_EVERY`-th channel, weighted to get `QUIET_RATE` messages/s.
    fn new(seed: u64, channels: usize, rate: f64) -> Workload {
        let quiet = |i: usize| i % QUIET_EVERY == QUIET_EVERY - 1;
        let loud: f64 = (0..channels)
            .filter(|&i| !quiet(i))
            .map(|i| 1.0 / (1.0 + i as f64 / 20.0))
            .sum();
        let quiet_weight = loud * QUIET_RATE / (rate * MEAN_PUBLISH_CHANNELS);
        let mut acc = 0.0;
        let cumulative = (0..channels)
            .map(|i| {
                acc += if quiet(i) {
                    quiet_weight
                } else {
                    1.0 / (1.0 + i as f64 / 20.0)
                };
                acc
            })
            .collect();
        Workload { seed, cumulative }
    }

    fn channels(&self) -> usize {
        self.cumulative.len()
    }

    fn draw_channel(&self, rng: &mut Rng) -> u16 {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.unit() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.cumulative.len() - 1) as u16
    }

    /// Channels of message `n` of publisher `p`: a pure function, so subscribers can check it.
    fn message_chans(&self, p: usize, n: u64) -> Chans {
        let mut rng = Rng::seeded(self.seed ^ ((p as u64) << 40) ^ n.wrapping_mul(0x9E37_79B9));
        let want = how_many_channels(&mut rng);
        let mut c = Chans::default();
        // Bounded: a skewed draw may repeat a hot channel; give up after a few tries.
        for _ in 0..32 {
            if c.len as usize == want {
                break;
            }
            c.push_distinct(self.draw_channel(&mut rng));
        }
        c
    }
}

/// `type` of message `n`: present on every fourth message.
fn message_type(n: u64) -> Option<u64> {
    n.is_multiple_of(4).then_some(n % 1000)
}

fn channel_name(c: u16) -> String {
    format!("soak:{c}")
}

/// The publish line of message `n` of publisher `p`. Single-channel messages use `channel`
/// four times in five, `channels` otherwise.
fn publish_line(p: usize, n: u64, chans: &Chans) -> String {
    let list: Vec<String> = chans.as_slice().iter().map(|c| c.to_string()).collect();
    let names: Vec<String> = chans
        .as_slice()
        .iter()
        .map(|&c| format!("\"{}\"", channel_name(c)))
        .collect();
    let target = if chans.len == 1 && !n.is_multiple_of(5) {
        format!("\"channel\":{}", names[0])
    } else {
        format!("\"channels\":[{}]", names.join(","))
    };
    let kind = message_type(n)
        .map(|t| format!(",\"type\":{t}"))
        .unwrap_or_default();
    format!(
        "{{{target}{kind},\"data\":[{p},{n},[{}]]}}\n",
        list.join(",")
    )
}

// ---------------------------------------------------------------------------------------------
// Shared state.

/// What all harness threads share.
struct Ctx {
    addr: SocketAddr,
    socket: PathBuf,
    epoch: u64,
    work: Workload,
    publishers: usize,
    /// Share of polls sent with `Connection: close`.
    p_close: f64,
    /// Ack seq of message `n` of publisher `p` (`acks[p][n]`), 0 until acked.
    acks: Vec<Vec<AtomicU64>>,
    /// Publishers stop sending.
    stop_publish: AtomicBool,
    /// Subscribers stop hanging up and poll with `hold=0` until an empty answer.
    draining: AtomicBool,
    /// Something fatal happened (the server died): every loop ends as soon as it can.
    abort: AtomicBool,
    t0: Instant,
    counters: Counters,
}

/// Running totals, for progress lines and the summary.
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    answers: AtomicU64,
    empty_answers: AtomicU64,
    delivered: AtomicU64,
    resets: AtomicU64,
    connects: AtomicU64,
    hangups: AtomicU64,
    long_absences: AtomicU64,
    violations: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Violations grouped by [`pattern`]: count and the first few examples of each.
type Groups = BTreeMap<String, (u64, Vec<String>)>;

/// The violations one thread saw, all also counted in `Counters`.
struct Violations<'a> {
    groups: Groups,
    counter: &'a AtomicU64,
}

impl<'a> Violations<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        Violations {
            groups: Groups::new(),
            counter,
        }
    }

    fn add(&mut self, line: String) {
        bump(self.counter, 1);
        let g = self.groups.entry(pattern(&line)).or_default();
        g.0 += 1;
        if g.1.len() < EXAMPLES_PER_GROUP {
            g.1.push(line);
        }
    }

    /// Adds another thread's groups (already counted).
    fn merge(&mut self, other: Groups) {
        for (k, (n, examples)) in other {
            let g = self.groups.entry(k).or_default();
            g.0 += n;
            let room = EXAMPLES_PER_GROUP.saturating_sub(g.1.len());
            g.1.extend(examples.into_iter().take(room));
        }
    }
}

/// A violation's kind: its text with every number written `N`, cut before the first bracket or
/// quote (where requests and bodies start) and after 100 characters.
fn pattern(line: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for ch in line.chars() {
        if matches!(ch, '(' | '{' | '[' | '"') || out.len() >= 100 {
            break;
        }
        if ch.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(ch);
        }
    }
    out.trim_end().to_string()
}

// ---------------------------------------------------------------------------------------------
// The server process.

struct Server {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
    stderr: PathBuf,
}

fn start_server(o: &Opts, dir: &Path) -> Result<Server, String> {
    let socket = dir.join("soak.sock");
    let stderr = dir.join("server.stderr");
    let err_file =
        std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
    let mut cmd = Command::new(&o.server);
    cmd.arg("--threads")
        .arg(o.server_threads.to_string())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--publish-socket")
        .arg(&socket)
        .arg("--buffer")
        .arg(o.buffer.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err_file);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    // SAFETY: prctl is async-signal-safe. The server gets SIGKILL if the harness dies first
    // (interrupted run), so no soak server outlives its harness.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    eprintln!(
        "soak: starting {} --threads {} --listen 127.0.0.1:0 --publish-socket {} --buffer {}",
        o.server.display(),
        o.server_threads,
        socket.display(),
        o.buffer
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", o.server.display()))?;
    let Some(stdout) = child.stdout.take() else {
        return Err("no stdout pipe".into());
    };
    let (tx, rx) = mpsc::channel();
    // Reads the startup line, then keeps draining stdout until the server exits.
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let line = match rx.recv_timeout(STARTUP_WAIT) {
        Ok(l) if !l.is_empty() => l,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "pnsd printed no startup line; stderr: {}",
                read_tail(&stderr)
            ));
        }
    };
    // pnsd listening on http://ADDR [...] publish=PATH threads=N
    let line = line.trim_end();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.parse::<SocketAddr>().ok());
    let publish = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("publish="));
    let threads = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("threads="));
    match (addr, publish, threads) {
        (Some(addr), Some(p), Some(t)) if Path::new(p) == socket => {
            eprintln!("soak: {line}");
            if t != o.server_threads.to_string() {
                eprintln!("soak: note: server reports threads={t}");
            }
            Ok(Server {
                child,
                addr,
                socket,
                stderr,
            })
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("cannot read the startup line {line:?}"))
        }
    }
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of a process (`self` for the harness).
fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / tick.max(1.0))
}

fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// One request on a fresh blocking connection, `Connection: close`; returns the body.
fn http_once(addr: SocketAddr, target: &str) -> Result<String, String> {
    let mut s = StdTcpStream::connect_timeout(&addr, CONNECT_WAIT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(STARTUP_WAIT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    match parse_answer(&buf)? {
        Some((a, _)) if a.status == 200 => Ok(String::from_utf8_lossy(&a.body).into_owned()),
        Some((a, _)) => Err(format!("status {}", a.status)),
        None => Err("incomplete answer".into()),
    }
}

/// Sends one line on a fresh publisher connection and returns the answer line.
fn publish_request(socket: &Path, line: &str) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(ACK_WAIT))
        .map_err(|e| e.to_string())?;
    s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(b"\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer:?}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP answers.

struct Answer {
    status: u16,
    /// `Connection: close` or HTTP/1.0: the server closes after this answer.
    close: bool,
    etag: Option<String>,
    content_type: Option<String>,
    cache_control: Option<String>,
    body: Vec<u8>,
}

/// One complete answer at the start of `buf` and its length, `None` while incomplete.
fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparsable answer: {e}")),
    };
    let mut a = Answer {
        status: resp.code.unwrap_or(0),
        close: resp.version == Some(0),
        etag: None,
        content_type: None,
        cache_control: None,
        body: Vec::new(),
    };
    let mut length = None;
    for h in resp.headers.iter() {
        let v = String::from_utf8_lossy(h.value).into_owned();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<usize>().ok(),
            "transfer-encoding" => return Err("unexpected Transfer-Encoding".into()),
            "connection" => a.close |= v.eq_ignore_ascii_case("close"),
            "etag" => a.etag = Some(v),
            "content-type" => a.content_type = Some(v),
            "cache-control" => a.cache_control = Some(v),
            _ => {}
        }
    }
    let length = length.ok_or("answer without Content-Length")?;
    if buf.len() < head + length {
        return Ok(None);
    }
    a.body = buf[head..head + length].to_vec();
    Ok(Some((a, head + length)))
}

// ---------------------------------------------------------------------------------------------
// Publishers.

/// What one publisher connection did.
struct PubOutcome {
    /// Ack seq of message n, for every acked n (acks arrive in order, so n = index).
    seqs: Vec<u64>,
    sent: u64,
    max_ack_latency: Duration,
    violations: Groups,
}

fn publisher(ctx: Arc<Ctx>, p: usize, rate: f64) -> PubOutcome {
    let mut v = Violations::new(&ctx.counters.violations);
    let mut out = PubOutcome {
        seqs: Vec::new(),
        sent: 0,
        max_ack_latency: Duration::ZERO,
        violations: Groups::new(),
    };
    let conn = UnixStream::connect(&ctx.socket).and_then(|s| Ok((s.try_clone()?, s)));
    let (mut writer, reader) = match conn {
        Ok(pair) => pair,
        Err(e) => {
            v.add(format!("publisher {p}: cannot connect: {e}"));
            out.violations = v.groups;
            return out;
        }
    };
    if let Err(e) = writer.set_write_timeout(Some(ACK_WAIT)) {
        v.add(format!("publisher {p}: set_write_timeout: {e}"));
    }
    let cap = ctx.acks[p].len() as u64;
    let (tx, rx) = mpsc::sync_channel::<(u64, Instant)>(PUBLISH_WINDOW);
    let rctx = Arc::clone(&ctx);
    let acks = thread::spawn(move || ack_reader(&rctx, p, reader, rx));
    let start = Instant::now();
    let mut n = 0u64;
    let mut batch = String::new();
    while !ctx.stop_publish.load(Ordering::Relaxed) && !ctx.abort.load(Ordering::Relaxed) {
        if n >= cap {
            v.add(format!("publisher {p}: ran out of ack slots at {n}"));
            break;
        }
        let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        let end = due.min(n + MAX_BATCH).min(cap);
        if end <= n {
            let next = start + Duration::from_secs_f64(n as f64 / rate);
            let wait = next.saturating_duration_since(Instant::now());
            thread::sleep(wait.clamp(Duration::from_micros(200), LOOP_SLICE));
            continue;
        }
        batch.clear();
        for m in n..end {
            batch.push_str(&publish_line(p, m, &ctx.work.message_chans(p, m)));
        }
        if let Err(e) = writer.write_all(batch.as_bytes()) {
            v.add(format!(
                "publisher {p}: write failed after {n} messages: {e}"
            ));
            break;
        }
        let now = Instant::now();
        let mut closed = false;
        for m in n..end {
            if tx.send((m, now)).is_err() {
                closed = true;
                break;
            }
        }
        n = end;
        if closed {
            v.add(format!("publisher {p}: the ack reader stopped early"));
            break;
        }
    }
    out.sent = n;
    drop(tx);
    match acks.join() {
        Ok((latency, lines)) => {
            // The reader stores acks in order from message 0 and stops at the first bad one,
            // and every seq is at least 1: the acked messages are the non-zero prefix.
            out.seqs = ctx.acks[p]
                .iter()
                .map(|a| a.load(Ordering::Acquire))
                .take_while(|&seq| seq != 0)
                .collect();
            out.max_ack_latency = latency;
            for l in lines {
                v.add(l);
            }
        }
        Err(_) => v.add(format!("publisher {p}: ack reader panicked")),
    }
    if (out.seqs.len() as u64) < out.sent {
        v.add(format!(
            "publisher {p}: {} of {} publishes never acked",
            out.sent - out.seqs.len() as u64,
            out.sent
        ));
    }
    out.violations = v.groups;
    out
}

/// Reads ack lines in order; each must be `ok` with an id of this run, after the previous one.
/// Stores each acked seq in `ctx.acks[p]`; returns the longest ack latency and violation lines
/// (also counted by the caller).
fn ack_reader(
    ctx: &Ctx,
    p: usize,
    stream: UnixStream,
    rx: mpsc::Receiver<(u64, Instant)>,
) -> (Duration, Vec<String>) {
    let mut worst = Duration::ZERO;
    let mut bad = Vec::new();
    if let Err(e) = stream.set_read_timeout(Some(LOOP_SLICE)) {
        bad.push(format!("publisher {p}: set_read_timeout: {e}"));
        return (worst, bad);
    }
    let mut r = BufReader::new(stream);
    let mut line = Vec::new();
    let mut last = 0u64;
    let mut stopped_at: Option<Instant> = None;
    loop {
        let (n, sent) = match rx.recv_timeout(LOOP_SLICE) {
            Ok(x) => x,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if ctx.abort.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Each ack within ACK_WAIT, and all of them within ACK_WAIT of the stop.
        let now = Instant::now();
        if stopped_at.is_none() && ctx.stop_publish.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        let deadline = stopped_at.map_or(now, |t| t.min(now)) + ACK_WAIT;
        line.clear();
        let got = loop {
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break Err("the publish socket closed".to_string()),
                Ok(_) if line.ends_with(b"\n") => break Ok(()),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() > deadline || ctx.abort.load(Ordering::Relaxed) {
                        break Err(format!("no ack within {ACK_WAIT:?}"));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Err(e) = got {
            bad.push(format!("publisher {p}: message {n}: {e}"));
            break;
        }
        worst = worst.max(sent.elapsed());
        let text = String::from_utf8_lossy(&line);
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                bad.push(format!("publisher {p}: message {n}: bad ack {text:?}: {e}"));
                break;
            }
        };
        let id = v["id"].as_str().and_then(cursor::decode);
        match id {
            Some(c) if v["ok"] == Value::Bool(true) && c.epoch == ctx.epoch && c.seq > last => {
                last = c.seq;
                ctx.acks[p][n as usize].store(c.seq, Ordering::Release);
                bump(&ctx.counters.acked, 1);
            }
            _ => {
                bad.push(format!(
                    "publisher {p}: message {n}: bad or out-of-order ack {} (previous seq {last})",
                    text.trim_end()
                ));
                break;
            }
        }
    }
    (worst, bad)
}

// ---------------------------------------------------------------------------------------------
// Subscribers.

/// A reset answer: the poll sent cursor `from`, the answer's cursor is `to`, and it delivered
/// `received[first..end]`.
#[derive(Debug, Clone, Copy)]
struct ResetMark {
    from: u64,
    to: u64,
    first: usize,
    end: usize,
}

/// Everything a subscriber saw, for the final check.
struct SubLog {
    id: usize,
    chans: Chans,
    /// Cursor of the first answer: the stream is checked after it.
    start: Option<u64>,
    /// Seqs of every message received, in arrival order (strictly increasing).
    received: Vec<u64>,
    resets: Vec<ResetMark>,
    /// Cursor of the empty answer that ended the drain.
    last: Option<u64>,
    /// Resets answered to the first poll after a long absence.
    long_resets: u64,
    long_returns: u64,
}

enum Phase {
    /// No connection; a `Reconnect` timer is armed.
    Away,
    Connecting,
    /// A poll is in flight.
    Polling {
        in_drain: bool,
        close: bool,
    },
    /// Drain finished.
    Done,
}

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
    /// For violation reports: the request in flight and the answers already read.
    request: String,
    answers: u32,
    opened: Instant,
}

struct Sub {
    phase: Phase,
    conn: Option<Conn>,
    /// Bumped per connection; part of the mio token so stale events are ignored.
    gen: u32,
    /// Bumped per phase change; `Reconnect` timers carry it.
    stamp: u64,
    /// Bumped when a connection closes; `Hangup` timers carry it.
    hangup_stamp: u64,
    /// When the connect or poll in flight must be done (checked by a sweep, not a timer each:
    /// polls are ~30,000/s).
    deadline: Option<Instant>,
    /// Position after the last answer (None before the first answer).
    cursor: Option<u64>,
    /// The current absence is long; the next answer is the return.
    returning_long: bool,
    query: String,
    query_plain: String,
    log: SubLog,
}

impl Sub {
    /// The stamp a timer of `kind` carries: it is stale once this has moved on.
    fn stamp_for(&self, kind: TimerKind) -> u64 {
        match kind {
            TimerKind::Reconnect => self.stamp,
            TimerKind::Hangup => self.hangup_stamp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Reconnect,
    Hangup,
}

/// Ordered by time first; stale timers (stamp mismatch) are skipped when they fire.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    idx: usize,
    kind: TimerKind,
    stamp: u64,
}

/// Low 20 bits of a token: subscriber index in its worker; the rest: connection generation.
const TOKEN_IDX_BITS: u32 = 20;

fn token(idx: usize, gen: u32) -> Token {
    Token(((gen as usize) << TOKEN_IDX_BITS) | idx)
}

fn untoken(t: Token) -> (usize, u32) {
    (
        t.0 & ((1 << TOKEN_IDX_BITS) - 1),
        (t.0 >> TOKEN_IDX_BITS) as u32,
    )
}

/// What a worker thread hands back.
struct WorkerOutcome {
    logs: Vec<SubLog>,
    /// `(publisher, n, seq)` of deliveries that arrived before their ack was recorded.
    deferred: Vec<(usize, u64, u64)>,
    violations: Groups,
}

/// One subscriber thread: a mio loop over its share of subscribers.
struct Worker<'a> {
    ctx: &'a Ctx,
    poll: Poll,
    subs: Vec<Sub>,
    timers: BinaryHeap<Reverse<Timer>>,
    rng: Rng,
    next_source: u32,
    draining: bool,
    done: usize,
    deferred: Vec<(usize, u64, u64)>,
    v: Violations<'a>,
}

fn new_sub(id: usize, rng: &mut Rng, channels: usize) -> Sub {
    let mut chans = Chans::default();
    let want = how_many_channels(rng);
    while (chans.len as usize) < want {
        chans.push_distinct(rng.below(channels as u64) as u16);
    }
    let query: Vec<String> = chans
        .as_slice()
        .iter()
        .map(|&c| format!("channel=soak%3A{c}"))
        .collect();
    let plain: Vec<String> = chans
        .as_slice()
        .iter()
        .map(|&c| format!("channel={}", channel_name(c)))
        .collect();
    Sub {
        phase: Phase::Away,
        conn: None,
        gen: 0,
        stamp: 0,
        hangup_stamp: 0,
        deadline: None,
        cursor: None,
        returning_long: false,
        query: query.join("&"),
        query_plain: plain.join("&"),
        log: SubLog {
            id,
            chans,
            start: None,
            received: Vec::new(),
            resets: Vec::new(),
            last: None,
            long_resets: 0,
            long_returns: 0,
        },
    }
}

fn subscriber_thread(ctx: Arc<Ctx>, ids: Vec<usize>, total: usize, seed: u64) -> WorkerOutcome {
    let ctx = &*ctx;
    let mut v = Violations::new(&ctx.counters.violations);
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            v.add(format!("mio Poll::new: {e}"));
            return WorkerOutcome {
                logs: Vec::new(),
                deferred: Vec::new(),
                violations: v.groups,
            };
        }
    };
    let mut rng = Rng::seeded(seed);
    let subs: Vec<Sub> = ids
        .iter()
        .map(|&id| new_sub(id, &mut Rng::seeded(seed ^ id as u64), ctx.work.channels()))
        .collect();
    let mut w = Worker {
        ctx,
        poll,
        subs,
        timers: BinaryHeap::new(),
        next_source: rng.below(u64::from(SOURCE_ADDRS)) as u32,
        rng,
        draining: false,
        done: 0,
        deferred: Vec::new(),
        v,
    };
    for (i, &id) in ids.iter().enumerate() {
        let at = ctx.t0 + START_SPREAD.mul_f64(id as f64 / total as f64);
        w.schedule(at, i, TimerKind::Reconnect);
    }
    w.run();
    for i in 0..w.subs.len() {
        w.close(i, false);
    }
    WorkerOutcome {
        logs: w.subs.into_iter().map(|s| s.log).collect(),
        deferred: w.deferred,
        violations: w.v.groups,
    }
}

impl Worker<'_> {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline = None;
        let mut next_sweep = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep_deadlines(now);
                next_sweep = now + SWEEP_EVERY;
            }
            if !self.draining
                && (self.ctx.draining.load(Ordering::Relaxed)
                    || self.ctx.abort.load(Ordering::Relaxed))
            {
                self.begin_drain();
                drain_deadline = Some(now + DRAIN_WAIT);
            }
            if self.done == self.subs.len() {
                return;
            }
            if let Some(d) = drain_deadline {
                if now > d || self.ctx.abort.load(Ordering::Relaxed) {
                    let left = self.subs.len() - self.done;
                    self.v.add(format!(
                        "{left} subscribers did not finish the final drain within {DRAIN_WAIT:?}"
                    ));
                    return;
                }
            }
            while let Some(Reverse(t)) = self.timers.peek() {
                if t.at > now {
                    break;
                }
                if let Some(Reverse(t)) = self.timers.pop() {
                    self.fire(t);
                }
            }
            let wait = self
                .timers
                .peek()
                .map(|Reverse(t)| t.at.saturating_duration_since(Instant::now()))
                .unwrap_or(LOOP_SLICE)
                .min(LOOP_SLICE);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.v.add(format!("mio poll: {e}"));
                    return;
                }
            }
            for ev in events.iter() {
                let (idx, gen) = untoken(ev.token());
                let live = self
                    .subs
                    .get(idx)
                    .is_some_and(|s| s.gen == gen && s.conn.is_some());
                if live {
                    self.on_event(idx);
                }
            }
        }
    }

    fn schedule(&mut self, at: Instant, idx: usize, kind: TimerKind) {
        let stamp = self.subs[idx].stamp_for(kind);
        self.timers.push(Reverse(Timer {
            at,
            idx,
            kind,
            stamp,
        }));
    }

    /// Changes phase; the caller sets the new phase's deadline, if any.
    fn set_phase(&mut self, idx: usize, phase: Phase) {
        let s = &mut self.subs[idx];
        s.stamp += 1;
        s.phase = phase;
        s.deadline = None;
    }

    /// Connects and polls past their deadline are violations; the subscriber starts over.
    fn sweep_deadlines(&mut self, now: Instant) {
        for idx in 0..self.subs.len() {
            let s = &self.subs[idx];
            if s.deadline.is_none_or(|d| d > now) {
                continue;
            }
            let id = s.log.id;
            match s.phase {
                Phase::Connecting => {
                    self.fail(
                        idx,
                        format_args!("connect not done within {CONNECT_WAIT:?}"),
                    );
                }
                Phase::Polling { .. } => {
                    self.v.add(format!(
                        "subscriber {id}: poll unanswered {ANSWER_GRACE:?} after its hold"
                    ));
                    self.go_away(idx, Duration::ZERO, false);
                }
                _ => self.subs[idx].deadline = None,
            }
        }
    }

    fn fire(&mut self, t: Timer) {
        let s = &self.subs[t.idx];
        if s.stamp_for(t.kind) != t.stamp {
            return;
        }
        match (t.kind, &s.phase) {
            (TimerKind::Reconnect, Phase::Away) => self.connect(t.idx),
            (TimerKind::Hangup, Phase::Connecting | Phase::Polling { .. }) if !self.draining => {
                self.hang_up(t.idx);
            }
            _ => {}
        }
    }

    /// A random hang-up: short or long absence, FIN or reset.
    fn hang_up(&mut self, idx: usize) {
        bump(&self.ctx.counters.hangups, 1);
        let long = self.rng.chance(P_LONG_AWAY);
        let away = if long {
            bump(&self.ctx.counters.long_absences, 1);
            millis(&mut self.rng, LONG_AWAY_MS)
        } else {
            millis(&mut self.rng, SHORT_AWAY_MS)
        };
        let rst = self.rng.chance(P_RESET_CLOSE);
        // Only a subscriber that has a cursor can be reset on its return.
        self.subs[idx].returning_long = long && self.subs[idx].cursor.is_some();
        self.go_away(idx, away, rst);
    }

    fn close(&mut self, idx: usize, rst: bool) {
        let s = &mut self.subs[idx];
        s.hangup_stamp += 1;
        if let Some(mut c) = s.conn.take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if rst {
                let _ = SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
            }
        }
    }

    /// A violation by subscriber `idx`: recorded with its id, and it starts over after a pause.
    fn fail(&mut self, idx: usize, what: std::fmt::Arguments) {
        let id = self.subs[idx].log.id;
        self.v.add(format!("subscriber {id}: {what}"));
        self.go_away(idx, RETRY_PAUSE, false);
    }

    fn go_away(&mut self, idx: usize, after: Duration, rst: bool) {
        self.close(idx, rst);
        self.set_phase(idx, Phase::Away);
        let at = Instant::now() + if self.draining { Duration::ZERO } else { after };
        self.schedule(at, idx, TimerKind::Reconnect);
    }

    fn connect(&mut self, idx: usize) {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + self.next_source);
        self.next_source = (self.next_source + 1) % SOURCE_ADDRS;
        match open_socket(ip, self.ctx.addr) {
            Ok(mut stream) => {
                let s = &mut self.subs[idx];
                s.gen = s.gen.wrapping_add(1);
                let reg = self.poll.registry().register(
                    &mut stream,
                    token(idx, s.gen),
                    Interest::READABLE | Interest::WRITABLE,
                );
                if let Err(e) = reg {
                    self.v.add(format!("register: {e}"));
                    self.go_away(idx, RETRY_PAUSE, false);
                    return;
                }
                s.conn = Some(Conn {
                    stream,
                    out: Vec::new(),
                    input: Vec::new(),
                    request: String::new(),
                    answers: 0,
                    opened: Instant::now(),
                });
                bump(&self.ctx.counters.connects, 1);
                self.set_phase(idx, Phase::Connecting);
                let now = Instant::now();
                self.subs[idx].deadline = Some(now + CONNECT_WAIT);
                if !self.draining {
                    let after = millis(&mut self.rng, HANGUP_AFTER_MS);
                    self.schedule(now + after, idx, TimerKind::Hangup);
                }
            }
            Err(e) => {
                self.fail(idx, format_args!("connect from {ip} failed: {e}"));
            }
        }
    }

    fn on_event(&mut self, idx: usize) {
        if matches!(self.subs[idx].phase, Phase::Connecting) {
            let Some(c) = self.subs[idx].conn.as_ref() else {
                return;
            };
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    self.fail(idx, format_args!("connect failed: {e}"));
                    return;
                }
            }
            match c.stream.peer_addr() {
                Ok(_) => self.send_poll(idx),
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => {
                    self.fail(idx, format_args!("connect failed: {e}"));
                    return;
                }
            }
        }
        if !matches!(self.subs[idx].phase, Phase::Polling { .. }) {
            return;
        }
        if let Err(e) = self.flush(idx) {
            self.fail(idx, format_args!("writing a poll failed: {e}"));
            return;
        }
        self.on_readable(idx);
    }

    fn flush(&mut self, idx: usize) -> std::io::Result<()> {
        let Some(c) = self.subs[idx].conn.as_mut() else {
            return Ok(());
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn on_readable(&mut self, idx: usize) {
        let id = self.subs[idx].log.id;
        let Some(c) = self.subs[idx].conn.as_mut() else {
            return;
        };
        let mut eof = None;
        let mut chunk = [0u8; READ_CHUNK];
        // Edge-triggered: read until WouldBlock. Bounded by MAX_ANSWER_BYTES.
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = Some("the server closed the connection".to_string());
                    break;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&chunk[..n]);
                    if c.input.len() > MAX_ANSWER_BYTES {
                        eof = Some(format!("answer over {MAX_ANSWER_BYTES} bytes"));
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    eof = Some(format!("read failed: {e}"));
                    break;
                }
            }
        }
        match parse_answer(&c.input) {
            Ok(Some((a, len))) => {
                if len != c.input.len() {
                    self.v.add(format!(
                        "subscriber {id}: {} unexpected bytes after an answer",
                        c.input.len() - len
                    ));
                }
                c.input.clear();
                c.answers += 1;
                self.on_answer(idx, a);
            }
            Ok(None) => {
                if let Some(why) = eof {
                    if !self.ctx.abort.load(Ordering::Relaxed) {
                        self.v.add(format!(
                            "subscriber {id}: {why} with a poll in flight ({} bytes read; \
                             answer {} on a connection open {} ms): {:?}",
                            c.input.len(),
                            c.answers + 1,
                            c.opened.elapsed().as_millis(),
                            c.request
                        ));
                    }
                    self.go_away(idx, RETRY_PAUSE, false);
                }
            }
            Err(e) => {
                self.fail(idx, format_args!("{e}"));
            }
        }
    }

    fn send_poll(&mut self, idx: usize) {
        let draining = self.draining;
        let first = self.subs[idx].cursor.is_none();
        let hold = if draining || first || self.rng.chance(P_HOLD_ZERO) {
            0
        } else {
            self.rng.between(1, MAX_HOLD_SECS)
        };
        let close = !draining && self.rng.chance(self.ctx.p_close);
        let inm = self.rng.chance(P_IF_NONE_MATCH);
        let weak = self.rng.chance(0.5);
        let plain = self.rng.chance(0.5);
        let repeat = self.rng.chance(P_REPEAT_CHANNEL);
        let epoch = self.ctx.epoch;
        let s = &mut self.subs[idx];
        let mut target = String::from("/pns/poll?");
        target.push_str(if plain { &s.query_plain } else { &s.query });
        if repeat {
            target.push('&');
            target.push_str(s.query.split('&').next().unwrap_or_default());
        }
        let mut headers = String::new();
        match s.cursor {
            Some(seq) if inm => {
                let w = if weak { "W/" } else { "" };
                headers.push_str(&format!(
                    "If-None-Match: {w}\"{}\"\r\n",
                    cursor::encode(epoch, seq)
                ));
            }
            Some(seq) => {
                target.push_str("&cursor=");
                target.push_str(&cursor::encode(epoch, seq));
            }
            None if inm => target.push_str("&cursor="),
            None => {}
        }
        target.push_str(&format!("&hold={hold}"));
        if weak {
            target.push_str("&comefrom=100");
        }
        if close {
            headers.push_str("Connection: close\r\n");
        }
        let req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n");
        if let Some(c) = s.conn.as_mut() {
            c.out.extend_from_slice(req.as_bytes());
            c.request = req;
        }
        self.set_phase(
            idx,
            Phase::Polling {
                in_drain: draining,
                close,
            },
        );
        let at = Instant::now() + Duration::from_secs(hold) + ANSWER_GRACE;
        self.subs[idx].deadline = Some(at);
        if let Err(e) = self.flush(idx) {
            self.fail(idx, format_args!("writing a poll failed: {e}"));
        }
    }

    fn begin_drain(&mut self) {
        self.draining = true;
        for idx in 0..self.subs.len() {
            match self.subs[idx].phase {
                Phase::Away => self.go_away(idx, Duration::ZERO, false),
                // Polls sent before the drain may be parked for up to MAX_HOLD_SECS: redo.
                Phase::Polling {
                    in_drain: false, ..
                } => self.go_away(idx, Duration::ZERO, false),
                _ => {}
            }
        }
    }

    fn on_answer(&mut self, idx: usize, a: Answer) {
        let (in_drain, asked_close) = match self.subs[idx].phase {
            Phase::Polling { in_drain, close } => (in_drain, close),
            _ => return,
        };
        let id = self.subs[idx].log.id;
        if a.status != 200 {
            self.fail(
                idx,
                format_args!("status {}: {}", a.status, String::from_utf8_lossy(&a.body)),
            );
            return;
        }
        let result = self.check_answer(idx, &a);
        let (c, reset) = match result {
            Ok(x) => x,
            Err(e) => {
                self.fail(idx, format_args!("{e}"));
                return;
            }
        };
        let k = &self.ctx.counters;
        bump(&k.answers, 1);
        bump(&k.delivered, c as u64);
        if c == 0 {
            bump(&k.empty_answers, 1);
        }
        if reset {
            bump(&k.resets, 1);
        }
        let s = &mut self.subs[idx];
        if s.returning_long {
            s.returning_long = false;
            s.log.long_returns += 1;
            s.log.long_resets += u64::from(reset);
        }
        if in_drain && c == 0 && !reset {
            s.log.last = s.cursor;
            self.close(idx, false);
            self.set_phase(idx, Phase::Done);
            self.done += 1;
            return;
        }
        if a.close || asked_close {
            if !a.close {
                self.v.add(format!(
                    "subscriber {id}: asked Connection: close, answer does not say close"
                ));
            }
            self.go_away(idx, Duration::ZERO, false);
            return;
        }
        if !self.draining && self.rng.chance(P_CLOSE_BETWEEN) {
            let away = millis(&mut self.rng, SHORT_AWAY_MS);
            self.go_away(idx, away, false);
            return;
        }
        self.send_poll(idx);
    }

    /// Checks one 200 answer and records its messages; returns `(c, reset)`.
    fn check_answer(&mut self, idx: usize, a: &Answer) -> Result<(usize, bool), String> {
        let epoch = self.ctx.epoch;
        let body = String::from_utf8_lossy(&a.body);
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("body {body:?}: {e}"))?;
        let msgs = v["msg"]
            .as_array()
            .ok_or_else(|| format!("no msg array: {body}"))?;
        let c = v["c"].as_u64().ok_or_else(|| format!("no c: {body}"))? as usize;
        let text = v["cursor"]
            .as_str()
            .ok_or_else(|| format!("no cursor: {body}"))?;
        let q = cursor::decode(text)
            .filter(|k| k.epoch == epoch)
            .ok_or_else(|| format!("cursor {text:?} not of this run"))?
            .seq;
        let reset = match v.get("reset") {
            None => false,
            Some(Value::Bool(true)) => true,
            Some(x) => return Err(format!("reset is {x}, not true or absent")),
        };
        if c != msgs.len() || c > MAX_PER_ANSWER {
            return Err(format!("c={c} with {} messages", msgs.len()));
        }
        if a.etag.as_deref() != Some(&format!("\"{text}\"")) {
            return Err(format!("ETag {:?} for cursor {text}", a.etag));
        }
        if !a
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json"))
            || a.cache_control.as_deref() != Some("no-store")
        {
            return Err(format!(
                "headers: Content-Type {:?}, Cache-Control {:?}",
                a.content_type, a.cache_control
            ));
        }
        let s = &mut self.subs[idx];
        let before = s.cursor;
        if let (Some(p), false) = (before, reset) {
            if c == 0 && q < p {
                return Err(format!(
                    "empty answer moved the cursor back from {p} to {q}"
                ));
            }
        }
        if before.is_none() && reset {
            return Err("reset answer to a poll without cursor".into());
        }
        // The first answer fixes where this subscriber's stream starts.
        let mut last = match before {
            Some(p) => p,
            None => {
                let first = msgs
                    .first()
                    .and_then(|m| m["id"].as_str())
                    .and_then(cursor::decode)
                    .map(|k| k.seq.saturating_sub(1))
                    .unwrap_or(q);
                s.log.start = Some(first);
                first
            }
        };
        // Nothing is recorded unless the whole answer passes, so one bad answer does not
        // cascade into repeats when the subscriber retries from its previous cursor.
        let mut got = Vec::with_capacity(msgs.len());
        let mut late = Vec::new();
        for m in msgs {
            let seq = m["id"]
                .as_str()
                .and_then(cursor::decode)
                .filter(|k| k.epoch == epoch)
                .ok_or_else(|| format!("bad message id in {m}"))?
                .seq;
            if seq <= last {
                return Err(format!(
                    "message {seq} after {last}: repeated or out of order ({m})"
                ));
            }
            let (p, n) = match m["data"].as_array().map(|d| d.as_slice()) {
                Some([Value::Number(p), Value::Number(n), Value::Array(_)]) => (
                    p.as_u64().unwrap_or(u64::MAX) as usize,
                    n.as_u64().unwrap_or(u64::MAX),
                ),
                _ => return Err(format!("foreign data in {m}")),
            };
            if p >= self.ctx.publishers || n as usize >= self.ctx.acks[p].len() {
                return Err(format!("foreign data in {m}"));
            }
            let chans = self.ctx.work.message_chans(p, n);
            let ids: Vec<Value> = chans.as_slice().iter().map(|&c| Value::from(c)).collect();
            if m["data"] != Value::Array(vec![p.into(), n.into(), Value::Array(ids)]) {
                return Err(format!("data changed: {m}"));
            }
            let mine = s.log.chans;
            let first_mine = chans
                .as_slice()
                .iter()
                .find(|c| mine.as_slice().contains(c));
            let Some(&first_mine) = first_mine else {
                return Err(format!(
                    "message not on my channels {:?}: {m}",
                    mine.as_slice()
                ));
            };
            if m["channel"].as_str() != Some(channel_name(first_mine).as_str()) {
                return Err(format!(
                    "channel should be {} (first subscribed of the publish): {m}",
                    channel_name(first_mine)
                ));
            }
            let want_type = message_type(n).map(Value::from);
            if m.get("type") != want_type.as_ref() {
                return Err(format!("type should be {want_type:?}: {m}"));
            }
            match self.ctx.acks[p][n as usize].load(Ordering::Acquire) {
                0 => late.push((p, n, seq)),
                acked if acked != seq => {
                    return Err(format!(
                        "message {p}/{n} acked as {acked}, delivered as {seq}"
                    ))
                }
                _ => {}
            }
            got.push(seq);
            last = seq;
        }
        if c > 0 && last != q {
            return Err(format!("cursor {q} is not the last message's id {last}"));
        }
        if reset && before.is_some_and(|p| q < p) {
            return Err(format!("reset answer moved the cursor back to {q}"));
        }
        let mark_first = s.log.received.len();
        s.log.received.extend_from_slice(&got);
        self.deferred.extend_from_slice(&late);
        if reset {
            if let Some(from) = before {
                s.log.resets.push(ResetMark {
                    from,
                    to: q,
                    first: mark_first,
                    end: s.log.received.len(),
                });
            }
        }
        s.cursor = Some(q.max(before.unwrap_or(0)));
        Ok((c, reset))
    }
}

/// A non-blocking socket bound to `ip` (port chosen at connect time), connecting to `to`.
fn open_socket(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd, option value and length. IP_BIND_ADDRESS_NO_PORT defers the port
    // choice to connect(), so ports are shared across destinations as with an unbound socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

// ---------------------------------------------------------------------------------------------
// The final check.

/// Totals of the final check.
#[derive(Default, Debug)]
struct Tally {
    expected: u64,
    matched: u64,
    excused: u64,
    resets: u64,
    resets_without_gap: u64,
    full_resets_without_gap: u64,
    long_returns: u64,
    long_resets: u64,
    subscribers_checked: u64,
}

/// Every acked message: its channels by seq, and per channel its seqs in order.
struct Table {
    chans: Vec<Option<Chans>>,
    per_chan: Vec<Vec<u64>>,
}

fn build_table(ctx: &Ctx, pubs: &[PubOutcome], v: &mut Violations) -> Table {
    let max = pubs
        .iter()
        .flat_map(|p| p.seqs.last())
        .copied()
        .max()
        .unwrap_or(0);
    let mut chans: Vec<Option<Chans>> = vec![None; max as usize + 1];
    for (p, o) in pubs.iter().enumerate() {
        for (n, &seq) in o.seqs.iter().enumerate() {
            let slot = &mut chans[seq as usize];
            if slot.is_some() {
                v.add(format!("seq {seq} acked twice"));
            }
            *slot = Some(ctx.work.message_chans(p, n as u64));
        }
    }
    let holes = chans.iter().skip(1).filter(|c| c.is_none()).count();
    if holes > 0 {
        v.add(format!(
            "{holes} seqs up to {max} were never acked to a publisher"
        ));
    }
    let mut per_chan = vec![Vec::new(); ctx.work.channels()];
    for (seq, c) in chans.iter().enumerate() {
        for &ch in c.iter().flat_map(|c| c.as_slice()) {
            per_chan[ch as usize].push(seq as u64);
        }
    }
    Table { chans, per_chan }
}

/// Bit i set when the subscriber's i-th channel is among message `seq`'s channels.
fn mask(table: &Table, mine: &Chans, seq: u64) -> u8 {
    let Some(Some(c)) = table.chans.get(seq as usize) else {
        return 0;
    };
    mine.as_slice()
        .iter()
        .enumerate()
        .filter(|(_, m)| c.as_slice().contains(m))
        .fold(0, |acc, (i, _)| acc | 1 << i)
}

fn verify_sub(log: &SubLog, table: &Table, t: &mut Tally, v: &mut Violations) {
    let id = log.id;
    let (Some(start), Some(last)) = (log.start, log.last) else {
        v.add(format!("subscriber {id}: no start or no final cursor"));
        return;
    };
    t.subscribers_checked += 1;
    t.resets += log.resets.len() as u64;
    t.long_returns += log.long_returns;
    t.long_resets += log.long_resets;
    let mut expected: Vec<u64> = Vec::new();
    for &c in log.chans.as_slice() {
        let list = &table.per_chan[c as usize];
        let a = list.partition_point(|&s| s <= start);
        let b = list.partition_point(|&s| s <= last);
        expected.extend_from_slice(&list[a..b]);
    }
    expected.sort_unstable();
    expected.dedup();
    t.expected += expected.len() as u64;
    let got = &log.received;
    let mut gap_in = vec![false; log.resets.len()];
    let (mut i, mut j) = (0, 0);
    // Both sorted: walk them together.
    while i < expected.len() || j < got.len() {
        if j == got.len() || (i < expected.len() && expected[i] < got[j]) {
            let m = expected[i];
            i += 1;
            let r = log.resets.partition_point(|r| r.to < m);
            let Some(mark) = log.resets.get(r).filter(|r| r.from < m) else {
                v.add(format!(
                    "subscriber {id}: message {m} missing, no reset covered it (channels {:?})",
                    log.chans.as_slice()
                ));
                continue;
            };
            let mm = mask(table, &log.chans, m);
            let older_delivered = got[mark.first..mark.end]
                .iter()
                .find(|&&k| k < m && mask(table, &log.chans, k) & !mm == 0);
            if let Some(k) = older_delivered {
                v.add(format!(
                    "subscriber {id}: a reset answer skipped {m} but delivered the older {k} of \
                     the same channels (cursor {} to {}, channels {:?})",
                    mark.from,
                    mark.to,
                    log.chans.as_slice()
                ));
                continue;
            }
            gap_in[r] = true;
            t.excused += 1;
        } else if i == expected.len() || got[j] < expected[i] {
            v.add(format!(
                "subscriber {id}: received {} which is not one of its messages (channels {:?})",
                got[j],
                log.chans.as_slice()
            ));
            j += 1;
        } else {
            t.matched += 1;
            i += 1;
            j += 1;
        }
    }
    for (mark, gap) in log.resets.iter().zip(&gap_in) {
        if !gap {
            t.resets_without_gap += 1;
            // A full answer may stop before the gap, which the next answer then shows.
            t.full_resets_without_gap += u64::from(mark.end - mark.first == MAX_PER_ANSWER);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn run(o: &Opts) -> i32 {
    let dir = std::env::temp_dir().join(format!("pnsd-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("soak: cannot create {}: {e}", dir.display());
        return 1;
    }
    let code = match start_server(o, &dir) {
        Ok(server) => soak(o, server),
        Err(e) => {
            eprintln!("soak: {e}");
            1
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn soak(o: &Opts, mut server: Server) -> i32 {
    let pid = server.child.id();
    // The epoch of this run, from a hold=0 poll without cursor.
    let epoch = http_once(server.addr, "/pns/poll?channel=soak:0&hold=0")
        .and_then(|b| serde_json::from_str::<Value>(&b).map_err(|e| e.to_string()))
        .ok()
        .and_then(|v| v["cursor"].as_str().and_then(cursor::decode))
        .map(|c| c.epoch);
    let Some(epoch) = epoch else {
        eprintln!("soak: cannot learn the server's epoch with a first poll");
        let _ = server.child.kill();
        let _ = server.child.wait();
        return 1;
    };
    let secs = o.duration.as_secs_f64();
    let per_pub = o.rate / o.publishers as f64;
    // Room for 50% more messages than planned plus slack; a publisher stops at its cap.
    let cap = (per_pub * secs * 1.5) as usize + 10_000;
    let ctx = Arc::new(Ctx {
        addr: server.addr,
        socket: server.socket.clone(),
        epoch,
        work: Workload::new(o.seed, o.channels, o.rate),
        publishers: o.publishers,
        p_close: o.p_close,
        acks: (0..o.publishers)
            .map(|_| (0..cap).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        stop_publish: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        t0: Instant::now(),
        counters: Counters::default(),
    });
    // The main thread's violations; the threads' are merged in when they end.
    let mut v = Violations::new(&ctx.counters.violations);
    println!(
        "soak: seed {} | {:.1} min | server threads {} | {} subscribers on {} channels | \
         {} publishers at {} msg/s | buffer {}",
        o.seed,
        secs / 60.0,
        o.server_threads,
        o.subscribers,
        o.channels,
        o.publishers,
        o.rate,
        o.buffer
    );
    let pubs: Vec<_> = (0..o.publishers)
        .map(|p| {
            let c = Arc::clone(&ctx);
            thread::spawn(move || publisher(c, p, per_pub))
        })
        .collect();
    let workers: Vec<_> = (0..o.client_threads)
        .map(|w| {
            let c = Arc::clone(&ctx);
            let ids: Vec<usize> = (0..o.subscribers)
                .filter(|i| i % o.client_threads == w)
                .collect();
            let (total, seed) = (o.subscribers, o.seed ^ 0xA5A5_0000 ^ w as u64);
            thread::spawn(move || subscriber_thread(c, ids, total, seed))
        })
        .collect();

    // Monitor: samples RSS, prints progress, watches the server.
    let warmup = o.warmup.unwrap_or(DEFAULT_WARMUP).min(o.duration / 4);
    let t0 = ctx.t0;
    let cpu0 = cpu_secs(&pid.to_string()).unwrap_or(0.0);
    let mut warm: Option<(u64, f64, Option<usize>)> = None;
    let mut rss_min = u64::MAX;
    let mut rss_max = 0;
    let mut next_sample = t0 + SAMPLE_EVERY;
    let mut died = None;
    while t0.elapsed() < o.duration {
        thread::sleep(Duration::from_millis(200));
        if let Ok(Some(status)) = server.child.try_wait() {
            died = Some(status);
            break;
        }
        if warm.is_none() && t0.elapsed() >= warmup {
            if let (Some(r), Some(c)) = (rss_kib(pid), cpu_secs(&pid.to_string())) {
                warm = Some((r, c, open_fds(pid)));
                eprintln!(
                    "soak: warm-up sample at {:.0} s: RSS {r} KiB",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let r = rss_kib(pid).unwrap_or(0);
            if warm.is_some() {
                rss_min = rss_min.min(r);
                rss_max = rss_max.max(r);
            }
            let k = &ctx.counters;
            eprintln!(
                "soak: t={:>4.0}s acked={} answers={} delivered={} resets={} connects={} \
                 hangups={} violations={} rss={r}KiB",
                t0.elapsed().as_secs_f64(),
                get(&k.acked),
                get(&k.answers),
                get(&k.delivered),
                get(&k.resets),
                get(&k.connects),
                get(&k.hangups),
                get(&k.violations),
            );
        }
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let end_rss = rss_kib(pid);
    let end_cpu = cpu_secs(&pid.to_string());
    let end_fds = open_fds(pid);
    if let Some(status) = died {
        v.add(format!(
            "the server exited during the soak ({status}); stderr: {}",
            read_tail(&server.stderr)
        ));
        ctx.abort.store(true, Ordering::Relaxed);
    }

    ctx.stop_publish.store(true, Ordering::Relaxed);
    let mut pub_out = Vec::new();
    for h in pubs {
        match h.join() {
            Ok(out) => pub_out.push(out),
            Err(_) => v.add("a publisher thread panicked".into()),
        }
    }
    ctx.draining.store(true, Ordering::Relaxed);
    let drain_start = Instant::now();
    let mut logs = Vec::new();
    let mut deferred = Vec::new();
    for h in workers {
        match h.join() {
            Ok(w) => {
                logs.extend(w.logs);
                deferred.extend(w.deferred);
                v.merge(w.violations);
            }
            Err(_) => v.add("a subscriber thread panicked".into()),
        }
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let stats = publish_request(&server.socket, r#"{"op":"stats"}"#);

    // SIGTERM, then the server must exit 0 within EXIT_WAIT.
    let exit = if died.is_none() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let sent = Instant::now();
        loop {
            match server.child.try_wait() {
                Ok(Some(st)) => break Some((st, sent.elapsed())),
                Ok(None) if sent.elapsed() < EXIT_WAIT => thread::sleep(Duration::from_millis(10)),
                _ => break None,
            }
        }
    } else {
        None
    };
    let exit_line = match exit {
        Some((st, t)) if st.success() => format!("exit 0, {} ms after SIGTERM", t.as_millis()),
        Some((st, t)) => {
            v.add(format!("the server exited with {st} after SIGTERM"));
            format!("{st} after {} ms", t.as_millis())
        }
        None if died.is_some() => "died during the soak".into(),
        None => {
            v.add(format!(
                "the server did not exit within {EXIT_WAIT:?} of SIGTERM"
            ));
            let _ = server.child.kill();
            let _ = server.child.wait();
            "killed".into()
        }
    };

    // The final check.
    for p in &pub_out {
        v.merge(p.violations.clone());
    }
    let table = build_table(&ctx, &pub_out, &mut v);
    for &(p, n, seq) in &deferred {
        let acked = pub_out.get(p).and_then(|o| o.seqs.get(n as usize)).copied();
        if acked != Some(seq) {
            v.add(format!(
                "message {p}/{n} delivered as {seq}, acked as {acked:?}"
            ));
        }
    }
    let mut t = Tally::default();
    if died.is_none() {
        for log in &logs {
            verify_sub(log, &table, &mut t, &mut v);
        }
    }
    let published: u64 = pub_out.iter().map(|p| p.seqs.len() as u64).sum();
    let sent: u64 = pub_out.iter().map(|p| p.sent).sum();
    let with_messages = get(&ctx.counters.answers) - get(&ctx.counters.empty_answers);
    match &stats {
        Ok(s) => {
            if s["published"].as_u64() != Some(published) {
                v.add(format!(
                    "stats say published={}, acks {published}",
                    s["published"]
                ));
            }
            // The server counts answers sent; some were lost to hang-ups, none invented.
            if s["delivered"].as_u64().is_none_or(|d| d < with_messages) {
                v.add(format!(
                    "stats say delivered={}, but the subscribers read {with_messages} answers \
                     carrying messages",
                    s["delivered"]
                ));
            }
        }
        Err(e) => v.add(format!("stats request failed: {e}")),
    }
    if t.long_returns > 0 && t.long_resets == 0 {
        v.add(format!(
            "{} returns after a long absence, none was told reset",
            t.long_returns
        ));
    }

    // RSS.
    let rss_line = match (warm, end_rss) {
        (Some((w, _, _)), Some(e)) => {
            let growth = (e as f64 - w as f64) / w as f64;
            if warmup < MIN_CHECKED_WARMUP {
                eprintln!("soak: warm-up under {MIN_CHECKED_WARMUP:?}: RSS reported, not checked");
            } else if growth > RSS_TOLERANCE {
                v.add(format!(
                    "RSS grew {:.1}% from warm-up ({w} KiB) to end ({e} KiB), over {:.0}%",
                    growth * 100.0,
                    RSS_TOLERANCE * 100.0
                ));
            }
            format!(
                "warm-up {w} KiB at {:.0} s, end {e} KiB ({:+.1}%), min/max after warm-up \
                 {}/{} KiB",
                warmup.as_secs_f64(),
                growth * 100.0,
                rss_min.min(e),
                rss_max.max(e)
            )
        }
        _ => {
            v.add("no RSS sample after warm-up and at the end".into());
            "not sampled".into()
        }
    };
    let cpu_line = match (warm, end_cpu) {
        (Some((_, wc, _)), Some(ec)) => {
            let steady = load_secs - warmup.as_secs_f64();
            format!(
                "server {:.1} s over the load phase ({:.0}% of one core), {:.0}% after \
                 warm-up; harness {:.1} s",
                ec - cpu0,
                (ec - cpu0) / load_secs * 100.0,
                (ec - wc) / steady.max(1.0) * 100.0,
                cpu_secs("self").unwrap_or(0.0)
            )
        }
        _ => "not sampled".into(),
    };
    let k = &ctx.counters;
    let max_ack = pub_out
        .iter()
        .map(|p| p.max_ack_latency)
        .max()
        .unwrap_or_default();
    println!(
        "soak: published {published} messages (sent {sent}, {:.0} msg/s over {load_secs:.0} s), \
              longest ack wait {} ms",
        published as f64 / load_secs,
        max_ack.as_millis()
    );
    println!(
        "soak: delivered {} messages in {} answers ({} empty); {} connections, {} hang-ups, \
         {} long absences",
        get(&k.delivered),
        get(&k.answers),
        get(&k.empty_answers),
        get(&k.connects),
        get(&k.hangups),
        get(&k.long_absences)
    );
    println!(
        "soak: checked {} subscribers: {} of {} expected deliveries received, {} skipped under \
         {} resets ({} resets with no visible gap, {} of them full answers); {} of {} returns \
         after a long absence were told reset",
        t.subscribers_checked,
        t.matched,
        t.expected,
        t.excused,
        t.resets,
        t.resets_without_gap,
        t.full_resets_without_gap,
        t.long_resets,
        t.long_returns
    );
    println!("soak: RSS {rss_line}");
    println!(
        "soak: open fds warm-up {:?}, end {:?}",
        warm.and_then(|w| w.2),
        end_fds
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "soak: CPU {cpu_line}; load average at the end {}",
        load.trim()
    );
    println!("soak: final drain {drain_secs:.1} s; server {exit_line}");
    if let Ok(s) = &stats {
        println!("soak: server stats at the end: {s}");
    }
    let total = get(&k.violations);
    if total == 0 {
        println!("soak: OK, no violation");
        return 0;
    }
    for (kind, (n, examples)) in &v.groups {
        println!("soak: VIOLATION x{n}: {kind}");
        for e in examples {
            println!("soak:     e.g. {e}");
        }
    }
    println!(
        "soak: FAILED, {total} violations of {} kinds",
        v.groups.len()
    );
    1
}
