//! The publish script (`publish.lua`): how a publish is packed into an `EVALSHA` and what its
//! reply means.
//!
//! Contract of the script, all in one atomic step on the Redis side:
//! 1. refuse (`PNSD_NOEPOCH`, `PNSD_EPOCH <current>`) unless `P:epoch` holds the caller's epoch;
//! 2. refuse (`PNSD_ROLLBACK <P:seq>`) if `P:seq` is below the highest seq the caller has seen
//!    in that epoch: Redis lost recent data;
//! 3. a repeat of an idempotency key within the window answers `{first seq, 1}` and appends
//!    nothing (a key naming a seq above `P:seq` outlived a loss of data and is ignored);
//! 4. otherwise `XADD P:log MAXLEN ~ N <P:seq + 1>-0` with the entry's fields (see `entry`),
//!    the time taken from Redis `TIME` so every node agrees, then `INCR P:seq`, then remember
//!    the key for the window (`SET P:key:K seq EX window`); answer `{seq, 0}`.
//!
//! Nothing is written when it refuses, and nothing when `XADD` fails (it runs first).
//!
//! Invariants: a script is called by its SHA1 only (`EVALSHA`); `NOSCRIPT` means it did not
//! run, so the caller may load it and send the same line again without risk of a double append.

use std::fmt::Write as _;

use redis::Value;

use super::epoch;
use super::options::{FleetOptions, Keys};

/// The script's source, compiled into the binary.
pub const SOURCE: &str = include_str!("publish.lua");

/// One publish as the fleet sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishLine {
    /// Valid channel names (no comma can occur in one), without repeats, at least one.
    pub channels: Box<[Box<str>]>,
    pub kind: Option<i64>,
    /// The publisher's JSON text.
    pub data: Box<str>,
    /// The idempotency key, if the line carried one.
    pub key: Option<Box<str>>,
}

/// What the script answered for one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Appended at `seq`.
    Appended(u64),
    /// A repeat of a key first appended at `seq`: nothing appended.
    Duplicate(u64),
    /// No epoch key: Redis lost its data (or this is a new Redis).
    NoEpoch,
    /// The epoch in force is another one.
    Epoch(u64),
    /// `P:seq` is below what the caller saw: Redis lost recent data.
    Rollback,
    /// The script is not loaded on this Redis.
    NoScript,
    /// Any other error, as Redis said it.
    Failed(String),
}

/// The loaded script's identity and the fixed arguments of every call.
#[derive(Debug)]
pub struct PublishScript {
    sha: String,
    keys: Keys,
    maxlen: String,
    window: String,
}

impl PublishScript {
    pub fn new(opts: &FleetOptions) -> PublishScript {
        PublishScript {
            sha: redis::Script::new(SOURCE).get_hash().to_string(),
            keys: opts.keys(),
            maxlen: opts.maxlen.to_string(),
            window: opts.dedup_window_s.to_string(),
        }
    }

    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// `SCRIPT LOAD`, packed.
    pub fn pack_load(&self) -> Vec<u8> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SOURCE)
            .get_packed_command()
    }

    /// Appends the packed `EVALSHA` of `line` to `out`, for `epoch` and the highest seq seen.
    pub fn pack_call(&self, out: &mut Vec<u8>, line: &PublishLine, epoch_v: u64, seen: u64) {
        let mut channels = String::with_capacity(line.channels.iter().map(|c| c.len() + 1).sum());
        for (i, c) in line.channels.iter().enumerate() {
            if i > 0 {
                channels.push(',');
            }
            channels.push_str(c);
        }
        let mut kind = String::new();
        if let Some(k) = line.kind {
            // Writing into a String cannot fail.
            let _ = write!(kind, "{k}");
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha);
        match &line.key {
            Some(k) => cmd
                .arg(4)
                .arg(&self.keys.seq)
                .arg(&self.keys.log)
                .arg(&self.keys.epoch)
                .arg(self.keys.dedup(k)),
            None => cmd
                .arg(3)
                .arg(&self.keys.seq)
                .arg(&self.keys.log)
                .arg(&self.keys.epoch),
        };
        cmd.arg(epoch::format(epoch_v))
            .arg(seen)
            .arg(&self.maxlen)
            .arg(&self.window)
            .arg(channels)
            .arg(kind)
            .arg(&*line.data);
        cmd.write_packed_command(out);
    }
}

/// Interprets the script's reply to one call.
pub fn reply(v: &Value) -> Reply {
    match v {
        Value::Array(a) => match (a.first(), a.get(1)) {
            (Some(Value::Int(seq)), Some(Value::Int(dup))) if *seq > 0 => {
                let seq = *seq as u64;
                if *dup == 0 {
                    Reply::Appended(seq)
                } else {
                    Reply::Duplicate(seq)
                }
            }
            _ => Reply::Failed(format!("unexpected script reply {v:?}")),
        },
        Value::ServerError(e) => match e.code() {
            "NOSCRIPT" => Reply::NoScript,
            "PNSD_NOEPOCH" => Reply::NoEpoch,
            "PNSD_ROLLBACK" => Reply::Rollback,
            "PNSD_EPOCH" => match e.details().and_then(|d| epoch::parse(d.trim().as_bytes())) {
                Some(ep) => Reply::Epoch(ep),
                None => Reply::Failed(format!("bad epoch in {e:?}")),
            },
            _ => Reply::Failed(match e.details() {
                Some(d) => format!("{} {d}", e.code()),
                None => e.code().to_string(),
            }),
        },
        other => Reply::Failed(format!("unexpected script reply {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::options::RedisUrl;

    #[test]
    fn packs_keys_and_arguments() {
        let opts = FleetOptions::new(RedisUrl::parse("redis://h:1").unwrap());
        let s = PublishScript::new(&opts);
        assert_eq!(s.sha().len(), 40);
        let line = PublishLine {
            channels: vec!["a".into(), "b".into()].into(),
            kind: Some(7),
            data: "{\"x\":1}".into(),
            key: Some("k1".into()),
        };
        let mut out = Vec::new();
        s.pack_call(&mut out, &line, 0xabc, 5);
        let text = String::from_utf8(out).unwrap();
        for part in [
            "EVALSHA",
            "\r\n4\r\n",
            "pnsd:key:k1",
            "000000000abc",
            "a,b",
            "\r\n7\r\n",
            "{\"x\":1}",
        ] {
            assert!(text.contains(part), "{part} in {text:?}");
        }
    }

    #[test]
    fn reads_replies() {
        let ok = |s, d| Value::Array(vec![Value::Int(s), Value::Int(d)]);
        assert_eq!(reply(&ok(5, 0)), Reply::Appended(5));
        assert_eq!(reply(&ok(5, 1)), Reply::Duplicate(5));
        assert!(matches!(reply(&ok(0, 0)), Reply::Failed(_)));
        assert!(matches!(reply(&Value::Nil), Reply::Failed(_)));
    }
}
