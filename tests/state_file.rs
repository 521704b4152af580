//! `--state-file` over the real binary: the SIGTERM drain writes the store and the sessions, a
//! start with the same option continues its epoch (an old cursor reads on with no reset, seqs go on, stats
//! `generation` counts the restart), and a missing, corrupt, unknown-version or stale file is
//! logged and ignored: a new epoch, never a failed start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Starts a server keeping its state in `state`, with `args` after.
fn start_with_state(state: &Path, args: &[&str]) -> Server {
    let state = state.to_str().expect("utf-8 temp path");
    let mut all = vec!["--threads", "2", "--state-file", state];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// SIGTERM and the exit status.
fn stop(mut s: Server) -> String {
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(st.success(), "drain exit status {st:?}");
    s.stderr_text()
}

fn poll_from(s: &Server, channel: &str, cursor: &str) -> PollAnswer {
    check_poll(
        &s.http()
            .request(&poll_target(&[channel], Some(cursor), Some(0))),
    )
}

#[test]
fn a_planned_restart_continues_the_epoch_without_reset() {
    let keep = TempDir::new();
    let state = keep.join("state.json");
    let a = start_with_state(&state, &[]);
    assert_eq!(a.stats()["generation"], 1);
    assert_eq!(a.stats()["pid"], a.child.id());
    let c0 = a.cursor_now("ch");
    let first = a.publish("ch", "1");
    let second = a.publish("ch", "{\"n\":2}");
    let seen = poll_from(&a, "ch", &first);
    assert_eq!(seen.ids(), vec![second.clone()]);
    assert_eq!(a.publisher().session("kept", &["ch"], 600)["ok"], true);
    stop(a);
    assert!(state.exists(), "the drain wrote the state file");

    let b = start_with_state(&state, &[]);
    assert_eq!(b.stats()["generation"], 2);
    assert_eq!(b.stats()["messages"], 2);
    // The session registered before the stop goes on from its position (the newest seq then).
    assert_eq!(b.stats()["sessions"], 1);
    let after_stop = b.publish("ch", "\"late\"");
    let s = check_poll(&b.http().request("/pns/poll?sid=kept&hold=0"));
    assert_eq!(s.ids(), vec![after_stop.clone()]);
    // A client re-polling after the restart reads on from its cursor.
    let after_first = poll_from(&b, "ch", &first);
    assert!(!after_first.reset, "{}", after_first.raw);
    assert_eq!(after_first.ids(), vec![second.clone(), after_stop.clone()]);
    assert_eq!(after_first.msgs[0]["data"]["n"], 2);
    let from_start = poll_from(&b, "ch", &c0);
    assert!(!from_start.reset);
    assert_eq!(
        from_start.ids(),
        vec![first, second.clone(), after_stop.clone()]
    );
    // The sequence goes on: the next message follows the carried ones.
    let third = b.publish("ch", "3");
    let next = poll_from(&b, "ch", &after_stop);
    assert!(!next.reset);
    assert_eq!(next.ids(), vec![third]);
    stop(b);

    let c = start_with_state(&state, &[]);
    assert_eq!(c.stats()["generation"], 3);
    assert_eq!(poll_from(&c, "ch", &c0).c, 4);
}

/// Starts over `contents` in the state file: the server serves a new epoch (an old cursor is
/// reset) and its log names why.
fn ignored(contents: Option<&[u8]>, args: &[&str], why: &str) {
    let keep = TempDir::new();
    let state = keep.join("state.json");
    // A cursor of another run: the restarted server must not know its epoch.
    let other = Server::start(&[]);
    other.publish("ch", "1");
    let old = other.cursor_now("ch");
    drop(other);
    if let Some(bytes) = contents {
        std::fs::write(&state, bytes).expect("write state");
    }
    let s = start_with_state(&state, args);
    assert_eq!(s.stats()["generation"], 1);
    assert_eq!(s.stats()["messages"], 0);
    assert!(poll_from(&s, "ch", &old).reset);
    let log = s.stderr_text();
    assert!(log.contains(why), "log does not say {why:?}: {log}");
}

#[test]
fn a_missing_file_starts_a_new_epoch() {
    let keep = TempDir::new();
    let state = keep.join("state.json");
    let s = start_with_state(&state, &[]);
    assert_eq!(s.stats()["generation"], 1);
    assert!(!state.exists());
    stop(s);
    assert!(state.exists());
}

#[test]
fn a_corrupt_file_is_ignored() {
    ignored(
        Some(b"{\"version\":1,\"generation\":4,\"wr"),
        &[],
        "state file",
    );
    ignored(Some(b"not json at all"), &[], "not a state image");
}

#[test]
fn an_unknown_version_is_ignored() {
    ignored(
        Some(b"{\"version\":99,\"layout\":\"from the future\"}"),
        &[],
        "state version 99",
    );
}

#[test]
fn a_stale_file_is_ignored() {
    let keep = TempDir::new();
    let state = keep.join("state.json");
    let a = start_with_state(&state, &["--message-ttl", "1"]);
    let c0 = a.cursor_now("ch");
    a.publish("ch", "1");
    stop(a);
    // Older than --message-ttl: every message in it has expired.
    std::thread::sleep(Duration::from_millis(1100));
    let s = start_with_state(&state, &["--message-ttl", "1"]);
    assert_eq!(s.stats()["generation"], 1);
    assert!(poll_from(&s, "ch", &c0).reset);
    assert!(s.stderr_text().contains("beyond --message-ttl"));
}
