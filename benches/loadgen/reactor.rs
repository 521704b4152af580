//! The client side: one mio `Poll` driving many HTTP subscriber connections and one publisher.
//!
//! Invariants:
//! - Client `i` is token `i`; publisher connection `k` is token `PUBLISHER_TOKEN_BASE + k`.
//! - A client has at most one request in flight. Its phase says where that request is:
//!   `Queued` (waiting for a connect slot) -> `Connecting` -> `Writing` -> `Awaiting` -> `Idle`.
//!   `awaiting` counts clients in `Awaiting`, `opening` counts fresh connections whose request is
//!   not yet fully written; at most `MAX_OPENING` are opening at once, so 15,000 connects never
//!   overflow the server's accept backlog.
//! - A connection with no request in flight holds no buffered bytes: bytes arriving on it, or
//!   left over after an answer, were never asked for, and the connection is dropped (the next
//!   request opens a fresh one).
//! - A connection lost before its answer is re-opened and the same request re-sent, within a
//!   per-reactor budget; exceeding the budget makes `turn` fail with the last error.
//! - Client sockets bind round-robin to 127.0.0.2-127.0.0.254 (IP_BIND_ADDRESS_NO_PORT, so the
//!   port is chosen per 4-tuple at connect) when the server is on IPv4 loopback, so 15,000
//!   connections never exhaust one address's ephemeral ports.
//! - Dropping the reactor resets every connection (SO_LINGER 0): no TIME_WAIT pile-up between
//!   scenarios.

use crate::http::{parse_response, Parsed, Response};
use crate::publisher::{Publisher, PUBLISHER_TOKEN_BASE};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Readiness events taken per `poll` call: a fan-out wakes up to 15,000 sockets at once, and
/// 4,096 per call keeps the number of `epoll_wait` calls small without a large buffer.
const EVENTS_CAPACITY: usize = 4096;
/// Fresh connections opening at once: well under the default `somaxconn` (4,096) so the
/// server's accept queue never drops a SYN (a drop costs a 1 s retransmit).
const MAX_OPENING: usize = 256;
/// Shared read buffer: far larger than any single poll answer the scenarios produce.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per readiness event, so one chatty socket cannot starve the others.
const MAX_READS_PER_EVENT: usize = 16;
/// Source addresses tried when binding/connecting fails with a busy address.
const MAX_BIND_ATTEMPTS: usize = 8;
/// Re-opened connections allowed per reactor, beyond one per client.
const RECONNECT_SLACK: u64 = 1_000;
/// First and last host byte of the 127.0.0.x source addresses (127.0.0.1 is the server's).
const SOURCE_FIRST: u8 = 2;
const SOURCE_LAST: u8 = 254;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Queued,
    Connecting,
    Writing,
    Awaiting,
}

struct Client {
    sock: Option<TcpStream>,
    phase: Phase,
    /// Counted in `Reactor::opening`.
    opening: bool,
    request: Vec<u8>,
    written: usize,
    inbuf: Vec<u8>,
}

/// One answer read in full.
pub struct Completion {
    pub client: usize,
    pub response: Response,
    /// When its last byte was read.
    pub at: Instant,
}

/// Connection trouble seen so far.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// The event loop.
pub struct Reactor {
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    /// Client i connects to `servers[i % servers.len()]` (several: the nodes of a fleet).
    servers: Vec<SocketAddr>,
    sources: Vec<IpAddr>,
    next_source: usize,
    queue: VecDeque<usize>,
    opening: usize,
    awaiting: usize,
    scratch: Vec<u8>,
    /// Answers completed since the last `turn` handed them out.
    finished: Vec<Completion>,
    last_rx: Instant,
    reconnect_budget: u64,
    pub counters: Counters,
    pub publisher: Option<Publisher>,
}

fn source_addrs(server: SocketAddr) -> Vec<IpAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (SOURCE_FIRST..=SOURCE_LAST)
            .map(|b| IpAddr::V4(Ipv4Addr::new(127, 0, 0, b)))
            .collect(),
        _ => Vec::new(),
    }
}

impl Reactor {
    /// A reactor for `clients` subscribers spread round-robin over `servers` (non-empty).
    pub fn new(servers: &[SocketAddr], clients: usize) -> io::Result<Reactor> {
        let server = servers[0];
        Ok(Reactor {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            clients: (0..clients)
                .map(|_| Client {
                    sock: None,
                    phase: Phase::Idle,
                    opening: false,
                    request: Vec::new(),
                    written: 0,
                    inbuf: Vec::new(),
                })
                .collect(),
            servers: servers.to_vec(),
            sources: source_addrs(server),
            next_source: 0,
            queue: VecDeque::new(),
            opening: 0,
            awaiting: 0,
            scratch: vec![0; READ_CHUNK],
            finished: Vec::new(),
            last_rx: Instant::now(),
            reconnect_budget: clients as u64 + RECONNECT_SLACK,
            counters: Counters::default(),
            publisher: None,
        })
    }

    pub fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Clients whose request is written and unanswered.
    pub fn awaiting(&self) -> usize {
        self.awaiting
    }

    /// Time since any subscriber byte arrived.
    pub fn quiet_for(&self) -> Duration {
        self.last_rx.elapsed()
    }

    /// Sends `request` on client `i` (which must have no request in flight).
    pub fn send(&mut self, i: usize, request: &[u8]) -> Result<(), String> {
        let c = &mut self.clients[i];
        if c.phase != Phase::Idle {
            return Err(format!("client {i} already has a request in flight"));
        }
        c.request.clear();
        c.request.extend_from_slice(request);
        c.written = 0;
        if c.sock.is_some() {
            c.phase = Phase::Writing;
            self.flush(i);
        } else {
            c.phase = Phase::Queued;
            self.queue.push_back(i);
            self.start_queued();
        }
        Ok(())
    }

    /// Runs one `poll` of at most `timeout`, appending finished answers to `out`.
    pub fn turn(&mut self, timeout: Duration, out: &mut Vec<Completion>) -> Result<(), String> {
        self.start_queued();
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("epoll failed: {e}"));
            }
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            let t = ev.token().0;
            if t >= PUBLISHER_TOKEN_BASE {
                if let Some(p) = self.publisher.as_mut() {
                    p.ready(self.poll.registry(), t - PUBLISHER_TOKEN_BASE);
                }
            } else if t < self.clients.len() {
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.client_ready(t, readable);
            }
        }
        self.events = events;
        out.append(&mut self.finished);
        self.start_queued();
        if self.counters.reconnects > self.reconnect_budget {
            return Err(format!(
                "{} connections lost or refused (budget {}); last error: {}",
                self.counters.reconnects,
                self.reconnect_budget,
                self.counters.last_error.as_deref().unwrap_or("none")
            ));
        }
        if let Some(e) = self.publisher.as_ref().and_then(|p| p.fatal.clone()) {
            return Err(e);
        }
        Ok(())
    }

    fn start_queued(&mut self) {
        // Bounded by the queue's length on entry: a client re-queued by a failure waits a turn.
        for _ in 0..self.queue.len() {
            if self.opening >= MAX_OPENING {
                break;
            }
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            if self.clients[i].phase != Phase::Queued {
                continue;
            }
            match self.open(i) {
                Ok(sock) => {
                    let c = &mut self.clients[i];
                    c.sock = Some(sock);
                    c.phase = Phase::Connecting;
                    c.opening = true;
                    self.opening += 1;
                    if let Some(s) = self.clients[i].sock.as_mut() {
                        if let Err(e) = self.poll.registry().register(
                            s,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            self.lost(i, format!("register: {e}"));
                        }
                    }
                }
                Err(e) => {
                    // Put it back; the budget bounds how often this can happen.
                    self.counters.reconnects += 1;
                    self.counters.last_error =
                        Some(format!("connect to {}: {e}", self.server_of(i)));
                    self.queue.push_back(i);
                    break;
                }
            }
        }
    }

    fn server_of(&self, i: usize) -> SocketAddr {
        self.servers[i % self.servers.len()]
    }

    /// Opens client `i`'s non-blocking connection from the next source address.
    fn open(&mut self, i: usize) -> io::Result<TcpStream> {
        let server = self.server_of(i);
        let mut last = io::Error::other("no attempt");
        for _ in 0..MAX_BIND_ATTEMPTS {
            let sock = Socket::new(
                Domain::for_address(server),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            sock.set_nonblocking(true)?;
            sock.set_tcp_nodelay(true)?;
            if !self.sources.is_empty() {
                let src = self.sources[self.next_source % self.sources.len()];
                self.next_source = self.next_source.wrapping_add(1);
                set_bind_no_port(&sock)?;
                if let Err(e) = sock.bind(&SocketAddr::new(src, 0).into()) {
                    last = e;
                    continue;
                }
            }
            match sock.connect(&server.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            }
            return Ok(TcpStream::from_std(sock.into()));
        }
        Err(last)
    }

    /// Client `i` is ready; `readable` when there may be bytes (or an end) to read.
    fn client_ready(&mut self, i: usize, readable: bool) {
        if self.clients[i].phase == Phase::Connecting {
            let Some(s) = self.clients[i].sock.as_ref() else {
                return;
            };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => return self.lost(i, format!("connect: {e}")),
                Ok(None) => {}
            }
            match s.peer_addr() {
                Ok(_) => self.clients[i].phase = Phase::Writing,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return,
                Err(e) => return self.lost(i, format!("connect: {e}")),
            }
        }
        if self.clients[i].phase == Phase::Writing {
            self.flush(i);
        }
        if readable && self.clients[i].sock.is_some() {
            self.read(i);
        }
    }

    /// Writes what is left of client `i`'s request.
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(s) = c.sock.as_mut() else {
            return;
        };
        while c.written < c.request.len() {
            match s.write(&c.request[c.written..]) {
                Ok(0) => return self.lost(i, "write returned 0".into()),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lost(i, format!("write: {e}")),
            }
        }
        c.phase = Phase::Awaiting;
        self.awaiting += 1;
        if c.opening {
            c.opening = false;
            self.opening -= 1;
        }
        // The server may have answered before reading the whole request (an error).
        if !c.inbuf.is_empty() {
            self.complete(i, false);
        }
    }

    fn read(&mut self, i: usize) {
        let mut eof = false;
        let mut error = None;
        for _ in 0..MAX_READS_PER_EVENT {
            let c = &mut self.clients[i];
            let Some(s) = c.sock.as_mut() else {
                return;
            };
            match s.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.last_rx = Instant::now();
                    if c.phase == Phase::Idle {
                        // No request in flight: nothing may arrive, and an idle connection
                        // holds no bytes. Drop it; the next request opens a fresh one.
                        self.counters.last_error = Some("bytes on an idle connection".into());
                        return self.drop_socket(i);
                    }
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    if c.phase == Phase::Awaiting && !self.complete(i, false) {
                        return;
                    }
                    // A whole answer with nothing after it: the server sends nothing more
                    // until asked, so skip the read that would only say WouldBlock.
                    let c = &self.clients[i];
                    if n < self.scratch.len() && c.phase != Phase::Awaiting && c.inbuf.is_empty() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eof = true;
                    error = Some(e);
                    break;
                }
            }
        }
        if !eof {
            return;
        }
        match self.clients[i].phase {
            Phase::Awaiting => {
                if !self.clients[i].inbuf.is_empty() && self.complete(i, true) {
                    if self.clients[i].sock.is_some() {
                        self.drop_socket(i);
                    }
                    return;
                }
                let why = error.map_or("server closed before answering".to_string(), |e| {
                    format!("read: {e}")
                });
                self.lost(i, why);
            }
            Phase::Idle => self.drop_socket(i),
            _ => self.lost(
                i,
                error.map_or("server closed".to_string(), |e| format!("read: {e}")),
            ),
        }
    }

    /// Tries to finish client `i`'s answer from its buffer. False when the connection was lost
    /// (bad framing); true otherwise (complete or still partial).
    fn complete(&mut self, i: usize, eof: bool) -> bool {
        let c = &mut self.clients[i];
        match parse_response(&c.inbuf, eof) {
            Ok(Parsed::Partial) => true,
            Ok(Parsed::Complete(response, used)) => {
                c.inbuf.drain(..used);
                c.phase = Phase::Idle;
                self.awaiting -= 1;
                let close = response.close;
                self.finished.push(Completion {
                    client: i,
                    response,
                    at: Instant::now(),
                });
                // Bytes beyond the answer were never asked for: the connection is unusable.
                if close || !self.clients[i].inbuf.is_empty() {
                    self.drop_socket(i);
                }
                true
            }
            Err(e) => {
                self.lost(i, format!("answer: {e}"));
                false
            }
        }
    }

    fn drop_socket(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
            let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        c.inbuf.clear();
        if c.opening {
            c.opening = false;
            self.opening -= 1;
        }
    }

    /// Client `i`'s connection failed with its request unanswered: re-queue the request.
    fn lost(&mut self, i: usize, why: String) {
        self.drop_socket(i);
        let c = &mut self.clients[i];
        if c.phase == Phase::Awaiting {
            self.awaiting -= 1;
        }
        if c.phase == Phase::Idle {
            return;
        }
        c.phase = Phase::Queued;
        c.written = 0;
        self.queue.push_back(i);
        self.counters.reconnects += 1;
        self.counters.last_error = Some(why);
    }

    /// Resets every client connection.
    pub fn close_all(&mut self) {
        for i in 0..self.clients.len() {
            self.drop_socket(i);
            self.clients[i].phase = Phase::Idle;
        }
        self.queue.clear();
        self.awaiting = 0;
        self.opening = 0;
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// IP_BIND_ADDRESS_NO_PORT: bind() records the address only; connect() picks a port free for
/// the full 4-tuple, so ports are shared across servers and never exhausted by bind().
fn set_bind_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is open for the call's duration and `one` is a valid c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
