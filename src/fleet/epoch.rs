//! The fleet's epoch: one value in `P:epoch`, shared by every node, so a cursor is the same
//! text on every node and means the same position.
//!
//! Invariants: the key is only ever created with `SET NX` (the first node to start wins and
//! every node reads the winner's value) or replaced by `bump`, a compare-and-set that only
//! replaces the value it was told is stale (so nodes detecting the same loss at once agree on
//! one new epoch); a value is 12 lowercase hex digits of a non-zero 48-bit number, the
//! epoch part of a cursor (`cursor::EPOCH_HEX`). An epoch value never comes back once replaced
//! (48 random bits), so "the key still holds E" proves that nothing since E was lost by a flush.

use redis::{Connection, RedisResult, Value};

use super::options::Keys;
use crate::cursor;

/// Replaces the epoch only if it still holds ARGV[1]; returns the value after.
const BUMP: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return cur
";

/// The stored text of an epoch.
pub fn format(epoch: u64) -> String {
    format!("{:012x}", epoch & cursor::EPOCH_MASK)
}

/// An epoch's stored text back to its value; `None` for anything `format` does not produce.
pub fn parse(text: &[u8]) -> Option<u64> {
    if text.len() != cursor::EPOCH_HEX
        || !text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let v = u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()?;
    (v != 0).then_some(v)
}

/// The epoch in a `GET` reply: `Ok(None)` when the key is missing.
pub fn from_reply(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => parse(b)
            .map(Some)
            .ok_or_else(|| format!("epoch key holds {:?}", String::from_utf8_lossy(b))),
        other => Err(format!("epoch reply {other:?}")),
    }
}

/// The fleet's epoch, creating it (a fresh random one) when no node has yet.
pub fn ensure(con: &mut Connection, keys: &Keys) -> RedisResult<u64> {
    let mine = format(cursor::random_epoch());
    let v: Value = redis::pipe()
        .cmd("SET")
        .arg(&keys.epoch)
        .arg(&mine)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(&keys.epoch)
        .query::<Vec<Value>>(con)?
        .pop()
        .unwrap_or(Value::Nil);
    checked(from_reply(&v))
}

/// Replaces the epoch `stale` (Redis lost data under it) with a fresh one, unless another node
/// did already; returns the epoch now in force.
pub fn bump(con: &mut Connection, keys: &Keys, stale: u64) -> RedisResult<u64> {
    let v: Value = redis::Script::new(BUMP)
        .key(&keys.epoch)
        .arg(format(stale))
        .arg(format(cursor::random_epoch()))
        .invoke(con)?;
    checked(from_reply(&v))
}

fn checked(r: Result<Option<u64>, String>) -> RedisResult<u64> {
    match r {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err(redis_error("the epoch key vanished while it was set")),
        Err(e) => Err(redis_error(&e)),
    }
}

/// A client-side error in the `redis` crate's type, for checks of replies.
pub(crate) fn redis_error(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        what.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_parse_are_inverse() {
        for e in [1u64, 0xabc, cursor::EPOCH_MASK] {
            assert_eq!(parse(format(e).as_bytes()), Some(e));
        }
        for bad in ["", "000000000000", "ABCDEF123456", "abc", "1234567890abc"] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(from_reply(&Value::Nil), Ok(None));
        assert!(from_reply(&Value::BulkString(b"zz".to_vec())).is_err());
    }
}
