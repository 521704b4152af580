//! Which parked polls of one reactor wait on which channel.
//!
//! Per reactor thread, no locking. A parked poll on k channels owns k `Membership` nodes in one
//! slab, chained through `sibling` in subscription order; the poll's connection stores only the
//! index of its first node (`u32`). Each node is also in its channel's doubly linked list, so a
//! hang-up unlinks in O(k) without searching, and a channel's waiters are walked without
//! touching anyone else.
//!
//! Invariants:
//! - A `WaitChannel` exists exactly while at least one node is in its list (`len > 0`); its name
//!   is shared (`Arc<str>`) between the name index and the entry.
//! - Every node is in exactly one channel list and one sibling chain; `NIL` ends both.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

/// "No node".
pub const NIL: u32 = u32::MAX;

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
    len: u32,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Waiters {
    nodes: Slab<Membership>,
    chans: Slab<WaitChannel>,
    by_name: HashMap<Arc<str>, u32>,
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
            ..Waiters::default()
        }
    }

    /// Registers connection `conn` as waiting on `channels` (no repeats); returns its first node.
    pub fn park<S: AsRef<str>>(&mut self, conn: u32, channels: &[S]) -> u32 {
        let mut first = NIL;
        let mut last = NIL;
        for name in channels {
            let name = name.as_ref();
            let chan = match self.by_name.get(name) {
                Some(&c) => c,
                None => {
                    let name: Arc<str> = Arc::from(name);
                    let c = self.chans.insert(WaitChannel {
                        name: name.clone(),
                        head: NIL,
                        len: 0,
                    }) as u32;
                    self.by_name.insert(name, c);
                    c
                }
            };
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
            wc.len += 1;
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
            let wc = &mut self.chans[n.chan as usize];
            wc.len -= 1;
            if wc.len == 0 {
                let wc = self.chans.remove(n.chan as usize);
                self.by_name.remove(&*wc.name);
            }
            at = n.sibling;
        }
    }

    /// Appends the connections waiting on `channel` to `out`.
    pub fn waiting_on(&self, channel: &str, out: &mut Vec<u32>) {
        let Some(&c) = self.by_name.get(channel) else {
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
        let mut v = Vec::new();
        let mut at = first;
        while at != NIL {
            let n = &self.nodes[at as usize];
            v.push(self.chans[n.chan as usize].name.clone());
            at = n.sibling;
        }
        v
    }

    /// True when the poll whose first node is `first` waits on exactly one channel.
    pub fn is_single(&self, first: u32) -> bool {
        first != NIL && self.nodes[first as usize].sibling == NIL
    }

    /// Names of the channels with at least one waiter.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|k| &**k)
    }

    /// Number of memberships (parked poll x channel).
    pub fn memberships(&self) -> usize {
        self.nodes.len()
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
        let mut model: std::collections::BTreeMap<u32, (u32, Vec<&str>)> = Default::default();
        for step in 0..5000u32 {
            if next() % 2 == 0 || model.is_empty() {
                let mut cs: Vec<&str> = names.iter().copied().filter(|_| next() % 3 == 0).collect();
                if cs.is_empty() {
                    cs.push("a");
                }
                let first = w.park(step, &cs);
                model.insert(step, (first, cs));
            } else {
                let k = *model
                    .keys()
                    .nth((next() % model.len() as u64) as usize)
                    .unwrap();
                let (first, _) = model.remove(&k).unwrap();
                w.unpark(first);
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
}
