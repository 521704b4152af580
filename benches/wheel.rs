//! Micro-benchmark of `HoldWheel`: insert, move, cancel and advance with many armed timers.
//!
//! Run with `cargo bench --bench wheel`. Plain `Instant` loops, no harness: each case runs
//! `ROUNDS` times on fresh state and prints the best and the median ns per operation. Numbers
//! measure, they assert nothing. Timer ids and deadlines are pseudo-random (fixed seed) so
//! slab accesses are scattered the way hang-ups of real connections are.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pnsd::wheel::{HoldWheel, TimerLink};
use pnsd::xorshift::XorShift;

/// Rounds per case; the best and median of them are printed. Odd so the median is one round.
const ROUNDS: usize = 7;
/// pnsd's tick is 100 ms and `--max-hold` defaults to 120 s: deadlines fall within 1200 ticks.
const HOLD_TICKS: u32 = 1200;
/// pnsd's wheel size: the next power of two above `HOLD_TICKS`, so one revolution covers every
/// default hold and no slot holds a later revolution.
const SLOTS: usize = 2048;
/// A deliberately small wheel, so timers sit up to five revolutions ahead and walks skip them.
const SMALL_SLOTS: usize = 256;
/// Start tick, away from 0 so nothing special happens near it.
const START: u32 = 1_000;

struct Workload {
    /// Deadline of each id, 1..=HOLD_TICKS ticks after START.
    deadlines: Vec<u32>,
    /// Second set of deadlines, for moving armed timers.
    moved: Vec<u32>,
    /// All ids in a shuffled order.
    order: Vec<u32>,
}

impl Workload {
    fn new(n: usize) -> Self {
        // Fixed seed: the same workload every run.
        let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
        let mut deadline = || START + 1 + rng.below(u64::from(HOLD_TICKS)) as u32;
        let deadlines = (0..n).map(|_| deadline()).collect();
        let moved = (0..n).map(|_| deadline()).collect();
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        Workload {
            deadlines,
            moved,
            order,
        }
    }

    /// A wheel with every id armed, inserted in shuffled order.
    fn armed(&self, slots: usize) -> (HoldWheel, Vec<TimerLink>) {
        let mut nodes = vec![TimerLink::new(); self.order.len()];
        let mut wheel = HoldWheel::new(slots, START);
        for &id in &self.order {
            wheel.insert(&mut nodes, id, self.deadlines[id as usize]);
        }
        (wheel, nodes)
    }
}

/// Runs `case` ROUNDS times; `case` returns the time of its measured part. Prints the best and
/// median ns per operation for each `(unit, count)` pair (one run, several ways to divide it).
fn report_per(name: &str, units: &[(&str, usize)], mut case: impl FnMut() -> Duration) {
    let mut times: Vec<Duration> = (0..ROUNDS).map(|_| case()).collect();
    times.sort();
    for &(unit, count) in units {
        let per = |d: Duration| d.as_nanos() as f64 / count as f64;
        println!(
            "{:<60} best {:>9.1}   median {:>9.1}  ns/{unit}",
            format!("{name},"),
            per(times[0]),
            per(times[ROUNDS / 2])
        );
    }
}

fn report(name: &str, ops: usize, case: impl FnMut() -> Duration) {
    report_per(name, &[("op", ops)], case);
}

fn bench(n: usize) {
    let w = Workload::new(n);
    println!("--- {n} timers, deadlines within {HOLD_TICKS} ticks ---");

    report(&format!("insert (arm {n} unarmed ids)"), n, || {
        let mut nodes = vec![TimerLink::new(); n];
        let mut wheel = HoldWheel::new(SLOTS, START);
        let t = Instant::now();
        for &id in &w.order {
            wheel.insert(&mut nodes, id, w.deadlines[id as usize]);
        }
        let d = t.elapsed();
        black_box((&wheel, &nodes));
        d
    });

    report("insert (move armed ids to a new deadline)", n, || {
        let (mut wheel, mut nodes) = w.armed(SLOTS);
        let t = Instant::now();
        for &id in &w.order {
            wheel.insert(&mut nodes, id, w.moved[id as usize]);
        }
        let d = t.elapsed();
        black_box((&wheel, &nodes));
        d
    });

    report("cancel (every armed id, shuffled)", n, || {
        let (mut wheel, mut nodes) = w.armed(SLOTS);
        let t = Instant::now();
        for &id in &w.order {
            wheel.cancel(&mut nodes, black_box(id));
        }
        let d = t.elapsed();
        black_box((&wheel, &nodes));
        d
    });

    for (slots, label) in [(SLOTS, "one revolution"), (SMALL_SLOTS, "5 revolutions")] {
        report_per(
            &format!("advance 1 tick at a time, {slots} slots ({label})"),
            &[("tick", HOLD_TICKS as usize), ("timer", n)],
            || {
                let (mut wheel, mut nodes) = w.armed(slots);
                let mut expired = Vec::with_capacity(n);
                let t = Instant::now();
                for now in START + 1..=START + HOLD_TICKS {
                    expired.clear();
                    wheel.advance(&mut nodes, black_box(now), &mut expired);
                    black_box(&expired);
                }
                let d = t.elapsed();
                assert!(wheel.is_empty());
                d
            },
        );
    }

    report(
        "advance one jump past every deadline (per timer)",
        n,
        || {
            let (mut wheel, mut nodes) = w.armed(SLOTS);
            let mut expired = Vec::with_capacity(n);
            let t = Instant::now();
            wheel.advance(&mut nodes, black_box(START + HOLD_TICKS), &mut expired);
            let d = t.elapsed();
            assert_eq!(expired.len(), n);
            d
        },
    );
}

fn main() {
    // Idle ticks: the cost of the reactor's 100 ms tick when nothing is due.
    report("advance 1 tick, empty wheel", 100_000, || {
        let mut nodes: Vec<TimerLink> = Vec::new();
        let mut wheel = HoldWheel::new(SLOTS, 0);
        let mut expired = Vec::new();
        let t = Instant::now();
        for now in 1..=100_000u32 {
            wheel.advance(&mut nodes, black_box(now), &mut expired);
        }
        let d = t.elapsed();
        black_box(&expired);
        d
    });
    // Every connection-level count pnsd cares about: one core's share up to the fd limit, and
    // far beyond it to show the cache effects.
    for n in [1_000, 16_384, 262_144] {
        bench(n);
    }
}
