//! The upgrade over the real binary (issue 10): the server runs from a copy of pnsd in its
//! temp dir, "the installed binary", which a test replaces. `pnsd upgrade` or SIGUSR2 hands
//! everything to the binary at that path: parked polls stay open and are answered by the new
//! process, re-polling clients and a streaming publisher see every message exactly once, in
//! order, with no reset and no connection error, over three upgrades in a row. Each failure of
//! the new binary (missing, not executable, bad arguments, refusing the state, killed before
//! taking over) leaves the old process serving exactly as before. In fleet mode (`--redis`)
//! the new process reads the store again from the fleet's log instead of the image, and the
//! same guarantees hold across the nodes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;

/// A server started from `DIR/bin/pnsd`, with a spare copy at `DIR/real/pnsd` for scripts to
/// exec; every process that served it is killed on drop.
struct Installed {
    server: Server,
    bin: PathBuf,
    real: PathBuf,
    pids: Vec<u32>,
}

impl Installed {
    fn start(args: &[&str], configure: impl FnOnce(&mut Command)) -> Installed {
        let dir = TempDir::new();
        let bin = dir.join("bin/pnsd");
        let real = dir.join("real/pnsd");
        for path in [&bin, &real] {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::copy(BIN, path).expect("install a copy of pnsd");
            wait_not_busy(path);
        }
        let socket = dir.join("pnsd.sock");
        let installed = bin.to_str().expect("utf-8 temp path").to_string();
        // `sh -c 'shift; exec "$0" "$@"' INSTALLED BIN ARGS...`: pnsd runs from the copy.
        let wrapper = ["sh", "-c", "shift; exec \"$0\" \"$@\"", &installed];
        let server = Server::start_wrapped(&wrapper, dir, socket, &[], args, configure);
        let pids = vec![server.child.id()];
        Installed {
            server,
            bin,
            real,
            pids,
        }
    }

    /// Replaces the installed binary by a shell script (renamed into place, as an installer
    /// does: the running binary is never written to).
    fn install_script(&self, body: &str, mode: u32) {
        let script = format!(
            "#!/bin/sh\n{}\n",
            body.replace("REAL", &sh_quote(&self.real))
        );
        let tmp = self.bin.with_extension("new");
        std::fs::write(&tmp, script).expect("write script");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::fs::rename(&tmp, &self.bin).expect("install script");
        if mode & 0o111 != 0 {
            wait_not_busy(&self.bin);
        }
    }

    fn install_real(&self) {
        let tmp = self.bin.with_extension("new");
        std::fs::copy(BIN, &tmp).expect("copy pnsd");
        std::fs::rename(&tmp, &self.bin).expect("install pnsd");
        wait_not_busy(&self.bin);
    }

    /// `pnsd upgrade --socket SOCKET`.
    fn upgrade_cli(&self) -> Run {
        let socket = self.server.socket.to_str().expect("utf-8 temp path");
        run_pnsd(&["upgrade", "--socket", socket], &self.server.dir.path)
    }

    /// Runs `pnsd upgrade`, expects success and returns the new process's pid.
    fn upgrade_ok(&mut self) -> u32 {
        let run = self.upgrade_cli();
        assert_eq!(run.code(), Some(0), "upgrade failed: {}", run.stderr);
        let answer: serde_json::Value =
            serde_json::from_str(run.stdout.trim()).expect("upgrade answer is JSON");
        let pid = u32::try_from(answer["pid"].as_u64().expect("pid")).expect("pid fits");
        self.pids.push(pid);
        pid
    }

    fn pid_and_generation(&self) -> (u64, u64) {
        let s = self.server.stats();
        (
            s["pid"].as_u64().expect("pid"),
            s["generation"].as_u64().expect("generation"),
        )
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for &pid in &self.pids[1..] {
            // SAFETY: kill(2) of a process this test started through an upgrade.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Waits until `path` can be executed: a file just written may still be open for writing in a
/// child another test thread forked meanwhile (until that child's exec closes it), and exec
/// fails with ETXTBSY until then.
fn wait_not_busy(path: &Path) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Command::new(path).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                assert!(Instant::now() < deadline, "{} stays busy", path.display());
                thread::sleep(Duration::from_millis(10));
            }
            _ => return,
        }
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Process `pid` exists and has not exited (a zombie waiting for its parent has exited).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Waits until process `pid` has exited (an old process leaves after the hand-over).
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + DEADLINE;
    while runs(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Parks `n` polls on `channel` from its current position.
fn park(s: &Server, channel: &str, n: usize) -> (Vec<HttpConn>, String) {
    let cursor = s.cursor_now(channel);
    let mut polls: Vec<HttpConn> = (0..n).map(|_| s.http()).collect();
    for c in &mut polls {
        c.get(&poll_target(&[channel], Some(&cursor), Some(120)));
    }
    (polls, cursor)
}

/// Each parked poll gets exactly `id` (data `data`), no reset.
fn expect_answered(polls: &mut [HttpConn], id: &str) {
    for c in polls {
        let a = check_poll(&c.read_response());
        assert!(!a.reset, "reset after the upgrade: {}", a.raw);
        assert_eq!(a.ids(), vec![id.to_string()], "{}", a.raw);
    }
}

/// What one re-polling client saw: the data of each message, in order.
fn follow(addr: std::net::SocketAddr, channel: String, cursor: String, want: usize) -> Vec<u64> {
    let mut conn = HttpConn::connect(addr);
    let mut cursor = cursor;
    let mut seen = Vec::with_capacity(want);
    while seen.len() < want {
        let a = check_poll(&conn.request(&poll_target(&[&channel], Some(&cursor), Some(5))));
        assert!(!a.reset, "{channel}: reset: {}", a.raw);
        seen.extend(
            a.msgs
                .iter()
                .map(|m| m["data"].as_u64().expect("numeric data")),
        );
        cursor = a.cursor;
    }
    seen
}

#[test]
fn three_upgrades_under_load_lose_repeat_reorder_and_reset_nothing() {
    const CHANNELS: u64 = 4;
    const MESSAGES: u64 = 400;
    let mut up = Installed::start(&["--threads", "2"], |_| {});
    let s = &up.server;
    let (mut parked, _) = park(s, "quiet", 30);
    s.wait_parked(30);
    let followers: Vec<_> = (0..CHANNELS)
        .map(|k| {
            let channel = format!("load{k}");
            let cursor = s.cursor_now(&channel);
            let addr = s.addr;
            thread::spawn(move || follow(addr, channel, cursor, (MESSAGES / CHANNELS) as usize))
        })
        .collect();
    // One publisher connection streams throughout: it is carried by every upgrade.
    let mut publisher = s.publisher();
    let sent = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let streamer = {
        let (sent, progress) = (sent.clone(), progress.clone());
        thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 0..MESSAGES {
                ids.push(publisher.publish(&format!("load{}", i % CHANNELS), &i.to_string()));
                progress.store(i + 1, Ordering::Relaxed);
                if i % 8 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            sent.store(true, Ordering::Relaxed);
            ids
        })
    };
    let first = up.server.child.id();
    let mut pids = vec![first];
    for round in 1..=3u64 {
        // Upgrade while the stream is running.
        let at = progress.load(Ordering::Relaxed);
        let deadline = Instant::now() + DEADLINE;
        while progress.load(Ordering::Relaxed) < at + 20 && !sent.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the publisher stalled");
            thread::sleep(Duration::from_millis(2));
        }
        let pid = up.upgrade_ok();
        assert_eq!(
            up.pid_and_generation(),
            (u64::from(pid), round + 1),
            "stats after upgrade {round}"
        );
        wait_gone(*pids.last().expect("a pid"));
        pids.push(pid);
    }
    let st = up
        .server
        .wait_exit(DEADLINE)
        .expect("the first process exited");
    assert!(st.success(), "the first process's exit: {st:?}");

    let ids = streamer.join().expect("publisher thread");
    assert_eq!(ids.len() as u64, MESSAGES, "every publish acked once");
    let cursors: Vec<pnsd::cursor::Cursor> = ids
        .iter()
        .map(|id| pnsd::cursor::decode(id).expect("ack id is a cursor"))
        .collect();
    assert!(
        cursors
            .windows(2)
            .all(|w| w[0].epoch == w[1].epoch && w[0].seq + 1 == w[1].seq),
        "acks skip, repeat or change epoch: {ids:?}"
    );
    for (k, f) in followers.into_iter().enumerate() {
        let seen = f.join().expect("follower thread");
        let want: Vec<u64> = (0..MESSAGES).filter(|i| i % CHANNELS == k as u64).collect();
        assert_eq!(seen, want, "load{k}: gaps, repeats or disorder");
    }
    // The polls parked since before the first upgrade are still open: one publish answers them.
    let id = up.server.publish("quiet", "\"after\"");
    expect_answered(&mut parked, &id);
    let stats = up.server.stats();
    assert_eq!(stats["published"], MESSAGES + 1);
}

#[test]
fn sigusr2_upgrades_with_reloading_mainpid_and_ready() {
    let dir = TempDir::new();
    let notify = NotifySocket::bind(&dir);
    let notify_path = notify.path.clone();
    let mut up = Installed::start(&["--threads", "2"], |cmd| {
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .env_remove("LISTEN_PID");
    });
    assert_eq!(notify.next(), "READY=1\n");
    let (mut parked, _) = park(&up.server, "sig", 3);
    up.server.wait_parked(3);
    let mut idle = up.server.http();
    assert_eq!(idle.request("/pns/health").status, 200);
    let first = up.server.child.id();

    up.server.signal(libc::SIGUSR2);
    let reloading = notify.next();
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
    let mainpid = notify.next();
    let pid: u32 = mainpid
        .strip_prefix("MAINPID=")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not MAINPID: {mainpid:?}"));
    up.pids.push(pid);
    assert_ne!(pid, first);
    assert_eq!(notify.next(), "READY=1\n");
    let st = up
        .server
        .wait_exit(DEADLINE)
        .expect("the old process exited");
    assert!(st.success(), "{st:?}");
    assert_eq!(up.pid_and_generation(), (u64::from(pid), 2));
    // The parked polls and the idle keep-alive connection were carried.
    let id = up.server.publish("sig", "1");
    expect_answered(&mut parked, &id);
    assert_eq!(idle.request("/pns/health").status, 200);
    assert_eq!(notify.pending(), None);
}

/// The installed binary is made to fail as `install` does; the upgrade is refused with a line
/// naming `why`, and the old process serves on exactly as before; a good binary installed
/// afterwards upgrades.
fn fails_safely(install: impl FnOnce(&Installed), why: &str) {
    let mut up = Installed::start(&["--threads", "2"], |_| {});
    let first = up.server.child.id();
    let (mut parked, _) = park(&up.server, "safe", 2);
    up.server.wait_parked(2);
    let mut publisher = up.server.publisher();
    publisher.publish("other", "0");
    install(&up);

    let run = up.upgrade_cli();
    assert_eq!(run.code(), Some(1), "stdout {}", run.stdout);
    let line = run.one_stderr_line();
    assert!(line.contains(why), "{line:?} does not say {why:?}");
    assert!(up.server.stderr_text().contains(why), "not logged");
    assert_eq!(up.pid_and_generation(), (u64::from(first), 1));
    // Serving as before: the parked polls are answered by the old process, publishes acked.
    let id = publisher.publish("safe", "1");
    expect_answered(&mut parked, &id);
    assert_eq!(up.server.stats()["parked"], 0);

    up.install_real();
    let pid = up.upgrade_ok();
    assert_eq!(up.pid_and_generation(), (u64::from(pid), 2));
    assert!(up.server.wait_exit(DEADLINE).is_some_and(|s| s.success()));
    publisher.publish("safe", "2");
}

#[test]
fn a_missing_binary_leaves_the_server_serving() {
    fails_safely(
        |up| std::fs::remove_file(&up.bin).expect("remove"),
        "No such file",
    );
}

#[test]
fn a_binary_that_is_not_executable_leaves_the_server_serving() {
    fails_safely(
        |up| up.install_script("exec REAL \"$@\"", 0o644),
        "Permission denied",
    );
}

#[test]
fn a_binary_rejecting_the_arguments_leaves_the_server_serving() {
    fails_safely(
        |up| up.install_script("exec REAL --no-such-option \"$@\"", 0o755),
        "exited before taking over (new process exit status: 2)",
    );
}

#[test]
fn a_binary_that_cannot_read_the_state_leaves_the_server_serving() {
    fails_safely(
        |up| {
            up.install_script(
                "[ -n \"$PNSD_UPGRADE_STATE_FD\" ] && exit 1\nexec REAL \"$@\"",
                0o755,
            )
        },
        "exited before taking over (new process exit status: 1)",
    );
}

#[test]
fn a_binary_killed_before_taking_over_leaves_the_server_serving() {
    fails_safely(|up| up.install_script("kill -KILL $$", 0o755), "signal: 9");
}

#[test]
fn a_state_file_server_upgrades_and_keeps_counting() {
    let keep = TempDir::new();
    let state = keep.join("state.json");
    let state_arg = state.to_str().expect("utf-8 temp path");
    let mut up = Installed::start(&["--state-file", state_arg], |_| {});
    let c0 = up.server.cursor_now("st");
    let id = up.server.publish("st", "1");
    up.upgrade_ok();
    assert!(up.server.wait_exit(DEADLINE).is_some());
    assert_eq!(up.pid_and_generation().1, 2);
    // The new process drains on SIGTERM and writes the state the next start continues.
    let pid = *up.pids.last().expect("pid");
    // SAFETY: kill(2) of the process the upgrade started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    wait_gone(pid);
    let next = Server::start(&["--state-file", state_arg]);
    assert_eq!(next.stats()["generation"], 3);
    let a = check_poll(
        &next
            .http()
            .request(&poll_target(&["st"], Some(&c0), Some(0))),
    );
    assert!(!a.reset);
    assert_eq!(a.ids(), vec![id]);
}

#[test]
fn half_received_requests_and_half_sent_answers_are_carried() {
    // 128 messages of 60 kB on two channels: the answer (the first 100, about 6 MB) is more
    // than the kernel buffers of both ends hold (tcp_wmem's 4 MB maximum plus a 64 kB receive
    // buffer), so part of it is still in the server when the upgrade comes.
    const EACH: usize = 64;
    const PER_ANSWER: usize = 100;
    let mut up = Installed::start(&["--threads", "2"], |_| {});
    let s = &up.server;
    let c0 = s.cursor_now("big0");
    let data = serde_json::Value::String("x".repeat(60_000)).to_string();
    let mut publisher = s.publisher();
    let ids: Vec<String> = (0..2 * EACH)
        .map(|i| publisher.publish(&format!("big{}", i % 2), &data))
        .collect();
    let mut slow = s.http();
    socket2::SockRef::from(&slow.stream)
        .set_recv_buffer_size(65_536)
        .expect("SO_RCVBUF");
    slow.get(&poll_target(&["big0", "big1"], Some(&c0), Some(0)));
    // A request head cut in the middle.
    let mut half = s.http();
    half.send("GET /pns/health HTTP/1.1\r\nHo");
    thread::sleep(Duration::from_millis(100));

    up.upgrade_ok();
    assert!(up.server.wait_exit(DEADLINE).is_some_and(|st| st.success()));
    half.send("st: t\r\n\r\n");
    assert_eq!(half.read_response().status, 200);
    let a = check_poll(&slow.read_response());
    assert!(!a.reset);
    assert_eq!(a.ids(), ids[..PER_ANSWER].to_vec());
    assert!(a
        .msgs
        .iter()
        .all(|m| m["data"].as_str().map(str::len) == Some(60_000)));
}

#[test]
fn holds_run_out_and_lines_behind_the_upgrade_op_are_answered_by_the_new_process() {
    let mut up = Installed::start(&["--threads", "2"], |_| {});
    let s = &up.server;
    let c0 = s.cursor_now("hold");
    let mut short = s.http();
    short.get(&poll_target(&["hold"], Some(&c0), Some(2)));
    s.wait_parked(1);
    // The op and a publish behind it in one write: the publish waits for the upgrade's answer
    // and is then published once, by the new process.
    let mut p = s.publisher();
    p.send("{\"op\":\"upgrade\"}\n{\"channel\":\"behind\",\"data\":1}\n");
    let answer = p.read_answer();
    assert_eq!(answer["ok"], true, "{answer}");
    let pid = u32::try_from(answer["pid"].as_u64().expect("pid")).expect("pid fits");
    up.pids.push(pid);
    assert_eq!(answer["generation"], 2);
    let ack = p.read_answer();
    let id = ack["id"].as_str().expect("ack id").to_string();
    assert!(up.server.wait_exit(DEADLINE).is_some_and(|st| st.success()));
    assert_eq!(up.pid_and_generation(), (u64::from(pid), 2));
    assert_eq!(up.server.stats()["published"], 1);
    let got = check_poll(
        &up.server
            .http()
            .request(&poll_target(&["behind"], Some(&c0), Some(0))),
    );
    assert_eq!(got.ids(), vec![id.clone()]);
    // The poll parked before the upgrade is answered at the end of its hold, empty, no reset,
    // its cursor at most the newest position (nothing on its channel was skipped).
    let a = check_poll(&short.read_response());
    assert_eq!((a.c, a.reset), (0, false), "{}", a.raw);
    assert!(a.cursor == c0 || a.cursor == id, "{}", a.raw);
}

#[test]
fn event_streams_and_sessions_are_carried() {
    let mut up = Installed::start(&["--threads", "2"], |_| {});
    let s = &up.server;
    assert_eq!(s.publisher().session("carried", &["inbox"], 60)["ok"], true);
    let first = s.publish("inbox", "1");
    // A session poll gets the message and moves the session's position past it.
    let a = check_poll(&s.http().request("/pns/poll?sid=carried&hold=0"));
    assert_eq!(a.ids(), vec![first]);
    let mut stream = s.http();
    let head = stream.open_events("/pns/poll?channel=live", &[]);
    assert_eq!(head.status, 200);
    s.wait_stat("streams", 1);

    up.upgrade_ok();
    assert!(up.server.wait_exit(DEADLINE).is_some_and(|st| st.success()));
    let s = &up.server;
    assert_eq!(s.stats()["streams"], 1);
    assert_eq!(s.stats()["sessions"], 1);
    // The stream, opened before the upgrade, gets the next message from the new process.
    let id = s.publish("live", "2");
    let e = stream.next_data_event();
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    // The session kept its position: a cursor-less poll gets only what came after it.
    let second = s.publish("inbox", "3");
    let b = check_poll(&s.http().request("/pns/poll?sid=carried&hold=0"));
    assert!(!b.reset, "{}", b.raw);
    assert_eq!(b.ids(), vec![second]);
}

/// One keyed line of a fleet publisher: its number, its ack id, and how many `ok:false`
/// "outcome unknown" answers came before the keyed retry that was acked.
struct Acked {
    i: u64,
    id: String,
    unknown: usize,
}

/// Publishes `{"p":NAME,"i":n}` on channel `s` with key `NAME-n`, n = 0, 1, ..., one line at a
/// time on one connection until `stop`; a line answered "outcome unknown" is sent again with
/// the same key until acked. Returns the acks and the connection (to check nothing more comes).
fn keyed_stream(
    mut p: Publisher,
    name: &'static str,
    stop: Arc<AtomicBool>,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> thread::JoinHandle<(Vec<Acked>, Publisher)> {
    thread::spawn(move || {
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let line =
                format!(r#"{{"channel":"s","data":{{"p":"{name}","i":{i}}},"key":"{name}-{i}"}}"#);
            let mut unknown = 0;
            let id = loop {
                let v = p.request(&line);
                if v["ok"] == true {
                    break ack_id(&v);
                }
                let e = error_text(&v);
                assert!(e.starts_with("outcome unknown"), "{name} line {i}: {e}");
                unknown += 1;
                thread::sleep(Duration::from_millis(20));
            };
            acked.push(Acked { i, id, unknown });
            i += 1;
            progress.fetch_add(1, Ordering::Relaxed);
        }
        (acked, p)
    })
}

/// Re-polls channel `s` on `addr` from `cursor` over one keep-alive connection until the
/// message whose data is `"end"`; every message before it, in order. No answer is a reset.
fn follow_until_end(addr: std::net::SocketAddr, cursor: String) -> Vec<serde_json::Value> {
    let mut conn = HttpConn::connect(addr);
    let mut cursor = cursor;
    let mut seen = Vec::new();
    // Bounds a follower whose test failed before publishing the end.
    let deadline = Instant::now() + 4 * DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "{addr}: the end never came");
        let a = check_poll(&conn.request(&poll_target(&["s"], Some(&cursor), Some(5))));
        assert!(!a.reset, "{addr}: reset: {}", a.raw);
        for m in a.msgs {
            if m["data"] == "end" {
                return seen;
            }
            seen.push(m);
        }
        cursor = a.cursor;
    }
}

fn seq_of(id: &str) -> u64 {
    pnsd::cursor::decode(id).expect("a cursor").seq
}

#[test]
fn a_fleet_node_upgraded_twice_under_keyed_publishers_loses_repeats_and_resets_nothing() {
    let Some(redis) = RedisServer::start("upgrade::fleet_node") else {
        return;
    };
    let url = redis.url();
    // Every message stays in the rings, so the followers can be checked against every ack.
    let args = ["--redis", &url, "--threads", "2", "--buffer", "100000"];
    let mut a = Installed::start(&args, |_| {});
    let b = Server::start(&args);
    let (mut parked, _) = park(&a.server, "quiet", 20);
    a.server.wait_parked(20);
    // Re-polling subscribers on both nodes, from the same fleet cursor.
    let start = a.server.cursor_now("s");
    assert_eq!(b.cursor_now("s"), start, "one fleet cursor");
    let followers: Vec<_> = [a.server.addr, b.addr]
        .into_iter()
        .map(|addr| {
            let start = start.clone();
            thread::spawn(move || follow_until_end(addr, start))
        })
        .collect();
    // Keyed publishers on A (its connection is carried by both upgrades) and on B.
    let stop = Arc::new(AtomicBool::new(false));
    let progress: [Arc<std::sync::atomic::AtomicU64>; 2] = Default::default();
    let streams = [
        keyed_stream(a.server.publisher(), "a", stop.clone(), progress[0].clone()),
        keyed_stream(b.publisher(), "b", stop.clone(), progress[1].clone()),
    ];
    // Waits until each publisher had `n` more lines acked.
    let wait_progress = |n: u64| {
        let at = progress.each_ref().map(|p| p.load(Ordering::Relaxed));
        let deadline = Instant::now() + DEADLINE;
        while progress
            .iter()
            .zip(at)
            .any(|(p, at)| p.load(Ordering::Relaxed) < at + n)
        {
            assert!(Instant::now() < deadline, "a publisher stalled");
            thread::sleep(Duration::from_millis(2));
        }
    };
    let mut old = a.server.child.id();
    for round in 1..=2u64 {
        wait_progress(20);
        let pid = a.upgrade_ok();
        let s = a.server.stats();
        assert_eq!(s["pid"], pid, "stats after upgrade {round}: {s}");
        assert_eq!(
            s["generation"],
            round + 1,
            "stats after upgrade {round}: {s}"
        );
        assert_eq!(
            s["redis_connected"], true,
            "stats after upgrade {round}: {s}"
        );
        wait_gone(old);
        old = pid;
    }
    // A's stream went on over its carried connection after the last hand-over.
    wait_progress(20);
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for (name, h) in ["a", "b"].into_iter().zip(streams) {
        let (acked, mut p) = h.join().expect("publisher thread");
        // Exactly one answer per line: the next line on the connection is the stats answer.
        assert_eq!(p.stats()["generation"], if name == "a" { 3 } else { 1 });
        assert!(
            acked
                .windows(2)
                .all(|w| seq_of(&w[0].id) < seq_of(&w[1].id)),
            "{name}: acks out of line order"
        );
        acks.push((name, acked));
    }
    let st = a
        .server
        .wait_exit(DEADLINE)
        .expect("the first process exited");
    assert!(st.success(), "the first process's exit: {st:?}");
    a.server.publish("s", r#""end""#);

    let mut delivered = Vec::new();
    for f in followers {
        let seen = f.join().expect("follower thread");
        let seqs: Vec<u64> = seen
            .iter()
            .map(|m| seq_of(m["id"].as_str().expect("id")))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
        for (name, acked) in &acks {
            // Every acked line once, in line order, under its ack's id: a keyed retry after an
            // unknown outcome is never delivered twice.
            let mine: Vec<(u64, &str)> = seen
                .iter()
                .filter(|m| m["data"]["p"] == *name)
                .map(|m| {
                    let i = m["data"]["i"].as_u64().expect("numbered data");
                    (i, m["id"].as_str().expect("id"))
                })
                .collect();
            let want: Vec<(u64, &str)> = acked.iter().map(|x| (x.i, x.id.as_str())).collect();
            assert_eq!(mine, want, "{name}'s lines delivered");
        }
        assert_eq!(seen.len(), acks.iter().map(|(_, x)| x.len()).sum::<usize>());
        delivered.push(seqs);
    }
    assert_eq!(
        delivered[0], delivered[1],
        "the two nodes delivered different logs"
    );
    let unknown: usize = acks.iter().flat_map(|(_, x)| x).map(|x| x.unknown).sum();
    eprintln!(
        "fleet upgrade: {} lines acked, {unknown} retried after an unknown outcome",
        delivered[0].len()
    );

    // The polls parked on A before the first upgrade are answered by the third process on the
    // next publish, made on B, with no reset.
    let id = b.publish("quiet", r#""after""#);
    expect_answered(&mut parked, &id);
    let s = a.server.stats();
    assert_eq!(
        (s["generation"].as_u64(), s["redis_connected"].as_bool()),
        (Some(3), Some(true)),
        "{s}"
    );
}
