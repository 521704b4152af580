//! The service manager's side of pnsd: socket activation (`sd_listen_fds_with_names`) and
//! state notifications (`sd_notify`), through the `sd-notify` crate (which checks
//! `LISTEN_PID`, counts `LISTEN_FDS`, sets CLOEXEC and sends datagrams); the names of
//! `LISTEN_FDNAMES` are read here.
//!
//! Invariants:
//! - [`take_listen_fds`] runs once, on the main thread before any other thread exists: it
//!   reads `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` and removes them from the environment
//!   whatever they said, so a process started later (an upgraded binary) never mistakes them
//!   for its own. Descriptors are taken only when `LISTEN_PID` is this process.
//! - Every inherited descriptor is `CLOEXEC` and owned by exactly one value from the moment it
//!   is read: on an error every one of them is closed, none is leaked or closed twice.
//! - The role of a descriptor is its name when the name is [`HTTP`] or [`PUBLISH`] (and the
//!   socket must then be of that kind: a listening TCP socket, a listening Unix stream socket);
//!   any other name (systemd's default is the socket unit's name, `systemd-socket-activate`
//!   without `--fdname` sets none, which reads as `unknown`) is classified by the socket's
//!   kind. Anything else (UDP, datagram, not listening, not a socket) is refused, and so is a
//!   second publish socket.
//! - Notifications are best effort: each is a no-op without `NOTIFY_SOCKET`, and a failure to
//!   send is logged, never fatal. `NOTIFY_SOCKET` stays in the environment: a binary that takes
//!   over the service (an upgrade, `NotifyAccess=all`) reports to the same manager. An
//!   abstract-namespace `NOTIFY_SOCKET` (`@name`) is not supported by the crate; systemd passes
//!   a path (`/run/systemd/notify`).

use std::env;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use log::{info, warn};
use sd_notify::NotifyState;
use socket2::{Domain, Protocol, Socket, Type};

/// `FileDescriptorName=` of the HTTP listeners (one or more TCP sockets).
pub const HTTP: &str = "http";
/// `FileDescriptorName=` of the publish socket (one Unix stream socket).
pub const PUBLISH: &str = "publish";

/// The listening sockets the service manager handed over, by role. Empty when pnsd was not
/// socket-activated; a role left empty is bound from the command line as usual.
#[derive(Debug, Default)]
pub struct Inherited {
    /// In the order of the descriptors (the order of `ListenStream=` lines).
    pub http: Vec<std::net::TcpListener>,
    pub publish: Option<UnixListener>,
}

impl Inherited {
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.publish.is_none()
    }
}

/// What kind of listening socket a descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Unix,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Tcp => "listening TCP socket",
            Kind::Unix => "listening Unix stream socket",
        })
    }
}

/// One inherited descriptor, classified.
#[derive(Debug)]
enum Role {
    Http(std::net::TcpListener),
    Publish(UnixListener),
}

/// Takes the sockets passed by socket activation (see the module invariants) and unsets the
/// `LISTEN_*` variables. `Err` is one line for the operator (exit 1).
///
/// Must be called before the process spawns a thread: it changes the environment.
pub fn take_listen_fds() -> Result<Inherited, String> {
    let seen = format!(
        "LISTEN_PID={} LISTEN_FDS={} LISTEN_FDNAMES={}",
        env_or_unset("LISTEN_PID"),
        env_or_unset("LISTEN_FDS"),
        env_or_unset("LISTEN_FDNAMES")
    );
    let fail = |e: &dyn fmt::Display| {
        format!("cannot take the sockets of socket activation ({seen}): {e}")
    };
    let names = env::var("LISTEN_FDNAMES").ok();
    // SAFETY: the caller (`server::serve`, first thing) runs on the main thread before any
    // other thread exists, so nothing reads the environment while it is changed.
    let fds = unsafe {
        let fds = sd_notify::listen_fds_and_unset_env();
        env::remove_var("LISTEN_FDNAMES");
        fds
    }
    .map_err(|e| fail(&e))?;
    // SAFETY: LISTEN_FDS names these descriptors as handed to this process (LISTEN_PID is
    // ours, checked by the crate, which also made each one CLOEXEC and so proved it open);
    // nothing else in the process refers to them, so each gets exactly one owner here, before
    // anything can fail.
    let owned: Vec<OwnedFd> = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    // Names are read only for descriptors that are ours: the crate's own
    // `listen_fds_with_names` compares LISTEN_FDNAMES with zero descriptors when LISTEN_PID is
    // another process's, and so refuses variables that were never meant for us.
    let names: Vec<String> = match names {
        _ if owned.is_empty() => Vec::new(),
        Some(n) => n.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); owned.len()],
    };
    if names.len() != owned.len() {
        return Err(fail(&format!(
            "LISTEN_FDNAMES has {} names for {} descriptors",
            names.len(),
            owned.len()
        )));
    }
    let mut out = Inherited::default();
    for (fd, name) in owned.into_iter().zip(names) {
        let raw = fd.as_raw_fd();
        match classify(fd, &name)? {
            Role::Http(l) => {
                info!("socket activation: fd {raw} ({name}) serves HTTP");
                out.http.push(l);
            }
            Role::Publish(l) => {
                if out.publish.is_some() {
                    return Err(format!(
                        "socket activation passed a second publish socket (fd {raw}, {name:?}); pnsd serves one"
                    ));
                }
                info!("socket activation: fd {raw} ({name}) is the publish socket");
                out.publish = Some(l);
            }
        }
    }
    Ok(out)
}

fn env_or_unset(key: &str) -> String {
    env::var(key).unwrap_or_else(|_| "(unset)".into())
}

/// The rule of the module invariants for one descriptor, which it consumes (closed on `Err`).
fn classify(fd: OwnedFd, name: &str) -> Result<Role, String> {
    let raw: RawFd = fd.as_raw_fd();
    let sock = Socket::from(fd);
    let kind = kind_of(&sock);
    let wanted = match name {
        HTTP => Some(Kind::Tcp),
        PUBLISH => Some(Kind::Unix),
        _ => None,
    };
    let kind = match (wanted, kind) {
        (Some(w), Some(k)) if w == k => k,
        (None, Some(k)) => k,
        (Some(w), _) => {
            return Err(format!(
                "socket activation: fd {raw} is named {name:?} but is not a {w}"
            ))
        }
        (None, None) => {
            return Err(format!(
                "socket activation: fd {raw} ({name:?}) is neither a {} nor a {}",
                Kind::Tcp,
                Kind::Unix
            ))
        }
    };
    Ok(match kind {
        Kind::Tcp => Role::Http(sock.into()),
        Kind::Unix => Role::Publish(sock.into()),
    })
}

/// `Some` for a listening TCP or Unix stream socket; `None` for anything else, including a
/// descriptor that is not a socket at all (its getsockopt fails).
fn kind_of(sock: &Socket) -> Option<Kind> {
    if sock.r#type().ok()? != Type::STREAM || !sock.is_listener().ok()? {
        return None;
    }
    match sock.domain().ok()? {
        Domain::IPV4 | Domain::IPV6 => {
            // A stream socket of another protocol (SCTP) cannot carry HTTP/1.1 here.
            matches!(sock.protocol().ok()?, None | Some(Protocol::TCP)).then_some(Kind::Tcp)
        }
        Domain::UNIX => Some(Kind::Unix),
        _ => None,
    }
}

/// `READY=1`: serving (after the startup line), or serving again after [`reloading`].
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `STOPPING=1`: the drain has started.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253+ wants the clock with it; older versions
/// ignore it): an upgrade has started; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `MAINPID=pid`: the service's main process is now `pid` (the process that took over after
/// an upgrade; systemd accepts it from a process other than the main one with
/// `NotifyAccess=all`).
pub fn mainpid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        let what: Vec<String> = states.iter().map(|s| s.to_string()).collect();
        warn!(
            "cannot tell the service manager {} (NOTIFY_SOCKET={}): {e}",
            what.join(" "),
            env_or_unset("NOTIFY_SOCKET")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::time::Duration;

    fn temp_path(name: &str) -> PathBuf {
        let p = env::temp_dir().join(format!("pnsd-sd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn role(fd: impl Into<OwnedFd>, name: &str) -> Result<&'static str, String> {
        classify(fd.into(), name).map(|r| match r {
            Role::Http(_) => "http",
            Role::Publish(_) => "publish",
        })
    }

    #[test]
    fn names_are_checked_and_other_names_go_by_kind() {
        let tcp = || TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let unix_path = temp_path("classify.sock");
        let unix = || {
            let _ = std::fs::remove_file(&unix_path);
            UnixListener::bind(&unix_path).expect("bind unix")
        };
        assert_eq!(role(tcp(), "http"), Ok("http"));
        assert_eq!(role(tcp(), "unknown"), Ok("http"));
        assert_eq!(role(tcp(), "pnsd.socket"), Ok("http"));
        assert_eq!(role(unix(), "publish"), Ok("publish"));
        assert_eq!(role(unix(), ""), Ok("publish"));
        let e = role(unix(), "http").expect_err("a Unix socket named http");
        assert!(
            e.contains("named \"http\" but is not a listening TCP socket"),
            "{e}"
        );
        let e = role(tcp(), "publish").expect_err("a TCP socket named publish");
        assert!(e.contains("not a listening Unix stream socket"), "{e}");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let e = role(udp, "unknown").expect_err("udp");
        assert!(e.contains("is neither a listening TCP"), "{e}");
        let bound_only = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        bound_only.bind(&any.into()).expect("bind");
        assert!(
            role(bound_only, "http").is_err(),
            "a socket that does not listen"
        );
        let dgram = UnixDatagram::unbound().expect("dgram");
        assert!(role(dgram, "publish").is_err());
        let file = std::fs::File::open("/dev/null").expect("open");
        assert!(role(file, "unknown").is_err(), "not a socket");
        let _ = std::fs::remove_file(&unix_path);
    }

    #[test]
    fn notifications_reach_notify_socket_and_nothing_without_it() {
        let path = temp_path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // Only this test touches NOTIFY_SOCKET, and no test of this crate spawns a process.
        env::set_var("NOTIFY_SOCKET", &path);
        reloading();
        mainpid(4242);
        ready();
        stopping();
        env::remove_var("NOTIFY_SOCKET");
        ready();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            let n = sock.recv(&mut buf).expect("a notification");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let (head, clock) = got[0].split_at("RELOADING=1\nMONOTONIC_USEC=".len());
        assert_eq!(head, "RELOADING=1\nMONOTONIC_USEC=", "{got:?}");
        let usec = clock.trim_end_matches('\n');
        assert!(usec.parse::<u64>().is_ok_and(|t| t > 0), "{got:?}");
        assert_eq!(got[1..], ["MAINPID=4242\n", "READY=1\n", "STOPPING=1\n"]);
        sock.set_nonblocking(true).expect("nonblocking");
        let after = sock.recv(&mut buf);
        assert!(
            after
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "a notification was sent without NOTIFY_SOCKET: {after:?}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
