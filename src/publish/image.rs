//! The publish thread's side of an upgrade: freezing at a safe point, the image of its
//! publisher connections, thawing after a failed upgrade, and adopting the connections of the
//! process that started this one.
//!
//! Invariants:
//! - The freeze happens between turns: every line read so far was either answered (its ack is
//!   in the connection's unsent output, which travels) or not parsed (its bytes travel as
//!   input), so each publish line is acked exactly once, by one of the two processes, and
//!   published once. Outstanding stats requests are answered before the image is taken.
//! - While frozen the thread touches no socket; it waits for `Control::Thaw`. After a
//!   successful upgrade the process exits without thawing it.
//! - A connection that asked for the upgrade is answered once: `line::upgrade_line` by the
//!   adopting process, or the failure's error line on thaw.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::mpsc;

use mio::net::UnixStream;
use mio::{Interest, Token};

use super::{PubConn, Publisher, CONN_BASE};
use crate::line::{self, Framer};
use crate::state::PublisherImage;

/// What the main thread asks of the publish thread around an upgrade.
#[derive(Debug)]
pub enum Control {
    /// Stop at a safe point and send the image; then wait for `Thaw`.
    Freeze(mpsc::Sender<PublishImage>),
    /// Serve again; `error` answers the connections that asked for the upgrade.
    Thaw { error: Option<String> },
}

/// The publish socket and its connections, as the freeze found them.
#[derive(Debug)]
pub struct PublishImage {
    pub listener: i32,
    pub publishers: Vec<PublisherImage>,
}

impl Publisher {
    /// Freezes (see the module documentation) until thawed; the thawed connections are pushed
    /// onto `again` to be served at once.
    pub(super) fn freeze(&mut self, reply: mpsc::Sender<PublishImage>, again: &mut Vec<usize>) {
        self.answer_stats(true, again);
        let publishers = self
            .conns
            .iter()
            .map(|(_, c)| PublisherImage {
                fd: c.sock.as_raw_fd(),
                input: c.input.clone(),
                discarding: c.framer.is_discarding(),
                out: c.out[c.out_pos..].to_vec(),
                eof: c.eof,
                asked_upgrade: c.asked_upgrade,
            })
            .collect();
        let listener = self.listener.as_ref().map_or(-1, |l| l.as_raw_fd());
        if reply
            .send(PublishImage {
                listener,
                publishers,
            })
            .is_err()
        {
            return;
        }
        loop {
            match self.control.recv() {
                Ok(Control::Thaw { error }) => {
                    for (key, c) in self.conns.iter_mut() {
                        if std::mem::take(&mut c.asked_upgrade) {
                            let e = error.as_deref().unwrap_or("upgrade abandoned");
                            line::error_line(&mut c.out, e);
                        }
                        c.readable = true;
                        again.push(key);
                    }
                    return;
                }
                Ok(Control::Freeze(reply)) => {
                    // Already frozen: the same image again.
                    let _ = reply;
                }
                Err(_) => return,
            }
        }
    }

    /// Takes over the publisher connections of an earlier process (their descriptors are
    /// inherited); those that asked for the upgrade get its answer for `pid` and `generation`.
    pub fn adopt(
        &mut self,
        publishers: Vec<PublisherImage>,
        pid: u32,
        generation: u64,
    ) -> io::Result<()> {
        for p in publishers {
            // SAFETY: the fd was handed over by the previous process for this connection and
            // nothing else in this process owns it.
            let mut sock = unsafe { UnixStream::from_raw_fd(p.fd) };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            self.poll.registry().register(
                &mut sock,
                Token(CONN_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let mut out = p.out;
            if p.asked_upgrade {
                line::upgrade_line(&mut out, pid, generation);
            }
            entry.insert(PubConn {
                sock,
                input: p.input,
                framer: Framer::resuming(p.discarding),
                out,
                out_pos: 0,
                readable: true,
                eof: p.eof,
                stats_pending: false,
                asked_upgrade: false,
            });
            self.adopted.push(key);
        }
        Ok(())
    }
}
