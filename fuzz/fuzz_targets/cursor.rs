//! Fuzz target `cursor`: `cursor::decode` and `cursor::encode` are inverse.
//!
//! Input: the bytes as text (lossy, so every input reaches `decode`); the first 16 bytes also
//! read as a little-endian (epoch, seq) pair when the input is long enough.
//!
//! Invariants checked for every input:
//! - `decode` never panics; a decoded cursor re-encodes to exactly the same text (one
//!   spelling), has an epoch below 2^48 and only `[0-9a-f]` text of at most `MAX_LEN` bytes;
//! - `decode(encode(epoch, seq)) == (epoch & EPOCH_MASK, seq)` for any pair.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pnsd::cursor::{self, Cursor, EPOCH_MASK, MAX_LEN};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(c) = cursor::decode(&text) {
        assert!(c.epoch <= EPOCH_MASK);
        assert_eq!(cursor::encode(c.epoch, c.seq), text, "{c:?}");
        assert!(text.len() <= MAX_LEN);
    }
    if let (Some(e), Some(s)) = (data.get(..8), data.get(8..16)) {
        let mut eb = [0u8; 8];
        eb.copy_from_slice(e);
        let mut sb = [0u8; 8];
        sb.copy_from_slice(s);
        // Unmasked on purpose: `encode` must drop the epoch's bits above 48.
        let epoch = u64::from_le_bytes(eb);
        let seq = u64::from_le_bytes(sb);
        let t = cursor::encode(epoch, seq);
        assert!(t.len() <= MAX_LEN && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(
            cursor::decode(&t),
            Some(Cursor {
                epoch: epoch & EPOCH_MASK,
                seq
            }),
            "{t}"
        );
    }
});
