//! A reactor's admission: accepting from its listeners in batches, and the
//! `--max-connections` limit, past which a connection is answered 503 and kept lingering a
//! moment (`sockio::Lingering`) so its client reads the answer instead of a reset.
//!
//! Invariants:
//! - `counters.connections` is the admission count: a fetch-add that is undone at once when
//!   over the limit, so it never overshoots for long and never pins a slot.
//! - An admitted connection is registered, counted in this reactor's gauge and handed its
//!   first step, or not admitted at all; refusals never pin more than `REFUSED_KEPT`
//!   descriptors.
//! - Nothing is accepted while draining or while the EMFILE back-off pauses accepting.

use std::sync::atomic::Ordering;

use log::warn;
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Reactor, Ready, CONN_BASE};
use crate::conn::{Conn, Ctx};
use crate::response;
use crate::sockio::{self, Accepted};

/// Accepts per listener readiness before other work gets a turn.
pub const ACCEPT_BATCH: usize = 256;
/// Connections refused at `--max-connections` kept at once per reactor after their 503 (a
/// connect flood past it closes the oldest at once: refusals never pin more descriptors).
pub(super) const REFUSED_KEPT: usize = 32;
/// How long a refused connection is kept, its request read and dropped, so that closing it
/// sends a FIN and not a reset that could cost the client its 503.
pub(super) const REFUSED_LINGER_MS: u64 = 200;

impl Reactor {
    /// Accepts up to `ACCEPT_BATCH` connections from listener `i`, then queues it for a
    /// later turn; notes an accept pause once.
    pub(super) fn accept(&mut self, i: usize) {
        if self.drain_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            let was_paused = self.accept_backoff.is_paused();
            match sockio::accept(listener, &mut self.accept_backoff, self.now, "HTTP") {
                Accepted::Stream(sock) => self.admit(sock),
                Accepted::Empty => return,
                Accepted::Paused => {
                    if !was_paused {
                        self.observer.accept_paused(&self.hub);
                    }
                    return;
                }
            }
        }
        self.ready.push_back(Ready::Listener(i));
    }

    /// Admits `sock` under `--max-connections`, or answers it 503 and lets it linger.
    fn admit(&mut self, mut sock: TcpStream) {
        let counters = &self.hub.counters;
        let held = counters.connections.fetch_add(1, Ordering::Relaxed);
        if held >= self.hub.max_connections {
            counters.connections.fetch_sub(1, Ordering::Relaxed);
            let cors = self.hub.config.cors.without_request();
            let bytes = response::error_bytes(&response::OVER_CAPACITY, true, cors);
            // Best effort: a fresh socket's send buffer takes this small answer at once. Then
            // FIN, and its request is read and dropped for a moment instead of a reset.
            self.observer
                .refused(&self.hub, sock.peer_addr().ok(), bytes.len());
            if sockio::write_some(&mut sock, &bytes).is_ok() {
                let _ = sock.shutdown(std::net::Shutdown::Write);
                self.refused.push(sock, self.now);
            }
            return;
        }
        let _ = sock.set_nodelay(true);
        let key = self.conns.vacant_key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(CONN_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register failed: {e}");
            counters.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.hub.gauges[self.index]
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let cx = cx!(self);
        let (conn, step) = Conn::new(sock, &cx);
        self.conns.insert(conn);
        self.apply(key as u32, step);
    }
}
