//! A small deterministic pseudo-random generator (Marsaglia's xorshift64) for the model tests,
//! the micro-benchmarks and the soak harness: the same seed gives the same workload every run.
//!
//! Not for anything that must be unpredictable; nothing in the server uses it.
//!
//! Invariant: the state is never zero (zero is xorshift's one fixed point).

/// The generator; see the module documentation.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Starts from `state` itself (a zero state is replaced by a fixed odd constant).
    pub fn new(state: u64) -> XorShift {
        XorShift(if state == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            state
        })
    }

    /// Starts from `seed` mixed through splitmix64, so nearby seeds give unrelated streams.
    pub fn seeded(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Below `n` (which must not be zero); the slight modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn known_sequence_and_ranges() {
        // Marsaglia's 13/7/17 triple from state 1.
        let mut r = XorShift::new(1);
        assert_eq!(r.next_u64(), 0x4082_2041);
        assert_eq!(
            XorShift::new(0).next_u64(),
            XorShift::new(0x9E37_79B9_7F4A_7C15).next_u64()
        );
        let mut r = XorShift::seeded(7);
        for _ in 0..1000 {
            assert!(r.below(3) < 3);
            assert!((5..=9).contains(&r.between(5, 9)));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_ne!(
            XorShift::seeded(1).next_u64(),
            XorShift::seeded(2).next_u64()
        );
    }
}
