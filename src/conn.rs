//! One HTTP connection: its socket, where it stands, and the bytes it owns right now.
//!
//! A connection is in one `Phase` at a time:
//! - `Head`: a request head is expected and has started (or the connection is new): the 10 s
//!   head deadline runs.
//! - `Idle`: keep-alive between requests, no byte of the next one yet: the 75 s idle deadline runs.
//! - `Parked`: a poll waits; `waits` links it into the reactor's `Waiters`, `after` is its
//!   cursor, the hold deadline runs. Nothing is read while parked (a pipelined request waits in
//!   the kernel or in `pending.input`), but a hang-up is noticed through RDHUP.
//!
//! Output that could not be written at once is in `pending.out`; while it is there no further
//! request is taken (one response in flight per connection bounds its memory) and the write
//! deadline runs instead of the phase's.
//!
//! Invariants (density): an idle or parked connection without pipelined input owns no heap
//! memory at all (`pending` is `None`); the entry is 40 bytes; its one timer is the
//! `TimerLink` inside it.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use slab::Slab;

use crate::waiters;
use crate::wheel::{TimerLink, TimerNodes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Head,
    Idle,
    Parked,
}

/// Response bytes: owned by one connection, or one encoding shared by every subscriber that
/// gets the same answer.
#[derive(Debug)]
pub enum OutBytes {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl OutBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            OutBytes::Owned(v) => v,
            OutBytes::Shared(a) => a,
        }
    }
}

/// What a connection owns beyond its entry, only while it has it.
#[derive(Debug, Default)]
pub struct Pending {
    /// Received bytes not yet parsed (the start of the next request).
    pub input: Vec<u8>,
    /// Body bytes of the previous request still to discard.
    pub skip: u64,
    /// A response not yet fully written, and how much of it was.
    pub out: Option<(OutBytes, usize)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Conn {
    pub sock: TcpStream,
    pub timer: TimerLink,
    pub phase: Phase,
    /// Close once the response in flight is written.
    pub close_after: bool,
    /// A readable edge arrived and the socket was not read to `WouldBlock` since.
    pub readable: bool,
    /// The peer shut down its side (EOF or RDHUP).
    pub read_closed: bool,
    /// First `Waiters` node while parked, else `waiters::NIL`.
    pub waits: u32,
    /// The parked poll's cursor seq.
    pub after: u64,
    pub pending: Option<Box<Pending>>,
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Drained to `WouldBlock`.
    Drained,
    /// The buffer is full; more may be waiting.
    Full,
    /// End of stream.
    Eof,
}

impl Conn {
    pub fn new(sock: TcpStream) -> Conn {
        Conn {
            sock,
            timer: TimerLink::new(),
            phase: Phase::Head,
            close_after: false,
            readable: false,
            read_closed: false,
            waits: waiters::NIL,
            after: 0,
            pending: None,
        }
    }

    pub fn has_output(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.out.is_some())
    }

    /// Bytes of a next (pipelined) request are already here, unparsed.
    pub fn has_input(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| !p.input.is_empty())
    }

    /// Takes the unparsed input, leaving none.
    pub fn take_input(&mut self) -> (Vec<u8>, u64) {
        match self.pending.as_mut() {
            Some(p) => (std::mem::take(&mut p.input), std::mem::take(&mut p.skip)),
            None => (Vec::new(), 0),
        }
    }

    /// Keeps `rest` (copied to an exact-size buffer) and `skip` for later.
    pub fn keep_input(&mut self, rest: &[u8], skip: u64) {
        if rest.is_empty() && skip == 0 {
            self.drop_pending_if_empty();
            return;
        }
        let p = self.pending.get_or_insert_with(Box::default);
        p.input = rest.to_vec();
        p.skip = skip;
    }

    fn drop_pending_if_empty(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.input.is_empty() && p.skip == 0 && p.out.is_none())
        {
            self.pending = None;
        }
    }

    /// Reads into `buf[*filled..]` until a short read or `WouldBlock` (drained), end of stream,
    /// or a full buffer.
    pub fn read_into(&mut self, buf: &mut [u8], filled: &mut usize) -> io::Result<ReadEnd> {
        // Bounded: each pass either fills bytes or ends.
        loop {
            if *filled == buf.len() {
                return Ok(ReadEnd::Full);
            }
            match self.sock.read(&mut buf[*filled..]) {
                Ok(0) => {
                    self.read_closed = true;
                    self.readable = false;
                    return Ok(ReadEnd::Eof);
                }
                Ok(n) => {
                    let asked = buf.len() - *filled;
                    *filled += n;
                    if n < asked {
                        // A short read took everything the socket held; bytes arriving later
                        // raise a new edge. Saves the read that would only say WouldBlock
                        // (tokio clears readiness the same way).
                        self.readable = false;
                        return Ok(ReadEnd::Drained);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(ReadEnd::Drained);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `bytes` now, as far as the socket takes them; the rest waits in `pending.out`.
    /// Ok(true) when everything was written.
    pub fn send(&mut self, bytes: OutBytes) -> io::Result<bool> {
        let n = write_some(&mut self.sock, bytes.as_slice())?;
        if n == bytes.as_slice().len() {
            return Ok(true);
        }
        self.pending.get_or_insert_with(Box::default).out = Some((bytes, n));
        Ok(false)
    }

    /// Continues writing `pending.out`; Ok(true) when nothing is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(true);
        };
        let Some((bytes, pos)) = p.out.as_mut() else {
            return Ok(true);
        };
        let all = bytes.as_slice();
        *pos += write_some(&mut self.sock, &all[*pos..])?;
        if *pos < all.len() {
            return Ok(false);
        }
        p.out = None;
        self.drop_pending_if_empty();
        Ok(true)
    }
}

/// Writes until done or `WouldBlock`; returns how much was written. A reset or broken pipe is
/// an error (the caller closes).
fn write_some(sock: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
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

/// The wheel reaches each connection's link through the reactor's slab.
impl TimerNodes for Slab<Conn> {
    fn timer_link(&mut self, id: u32) -> &mut TimerLink {
        &mut self[id as usize].timer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_stays_small() {
        // The density budget of issue 4: the slab entry of a parked poll. mio's stream is one
        // fd in release builds and carries a selector id in debug builds; count it apart.
        let own = std::mem::size_of::<Conn>() - std::mem::size_of::<TcpStream>();
        assert!(own <= 40, "{own}");
    }
}
