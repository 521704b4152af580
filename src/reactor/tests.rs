//! The reactor on a manual clock: deadlines fire when the test moves time, not when real time
//! passes (real sockets, one reactor thread).

use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mio::Waker;

use super::*;
use crate::config::Config;

struct Running {
    hub: Arc<Hub>,
    clock: Clock,
    addr: std::net::SocketAddr,
    commands: mpsc::Sender<Command>,
    waker: Waker,
    thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn start() -> Running {
        let clock = Clock::manual();
        let config = Config {
            threads: 1,
            ..Config::default()
        };
        let hub = Arc::new(Hub::new(config, 100, None, 1));
        let poll = Poll::new().expect("poll");
        let waker = Waker::new(poll.registry(), WAKER).expect("waker");
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        let r =
            Reactor::new(poll, vec![listener], hub.clone(), rx, 0, clock.clone()).expect("reactor");
        let thread = Some(thread::spawn(move || r.run()));
        Running {
            hub,
            clock,
            addr,
            commands: tx,
            waker,
            thread,
        }
    }

    fn connections(&self) -> usize {
        self.hub.gauges[0].connections.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until this reactor's connection gauge reads `n`.
    fn wait_connections(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.connections() != n {
            assert!(
                Instant::now() < until,
                "{} connections, not {n}",
                self.connections()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn connect(&self) -> StdStream {
        let s = StdStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Drain);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one whole response (headers and `Content-Length` body) or "" at end of stream.
fn read_response(s: &mut StdStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = s.read(&mut b).expect("read");
        if n == 0 {
            return text;
        }
        got.extend_from_slice(&b[..n]);
    }
}

const HEALTH: &[u8] = b"GET /pns/health HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn idle_and_head_deadlines_follow_the_handed_in_clock() {
    let r = Running::start();
    let mut idle = r.connect();
    idle.write_all(HEALTH).expect("send");
    assert!(read_response(&mut idle).starts_with("HTTP/1.1 200 "));
    let mut silent = r.connect();
    r.wait_connections(2);
    // 9.9 s of the clock later: neither deadline has come; the idle one is still usable.
    r.clock.advance(9_900);
    idle.write_all(HEALTH).expect("send");
    assert!(read_response(&mut idle).starts_with("HTTP/1.1 200 "));
    // The head deadline (10 s after accept): 408 and closed.
    r.clock.advance(200);
    let got = read_response(&mut silent);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    assert_eq!(read_response(&mut silent), "");
    r.wait_connections(1);
    // The idle deadline (75 s after the last answer): closed without an answer.
    r.clock.advance(75_100);
    assert_eq!(read_response(&mut idle), "");
    r.wait_connections(0);
}

#[test]
fn a_parked_poll_is_answered_when_the_clock_passes_its_hold() {
    let r = Running::start();
    let mut c = r.connect();
    c.write_all(b"GET /pns/poll?channel=a&hold=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let until = Instant::now() + Duration::from_secs(10);
    while r.hub.gauges[0].parked.load(Ordering::Relaxed) != 1 {
        assert!(Instant::now() < until, "never parked");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.hub.gauges[0].waiting_channels.load(Ordering::Relaxed), 1);
    r.clock.advance(30_000);
    let got = read_response(&mut c);
    assert!(
        got.starts_with("HTTP/1.1 200 ") && got.contains("{\"c\":0,"),
        "{got:?}"
    );
    assert_eq!(r.hub.gauges[0].parked.load(Ordering::Relaxed), 0);
    assert_eq!(r.hub.gauges[0].waiting_channels.load(Ordering::Relaxed), 0);
}
