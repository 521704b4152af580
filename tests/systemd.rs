//! pnsd under systemd, against the real binary: socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`) and the `sd_notify` messages (`READY=1`, `STOPPING=1`).
//!
//! Most tests hand pnsd sockets the test bound itself, as systemd does: a `pre_exec` hook
//! copies them to descriptors 3, 4, ... and the command runs through `sh -c` that exports
//! `LISTEN_PID=$$` and execs pnsd in place (the pid must be pnsd's own, known only after the
//! fork; `sh` needs nothing beyond a Debian base system). One test uses the real
//! `systemd-socket-activate` (Debian's `systemd` package), skipped loudly when it is missing
//! unless `PNSD_REQUIRE_ALL=1`. The notify tests bind a Unix datagram socket and name it in
//! `NOTIFY_SOCKET`. The shipped units (`dist/systemd`) are checked against the names pnsd
//! reads and with `systemd-analyze verify` (skipped the same way without it).

mod common;

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::redis_server::program_available;
use common::*;

/// Exports `LISTEN_PID` as the shell's own pid, then execs `$0 "$@"` (pnsd) in that process.
const AS_ACTIVATED: [&str; 3] = [
    "/bin/sh",
    "-c",
    "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"",
];

/// Descriptors above every target, used as a stepping stone in `pass_fds`.
const HIGH_FD: RawFd = 100;

/// Makes the child start with `fds` at descriptors 3, 4, ... (the order of `LISTEN_FDS`), with
/// `LISTEN_FDS` = `listen_fds` and `LISTEN_FDNAMES` = `names` when given. The copies go through
/// descriptors at or above [`HIGH_FD`] first, so a source that already sits at 3.. is not
/// overwritten before it is copied; `dup2` leaves the final copies without CLOEXEC.
fn pass_fds(cmd: &mut Command, fds: &[RawFd], listen_fds: &str, names: Option<&str>) {
    cmd.env("LISTEN_FDS", listen_fds);
    match names {
        Some(n) => cmd.env("LISTEN_FDNAMES", n),
        None => cmd.env_remove("LISTEN_FDNAMES"),
    };
    let fds = fds.to_vec();
    let mut high = vec![0; fds.len()];
    // SAFETY: the hook runs in the forked child before exec and calls only fcntl and dup2
    // (async-signal-safe) on buffers allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (h, &fd) in high.iter_mut().zip(&fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FD);
                if *h < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (target, &h) in (3..).zip(&high) {
                if libc::dup2(h, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Device and inode of the file at `path`.
fn file_id(path: &Path) -> (u64, u64) {
    let m =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.dev(), m.ino())
}

/// A TCP listener on a loopback port the kernel picks.
fn tcp_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind tcp")
}

/// Parks one poll per connection on `channel`, publishes once, and checks every connection
/// gets exactly that message.
fn park_publish_deliver(server: &Server, addr: SocketAddr, channel: &str, polls: usize) {
    let mut conns: Vec<HttpConn> = (0..polls).map(|_| HttpConn::connect(addr)).collect();
    for c in conns.iter_mut() {
        c.get(&poll_target(&[channel], None, Some(60)));
    }
    server.wait_parked(polls as u64);
    let id = server.publish(channel, r#"{"n":1}"#);
    for c in conns.iter_mut() {
        let a = check_poll(&c.read_response());
        assert_eq!(a.ids(), std::slice::from_ref(&id), "{}", a.body);
    }
}

#[test]
fn inherited_sockets_serve_every_reactor_and_the_socket_file_is_left_alone() {
    let dir = TempDir::new();
    let socket = dir.join("activated.sock");
    let tcp = tcp_listener();
    let unix = UnixListener::bind(&socket).expect("bind unix");
    let before = file_id(&socket);
    let fds = [tcp.as_raw_fd(), unix.as_raw_fd()];
    let mut server = Server::start_wrapped(
        &AS_ACTIVATED,
        dir,
        socket.clone(),
        &["--threads", "2"],
        &[],
        |cmd| pass_fds(cmd, &fds, "2", Some("http:publish")),
    );
    // The startup line names the inherited address, not a bind of `--listen 127.0.0.1:0`.
    assert_eq!(server.addrs, [tcp.local_addr().expect("addr")]);
    assert_eq!(server.threads, 2);
    assert_eq!(
        file_id(&socket),
        before,
        "the publish socket was bound anew"
    );

    // Both reactors hold the one socket; whichever accepts, every poll is served.
    park_publish_deliver(&server, server.addr, "sa:one", 24);
    let mut keep = server.http();
    assert_eq!(keep.request("/pns/health").status, 200);

    server.signal(libc::SIGTERM);
    let st = server.wait_exit(DEADLINE).expect("exit after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert_eq!(
        file_id(&socket),
        before,
        "the socket file was removed or replaced"
    );
    // The sockets are still the test's (as they stay systemd's): a connection waits in the
    // backlog for the next server instead of being refused.
    UnixStream::connect(&socket).expect("publish socket still listening");
    TcpStream::connect(tcp.local_addr().expect("addr")).expect("http socket still listening");
}

#[test]
fn unnamed_descriptors_go_by_kind_and_every_http_listener_serves() {
    let dir = TempDir::new();
    let socket = dir.join("unnamed.sock");
    let (first, second) = (tcp_listener(), tcp_listener());
    let unix = UnixListener::bind(&socket).expect("bind unix");
    let fds = [first.as_raw_fd(), unix.as_raw_fd(), second.as_raw_fd()];
    let server = Server::start_wrapped(&AS_ACTIVATED, dir, socket, &[], &[], |cmd| {
        pass_fds(cmd, &fds, "3", None)
    });
    let want = [first.local_addr(), second.local_addr()].map(|a| a.expect("addr"));
    assert_eq!(server.addrs, want, "{}", server.line);
    park_publish_deliver(&server, want[1], "sa:two", 3);
    park_publish_deliver(&server, want[0], "sa:two", 3);
}

#[test]
fn a_role_not_passed_is_bound_from_its_option_and_foreign_listen_vars_are_ignored() {
    // Only the publish socket is inherited: HTTP is bound from --listen.
    let dir = TempDir::new();
    let socket = dir.join("publish-only.sock");
    let unix = UnixListener::bind(&socket).expect("bind unix");
    let fds = [unix.as_raw_fd()];
    let server = Server::start_wrapped(&AS_ACTIVATED, dir, socket.clone(), &[], &[], |cmd| {
        pass_fds(cmd, &fds, "1", Some("publish"))
    });
    park_publish_deliver(&server, server.addr, "sa:three", 2);

    assert_eq!(file_id(&socket), file_id(&server.socket));

    // LISTEN_* meant for another process (LISTEN_PID is not pnsd's) are ignored: pnsd binds.
    let dir = TempDir::new();
    let own = dir.join("pnsd.sock");
    let foreign = Server::start_in_with(dir, own, &[], &[], |cmd| {
        cmd.env("LISTEN_PID", "1")
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http");
    });
    park_publish_deliver(&foreign, foreign.addr, "sa:foreign", 1);
}

#[test]
fn bad_socket_activation_is_one_line_and_exit_1() {
    let dir = TempDir::new();
    let sock_path = dir.join("bad.sock");
    let unix = UnixListener::bind(&sock_path).expect("bind unix");
    let other_path = dir.join("bad2.sock");
    let unix2 = UnixListener::bind(&other_path).expect("bind unix");
    let tcp = tcp_listener();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    // Listens on every interface only until pnsd refuses it; nothing connects to it.
    let open = TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0");
    let (t, u, u2, d, o) = (
        tcp.as_raw_fd(),
        unix.as_raw_fd(),
        unix2.as_raw_fd(),
        udp.as_raw_fd(),
        open.as_raw_fd(),
    );
    #[allow(clippy::type_complexity)]
    let cases: [(&[RawFd], &str, Option<&str>, &str); 7] = [
        (&[t], "one", None, "LISTEN_FDS=one"),
        (&[t], "2", Some("http:publish"), "Bad file descriptor"),
        (&[t, u], "2", Some("http"), "1 names for 2 descriptors"),
        (&[d], "1", Some("http"), "fd 3 is named \"http\" but is not"),
        (&[d], "1", None, "is neither a listening TCP socket"),
        (&[u, u2], "2", None, "second publish socket"),
        (&[o], "1", Some("http"), "is not loopback"),
    ];
    let socket_arg = dir.join("unused.sock");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--publish-socket",
        socket_arg.to_str().expect("utf-8 path"),
    ];
    for (fds, count, names, want) in cases {
        let run = run_pnsd_with(&AS_ACTIVATED, &args, &dir.path, |cmd| {
            pass_fds(cmd, fds, count, names)
        });
        let line = run.one_stderr_line();
        assert_eq!(run.code(), Some(1), "LISTEN_FDS={count} {names:?}: {line}");
        assert!(
            line.starts_with("pnsd: ") && line.contains(want),
            "LISTEN_FDS={count} {names:?}: wanted {want:?} in {line:?}"
        );
        assert!(run.stdout.is_empty(), "printed {:?}", run.stdout);
        assert!(
            !socket_arg.exists(),
            "bound --publish-socket after a refusal"
        );
    }
}

/// A pnsd child killed on drop (the notify test spawns its own: its stdout goes to a file, so
/// the test can tell what was printed at the moment a notification arrived).
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ready_follows_the_startup_line_and_stopping_starts_the_drain() {
    let dir = TempDir::new();
    let notify = NotifySocket::bind(&dir);
    let out_path = dir.join("out.log");
    let socket = dir.join("pnsd.sock");
    let mut cmd = pnsd_command(&[]);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--publish-socket",
    ])
    .arg(&socket)
    .env("NOTIFY_SOCKET", &notify.path)
    .env_remove("LISTEN_PID")
    .current_dir(&dir.path)
    .stdin(Stdio::null())
    .stdout(File::create(&out_path).expect("out file"))
    .stderr(File::create(dir.join("err.log")).expect("err file"));
    let mut child = Spawned(cmd.spawn().expect("spawn pnsd"));

    assert_eq!(notify.next(), "READY=1\n");
    // Printed (and flushed) before READY=1 was sent: the whole line is already in the file.
    let out = std::fs::read_to_string(&out_path).expect("read stdout");
    let line = out
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("READY=1 before the startup line: stdout {out:?}"));
    let (addrs, publish, _) = parse_startup_line(line);
    assert_eq!(Path::new(&publish), socket);
    let mut conn = HttpConn::connect(addrs[0]);
    conn.get(&poll_target(&["sd:notify"], None, Some(60)));
    Publisher::connect(&socket).wait_stat("parked", 1);
    assert_eq!(notify.pending(), None, "more than READY=1 while serving");

    let pid = libc::pid_t::try_from(child.0.id()).expect("pid");
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(notify.next(), "STOPPING=1\n");
    // The drain answers the parked poll and the process exits 0.
    let a = check_poll(&conn.read_response());
    assert_eq!(a.c, 0, "{}", a.body);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(notify.pending(), None, "a notification after STOPPING=1");
}

#[test]
fn systemd_socket_activate_starts_pnsd_on_the_first_connection() {
    const TEST: &str = "systemd_socket_activate_starts_pnsd_on_the_first_connection";
    if !program_available(TEST, "systemd-socket-activate", "apt-get install systemd") {
        return;
    }
    // systemd-socket-activate takes no port 0: ask the kernel for a free port and release it.
    let port = tcp_listener().local_addr().expect("addr").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = TempDir::new();
    let socket = dir.join("ssa.sock");
    let listen_tcp = format!("--listen={addr}");
    let listen_unix = format!("--listen={}", socket.display());
    let wrapper = [
        "systemd-socket-activate",
        listen_tcp.as_str(),
        listen_unix.as_str(),
        "--fdname=http:publish",
    ];
    // The activator starts pnsd on the first connection: this one, made before pnsd exists,
    // waits in the backlog and is answered by it.
    let first = thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot connect to {addr}: {e}");
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        HttpConn::from_stream(stream).request("/pns/health").status
    });
    let mut server = Server::start_wrapped(&wrapper, dir, socket.clone(), &[], &[], |_| {});
    assert_eq!(first.join().expect("first connection"), 200);
    assert_eq!(server.addrs, [addr]);
    park_publish_deliver(&server, addr, "sa:ssa", 2);
    server.signal(libc::SIGTERM);
    let st = server.wait_exit(DEADLINE).expect("exit after SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(socket.exists(), "pnsd removed the activator's socket file");
}

/// The shipped units (`dist/systemd`), with `ExecStart=` pointed at the binary under test.
fn shipped_units(into: &TempDir) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd");
    ["pnsd.service", "pnsd.socket", "pnsd-publish.socket"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(src.join(name))
                .unwrap_or_else(|e| panic!("read dist/systemd/{name}: {e}"));
            let path = into.join(name);
            std::fs::write(&path, text.replace("/usr/local/bin/pnsd", BIN)).expect("write unit");
            path
        })
        .collect()
}

/// The `KEY=value` lines of a unit file.
fn unit_values(path: &Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read unit");
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[test]
fn shipped_units_pass_systemd_analyze_and_name_the_roles_pnsd_reads() {
    let dir = TempDir::new();
    let units = shipped_units(&dir);
    let (service, http, publish) = (&units[0], &units[1], &units[2]);
    assert_eq!(
        unit_values(http, "FileDescriptorName"),
        [pnsd::systemd::HTTP]
    );
    assert_eq!(
        unit_values(publish, "FileDescriptorName"),
        [pnsd::systemd::PUBLISH]
    );
    let backlog = pnsd::server::LISTEN_BACKLOG.to_string();
    for socket in [http, publish] {
        assert_eq!(unit_values(socket, "Service"), ["pnsd.service"]);
        assert_eq!(unit_values(socket, "Backlog"), [backlog.as_str()]);
    }
    assert_eq!(
        unit_values(service, "Sockets"),
        ["pnsd.socket pnsd-publish.socket"]
    );
    assert_eq!(unit_values(service, "Type"), ["notify"]);
    // The publish socket pnsd would bind itself is the one the socket unit creates.
    let exec = unit_values(service, "ExecStart").join(" ");
    let listen = unit_values(publish, "ListenStream").join(" ");
    assert!(
        exec.contains(&format!("--publish-socket {listen} ")),
        "{exec}"
    );

    const TEST: &str = "shipped_units_pass_systemd_analyze_and_name_the_roles_pnsd_reads";
    if !program_available(TEST, "systemd-analyze", "apt-get install systemd") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .current_dir(&dir.path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It reports problems (unknown keys, bad values) as warnings naming the file, with exit 0.
    assert!(
        out.status.success() && !stderr.contains("pnsd"),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
}
