//! Fuzz target `token`: `token::verify` on hostile text, and `mint`/`verify` agreement.
//!
//! Input: byte 0 picks the mode. Even: the rest, as text, is a token to verify with key `k` at
//! a fixed clock. Odd (structured): bytes 1-8 give `exp` (bit 1 of byte 0 set: the clock plus a
//! signed 16-bit offset from bytes 1-2, so both sides of the boundary are reached), bytes 9-10
//! a position and byte 11 a XOR mask for a one-byte mutation, bit 2 of byte 0 asks for a `sub`;
//! the rest, split on `\n`, gives the channels (the last piece is the `sub` when asked).
//!
//! Invariants checked:
//! - `verify` never panics, and whatever it accepts has valid, distinct channels and an `exp`
//!   after the clock;
//! - a minted token longer than `MAX_TOKEN_LEN` is `Malformed`; a shorter one verifies exactly
//!   when `exp` is after the clock and every channel is valid, and then gives back the channels
//!   (repeats dropped), `exp` and `sub`; an expired one is `Expired`, one with a bad channel
//!   `BadClaims`;
//! - a token with one byte changed (still UTF-8) never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pnsd::query::valid_channel;
use pnsd::token::{self, Secret, TokenError};

/// The fixed clock, unix seconds (2023-11-14T22:13:20Z).
const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secret = Secret::from_bytes(b"k");
    if mode & 1 == 0 {
        let text = String::from_utf8_lossy(rest);
        if let Ok(claims) = token::verify(&secret, &text, NOW as f64) {
            assert!(claims.exp > NOW as f64);
            for (i, c) in claims.channels.iter().enumerate() {
                assert!(valid_channel(c) && !claims.channels[..i].contains(c));
            }
        }
        return;
    }
    let (Some(head), Some(names)) = (rest.get(..11), rest.get(11..)) else {
        return;
    };
    let exp = if mode & 2 != 0 {
        NOW.wrapping_add_signed(i64::from(i16::from_le_bytes([head[0], head[1]])))
    } else {
        u64::from_le_bytes([
            head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
        ])
    };
    let pos = usize::from(u16::from_le_bytes([head[8], head[9]]));
    let mask = head[10].max(1);
    let mut pieces: Vec<String> = String::from_utf8_lossy(names)
        .split('\n')
        .map(str::to_owned)
        .collect();
    let sub = if mode & 4 != 0 { pieces.pop() } else { None };
    let channels = pieces;

    let tok = token::mint(&secret, &channels, exp, sub.as_deref());
    let got = token::verify(&secret, &tok, NOW as f64);
    let all_valid = channels.iter().all(|c| valid_channel(c));
    // `exp` is compared as f64, like the verifier does, since the token carries it as a number.
    let live = exp as f64 > NOW as f64;
    if tok.len() > token::MAX_TOKEN_LEN {
        assert_eq!(got, Err(TokenError::Malformed), "{} bytes", tok.len());
        return;
    }
    match (&got, all_valid, live) {
        (Ok(claims), true, true) => {
            let mut unique: Vec<String> = Vec::new();
            for c in &channels {
                if !unique.contains(c) {
                    unique.push(c.clone());
                }
            }
            assert_eq!(claims.channels, unique);
            assert_eq!(claims.exp, exp as f64);
            assert_eq!(claims.sub, sub);
        }
        (Err(TokenError::BadClaims), false, _) => {}
        (Err(TokenError::Expired), true, false) => {}
        _ => panic!("{got:?} for channels {channels:?} exp {exp} sub {sub:?}: {tok}"),
    }

    let mut bytes = tok.clone().into_bytes();
    let at = pos % bytes.len();
    bytes[at] ^= mask;
    if let Ok(mutated) = String::from_utf8(bytes) {
        let r = token::verify(&secret, &mutated, NOW as f64);
        assert!(r.is_err(), "mutation at {at} of {tok} accepted: {mutated}");
    }
});
