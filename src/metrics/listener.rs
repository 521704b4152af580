//! The metrics thread: its own listener (`--metrics-listen`), serving `GET /metrics` and
//! nothing else (any other request is answered 404), one request per connection.
//!
//! Invariants: at most `MAX_SCRAPERS` connections are held (one more is closed at once); a
//! connection lives at most `SCRAPE_DEADLINE` from its accept, whatever its peer does; a request
//! head is at most `MAX_REQUEST` bytes (more is a 404 and a close). The thread touches the hub
//! only through `Snapshot::take` (atomics), so however slow or many its clients, no reactor
//! and no publish waits for it. It ends when the hub drains (its waker is rung).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::{Snapshot, CONTENT_TYPE};
use crate::hub::Hub;

/// Scrapers served at once: Prometheus scrapes a target from one connection at a time; a few
/// more cover HA pairs and a curl, and bound what a connect flood can hold.
pub const MAX_SCRAPERS: usize = 8;
/// Longest life of a scrape connection, accept to close: Prometheus' default scrape timeout
/// is 10 s; a client slower than this is dropped.
pub const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);
/// A scrape's request head is a few hundred bytes; anything longer is not a scrape.
pub const MAX_REQUEST: usize = 4096;
pub const PATH: &str = "/metrics";

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const CONN_BASE: usize = 2;

struct Scrape {
    sock: TcpStream,
    input: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// Wakes the metrics thread (to notice the drain).
#[derive(Debug)]
pub struct MetricsLink {
    waker: Waker,
}

impl MetricsLink {
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// See the module documentation.
pub struct MetricsServer {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Scrape>,
    hub: Arc<Hub>,
}

impl MetricsServer {
    pub fn new(
        mut listener: TcpListener,
        hub: Arc<Hub>,
    ) -> io::Result<(MetricsServer, MetricsLink)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let server = MetricsServer {
            poll,
            listener,
            conns: Slab::with_capacity(MAX_SCRAPERS),
            hub,
        };
        Ok((server, MetricsLink { waker }))
    }

    /// Serves until the hub drains.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut ready = Vec::new();
        while !self.hub.is_draining() {
            let now = Instant::now();
            let timeout = self
                .conns
                .iter()
                .map(|(_, c)| c.deadline.saturating_duration_since(now))
                .min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("metrics poll failed: {e}");
                }
                continue;
            }
            ready.clear();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(t) => ready.push(t - CONN_BASE),
                }
            }
            for &key in &ready {
                self.serve(key);
            }
            let now = Instant::now();
            let late: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| now >= c.deadline)
                .map(|(k, _)| k)
                .collect();
            for key in late {
                self.close(key);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, _)) => {
                    if self.conns.len() >= MAX_SCRAPERS {
                        continue; // dropped: closed at once
                    }
                    let key = self.conns.vacant_key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut sock,
                            Token(CONN_BASE + key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(Scrape {
                        sock,
                        input: Vec::new(),
                        out: Vec::new(),
                        written: 0,
                        deadline: Instant::now() + SCRAPE_DEADLINE,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or out of descriptors: the next readiness retries.
                Err(_) => return,
            }
        }
    }

    /// Reads the request, answers it once complete, writes, closes when done.
    fn serve(&mut self, key: usize) {
        let hub = &self.hub;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let done = if c.out.is_empty() {
            match read_head(c) {
                Ok(Some(get_metrics)) => {
                    c.out = if get_metrics {
                        response(
                            200,
                            "OK",
                            CONTENT_TYPE,
                            Snapshot::take(hub).render().as_bytes(),
                        )
                    } else {
                        response(
                            404,
                            "Not Found",
                            "text/plain; charset=utf-8",
                            b"not found\n",
                        )
                    };
                    write_out(c)
                }
                Ok(None) => Ok(false),
                Err(()) => Ok(true),
            }
        } else {
            write_out(c)
        };
        if !matches!(done, Ok(false)) {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
    }
}

/// Reads what is there: Ok(Some(is GET /metrics)) once the head is complete, Ok(None) for
/// more, Err at EOF or a dead socket.
fn read_head(c: &mut Scrape) -> Result<Option<bool>, ()> {
    let mut buf = [0u8; 1024];
    loop {
        match c.sock.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => c.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
        if c.input.len() > MAX_REQUEST {
            return Ok(Some(false));
        }
    }
    Ok(is_get_metrics(&c.input))
}

/// Some(true) for a complete `GET /metrics` head (a query string is ignored), Some(false)
/// for any other complete or malformed head, None while incomplete.
pub fn is_get_metrics(input: &[u8]) -> Option<bool> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(input) {
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            Some(req.method == Some("GET") && path == PATH)
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(false),
    }
}

fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Ok(true) when everything is written.
fn write_out(c: &mut Scrape) -> io::Result<bool> {
    while c.written < c.out.len() {
        match c.sock.write(&c.out[c.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_a_scrape() {
        let t = |s: &str| is_get_metrics(s.as_bytes());
        assert_eq!(t("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(true));
        assert_eq!(t("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Some(true));
        assert_eq!(t("GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(t("POST /metrics HTTP/1.1\r\n\r\n"), Some(false));
        assert_eq!(t("HEAD /metrics HTTP/1.1\r\n\r\n"), Some(false));
        assert_eq!(t("GET /metricsx HTTP/1.1\r\n\r\n"), Some(false));
        assert_eq!(t("GET / HTTP/1.1\r\n\r\n"), Some(false));
        assert_eq!(t("\x01\x02 nonsense\r\n\r\n"), Some(false));
    }
}
