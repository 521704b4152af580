//! The one socket I/O layer: a bounded read into a caller's (pooled) buffer, writes with
//! back-pressure (plain, and vectored over an answer's segments), and accept with EMFILE
//! back-off. Generic over the socket (`Read`/`Write`, [`Accept`]), so HTTP connections
//! (`mio::net::TcpStream`/`TcpListener`), publisher connections (`UnixStream`/`UnixListener`)
//! and the unit tests' in-memory fakes all go through the same loops.
//!
//! Invariants:
//! - Every loop retries `Interrupted`, stops at `WouldBlock`, and is bounded: a read stops at a
//!   full buffer, a write when everything is written; neither allocates.
//! - `Ok(0)` from a write (the peer cannot take bytes) is the error `WriteZero`; every other
//!   error (reset, broken pipe) is returned for the caller to close the socket.
//! - A read that comes back short of what was asked took everything the socket held: it ends
//!   as `Drained` without the extra read that would only say `WouldBlock` (bytes arriving later
//!   raise a new edge), so a caller tracking edge-triggered readiness clears its bit on
//!   `Drained` and `Eof` only.
//! - `accept` never calls the listener while the back-off is paused.

use std::io::{self, IoSlice, Read, Write};

use crate::backoff::AcceptBackoff;

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Drained to `WouldBlock` or a short read: wait for the next readable edge.
    Drained,
    /// The buffer is full; more may be waiting.
    Full,
    /// End of stream.
    Eof,
}

/// Reads into `buf[*filled..]` until a short read or `WouldBlock` (drained), end of stream, or
/// a full buffer; `*filled` grows by what was read.
pub fn read_into<R: Read + ?Sized>(
    sock: &mut R,
    buf: &mut [u8],
    filled: &mut usize,
) -> io::Result<ReadEnd> {
    // Bounded: each pass either fills bytes or ends.
    loop {
        if *filled == buf.len() {
            return Ok(ReadEnd::Full);
        }
        match sock.read(&mut buf[*filled..]) {
            Ok(0) => return Ok(ReadEnd::Eof),
            Ok(n) => {
                let asked = buf.len() - *filled;
                *filled += n;
                if n < asked {
                    return Ok(ReadEnd::Drained);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` until done or `WouldBlock`; returns how much was written.
pub fn write_some<W: Write + ?Sized>(sock: &mut W, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match sock.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes made of several slices that are written with one vectored write per socket turn
/// instead of being copied together (an answer written from shared message bytes).
pub trait Segments {
    /// Total length in bytes.
    fn total_len(&self) -> usize;
    /// Fills `out` with the slices that follow byte `pos` (the first one cut at `pos`), as
    /// many as fit; returns how many were filled (0 only when nothing follows `pos`).
    fn slices_from<'a>(&'a self, pos: usize, out: &mut [IoSlice<'a>]) -> usize;
    /// All the bytes, when they are one slice (written with plain writes, no slice array).
    fn contiguous(&self) -> Option<&[u8]> {
        None
    }
}

/// `Segments::slices_from` for bytes made of `parts` in order: skips to byte `pos`, fills `out`.
pub fn slices_of<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    mut pos: usize,
    out: &mut [IoSlice<'a>],
) -> usize {
    let mut n = 0;
    for p in parts {
        if pos >= p.len() {
            pos -= p.len();
            continue;
        }
        if n == out.len() {
            break;
        }
        out[n] = IoSlice::new(&p[pos..]);
        pos = 0;
        n += 1;
    }
    n
}

impl Segments for [u8] {
    fn total_len(&self) -> usize {
        self.len()
    }

    fn slices_from<'a>(&'a self, pos: usize, out: &mut [IoSlice<'a>]) -> usize {
        match (self.get(pos..), out.first_mut()) {
            (Some(rest), Some(slot)) if !rest.is_empty() => {
                *slot = IoSlice::new(rest);
                1
            }
            _ => 0,
        }
    }

    fn contiguous(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// Slices per vectored write: a full answer of 100 messages is ~600 slices, so a few calls;
/// 256 keeps the array (4 KiB) on the stack and far below IOV_MAX (1024).
const IOV_BATCH: usize = 256;

/// Writes `bytes` from byte `*pos` with vectored writes until done or `WouldBlock`, advancing
/// `*pos`; Ok(true) when everything is written.
pub fn write_segments<W: Write + ?Sized, B: Segments + ?Sized>(
    sock: &mut W,
    bytes: &B,
    pos: &mut usize,
) -> io::Result<bool> {
    if let Some(all) = bytes.contiguous() {
        *pos += write_some(sock, all.get(*pos..).unwrap_or_default())?;
        return Ok(*pos >= all.len());
    }
    let total = bytes.total_len();
    while *pos < total {
        let mut iov = [IoSlice::new(&[]); IOV_BATCH];
        let n = bytes.slices_from(*pos, &mut iov);
        if n == 0 {
            break;
        }
        let res = if n == 1 {
            sock.write(&iov[0])
        } else {
            sock.write_vectored(&iov[..n])
        };
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => *pos += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A listening socket: TCP for HTTP, Unix for publishers.
pub trait Accept {
    type Stream;
    fn accept_stream(&self) -> io::Result<Self::Stream>;
}

impl Accept for mio::net::TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept_stream(&self) -> io::Result<Self::Stream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Accept for mio::net::UnixListener {
    type Stream = mio::net::UnixStream;
    fn accept_stream(&self) -> io::Result<Self::Stream> {
        self.accept().map(|(s, _)| s)
    }
}

/// What one accept step gave.
#[derive(Debug)]
pub enum Accepted<S> {
    Stream(S),
    /// The backlog is empty (`WouldBlock`): wait for the next readable edge.
    Empty,
    /// Out of descriptors or memory: accepting pauses (see `backoff`); the owner retries when
    /// `AcceptBackoff::resume` says so.
    Paused,
}

/// Accepts one connection from `listener` (named `what` in the log), skipping aborted ones;
/// on EMFILE, ENFILE, ENOBUFS or ENOMEM pauses `backoff` at `now` (ms) instead of spinning on
/// an edge that will not come again.
pub fn accept<L: Accept + ?Sized>(
    listener: &L,
    backoff: &mut AcceptBackoff,
    now: u64,
    what: &str,
) -> Accepted<L::Stream> {
    if backoff.is_paused() {
        return Accepted::Paused;
    }
    // Bounded: each aborted connection was taken off the backlog.
    loop {
        match listener.accept_stream() {
            Ok(s) => return Accepted::Stream(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Empty,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // The pending connections stay in the backlog; retry after a pause.
                backoff.failed(now, what, &e);
                return Accepted::Paused;
            }
        }
    }
}

/// Connections refused at a limit, kept a moment after their one error answer.
///
/// Closing a socket whose peer's request is still unread makes the kernel send a reset instead
/// of a FIN, and a client that gets the reset may lose the answer already sent to it (a browser
/// or a proxy then reports a reset instead of the 503). So a refused socket has its write side
/// shut after the answer and is kept here, its input read and dropped, until the peer closes or
/// `linger_ms` passes. At most `max` are kept: one more closes the oldest at once, so a connect
/// flood cannot pin descriptors. Time is a parameter (ms).
#[derive(Debug)]
pub struct Lingering<S> {
    socks: std::collections::VecDeque<(S, u64)>,
    max: usize,
    linger_ms: u64,
}

impl<S: Read> Lingering<S> {
    pub fn new(max: usize, linger_ms: u64) -> Lingering<S> {
        Lingering {
            socks: std::collections::VecDeque::new(),
            max,
            linger_ms,
        }
    }

    /// Keeps `sock` (its answer written, its write side shut) until `now + linger_ms`.
    pub fn push(&mut self, sock: S, now: u64) {
        if self.max == 0 {
            return;
        }
        if self.socks.len() == self.max {
            self.socks.pop_front();
        }
        self.socks
            .push_back((sock, now.saturating_add(self.linger_ms)));
        self.service(now);
    }

    /// Reads and drops what the kept sockets sent; closes each at end of stream, on an error,
    /// or at its deadline. Bounded: at most `max` sockets, a few reads each.
    pub fn service(&mut self, now: u64) {
        let mut sink = [0u8; 4096];
        self.socks.retain_mut(|(sock, until)| {
            if now >= *until {
                return false;
            }
            for _ in 0..4 {
                match sock.read(&mut sink) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// When the oldest kept socket falls due (ms), if any: all linger alike, so the first.
    pub fn next_deadline(&self) -> Option<u64> {
        self.socks.front().map(|s| s.1)
    }

    /// Closes every kept socket now (a drain).
    pub fn clear(&mut self) {
        self.socks.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory socket for unit tests: reads come from scripted chunks, writes are taken
    //! up to a budget (back-pressure), then `WouldBlock`.

    use std::collections::VecDeque;
    use std::io::{self, IoSlice, Read, Write};

    #[derive(Debug, Default)]
    pub struct FakeSock {
        /// Chunks the peer sent; each read returns at most one chunk.
        pub incoming: VecDeque<Vec<u8>>,
        /// The peer shut down its side after `incoming`.
        pub eof: bool,
        /// Bytes the socket still accepts before `WouldBlock` (`None`: unlimited).
        pub room: Option<usize>,
        /// Everything written so far.
        pub written: Vec<u8>,
        /// Number of write calls (plain or vectored).
        pub writes: usize,
    }

    impl FakeSock {
        pub fn send(&mut self, bytes: &[u8]) {
            self.incoming.push_back(bytes.to_vec());
        }
    }

    impl Read for FakeSock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(chunk) = self.incoming.front_mut() else {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.incoming.pop_front();
            }
            Ok(n)
        }
    }

    impl Write for FakeSock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.writes += 1;
            let mut room = self.room.unwrap_or(usize::MAX);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.written.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            if let Some(r) = self.room.as_mut() {
                *r -= n;
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSock;
    use super::*;

    #[test]
    fn read_stops_short_full_or_at_eof() {
        let mut s = FakeSock::default();
        s.send(b"abc");
        let mut buf = [0u8; 8];
        let mut filled = 0;
        assert_eq!(
            read_into(&mut s, &mut buf, &mut filled).unwrap(),
            ReadEnd::Drained
        );
        assert_eq!(&buf[..filled], b"abc");
        s.send(b"defghijk");
        assert_eq!(
            read_into(&mut s, &mut buf, &mut filled).unwrap(),
            ReadEnd::Full
        );
        assert_eq!(&buf[..], b"abcdefgh");
        let mut buf = [0u8; 8];
        filled = 0;
        s.eof = true;
        assert_eq!(
            read_into(&mut s, &mut buf, &mut filled).unwrap(),
            ReadEnd::Drained
        );
        assert_eq!(
            read_into(&mut s, &mut buf, &mut filled).unwrap(),
            ReadEnd::Eof
        );
    }

    #[test]
    fn lingering_reads_until_eof_or_deadline_and_is_bounded() {
        let mut l: Lingering<FakeSock> = Lingering::new(2, 200);
        let mut a = FakeSock::default();
        a.send(b"GET / HTTP/1.1\r\n\r\n");
        l.push(a, 0);
        l.push(FakeSock::default(), 10);
        assert_eq!(l.len(), 2);
        // A third one closes the oldest at once.
        let c = FakeSock {
            eof: true,
            ..FakeSock::default()
        };
        l.push(c, 20);
        // `c` reached end of stream: closed; the second waits for its deadline.
        assert_eq!(l.len(), 1);
        l.service(209);
        assert_eq!(l.len(), 1);
        l.service(210);
        assert!(l.is_empty());
    }

    struct Parts(Vec<&'static [u8]>);

    impl Segments for Parts {
        fn total_len(&self) -> usize {
            self.0.iter().map(|p| p.len()).sum()
        }
        fn slices_from<'a>(&'a self, pos: usize, out: &mut [IoSlice<'a>]) -> usize {
            slices_of(self.0.iter().copied(), pos, out)
        }
    }

    #[test]
    fn vectored_write_resumes_after_back_pressure() {
        let parts = Parts(vec![b"hello ", b"", b"wide ", b"world"]);
        let mut s = FakeSock {
            room: Some(4),
            ..FakeSock::default()
        };
        let mut pos = 0;
        assert!(!write_segments(&mut s, &parts, &mut pos).unwrap());
        assert_eq!(pos, 4);
        s.room = Some(5);
        assert!(!write_segments(&mut s, &parts, &mut pos).unwrap());
        s.room = None;
        assert!(write_segments(&mut s, &parts, &mut pos).unwrap());
        assert_eq!(s.written, b"hello wide world");
        assert_eq!(write_some(&mut s, b"!").unwrap(), 1);
        s.room = Some(0);
        assert_eq!(write_some(&mut s, b"?").unwrap(), 0);
    }
}
