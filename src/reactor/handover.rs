//! A reactor's side of an upgrade: the freeze (its image, then no socket touched until thawed)
//! and the adoption of an earlier process's connections.
//!
//! Invariants:
//! - The freeze is a command, so it runs between loop turns: every wake-up queued before it
//!   (`Published`) was handled, every connection is between two events.
//! - While frozen, nothing is read, written, accepted or timed out; edges that arrive stay in
//!   this reactor's epoll for after a thaw, and the same bytes wait in the kernel for the new
//!   process, whose fresh registration reports them. Commands that arrive meanwhile are held
//!   and carried out after a thaw, in order.
//! - Adopted connections are counted and registered exactly as accepted ones; an adopted
//!   parked poll is parked again under its channels and, before any event is served, checked
//!   against the store once (a message may have arrived between its last wake-up and the
//!   freeze), so none waits for a publish that already happened.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Reactor, CONN_BASE};
use crate::conn::{Conn, Ctx};
use crate::hub::{Command, ReactorImage};
use crate::state::ConnImage;

impl Reactor {
    /// Sends this reactor's image and waits, touching no socket, for `Thaw`.
    pub(super) fn freeze(&mut self, reply: mpsc::Sender<ReactorImage>) {
        let now = self.clock.now_ms();
        let conns = self
            .conns
            .iter()
            .map(|(_, c)| c.image(c.sock().as_raw_fd(), self.parked.channels_of(c), now))
            .collect();
        let image = ReactorImage {
            index: self.index,
            listeners: self.listeners.iter().map(|l| l.as_raw_fd()).collect(),
            conns,
        };
        if reply.send(image).is_err() {
            return;
        }
        // Commands that would touch a socket (a fleet feed's wake-ups, a session's end) wait
        // until the thaw; a successful upgrade drops them with the process (the new one reads
        // the same store and wakes its adopted polls itself).
        let mut held = Vec::new();
        loop {
            match self.commands.recv() {
                Ok(Command::Thaw) | Err(_) => break,
                Ok(Command::Freeze(_)) => {}
                Ok(Command::WaitingChannels(reply)) => {
                    let _ = reply.send(self.parked.channel_names().map(Box::from).collect());
                }
                Ok(cmd) => held.push(cmd),
            }
        }
        for cmd in held {
            self.command(cmd);
        }
    }

    /// Takes over `conns` from an earlier process (their descriptors are inherited).
    pub fn adopt(&mut self, conns: Vec<ConnImage>) -> io::Result<()> {
        self.now = self.clock.now_ms();
        let mut waited_on = HashSet::new();
        for image in conns {
            // SAFETY: the fd was handed over by the previous process for this connection and
            // nothing else in this process owns it.
            let mut sock = unsafe { TcpStream::from_raw_fd(image.fd) };
            let key = self.conns.vacant_key();
            self.poll.registry().register(
                &mut sock,
                Token(CONN_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let cx = cx!(self);
            let Some((conn, step)) = Conn::restore(sock, &image, &cx) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("connection flags {:#x}: no such phase", image.flags),
                ));
            };
            self.hub
                .counters
                .connections
                .fetch_add(1, Ordering::Relaxed);
            self.hub.gauges[self.index]
                .connections
                .fetch_add(1, Ordering::Relaxed);
            self.conns.insert(conn);
            waited_on.extend(image.channels);
            self.apply(key as u32, step);
        }
        let last_seq = self.hub.read().last_seq();
        let channels: Vec<String> = waited_on.into_iter().collect();
        self.wake(last_seq, &channels);
        Ok(())
    }
}
