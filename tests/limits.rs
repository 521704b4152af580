//! Limits of memory and what the server remembers, over the real binary where they are visible
//! on the wire (issue 8): a channel recreated after the sweep forgot it still resets cursors
//! older than what it lost; `--max-channels` refuses a publish that would create more channels,
//! as a whole; and, driving `pnsd::waiters::Waiters` directly under a counting allocator, what
//! a parked poll on 16 unique 128-byte channels costs and that it all comes back.
//!
//! Waits are on stats conditions (`wait_stat`), never blind sleeps.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use pnsd::waiters::Waiters;

/// The system allocator, counting per thread the bytes this thread holds (tests run in
/// parallel threads; each measures only its own).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: the slot may be gone while a thread is torn down.
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Issue 8.1: cursor c0; m1 on X; the sweep forgets X; m2 on X: a poll on X from c0 must say
/// `reset` (m1 is lost), and a poll from m1's id must not. Default buffer and `--buffer 1`.
#[test]
fn a_channel_recreated_after_the_sweep_still_resets_older_cursors() {
    for buffer in ["64", "1"] {
        let s = Server::start(&["--message-ttl", "1", "--buffer", buffer]);
        let c0 = s.cursor_now("x");
        let m1 = s.publish("x", "1");
        // The sweep dropped m1 and then the channel itself.
        s.wait_stat("messages", 0);
        s.wait_stat("channels", 0);
        let m2 = s.publish("x", "2");
        let mut c = s.http();
        let a = check_poll(&c.request(&poll_target(&["x"], Some(&c0), Some(0))));
        assert!(a.reset, "buffer {buffer}: m1 lost without reset: {}", a.raw);
        assert_eq!(a.ids(), vec![m2.clone()], "buffer {buffer}");
        let a = check_poll(&c.request(&poll_target(&["x"], Some(&m1), Some(0))));
        assert!(
            !a.reset,
            "buffer {buffer}: nothing after m1 was lost: {}",
            a.raw
        );
        assert_eq!(a.ids(), vec![m2], "buffer {buffer}");
    }
}

/// Issue 8.5: with `--max-channels 2`, a publish creating a third channel is refused as a whole
/// with an error line naming the option; publishes to held channels go on, and the refused one
/// used no seq.
#[test]
fn max_channels_refuses_a_publish_that_would_create_more() {
    let s = Server::start(&["--max-channels", "2"]);
    let mut p = s.publisher();
    let a1 = p.publish("a", "1");
    p.publish("b", "2");
    let e = error_text(&p.request(r#"{"channels":["a","c"],"data":3}"#));
    assert!(e.contains("--max-channels") && e.contains('2'), "{e}");
    let a2 = p.publish("a", "4");
    let stats = p.stats();
    assert_eq!(
        (stats["published"].as_u64(), stats["channels"].as_u64()),
        (Some(3), Some(2))
    );
    // Nothing of the refused publish reached a: the next message after a1 is a2.
    let mut c = s.http();
    let got = check_poll(&c.request(&poll_target(&["a", "c"], Some(&a1), Some(0))));
    assert_eq!((got.ids(), got.reset), (vec![a2], false));
}

/// Once the held channels expire and are swept, a new channel fits under `--max-channels`.
#[test]
fn max_channels_frees_up_as_channels_expire() {
    let s = Server::start(&["--max-channels", "2", "--message-ttl", "1"]);
    let mut p = s.publisher();
    p.publish("a", "1");
    p.publish("b", "2");
    p.wait_stat("channels", 0);
    // Both acknowledged (`publish` asserts the ack): the room came back.
    p.publish("c", "3");
    p.publish("d", "4");
}

/// `--max-channels` takes a positive number.
#[test]
fn max_channels_must_be_positive() {
    let dir = TempDir::new();
    for bad in ["0", "x", "-1"] {
        let r = run_pnsd(&["serve", "--max-channels", bad], &dir.path);
        assert_eq!(r.code(), Some(2), "--max-channels {bad}");
        assert!(r.one_stderr_line().contains("--max-channels"), "{bad}");
    }
}

/// Issue 8.7: 2000 polls on 16 unique 128-byte channels each. A poll costs its names plus a
/// bounded overhead (it cost 4021 bytes before names were stored once), and once every poll
/// left the index holds nothing beyond its reserve.
#[test]
fn a_parked_poll_costs_about_its_names_and_leaving_gives_everything_back() {
    const POLLS: usize = 2000;
    const PER: usize = 16;
    const LEN: usize = 128;
    let names: Vec<Vec<String>> = (0..POLLS)
        .map(|p| {
            (0..PER)
                .map(|c| format!("{:0>LEN$}", p * PER + c))
                .collect()
        })
        .collect();
    let mut firsts: Vec<u32> = Vec::with_capacity(POLLS);
    let empty = live();
    let mut w = Waiters::with_capacity(64);
    let reserve = live() - empty;
    for (i, cs) in names.iter().enumerate() {
        firsts.push(w.park(i as u32, cs));
    }
    let per_poll = (live() - empty - reserve) as usize / POLLS;
    let name_bytes = PER * LEN;
    // Names (each an Arc: 16 bytes of counts) plus a node, a channel entry and table slots.
    assert!(
        per_poll < name_bytes + PER * 100,
        "{per_poll} bytes per poll for {name_bytes} bytes of names"
    );
    for f in &firsts {
        w.unpark(*f);
    }
    assert_eq!(w.memberships(), 0);
    assert_eq!(live() - empty, reserve, "bytes kept after every poll left");
    drop(w);
    assert_eq!(live(), empty);
    // Last: printing allocates the captured output's buffer on this thread.
    println!("{per_poll} bytes per parked poll on {PER} unique {LEN}-byte channels");
}
