//! Start-up of a process an upgrade started (see `upgrade`): the listeners it inherited and
//! the connections its reactors and publish thread adopt, from the state image's live part.
//!
//! Invariants: every descriptor of the image is owned by exactly one object here (a listener
//! or, through `adopt`, a connection); the previous process's reactor `k`'s listeners and
//! connections go to reactor `k % threads`, so every accept queue is served even if the thread
//! count changed; the publish socket's file record travels, so the last process's drain
//! removes the path only while it is still that socket.

use std::io;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use mio::net::{TcpListener, UnixListener};

use super::{BoundSocketFile, StartError};
use crate::publish::Publisher;
use crate::reactor::Reactor;
use crate::state::LiveImage;

/// What `carried_listeners` returns: the publish socket, its file record and printed path,
/// each reactor's HTTP listeners and the HTTP addresses.
pub(super) type Listeners = (
    UnixListener,
    Option<BoundSocketFile>,
    PathBuf,
    Vec<Vec<TcpListener>>,
    Vec<SocketAddr>,
);

/// The listeners an upgrade carried over: the previous process's reactor `k`'s go to reactor
/// `k % threads`, so every accept queue is served even if the thread count changed.
pub(super) fn carried_listeners(live: &LiveImage, threads: usize) -> Result<Listeners, StartError> {
    let fail = |e: io::Error| StartError::Runtime(format!("cannot use a carried listener: {e}"));
    // SAFETY: the previous process handed these descriptors over for these uses.
    let publish = unsafe { std::os::unix::net::UnixListener::from_raw_fd(live.publish_listener) };
    let path = match publish.local_addr().map_err(fail)?.as_pathname() {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("(unnamed)"),
    };
    let file = live.socket_file.as_ref().map(BoundSocketFile::from_image);
    let mut per_thread: Vec<Vec<TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (k, fds) in live.http_listeners.iter().enumerate() {
        for &fd in fds {
            // SAFETY: as above.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            if k == 0 {
                addrs.push(l.local_addr().map_err(fail)?);
            }
            per_thread[k % threads].push(TcpListener::from_std(l));
        }
    }
    Ok((
        UnixListener::from_std(publish),
        file,
        path,
        per_thread,
        addrs,
    ))
}

/// Has the reactors and the publish thread adopt the connections an upgrade carried over.
pub(super) fn adopt(
    live: LiveImage,
    reactors: &mut [Reactor],
    publisher: &mut Publisher,
    generation: u64,
) -> Result<(), StartError> {
    let fail = |e: io::Error| StartError::Runtime(format!("cannot adopt a connection: {e}"));
    let n = reactors.len().max(1);
    for (k, conns) in live.conns.into_iter().enumerate() {
        if let Some(r) = reactors.get_mut(k % n) {
            r.adopt(conns).map_err(fail)?;
        }
    }
    publisher
        .adopt(live.publishers, std::process::id(), generation)
        .map_err(fail)
}
