//! Subscriber tokens: HS256 JSON Web Tokens (PROTOCOL.md section 4), verified and minted.
//!
//! Invariants:
//! - Only compact JWS with `"alg":"HS256"` is accepted; every other `alg`, `none` included, and a
//!   header without one, is [`TokenError::BadAlgorithm`]. The algorithm comes from the server's
//!   configuration, never from the token: the header is only checked against it.
//! - The signature is checked (in constant time, by `hmac`'s `Mac::verify_slice`) before a byte
//!   of the payload is parsed, so claims are only ever read from tokens signed with the key.
//! - Segments are strict base64url: no padding, no `+` or `/`, no non-zero trailing bits, so a
//!   token has exactly one spelling and cannot be altered without changing the signed bytes.
//! - Claims that verify are well formed: every channel passes `crate::query::valid_channel`
//!   (duplicates dropped, first occurrence kept), `exp` is a finite number later than the
//!   caller's clock (no leeway), `sub` is a string or absent.
//! - Verification does no I/O and takes the time as a parameter; the work per token is bounded
//!   by [`MAX_TOKEN_LEN`].
//! - The key never leaves [`Secret`]: it is kept only as the keyed HMAC state and `Debug` prints
//!   no part of it.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::query::valid_channel;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes. Sixteen channels of the longest name (128 bytes) make a
/// payload of about 2.2 KB, 2.9 KB once base64-encoded; 4096 leaves room for that and a `sub`,
/// keeps a `?sid=` query well under the 8192-byte header limit of PROTOCOL.md section 3, and
/// bounds the decoding and hashing work an unauthenticated client can cause.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The only algorithm accepted and the one minted (PROTOCOL.md section 4).
const ALG_HS256: &str = "HS256";

/// The header every minted token carries, already in its JSON form so minting cannot fail.
const MINT_HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// An HS256 key. It is held only as the keyed HMAC state; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret {
    mac: HmacSha256,
}

impl Secret {
    /// Reads a key file: its bytes minus ONE trailing `"\n"` or `"\r\n"` (PROTOCOL.md section 4),
    /// so `echo key > file` and an editor's final newline both give the key `key`, while a key
    /// that really ends in a newline can still be written with two.
    ///
    /// A file that is empty once that newline is removed is `io::ErrorKind::InvalidData`; any
    /// other read error is returned as the OS gave it.
    pub fn from_file(path: &Path) -> io::Result<Secret> {
        let bytes = std::fs::read(path)?;
        let key = strip_one_newline(&bytes);
        if key.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("secret file {} is empty", path.display()),
            ));
        }
        Ok(Secret::from_bytes(key))
    }

    /// A key from bytes used as they are (any length; HMAC hashes keys longer than a block).
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        let mac = match HmacSha256::new_from_slice(bytes) {
            Ok(mac) => mac,
            // HMAC is defined for keys of every length; `hmac` 0.12 never returns this error.
            Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
        };
        Secret { mac }
    }

    /// A fresh MAC over `signing_input` (`BASE64URL(header) "." BASE64URL(payload)`).
    fn mac_over(&self, signing_input: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(signing_input);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `bytes` without one trailing `"\r\n"` or, failing that, one trailing `"\n"`.
fn strip_one_newline(bytes: &[u8]) -> &[u8] {
    if let Some(rest) = bytes.strip_suffix(b"\r\n") {
        rest
    } else if let Some(rest) = bytes.strip_suffix(b"\n") {
        rest
    } else {
        bytes
    }
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// Channels the token grants, each a valid channel name, without duplicates, in the order
    /// of their first appearance in the token. May be empty (a token that grants nothing).
    pub channels: Vec<String>,
    /// Expiry, unix seconds; the token is valid while the clock is strictly before it.
    pub exp: f64,
    /// Subject, for logs; pnsd gives it no meaning.
    pub sub: Option<String>,
}

impl Claims {
    /// Whether the token grants `channel`.
    pub fn grants(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }
}

/// Why a token was refused. The server answers every one of them `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three strict base64url segments, a header that is not a JSON object, a payload that
    /// is not JSON, a `crit` header, or longer than [`MAX_TOKEN_LEN`].
    Malformed,
    /// The header's `alg` is absent or anything but `"HS256"`.
    BadAlgorithm,
    /// The signature does not match the key.
    BadSignature,
    /// `exp` is at or before the current time.
    Expired,
    /// Signed, but the payload is not an object with valid `channels`, `exp` and `sub`.
    BadClaims,
}

impl TokenError {
    /// The `errorcode` of the 401 answer.
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadAlgorithm => "token_bad_algorithm",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::BadClaims => "token_bad_claims",
        }
    }

    /// The human `message` of the 401 answer.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is not a well-formed compact JWT",
            TokenError::BadAlgorithm => "the token's algorithm must be HS256",
            TokenError::BadSignature => "the token's signature does not match",
            TokenError::Expired => "the token has expired",
            TokenError::BadClaims => {
                "the token's claims are invalid: it needs \"channels\" (an array of channel names) and \"exp\" (a number)"
            }
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TokenError {}

/// Verifies a compact JWS signed HS256 with `secret` and returns its claims.
///
/// Order of checks: length and shape (three non-empty strict base64url segments) →
/// [`TokenError::Malformed`]; header a JSON object with `"alg":"HS256"` (a `typ` may be
/// anything, a `crit` is refused as an extension this code does not understand, RFC 7515
/// section 4.1.11) → `Malformed` / [`TokenError::BadAlgorithm`]; signature →
/// [`TokenError::BadSignature`]; only then the payload: not JSON → `Malformed`, bad claims →
/// [`TokenError::BadClaims`], `now_unix >= exp` → [`TokenError::Expired`]. Unknown header
/// fields and unknown claims (`iat`, `nbf`, ...) are ignored.
pub fn verify(secret: &Secret, token: &str, now_unix: f64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let header = decode_segment(header_b64)?;
    let payload = decode_segment(payload_b64)?;
    let signature = decode_segment(signature_b64)?;

    check_header(&header)?;

    // The signing input is the token up to its last '.', exactly as received.
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    secret
        .mac_over(signing_input.as_bytes())
        .verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;

    let payload: Value = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    let claims = parse_claims(&payload)?;
    // `exp` is finite (JSON has no NaN or infinity), so this comparison is total.
    if now_unix < claims.exp {
        Ok(claims)
    } else {
        Err(TokenError::Expired)
    }
}

/// One non-empty segment in strict base64url (no padding, canonical trailing bits).
fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    if segment.is_empty() {
        return Err(TokenError::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)
}

/// The header must be a JSON object whose `alg` is the string `"HS256"` and with no `crit`.
fn check_header(header: &[u8]) -> Result<(), TokenError> {
    let header: Map<String, Value> =
        serde_json::from_slice(header).map_err(|_| TokenError::Malformed)?;
    if header.contains_key("crit") {
        return Err(TokenError::Malformed);
    }
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ALG_HS256 => Ok(()),
        _ => Err(TokenError::BadAlgorithm),
    }
}

/// Claims from a signed payload; anything but the documented shape is `BadClaims`.
fn parse_claims(payload: &Value) -> Result<Claims, TokenError> {
    let Value::Object(claims) = payload else {
        return Err(TokenError::BadClaims);
    };
    let Some(Value::Array(names)) = claims.get("channels") else {
        return Err(TokenError::BadClaims);
    };
    let mut channels: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let Value::String(name) = name else {
            return Err(TokenError::BadClaims);
        };
        if !valid_channel(name) {
            return Err(TokenError::BadClaims);
        }
        // Bounded: the whole token is at most MAX_TOKEN_LEN bytes.
        if !channels.contains(name) {
            channels.push(name.clone());
        }
    }
    let exp = match claims.get("exp") {
        Some(Value::Number(exp)) => exp.as_f64().ok_or(TokenError::BadClaims)?,
        _ => return Err(TokenError::BadClaims),
    };
    let sub = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(sub)) => Some(sub.clone()),
        Some(_) => return Err(TokenError::BadClaims),
    };
    Ok(Claims { channels, exp, sub })
}

/// Mints a token: header `{"alg":"HS256","typ":"JWT"}`, payload
/// `{"channels":[...],"exp":N,"sub":"..."}` (`sub` omitted when `None`).
///
/// The channel names are not checked here; a token naming an invalid one will not verify, so
/// callers validate names first (with `crate::query::valid_channel`).
pub fn mint(secret: &Secret, channels: &[String], exp: u64, sub: Option<&str>) -> String {
    let mut claims = Map::new();
    claims.insert(
        "channels".to_owned(),
        Value::Array(channels.iter().cloned().map(Value::String).collect()),
    );
    claims.insert("exp".to_owned(), Value::from(exp));
    if let Some(sub) = sub {
        claims.insert("sub".to_owned(), Value::String(sub.to_owned()));
    }
    // Displaying a `Value` writes compact JSON and cannot fail.
    let payload_json = Value::Object(claims).to_string();

    let mut token = URL_SAFE_NO_PAD.encode(MINT_HEADER_JSON);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload_json, &mut token);
    let signature = secret.mac_over(token.as_bytes()).finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// Unix time now, in seconds, from the system clock (negative if the clock is before 1970).
pub fn unix_now() -> f64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far in the future (2100-01-01T00:00:00Z), for tokens that must not expire in a test.
    const EXP_2100: u64 = 4_102_444_800;
    /// A fixed "now" (2023-11-14T22:13:20Z), so no test reads the clock unless it means to.
    const NOW: f64 = 1_700_000_000.0;
    const KEY: &[u8] = b"test key";

    /// Known-answer token from an independent implementation (Python's standard library):
    ///
    /// ```text
    /// python3 -c '
    /// import hmac, hashlib, base64, json
    /// b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    /// key = b"kat-secret: independent implementation"
    /// header = {"typ": "JWT", "alg": "HS256"}
    /// payload = {"sub": "user-42", "channels": ["user:42", "news"], "exp": 4102444800, "iat": 1700000000}
    /// si = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + b64(json.dumps(payload, separators=(",", ":")).encode())
    /// print(si + "." + b64(hmac.new(key, si.encode(), hashlib.sha256).digest()))
    /// '
    /// ```
    ///
    /// Its header and claims are in another order than ours and it has an unknown claim (`iat`).
    const KAT_KEY: &[u8] = b"kat-secret: independent implementation";
    const KAT_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIiwiY2hhbm5lbHMiOlsidXNlcjo0MiIsIm5ld3MiXSwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDB9.oq_AZ_o9fkvxhDD4BxNI2I8zEmoFSAO-_mvhdWzQEYU";

    /// What `mint` must produce byte for byte, from the same Python command with
    /// `header = {"alg": "HS256", "typ": "JWT"}` and
    /// `payload = {"channels": ["user:42", "news"], "exp": 4102444800, "sub": "user-42"}`.
    const KAT_MINTED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjaGFubmVscyI6WyJ1c2VyOjQyIiwibmV3cyJdLCJleHAiOjQxMDI0NDQ4MDAsInN1YiI6InVzZXItNDIifQ.raM3ivJS0QMURKOaMnfwxqHRjbAegYSoVa9oJC7fyHU";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header and payload text, signed HS256 with `key` (a test-only signer
    /// that goes straight to `hmac`, independent of `mint`).
    fn sign(key: &[u8], header: &str, payload: &str) -> String {
        let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn signed_payload(payload: &str) -> Result<Claims, TokenError> {
        verify(&Secret::from_bytes(KEY), &sign(KEY, HS256, payload), NOW)
    }

    fn chans(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn good_token() -> String {
        mint(
            &Secret::from_bytes(KEY),
            &chans(&["user:42", "news"]),
            EXP_2100,
            Some("u42"),
        )
    }

    /// Replaces segment `index` of `token` with `with`.
    fn replace_segment(token: &str, index: usize, with: &str) -> String {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[index] = with;
        parts.join(".")
    }

    #[test]
    fn round_trip_with_sub() {
        let secret = Secret::from_bytes(KEY);
        let token = mint(&secret, &chans(&["user:42", "news"]), EXP_2100, Some("u42"));
        let claims = verify(&secret, &token, NOW).expect("valid");
        assert_eq!(
            claims,
            Claims {
                channels: chans(&["user:42", "news"]),
                exp: EXP_2100 as f64,
                sub: Some("u42".to_owned()),
            }
        );
        assert!(claims.grants("news"));
        assert!(!claims.grants("new"));
    }

    #[test]
    fn round_trip_without_sub_omits_the_claim() {
        let secret = Secret::from_bytes(KEY);
        let token = mint(&secret, &chans(&["a"]), EXP_2100, None);
        let payload = token.split('.').nth(1).expect("three segments");
        let payload = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        assert_eq!(payload, br#"{"channels":["a"],"exp":4102444800}"#);
        let claims = verify(&secret, &token, NOW).expect("valid");
        assert_eq!(claims.sub, None);
        assert_eq!(claims.channels, chans(&["a"]));
    }

    #[test]
    fn round_trip_with_the_real_clock() {
        let secret = Secret::from_bytes(KEY);
        let now = unix_now();
        assert!(now > NOW, "the clock is after 2023");
        let token = mint(&secret, &chans(&["a"]), now as u64 + 3600, None);
        assert!(verify(&secret, &token, unix_now()).is_ok());
    }

    #[test]
    fn known_answer_from_python_verifies() {
        let claims = verify(&Secret::from_bytes(KAT_KEY), KAT_TOKEN, NOW).expect("valid");
        assert_eq!(
            claims,
            Claims {
                channels: chans(&["user:42", "news"]),
                exp: 4_102_444_800.0,
                sub: Some("user-42".to_owned()),
            }
        );
        // And the same token under another key is refused.
        assert_eq!(
            verify(&Secret::from_bytes(KEY), KAT_TOKEN, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn mint_matches_python_byte_for_byte() {
        let token = mint(
            &Secret::from_bytes(KAT_KEY),
            &chans(&["user:42", "news"]),
            EXP_2100,
            Some("user-42"),
        );
        assert_eq!(token, KAT_MINTED);
    }

    #[test]
    fn wrong_key_is_bad_signature() {
        let token = good_token();
        assert_eq!(
            verify(&Secret::from_bytes(b"test kez"), &token, NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&Secret::from_bytes(b""), &token, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let token = good_token();
        let forged = b64(br#"{"channels":["user:1"],"exp":4102444800,"sub":"u42"}"#);
        assert_eq!(
            verify(
                &Secret::from_bytes(KEY),
                &replace_segment(&token, 1, &forged),
                NOW
            ),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn signature_is_checked_before_the_payload_is_read() {
        // Payloads that would be Malformed, BadClaims or Expired under the right key are all
        // BadSignature under a wrong one: nothing of an unsigned payload is looked at.
        let wrong = Secret::from_bytes(b"another key");
        for payload in [
            "not json",
            "[]",
            r#"{"channels":"a","exp":4102444800}"#,
            r#"{"channels":["a b"],"exp":4102444800}"#,
            r#"{"channels":["a"],"exp":"4102444800"}"#,
            r#"{"channels":["a"],"exp":1}"#,
        ] {
            assert_eq!(
                verify(&wrong, &sign(KEY, HS256, payload), NOW),
                Err(TokenError::BadSignature),
                "{payload}"
            );
        }
    }

    #[test]
    fn tampered_header_is_bad_signature() {
        // Same alg, different spelling: the signed bytes changed.
        let token = good_token();
        let header = b64(br#"{"alg":"HS256"}"#);
        assert_eq!(
            verify(
                &Secret::from_bytes(KEY),
                &replace_segment(&token, 0, &header),
                NOW
            ),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_signature_is_bad_signature() {
        let secret = Secret::from_bytes(KEY);
        let token = good_token();
        let sig = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(2).expect("three segments"))
            .expect("base64url");
        assert_eq!(sig.len(), 32);
        // Every single-bit flip of the signature is refused.
        for byte in 0..sig.len() {
            for bit in 0..8 {
                let mut bad = sig.clone();
                bad[byte] ^= 1 << bit;
                let forged = replace_segment(&token, 2, &b64(&bad));
                assert_eq!(
                    verify(&secret, &forged, NOW),
                    Err(TokenError::BadSignature),
                    "byte {byte} bit {bit}"
                );
            }
        }
        // Truncated, extended, all zeros.
        for bad in [
            &sig[..31],
            &[sig.as_slice(), &[0]].concat()[..],
            &[0u8; 32][..],
        ] {
            let forged = replace_segment(&token, 2, &b64(bad));
            assert_eq!(verify(&secret, &forged, NOW), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn other_algorithms_are_refused_before_the_signature() {
        let secret = Secret::from_bytes(KEY);
        let payload = r#"{"channels":["a"],"exp":4102444800}"#;
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"HS256 "}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":null}"#,
            r#"{"typ":"JWT"}"#,
            r#"{}"#,
        ] {
            // Correctly HMAC-SHA256-signed with the right key: alg alone decides.
            let token = sign(KEY, header, payload);
            assert_eq!(
                verify(&secret, &token, NOW),
                Err(TokenError::BadAlgorithm),
                "{header}"
            );
        }
        // The classic `alg:none` token with an empty signature is malformed (empty segment).
        let unsigned = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(payload.as_bytes()));
        assert_eq!(verify(&secret, &unsigned, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn typ_may_be_anything_and_unknown_header_fields_are_ignored() {
        let secret = Secret::from_bytes(KEY);
        let payload = r#"{"channels":["a"],"exp":4102444800}"#;
        for header in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"at+jwt"}"#,
            r#"{"alg":"HS256","typ":7}"#,
            r#"{"typ":"JWT","kid":"k1","alg":"HS256"}"#,
        ] {
            assert!(
                verify(&secret, &sign(KEY, header, payload), NOW).is_ok(),
                "{header}"
            );
        }
    }

    #[test]
    fn crit_header_is_malformed() {
        let token = sign(
            KEY,
            r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
            r#"{"channels":["a"],"exp":4102444800}"#,
        );
        assert_eq!(
            verify(&Secret::from_bytes(KEY), &token, NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn non_json_or_non_object_header_is_malformed() {
        let payload = r#"{"channels":["a"],"exp":4102444800}"#;
        for header in [
            "not json",
            r#"["alg","HS256"]"#,
            r#""HS256""#,
            "null",
            r#"{"alg":"HS256""#,
        ] {
            assert_eq!(
                verify(&Secret::from_bytes(KEY), &sign(KEY, header, payload), NOW),
                Err(TokenError::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn signed_non_json_payload_is_malformed() {
        assert_eq!(signed_payload("not json"), Err(TokenError::Malformed));
        assert_eq!(
            signed_payload(r#"{"channels":["a"],"#),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn expiry_has_no_leeway() {
        let secret = Secret::from_bytes(KEY);
        let token = mint(&secret, &chans(&["a"]), 1_000, None);
        assert!(verify(&secret, &token, 999.0).is_ok());
        assert!(verify(&secret, &token, 999.999).is_ok());
        assert_eq!(verify(&secret, &token, 1_000.0), Err(TokenError::Expired));
        assert_eq!(verify(&secret, &token, 1_000.001), Err(TokenError::Expired));
        assert_eq!(verify(&secret, &token, NOW), Err(TokenError::Expired));
    }

    #[test]
    fn fractional_and_negative_exp_are_numbers() {
        let claims = signed_payload(r#"{"channels":["a"],"exp":1700000000.5}"#).expect("valid");
        assert_eq!(claims.exp, 1_700_000_000.5);
        assert_eq!(
            signed_payload(r#"{"channels":["a"],"exp":1700000000.0}"#),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signed_payload(r#"{"channels":["a"],"exp":-1}"#),
            Err(TokenError::Expired)
        );
        assert!(signed_payload(r#"{"channels":["a"],"exp":4.1e9}"#).is_ok());
    }

    #[test]
    fn exp_that_is_not_a_number_is_bad_claims() {
        for exp in [r#""4102444800""#, "null", "true", "[4102444800]", "{}"] {
            let payload = format!(r#"{{"channels":["a"],"exp":{exp}}}"#);
            assert_eq!(
                signed_payload(&payload),
                Err(TokenError::BadClaims),
                "{exp}"
            );
        }
        assert_eq!(
            signed_payload(r#"{"channels":["a"]}"#),
            Err(TokenError::BadClaims)
        );
    }

    #[test]
    fn missing_or_non_array_channels_is_bad_claims() {
        for payload in [
            r#"{"exp":4102444800}"#,
            r#"{"channels":"a","exp":4102444800}"#,
            r#"{"channels":null,"exp":4102444800}"#,
            r#"{"channels":{"a":1},"exp":4102444800}"#,
            r#"{"channel":["a"],"exp":4102444800}"#,
        ] {
            assert_eq!(
                signed_payload(payload),
                Err(TokenError::BadClaims),
                "{payload}"
            );
        }
    }

    #[test]
    fn bad_channel_names_are_bad_claims() {
        let long = "x".repeat(129);
        for name in [
            r#""""#,
            r#""a b""#,
            r#""a/b""#,
            r#""a?b""#,
            r#""caf\u00e9""#,
            r#""a\u0000""#,
            "1",
            "null",
            r#"["a"]"#,
            &format!(r#""{long}""#),
        ] {
            let payload = format!(r#"{{"channels":["ok",{name}],"exp":4102444800}}"#);
            assert_eq!(
                signed_payload(&payload),
                Err(TokenError::BadClaims),
                "{name}"
            );
        }
        // 128 bytes and every allowed punctuation mark are fine.
        let longest = "y".repeat(128);
        let payload = format!(r#"{{"channels":["{longest}","A-z_0.9:x@y"],"exp":4102444800}}"#);
        assert_eq!(
            signed_payload(&payload).expect("valid").channels,
            chans(&[&longest, "A-z_0.9:x@y"])
        );
    }

    #[test]
    fn duplicate_channels_count_once_and_empty_list_is_allowed() {
        let claims = signed_payload(r#"{"channels":["b","a","b","a","c"],"exp":4102444800}"#)
            .expect("valid");
        assert_eq!(claims.channels, chans(&["b", "a", "c"]));
        let claims = signed_payload(r#"{"channels":[],"exp":4102444800}"#).expect("valid");
        assert!(claims.channels.is_empty());
    }

    #[test]
    fn payload_that_is_not_an_object_is_bad_claims() {
        for payload in ["[]", "1", r#""channels""#, "null"] {
            assert_eq!(
                signed_payload(payload),
                Err(TokenError::BadClaims),
                "{payload}"
            );
        }
    }

    #[test]
    fn sub_present_absent_null_or_wrong_type() {
        let claims =
            signed_payload(r#"{"channels":["a"],"exp":4102444800,"sub":"alice"}"#).expect("ok");
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        let claims = signed_payload(r#"{"channels":["a"],"exp":4102444800}"#).expect("ok");
        assert_eq!(claims.sub, None);
        let claims =
            signed_payload(r#"{"channels":["a"],"exp":4102444800,"sub":null}"#).expect("ok");
        assert_eq!(claims.sub, None);
        assert_eq!(
            signed_payload(r#"{"channels":["a"],"exp":4102444800,"sub":42}"#),
            Err(TokenError::BadClaims)
        );
    }

    #[test]
    fn unknown_claims_are_ignored() {
        let claims = signed_payload(
            r#"{"iss":"x","channels":["a"],"nbf":9999999999,"exp":4102444800,"extra":{"k":[1]}}"#,
        )
        .expect("valid");
        assert_eq!(claims.channels, chans(&["a"]));
    }

    #[test]
    fn wrong_segment_count_is_malformed() {
        let secret = Secret::from_bytes(KEY);
        let token = good_token();
        let parts: Vec<&str> = token.split('.').collect();
        for bad in [
            String::new(),
            "abc".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{token}.{}", parts[2]),
            format!("{token}."),
            format!(".{token}"),
            "..".to_owned(),
            "...".to_owned(),
        ] {
            assert_eq!(
                verify(&secret, &bad, NOW),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_segments_are_malformed() {
        let secret = Secret::from_bytes(KEY);
        let token = good_token();
        for index in 0..3 {
            let bad = replace_segment(&token, index, "");
            assert_eq!(
                verify(&secret, &bad, NOW),
                Err(TokenError::Malformed),
                "{index}"
            );
        }
    }

    #[test]
    fn padding_and_foreign_alphabets_are_malformed() {
        let secret = Secret::from_bytes(KEY);
        // Payload with a length that needs padding, signed over the padded spelling, so only
        // the '=' can be the reason for refusal.
        let header = b64(HS256.as_bytes());
        let payload_json = br#"{"channels":["a"],"exp":4102444800}"#;
        assert_ne!(payload_json.len() % 3, 0, "needs padding");
        let padded = base64::engine::general_purpose::URL_SAFE.encode(payload_json);
        assert!(padded.ends_with('='));
        let signing_input = format!("{header}.{padded}");
        let mut mac = HmacSha256::new_from_slice(KEY).expect("any key length");
        mac.update(signing_input.as_bytes());
        let token = format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()));
        assert_eq!(verify(&secret, &token, NOW), Err(TokenError::Malformed));

        // A padded signature (32 bytes needs one '=').
        let good = good_token();
        assert_eq!(
            verify(&secret, &format!("{good}="), NOW),
            Err(TokenError::Malformed)
        );

        // Standard alphabet instead of url-safe: swap a '-' or '_' for '+' or '/'.
        let sig = good.split('.').nth(2).expect("three segments").to_owned();
        let std_sig = sig.replace('-', "+").replace('_', "/");
        let other = if std_sig == sig {
            // No url-only characters in this signature: force one.
            format!("+{}", &sig[1..])
        } else {
            std_sig
        };
        assert_eq!(
            verify(&secret, &replace_segment(&good, 2, &other), NOW),
            Err(TokenError::Malformed)
        );
        // Whitespace, percent-escapes and non-ASCII are not base64url.
        for bad in [" ", "%3D", "\u{e9}", "\n"] {
            let forged = replace_segment(
                &good,
                1,
                &format!("{}{bad}", good.split('.').nth(1).expect("3")),
            );
            assert_eq!(
                verify(&secret, &forged, NOW),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn non_canonical_trailing_bits_are_malformed() {
        // 32 bytes encode to 43 characters whose last one carries 2 unused bits; setting one
        // makes another spelling of the same signature, which must not be accepted.
        let secret = Secret::from_bytes(KEY);
        let good = good_token();
        let sig = good.split('.').nth(2).expect("three segments");
        let last = sig.as_bytes()[sig.len() - 1];
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let value = ALPHABET
            .iter()
            .position(|&c| c == last)
            .expect("url alphabet");
        assert_eq!(value & 0b11, 0, "canonical encoding has zero trailing bits");
        let twin = ALPHABET[value | 0b01] as char;
        let forged = format!("{}{twin}", &sig[..sig.len() - 1]);
        assert_eq!(
            verify(&secret, &replace_segment(&good, 2, &forged), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn oversized_token_is_malformed_before_any_work() {
        let secret = Secret::from_bytes(KEY);
        // A valid token of exactly MAX_TOKEN_LEN bytes passes; one more byte does not.
        let token_for = |sub_len: usize| {
            mint(
                &secret,
                &chans(&["a"]),
                EXP_2100,
                Some(&"s".repeat(sub_len)),
            )
        };
        let base = token_for(0).len();
        let mut sub_len = (MAX_TOKEN_LEN - base) * 3 / 4;
        // Base64 grows in steps of 4 characters per 3 bytes: search the boundary (bounded).
        let mut at_limit = None;
        for _ in 0..64 {
            let len = token_for(sub_len).len();
            if len == MAX_TOKEN_LEN {
                at_limit = Some(sub_len);
                break;
            }
            if len < MAX_TOKEN_LEN {
                sub_len += 1;
            } else {
                sub_len -= 1;
            }
        }
        let sub_len = at_limit.expect("a token of exactly MAX_TOKEN_LEN bytes exists");
        assert!(verify(&secret, &token_for(sub_len), NOW).is_ok());
        assert_eq!(
            verify(&secret, &format!("{}A", token_for(sub_len)), NOW),
            Err(TokenError::Malformed)
        );
        let big = token_for(MAX_TOKEN_LEN);
        assert!(big.len() > MAX_TOKEN_LEN);
        assert_eq!(verify(&secret, &big, NOW), Err(TokenError::Malformed));
        let huge = "a".repeat(1 << 20);
        assert_eq!(verify(&secret, &huge, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn error_codes_and_messages() {
        let all = [
            (TokenError::Malformed, "token_malformed"),
            (TokenError::BadAlgorithm, "token_bad_algorithm"),
            (TokenError::BadSignature, "token_bad_signature"),
            (TokenError::Expired, "token_expired"),
            (TokenError::BadClaims, "token_bad_claims"),
        ];
        for (error, code) in all {
            assert_eq!(error.code(), code);
            assert!(!error.message().is_empty());
            assert_eq!(error.to_string(), error.message());
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let secret = Secret::from_bytes(b"hunter2-super-secret");
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("104"), "{shown}"); // 'h' as a decimal byte
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    /// A temporary file that removes itself; named per process and test to avoid clashes.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("pnsd-token-test-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).expect("write temp file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Whether a `Secret` read from a file equals `Secret::from_bytes(expected)`, judged by
    /// the tokens each mints.
    fn same_key(secret: &Secret, expected: &[u8]) -> bool {
        let channels = chans(&["a"]);
        mint(secret, &channels, EXP_2100, None)
            == mint(&Secret::from_bytes(expected), &channels, EXP_2100, None)
    }

    #[test]
    fn secret_file_drops_exactly_one_trailing_newline() {
        for (name, contents, key) in [
            ("lf", &b"s3cret\n"[..], &b"s3cret"[..]),
            ("crlf", b"s3cret\r\n", b"s3cret"),
            ("none", b"s3cret", b"s3cret"),
            ("two-lf", b"s3cret\n\n", b"s3cret\n"),
            ("two-crlf", b"s3cret\r\n\r\n", b"s3cret\r\n"),
            ("cr-only", b"s3cret\r", b"s3cret\r"),
            ("lf-cr", b"s3cret\n\r", b"s3cret\n\r"),
            ("inner", b"s3\ncret\n", b"s3\ncret"),
            ("binary", b"\x00\xff\x01\n", b"\x00\xff\x01"),
            ("only-two-lf", b"\n\n", b"\n"),
        ] {
            let file = TempFile::new(name, contents);
            let secret = Secret::from_file(&file.0).expect("readable");
            assert!(same_key(&secret, key), "{name}");
            assert!(!same_key(&secret, contents) || contents == key, "{name}");
        }
    }

    #[test]
    fn secret_file_verifies_tokens_of_the_bare_key() {
        let file = TempFile::new("kat", &[KAT_KEY, b"\r\n"].concat());
        let secret = Secret::from_file(&file.0).expect("readable");
        assert!(verify(&secret, KAT_TOKEN, NOW).is_ok());
    }

    #[test]
    fn empty_secret_file_is_invalid_data() {
        for (name, contents) in [
            ("empty", &b""[..]),
            ("just-lf", b"\n"),
            ("just-crlf", b"\r\n"),
        ] {
            let file = TempFile::new(name, contents);
            let error = Secret::from_file(&file.0).expect_err("empty key");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{name}");
            assert!(error.to_string().contains("empty"), "{name}: {error}");
        }
    }

    #[test]
    fn missing_secret_file_is_not_found() {
        let path = std::env::temp_dir().join(format!(
            "pnsd-token-test-{}-does-not-exist",
            std::process::id()
        ));
        let error = Secret::from_file(&path).expect_err("missing");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
