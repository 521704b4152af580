//! PROTOCOL.md section 1 over the real binary: the startup line, exit statuses and their
//! single stderr line, socket-path handling, and the `publish` / `stats` subcommands.
//!
//! Every invocation that is expected to fail still gets `--listen 127.0.0.1:0` and a private
//! `--publish-socket` (and runs in a temp dir), so a server that wrongly starts never touches
//! port 8080 or a shared path; `run_pnsd` kills it as soon as it prints its startup line (or at
//! the deadline) and the test fails.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;

use common::*;
use serde_json::Value;

/// Runs `pnsd ARGS --listen 127.0.0.1:0 --publish-socket DIR/x.sock`, then the same with the
/// safe options first, and asserts exit 2 with one stderr line mentioning one of `needles`
/// (case-insensitive).
fn expect_usage_error(args: &[&str], needles: &[&str]) {
    let dir = TempDir::new();
    let sock = dir.join("x.sock");
    let sock = sock.to_str().expect("utf-8 path");
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--listen", "127.0.0.1:0", "--publish-socket", sock]);
    check_usage_error(&full, &dir, needles);
    let mut full: Vec<&str> = vec!["--listen", "127.0.0.1:0", "--publish-socket", sock];
    full.extend(args);
    check_usage_error(&full, &dir, needles);
}

fn check_usage_error(full: &[&str], dir: &TempDir, needles: &[&str]) {
    let run = run_pnsd(full, &dir.path);
    assert_eq!(
        run.code(),
        Some(2),
        "pnsd {full:?}: want exit 2, got {:?}; stdout {:?} stderr {:?}",
        run.status,
        run.stdout,
        run.stderr
    );
    let line = run.one_stderr_line();
    let lower = line.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "pnsd {full:?}: stderr line {line:?} does not name the problem ({needles:?})"
    );
    assert!(
        run.stdout.is_empty(),
        "no startup line expected: {:?}",
        run.stdout
    );
}

#[test]
fn startup_line_names_real_address_socket_and_threads() {
    let s = Server::start(&["--threads", "3"]);
    assert_eq!(s.threads, 3, "{}", s.line);
    assert_eq!(s.addrs.len(), 1, "{}", s.line);
    assert!(s.addr.ip().is_loopback());
    let mut c = s.http();
    let r = c.request("/pns/health");
    assert_eq!(r.status, 200);
    let meta = std::fs::symlink_metadata(&s.socket).expect("socket file exists");
    assert!(meta.file_type().is_socket(), "publish path is not a socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "publish socket must be mode 0600"
    );
}

#[test]
fn default_thread_count_is_the_cpu_count() {
    let s = Server::start(&[]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(s.threads, cpus, "{}", s.line);
}

#[test]
fn serve_subcommand_is_the_same_as_no_subcommand() {
    let s = Server::start_full(&["serve"], &["--threads", "1"]);
    assert_eq!(s.threads, 1);
    assert_eq!(s.http().request("/pns/health").status, 200);
}

#[test]
fn repeated_listen_serves_every_address() {
    let s = Server::start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    assert_eq!(s.addrs.len(), 2, "{}", s.line);
    assert_ne!(s.addrs[0], s.addrs[1]);
    for a in &s.addrs {
        let mut c = HttpConn::connect(*a);
        let r = c.request("/pns/health");
        assert_eq!(r.status, 200, "health on {a}");
    }
    // A message published once reaches pollers on both addresses.
    let c0 = s.cursor_now("a");
    let id = s.publish("a", "1");
    for a in &s.addrs {
        let mut c = HttpConn::connect(*a);
        let p = check_poll(&c.request(&poll_target(&["a"], Some(&c0), Some(0))));
        assert_eq!(p.ids(), vec![id.clone()], "on {a}");
    }
}

#[test]
fn hold_above_max_hold_is_exit_2() {
    expect_usage_error(&["--hold", "200", "--max-hold", "120"], &["hold"]);
    expect_usage_error(&["--max-hold", "10", "--hold", "11"], &["hold"]);
    // The default --max-hold is 120.
    expect_usage_error(&["--hold", "121"], &["hold"]);
}

#[test]
fn zero_threads_is_exit_2() {
    expect_usage_error(&["--threads", "0"], &["threads"]);
}

#[test]
fn unknown_option_is_exit_2() {
    expect_usage_error(&["--bogus-option"], &["bogus-option"]);
}

#[test]
fn bad_option_values_are_exit_2() {
    expect_usage_error(&["--threads", "many"], &["threads"]);
    expect_usage_error(&["--hold", "-1"], &["hold"]);
    expect_usage_error(&["--hold", "1.5"], &["hold"]);
    expect_usage_error(&["--buffer", "x"], &["buffer"]);
    expect_usage_error(&["--message-ttl", "soon"], &["ttl"]);
    expect_usage_error(&["--max-connections", "lots"], &["connections"]);
    expect_usage_error(
        &["--listen", "not-an-address"],
        &["listen", "not-an-address"],
    );
}

#[test]
fn missing_option_value_is_exit_2() {
    let dir = TempDir::new();
    let sock = dir.join("x.sock");
    let sock = sock.to_str().expect("utf-8 path");
    let full = [
        "--listen",
        "127.0.0.1:0",
        "--publish-socket",
        sock,
        "--hold",
    ];
    check_usage_error(&full, &dir, &["hold"]);
}

#[test]
fn non_loopback_listen_without_secret_is_exit_2() {
    // 192.0.2.1 (TEST-NET-1) is never bound: the check must fire before any bind.
    expect_usage_error(
        &["--listen", "192.0.2.1:0"],
        &["192.0.2.1", "loopback", "anonymous", "secret"],
    );
}

#[test]
fn unknown_subcommand_is_exit_2() {
    let dir = TempDir::new();
    let run = run_pnsd(&["frobnicate"], &dir.path);
    assert_eq!(run.code(), Some(2), "stderr {:?}", run.stderr);
    let line = run.one_stderr_line();
    assert!(line.contains("frobnicate"), "{line:?}");
}

/// Runs `serve --listen ADDR` with a fresh socket path; it must exit 1 with one stderr line.
fn serve_expecting_exit_1(addr: &str) -> Run {
    let dir = TempDir::new();
    serve_in_expecting_exit_1(&dir, addr, &dir.join("x.sock"))
}

/// Runs `serve --listen ADDR --publish-socket SOCKET` in `dir`; it must exit 1 with one stderr
/// line.
fn serve_in_expecting_exit_1(dir: &TempDir, addr: &str, socket: &std::path::Path) -> Run {
    let run = run_pnsd(
        &[
            "--listen",
            addr,
            "--publish-socket",
            socket.to_str().expect("utf-8"),
        ],
        &dir.path,
    );
    assert_eq!(run.code(), Some(1), "stderr {:?}", run.stderr);
    run.one_stderr_line();
    run
}

#[test]
fn address_in_use_is_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = TempDir::new();
    let sock = dir.join("x.sock");
    let run = serve_in_expecting_exit_1(&dir, &addr, &sock);
    assert!(run.stdout.is_empty());
    // The publish socket was bound before the listener failed: a failed start removes it.
    assert!(!sock.exists(), "a failed start left its socket file");
    drop(taken);
}

#[test]
fn address_of_a_running_pnsd_is_exit_1() {
    // SO_REUSEPORT must not let a second server silently share the first one's port.
    let s = Server::start(&["--threads", "1"]);
    serve_expecting_exit_1(&s.addr.to_string());
    assert_eq!(s.http().request("/pns/health").status, 200);
}

#[test]
fn live_server_on_socket_path_is_exit_1() {
    let s = Server::start(&["--threads", "1"]);
    let dir = TempDir::new();
    serve_in_expecting_exit_1(&dir, "127.0.0.1:0", &s.socket);
    // The first server keeps its socket (`stats` asserts an `ok` answer).
    s.stats();
}

#[test]
fn socket_path_that_is_not_a_socket_is_exit_1_and_untouched() {
    let dir = TempDir::new();
    let path = dir.join("regular");
    std::fs::write(&path, b"keep me").expect("write");
    serve_in_expecting_exit_1(&dir, "127.0.0.1:0", &path);
    assert_eq!(std::fs::read(&path).expect("still there"), b"keep me");
}

#[test]
fn socket_in_a_missing_directory_is_exit_1() {
    let dir = TempDir::new();
    let path = dir.join("missing/pnsd.sock");
    serve_in_expecting_exit_1(&dir, "127.0.0.1:0", &path);
}

#[test]
fn any_127_address_is_loopback() {
    let s = Server::start(&["--listen", "127.0.0.2:0", "--threads", "1"]);
    assert_eq!(s.addrs.len(), 2);
    assert_eq!(s.addrs[1].ip().to_string(), "127.0.0.2");
    let mut c = HttpConn::connect(s.addrs[1]);
    assert_eq!(c.request("/pns/health").status, 200);
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    let sock = dir.join("pnsd.sock");
    {
        let l = UnixListener::bind(&sock).expect("bind");
        drop(l); // the file stays, nobody listens: a dead server's leftover
    }
    assert!(sock.exists());
    let s = Server::start_in(dir, sock, &[], &["--threads", "1"]);
    assert_publishing_reaches_pollers(&s);
}

/// Publishes once through `server`'s socket path; a poll from just before gets exactly it.
fn assert_publishing_reaches_pollers(server: &Server) {
    let c0 = server.cursor_now("a");
    let id = server.publish("a", "\"x\"");
    let p = check_poll(
        &server
            .http()
            .request(&poll_target(&["a"], Some(&c0), Some(0))),
    );
    assert_eq!(p.ids(), vec![id]);
}

#[test]
fn publish_subcommand_prints_the_ack_and_exits_0() {
    let s = Server::start(&["--threads", "1"]);
    let c0 = s.cursor_now("news");
    let sock = s.socket.to_str().expect("utf-8");
    let run = run_pnsd(
        &["publish", "--socket", sock, "news", r#"{"b":1.50,"a":"x"}"#],
        &s.dir.path,
    );
    assert_eq!(run.code(), Some(0), "stderr {:?}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "stdout {:?}", run.stdout);
    let ack: Value = serde_json::from_str(run.stdout.trim_end()).expect("ack JSON");
    let id = ack_id(&ack);
    let run = run_pnsd(
        &["publish", "--socket", sock, "--type", "70", "news", "\"t\""],
        &s.dir.path,
    );
    assert_eq!(run.code(), Some(0), "stderr {:?}", run.stderr);
    let id2 = ack_id(&serde_json::from_str(run.stdout.trim_end()).expect("ack JSON"));
    let p = check_poll(
        &s.http()
            .request(&poll_target(&["news"], Some(&c0), Some(0))),
    );
    assert_eq!(p.ids(), vec![id, id2]);
    assert_eq!(p.msgs[0]["channel"], "news");
    assert!(p.msgs[0].get("type").is_none());
    assert!(p.body.contains(r#"{"b":1.50,"a":"x"}"#), "{}", p.body);
    assert_eq!(p.msgs[1]["type"], 70);
    assert_eq!(p.msgs[1]["data"], "t");
}

#[test]
fn publish_subcommand_uses_the_default_socket_path() {
    // The server's socket is DIR/pnsd.sock and the client runs in DIR: ./pnsd.sock.
    let s = Server::start(&["--threads", "1"]);
    let run = run_pnsd(&["publish", "a", "1"], &s.dir.path);
    assert_eq!(run.code(), Some(0), "stderr {:?}", run.stderr);
    ack_id(&serde_json::from_str(run.stdout.trim_end()).expect("ack JSON"));
}

#[test]
fn publish_subcommand_exits_1_on_error_answer() {
    // A stand-in server that answers every line with an error: `pnsd publish` must exit 1.
    let dir = TempDir::new();
    let sock = dir.join("fake.sock");
    let listener = UnixListener::bind(&sock).expect("bind fake socket");
    let fake = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while conn.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
            got.push(byte[0]);
        }
        conn.write_all(b"{\"ok\":false,\"error\":\"refused by test\"}\n")
            .expect("answer");
        String::from_utf8(got).expect("utf-8 line")
    });
    let run = run_pnsd(
        &[
            "publish",
            "--socket",
            sock.to_str().expect("utf-8"),
            "a",
            "1",
        ],
        &dir.path,
    );
    let line = fake.join().expect("fake server");
    let v: Value = serde_json::from_str(&line).expect("request line is JSON");
    assert_eq!(v["channel"], "a", "{line}");
    assert_eq!(v["data"], 1, "{line}");
    assert_eq!(
        run.code(),
        Some(1),
        "stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn publish_subcommand_rejects_a_bad_channel() {
    // Checked by the client (exit 2, a bad argument) or by the server (exit 1): either way
    // nothing is published.
    let s = Server::start(&["--threads", "1"]);
    let sock = s.socket.to_str().expect("utf-8");
    let run = run_pnsd(
        &["publish", "--socket", sock, "bad channel", "1"],
        &s.dir.path,
    );
    assert!(
        matches!(run.code(), Some(1) | Some(2)),
        "stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    assert_eq!(s.stats()["published"], 0);
}

#[test]
fn publish_subcommand_bad_arguments() {
    let s = Server::start(&["--threads", "1"]);
    let sock = s.socket.to_str().expect("utf-8");
    // A bad option value or a missing argument is a usage error: exit 2, one stderr line.
    for args in [
        vec!["publish", "--socket", sock, "--type", "abc", "a", "1"],
        vec!["publish", "--socket", sock, "a"],
        vec!["publish", "--socket", sock, "--bogus", "a", "1"],
    ] {
        let run = run_pnsd(&args, &s.dir.path);
        assert_eq!(run.code(), Some(2), "{args:?}: stderr {:?}", run.stderr);
        run.one_stderr_line();
    }
    // Data that is not JSON is a bad argument, located in what the user typed (not in the
    // line the client builds around it).
    for (data, place) in [
        ("{not json", "line 1 column 2"),
        ("hello", "line 1 column 1"),
    ] {
        let run = run_pnsd(&["publish", "--socket", sock, "a", data], &s.dir.path);
        assert_eq!(run.code(), Some(2), "{data}: stderr {:?}", run.stderr);
        let line = run.one_stderr_line();
        assert!(
            line.contains("JSON is not valid") && line.ends_with(place),
            "{data}: {line:?}"
        );
        assert!(run.stdout.is_empty(), "{data}: {:?}", run.stdout);
    }
    assert_eq!(s.stats()["published"], 0);
}

#[test]
fn every_subcommand_prints_its_usage_on_help() {
    let dir = TempDir::new();
    for (sub, synopsis) in [
        ("serve", "usage: pnsd [serve]"),
        ("publish", "usage: pnsd publish"),
        ("stats", "usage: pnsd stats"),
        ("token", "usage: pnsd token"),
    ] {
        for flag in ["--help", "-h"] {
            let run = run_pnsd(&[sub, flag], &dir.path);
            assert_eq!(run.code(), Some(0), "{sub} {flag}: stderr {:?}", run.stderr);
            assert!(run.stderr.is_empty(), "{sub} {flag}: {:?}", run.stderr);
            assert!(
                run.stdout.starts_with(synopsis) && run.stdout.matches("usage:").count() == 1,
                "{sub} {flag}: {:?}",
                run.stdout
            );
        }
    }
    // Without a subcommand: every usage.
    let run = run_pnsd(&["--help"], &dir.path);
    assert_eq!(run.code(), Some(0), "stderr {:?}", run.stderr);
    for synopsis in ["pnsd [serve]", "pnsd publish", "pnsd stats", "pnsd token"] {
        assert!(
            run.stdout.contains(&format!("usage: {synopsis}")),
            "{}",
            run.stdout
        );
    }
    assert!(
        !dir.join("pnsd.sock").exists(),
        "help must not start anything"
    );
}

#[test]
fn the_same_listen_address_twice_is_exit_2() {
    // Port 1 is never bindable by a test: the check must fire before any bind (which would
    // be exit 1).
    expect_usage_error(
        &["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1"],
        &["127.0.0.1:1"],
    );
}

#[test]
fn a_missing_secret_file_is_exit_1() {
    let dir = TempDir::new();
    let missing = dir.join("no-such-key");
    let missing = missing.to_str().expect("utf-8");
    let sock = dir.join("s.sock");
    let run = run_pnsd(
        &[
            "--listen",
            "127.0.0.1:0",
            "--publish-socket",
            sock.to_str().expect("utf-8"),
            "--secret-file",
            missing,
        ],
        &dir.path,
    );
    assert_eq!(run.code(), Some(1), "serve: stderr {:?}", run.stderr);
    assert!(
        run.one_stderr_line().contains("no-such-key"),
        "{:?}",
        run.stderr
    );
    assert!(!sock.exists());
    let run = run_pnsd(
        &["token", "--secret-file", missing, "--channel", "a"],
        &dir.path,
    );
    assert_eq!(run.code(), Some(1), "token: stderr {:?}", run.stderr);
    assert!(
        run.one_stderr_line().contains("no-such-key"),
        "{:?}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
}

/// SIGTERMs `server` and asserts it exits 0 after its drain (its temp dir stays until drop).
fn stop(server: &mut Server) {
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(DEADLINE)
        .expect("pnsd exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
}

#[test]
fn an_exiting_server_leaves_the_next_servers_socket_alone() {
    // A rolling restart: A's socket path is taken over by B while A still runs (here A's file
    // is moved aside, as if A's listener were gone), then A exits. B keeps its socket.
    let mut a = Server::start(&["--threads", "1"]);
    let aside = a.dir.join("a-aside.sock");
    std::fs::rename(&a.socket, &aside).expect("move A's socket aside");
    let b = Server::start_in(TempDir::new(), a.socket.clone(), &[], &["--threads", "1"]);
    stop(&mut a);
    let meta = std::fs::symlink_metadata(&b.socket).expect("B's socket file survives A's exit");
    assert!(meta.file_type().is_socket());
    assert_publishing_reaches_pollers(&b);
}

#[test]
fn an_exiting_server_leaves_a_file_put_at_its_path_alone() {
    let mut a = Server::start(&["--threads", "1"]);
    let path = a.socket.clone();
    std::fs::remove_file(&path).expect("unlink A's socket");
    std::fs::write(&path, b"not yours").expect("write a regular file");
    stop(&mut a);
    assert_eq!(
        std::fs::read(&path).expect("the file is still there"),
        b"not yours"
    );
}

#[test]
fn an_exiting_server_removes_its_own_socket() {
    let mut a = Server::start(&["--threads", "1"]);
    stop(&mut a);
    assert!(!a.socket.exists(), "the socket file was left behind");
}

#[test]
fn publish_subcommand_exits_1_without_server() {
    let dir = TempDir::new();
    let sock = dir.join("nobody.sock");
    let run = run_pnsd(
        &[
            "publish",
            "--socket",
            sock.to_str().expect("utf-8"),
            "a",
            "1",
        ],
        &dir.path,
    );
    assert_eq!(run.code(), Some(1), "stderr {:?}", run.stderr);
}

#[test]
fn stats_subcommand_prints_the_stats_line() {
    let s = Server::start(&["--threads", "1"]);
    s.publish("a", "1");
    let sock = s.socket.to_str().expect("utf-8");
    let run = run_pnsd(&["stats", "--socket", sock], &s.dir.path);
    assert_eq!(run.code(), Some(0), "stderr {:?}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "stdout {:?}", run.stdout);
    let v: Value = serde_json::from_str(run.stdout.trim_end()).expect("stats JSON");
    assert_eq!(v["ok"], true);
    for k in STATS_FIELDS {
        assert!(v[k].is_u64(), "stats field {k} missing in {v}");
    }
    assert_eq!(v["published"], 1);
    // "As the server sent it": byte for byte what the socket answers (nothing changed since).
    let mut p = s.publisher();
    p.send("{\"op\":\"stats\"}\n");
    assert_eq!(run.stdout.trim_end_matches('\n'), p.read_line());
}

#[test]
fn stats_subcommand_fails_without_server() {
    let dir = TempDir::new();
    let sock = dir.join("nobody.sock");
    let run = run_pnsd(
        &["stats", "--socket", sock.to_str().expect("utf-8")],
        &dir.path,
    );
    assert_ne!(run.code(), Some(0), "stdout {:?}", run.stdout);
    assert!(
        run.status.code().is_some(),
        "killed by a signal: {:?}",
        run.status
    );
}
