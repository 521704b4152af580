//! The hold wheel: when does a parked poll's hold time run out.
//!
//! `HoldWheel` is a single-level hashed timer wheel (Varghese & Lauck, scheme 6). A timer is a
//! slab id (`u32`) plus a [`TimerLink`] embedded in the owner's slab entry; the wheel owns only
//! one list head per slot, so arming, moving and cancelling a timer allocate nothing and cost
//! O(1). The caller lends the links on every call through [`TimerNodes`].
//!
//! Time is a parameter: ticks are plain `u32` values handed in by the caller (pnsd uses
//! `TICK_MS` = 100 ms ticks: `tick_up` for deadlines that must not fire early, `tick_down` for
//! one that must not fire late, a token's expiry), and the wheel never reads a clock.
//!
//! Invariants (checked by `check_invariants` in the tests):
//! - A link is armed exactly when its `next` is not [`NIL`]; an unarmed link has `prev == next
//!   == NIL`.
//! - Every armed timer sits in exactly one slot, the one of its stored deadline:
//!   `slot = deadline & (slots - 1)`. Each slot is a circular doubly linked list through the
//!   links (a lone timer points at itself), with `heads[slot]` any member or `NIL` when empty.
//! - Every armed timer's stored deadline is later than `now`: an insert with a deadline at or
//!   before `now` is stored as `now + 1`, which is also what [`TimerLink::deadline`] reports.
//!   So after `advance(t)` no armed timer is due at or before `t`.
//! - `len` is the number of armed timers.
//! - A slot also holds timers of later revolutions (deadline more than `slots` ticks ahead);
//!   walking the slot leaves them in place. `advance` walks only the slots of the ticks it
//!   crosses, each at most once, and stops early once the wheel is empty.
//!
//! Wrap-around: ticks are compared as plain integers, not modulo 2^32. At 100 ms a tick, a `u32`
//! lasts 13.6 years of uptime, so wrap is not handled; a tick at `u32::MAX` saturates.

/// Tick length in pnsd: hold times are whole seconds, so 100 ms is ample and keeps ticks cheap.
pub const TICK_MS: u64 = 100;

/// The tick of clock time `ms`, rounded up: a deadline armed at `tick_up(t)` fires no earlier
/// than the tick that contains `t`. Saturates after 13 years.
pub fn tick_up(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(TICK_MS)).unwrap_or(u32::MAX)
}

/// The tick of clock time `ms`, rounded down: a deadline armed at `tick_down(t)` fires no later
/// than `t` (a token's expiry).
pub fn tick_down(ms: u64) -> u32 {
    u32::try_from(ms / TICK_MS).unwrap_or(u32::MAX)
}

/// "No node": the link value of an empty slot or of an unarmed timer. `u32::MAX` is never a
/// valid slab id because the connection capacity is far below it.
pub const NIL: u32 = u32::MAX;

/// The per-timer links, embedded in each timer owner's slab entry (a connection). 12 bytes.
/// `Default`/`new()` give an unarmed link. Only [`HoldWheel`] changes the fields.
#[derive(Clone, Copy, Debug)]
pub struct TimerLink {
    /// Previous member of the slot's circular list; `NIL` when unarmed.
    prev: u32,
    /// Next member of the slot's circular list; `NIL` when unarmed (the armed flag).
    next: u32,
    /// Tick at which the timer fires; meaningless when unarmed.
    deadline: u32,
}

// The link is embedded in every connection; keep it at three words.
const _: () = assert!(std::mem::size_of::<TimerLink>() == 12);

impl TimerLink {
    /// An unarmed link.
    pub const fn new() -> Self {
        TimerLink {
            prev: NIL,
            next: NIL,
            deadline: 0,
        }
    }

    /// Whether the timer is in a wheel.
    pub fn is_armed(&self) -> bool {
        self.next != NIL
    }

    /// The tick at which the armed timer fires (a deadline that had already passed at insert
    /// time reads as the tick after the insert), or `None` when unarmed.
    pub fn deadline(&self) -> Option<u32> {
        if self.is_armed() {
            Some(self.deadline)
        } else {
            None
        }
    }
}

impl Default for TimerLink {
    fn default() -> Self {
        TimerLink::new()
    }
}

/// Gives the wheel access to the links stored inside the caller's slab. `timer_link` is only
/// called with ids the caller passed to the wheel; an id with no entry is a caller bug and may
/// panic.
pub trait TimerNodes {
    fn timer_link(&mut self, id: u32) -> &mut TimerLink;
}

/// Links stored densely, id = index. Handy for tests, benches and simple owners.
impl TimerNodes for [TimerLink] {
    fn timer_link(&mut self, id: u32) -> &mut TimerLink {
        &mut self[id as usize]
    }
}

impl TimerNodes for Vec<TimerLink> {
    fn timer_link(&mut self, id: u32) -> &mut TimerLink {
        &mut self[id as usize]
    }
}

/// A hashed timer wheel over intrusive `u32` links; see the module doc for the invariants.
pub struct HoldWheel {
    /// One circular list head per slot, `NIL` when the slot is empty.
    heads: Box<[u32]>,
    /// `slots - 1`; slots is a power of two so the slot of a tick is `tick & mask`.
    mask: u32,
    /// The current tick: every timer due at or before it has been expired.
    now: u32,
    /// Number of armed timers.
    len: usize,
}

impl HoldWheel {
    /// Largest slot count: slot indices and tick distances are computed in `u32`.
    const MAX_SLOTS: usize = 1 << 31;

    /// `slots` is a power of two; `now` is the current tick (ticks are supplied by the caller:
    /// time is a parameter). Panics on a bad slot count: a start-up configuration error.
    /// A wheel at `now_ms` whose one revolution covers the longest hold (`max_hold_secs`), so a
    /// tick walks only due timers; capped at 2^16 slots so a huge --max-hold does not allocate
    /// a huge wheel (later revolutions are still correct).
    pub fn for_holds(max_hold_secs: u64, now_ms: u64) -> Self {
        let max_hold_ticks = tick_up(max_hold_secs.saturating_mul(1000)) as usize;
        let slots = (max_hold_ticks + 1)
            .next_power_of_two()
            .clamp(1024, 1 << 16);
        Self::new(slots, tick_up(now_ms))
    }

    pub fn new(slots: usize, now: u32) -> Self {
        assert!(
            slots.is_power_of_two() && slots <= Self::MAX_SLOTS,
            "wheel slots must be a power of two in 1..=2^31, got {slots}"
        );
        HoldWheel {
            heads: vec![NIL; slots].into_boxed_slice(),
            mask: (slots - 1) as u32,
            now,
            len: 0,
        }
    }

    /// The current tick.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots (one revolution, in ticks).
    pub fn slots(&self) -> usize {
        self.heads.len()
    }

    /// Arms `id` to fire at tick `deadline` (a deadline <= now fires on the next advance). If `id`
    /// is already armed it is moved. O(1).
    pub fn insert<N: TimerNodes + ?Sized>(&mut self, nodes: &mut N, id: u32, deadline: u32) {
        debug_assert_ne!(id, NIL, "NIL is not a timer id");
        if nodes.timer_link(id).is_armed() {
            self.unlink(nodes, id);
        } else {
            self.len += 1;
        }
        let deadline = deadline.max(self.now.saturating_add(1));
        nodes.timer_link(id).deadline = deadline;
        self.link(nodes, (deadline & self.mask) as usize, id);
    }

    /// Disarms `id`; a no-op when it is not armed. O(1).
    pub fn cancel<N: TimerNodes + ?Sized>(&mut self, nodes: &mut N, id: u32) {
        if nodes.timer_link(id).is_armed() {
            self.unlink(nodes, id);
            self.len -= 1;
        }
    }

    /// Moves the clock to `now` and pushes every id whose deadline <= now onto `expired`
    /// (each disarmed before it is pushed). Walks only the slots between the previous tick and
    /// `now` (at most every slot once when more than a revolution passed), never all timers.
    /// `now` earlier than the current tick is a no-op.
    pub fn advance<N: TimerNodes + ?Sized>(
        &mut self,
        nodes: &mut N,
        now: u32,
        expired: &mut Vec<u32>,
    ) {
        if now <= self.now {
            return;
        }
        let from = self.now;
        self.now = now;
        // Ticks from+1 ..= from+steps, distinct modulo the slot count.
        let steps = (now - from).min(self.mask + 1);
        for step in 1..=steps {
            if self.len == 0 {
                break;
            }
            let slot = (from.wrapping_add(step) & self.mask) as usize;
            self.expire_slot(nodes, slot, now, expired);
        }
    }

    /// Walks one slot's list once: timers due at or before `now` are disarmed and pushed, the
    /// others (later revolutions) are linked back into the same slot.
    fn expire_slot<N: TimerNodes + ?Sized>(
        &mut self,
        nodes: &mut N,
        slot: usize,
        now: u32,
        expired: &mut Vec<u32>,
    ) {
        let first = std::mem::replace(&mut self.heads[slot], NIL);
        if first == NIL {
            return;
        }
        let mut id = first;
        loop {
            // Read `next` before relinking `id`: nodes after it are still in the old list.
            let link = nodes.timer_link(id);
            let next = link.next;
            if link.deadline <= now {
                *link = TimerLink::new();
                self.len -= 1;
                expired.push(id);
            } else {
                self.link(nodes, slot, id);
            }
            if next == first {
                break;
            }
            id = next;
        }
    }

    /// Puts the unlinked `id` at the head of `slot`'s list.
    fn link<N: TimerNodes + ?Sized>(&mut self, nodes: &mut N, slot: usize, id: u32) {
        let head = self.heads[slot];
        if head == NIL {
            let link = nodes.timer_link(id);
            link.prev = id;
            link.next = id;
        } else {
            let tail = nodes.timer_link(head).prev;
            let link = nodes.timer_link(id);
            link.prev = tail;
            link.next = head;
            nodes.timer_link(tail).next = id;
            nodes.timer_link(head).prev = id;
        }
        self.heads[slot] = id;
    }

    /// Takes the armed `id` out of its slot's list and marks it unarmed; `len` is the caller's.
    fn unlink<N: TimerNodes + ?Sized>(&mut self, nodes: &mut N, id: u32) {
        let link = nodes.timer_link(id);
        let TimerLink {
            prev,
            next,
            deadline,
        } = *link;
        *link = TimerLink::new();
        let slot = (deadline & self.mask) as usize;
        if next == id {
            self.heads[slot] = NIL;
        } else {
            nodes.timer_link(prev).next = next;
            nodes.timer_link(next).prev = prev;
            if self.heads[slot] == id {
                self.heads[slot] = next;
            }
        }
    }

    /// Checks every invariant of the module doc; panics on the first violation.
    #[cfg(test)]
    fn check_invariants<N: TimerNodes + ?Sized>(&self, nodes: &mut N) {
        let mut total = 0usize;
        for (slot, &head) in self.heads.iter().enumerate() {
            if head == NIL {
                continue;
            }
            let mut id = head;
            loop {
                let link = *nodes.timer_link(id);
                assert!(link.is_armed(), "id {id} in slot {slot} is unarmed");
                assert_eq!(
                    link.deadline & self.mask,
                    slot as u32,
                    "id {id} in wrong slot"
                );
                assert!(link.deadline > self.now, "id {id} overdue");
                assert_eq!(nodes.timer_link(link.next).prev, id, "broken next of {id}");
                assert_eq!(nodes.timer_link(link.prev).next, id, "broken prev of {id}");
                total += 1;
                assert!(total <= self.len, "more linked timers than len");
                id = link.next;
                if id == head {
                    break;
                }
            }
        }
        assert_eq!(total, self.len, "len disagrees with the lists");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xorshift::XorShift;
    use std::collections::BTreeMap;

    fn links(n: usize) -> Vec<TimerLink> {
        vec![TimerLink::new(); n]
    }

    fn advance(wheel: &mut HoldWheel, nodes: &mut Vec<TimerLink>, now: u32) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(nodes, now, &mut out);
        wheel.check_invariants(nodes);
        for &id in &out {
            assert!(!nodes[id as usize].is_armed());
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn new_link_is_unarmed() {
        let link = TimerLink::default();
        assert!(!link.is_armed());
        assert_eq!(link.deadline(), None);
        let wheel = HoldWheel::new(8, 5);
        assert_eq!(wheel.now(), 5);
        assert_eq!(wheel.slots(), 8);
        assert!(wheel.is_empty());
    }

    #[test]
    #[should_panic]
    fn slots_must_be_a_power_of_two() {
        let _ = HoldWheel::new(12, 0);
    }

    #[test]
    fn insert_cancel_reinsert() {
        let mut nodes = links(4);
        let mut wheel = HoldWheel::new(8, 0);
        wheel.insert(&mut nodes, 1, 3);
        assert!(nodes[1].is_armed());
        assert_eq!(nodes[1].deadline(), Some(3));
        assert_eq!(wheel.len(), 1);
        wheel.cancel(&mut nodes, 1);
        assert!(!nodes[1].is_armed());
        assert!(wheel.is_empty());
        wheel.check_invariants(&mut nodes);
        assert_eq!(advance(&mut wheel, &mut nodes, 5), Vec::<u32>::new());

        wheel.insert(&mut nodes, 1, 7);
        wheel.insert(&mut nodes, 2, 7);
        // Moving an armed timer keeps the count and changes the deadline.
        wheel.insert(&mut nodes, 1, 9);
        assert_eq!(wheel.len(), 2);
        assert_eq!(nodes[1].deadline(), Some(9));
        wheel.check_invariants(&mut nodes);
        assert_eq!(advance(&mut wheel, &mut nodes, 7), vec![2]);
        assert_eq!(advance(&mut wheel, &mut nodes, 8), Vec::<u32>::new());
        assert_eq!(advance(&mut wheel, &mut nodes, 9), vec![1]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn many_timers_in_one_slot() {
        let mut nodes = links(100);
        let mut wheel = HoldWheel::new(4, 0);
        // Deadlines 1, 5, 9, ...: all in slot 1, spread over 25 revolutions.
        for id in 0..100u32 {
            wheel.insert(&mut nodes, id, 1 + 4 * (id % 25));
        }
        wheel.check_invariants(&mut nodes);
        // Cancel from the middle, the head and the rest of one revolution.
        for id in [50, 99, 0, 25, 75] {
            wheel.cancel(&mut nodes, id);
            wheel.check_invariants(&mut nodes);
        }
        assert_eq!(wheel.len(), 95);
        let mut seen = Vec::new();
        for now in 1..=97 {
            for id in advance(&mut wheel, &mut nodes, now) {
                assert_eq!(1 + 4 * (id % 25), now, "id {id} fired at {now}");
                seen.push(id);
            }
        }
        assert_eq!(seen.len(), 95);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_several_revolutions_ahead() {
        let mut nodes = links(3);
        let mut wheel = HoldWheel::new(8, 100);
        wheel.insert(&mut nodes, 0, 100 + 8 * 3 + 2);
        wheel.insert(&mut nodes, 1, 100 + 2);
        wheel.insert(&mut nodes, 2, 100 + 8 + 2);
        let mut fired = Vec::new();
        for now in 101..=140 {
            for id in advance(&mut wheel, &mut nodes, now) {
                fired.push((id, now));
            }
        }
        assert_eq!(fired, vec![(1, 102), (2, 110), (0, 126)]);
    }

    #[test]
    fn advance_more_than_a_revolution_at_once() {
        let mut nodes = links(10);
        let mut wheel = HoldWheel::new(8, 0);
        for id in 0..10u32 {
            wheel.insert(&mut nodes, id, 3 + 5 * id); // 3, 8, ..., 48
        }
        // 20 ticks is two and a half revolutions: everything due by 20 fires, in one call.
        assert_eq!(advance(&mut wheel, &mut nodes, 20), vec![0, 1, 2, 3]);
        assert_eq!(wheel.now(), 20);
        assert_eq!(
            advance(&mut wheel, &mut nodes, 1000),
            vec![4, 5, 6, 7, 8, 9]
        );
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_in_the_past_fire_on_next_advance() {
        let mut nodes = links(3);
        let mut wheel = HoldWheel::new(8, 50);
        wheel.insert(&mut nodes, 0, 10);
        wheel.insert(&mut nodes, 1, 50);
        wheel.insert(&mut nodes, 2, 0);
        assert_eq!(nodes[0].deadline(), Some(51));
        wheel.check_invariants(&mut nodes);
        // Going back in time, or standing still, fires nothing.
        assert_eq!(advance(&mut wheel, &mut nodes, 40), Vec::<u32>::new());
        assert_eq!(advance(&mut wheel, &mut nodes, 50), Vec::<u32>::new());
        assert_eq!(wheel.now(), 50);
        assert_eq!(advance(&mut wheel, &mut nodes, 51), vec![0, 1, 2]);
    }

    #[test]
    fn cancel_of_unarmed_or_expired_is_a_no_op() {
        let mut nodes = links(3);
        let mut wheel = HoldWheel::new(8, 0);
        wheel.cancel(&mut nodes, 0);
        assert!(wheel.is_empty());
        wheel.insert(&mut nodes, 0, 1);
        wheel.insert(&mut nodes, 1, 2);
        assert_eq!(advance(&mut wheel, &mut nodes, 1), vec![0]);
        wheel.cancel(&mut nodes, 0);
        wheel.cancel(&mut nodes, 0);
        assert_eq!(wheel.len(), 1);
        wheel.check_invariants(&mut nodes);
        // An expired timer can be armed again.
        wheel.insert(&mut nodes, 0, 2);
        assert_eq!(advance(&mut wheel, &mut nodes, 2), vec![0, 1]);
    }

    #[test]
    fn one_slot_wheel_works() {
        let mut nodes = links(3);
        let mut wheel = HoldWheel::new(1, 0);
        wheel.insert(&mut nodes, 0, 5);
        wheel.insert(&mut nodes, 1, 2);
        wheel.insert(&mut nodes, 2, 9);
        assert_eq!(advance(&mut wheel, &mut nodes, 4), vec![1]);
        assert_eq!(advance(&mut wheel, &mut nodes, 9), vec![0, 2]);
    }

    /// Runs `ops` random operations on a wheel and on a BTreeMap model, comparing after each.
    fn model_check(seed: u64, slots: usize, start: u32, ids: u32, ops: usize) {
        let mut rng = XorShift::new(seed);
        let mut nodes = links(ids as usize);
        let mut wheel = HoldWheel::new(slots, start);
        // id -> tick at which it fires.
        let mut model: BTreeMap<u32, u32> = BTreeMap::new();
        let mut now = start;
        let rev = slots as u64;
        for op in 0..ops {
            let id = rng.below(u64::from(ids)) as u32;
            match rng.below(100) {
                0..=44 => {
                    // From a few ticks in the past to four revolutions ahead.
                    let ahead = rng.below(4 * rev + 8) as i64 - 4;
                    let deadline = (i64::from(now) + ahead).max(0) as u32;
                    wheel.insert(&mut nodes, id, deadline);
                    model.insert(id, deadline.max(now + 1));
                }
                45..=64 => {
                    wheel.cancel(&mut nodes, id);
                    model.remove(&id);
                }
                _ => {
                    // Mostly small steps, sometimes several revolutions, sometimes backwards.
                    let target = match rng.below(10) {
                        0 => now.saturating_sub(rng.below(3) as u32),
                        1 => now + rng.below(3 * rev + 1) as u32,
                        _ => now + rng.below(3) as u32,
                    };
                    let got = advance(&mut wheel, &mut nodes, target);
                    now = now.max(target);
                    let want: Vec<u32> = model
                        .iter()
                        .filter(|&(_, &d)| d <= now)
                        .map(|(&id, _)| id)
                        .collect();
                    model.retain(|_, d| *d > now);
                    assert_eq!(got, want, "seed {seed} op {op}: expired set");
                }
            }
            wheel.check_invariants(&mut nodes);
            assert_eq!(wheel.now(), now);
            assert_eq!(wheel.len(), model.len(), "seed {seed} op {op}: len");
            for i in 0..ids {
                assert_eq!(
                    nodes[i as usize].deadline(),
                    model.get(&i).copied(),
                    "seed {seed} op {op}: id {i}"
                );
            }
        }
    }

    #[test]
    fn matches_model_small_wheels() {
        for seed in 1..=20u64 {
            model_check(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 4, 0, 16, 3000);
        }
    }

    #[test]
    fn matches_model_various_sizes() {
        for (i, &slots) in [1usize, 2, 8, 64, 256].iter().enumerate() {
            for seed in 1..=4u64 {
                let seed = seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ i as u64;
                model_check(seed | 1, slots, 1000 * i as u32, 64, 4000);
            }
        }
    }
}
