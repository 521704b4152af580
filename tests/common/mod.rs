//! Helpers for pnsd's integration tests (in the style of mio's `tests/util`).
//!
//! [`Server::start`] spawns the real binary (`CARGO_BIN_EXE_pnsd`) on `127.0.0.1:0` with a
//! publish socket in a private temp dir and reads its startup line; [`HttpConn`] speaks raw
//! HTTP/1.1 over a `TcpStream` and parses answers with `httparse`, so keep-alive and pipelining
//! can be checked byte for byte; [`Publisher`] speaks the NDJSON publish protocol over the Unix
//! socket. [`redis_server::RedisServer`] runs a private `redis-server` for fleet-mode tests.
//!
//! Invariants: every wait is bounded (socket reads use a short read timeout and re-check a
//! deadline; child processes are polled with `try_wait` until a deadline, then killed); every
//! server child is killed and its temp dir removed on drop; nothing here asserts that something
//! was fast, only that it happened before a generous deadline.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A private `redis-server` per test (fleet mode), skipped loudly when it is not installed.
pub mod redis_server;

#[allow(unused_imports)] // not every test binary checks for an outside program
pub use redis_server::program_available;

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_pnsd");

/// Generous bound for anything that should happen "soon" on a shared, noisy 2-core machine
/// running a debug build. Only a bound on waiting, never an assertion about speed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Read timeout of one socket read; loops re-check their deadline after each slice, so a
/// stuck peer costs at most one slice beyond the deadline.
const READ_SLICE: Duration = Duration::from_millis(100);

/// Pause between two samples when waiting for a server-side condition (e.g. stats).
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// Largest header count we accept in an answer; pnsd sends about ten.
const MAX_HEADERS: usize = 64;

/// Distinguishes the temp dirs of one test process.
static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private directory under `std::env::temp_dir()`, removed on drop. The name is short so
/// that a socket path inside it stays well under the 108-byte `sun_path` limit.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("pnsd-it-{}-{}", std::process::id(), n));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running pnsd. Dropping it kills the process and removes its temp dir.
pub struct Server {
    pub child: Child,
    /// The first HTTP address of the startup line.
    pub addr: SocketAddr,
    /// Every HTTP address of the startup line, in order.
    pub addrs: Vec<SocketAddr>,
    /// The publish socket path (as given and as printed).
    pub socket: PathBuf,
    /// `threads=N` of the startup line.
    pub threads: usize,
    /// The startup line without its newline.
    pub line: String,
    /// `metrics=http://ADDR/metrics` of the startup line (with `--metrics-listen`).
    pub metrics: Option<SocketAddr>,
    pub dir: TempDir,
    exited: Option<ExitStatus>,
}

impl Server {
    /// `pnsd --listen 127.0.0.1:0 --publish-socket DIR/pnsd.sock ARGS...`
    pub fn start(args: &[&str]) -> Server {
        Server::start_full(&[], args)
    }

    /// `pnsd BEFORE... --listen 127.0.0.1:0 --publish-socket DIR/pnsd.sock ARGS...`
    pub fn start_full(before: &[&str], args: &[&str]) -> Server {
        let dir = TempDir::new();
        let socket = dir.join("pnsd.sock");
        Server::start_in(dir, socket, before, args)
    }

    /// Like [`Server::start_full`] with a caller-chosen dir and socket path (used to test
    /// stale socket files).
    pub fn start_in(dir: TempDir, socket: PathBuf, before: &[&str], args: &[&str]) -> Server {
        Server::start_in_with(dir, socket, before, args, |_| {})
    }

    /// Like [`Server::start_in`], with `configure` applied to the command before it is
    /// spawned (e.g. a `pre_exec` hook). Its working dir and stdio are set afterwards: the
    /// startup line and `stderr.log` depend on them.
    pub fn start_in_with(
        dir: TempDir,
        socket: PathBuf,
        before: &[&str],
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        Server::start_wrapped(&[], dir, socket, before, args, configure)
    }

    /// Like [`Server::start_in_with`], run through `wrapper` (see [`pnsd_command`]).
    pub fn start_wrapped(
        wrapper: &[&str],
        dir: TempDir,
        socket: PathBuf,
        before: &[&str],
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let mut cmd = pnsd_command(wrapper);
        cmd.args(before)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--publish-socket")
            .arg(&socket)
            .args(args);
        configure(&mut cmd);
        let (child, line) = spawn_and_read_line(cmd, &dir);
        let line = match line {
            Some(line) => line,
            None => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pnsd did not print its startup line; stderr:\n{}",
                    read_text(&dir.join("stderr.log"))
                );
            }
        };
        let (addrs, publish, threads) = parse_startup_line(&line);
        assert_eq!(
            Path::new(&publish),
            socket.as_path(),
            "startup line names another socket: {line}"
        );
        let metrics = startup_metrics(&line);
        Server {
            child,
            addr: addrs[0],
            addrs,
            socket,
            threads,
            metrics,
            line,
            dir,
            exited: None,
        }
    }

    /// A server started with `--secret-file` holding `file_bytes` (and `extra` options);
    /// returns the secret file's path too.
    pub fn start_with_secret(file_bytes: &[u8], extra: &[&str]) -> (Server, PathBuf) {
        let dir = TempDir::new();
        let secret = dir.join("secret");
        std::fs::write(&secret, file_bytes).expect("write secret file");
        let socket = dir.join("pnsd.sock");
        let secret_arg = secret.to_str().expect("utf-8 temp path").to_string();
        let mut args = vec!["--secret-file", secret_arg.as_str()];
        args.extend_from_slice(extra);
        let server = Server::start_in(dir, socket, &[], &args);
        (server, secret)
    }

    /// A new keep-alive HTTP connection to the first address.
    pub fn http(&self) -> HttpConn {
        HttpConn::connect(self.addr)
    }

    /// A new publisher connection.
    pub fn publisher(&self) -> Publisher {
        Publisher::connect(&self.socket)
    }

    /// Publishes `data` (JSON text) to one channel over a fresh connection; returns the ack id.
    pub fn publish(&self, channel: &str, data: &str) -> String {
        self.publisher().publish(channel, data)
    }

    /// The stats object over a fresh publisher connection.
    pub fn stats(&self) -> Value {
        self.publisher().stats()
    }

    /// Waits (bounded) until the stats field `key` equals `want`; returns the last stats.
    /// Each sample uses a fresh publisher connection.
    pub fn wait_stat(&self, key: &str, want: u64) -> Value {
        wait_for_stat(key, want, || self.stats())
    }

    /// Waits (bounded) until exactly `n` polls are parked.
    /// The server's resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn wait_parked(&self, n: u64) -> Value {
        self.wait_stat("parked", n)
    }

    /// The current newest position as a cursor: a `hold=0` poll with no cursor.
    pub fn cursor_now(&self, channel: &str) -> String {
        let mut conn = self.http();
        let a = check_poll(&conn.request(&poll_target(&[channel], None, Some(0))));
        assert_eq!(
            a.c, 0,
            "a hold=0 poll without cursor returned messages: {}",
            a.raw
        );
        a.cursor
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGINT`, ...) to the server.
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exited {
            return Some(st);
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_PAUSE);
        }
    }

    /// The body of `GET /metrics` (the server runs with `--metrics-listen`); panics unless 200.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.expect("started with --metrics-listen");
        let (status, body) = http_get_once(addr, "/metrics");
        assert_eq!(status, 200, "scrape answered {status}: {body}");
        body
    }

    /// The value of one series (`name` or `name{labels}`, as printed) in a fresh scrape.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.scrape(), series)
            .unwrap_or_else(|| panic!("no series {series} in the scrape"))
    }

    /// Waits (bounded) until the series `series` of a scrape equals `want`; returns the scrape.
    /// A scrape the server refuses (it holds its most scrapers and has not yet seen one leave)
    /// counts as "not yet".
    pub fn wait_metric(&self, series: &str, want: f64) -> String {
        let addr = self.metrics.expect("started with --metrics-listen");
        let request = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = match try_http_once(addr, request) {
                Ok((200, body)) => body,
                Ok((status, body)) => panic!("scrape answered {status}: {body}"),
                Err(e) => format!("(refused: {e})"),
            };
            if metric_value(&text, series) == Some(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never became {want}; last scrape:\n{text}"
            );
            thread::sleep(POLL_PAUSE);
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        read_text(&self.dir.join("stderr.log"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let text = self.stderr_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- pnsd ({}) stderr, last lines ---", self.line);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Samples stats with `sample` until the field `key` equals `want` (bounded by [`DEADLINE`],
/// then a panic naming the key and the last stats); returns the last stats.
fn wait_for_stat(key: &str, want: u64, mut sample: impl FnMut() -> Value) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = sample();
        if s[key].as_u64() == Some(want) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "stats {key} never became {want} within {DEADLINE:?}; last stats: {s}"
        );
        thread::sleep(POLL_PAUSE);
    }
}

/// One read from a stream with a read timeout: appends what arrived to `buf`; true at EOF. A
/// reset counts as EOF (answers sent before it were already read or are lost either way); a
/// timeout is no news; any other error fails the test, naming `what`.
fn read_some(stream: &mut impl Read, buf: &mut Vec<u8>, what: &str) -> bool {
    let mut chunk = [0u8; 16384];
    match stream.read(&mut chunk) {
        Ok(0) => true,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            false
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            false
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) =>
        {
            true
        }
        Err(e) => panic!("{what} failed: {e}"),
    }
}

fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Spawns `cmd` in `dir` with stderr to `dir/stderr.log` and returns the first stdout line
/// (read on a helper thread, bounded by [`DEADLINE`]). The helper keeps draining stdout until
/// the child closes it, so a later print never hits a broken pipe.
fn spawn_and_read_line(mut cmd: Command, dir: &TempDir) -> (Child, Option<String>) {
    let stderr = File::create(dir.join("stderr.log")).expect("create stderr log");
    cmd.current_dir(&dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = cmd.spawn().expect("spawn pnsd");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stdout.read(&mut byte) {
                Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
                Ok(1) => break,
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        let mut sink = [0u8; 4096];
        while matches!(stdout.read(&mut sink), Ok(n) if n > 0) {}
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(line) if !line.is_empty() => (child, Some(line)),
        _ => (child, None),
    }
}

/// Parses `pnsd listening on http://ADDR [http://ADDR2 ...] publish=PATH threads=N STORE [metrics=URL]`,
/// where STORE is `store=local` or `store=redis://…` (checked by [`startup_store`]).
pub fn parse_startup_line(line: &str) -> (Vec<SocketAddr>, String, usize) {
    let rest = line
        .strip_prefix("pnsd listening on ")
        .unwrap_or_else(|| panic!("startup line has the wrong prefix: {line:?}"));
    let mut addrs = Vec::new();
    let mut publish = None;
    let mut threads = None;
    for word in rest.split(' ') {
        if let Some(a) = word.strip_prefix("http://") {
            assert!(
                publish.is_none() && threads.is_none(),
                "addresses must come first: {line:?}"
            );
            addrs.push(
                a.parse::<SocketAddr>()
                    .unwrap_or_else(|e| panic!("bad address {a:?} in {line:?}: {e}")),
            );
        } else if let Some(p) = word.strip_prefix("publish=") {
            assert!(threads.is_none(), "publish= before threads=: {line:?}");
            publish = Some(p.to_string());
        } else if word.starts_with("metrics=") {
            assert!(threads.is_some(), "metrics= before threads=: {line:?}");
        } else if let Some(t) = word.strip_prefix("threads=") {
            threads = Some(
                t.parse::<usize>()
                    .unwrap_or_else(|e| panic!("bad threads {t:?} in {line:?}: {e}")),
            );
        } else if word.starts_with("store=") {
            assert!(threads.is_some(), "store= before threads=: {line:?}");
        } else {
            panic!("unexpected word {word:?} in startup line {line:?}");
        }
    }
    assert!(!addrs.is_empty(), "no address in {line:?}");
    for a in &addrs {
        assert_ne!(a.port(), 0, "port 0 not resolved in {line:?}");
    }
    (
        addrs,
        publish.unwrap_or_else(|| panic!("no publish= in {line:?}")),
        threads.unwrap_or_else(|| panic!("no threads= in {line:?}")),
    )
}

/// The `store=` word of a startup line: `local` or the Redis URL as shown (password masked).
pub fn startup_store(line: &str) -> &str {
    line.split(' ')
        .find_map(|w| w.strip_prefix("store="))
        .unwrap_or_else(|| panic!("no store= in {line:?}"))
}

/// The `metrics=http://ADDR/metrics` address of a startup line, if it names one.
pub fn startup_metrics(line: &str) -> Option<SocketAddr> {
    let url = line
        .split(' ')
        .find_map(|w| w.strip_prefix("metrics=http://"))?;
    let addr = url
        .strip_suffix("/metrics")
        .unwrap_or_else(|| panic!("metrics= does not end in /metrics: {line:?}"));
    Some(
        addr.parse()
            .unwrap_or_else(|e| panic!("bad metrics address {addr:?} in {line:?}: {e}")),
    )
}

/// One `GET target` with `Connection: close`: the status and the body (read to EOF).
pub fn http_get_once(addr: SocketAddr, target: &str) -> (u16, String) {
    http_once(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

/// `http_once` that reports a refused or cut connection instead of panicking.
pub fn try_http_once(addr: SocketAddr, request: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(DEADLINE))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    if raw.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(http_once_answer(raw))
}

/// Sends `request` on a fresh connection and reads the answer to EOF: (status, body).
pub fn http_once(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read to EOF");
    http_once_answer(raw)
}

/// (status, body) of a whole answer read to EOF.
fn http_once_answer(raw: Vec<u8>) -> (u16, String) {
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The value of `series` (`name` or `name{labels}` exactly as printed) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The outcome of running pnsd to completion.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The stderr lines, asserting there is exactly one non-empty line.
    pub fn one_stderr_line(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line, got {:?}",
            self.stderr
        );
        assert!(!lines[0].trim().is_empty(), "empty stderr line");
        assert!(
            self.stderr.ends_with('\n'),
            "stderr line not terminated: {:?}",
            self.stderr
        );
        lines[0].to_string()
    }
}

/// `pnsd`, or, with a non-empty `wrapper`, `WRAPPER... pnsd`: a program that ends by exec'ing
/// pnsd in its own process (`systemd-socket-activate`, or `sh -c` exporting `LISTEN_PID=$$`),
/// so the child is pnsd itself for signals and the exit status.
pub fn pnsd_command(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        None => Command::new(BIN),
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(BIN);
            cmd
        }
    }
}

/// Runs `pnsd ARGS...` in `cwd` (a temp dir, so a default `./pnsd.sock` lands there) with
/// `RUST_LOG` removed, waits (bounded) for it to exit and returns its output. A process still
/// running at the deadline is killed and the test fails; so is one that prints the startup
/// line (it is serving and will not exit by itself; every caller expects an exit).
pub fn run_pnsd(args: &[&str], cwd: &Path) -> Run {
    run_pnsd_with(&[], args, cwd, |_| {})
}

/// Like [`run_pnsd`], run through `wrapper` (see [`pnsd_command`]) with `configure` applied
/// to the command before it is spawned.
pub fn run_pnsd_with(
    wrapper: &[&str],
    args: &[&str],
    cwd: &Path,
    configure: impl FnOnce(&mut Command),
) -> Run {
    let out_path = cwd.join(format!(
        "run-{}.out",
        TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let err_path = out_path.with_extension("err");
    let mut cmd = pnsd_command(wrapper);
    cmd.args(args);
    configure(&mut cmd);
    let mut child = cmd
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create out file"))
        .stderr(File::create(&err_path).expect("create err file"))
        .spawn()
        .expect("spawn pnsd");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        let serving = read_text(&out_path).starts_with("pnsd listening on ");
        if serving || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pnsd {args:?} still running (serving: {serving}); stdout {:?} stderr {:?}",
                read_text(&out_path),
                read_text(&err_path)
            );
        }
        thread::sleep(POLL_PAUSE);
    };
    let run = Run {
        status,
        stdout: read_text(&out_path),
        stderr: read_text(&err_path),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    run
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The counters of the stats line (PROTOCOL.md section 5), besides `ok`.
pub const STATS_FIELDS: [&str; 6] = [
    "connections",
    "parked",
    "channels",
    "messages",
    "published",
    "delivered",
];

/// Percent-encodes everything except RFC 3986 unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/pns/poll?channel=..&channel=..[&cursor=..][&hold=..]` (names and cursor percent-encoded).
pub fn poll_target(channels: &[&str], cursor: Option<&str>, hold: Option<u64>) -> String {
    let mut parts: Vec<String> = channels
        .iter()
        .map(|c| format!("channel={}", pct(c)))
        .collect();
    if let Some(c) = cursor {
        parts.push(format!("cursor={}", pct(c)));
    }
    if let Some(h) = hold {
        parts.push(format!("hold={h}"));
    }
    format!("/pns/poll?{}", parts.join("&"))
}

/// `GET TARGET HTTP/1.1` with a Host header, then one `Name: value` line per entry of
/// `headers`, in order.
pub fn get_with(target: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: pnsd.test\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// A plain `GET TARGET HTTP/1.1` request with a Host header.
pub fn get_request(target: &str) -> String {
    get_with(target, &[])
}

/// One parsed HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of headers named `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// True when some header named `name` lists `token` in its comma-separated value (both
    /// compared case-insensitively).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// True when a `Connection` header carries the `close` token.
    pub fn closes(&self) -> bool {
        self.has_token("connection", "close")
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_text()))
    }
}

/// How the body of a parsed head is delimited.
enum BodyLen {
    Exact(usize),
    UntilClose,
}

/// Parses one answer head from `buf`; `None` while incomplete.
fn parse_head(buf: &[u8]) -> Option<(Response, usize, BodyLen)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "unparseable answer ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let status = r.code.expect("status code");
    let version = r.version.expect("version");
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8(h.value.to_vec()).expect("header value is UTF-8"),
            )
        })
        .collect();
    let resp = Response {
        status,
        version,
        headers,
        body: Vec::new(),
    };
    assert!(
        resp.header("transfer-encoding").is_none(),
        "pnsd should not chunk: {:?}",
        resp.headers
    );
    let len = if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyLen::Exact(0)
    } else if let Some(cl) = resp.header("content-length") {
        BodyLen::Exact(cl.trim().parse().expect("numeric Content-Length"))
    } else {
        BodyLen::UntilClose
    };
    Some((resp, n, len))
}

/// One Server-Sent Events block, read as EventSource reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `event:`, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with LF; `None` for a block without data (a comment, `retry:`).
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// The block's comment lines (`: ...`), without the colon.
    pub comments: Vec<String>,
}

impl SseEvent {
    fn parse(block: &str) -> SseEvent {
        let mut e = SseEvent {
            id: None,
            event: "message".into(),
            data: None,
            retry: None,
            comments: Vec::new(),
        };
        for line in block.split('\n').filter(|l| !l.is_empty()) {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => e.comments.push(value.to_string()),
                "id" => e.id = Some(value.to_string()),
                "event" => e.event = value.to_string(),
                "retry" => e.retry = Some(value.parse().expect("retry is a number")),
                "data" => match &mut e.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => e.data = Some(value.to_string()),
                },
                other => panic!("unknown field {other:?} in {block:?}"),
            }
        }
        e
    }

    /// The data as JSON.
    pub fn json(&self) -> Value {
        let d = self.data.as_deref().expect("an event with data");
        serde_json::from_str(d).unwrap_or_else(|e| panic!("data {d:?} is not JSON: {e}"))
    }
}

/// A raw HTTP/1.1 client connection.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        HttpConn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> HttpConn {
        stream.set_read_timeout(Some(READ_SLICE)).expect("timeout");
        stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        HttpConn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .expect("write request");
    }

    /// Sends bytes the server may refuse part-way (it can answer and close before reading
    /// them all, e.g. 431 or 400): a failed write is ignored and the answer read decides.
    pub fn send_tolerant(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.stream.write_all(bytes.as_ref());
    }

    /// Sends `GET TARGET HTTP/1.1`.
    pub fn get(&mut self, target: &str) {
        self.send(get_request(target));
    }

    /// Sends `GET TARGET` and reads its answer.
    pub fn request(&mut self, target: &str) -> Response {
        self.get(target);
        self.read_response()
    }

    /// Reads once into the buffer, waiting at most one read slice (see [`read_some`]).
    fn fill_once(&mut self) {
        self.eof |= read_some(&mut self.stream, &mut self.buf, "read");
    }

    /// Reads one complete answer within [`DEADLINE`], panicking otherwise.
    pub fn read_response(&mut self) -> Response {
        match self.try_read_response(DEADLINE) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads one complete answer within `within`.
    pub fn try_read_response(&mut self, within: Duration) -> Result<Response, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((mut resp, head_len, len)) = parse_head(&self.buf) {
                match len {
                    BodyLen::Exact(n) if self.buf.len() >= head_len + n => {
                        resp.body = self.buf[head_len..head_len + n].to_vec();
                        self.buf.drain(..head_len + n);
                        return Ok(resp);
                    }
                    BodyLen::UntilClose if self.eof => {
                        resp.body = self.buf[head_len..].to_vec();
                        self.buf.clear();
                        return Ok(resp);
                    }
                    _ => {}
                }
            }
            if self.eof {
                return Err(format!(
                    "connection closed before a complete answer; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no complete answer within {within:?}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            self.fill_once();
        }
    }

    /// Opens a Server-Sent Events stream: `GET TARGET` with `Accept: text/event-stream` and
    /// `headers`; returns the answer's head (an error answer comes whole, body included).
    pub fn open_events(&mut self, target: &str, headers: &[(&str, &str)]) -> Response {
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        self.send(get_with(target, &all));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some((resp, head_len, len)) = parse_head(&self.buf) {
                if let BodyLen::Exact(_) = len {
                    return self.read_response();
                }
                self.buf.drain(..head_len);
                return resp;
            }
            assert!(!self.eof, "closed before the stream's head");
            assert!(
                Instant::now() < deadline,
                "no stream head within {DEADLINE:?}"
            );
            self.fill_once();
        }
    }

    /// The next event of an open stream (a block ended by a blank line), waiting at most
    /// `within`; `Ok(None)` when the server closed the stream.
    pub fn next_event(&mut self, within: Duration) -> Result<Option<SseEvent>, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("events are UTF-8");
                return Ok(Some(SseEvent::parse(&text)));
            }
            if self.eof {
                assert!(
                    self.buf.is_empty(),
                    "stream closed inside an event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(format!("no event within {within:?}"));
            }
            self.fill_once();
        }
    }

    /// The next event that is not a comment or a `retry:` line, within [`DEADLINE`].
    pub fn next_data_event(&mut self) -> SseEvent {
        loop {
            match self.next_event(DEADLINE) {
                Ok(Some(e)) if e.data.is_some() => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended before an event"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Waits (bounded) for the server to end the stream; returns the events that came first.
    pub fn events_until_close(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        loop {
            match self.next_event(DEADLINE) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Reads an answer whose framing we do not trust (e.g. to `HEAD`): the head, then
    /// everything up to EOF as the body. Use only when the server closes afterwards.
    pub fn read_response_until_close(&mut self) -> Response {
        let deadline = Instant::now() + DEADLINE;
        while !self.eof {
            assert!(
                Instant::now() < deadline,
                "connection not closed within {DEADLINE:?}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.fill_once();
        }
        let (mut resp, head_len, _) = parse_head(&self.buf).unwrap_or_else(|| {
            panic!(
                "no complete head before close: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        });
        resp.body = self.buf[head_len..].to_vec();
        self.buf.clear();
        resp
    }

    /// Waits (bounded) until at least one byte has arrived; it stays buffered for the next
    /// `read_response`.
    pub fn wait_first_byte(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        while self.buf.is_empty() {
            assert!(!self.eof, "closed before any byte arrived");
            assert!(
                Instant::now() < deadline,
                "nothing arrived within {DEADLINE:?}"
            );
            self.fill_once();
        }
    }

    /// Asserts the server closes the connection (EOF or reset) within [`DEADLINE`] without
    /// sending anything more.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        while !self.eof {
            assert!(
                Instant::now() < deadline,
                "connection still open after {DEADLINE:?}"
            );
            self.fill_once();
        }
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// True if no byte and no EOF arrives within `window` (used only to check that a
    /// connection stays open, never as a speed assertion).
    pub fn quiet_for(&mut self, window: Duration) -> bool {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            self.fill_once();
            if self.eof || !self.buf.is_empty() {
                return false;
            }
        }
        true
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }
}

/// A checked poll answer.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    pub c: u64,
    pub msgs: Vec<Value>,
    pub cursor: String,
    pub reset: bool,
    pub raw: Value,
    pub body: String,
}

impl PollAnswer {
    pub fn ids(&self) -> Vec<String> {
        ids_of(&self.msgs)
    }
}

/// The `id` of every message, in order (each must be a string).
pub fn ids_of(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

/// Checks every rule a `200` poll answer must satisfy and returns its parts: status 200,
/// `Content-Type: application/json`, `Cache-Control: no-store`, `ETag: "CURSOR"`, `c` equals
/// the message count (at most 100), a non-empty answer's cursor is its last id, every
/// message has a string `id`, a `channel` and `data`, `type` (when present) is an integer,
/// and `reset` is either absent or `true`.
pub fn check_poll(resp: &Response) -> PollAnswer {
    assert_eq!(resp.status, 200, "poll answer: {:?}", resp.body_text());
    check_json_type(resp);
    assert_eq!(
        resp.header("cache-control"),
        Some("no-store"),
        "Cache-Control of {:?}",
        resp.headers
    );
    let raw = resp.json();
    let obj = raw.as_object().expect("poll body is an object");
    let c = obj
        .get("c")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no numeric c: {raw}"));
    let msgs = obj
        .get("msg")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no msg array: {raw}"))
        .clone();
    let cursor = obj
        .get("cursor")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string cursor: {raw}"))
        .to_string();
    assert!(!cursor.is_empty(), "empty cursor: {raw}");
    assert_eq!(c as usize, msgs.len(), "c disagrees with msg: {raw}");
    assert!(msgs.len() <= 100, "more than 100 messages in one answer");
    let reset = match obj.get("reset") {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(other) => panic!("reset must be absent or true, got {other}"),
    };
    for k in obj.keys() {
        assert!(
            ["c", "msg", "cursor", "reset"].contains(&k.as_str()),
            "unexpected key {k} in {raw}"
        );
    }
    for m in &msgs {
        let mo = m.as_object().expect("message is an object");
        assert!(mo.get("id").and_then(Value::as_str).is_some(), "id: {m}");
        assert!(
            mo.get("channel").and_then(Value::as_str).is_some(),
            "channel: {m}"
        );
        assert!(mo.contains_key("data"), "data: {m}");
        if let Some(t) = mo.get("type") {
            assert!(t.is_i64() || t.is_u64(), "type must be an integer: {m}");
        }
        for k in mo.keys() {
            assert!(
                ["id", "channel", "type", "data"].contains(&k.as_str()),
                "unexpected key {k} in {m}"
            );
        }
    }
    if let Some(last) = msgs.last() {
        assert_eq!(
            last["id"].as_str(),
            Some(cursor.as_str()),
            "cursor of a non-empty answer must be its last id: {raw}"
        );
    }
    assert_eq!(
        resp.header("etag"),
        Some(format!("\"{cursor}\"").as_str()),
        "ETag must be the quoted cursor"
    );
    PollAnswer {
        c,
        msgs,
        cursor,
        reset,
        raw,
        body: resp.body_text(),
    }
}

/// Every message on `channels` after `cursor`, following cursors with `hold=0` polls on one
/// connection until an empty answer, 100 per answer at most; asserts no answer is a reset.
/// `want` (the messages expected) only bounds the number of polls.
pub fn drain_polls(server: &Server, channels: &[&str], cursor: &str, want: usize) -> Vec<Value> {
    let mut c = server.http();
    let mut cursor = cursor.to_string();
    let mut out = Vec::new();
    for _ in 0..want / 100 + 10 {
        let a = check_poll(&c.request(&poll_target(channels, Some(&cursor), Some(0))));
        assert!(!a.reset, "unexpected reset: {}", a.body);
        if a.c == 0 {
            break;
        }
        out.extend(a.msgs);
        cursor = a.cursor;
    }
    out
}

/// Asserts `Content-Type: application/json` (parameters such as a charset allowed).
pub fn check_json_type(resp: &Response) {
    let ct = resp
        .header("content-type")
        .unwrap_or_else(|| panic!("no Content-Type in {:?}", resp.headers));
    let mime = ct.split(';').next().unwrap_or("").trim();
    assert!(
        mime.eq_ignore_ascii_case("application/json"),
        "Content-Type {ct:?}"
    );
}

/// Checks an error answer: the status, JSON content type, a body with exactly a snake_case
/// `errorcode` and a non-empty `message`, and the connection rule (400/408/431/503 carry
/// `Connection: close`; 401/403/404/405 do not). Returns the errorcode.
pub fn check_error(resp: &Response, status: u16) -> String {
    assert_eq!(
        resp.status,
        status,
        "wanted {status}, got {} {:?}",
        resp.status,
        resp.body_text()
    );
    check_json_type(resp);
    let v = resp.json();
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("error body not an object: {v}"));
    assert_eq!(
        o.len(),
        2,
        "error body must have errorcode and message only: {v}"
    );
    let code = o
        .get("errorcode")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no errorcode: {v}"));
    assert!(
        !code.is_empty()
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "errorcode not snake_case: {code:?}"
    );
    let msg = o
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no message: {v}"));
    assert!(!msg.is_empty(), "empty message: {v}");
    match status {
        400 | 408 | 431 | 503 => assert!(resp.closes(), "{status} must say Connection: close"),
        401 | 403 | 404 | 405 => assert!(!resp.closes(), "{status} must keep the connection"),
        _ => {}
    }
    code.to_string()
}

// ---------------------------------------------------------------------------------------------
// Publishing

/// A connection to the publish socket.
pub struct Publisher {
    pub stream: UnixStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Publisher {
    pub fn connect(path: &Path) -> Publisher {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(READ_SLICE)).expect("timeout");
        stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
        Publisher {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("write line");
    }

    /// Half-closes the connection: the server sees EOF after what was sent.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Reads once into the buffer, waiting at most one read slice (see [`read_some`]).
    fn fill_once(&mut self) {
        self.eof |= read_some(&mut self.stream, &mut self.buf, "publisher read");
    }

    /// The next answer line (without its newline), or `None` at EOF; bounded by [`DEADLINE`].
    pub fn try_read_line(&mut self) -> Option<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8(line[..i].to_vec()).expect("answer is UTF-8");
                return Some(text);
            }
            if self.eof {
                assert!(
                    self.buf.is_empty(),
                    "unterminated answer at EOF: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "no answer line within {DEADLINE:?}"
            );
            self.fill_once();
        }
    }

    pub fn read_line(&mut self) -> String {
        self.try_read_line()
            .expect("publish connection closed before an answer")
    }

    /// Reads one answer line and parses it as a JSON object with a boolean `ok`.
    pub fn read_answer(&mut self) -> Value {
        let line = self.read_line();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"));
        assert!(v["ok"].is_boolean(), "answer without boolean ok: {line}");
        v
    }

    /// Sends `line` plus LF and returns the parsed answer.
    pub fn request(&mut self, line: &str) -> Value {
        self.send(format!("{line}\n"));
        self.read_answer()
    }

    /// Publishes `data` (JSON text) to `channel`; asserts the ack and returns its id.
    pub fn publish(&mut self, channel: &str, data: &str) -> String {
        let line = format!(
            "{{\"channel\":{},\"data\":{data}}}",
            Value::String(channel.to_string())
        );
        ack_id(&self.request(&line))
    }

    /// The stats object over this connection; asserts `ok` is true.
    pub fn stats(&mut self) -> Value {
        let v = self.request(r#"{"op":"stats"}"#);
        assert_eq!(v["ok"], Value::Bool(true), "stats answer: {v}");
        v
    }

    /// Registers session `sid` on `channels` for `ttl` seconds; returns the answer line.
    pub fn session(&mut self, sid: &str, channels: &[&str], ttl: u64) -> Value {
        let line =
            serde_json::json!({"op": "session", "sid": sid, "channels": channels, "ttl": ttl});
        self.request(&line.to_string())
    }

    /// Ends session `sid`; returns the answer line.
    pub fn end_session(&mut self, sid: &str) -> Value {
        let line = serde_json::json!({"op": "end_session", "sid": sid});
        self.request(&line.to_string())
    }

    /// Waits (bounded by [`DEADLINE`]) until the stats field `key` equals `want`, sampling over
    /// this connection only (so it works while the server cannot accept a new one); returns
    /// the last stats.
    pub fn wait_stat(&mut self, key: &str, want: u64) -> Value {
        wait_for_stat(key, want, || self.stats())
    }

    /// Publishes `{"channel":CH,"data":i}` for `i` in `0..n` as one pipelined write, then
    /// reads the `n` acks; returns their ids in order.
    pub fn publish_pipelined(&mut self, channel: &str, n: usize) -> Vec<String> {
        let ch = Value::String(channel.to_string());
        let batch: String = (0..n)
            .map(|i| format!("{{\"channel\":{ch},\"data\":{i}}}\n"))
            .collect();
        self.send(&batch);
        (0..n).map(|_| ack_id(&self.read_answer())).collect()
    }

    /// Waits (bounded) for EOF, returning the answer lines that came first.
    pub fn read_until_eof(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(l) = self.try_read_line() {
            lines.push(l);
            assert!(lines.len() < 1_000_000, "endless answers");
        }
        lines
    }
}

/// Asserts `v` is a publish ack `{"ok":true,"id":"..."}` and returns the id.
pub fn ack_id(v: &Value) -> String {
    let o = v.as_object().expect("ack is an object");
    assert_eq!(o.get("ok"), Some(&Value::Bool(true)), "not an ack: {v}");
    assert_eq!(o.len(), 2, "ack must be exactly ok and id: {v}");
    let id = o
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("ack without string id: {v}"));
    assert!(!id.is_empty(), "empty id: {v}");
    id.to_string()
}

/// A publish line of exactly `len` bytes (without its newline) on channel `ch` (a name that
/// needs no JSON escaping), whose data is a string of `x`.
pub fn line_of_len(ch: &str, len: usize) -> String {
    let head = format!("{{\"channel\":\"{ch}\",\"data\":\"");
    let tail = "\"}";
    assert!(len >= head.len() + tail.len());
    let l = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
    assert_eq!(l.len(), len);
    l
}

/// Asserts `v` is an error line `{"ok":false,"error":"..."}` and returns the error text.
pub fn error_text(v: &Value) -> String {
    assert_eq!(v["ok"], Value::Bool(false), "expected an error line: {v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error line without string error: {v}"))
        .to_string()
}

/// A notify socket in `dir` (named as `NOTIFY_SOCKET`) with a bounded `next`.
pub struct NotifySocket {
    sock: UnixDatagram,
    pub path: PathBuf,
}

impl NotifySocket {
    pub fn bind(dir: &TempDir) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(DEADLINE)).expect("timeout");
        NotifySocket { sock, path }
    }

    /// The next datagram, waiting at most [`DEADLINE`].
    pub fn next(&self) -> String {
        let mut buf = [0u8; 1024];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {DEADLINE:?}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// A datagram already queued, if any.
    pub fn pending(&self) -> Option<String> {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 1024];
        let got = self.sock.recv(&mut buf).ok();
        self.sock.set_nonblocking(false).expect("blocking");
        got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}
