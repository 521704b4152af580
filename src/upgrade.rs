//! The upgrade: hands the running server — listening sockets, store, every connection with
//! its state — to the executable at the path it was started from, without refusing or
//! resetting anyone.
//!
//! Mechanism: this process starts the new binary as a CHILD that inherits exactly the
//! descriptors it needs plus a memfd holding the state image (`state::ServerState`, with its
//! `live` part), and waits for it to say "taken over" on a pipe. Not an exec in place: an
//! exec replaces this process, so a new binary that cannot read the state or dies early would
//! leave nobody serving. With a child, every failure (missing binary, not executable, bad
//! arguments, an unreadable or unknown-version state, death or silence before "taken over")
//! leaves this process exactly as it was: it thaws and serves on, logs why, and the `upgrade`
//! op is answered with the reason. Descriptors are inherited rather than passed over
//! SCM_RIGHTS: the child gets them at the same numbers with no socket protocol of its own, and
//! `CLOEXEC` is cleared only in the forked child (`pre_exec`), so no descriptor ever leaks into
//! another program this process might start.
//!
//! Steps: `RELOADING=1`; the publish thread, then every reactor, freezes at a safe point (a
//! command between loop turns) and reports its connections; the state is serialised once
//! into a memfd; the child is spawned with the same arguments and `STATE_ENV`/`READY_ENV`
//! naming the memfd and the pipe; the child adopts everything (`server::serve`), answers the
//! carried publisher that asked, sends `MAINPID=` and `READY=1`, and writes `TAKEN_OVER`. This
//! process then leaves with `_exit` after flushing its log: no drain, no unlink of the publish
//! socket, no socket touched.
//!
//! Invariants:
//! - Between freeze and exit (or thaw) no thread of this process reads, writes, accepts or
//!   closes a socket: connections arriving meanwhile wait in the listen backlog, bytes in the
//!   kernel; the new process finds them there.
//! - Either the child took over and this process exits at once, or the child is gone (killed
//!   and reaped if it was still running) before this process thaws: two processes never serve
//!   the same sockets.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::hub::{Command as ReactorCommand, Hub, ReactorImage, ReactorLink};
use crate::publish::{Control, PublisherLink};
use crate::state::{LiveImage, ServerState, SocketFileImage};
use crate::systemd;

/// Names the memfd holding the state image, in the new process's environment.
pub const STATE_ENV: &str = "PNSD_UPGRADE_STATE_FD";
/// Names the pipe on which the new process reports `TAKEN_OVER`.
pub const READY_ENV: &str = "PNSD_UPGRADE_READY_FD";
/// What the new process writes once it serves.
const TAKEN_OVER: &[u8] = b"taken over\n";
/// How long the threads may take to reach their safe point: one loop turn is bounded
/// (milliseconds); a thread stuck longer is a bug, and the upgrade is abandoned.
const FREEZE_WAIT: Duration = Duration::from_secs(2);
/// How long the new process may take to start and adopt everything: 15,000 connections take
/// tens of milliseconds; a binary silent for this long is killed and the upgrade abandoned
/// (clients wait in the backlog meanwhile, so this bounds their worst case).
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// The executable and arguments of a later upgrade, resolved at start: the path the server
/// was started from (a binary installed there later is the one started), the same arguments.
#[derive(Debug, Clone)]
pub struct Upgrader {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Upgrader {
    pub fn at_start() -> Upgrader {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().map(PathBuf::from).unwrap_or_default();
        Upgrader {
            exe: std::env::current_exe().unwrap_or(argv0),
            args: argv.collect(),
        }
    }
}

/// What the upgrade freezes and hands over.
pub struct Running<'a> {
    pub hub: &'a Hub,
    pub reactors: &'a [ReactorLink],
    pub publisher: &'a PublisherLink,
    pub socket_file: Option<SocketFileImage>,
}

/// Runs one upgrade. `Ok(pid)`: the process `pid` has taken over, and the caller must
/// [`leave`] at once. `Err(why)`: this process serves on as before (already thawed).
pub fn upgrade(up: &Upgrader, run: &Running<'_>) -> Result<u32, String> {
    systemd::reloading();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let _ = run.publisher.control.send(Control::Freeze(tx));
    let _ = run.publisher.waker.wake();
    let publish = match rx.recv_timeout(FREEZE_WAIT) {
        Ok(p) => p,
        Err(_) => {
            let why = "the publish thread did not reach a safe point".to_string();
            return Err(thaw(run, 0, why));
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut asked = 0;
    for l in run.reactors {
        asked += usize::from(l.send(ReactorCommand::Freeze(tx.clone())));
    }
    drop(tx);
    let mut images: Vec<ReactorImage> = Vec::with_capacity(asked);
    while images.len() < asked {
        match rx.recv_timeout(FREEZE_WAIT) {
            Ok(image) => images.push(image),
            Err(_) => {
                let why = "a reactor did not reach a safe point".to_string();
                return Err(thaw(run, asked, why));
            }
        }
    }
    images.sort_by_key(|i| i.index);
    let frozen = started.elapsed();
    let mut state = ServerState::of_hub(run.hub);
    let conns: usize = images.iter().map(|i| i.conns.len()).sum();
    let mut live = LiveImage {
        publish_listener: publish.listener,
        socket_file: run.socket_file.clone(),
        publishers: publish.publishers,
        ..LiveImage::default()
    };
    for image in images {
        live.http_listeners.push(image.listeners);
        live.conns.push(image.conns);
    }
    state.live = Some(live);
    match hand_over(up, &state) {
        Ok(pid) => {
            info!(
                "upgrade: process {pid} took over generation {} ({conns} connections) in {} ms (frozen after {} ms)",
                state.generation + 1,
                started.elapsed().as_millis(),
                frozen.as_millis()
            );
            Ok(pid)
        }
        Err(why) => Err(thaw(run, asked, why)),
    }
}

/// Serves on after a failed upgrade: thaws `reactors` reactors and the publish thread (which
/// answers the connections that asked with `why`), ends `RELOADING`; returns `why`.
fn thaw(run: &Running<'_>, reactors: usize, why: String) -> String {
    for l in run.reactors.iter().take(reactors) {
        l.send(ReactorCommand::Thaw);
    }
    let _ = run.publisher.control.send(Control::Thaw {
        error: Some(why.clone()),
    });
    let _ = run.publisher.waker.wake();
    systemd::ready();
    why
}

/// Ends this process after a successful upgrade: the log is flushed, nothing else runs (no
/// destructor: the publish socket's path and every socket now belong to the new process).
pub fn leave() -> ! {
    log::logger().flush();
    let _ = io::stdout().flush();
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(0) }
}

/// A memfd holding `bytes`, positioned at its start, closed on exec (the child gets its
/// descriptor through `pre_exec`).
fn memfd_with(bytes: &[u8]) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File at once.
    let fd = unsafe { libc::memfd_create(c"pnsd-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The descriptors the new process inherits: every listener and connection of `live`.
fn carried_fds(live: &LiveImage) -> Vec<i32> {
    let mut fds: Vec<i32> = live.http_listeners.iter().flatten().copied().collect();
    fds.extend(live.conns.iter().flatten().map(|c| c.fd));
    fds.push(live.publish_listener);
    fds.extend(live.publishers.iter().map(|p| p.fd));
    fds
}

/// Starts the new binary with `state` and waits for it to take over; its pid, or why not.
fn hand_over(up: &Upgrader, state: &ServerState) -> Result<u32, String> {
    let image = state.encode();
    let memfd = memfd_with(&image).map_err(|e| format!("cannot write the state image: {e}"))?;
    let (ready_r, ready_w) = pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut keep = state.live.as_ref().map(carried_fds).unwrap_or_default();
    keep.push(memfd.as_raw_fd());
    keep.push(ready_w.as_raw_fd());
    let mut cmd = Command::new(&up.exe);
    cmd.args(&up.args)
        .env(STATE_ENV, memfd.as_raw_fd().to_string())
        .env(READY_ENV, ready_w.as_raw_fd().to_string());
    // SAFETY: between fork and exec only fcntl runs (async-signal-safe), on descriptors this
    // process owns; `keep` was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", up.exe.display()))?;
    drop(ready_w);
    drop(memfd);
    info!(
        "upgrade: started {} (pid {}) with a {} KB state image",
        up.exe.display(),
        child.id(),
        image.len() / 1024
    );
    match wait_taken_over(ready_r, TAKEOVER_WAIT) {
        Ok(()) => Ok(child.id()),
        Err(why) => Err(stop(&mut child, why)),
    }
}

/// Reaps (killing it first if it still runs) a child that did not take over; the reason.
fn stop(child: &mut Child, why: String) -> String {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    match child.wait() {
        Ok(status) => format!("{why} (new process {status})"),
        Err(_) => why,
    }
}

/// Waits for `TAKEN_OVER` on `ready` for at most `within`.
fn wait_taken_over(ready: OwnedFd, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(TAKEN_OVER.len());
    let mut f = File::from(ready);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the new binary did not take over within {} s",
                within.as_secs()
            ));
        }
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        if n <= 0 {
            continue; // timeout slice or EINTR: look at the deadline again
        }
        let mut buf = [0u8; 64];
        match f.read(&mut buf) {
            Ok(0) => return Err("the new binary exited before taking over".into()),
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                if got.starts_with(TAKEN_OVER) {
                    return Ok(());
                }
                if got.len() >= TAKEN_OVER.len() {
                    return Err("the new binary answered something else".into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the new binary's report: {e}")),
        }
    }
}

/// What an upgraded process inherits: the state image and the pipe to report on.
pub struct Inheritance {
    pub state: ServerState,
    ready: File,
}

impl Inheritance {
    /// Tells the previous process that this one serves (it exits on reading it).
    pub fn report_taken_over(mut self) {
        if let Err(e) = self.ready.write_all(TAKEN_OVER) {
            warn!("cannot report the take-over to the previous process: {e}");
        }
    }
}

/// The inheritance of a process started by an upgrade (`None` for any other start), read
/// before any other thread runs; the variables are removed so that no later child sees them.
pub fn inherited() -> Result<Option<Inheritance>, String> {
    let (Some(state_fd), Some(ready_fd)) =
        (std::env::var_os(STATE_ENV), std::env::var_os(READY_ENV))
    else {
        return Ok(None);
    };
    std::env::remove_var(STATE_ENV);
    std::env::remove_var(READY_ENV);
    let fd_of = |v: OsString, what: &str| -> Result<i32, String> {
        v.to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|fd| *fd > 2)
            .ok_or_else(|| format!("{what} does not name a descriptor"))
    };
    let state_fd = fd_of(state_fd, STATE_ENV)?;
    let ready_fd = fd_of(ready_fd, READY_ENV)?;
    // SAFETY: the previous process handed these descriptors to this one for these uses.
    let (mut image, ready) = unsafe { (File::from_raw_fd(state_fd), File::from_raw_fd(ready_fd)) };
    for f in [&image, &ready] {
        // Not inherited by anything this process starts later.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mut bytes = Vec::new();
    image
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the upgrade state: {e}"))?;
    let state = ServerState::decode(&bytes).map_err(|e| format!("upgrade state refused: {e}"))?;
    if state.live.is_none() {
        return Err("upgrade state refused: it carries no descriptors".into());
    }
    Ok(Some(Inheritance { state, ready }))
}
