//! The connection's state machine without sockets: an in-memory transport (`sockio::fake`),
//! a hub with an empty store, time handed in.

use super::*;
use crate::answer::Answer;
use crate::config::Config;
use crate::sockio::fake::FakeSock;

struct World {
    hub: Hub,
    pool: BufferPool,
    observer: Observer,
    now: u64,
}

impl World {
    fn new() -> World {
        World {
            hub: Hub::new(Config::default(), 100, None, 1),
            pool: BufferPool::new(MAX_HEAD, 4),
            observer: Observer::default(),
            now: 1_000,
        }
    }

    fn cx(&mut self) -> Ctx<'_> {
        Ctx {
            hub: &self.hub,
            pool: &mut self.pool,
            now: self.now,
            observer: &mut self.observer,
        }
    }

    fn conn(&mut self) -> (Conn<FakeSock>, Step) {
        let cx = self.cx();
        Conn::new(FakeSock::default(), &cx)
    }
}

fn tick_in(w: &World, secs: u64) -> Option<u32> {
    Some(tick_up(w.now + secs * 1000))
}

/// The responses written so far, as text, and forgets them.
fn take_written(c: &mut Conn<FakeSock>) -> String {
    String::from_utf8(std::mem::take(&mut c.sock_mut().written)).expect("utf-8")
}

fn count(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

const HEALTH: &[u8] = b"GET /pns/health HTTP/1.1\r\nHost: t\r\n\r\n";
const POLL: &[u8] = b"GET /pns/poll?channel=a&hold=30 HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn entry_stays_small() {
    // The density budget of issue 4: the slab entry of a parked poll. mio's stream is one
    // fd in release builds and carries a selector id in debug builds; count it apart.
    use mio::net::TcpStream;
    let own = std::mem::size_of::<Conn<TcpStream>>() - std::mem::size_of::<TcpStream>();
    assert!(own <= 40, "{own}");
}

#[test]
fn a_new_connection_runs_the_head_deadline() {
    let mut w = World::new();
    let (_, step) = w.conn();
    assert!(matches!(step.next, Next::Wait));
    assert_eq!(step.timer, tick_in(&w, 10));
}

#[test]
fn split_reads_make_one_request() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    for (i, b) in HEALTH.iter().enumerate() {
        c.sock_mut().send(&[*b]);
        let step = c.on_ready(true, false, false, &mut w.cx());
        assert!(matches!(step.next, Next::Wait), "byte {i}: {step:?}");
        if i + 1 < HEALTH.len() {
            assert!(c.sock_mut().written.is_empty(), "answered at byte {i}");
            assert_eq!(step.timer, None, "deadline moved at byte {i}");
        } else {
            // Answered: the keep-alive idle deadline runs now.
            assert_eq!(step.timer, tick_in(&w, 75));
        }
    }
    let out = take_written(&mut c);
    assert!(out.starts_with("HTTP/1.1 200 ") && out.ends_with("{\"ok\":true}"));
    assert!(c.pending.is_none(), "an idle connection owns no buffer");
}

#[test]
fn pipelined_request_waits_behind_a_parked_poll() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().send(&[POLL, HEALTH].concat());
    let step = c.on_ready(true, false, false, &mut w.cx());
    let Next::Park(p) = step.next else {
        panic!("not parked: {step:?}")
    };
    assert_eq!(p.channels, vec!["a".to_string()]);
    assert_eq!(step.timer, tick_in(&w, 30));
    assert!(c.is_parked() && c.sock_mut().written.is_empty());
    // More readiness while parked reads nothing and answers nothing.
    let step = c.on_ready(true, false, false, &mut w.cx());
    assert!(matches!(step.next, Next::Wait) && c.sock_mut().written.is_empty());
    // The poll's answer, then the queued request on the next turn.
    let answer = Answer::Flat(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec());
    let step = c.answer(Out::Own(answer), true, &mut w.cx());
    assert_eq!(step.delivered, 1);
    assert!(matches!(step.next, Next::Later), "{step:?}");
    assert_eq!(step.timer, tick_in(&w, 10), "the queued head's deadline");
    let step = c.on_turn(&mut w.cx());
    assert!(matches!(step.next, Next::Wait));
    let out = take_written(&mut c);
    assert_eq!(count(&out, "HTTP/1.1 200 "), 2, "{out}");
    assert!(out.ends_with("{\"ok\":true}"), "{out}");
    assert!(c.pending.is_none());
}

#[test]
fn a_parked_poll_owns_no_buffer_and_hang_up_closes_it() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().send(POLL);
    assert!(matches!(
        c.on_ready(true, false, false, &mut w.cx()).next,
        Next::Park(_)
    ));
    assert!(c.pending.is_none(), "a parked poll holds no buffer");
    let step = c.on_ready(false, true, false, &mut w.cx());
    assert!(matches!(step.next, Next::Close), "{step:?}");
}

#[test]
fn a_poll_from_a_half_closed_client_is_not_parked() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().send(POLL);
    c.sock_mut().eof = true;
    let step = c.on_ready(true, true, false, &mut w.cx());
    assert!(matches!(step.next, Next::Close), "{step:?}");
}

#[test]
fn write_back_pressure_holds_the_next_request() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().room = Some(10);
    c.sock_mut().send(HEALTH);
    let step = c.on_ready(true, false, false, &mut w.cx());
    assert!(matches!(step.next, Next::Wait));
    assert_eq!(step.timer, tick_in(&w, 30), "the write deadline runs");
    assert_eq!(c.sock_mut().written.len(), 10);
    // A second request arrives while the first answer is stuck: it is not taken.
    c.sock_mut().send(HEALTH);
    let step = c.on_ready(true, false, false, &mut w.cx());
    assert!(matches!(step.next, Next::Wait));
    assert_eq!(c.sock_mut().written.len(), 10);
    assert_eq!(
        c.sock_mut().incoming.len(),
        1,
        "read while an answer was in flight"
    );
    // Partial progress, then the socket takes everything: both answers, in order.
    c.sock_mut().room = Some(5);
    c.on_ready(false, false, false, &mut w.cx());
    assert_eq!(c.sock_mut().written.len(), 15);
    c.sock_mut().room = None;
    let step = c.on_ready(false, false, false, &mut w.cx());
    assert!(matches!(step.next, Next::Wait));
    assert_eq!(step.timer, tick_in(&w, 75));
    let out = take_written(&mut c);
    assert_eq!(count(&out, "HTTP/1.1 200 "), 2, "{out}");
    assert!(c.pending.is_none());
    // A client that never takes its answer is dropped when the write deadline fires.
    c.sock_mut().room = Some(0);
    c.sock_mut().send(HEALTH);
    c.on_ready(true, false, false, &mut w.cx());
    let step = c.on_timer(&mut w.cx());
    assert!(matches!(step.next, Next::Close));
}

#[test]
fn head_deadline_answers_408_and_closes() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().send(b"GET /pns/health HTTP/1.1\r\n");
    c.on_ready(true, false, false, &mut w.cx());
    w.now += 10_000;
    let step = c.on_timer(&mut w.cx());
    assert!(matches!(step.next, Next::Close), "{step:?}");
    let out = take_written(&mut c);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.contains("Connection: close"), "{out}");
}

#[test]
fn idle_deadline_closes_without_an_answer_and_a_later_byte_starts_the_head_deadline() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().send(HEALTH);
    c.on_ready(true, false, false, &mut w.cx());
    take_written(&mut c);
    // The first byte of a later request, 60 s on, moves it to the head deadline from then.
    w.now += 60_000;
    c.sock_mut().send(b"G");
    let step = c.on_ready(true, false, false, &mut w.cx());
    assert_eq!(step.timer, tick_in(&w, 10));
    // Another idle connection: its idle deadline closes it silently.
    let (mut idle, _) = w.conn();
    idle.sock_mut().send(HEALTH);
    idle.on_ready(true, false, false, &mut w.cx());
    take_written(&mut idle);
    let step = idle.on_timer(&mut w.cx());
    assert!(matches!(step.next, Next::Close));
    assert!(idle.sock_mut().written.is_empty());
}

#[test]
fn the_hold_deadline_asks_for_the_parked_answer_and_drain_too() {
    let mut w = World::new();
    let (mut c, _) = w.conn();
    c.sock_mut().send(POLL);
    c.on_ready(true, false, false, &mut w.cx());
    assert!(matches!(c.on_timer(&mut w.cx()).next, Next::Answer));
    assert!(matches!(c.on_drain(&mut w.cx()).next, Next::Answer));
    assert!(c.closes_after(), "the drain closes after the answer");
    let answer = Answer::Flat(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec());
    let step = c.answer(Out::Own(answer), false, &mut w.cx());
    assert!(matches!(step.next, Next::Close), "{step:?}");
}

const STREAM: &[u8] =
    b"GET /pns/poll?channel=a HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n";

/// A world whose streams beat every second and last `max` seconds.
fn stream_world(max: u64) -> World {
    let mut w = World::new();
    w.hub.config.sse_heartbeat_secs = 1;
    w.hub.config.sse_max_secs = max;
    w.hub.config.write_timeout_secs = 5;
    w
}

#[test]
fn a_stream_beats_then_ends_and_owns_nothing_while_idle() {
    let mut w = stream_world(3);
    let (mut c, _) = w.conn();
    c.sock_mut().send(STREAM);
    let step = c.on_ready(true, false, false, &mut w.cx());
    let Next::Park(p) = step.next else {
        panic!("not parked: {step:?}")
    };
    assert!(p.stream && c.is_stream() && c.is_parked());
    assert_eq!(step.timer, tick_in(&w, 1));
    let head = take_written(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
    assert!(head.ends_with("retry: 2000\n\n"), "{head}");
    assert!(c.pending.is_none(), "an idle stream owns no buffer");
    // 3 s at 1 s: two heartbeats, then the end.
    for _ in 0..2 {
        w.now += 1000;
        let step = c.on_timer(&mut w.cx());
        assert!(matches!(step.next, Next::Wait), "{step:?}");
        assert_eq!(step.timer, tick_in(&w, 1));
        assert_eq!(take_written(&mut c), ": keep-alive\n\n");
    }
    w.now += 1000;
    assert!(matches!(c.on_timer(&mut w.cx()).next, Next::Close));
    // The drain ends a stream at once; a request sent on it is never read.
    let (mut c, _) = w.conn();
    c.sock_mut().send(&[STREAM, HEALTH].concat());
    c.on_ready(true, false, false, &mut w.cx());
    take_written(&mut c);
    assert!(matches!(
        c.on_ready(true, false, false, &mut w.cx()).next,
        Next::Wait
    ));
    assert!(c.sock_mut().written.is_empty());
    assert!(matches!(c.on_drain(&mut w.cx()).next, Next::Close));
}

#[test]
fn a_slow_stream_is_not_parked_until_its_output_drains_then_catches_up() {
    let mut w = stream_world(300);
    let (mut c, _) = w.conn();
    c.sock_mut().send(STREAM);
    c.on_ready(true, false, false, &mut w.cx());
    take_written(&mut c);
    c.sock_mut().room = Some(10);
    let events = Answer::Flat(b"id: x\nevent: message\ndata: {}\n\n".to_vec());
    let step = c.stream(Out::Own(events), true, Some(7), false, &mut w.cx());
    assert_eq!(step.delivered, 1);
    assert_eq!(step.timer, tick_in(&w, 5), "the write deadline");
    assert!(
        !c.is_parked(),
        "no wake-up reaches it while output is pending"
    );
    assert_eq!(c.after(), 7);
    // The client reads: the rest goes out and the stream asks to catch up from 7.
    c.sock_mut().room = None;
    let step = c.on_ready(false, false, false, &mut w.cx());
    assert!(matches!(step.next, Next::CatchUp), "{step:?}");
    assert_eq!(step.timer, tick_in(&w, 1), "the heartbeat again");
    assert!(c.is_parked() && c.pending.is_none());
    assert!(take_written(&mut c).ends_with("data: {}\n\n"));
    // A client that stops reading for good is dropped at the write deadline.
    c.sock_mut().room = Some(0);
    let events = Answer::Flat(b"data: 1\n\n".to_vec());
    c.stream(Out::Own(events), true, Some(8), false, &mut w.cx());
    assert!(matches!(c.on_timer(&mut w.cx()).next, Next::Close));
}
