//! The re-poll scenario's order check: every subscriber must see its channel's messages in
//! publish order, none twice, none skipped unless the server declared a reset.
//!
//! Invariants: `expected[i]` is the seq client `i` should see next; it only moves forward, so a
//! repeated or late message is counted once in `disorder` and changes nothing else.

/// Per-client order check state of the re-poll scenario.
pub struct OrderCheck {
    /// Next seq each client should see.
    pub expected: Vec<u64>,
    /// Answers that skipped forward without declaring a reset (messages lost unannounced).
    pub gaps: u64,
    /// Messages skipped by those gaps.
    pub skipped: u64,
    /// Messages seen twice or out of order.
    pub disorder: u64,
    /// Answers that declared a reset (pnsd `"reset":true`).
    pub resets: u64,
}

impl OrderCheck {
    pub fn new(clients: usize) -> OrderCheck {
        OrderCheck {
            expected: vec![0; clients],
            gaps: 0,
            skipped: 0,
            disorder: 0,
            resets: 0,
        }
    }

    pub fn check(&mut self, client: usize, reset: bool, seqs: &[u64]) {
        let e = &mut self.expected[client];
        if reset {
            self.resets += 1;
            if let Some(&first) = seqs.first() {
                *e = first.max(*e);
            }
        }
        for &s in seqs {
            if s > *e {
                self.gaps += 1;
                self.skipped += s - *e;
            } else if s < *e {
                self.disorder += 1;
                continue;
            }
            *e = s + 1;
        }
    }
}
