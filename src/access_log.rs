//! The access log (`--access-log PATH`, `-` for stderr): one line per answered request, in
//! logfmt, written by each reactor from its own buffer:
//!
//! `time=2026-12-05T16:42:12.123Z peer=127.0.0.1:50312 status=200 channels=1 messages=3 held_ms=1520 bytes=412`
//!
//! `time` is when the answer was started (RFC 3339, UTC, milliseconds); `peer` the client's
//! address (`-` when the socket no longer has one); `channels` how many channels a poll's answer
//! is for (0 for errors and other paths); `messages` its `c`; `held_ms` how long a parked poll
//! waited (0 when answered at once); `bytes` the whole response, head included. A parked poll
//! that is still waiting has no line; every error (4xx, 5xx) has one, including those a browser
//! hides from its page (a 408 head timeout, a 400 bad request, a 503 at the connection limit).
//!
//! Invariants (cost: it must keep up with 100k answers/s):
//! - Nothing is allocated per line in the steady state: records, parked-poll start times and
//!   the line buffer are reused vectors, numbers and addresses are formatted straight into the
//!   buffer, the date part of the time is formatted once per second.
//! - A reactor writes its buffer with one `write(2)` per loop turn (or when it passes
//!   `FLUSH_AT`), whole lines only, to its own descriptor of the same open file (appending):
//!   lines of two reactors never interleave within a line.
//! - The peer address is read (`getpeername`) only when the log is on, once per connection
//!   (at its first line, then kept here by slab key until the reactor `forget`s the key at
//!   close); the connection's entry holds nothing for the log. A parked poll's start and
//!   channel count are kept here too. That side table (`slots`, ~48 bytes per slab key up to
//!   the highest used) exists only when the log is on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A buffer this full is written at once rather than at the end of the turn: about 500 lines,
/// so a burst of answers costs one system call per ~500 lines and bounded memory.
pub const FLUSH_AT: usize = 64 * 1024;

/// The open log, shared by the reactors (each takes its own descriptor of it).
#[derive(Debug)]
pub struct AccessLog {
    file: File,
}

impl AccessLog {
    /// Opens `path` for appending (created 0644 if missing), or stderr for `-`.
    pub fn open(path: &Path) -> io::Result<AccessLog> {
        let file = if path.as_os_str() == "-" {
            File::from(io::stderr().as_fd().try_clone_to_owned()?)
        } else {
            OpenOptions::new().create(true).append(true).open(path)?
        };
        Ok(AccessLog { file })
    }

    /// One reactor's writer.
    pub fn for_reactor(&self) -> io::Result<ReactorLog> {
        Ok(ReactorLog {
            out: self.file.try_clone()?,
            buf: Vec::with_capacity(FLUSH_AT + 512),
            records: Vec::new(),
            taken: 0,
            slots: Vec::new(),
            date: DateCache::default(),
        })
    }
}

/// One response, as the connection saw it (see `observer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub status: u16,
    pub channels: u8,
    pub messages: u16,
    pub bytes: u32,
    /// A parked poll's answer: its hold time and channels are in `parks`.
    pub parked: bool,
}

/// What the log keeps of one slab key.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// When its poll parked, on how many channels.
    since_ms: u64,
    channels: u8,
    /// The connection's peer, once read.
    peer: Option<SocketAddr>,
}

/// One reactor's side of the log; see the module documentation.
#[derive(Debug)]
pub struct ReactorLog {
    out: File,
    buf: Vec<u8>,
    /// Records not yet written; `taken` of them already were.
    records: Vec<Record>,
    taken: usize,
    /// By slab key; see `Slot`.
    slots: Vec<Slot>,
    date: DateCache,
}

impl ReactorLog {
    /// A response was started (its connection is not known yet: see `take`).
    pub fn record(&mut self, r: Record) {
        self.records.push(r);
    }

    fn slot(&mut self, key: u32) -> &mut Slot {
        let i = key as usize;
        if self.slots.len() <= i {
            // Grows with the highest slab key seen, once; reused afterwards.
            self.slots.resize(i + 1, Slot::default());
        }
        &mut self.slots[i]
    }

    /// Connection `key` parked a poll on `channels` channels at `now_ms`.
    pub fn parked(&mut self, key: u32, now_ms: u64, channels: usize) {
        let slot = self.slot(key);
        slot.since_ms = now_ms;
        slot.channels = u8::try_from(channels).unwrap_or(u8::MAX);
    }

    /// Connection `key` is closed: its slot may be another connection's next.
    pub fn forget(&mut self, key: u32) {
        if let Some(slot) = self.slots.get_mut(key as usize) {
            *slot = Slot::default();
        }
    }

    /// Writes the next `n` records as connection `key`'s at `now_ms`; its peer is read with
    /// `peer` the first time only.
    pub fn take(
        &mut self,
        key: u32,
        n: u32,
        peer: impl FnOnce() -> Option<SocketAddr>,
        now_ms: u64,
    ) {
        let slot = self.slot(key);
        if slot.peer.is_none() {
            slot.peer = peer();
        }
        let slot = *slot;
        for _ in 0..n {
            let Some(mut r) = self.records.get(self.taken).copied() else {
                break;
            };
            self.taken += 1;
            let mut held = 0;
            if r.parked {
                held = now_ms.saturating_sub(slot.since_ms);
                r.channels = slot.channels;
            }
            self.line(slot.peer, &r, held);
        }
        if self.taken == self.records.len() {
            self.records.clear();
            self.taken = 0;
        }
    }

    /// Writes one line now (a response made outside a connection: the 503 at the limit).
    pub fn line(&mut self, peer: Option<SocketAddr>, r: &Record, held_ms: u64) {
        let b = &mut self.buf;
        b.extend_from_slice(b"time=");
        self.date.write_now(b);
        b.extend_from_slice(b" peer=");
        match peer {
            Some(SocketAddr::V4(a)) => {
                for (i, o) in a.ip().octets().iter().enumerate() {
                    if i > 0 {
                        b.push(b'.');
                    }
                    put_u64(b, u64::from(*o));
                }
                b.push(b':');
                put_u64(b, u64::from(a.port()));
            }
            // Writing into a Vec cannot fail.
            Some(p) => {
                let _ = write!(b, "{p}");
            }
            None => b.push(b'-'),
        }
        for (key, v) in [
            (&b" status="[..], u64::from(r.status)),
            (b" channels=", u64::from(r.channels)),
            (b" messages=", u64::from(r.messages)),
            (b" held_ms=", held_ms),
            (b" bytes=", u64::from(r.bytes)),
        ] {
            b.extend_from_slice(key);
            put_u64(b, v);
        }
        b.push(b'\n');
        if b.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// The end of a loop turn: records nobody took (none, unless a step was lost) are written
    /// without a peer, and the buffer goes out in one write.
    pub fn end_turn(&mut self) {
        while let Some(r) = self.records.get(self.taken).copied() {
            self.taken += 1;
            self.line(None, &r, 0);
        }
        self.records.clear();
        self.taken = 0;
        self.flush();
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // A full disk or a closed stderr loses log lines, never an answer.
        let _ = self.out.write_all(&self.buf);
        self.buf.clear();
    }
}

/// Appends `v` in decimal (without `fmt`'s machinery: this runs per line).
fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The time as RFC 3339 with milliseconds, the date and time of day formatted once a second.
#[derive(Debug, Default)]
struct DateCache {
    secs: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `secs`.
    text: [u8; 19],
}

impl DateCache {
    fn write_now(&mut self, out: &mut Vec<u8>) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.write(out, t.as_secs(), t.subsec_millis());
    }

    fn write(&mut self, out: &mut Vec<u8>, secs: u64, ms: u32) {
        if secs != self.secs || self.text[0] == 0 {
            self.secs = secs;
            self.text = civil(secs);
        }
        out.extend_from_slice(&self.text);
        let ms = ms.min(999);
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of unix time `secs` (Howard Hinnant's days-to-civil).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut t = [0u8; 19];
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            t[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y.clamp(0, 9999) as u64, 4);
    put(5, m as u64, 2);
    put(8, d as u64, 2);
    put(11, tod / 3600, 2);
    put(14, tod / 60 % 60, 2);
    put(17, tod % 60, 2);
    for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        t[at] = c;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        let s = |secs| String::from_utf8(civil(secs).to_vec()).unwrap();
        assert_eq!(s(0), "1970-01-01T00:00:00");
        assert_eq!(s(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(s(1_796_485_332), "2026-12-05T15:42:12");
        assert_eq!(s(4_102_444_799), "2099-12-31T23:59:59");
        let mut d = DateCache::default();
        let mut out = Vec::new();
        d.write(&mut out, 0, 7);
        assert_eq!(out, b"1970-01-01T00:00:00.007Z");
    }

    fn log_to(dir: &Path) -> (ReactorLog, std::path::PathBuf) {
        let path = dir.join("access.log");
        let log = AccessLog::open(&path)
            .expect("open")
            .for_reactor()
            .expect("writer");
        (log, path)
    }

    #[test]
    fn records_are_written_as_their_connections_lines_at_the_end_of_the_turn() {
        let dir = std::env::temp_dir().join(format!("pnsd-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut log, path) = log_to(&dir);
        let rec = |status, parked| Record {
            status,
            channels: 2,
            messages: 3,
            bytes: 400,
            parked,
        };
        log.parked(5, 1_000, 4);
        log.record(rec(200, true));
        log.record(rec(404, false));
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        log.take(5, 1, || Some(peer), 1_250);
        log.take(9, 1, || None, 1_250);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "written before the turn ended"
        );
        log.end_turn();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("time=20"), "{}", lines[0]);
        assert!(
            lines[0].ends_with(
                " peer=10.0.0.1:4000 status=200 channels=4 messages=3 held_ms=250 bytes=400"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(" peer=- status=404 channels=2 messages=3 held_ms=0 bytes=400"),
            "{}",
            lines[1]
        );
        // Steady state: the vectors are reused, not regrown.
        let caps = |l: &ReactorLog| (l.buf.capacity(), l.records.capacity(), l.slots.capacity());
        let before = caps(&log);
        for _ in 0..1000 {
            log.record(rec(200, true));
            log.take(5, 1, || panic!("the peer is read once"), 2_000);
            log.end_turn();
        }
        assert_eq!(before, caps(&log));
        // A closed connection's key starts over: the next connection's peer is read again.
        log.forget(5);
        let other: SocketAddr = "[::1]:7".parse().unwrap();
        log.record(rec(401, false));
        log.take(5, 1, || Some(other), 2_000);
        log.record(rec(200, false));
        log.end_turn();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Vec<&str> = text.lines().rev().take(2).collect();
        assert!(last[1].contains(" peer=[::1]:7 status=401 "), "{}", last[1]);
        assert!(last[0].contains(" peer=- status=200 "), "{}", last[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
