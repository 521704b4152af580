//! Start-up and shutdown of `pnsd serve`: limits, sockets, threads, signals, the drain.
//!
//! Order matters: everything that can fail (secret, publish socket, every listener of every
//! thread) is done before any thread starts and before the start-up line is printed, so a
//! failed start leaves nothing behind (a socket file it created is removed) and a printed line
//! means the server is reachable at every address it names (`metrics=` too, with
//! `--metrics-listen`). Each reactor gets its index (its entry in `hub.gauges`) and the hub's
//! clock; the access log is opened before any thread starts.
//!
//! The publish socket's path is removed (on a failed start and at exit) only while it is still
//! the socket this process bound, recognised by the device and inode recorded right after the
//! bind: during a rolling restart the path may already hold the next server's socket, or a file
//! someone else put there, and neither is ours to delete.
//!
//! Under socket activation (`systemd`) the listeners are inherited instead of bound: each role
//! the service manager passes (HTTP, publish) replaces its option (`--listen`,
//! `--publish-socket`), a role it does not pass is bound as usual. An inherited publish socket
//! belongs to the socket unit: its path is never replaced, chmod-ed or removed. The startup line
//! names what is really served (getsockname), inherited or bound, and `READY=1` follows it.
//!
//! A process started by an upgrade (`upgrade`) binds nothing: its listeners and connections
//! come from the state image (`carried`), its store and sessions from the image too, and it
//! reports "taken over" to the previous process once its threads run. SIGUSR2 (or the
//! `upgrade` op, which raises it) runs an upgrade from the signal loop; a failed one leaves
//! this process serving and the loop waiting for the next signal.

use std::fs;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, UnixListener};
use mio::{Poll, Waker};
use socket2::{Domain, Socket, Type};

use crate::access_log::AccessLog;
use crate::config::{Config, FD_RESERVE};
use crate::cursor;
use crate::fleet::{self, FeedState};
use crate::hub::{Command, Hub, ReactorLink};
use crate::ingest::{Ingest, StoreSink};
use crate::metrics::MetricsServer;
use crate::publish::{FleetRoute, Publisher};
use crate::reactor::{Reactor, DRAIN_MS, WAKER};
use crate::state::{self, SocketFileImage};
use crate::store::Store;
use crate::systemd;
use crate::token::Secret;
use crate::upgrade::{self, Running, Upgrader};

mod carried;
use carried::{adopt, carried_listeners};

/// Pending connections the kernel may queue per listener (clamped by net.core.somaxconn).
pub const LISTEN_BACKLOG: i32 = 65_535;
/// The contract's exit deadline after a signal is 5 s; threads get this much to finish.
const EXIT_WAIT: Duration = Duration::from_millis(DRAIN_MS + 700);

/// Why `serve` did not start. Every such failure is found at run time (exit 1): bad options
/// and combinations are refused by `cli` before `serve` runs (exit 2).
#[derive(Debug)]
pub enum StartError {
    Runtime(String),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        1
    }

    pub fn message(&self) -> &str {
        match self {
            StartError::Runtime(m) => m,
        }
    }
}

/// Raises the soft open-file limit to the hard one and returns it.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let cur = lim.rlim_cur as u64;
    cur
}

/// The publish socket's file as this process bound it. Dropping it removes the path if it is
/// still that file (same device and inode); a path that now names another file is left alone.
/// Between the check and the unlink another process could still swap the path: the window is
/// one system call wide, where an unconditional unlink was always wrong.
struct BoundSocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocketFile {
    fn is_still_ours(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl BoundSocketFile {
    fn image(&self) -> SocketFileImage {
        SocketFileImage {
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
        }
    }

    fn from_image(image: &SocketFileImage) -> BoundSocketFile {
        BoundSocketFile {
            path: image.path.clone(),
            dev: image.dev,
            ino: image.ino,
        }
    }
}

impl Drop for BoundSocketFile {
    fn drop(&mut self) {
        if self.is_still_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Binds the publish socket: a socket file left by a dead server is replaced; a live server
/// or a non-socket at the path is an error.
fn bind_publish_socket(
    path: &Path,
    mode: u32,
) -> Result<(UnixListener, BoundSocketFile), StartError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StartError::Runtime(format!(
                    "a live server already listens on {}",
                    path.display()
                )));
            }
            fs::remove_file(path).map_err(|e| {
                StartError::Runtime(format!(
                    "cannot replace stale socket {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(_) => {
            return Err(StartError::Runtime(format!(
                "{} exists and is not a socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    // SAFETY: umask only changes this process's file creation mask; no other thread runs yet.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| {
        StartError::Runtime(format!(
            "cannot bind publish socket {}: {e}",
            path.display()
        ))
    })?;
    let meta = fs::symlink_metadata(path).map_err(|e| {
        StartError::Runtime(format!(
            "cannot stat publish socket {}: {e}",
            path.display()
        ))
    })?;
    let file = BoundSocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if mode != 0o600 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
    }
    Ok((l, file))
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(s.into()))
}

/// Fails when something already listens on `addr`'s explicit port. SO_REUSEPORT would let a
/// second server share the port (and clients bounce between two runs), so a probe without it
/// (but with SO_REUSEADDR, so TIME_WAIT leftovers do not count) must bind first.
fn probe_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
}

/// The publish socket: the inherited one (never removed by us: `None` file), else bound at
/// `--publish-socket`. Also returns the path to print.
fn publish_socket(
    config: &Config,
    inherited: Option<std::os::unix::net::UnixListener>,
) -> Result<(UnixListener, Option<BoundSocketFile>, PathBuf), StartError> {
    let Some(l) = inherited else {
        let (l, file) = bind_publish_socket(&config.publish_socket, config.publish_socket_mode)?;
        return Ok((l, Some(file), config.publish_socket.clone()));
    };
    let fail =
        |e: io::Error| StartError::Runtime(format!("cannot use the inherited publish socket: {e}"));
    l.set_nonblocking(true).map_err(fail)?;
    let addr = l.local_addr().map_err(fail)?;
    let path = match addr.as_pathname() {
        Some(p) => p.to_path_buf(),
        None => {
            use std::os::linux::net::SocketAddrExt as _;
            match addr.as_abstract_name() {
                Some(name) => PathBuf::from(format!("@{}", String::from_utf8_lossy(name))),
                None => PathBuf::from("(unnamed)"),
            }
        }
    };
    Ok((UnixListener::from_std(l), None, path))
}

/// The HTTP listeners, one per address per thread, and the addresses: inherited ones when
/// socket activation passed any, else bound from `--listen`.
fn http_listeners(
    config: &Config,
    inherited: Vec<std::net::TcpListener>,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), StartError> {
    if inherited.is_empty() {
        return bind_all(config);
    }
    info!("socket activation passed HTTP listeners: --listen is not bound");
    let fail = |e: io::Error| StartError::Runtime(format!("cannot use an inherited listener: {e}"));
    let mut addrs = Vec::with_capacity(inherited.len());
    let mut per_thread: Vec<Vec<TcpListener>> = (0..config.threads).map(|_| Vec::new()).collect();
    for l in inherited {
        // O_NONBLOCK is on the open file, shared with the service manager's copy (which does
        // not care: it only polls the socket while no service runs).
        l.set_nonblocking(true).map_err(fail)?;
        let addr = l.local_addr().map_err(fail)?;
        if !addr.ip().is_loopback() && config.secret_file.is_none() && !config.allow_anonymous {
            return Err(StartError::Runtime(format!(
                "inherited listener {addr} is not loopback: give --secret-file, or --allow-anonymous to serve open channels"
            )));
        }
        // One socket, so one accept queue, shared by every reactor through its own descriptor
        // (SO_REUSEPORT's per-thread queues need sockets pnsd would bind itself). A new
        // connection wakes every reactor waiting in epoll; the first to accept wins and the
        // others read WouldBlock. EPOLLEXCLUSIVE would wake one, but mio cannot register it:
        // up to threads - 1 wasted wake-ups per new connection when idle (busy reactors
        // coalesce the edges), none per request on a kept-alive connection.
        for slot in per_thread.iter_mut() {
            slot.push(TcpListener::from_std(l.try_clone().map_err(fail)?));
        }
        addrs.push(addr);
    }
    Ok((per_thread, addrs))
}

/// Binds every address once per thread; port 0 is resolved by the first bind and reused.
fn bind_all(config: &Config) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), StartError> {
    let mut resolved = Vec::with_capacity(config.listen.len());
    let mut per_thread: Vec<Vec<TcpListener>> = (0..config.threads).map(|_| Vec::new()).collect();
    for &addr in &config.listen {
        probe_port_free(addr)
            .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))?;
        let mut real = addr;
        for (t, slot) in per_thread.iter_mut().enumerate() {
            let l = bind_listener(real)
                .map_err(|e| StartError::Runtime(format!("cannot listen on {real}: {e}")))?;
            if t == 0 {
                real = l
                    .local_addr()
                    .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))?;
            }
            slot.push(l);
        }
        resolved.push(real);
    }
    Ok((per_thread, resolved))
}

/// The max-connections default: the open-file limit less a reserve.
pub fn default_max_connections(nofile: u64) -> usize {
    // A small limit (a test, a tiny container) keeps three quarters of it for connections.
    nofile.saturating_sub(FD_RESERVE.min(nofile / 4)).max(1) as usize
}

/// Longest start-up wait for the feed to read the fleet's epoch and the log up to its head:
/// a backfill of the default million entries takes a few seconds; past this the node serves
/// what it holds (and resets cursors once the epoch arrives) rather than never starting.
const FLEET_START_WAIT: Duration = Duration::from_secs(30);
/// How often start-up looks at the feed's progress.
const FLEET_START_POLL: Duration = Duration::from_millis(5);

/// Waits (bounded) until the feed took the fleet's epoch and read the log to its head, so the
/// first poll on this node already sees what every other node does.
fn wait_for_the_log(state: &FeedState) {
    let started = Instant::now();
    loop {
        let s = state.stats();
        if s.epoch != 0 && s.lag == 0 {
            info!("redis: the log is read up to seq {}", s.last_seq);
            return;
        }
        if started.elapsed() >= FLEET_START_WAIT {
            warn!(
                "redis: the log is not read after {} s (link up: {}); serving what this node holds",
                FLEET_START_WAIT.as_secs(),
                s.connected
            );
            return;
        }
        std::thread::sleep(FLEET_START_POLL);
    }
}

/// Turns off glibc's fastbins before any thread starts. With them, the first large allocation
/// after a mass free (the TTL sweep dropping a million channels) consolidates every fastbin
/// chunk at once, under the store's write lock: `cargo bench --bench store`, 1,000,000 channels
/// expired 256 per slice, worst slice 167.6 ms with glibc's defaults, 4.3 ms with
/// `M_MXFAST=0` (median 135 -> 161 us, p99 248 -> 235 us), and creating the channels costs no
/// more (1611 -> 1388 ns per publish). Other allocators (musl) have no such knob.
fn no_fastbins() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// Runs the server until a signal's drain completes. Returns the exit status.
pub fn serve(config: Config) -> Result<(), StartError> {
    no_fastbins();
    // First, while this is the only thread: both unset variables of the environment.
    let upgrader = Upgrader::at_start();
    let mut inheritance = upgrade::inherited().map_err(StartError::Runtime)?;
    let inherited = match inheritance {
        Some(_) => systemd::Inherited::default(),
        None => systemd::take_listen_fds().map_err(StartError::Runtime)?,
    };
    let secret = match &config.secret_file {
        Some(p) => Some(Secret::from_file(p).map_err(|e| {
            // A missing, unreadable or empty key file is a run-time failure (exit 1).
            StartError::Runtime(format!("cannot use --secret-file {}: {e}", p.display()))
        })?),
        None => None,
    };
    let nofile = raise_nofile();
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| default_max_connections(nofile));
    let signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGUSR2])
        .map_err(|e| StartError::Runtime(format!("cannot install signal handlers: {e}")))?;

    // `socket_file` removes the path when `serve` returns, on every failed start too (never an
    // inherited socket's path: it is `None` then).
    let live = inheritance.as_ref().and_then(|i| i.state.live.as_ref());
    let (publish_listener, socket_file, socket_path, listeners, addrs) = match live {
        Some(live) => carried_listeners(live, config.threads)?,
        None => {
            let (l, file, path) = publish_socket(&config, inherited.publish)?;
            let (listeners, addrs) = http_listeners(&config, inherited.http)?;
            (l, file, path, listeners, addrs)
        }
    };

    // Not carried by an upgrade: bound again (SO_REUSEPORT lets the new process bind while the
    // old one still holds it; a scrape waiting in the old backlog is lost).
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind_listener(addr).map_err(|e| {
            StartError::Runtime(format!("cannot listen on --metrics-listen {addr}: {e}"))
        })?),
        None => None,
    };
    let access_log = match &config.access_log {
        Some(path) => Some(AccessLog::open(path).map_err(|e| {
            StartError::Runtime(format!("cannot open --access-log {}: {e}", path.display()))
        })?),
        None => None,
    };

    let threads = config.threads;
    let state_file = config.state_file.clone();
    // An upgrade keeps the epoch its carried cursors are in; in fleet mode the feed then finds
    // the fleet still on it and resets no carried poll (`Ingest::take_epoch`).
    let epoch = inheritance
        .as_ref()
        .map_or_else(cursor::random_epoch, |i| i.state.store.epoch);
    let mut hub = Hub::new(config, max_connections, secret, epoch);
    hub.access_log = access_log;
    if let Some(i) = &inheritance {
        let c = &hub.config;
        let ttl_ms = c.message_ttl_secs.saturating_mul(1000);
        let (buffer, max_channels) = (c.buffer, c.max_channels);
        let (image, age, now_ms) = (i.state.store.clone(), i.state.age_ms(), hub.clock.now_ms());
        let store = Store::restore(image, buffer, ttl_ms, max_channels, now_ms, age)
            .map_err(|e| StartError::Runtime(format!("upgrade state refused: {e}")))?;
        hub.sessions.restore(i.state.sessions.clone(), now_ms, age);
        if hub.config.fleet.is_some() {
            // Fleet mode: the store is the log's, read again by this process's feed before
            // anything is served (as at any node's start): same epoch (the hub's, from the
            // image), nothing missed.
            hub.generation = i.state.generation + 1;
        } else {
            hub = hub.restored(store, i.state.generation + 1);
        }
    } else if let (Some(path), Some(_)) = (&state_file, &hub.config.fleet) {
        warn!(
            "--state-file {} is not read in fleet mode: the log in Redis is the state",
            path.display()
        );
    } else if let Some(path) = &state_file {
        let c = &hub.config;
        let now_ms = hub.clock.now_ms();
        let ttl_ms = c.message_ttl_secs.saturating_mul(1000);
        if let Some(go_on) = state::load_store(path, c.buffer, ttl_ms, c.max_channels, now_ms) {
            hub.sessions.restore(go_on.sessions, now_ms, go_on.age_ms);
            hub = hub.restored(go_on.store, go_on.generation);
        }
    }
    let hub = Arc::new(hub);
    let mut links = Vec::with_capacity(threads);
    let mut reactors: Vec<Reactor> = Vec::with_capacity(threads);
    for (i, l) in listeners.into_iter().enumerate() {
        let setup = || -> io::Result<(Reactor, ReactorLink)> {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let (tx, rx) = mpsc::channel();
            let r = Reactor::new(poll, l, hub.clone(), rx, i, hub.clock.clone())?;
            Ok((
                r,
                ReactorLink {
                    commands: tx,
                    waker,
                },
            ))
        };
        let (r, link) =
            setup().map_err(|e| StartError::Runtime(format!("cannot start a reactor: {e}")))?;
        reactors.push(r);
        links.push(link);
    }
    let links = Arc::new(links);
    let ingest = Ingest::new(hub.clone(), links.clone());
    let (mut publisher, publisher_link) = Publisher::new(publish_listener, ingest.clone())
        .map_err(|e| StartError::Runtime(format!("cannot start the publish thread: {e}")))?;
    // Fleet mode: the feed fills the store from the log before any poll is served.
    let feed = match hub.config.fleet.as_deref().cloned() {
        Some(opts) => {
            let ttl_ms = hub.config.message_ttl_secs.saturating_mul(1000);
            let sink = Arc::new(StoreSink::new(ingest));
            let (state, handle) = fleet::spawn(opts.clone(), ttl_ms, sink)
                .map_err(|e| StartError::Runtime(format!("cannot start the feed thread: {e}")))?;
            let _ = hub.fleet.set(state.clone());
            publisher.route_to_fleet(FleetRoute::new(opts, state.clone()));
            wait_for_the_log(&state);
            Some((state, handle))
        }
        None => None,
    };
    if let Some(live) = inheritance.as_mut().and_then(|i| i.state.live.take()) {
        adopt(live, &mut reactors, &mut publisher, hub.generation)?;
    }

    let metrics = match metrics_listener {
        Some(l) => {
            let addr = l
                .local_addr()
                .map_err(|e| StartError::Runtime(format!("cannot listen for metrics: {e}")))?;
            let (server, link) = MetricsServer::new(l, hub.clone()).map_err(|e| {
                StartError::Runtime(format!("cannot start the metrics thread: {e}"))
            })?;
            Some((server, link, addr))
        }
        None => None,
    };

    let mut handles = Vec::new();
    for (i, r) in reactors.into_iter().enumerate() {
        let h = std::thread::Builder::new()
            .name(format!("pnsd-reactor-{i}"))
            .spawn(move || r.run())
            .map_err(|e| StartError::Runtime(format!("cannot spawn a reactor thread: {e}")))?;
        handles.push(h);
    }
    handles.push(
        std::thread::Builder::new()
            .name("pnsd-publish".into())
            .spawn(move || publisher.run())
            .map_err(|e| StartError::Runtime(format!("cannot spawn the publish thread: {e}")))?,
    );

    let mut metrics_word = String::new();
    let mut metrics_link = None;
    if let Some((server, link, addr)) = metrics {
        handles.push(
            std::thread::Builder::new()
                .name("pnsd-metrics".into())
                .spawn(move || server.run())
                .map_err(|e| {
                    StartError::Runtime(format!("cannot spawn the metrics thread: {e}"))
                })?,
        );
        metrics_word = format!(" metrics=http://{addr}{}", crate::metrics::PATH);
        metrics_link = Some(link);
    }

    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    println!(
        "pnsd listening on {} publish={} threads={} store={}{metrics_word}",
        urls.join(" "),
        socket_path.display(),
        threads,
        hub.config.store_name()
    );
    let _ = io::stdout().flush();
    if let Some(i) = inheritance {
        i.report_taken_over();
        systemd::mainpid(std::process::id());
        info!("took over generation {}", hub.generation);
    }
    systemd::ready();
    info!("max connections {max_connections}, open-file limit {nofile}");

    let mut signals = signals;
    let running = Running {
        hub: &hub,
        reactors: &links,
        publisher: &publisher_link,
        socket_file: socket_file.as_ref().map(BoundSocketFile::image),
    };
    for sig in signals.forever() {
        if sig != libc::SIGUSR2 {
            info!("signal {sig}: draining");
            break;
        }
        info!("upgrade requested");
        match upgrade::upgrade(&upgrader, &running) {
            Ok(_) => upgrade::leave(),
            Err(why) => warn!("upgrade failed, serving on: {why}"),
        }
    }
    systemd::stopping();
    let started = Instant::now();
    hub.draining.store(true, Ordering::Relaxed);
    for l in links.iter() {
        l.send(Command::Drain);
    }
    let _ = publisher_link.drain.send(());
    let _ = publisher_link.waker.wake();
    if let Some(m) = &metrics_link {
        m.wake();
    }
    if let Some((state, handle)) = feed {
        // It ends within one XREAD block; the drain does not wait for Redis otherwise.
        state.stop();
        handles.push(handle);
    }
    while started.elapsed() < EXIT_WAIT && handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if handles.iter().any(|h| !h.is_finished()) {
        warn!("drain did not finish in time; exiting anyway");
    }
    if let (Some(path), None) = (&state_file, &hub.config.fleet) {
        state::save(&hub, path);
    }
    drop(socket_file);
    Ok(())
}
