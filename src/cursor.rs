//! Cursors: where a subscriber stands in the server's one global order of messages.
//!
//! A cursor names a server run (the *epoch*, 48 random bits chosen at start) and a position
//! `seq` in that run: the sequence number of the last message the holder has seen (0 = before
//! the first message). Every published message gets `seq = previous + 1`, so a message's id and
//! "the position just after it" are the same cursor.
//!
//! Invariants:
//! - `encode` and `decode` are inverse on every `(epoch < 2^48, seq)`; `decode` accepts nothing
//!   else (fixed-width lowercase hex epoch, then 1-16 lowercase hex digits of seq, no sign, no
//!   padding beyond the fixed epoch width), so a cursor has exactly one spelling.
//! - The text uses only `[0-9a-f]`, so it sits inside a JSON string and a quoted ETag unescaped.

use std::fmt::Write as _;

/// Hex digits of the epoch: 48 bits make a collision between two runs on one host negligible
/// while keeping a cursor short (12 + up to 16 characters).
pub const EPOCH_HEX: usize = 12;
/// The epoch's bit mask (48 bits, see `EPOCH_HEX`).
pub const EPOCH_MASK: u64 = (1 << 48) - 1;
/// Longest valid cursor: the epoch plus a full u64 of seq in hex.
pub const MAX_LEN: usize = EPOCH_HEX + 16;

/// A decoded cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

/// Appends the text of `(epoch, seq)` to `out`.
pub fn encode_into(out: &mut String, epoch: u64, seq: u64) {
    // Writing into a String cannot fail.
    let _ = write!(out, "{:012x}{:x}", epoch & EPOCH_MASK, seq);
}

/// The text of `(epoch, seq)`.
pub fn encode(epoch: u64, seq: u64) -> String {
    let mut s = String::with_capacity(MAX_LEN);
    encode_into(&mut s, epoch, seq);
    s
}

/// Parses a cursor; `None` for anything that is not exactly a cursor's spelling.
pub fn decode(text: &str) -> Option<Cursor> {
    let b = text.as_bytes();
    if b.len() <= EPOCH_HEX || b.len() > MAX_LEN {
        return None;
    }
    if !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let (e, s) = text.split_at(EPOCH_HEX);
    // One spelling only: no leading zeros in seq except "0" itself.
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    let epoch = u64::from_str_radix(e, 16).ok()?;
    let seq = u64::from_str_radix(s, 16).ok()?;
    Some(Cursor { epoch, seq })
}

/// A fresh random epoch for this run, from the kernel's random source; falls back to a hash of
/// the time and pid (still distinct across restarts within one second).
pub fn random_epoch() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let v = match from_kernel {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_u32(std::process::id());
            h.finish()
        }
    };
    // Never 0, so a zero-filled cursor is never "this run".
    (v & EPOCH_MASK).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for &(e, s) in &[
            (1u64, 0u64),
            (EPOCH_MASK, u64::MAX),
            (0xabc, 1),
            (0x1234_5678_9abc, 0x10),
        ] {
            let t = encode(e, s);
            assert_eq!(decode(&t), Some(Cursor { epoch: e, seq: s }), "{t}");
            assert!(t.len() <= MAX_LEN);
        }
    }

    #[test]
    fn rejects_other_spellings() {
        let good = encode(0x1234_5678_9abc, 0x2f);
        assert!(decode(&good).is_some());
        for bad in [
            "",
            "123456789abc",                  // no seq
            "123456789ABC2f",                // uppercase
            "123456789abc02f",               // leading zero in seq
            "123456789abc-1",                // sign
            "123456789abc 1",                // space
            "123456789abc10000000000000000", // 17 hex digits of seq
            "zz3456789abc1",
            "123456789abc\u{e9}",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode("123456789abc0").map(|c| c.seq), Some(0));
    }

    #[test]
    fn random_epochs_differ_and_fit() {
        let a = random_epoch();
        let b = random_epoch();
        assert!(a != 0 && a <= EPOCH_MASK && b <= EPOCH_MASK);
        assert_ne!(a, b);
    }
}
