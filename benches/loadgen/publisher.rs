//! The publisher: pnsd's NDJSON Unix socket, or HTTP POSTs (nchan, jetty) over keep-alive
//! connections, driven by the reactor's `Poll`.
//!
//! Invariants: `sent = acked + failed + outstanding()` at all times. Requests given the same
//! `lane` go out on the same connection in order (per-channel order for HTTP publishers, whose
//! requests on different connections may be reordered by the server). A connection has at most
//! `depth` requests unanswered (pipelined); more wait in that connection's FIFO. An HTTP
//! connection the server closes is re-opened (its unanswered requests count as failed); the
//! Unix connection closing is fatal.

use crate::http::{parse_response, Parsed};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Bytes read per call: an ack is about 40 bytes, so this takes about 1,500 acks at once.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per readiness event, so the publisher cannot starve the subscribers.
const MAX_READS_PER_EVENT: usize = 16;
/// Blocking connect timeout for (re)opening a publisher connection on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP reconnects allowed in one publisher's life (nginx closes keep-alive connections every
/// 1,000 requests by default, so 100,000 publishes cost about 100).
const MAX_RECONNECTS: u64 = 10_000;

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }
}

struct Conn {
    sock: Sock,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    /// Requests written (or being written) and not yet answered, oldest first.
    unanswered: VecDeque<Vec<u8>>,
    waiting: VecDeque<Vec<u8>>,
}

/// A publisher connected to the server.
pub struct Publisher {
    conns: Vec<Conn>,
    http: Option<SocketAddr>,
    depth: usize,
    scratch: Vec<u8>,
    reconnects: u64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    /// Set when the publisher cannot go on; the reactor's `turn` reports it.
    pub fatal: Option<String>,
}

/// How a publisher connection ended.
enum Ended {
    /// After an answer that announced the close.
    Clean,
    /// Without warning; the text says how.
    Abrupt(String),
}

/// Tokens at or above this belong to publisher connections (far above any client count).
pub const PUBLISHER_TOKEN_BASE: usize = 1 << 30;

fn register(reg: &Registry, sock: &mut Sock, k: usize) -> io::Result<()> {
    let t = Token(PUBLISHER_TOKEN_BASE + k);
    let i = Interest::READABLE | Interest::WRITABLE;
    match sock {
        Sock::Unix(s) => reg.register(s, t, i),
        Sock::Tcp(s) => reg.register(s, t, i),
    }
}

fn connect_tcp(addr: SocketAddr) -> io::Result<Sock> {
    let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(Sock::Tcp(TcpStream::from_std(s)))
}

fn new_conn(sock: Sock) -> Conn {
    Conn {
        sock,
        out: Vec::new(),
        out_pos: 0,
        inbuf: Vec::new(),
        unanswered: VecDeque::new(),
        waiting: VecDeque::new(),
    }
}

impl Publisher {
    /// One NDJSON connection to pnsd's publish socket, up to `depth` lines unacknowledged.
    pub fn unix(reg: &Registry, path: &Path, depth: usize) -> Result<Publisher, String> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .map_err(|e| format!("cannot connect to publish socket {}: {e}", path.display()))?;
        let mut sock = Sock::Unix(UnixStream::from_std(s));
        register(reg, &mut sock, 0).map_err(|e| format!("register publisher: {e}"))?;
        Ok(Publisher::with(vec![new_conn(sock)], None, depth))
    }

    /// `conns` keep-alive HTTP connections to `addr`, each with up to `depth` pipelined POSTs.
    pub fn http(
        reg: &Registry,
        addr: SocketAddr,
        conns: usize,
        depth: usize,
    ) -> Result<Publisher, String> {
        let mut v = Vec::with_capacity(conns);
        for k in 0..conns {
            let mut sock = connect_tcp(addr)
                .map_err(|e| format!("cannot connect to publisher {addr}: {e}"))?;
            register(reg, &mut sock, k).map_err(|e| format!("register publisher: {e}"))?;
            v.push(new_conn(sock));
        }
        Ok(Publisher::with(v, Some(addr), depth))
    }

    fn with(conns: Vec<Conn>, http: Option<SocketAddr>, depth: usize) -> Publisher {
        Publisher {
            conns,
            http,
            depth: depth.max(1),
            scratch: vec![0; READ_CHUNK],
            reconnects: 0,
            sent: 0,
            acked: 0,
            failed: 0,
            last_error: None,
            fatal: None,
        }
    }

    /// Publishes sent and not yet answered.
    pub fn outstanding(&self) -> u64 {
        self.sent - self.acked - self.failed
    }

    /// Sends one encoded publish on connection `lane % connections`.
    pub fn send(&mut self, lane: usize, request: Vec<u8>) {
        let k = lane % self.conns.len();
        self.sent += 1;
        let c = &mut self.conns[k];
        if c.unanswered.len() < self.depth {
            c.out.extend_from_slice(&request);
            c.unanswered.push_back(request);
            self.flush(k);
        } else {
            c.waiting.push_back(request);
        }
    }

    /// Handles readiness of connection `k`.
    pub fn ready(&mut self, reg: &Registry, k: usize) {
        if k >= self.conns.len() {
            return;
        }
        self.flush(k);
        let mut eof = None;
        for _ in 0..MAX_READS_PER_EVENT {
            match self.conns[k].sock.read(&mut self.scratch) {
                Ok(0) => {
                    eof = Some(Ended::Abrupt("closed by the server".to_string()));
                    break;
                }
                Ok(n) => {
                    let c = &mut self.conns[k];
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    if let Err(e) = self.answers(k) {
                        eof = Some(e);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eof = Some(Ended::Abrupt(format!("read: {e}")));
                    break;
                }
            }
        }
        if let Some(how) = eof {
            self.closed(reg, k, how);
        }
        self.refill(k);
    }

    /// Moves waiting requests of connection `k` into its pipeline.
    fn refill(&mut self, k: usize) {
        let c = &mut self.conns[k];
        let mut moved = false;
        while c.unanswered.len() < self.depth {
            let Some(r) = c.waiting.pop_front() else {
                break;
            };
            c.out.extend_from_slice(&r);
            c.unanswered.push_back(r);
            moved = true;
        }
        if moved {
            self.flush(k);
        }
    }

    fn flush(&mut self, k: usize) {
        let c = &mut self.conns[k];
        while c.out_pos < c.out.len() {
            match c.sock.write(&c.out[c.out_pos..]) {
                Ok(0) => break,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The read side sees the same failure and handles it.
                Err(_) => return,
            }
        }
        c.out.clear();
        c.out_pos = 0;
    }

    /// Consumes every complete answer in connection `k`'s buffer; Err when it must close.
    fn answers(&mut self, k: usize) -> Result<(), Ended> {
        if self.http.is_none() {
            let c = &mut self.conns[k];
            let mut start = 0;
            while let Some(nl) = c.inbuf[start..].iter().position(|&b| b == b'\n') {
                let line = &c.inbuf[start..start + nl];
                start += nl + 1;
                c.unanswered.pop_front();
                let ok = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("ok").and_then(|o| o.as_bool()))
                    .unwrap_or(false);
                if ok {
                    self.acked += 1;
                } else {
                    self.failed += 1;
                    self.last_error = Some(String::from_utf8_lossy(line).into_owned());
                }
            }
            c.inbuf.drain(..start);
            return Ok(());
        }
        loop {
            let c = &mut self.conns[k];
            match parse_response(&c.inbuf, false) {
                Ok(Parsed::Partial) => return Ok(()),
                Ok(Parsed::Complete(r, used)) => {
                    c.inbuf.drain(..used);
                    c.unanswered.pop_front();
                    if (200..300).contains(&r.status) {
                        self.acked += 1;
                    } else {
                        self.failed += 1;
                        // One line of at most ~120 characters: error pages are multi-line HTML.
                        let body = String::from_utf8_lossy(&r.body[..r.body.len().min(120)])
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ");
                        self.last_error = Some(format!("publish answered {}: {body}", r.status));
                    }
                    if r.close {
                        return Err(Ended::Clean);
                    }
                }
                Err(e) => return Err(Ended::Abrupt(format!("publish answer: {e}"))),
            }
        }
    }

    /// Connection `k` ended. After a clean close (an answer said `Connection: close`) the
    /// server has not read the pipelined requests behind it, so they are sent again on the new
    /// connection; after an abrupt one they count as failed. HTTP reconnects, Unix is fatal.
    fn closed(&mut self, reg: &Registry, k: usize, how: Ended) {
        let c = &mut self.conns[k];
        let why = match how {
            Ended::Clean => {
                while let Some(r) = c.unanswered.pop_back() {
                    c.waiting.push_front(r);
                }
                "closed after an answer".to_string()
            }
            Ended::Abrupt(why) => {
                let lost = c.unanswered.len() as u64;
                c.unanswered.clear();
                if lost > 0 {
                    self.failed += lost;
                    self.last_error = Some(format!("{lost} publishes unanswered: {why}"));
                }
                why
            }
        };
        let Some(addr) = self.http else {
            self.fatal = Some(format!("publish socket {why}"));
            return;
        };
        self.reconnects += 1;
        if self.reconnects > MAX_RECONNECTS {
            self.fatal = Some(format!("publisher reconnected too often; last: {why}"));
            return;
        }
        let c = &mut self.conns[k];
        if let Sock::Tcp(s) = &mut c.sock {
            let _ = reg.deregister(s);
        }
        match connect_tcp(addr) {
            Ok(mut sock) => {
                if let Err(e) = register(reg, &mut sock, k) {
                    self.fatal = Some(format!("register publisher: {e}"));
                    return;
                }
                c.sock = sock;
                c.out.clear();
                c.out_pos = 0;
                c.inbuf.clear();
            }
            Err(e) => self.fatal = Some(format!("cannot reconnect publisher to {addr}: {e}")),
        }
    }
}
