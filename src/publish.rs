//! The publish socket's thread: socket I/O only. It accepts publisher connections, reads
//! their bytes, hands each line to `line` (framing, parsing, answer lines), each publish and
//! session op to `ingest` (the store, the session table), each stats request to `stats`, writes the answers, and drains.
//!
//! Invariants:
//! - Answers go out in line order per connection; every line gets exactly one answer, except
//!   an unterminated last line at hang-up, which is discarded, never published.
//! - A publish is acknowledged only after `ingest` returned, i.e. after the message is in its
//!   channel buffers: a poll that arrives after the ack sees it. In fleet mode (`fleet`) the
//!   lines go to Redis instead, a connection's consecutive publish lines as one pipelined run,
//!   and are acked once the feed put them in this node's store (`fleet_publish`).
//! - A stats request never holds up another connection: while its reactors' replies are
//!   awaited, its own connection is neither read nor answered further (line order), and every
//!   other connection is served.
//! - Per connection at most `MAX_LINE` + a turn's reads of input and `MAX_OUT` of unsent
//!   answers are held; past `MAX_OUT` the connection is not read until its answers drain.
//! - At most `max_publishers` connections are served; one more is accepted, sent one error
//!   line and closed, so its script sees why; connections already served are unaffected.
//!
//! The I/O steps (`read_into`, `flush`, `accept`) are kept together so they can move onto the
//! shared socket layer.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::backoff::{self, AcceptBackoff};
use crate::fleet_publish::FleetRoute;
use crate::ingest::{Batch, Ingest};
use crate::line::{self, Frame, Framer, Request};
use crate::stats::{PendingStats, STATS_WAIT};

mod image;
pub use image::{Control, PublishImage};

/// Unsent answers after which a publisher that does not read them is not read either.
pub const MAX_OUT: usize = 1 << 20;
/// Bytes read from one publisher per read call, and reads per turn before others get theirs.
const READ_CHUNK: usize = 64 * 1024;
const READS_PER_TURN: usize = 4;
/// How often expired messages are swept from the store.
const SWEEP_MS: u64 = 1000;
/// Expired messages dropped per write-lock hold of the sweep: about 0.15 ms of work with a
/// million channels (benches/store.rs), so a poll never waits behind the sweep for long.
const SWEEP_SLICE: usize = 256;
/// Pause between two sweep slices: the write lock is free at least 1 ms in every ~1.2 ms while
/// a long sweep runs (about 200,000 expired channels a second).
const SWEEP_GAP_MS: u64 = 1;
/// How long a refused connection is kept (write side shut) so the line its client sent
/// right after connecting is read before the close: closing first would turn that client's
/// write into EPIPE before it reads why it was refused.
const REFUSED_LINGER: Duration = Duration::from_millis(200);
/// Refused connections kept lingering at once; more are closed at once (a connect flood).
const MAX_REFUSED_LINGERING: usize = 16;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const CONN_BASE: usize = 2;

#[derive(Debug)]
struct PubConn {
    sock: UnixStream,
    input: Vec<u8>,
    framer: Framer,
    out: Vec<u8>,
    out_pos: usize,
    readable: bool,
    eof: bool,
    /// A stats line is awaited from `stats`; the lines after it wait.
    stats_pending: bool,
    /// It asked for an upgrade (`upgrade`): the lines after it wait for the answer, written
    /// by the new process or, after a failure, by this one.
    asked_upgrade: bool,
}

impl PubConn {
    /// Its next line waits for an answer from elsewhere (stats replies, the upgrade).
    fn waits_for_answer(&self) -> bool {
        self.stats_pending || self.asked_upgrade
    }
}

/// See the module documentation.
pub struct Publisher {
    poll: Poll,
    listener: Option<UnixListener>,
    conns: Slab<PubConn>,
    ingest: Ingest,
    stats: PendingStats<usize>,
    max_publishers: usize,
    refused: Vec<(UnixStream, Instant)>,
    drain: Receiver<()>,
    /// Freeze and thaw around an upgrade (`image`).
    control: Receiver<Control>,
    /// Connections to serve at the first turn (carried over by an upgrade).
    adopted: Vec<usize>,
    /// The one read buffer of this thread, zeroed once; bytes read are appended to the
    /// publisher's input, so a read costs no per-call zeroing or allocation.
    scratch: Box<[u8]>,
    next_sweep: u64,
    accept_backoff: AcceptBackoff,
    /// Fleet mode: publish lines go to Redis, not to `ingest`.
    fleet: Option<FleetRoute>,
}

/// How the main thread reaches the publish thread: a drain request, the upgrade's freeze and
/// thaw.
pub struct PublisherLink {
    pub drain: mpsc::Sender<()>,
    pub control: mpsc::Sender<Control>,
    pub waker: Arc<mio::Waker>,
}

impl Publisher {
    pub fn new(
        mut listener: UnixListener,
        ingest: Ingest,
    ) -> io::Result<(Publisher, PublisherLink)> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (tx, rx) = mpsc::channel();
        let (control_tx, control) = mpsc::channel();
        let hub = ingest.hub();
        let next_sweep = hub.clock.now_ms() + SWEEP_MS;
        let max_publishers = hub.config.max_publishers;
        Ok((
            Publisher {
                poll,
                listener: Some(listener),
                conns: Slab::new(),
                ingest,
                stats: PendingStats::new(waker.clone(), STATS_WAIT),
                max_publishers,
                refused: Vec::new(),
                drain: rx,
                control,
                adopted: Vec::new(),
                scratch: vec![0; READ_CHUNK].into_boxed_slice(),
                next_sweep,
                accept_backoff: AcceptBackoff::default(),
                fleet: None,
            },
            PublisherLink {
                drain: tx,
                control: control_tx,
                waker,
            },
        ))
    }

    /// Fleet mode: publish lines go to Redis through `route` from now on.
    pub fn route_to_fleet(&mut self, route: FleetRoute) {
        self.fleet = Some(route);
    }

    /// Runs until drained.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut again: Vec<usize> = std::mem::take(&mut self.adopted);
        let ingest = self.ingest.clone();
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(self.timeout(&again))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("publish poll failed: {e}");
                }
                continue;
            }
            let mut work: Vec<usize> = std::mem::take(&mut again);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(t) => {
                        let key = t - CONN_BASE;
                        if let Some(c) = self.conns.get_mut(key) {
                            if ev.is_readable() || ev.is_read_closed() {
                                c.readable = true;
                            }
                            work.push(key);
                        }
                    }
                }
            }
            work.sort_unstable();
            work.dedup();
            {
                // One batch per turn: the reactors hear of this turn's publishes at its end
                // (or per slice), and the store lock is released before each connection's I/O.
                let mut batch = ingest.batch();
                for key in work {
                    if self.serve(key, &mut batch) {
                        again.push(key);
                    }
                }
            }
            self.answer_stats(false, &mut again);
            self.linger_refused(false);
            let now = ingest.hub().clock.now_ms();
            if self.accept_backoff.resume(now) {
                self.accept();
            }
            if now >= self.next_sweep {
                // One bounded slice per turn, then a gap: polls read and publishes go on between
                // slices (a writer taking the lock again at once can starve the readers).
                let more = ingest.sweep(SWEEP_SLICE);
                self.next_sweep = now + if more { SWEEP_GAP_MS } else { SWEEP_MS };
            }
            match self.drain.try_recv() {
                Ok(()) | Err(TryRecvError::Disconnected) => {
                    self.drain();
                    return;
                }
                Err(TryRecvError::Empty) => {}
            }
            if let Ok(Control::Freeze(reply)) = self.control.try_recv() {
                self.freeze(reply, &mut again);
            }
        }
    }

    /// How long the next poll may wait: until the sweep, a stats deadline, a lingering
    /// refusal or the end of an accept pause, or not at all with work left over.
    fn timeout(&self, again: &[usize]) -> Duration {
        if !again.is_empty() {
            return Duration::ZERO;
        }
        let to_sweep = self
            .next_sweep
            .saturating_sub(self.ingest.hub().clock.now_ms());
        let mut t = if self.accept_backoff.is_paused() {
            Duration::from_millis(backoff::PAUSE_MS)
        } else {
            Duration::from_millis(to_sweep.min(SWEEP_MS))
        };
        let now = Instant::now();
        let deadlines = self.stats.next_deadline().into_iter();
        for d in deadlines.chain(self.refused.iter().map(|r| r.1)) {
            t = t.min(d.saturating_duration_since(now));
        }
        t
    }

    fn accept(&mut self) {
        if self.accept_backoff.is_paused() {
            return;
        }
        // Bounded: the backlog is finite and each pass takes one connection or stops.
        while let Some(l) = self.listener.as_ref() {
            match l.accept() {
                Ok((sock, _)) if self.conns.len() >= self.max_publishers => self.refuse(sock),
                Ok((mut sock, _)) => {
                    let entry = self.conns.vacant_entry();
                    let token = Token(CONN_BASE + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(PubConn {
                            sock,
                            input: Vec::new(),
                            framer: Framer::default(),
                            out: Vec::new(),
                            out_pos: 0,
                            readable: true,
                            eof: false,
                            stats_pending: false,
                            asked_upgrade: false,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the waiting publisher stays in the backlog and no new
                    // edge will come for it, so retry after a pause.
                    self.accept_backoff
                        .failed(self.ingest.hub().clock.now_ms(), "publish", &e);
                    return;
                }
            }
        }
    }

    /// A connection over `max_publishers`: one error line, then closed (after a short linger).
    fn refuse(&mut self, mut sock: UnixStream) {
        debug!("refusing a publisher: {} connected", self.conns.len());
        let mut answer = Vec::new();
        line::error_line(
            &mut answer,
            &format!(
                "too many publisher connections (--max-publishers {})",
                self.max_publishers
            ),
        );
        // The socket is new and its send buffer empty: one short write goes through whole.
        let _ = sock.write(&answer);
        let _ = sock.shutdown(Shutdown::Write);
        if self.refused.len() < MAX_REFUSED_LINGERING {
            self.refused.push((sock, Instant::now() + REFUSED_LINGER));
            self.linger_refused(false);
        }
    }

    /// Reads and drops what refused connections send; closes each at EOF or its deadline.
    fn linger_refused(&mut self, now_all: bool) {
        let now = Instant::now();
        let scratch = &mut self.scratch;
        self.refused.retain_mut(|(sock, until)| {
            let open = matches!(read_into(sock, scratch), Ok(Some(_)) | Err(None));
            open && !now_all && now < *until
        });
    }

    /// Reads, answers and writes for one publisher; true when it has more to do at once.
    fn serve(&mut self, key: usize, batch: &mut Batch) -> bool {
        let mut reads = 0;
        loop {
            self.lines(key, batch);
            let Some(c) = self.conns.get_mut(key) else {
                return false;
            };
            if !flush(c) {
                self.close(key);
                return false;
            }
            if c.eof && !c.waits_for_answer() && c.out_pos == c.out.len() {
                // An unterminated last line is discarded, never published.
                self.close(key);
                return false;
            }
            if c.waits_for_answer() || c.out.len() - c.out_pos > MAX_OUT || !c.readable || c.eof {
                return false;
            }
            if reads == READS_PER_TURN {
                return true;
            }
            reads += 1;
            match read_into(&mut c.sock, &mut self.scratch) {
                Ok(Some(bytes)) => c.input.extend_from_slice(bytes),
                Ok(None) => {
                    c.eof = true;
                    c.readable = false;
                }
                Err(None) => c.readable = false,
                Err(Some(_)) => {
                    self.close(key);
                    return false;
                }
            }
        }
    }

    /// Answers every complete line in the connection's input, up to a stats request.
    fn lines(&mut self, key: usize, batch: &mut Batch) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.waits_for_answer() {
            return;
        }
        let mut start = 0;
        let mut errors = 0;
        let mut id = String::with_capacity(crate::cursor::MAX_LEN);
        while let Some(frame) = c.framer.next(&c.input, &mut start) {
            let parsed = match frame {
                Frame::Line(text) => line::parse_line(text),
                Frame::TooLong => Err(line::too_long_error()),
            };
            // Fleet mode: a run of publish lines goes to Redis as one pipeline; any other line
            // sends the run first, so answers keep line order.
            if let Some(route) = &mut self.fleet {
                match parsed {
                    Ok(Request::Publish(p)) => {
                        route.push(p);
                        continue;
                    }
                    _ => errors += route.flush(&mut c.out),
                }
            }
            match parsed {
                Ok(Request::Publish(p)) => match batch.publish(p) {
                    Ok(accepted) => {
                        id.clear();
                        crate::cursor::encode_into(&mut id, accepted.epoch, accepted.seq);
                        line::ack_line(&mut c.out, &id);
                    }
                    Err(refused) => {
                        errors += 1;
                        line::error_line(&mut c.out, &refused.to_string())
                    }
                },
                Ok(Request::Stats) => {
                    let (hub, reactors) = (self.ingest.hub(), self.ingest.reactors());
                    self.stats.ask(key, hub, reactors, Instant::now());
                    c.stats_pending = true;
                    break;
                }
                Ok(Request::Upgrade) => {
                    // The main thread runs the upgrade (as for SIGUSR2) and freezes this
                    // thread; the answer comes from the process that serves afterwards.
                    c.asked_upgrade = true;
                    if let Err(e) = signal_hook::low_level::raise(libc::SIGUSR2) {
                        c.asked_upgrade = false;
                        line::error_line(&mut c.out, &format!("cannot start the upgrade: {e}"));
                        continue;
                    }
                    break;
                }
                Ok(Request::Session {
                    sid,
                    channels,
                    ttl_secs,
                }) => {
                    batch.release();
                    match self.ingest.register_session(&sid, channels, ttl_secs) {
                        Ok(()) => line::ok_line(&mut c.out),
                        Err(e) => line::error_line(&mut c.out, &e.to_string()),
                    }
                }
                Ok(Request::EndSession { sid }) => {
                    if self.ingest.end_session(&sid) {
                        line::ok_line(&mut c.out);
                    } else {
                        line::error_line(&mut c.out, &format!("no such session {sid:?}"));
                    }
                }
                Err(e) => {
                    errors += 1;
                    line::error_line(&mut c.out, &e)
                }
            }
        }
        if let Some(route) = &mut self.fleet {
            errors += route.flush(&mut c.out);
        }
        if errors > 0 {
            let counters = &self.ingest.hub().counters;
            counters.publish_errors.fetch_add(errors, Ordering::Relaxed);
        }
        batch.release();
        c.input.drain(..start);
        if !c.waits_for_answer() {
            c.framer.keep_tail(&mut c.input);
        }
        // A burst or a long line grew the buffer; an idle publisher keeps at most a read's worth.
        if c.input.capacity() > 2 * READ_CHUNK && c.input.len() <= READ_CHUNK {
            c.input.shrink_to(READ_CHUNK);
        }
    }

    /// Writes the stats lines whose replies are in (all of them when `force`) and queues their
    /// connections for the lines behind.
    fn answer_stats(&mut self, force: bool, again: &mut Vec<usize>) {
        if self.stats.is_empty() {
            return;
        }
        let conns = &mut self.conns;
        let hub = self.ingest.hub();
        self.stats
            .collect(hub, Instant::now(), force, |key, stats_line| {
                if let Some(c) = conns.get_mut(key) {
                    c.out.extend_from_slice(stats_line);
                    c.stats_pending = false;
                    again.push(key);
                }
            });
    }

    fn close(&mut self, key: usize) {
        if self.conns.contains(key) {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.sock);
            self.stats.forget(key);
        }
    }

    /// Section 6: stop accepting, answer what was received, flush, close.
    fn drain(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.linger_refused(true);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let ingest = self.ingest.clone();
        let mut batch = ingest.batch();
        // A stats request is answered with the replies in so far; the lines behind it follow.
        loop {
            for &k in &keys {
                self.lines(k, &mut batch);
            }
            if self.stats.is_empty() {
                break;
            }
            batch.release(); // the stats line reads the store
            self.answer_stats(true, &mut Vec::new());
        }
        batch.finish();
        // Give slow readers a bounded moment to take their acks.
        let deadline = Instant::now() + Duration::from_millis(500);
        for k in keys {
            if let Some(c) = self.conns.get_mut(k) {
                while c.out_pos < c.out.len() && Instant::now() < deadline {
                    if !flush(c) {
                        break;
                    }
                    if c.out_pos < c.out.len() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            self.close(k);
        }
    }
}

/// One read: `Ok(Some(bytes))`, `Ok(None)` at EOF, `Err(None)` when it would block, and
/// `Err(Some(e))` on a dead socket; an interrupted read is retried.
fn read_into<'a>(
    sock: &mut UnixStream,
    scratch: &'a mut [u8],
) -> Result<Option<&'a [u8]>, Option<io::Error>> {
    loop {
        match sock.read(scratch) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(scratch.get(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Some(e)),
        }
    }
}

/// Writes a publisher's pending answers; false on a dead socket.
fn flush(c: &mut PubConn) -> bool {
    while c.out_pos < c.out.len() {
        match c.sock.write(&c.out[c.out_pos..]) {
            Ok(0) => return false,
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.out.clear();
    c.out_pos = 0;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hub::{Command, Hub, ReactorLink};
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream as Client;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    /// Bound on every wait of these tests; they wait for conditions, not for time.
    const WAIT: Duration = Duration::from_secs(10);

    /// A publish thread on a real socket, with one reactor stand-in whose commands the test
    /// reads (and answers, or not); stats requests wait for replies without a deadline.
    struct Running {
        path: PathBuf,
        link: PublisherLink,
        commands: mpsc::Receiver<Command>,
        thread: Option<JoinHandle<()>>,
        _reactor_poll: Poll,
    }

    impl Running {
        fn start() -> Running {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "pnsd-publish-{}-{}.sock",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind");
            let hub = Arc::new(Hub::new(Config::default(), 10, None, 1));
            let (reactor, commands, reactor_poll) = ReactorLink::detached();
            let ingest = Ingest::new(hub, Arc::new(vec![reactor]));
            let (mut publisher, link) = Publisher::new(listener, ingest).expect("publisher");
            publisher.stats = PendingStats::new(link.waker.clone(), Duration::from_secs(86_400));
            let thread = Some(std::thread::spawn(move || publisher.run()));
            Running {
                path,
                link,
                commands,
                thread,
                _reactor_poll: reactor_poll,
            }
        }

        fn connect(&self) -> (Client, BufReader<Client>) {
            let c = Client::connect(&self.path).expect("connect");
            c.set_read_timeout(Some(WAIT)).expect("timeout");
            let r = BufReader::new(c.try_clone().expect("clone"));
            (c, r)
        }

        /// The next command that is not a wake-up for published channels.
        fn next_stats_ask(&self) -> crate::stats::WaitingReply {
            loop {
                match self.commands.recv_timeout(WAIT) {
                    Ok(Command::WaitingChannels(reply)) => return reply,
                    Ok(Command::Published { .. }) => {}
                    other => panic!("expected a stats ask, got {other:?}"),
                }
            }
        }

        fn drain(&mut self) {
            self.link.drain.send(()).expect("drain");
            self.link.waker.wake().expect("wake");
            if let Some(t) = self.thread.take() {
                t.join().expect("publish thread");
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if self.thread.is_some() {
                self.drain();
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn answer(r: &mut BufReader<Client>) -> serde_json::Value {
        let mut line = String::new();
        r.read_line(&mut line).expect("answer line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn an_outstanding_stats_request_holds_up_only_its_own_connection() {
        let mut run = Running::start();
        let (mut a, mut a_in) = run.connect();
        let (mut b, mut b_in) = run.connect();
        a.write_all(b"{\"op\":\"stats\"}\n{\"channel\":\"a\",\"data\":1}\n")
            .expect("write");
        let reply = run.next_stats_ask();
        // The reactor has not replied: another connection's publish is acked meanwhile.
        b.write_all(b"{\"channel\":\"b\",\"data\":2}\n")
            .expect("write");
        assert_eq!(answer(&mut b_in)["ok"], true);
        // The asking connection got nothing yet, not even the ack of the line behind the
        // stats request (answers stay in line order).
        a.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        let early = (&a).read(&mut byte);
        assert!(
            matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "answered before the reactor replied: {early:?}"
        );
        a.set_nonblocking(false).expect("blocking");
        reply
            .send(vec![Box::from("w")])
            .expect("publish thread alive");
        let st = answer(&mut a_in);
        assert_eq!(st["ok"], true);
        assert_eq!(st["published"], 1, "b's publish, not a's (behind): {st}");
        assert_eq!(st["channels"], 2, "the waiter's w and the held b: {st}");
        let ack = answer(&mut a_in);
        assert!(
            ack["id"].is_string(),
            "then the ack of the line behind: {ack}"
        );
        run.drain();
    }

    #[test]
    fn a_stats_request_outstanding_at_the_drain_is_answered_then_the_lines_behind() {
        let mut run = Running::start();
        let (mut a, mut a_in) = run.connect();
        a.write_all(b"{\"op\":\"stats\"}\n{\"channel\":\"a\",\"data\":1}\n")
            .expect("write");
        let _silent = run.next_stats_ask();
        run.drain();
        assert_eq!(answer(&mut a_in)["published"], 0);
        assert!(
            answer(&mut a_in)["id"].is_string(),
            "the ack behind the stats line"
        );
        let mut rest = String::new();
        a_in.read_line(&mut rest).expect("eof");
        assert_eq!(rest, "", "closed after the answers");
        drop(a);
    }
}
