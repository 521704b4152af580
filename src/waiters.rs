//! Which parked polls of one reactor wait on which channel.
//!
//! Per reactor thread, no locking. A parked poll on k channels owns k `Membership` nodes in one
//! slab, chained through `sibling` in subscription order; the poll's connection stores only the
//! index of its first node (`u32`). Each node is also in its channel's doubly linked list, so a
//! hang-up unlinks in O(k) without searching, and a channel's waiters are walked without
//! touching anyone else.
//!
//! Memory: a channel's name is stored once (an `Arc<str>` in its `WaitChannel`); the name index
//! is an open-addressing table of `u32` channel keys (linear probing, backward-shift deletion)
//! that compares names through the slab, so a name is neither copied nor hashed twice. A poll on
//! k unique channels costs its names plus about 70 bytes per channel (see benches/store.rs).
//!
//! Invariants:
//! - A `WaitChannel` exists exactly while at least one node is in its list (`head != NIL`).
//! - Every node is in exactly one channel list and one sibling chain; `NIL` ends both.
//! - `table` holds every channel key once, at or after (cyclically) its home slot with no empty
//!   slot in between; it is empty or a power of two at least twice the channel count.
//! - Memory comes back: the table shrinks when under an eighth full, the channel slab is
//!   compacted when under an eighth of its capacity, and when the last poll leaves after a peak
//!   of at least `RELEASE_PEAK` memberships, every slab is dropped, the node reserve made afresh
//!   (untouched pages) and, with glibc, `malloc_trim` hands the freed names' pages back to the
//!   kernel (without it, 15,000 polls on 16 unique names left 100 MB of RSS behind). The factors leave a gap between growing and shrinking, so a load
//!   flapping around one size never resizes, and each resize is paid for by the parks or
//!   unparks since the previous one.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use slab::Slab;

/// "No node".
pub const NIL: u32 = u32::MAX;

/// Smallest non-empty name table: 64 bytes.
const MIN_TABLE: usize = 16;
/// Peak memberships after which the last unpark gives every slab back: below that (96 KiB of
/// nodes) keeping the memory for the next poll is cheaper than asking for it again.
const RELEASE_PEAK: usize = 4096;
/// Channel slab capacity below which it is never compacted (a few KiB).
const COMPACT_FLOOR: usize = 256;

#[derive(Debug)]
struct Membership {
    conn: u32,
    chan: u32,
    prev: u32,
    next: u32,
    sibling: u32,
}

#[derive(Debug)]
struct WaitChannel {
    name: Arc<str>,
    head: u32,
    /// Low bits of the name's hash: its home slot in `table` without hashing it again.
    hash: u32,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Waiters {
    nodes: Slab<Membership>,
    chans: Slab<WaitChannel>,
    table: Vec<u32>,
    hasher: RandomState,
    /// Node capacity reserved by `with_capacity`.
    reserve: usize,
    /// Most memberships since the slabs were last made afresh.
    peak: usize,
}

impl Waiters {
    pub fn new() -> Waiters {
        Waiters::default()
    }

    /// An index with room for `polls` single-channel parked polls reserved up front (virtual
    /// memory: pages are touched only as polls park), so growing never copies the node slab
    /// and leaves freed copies behind in the allocator.
    pub fn with_capacity(polls: usize) -> Waiters {
        Waiters {
            nodes: Slab::with_capacity(polls),
            reserve: polls,
            ..Waiters::default()
        }
    }

    fn hash(&self, name: &str) -> u32 {
        self.hasher.hash_one(name) as u32
    }

    /// The table slot holding channel `name` (`Ok`), or the empty slot where it would go.
    fn find(&self, name: &str, hash: u32) -> Result<usize, usize> {
        let mask = self.table.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let key = self.table[at];
            if key == NIL {
                return Err(at);
            }
            let wc = &self.chans[key as usize];
            if wc.hash == hash && *wc.name == *name {
                return Ok(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// The key of channel `name`, if someone waits on it.
    fn lookup(&self, name: &str) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        self.find(name, self.hash(name)).ok().map(|s| self.table[s])
    }

    /// Rebuilds the table with `slots` (a power of two, above the channel count) slots.
    fn rebuild(&mut self, slots: usize) {
        self.table = vec![NIL; slots];
        let mask = slots - 1;
        for (key, wc) in self.chans.iter() {
            let mut at = wc.hash as usize & mask;
            while self.table[at] != NIL {
                at = (at + 1) & mask;
            }
            self.table[at] = key as u32;
        }
    }

    /// The key of channel `name`, created if nobody waited on it.
    fn channel(&mut self, name: &str) -> u32 {
        let hash = self.hash(name);
        if !self.table.is_empty() {
            if let Ok(slot) = self.find(name, hash) {
                return self.table[slot];
            }
        }
        if 2 * (self.chans.len() + 1) > self.table.len() {
            self.rebuild((2 * self.table.len()).max(MIN_TABLE));
        }
        let key = self.chans.insert(WaitChannel {
            name: Arc::from(name),
            head: NIL,
            hash,
        }) as u32;
        match self.find(name, hash) {
            Err(slot) | Ok(slot) => self.table[slot] = key,
        }
        key
    }

    /// Forgets channel `key` (its list is empty), shrinking what fell far below its capacity.
    fn drop_channel(&mut self, key: u32) {
        let wc = self.chans.remove(key as usize);
        let mask = self.table.len() - 1;
        let mut hole = wc.hash as usize & mask;
        while self.table[hole] != key {
            hole = (hole + 1) & mask;
        }
        // Backward shift: move later entries of the run into the hole when the hole lies
        // (cyclically) between their home slot and where they are.
        let mut at = (hole + 1) & mask;
        loop {
            let k = self.table[at];
            if k == NIL {
                break;
            }
            let home = self.chans[k as usize].hash as usize & mask;
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.table[hole] = k;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.table[hole] = NIL;
        let n = self.chans.len();
        if self.chans.capacity() > COMPACT_FLOOR && 8 * n < self.chans.capacity() {
            let nodes = &mut self.nodes;
            self.chans.compact(|wc, _from, to| {
                let mut at = wc.head;
                while at != NIL {
                    let node = &mut nodes[at as usize];
                    node.chan = to as u32;
                    at = node.next;
                }
                true
            });
            self.chans.shrink_to_fit();
            self.rebuild((4 * n).next_power_of_two().max(MIN_TABLE));
        } else if self.table.len() > MIN_TABLE && 8 * n < self.table.len() {
            self.rebuild((4 * n).next_power_of_two().max(MIN_TABLE));
        }
    }

    /// Registers connection `conn` as waiting on `channels` (no repeats); returns its first node.
    pub fn park<S: AsRef<str>>(&mut self, conn: u32, channels: &[S]) -> u32 {
        let mut first = NIL;
        let mut last = NIL;
        for name in channels {
            let chan = self.channel(name.as_ref());
            let wc = &mut self.chans[chan as usize];
            let old_head = wc.head;
            let node = self.nodes.insert(Membership {
                conn,
                chan,
                prev: NIL,
                next: old_head,
                sibling: NIL,
            }) as u32;
            wc.head = node;
            if old_head != NIL {
                self.nodes[old_head as usize].prev = node;
            }
            if last == NIL {
                first = node;
            } else {
                self.nodes[last as usize].sibling = node;
            }
            last = node;
        }
        self.peak = self.peak.max(self.nodes.len());
        first
    }

    /// Removes every membership of the poll whose first node is `first` (NIL: nothing).
    pub fn unpark(&mut self, first: u32) {
        let mut at = first;
        while at != NIL {
            let n = self.nodes.remove(at as usize);
            if n.prev != NIL {
                self.nodes[n.prev as usize].next = n.next;
            } else {
                self.chans[n.chan as usize].head = n.next;
            }
            if n.next != NIL {
                self.nodes[n.next as usize].prev = n.prev;
            }
            if self.chans[n.chan as usize].head == NIL {
                self.drop_channel(n.chan);
            }
            at = n.sibling;
        }
        if self.nodes.is_empty() && self.peak >= RELEASE_PEAK {
            self.release();
        }
    }

    /// Drops every slab and table of an empty index, reserving the nodes afresh.
    fn release(&mut self) {
        self.nodes = Slab::with_capacity(self.reserve);
        self.chans = Slab::new();
        self.table = Vec::new();
        self.peak = 0;
        // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Appends the connections waiting on `channel` to `out`.
    pub fn waiting_on(&self, channel: &str, out: &mut Vec<u32>) {
        let Some(c) = self.lookup(channel) else {
            return;
        };
        let mut at = self.chans[c as usize].head;
        while at != NIL {
            let n = &self.nodes[at as usize];
            out.push(n.conn);
            at = n.next;
        }
    }

    /// The channels of the poll whose first node is `first`, in subscription order.
    pub fn channels_of(&self, first: u32) -> Vec<Arc<str>> {
        self.names_of(first).map(Arc::clone).collect()
    }

    /// The channels of the poll whose first node is `first`, in subscription order, borrowed.
    pub fn names_of(&self, first: u32) -> impl Iterator<Item = &Arc<str>> + '_ {
        let mut at = first;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let n = &self.nodes[at as usize];
            at = n.sibling;
            Some(&self.chans[n.chan as usize].name)
        })
    }

    /// True when the poll whose first node is `first` waits on exactly one channel.
    pub fn is_single(&self, first: u32) -> bool {
        first != NIL && self.nodes[first as usize].sibling == NIL
    }

    /// Names of the channels with at least one waiter.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.chans.iter().map(|(_, wc)| &*wc.name)
    }

    /// Number of channels with at least one waiter, O(1).
    pub fn channel_count(&self) -> usize {
        self.chans.len()
    }

    /// Number of memberships (parked poll x channel).
    pub fn memberships(&self) -> usize {
        self.nodes.len()
    }

    /// Capacities of the node slab, the channel slab and the name table (entries): what
    /// `release` and the shrinking give back.
    pub fn capacities(&self) -> (usize, usize, usize) {
        (
            self.nodes.capacity(),
            self.chans.capacity(),
            self.table.capacity(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(w: &Waiters, ch: &str) -> Vec<u32> {
        let mut v = Vec::new();
        w.waiting_on(ch, &mut v);
        v.sort_unstable();
        v
    }

    type Model<'a> = std::collections::BTreeMap<u32, (u32, Vec<&'a str>)>;

    /// Unparks the poll of `model` picked by `pick` (the model is not empty).
    fn unpark_one(w: &mut Waiters, model: &mut Model, pick: u64) {
        let k = *model
            .keys()
            .nth((pick % model.len() as u64) as usize)
            .unwrap();
        let (first, _) = model.remove(&k).unwrap();
        w.unpark(first);
    }

    #[test]
    fn park_and_unpark_keep_lists_exact() {
        let mut w = Waiters::new();
        let a = w.park(1, &["x"]);
        let b = w.park(2, &["x", "y"]);
        let c = w.park(3, &["y", "z"]);
        assert_eq!(waiting(&w, "x"), vec![1, 2]);
        assert_eq!(waiting(&w, "y"), vec![2, 3]);
        assert_eq!(waiting(&w, "z"), vec![3]);
        assert!(w.is_single(a) && !w.is_single(b));
        assert_eq!(
            w.channels_of(c).iter().map(|s| &**s).collect::<Vec<_>>(),
            vec!["y", "z"]
        );
        w.unpark(b);
        assert_eq!(waiting(&w, "x"), vec![1]);
        assert_eq!(waiting(&w, "y"), vec![3]);
        w.unpark(a);
        assert_eq!(waiting(&w, "x"), Vec::<u32>::new());
        let mut names: Vec<&str> = w.channel_names().collect();
        names.sort_unstable();
        assert_eq!(names, vec!["y", "z"]);
        w.unpark(c);
        w.unpark(NIL);
        assert_eq!((w.memberships(), w.channel_names().count()), (0, 0));
    }

    #[test]
    fn random_operations_match_a_model() {
        let mut rng = crate::xorshift::XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.next_u64();
        let names = ["a", "b", "c", "d", "e"];
        let mut w = Waiters::new();
        let mut model: Model = Default::default();
        for step in 0..5000u32 {
            if next() % 2 == 0 || model.is_empty() {
                let mut cs: Vec<&str> = names.iter().copied().filter(|_| next() % 3 == 0).collect();
                if cs.is_empty() {
                    cs.push("a");
                }
                let first = w.park(step, &cs);
                model.insert(step, (first, cs));
            } else {
                unpark_one(&mut w, &mut model, next());
            }
            for n in names {
                let want: Vec<u32> = model
                    .iter()
                    .filter(|(_, (_, cs))| cs.contains(&n))
                    .map(|(k, _)| *k)
                    .collect();
                assert_eq!(waiting(&w, n), want);
            }
        }
    }

    /// The model test again with thousands of names and a load that rises and falls, so the
    /// table grows, shrinks and the channel slab is compacted under it.
    #[test]
    fn growing_and_shrinking_keeps_the_index_exact() {
        let mut rng = crate::xorshift::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        let names: Vec<String> = (0..3000).map(|i| format!("ch{i}")).collect();
        let mut w = Waiters::with_capacity(8);
        let mut model: Model = Default::default();
        let mut peak_table = 0;
        for step in 0..40_000u32 {
            // Rising for 5000 steps, then falling for 5000, four times.
            let rising = (step / 5000) % 2 == 0;
            if model.is_empty() || next() % 10 < if rising { 7 } else { 3 } {
                let mut cs: Vec<&str> = Vec::new();
                for _ in 0..1 + next() % 4 {
                    let n = names[(next() % names.len() as u64) as usize].as_str();
                    if !cs.contains(&n) {
                        cs.push(n);
                    }
                }
                let first = w.park(step, &cs);
                model.insert(step, (first, cs));
            } else {
                unpark_one(&mut w, &mut model, next());
            }
            peak_table = peak_table.max(w.capacities().2);
            if step % 97 == 0 {
                let mut want: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
                for (conn, (first, cs)) in &model {
                    let got: Vec<&str> = w.names_of(*first).map(|n| &**n).collect();
                    assert_eq!(&got, cs);
                    for c in cs {
                        want.entry(c).or_default().push(*conn);
                    }
                }
                let mut have: Vec<&str> = w.channel_names().collect();
                have.sort_unstable();
                assert_eq!(have, want.keys().copied().collect::<Vec<_>>());
                assert_eq!(w.channel_count(), want.len());
                for (c, conns) in &want {
                    assert_eq!(&waiting(&w, c), conns);
                }
                assert_eq!(
                    w.memberships(),
                    model.values().map(|(_, cs)| cs.len()).sum::<usize>()
                );
            }
        }
        assert!(peak_table >= 2048, "the table never grew: {peak_table}");
        for (first, _) in std::mem::take(&mut model).into_values() {
            w.unpark(first);
        }
        assert_eq!(w.capacities(), (8, 0, 0), "everything given back");
    }

    #[test]
    fn a_sparse_index_shrinks_and_an_empty_one_gives_everything_back() {
        let mut w = Waiters::with_capacity(16);
        let names: Vec<String> = (0..20_000).map(|i| format!("{i:0>128}")).collect();
        let firsts: Vec<u32> = names
            .chunks(16)
            .enumerate()
            .map(|(i, cs)| w.park(i as u32, cs))
            .collect();
        let (_, chans, table) = w.capacities();
        assert!(chans >= 20_000 && table >= 40_000);
        // All but the last poll leave: the table and the channel slab shrink to its size.
        for f in &firsts[..firsts.len() - 1] {
            w.unpark(*f);
        }
        let (_, chans, table) = w.capacities();
        assert!(chans <= COMPACT_FLOOR && table <= 8 * 16, "{chans} {table}");
        assert_eq!(waiting(&w, &names[19_999]), vec![firsts.len() as u32 - 1]);
        assert_eq!(w.channels_of(firsts[firsts.len() - 1]).len(), 16);
        // The last one leaves: the node slab is back to its reserve.
        w.unpark(firsts[firsts.len() - 1]);
        assert_eq!(w.capacities(), (16, 0, 0));
        // A small load does not make it resize on every empty moment.
        let f = w.park(1, &["a"]);
        let small = w.capacities();
        w.unpark(f);
        assert_eq!(w.capacities(), small);
        assert_eq!(small.2, MIN_TABLE);
    }
}
