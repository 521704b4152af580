//! A crowd of subscribers: their connections, channels and cursors, and `settle`, the wait
//! until every one of them is parked at the server.
//!
//! Invariants: a subscriber's cursor only advances through answers it has read; `settle`
//! returns only when every subscriber's request is written, no answer arrived for `QUIET`, the
//! kernel shows no unread request bytes on the server's side, and (pnsd exactly, nchan after a
//! grace period) the server's own parked count equals the crowd; otherwise it fails at its
//! deadline saying what was still missing. Answers that arrive while settling are read and
//! re-polled at once.

use crate::args::{Options, Target};
use crate::dialect::{self, Cursor};
use crate::procfs;
use crate::publisher::Publisher;
use crate::reactor::{Completion, Reactor};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Settle deadline: a fixed part plus a per-connection part (15,000 connections -> 90 s),
/// generous for a 2-core machine where the server and the load generator share the CPU.
const SETTLE_BASE: Duration = Duration::from_secs(30);
const SETTLE_PER_CONN: Duration = Duration::from_millis(4);
/// "The server is quiet": no subscriber byte for this long.
const QUIET: Duration = Duration::from_millis(250);
/// How often the parked checks run while settling: reading /proc/net/tcp with 30,000 sockets
/// costs the kernel about 0.1 s, so at most a fifth of one core goes to checking.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Reactor turn length while waiting; short enough for a prompt deadline check.
pub const TICK: Duration = Duration::from_millis(10);
/// Error answers (4xx/5xx, bad bodies) tolerated in one wait before it gives up: one per
/// subscriber, at least this many, so a server refusing every poll fails fast instead of being
/// re-polled in a tight loop until the deadline.
const MIN_ERROR_BUDGET: usize = 100;
/// How long a non-pnsd server's parked count may disagree once the kernel shows every request
/// read and no answer has come (nchan's count does not add up across workers).
const ADVISORY_GRACE: Duration = Duration::from_secs(3);
/// How often progress is noted on stderr during long waits.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Prints a progress line on stderr (stdout carries only the table).
macro_rules! note {
    ($($arg:tt)*) => { eprintln!("loadgen: {}", format_args!($($arg)*)) };
}
pub(crate) use note;

/// A channel name unique to this run, so earlier runs' messages never interfere.
pub fn channel_name(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("lg-{:x}-{nanos:x}-{what}", std::process::id())
}

/// The publisher for this dialect: pnsd's Unix socket (one connection, `depth` unacked), or
/// `lanes` HTTP connections with `depth` pipelined POSTs each.
pub fn make_publisher(
    o: &Options,
    r: &Reactor,
    lanes: usize,
    depth: usize,
) -> Result<Publisher, String> {
    match (o.target, o.publish_url.as_ref()) {
        (Target::Pnsd, _) => Publisher::unix(r.registry(), &o.publish_socket, depth),
        (_, Some(u)) => Publisher::http(r.registry(), u.addr, lanes, depth),
        (_, None) => Err("--publish-url is required for this target".into()),
    }
}

/// Subscribers with their channels and cursors, on one reactor.
pub struct Crowd {
    pub reactor: Reactor,
    pub channels: Vec<String>,
    /// Client i subscribes to `channels[i % channels.len()]`.
    cursors: Vec<Cursor>,
    request: Vec<u8>,
    /// Answers of the last `turn`.
    pub done: Vec<Completion>,
    /// The seqs of the answer last `read`.
    pub seqs: Vec<u64>,
    /// Polls the server must show parked (and connections established) before `settle`
    /// returns: this crowd's own by default, all crowds' when several share the server.
    pub expect_parked: usize,
}

impl Crowd {
    pub fn new(o: &Options, n: usize, channels: Vec<String>) -> Result<Crowd, String> {
        Ok(Crowd {
            reactor: Reactor::new(&o.addrs, n).map_err(|e| format!("cannot create poller: {e}"))?,
            channels,
            cursors: vec![Cursor::default(); n],
            request: Vec::new(),
            done: Vec::new(),
            seqs: Vec::new(),
            expect_parked: n,
        })
    }

    /// A crowd of `n` on one fresh channel, every poll parked.
    pub fn parked(o: &Options, n: usize, what: &str) -> Result<Crowd, String> {
        let mut c = Crowd::new(o, n, vec![channel_name(what)])?;
        c.poll_all(o)?;
        c.settle(o, what)?;
        Ok(c)
    }

    fn channel_of(&self, i: usize) -> usize {
        i % self.channels.len()
    }

    /// Sends client `i`'s next poll from its cursor.
    pub fn poll(&mut self, o: &Options, i: usize) -> Result<(), String> {
        let ch = &self.channels[self.channel_of(i)];
        dialect::poll_request(o, ch, &self.cursors[i], &mut self.request);
        self.reactor.send(i, &self.request)
    }

    pub fn poll_all(&mut self, o: &Options) -> Result<(), String> {
        for i in 0..self.reactor.len() {
            self.poll(o, i)?;
        }
        Ok(())
    }

    /// Reads answer `c` (cursor advanced, `self.seqs` holds its seqs).
    pub fn read(&mut self, o: &Options, c: &Completion) -> dialect::Answer {
        self.seqs.clear();
        dialect::read_answer(
            o.target,
            &c.response,
            &mut self.cursors[c.client],
            &mut self.seqs,
        )
    }

    /// One reactor turn; answers are left in `self.done`.
    pub fn turn(&mut self, timeout: Duration) -> Result<(), String> {
        self.reactor.turn(timeout, &mut self.done)
    }

    /// Waits until every client is parked (module invariants); answers meanwhile re-poll.
    pub fn settle(&mut self, o: &Options, what: &str) -> Result<(), String> {
        let n = self.reactor.len();
        let start = Instant::now();
        let deadline = start + SETTLE_BASE + SETTLE_PER_CONN * n as u32;
        let mut next_check = start;
        let mut next_note = start + PROGRESS_EVERY;
        let mut why = String::from("not checked yet");
        let mut kernel_ok_since: Option<Instant> = None;
        let mut errors = 0;
        loop {
            let now = Instant::now();
            if now > deadline {
                return Err(format!(
                    "{what}: polls not all parked after {:.0} s: {} of {n} written and unanswered; {why}",
                    (now - start).as_secs_f64(),
                    self.reactor.awaiting()
                ));
            }
            if now > next_note {
                next_note = now + PROGRESS_EVERY;
                note!(
                    "{what}: parking: {} of {n} written; {why}",
                    self.reactor.awaiting()
                );
            }
            self.turn(TICK)?;
            let (_, last) = self
                .repoll_done(o, &mut errors)
                .map_err(|e| format!("{what}: {e}"))?;
            if let Some(e) = last {
                why = format!("last answer while parking: {e}");
            }
            if self.reactor.awaiting() < n || self.reactor.quiet_for() < QUIET || now < next_check {
                continue;
            }
            next_check = now + CHECK_EVERY;
            if let Some((established, unread, _)) =
                procfs::sockets_all(&o.addrs, procfs::End::Server)?
            {
                if established < self.expect_parked || unread > 0 {
                    kernel_ok_since = None;
                    why = format!(
                        "kernel: {established} server-side connections, {unread} with unread bytes"
                    );
                    continue;
                }
            }
            if let Some(p) = dialect::server_parked(o, &self.channels)? {
                if p != self.expect_parked as u64 {
                    why = format!("server reports {p} parked");
                    // pnsd's count is exact. nchan's per-channel count is not (with 2 workers
                    // it was seen stuck at 6,696 of 15,000 parked): after a grace period the
                    // kernel's word is enough.
                    // With several nodes the publish side asks one of them only.
                    let advisory = o.target != Target::Pnsd || o.addrs.len() > 1;
                    let since = *kernel_ok_since.get_or_insert(now);
                    if !advisory || now - since < ADVISORY_GRACE {
                        continue;
                    }
                    note!(
                        "{what}: server count {p} of {} (advisory for {}), going on",
                        self.expect_parked,
                        o.target.name()
                    );
                }
            }
            note!(
                "{what}: {n} polls parked in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
    }

    /// Turns the reactor for `d`, re-polling any answer; returns how many answers came.
    pub fn hold_for(&mut self, o: &Options, d: Duration) -> Result<u64, String> {
        let end = Instant::now() + d;
        let mut answers = 0;
        let mut errors = 0;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(answers);
            }
            self.turn((end - now).min(Duration::from_secs(1)))?;
            answers += self.repoll_done(o, &mut errors)?.0;
        }
    }

    /// Reads the answers of the last `turn` and polls again for each. Error answers count in
    /// `errors`; beyond the budget (one per subscriber, at least `MIN_ERROR_BUDGET`) this
    /// fails. Returns how many answers there were and the last error's text.
    fn repoll_done(
        &mut self,
        o: &Options,
        errors: &mut usize,
    ) -> Result<(u64, Option<String>), String> {
        let done = std::mem::take(&mut self.done);
        let mut last = None;
        for c in &done {
            if let Some(e) = self.read(o, c).error {
                *errors += 1;
                if *errors > self.reactor.len().max(MIN_ERROR_BUDGET) {
                    return Err(format!("{errors} error answers; last: {e}"));
                }
                last = Some(e);
            }
            self.poll(o, c.client)?;
        }
        let answers = done.len() as u64;
        self.done = done;
        self.done.clear();
        Ok((answers, last))
    }
}
