//! A private `redis-server` for tests and benchmarks: started from PATH on a Unix socket in its
//! own temp dir, with no TCP port and no snapshots (or with an append-only file fsynced on every
//! write, for tests that kill and restart it and expect their data back), killed on drop.
//!
//! When `redis-server` is not on PATH, `RedisServer::start` prints one loud line saying the
//! test was skipped and how to install it, and returns `None`; with `PNSD_REQUIRE_ALL=1` in the
//! environment it panics instead, so CI cannot skip silently.
//!
//! Invariants: every wait is bounded by `READY_DEADLINE`; a stopped (SIGSTOP) server is
//! continued before it is killed, and the child is always reaped; the socket path stays well
//! under the 108-byte `sun_path` limit. Self-contained (no other helper), so a bench can
//! include it with `#[path]`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to get the program on Debian.
pub const INSTALL_HINT: &str = "apt-get install redis-server";
/// Bound on a start or restart on a loaded machine (a restart replays the append-only file).
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// The first `name` found in a directory of PATH.
pub fn program_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when `redis-server` can be run; otherwise one loud line (or a panic under
/// `PNSD_REQUIRE_ALL=1`) naming `test`.
pub fn redis_available(test: &str) -> bool {
    program_available(test, "redis-server", INSTALL_HINT)
}

/// True when `program` is on PATH; otherwise one loud line saying `test` was skipped and how
/// to install it (`hint`), or a panic under `PNSD_REQUIRE_ALL=1`.
pub fn program_available(test: &str, program: &str, hint: &str) -> bool {
    if program_on_path(program).is_some() {
        return true;
    }
    if std::env::var("PNSD_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test}: {program} not found on PATH and PNSD_REQUIRE_ALL=1 ({hint})");
    }
    // Straight to the process's stderr: `eprintln!` would be captured and hidden by the test
    // harness for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "!!!!! SKIPPED {test}: {program} not found on PATH; install it with `{hint}` !!!!!"
    );
    false
}

/// A running `redis-server`. Dropping it kills it and removes its dir.
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    append_only: bool,
    stopped: bool,
}

impl RedisServer {
    /// A fresh server without persistence, or `None` when skipped (see the module docs).
    pub fn start(test: &str) -> Option<RedisServer> {
        RedisServer::start_with(test, false)
    }

    /// A fresh server with `--appendonly yes --appendfsync always`: every acknowledged write
    /// survives a SIGKILL and comes back on `restart`.
    pub fn start_durable(test: &str) -> Option<RedisServer> {
        RedisServer::start_with(test, true)
    }

    fn start_with(test: &str, append_only: bool) -> Option<RedisServer> {
        if !redis_available(test) {
            return None;
        }
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pnsd-rd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create redis temp dir");
        let socket = dir.join("redis.sock");
        let mut server = RedisServer {
            child: None,
            dir,
            socket,
            append_only,
            stopped: false,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .args(["--save", "", "--daemonize", "no", "--logfile"])
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.append_only {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        self.stopped = false;
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(mut con) = self.try_connection() {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("redis-server exited with {status}; see {:?}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not ready: {:?}",
                self.log()
            );
            std::thread::sleep(PROBE_PAUSE);
        }
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(READY_DEADLINE)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// `redis+unix:///.../redis.sock`
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new connection (for setup and checks).
    pub fn connection(&self) -> redis::Connection {
        self.try_connection()
            .expect("connect to the test redis-server")
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped while `child`
            // is Some, so the pid cannot have been reused.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGKILL, and reap it: its clients see the link drop.
    pub fn kill(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// Starts it again in the same dir (with its append-only file, if any).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
