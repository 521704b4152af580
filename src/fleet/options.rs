//! Fleet options: the Redis URL, the key prefix and the log's bounds, and the key names they give.
//!
//! Invariants: a `RedisUrl` is only built from a URL the `redis` crate can connect to over
//! plain TCP or a Unix socket (TLS is not compiled in, so `rediss://` is refused at parse time,
//! not at the first connect); its display form never contains the password; every key of one
//! fleet starts with `PREFIX:`, so several fleets can share one Redis.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

/// Key prefix when `--redis-prefix` is not given.
pub const DEFAULT_PREFIX: &str = "pnsd";
/// `--redis-maxlen` default: an entry of ~60 bytes of data costs ~100 bytes of Redis memory
/// (~230 with an idempotency key; `benches/fleet_redis.rs`), so a million entries is 100-250
/// MB, and at 1,600 msg/s the log still covers the 10 min default message TTL.
pub const DEFAULT_MAXLEN: u64 = 1_000_000;
/// `--dedup-window` default (seconds): a publisher retrying for longer than 10 min has lost
/// track anyway, and each remembered key costs Redis one small string.
pub const DEFAULT_DEDUP_WINDOW_S: u64 = 600;
/// How long a publisher waits for Redis's replies to a batch before the outcome of the lines
/// still unanswered is reported unknown: far above a healthy Redis's latency (well under a
/// millisecond, a few ms with `appendfsync always`), short enough that a stuck Redis does not
/// hold publishers for long.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one `XREAD BLOCK` waits: also how soon an idle feed notices a FLUSHALL (the epoch
/// is checked after every read) and notices a stop request.
pub const DEFAULT_BLOCK_MS: u64 = 1000;
/// Entries per `XREAD`: large enough that a busy log is read in few round trips, small enough
/// that one reply (about 100 bytes an entry) stays well under a megabyte.
pub const DEFAULT_READ_COUNT: usize = 1000;

/// A parsed `--redis` URL: `redis://[user:pass@]host:port[/db]` or `redis+unix:///path`.
#[derive(Clone)]
pub struct RedisUrl {
    info: ConnectionInfo,
    display: String,
}

impl RedisUrl {
    /// Parses and checks a URL; the error is one line naming the problem.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let scheme_ok = ["redis://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| text.starts_with(s));
        if !scheme_ok {
            return Err(format!(
                "--redis {text:?}: expected redis://[user:pass@]host:port[/db] or redis+unix:///path"
            ));
        }
        let info = text
            .into_connection_info()
            .map_err(|e| format!("--redis: invalid URL: {e}"))?;
        let redis = info.redis_settings();
        let mut display = String::new();
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                display.push_str("redis://");
                match (redis.username(), redis.password()) {
                    (Some(u), Some(_)) => display.push_str(&format!("{u}:***@")),
                    (None, Some(_)) => display.push_str(":***@"),
                    (Some(u), None) => display.push_str(&format!("{u}@")),
                    (None, None) => {}
                }
                display.push_str(&format!("{host}:{port}"));
                if redis.db() != 0 {
                    display.push_str(&format!("/{}", redis.db()));
                }
            }
            ConnectionAddr::Unix(path) => {
                display.push_str(&format!("redis+unix://{}", path.display()));
                if redis.db() != 0 {
                    display.push_str(&format!("?db={}", redis.db()));
                }
            }
            _ => return Err(format!("--redis {text:?}: TLS is not supported")),
        }
        Ok(RedisUrl { info, display })
    }

    /// The URL with the password replaced by `***`, for the startup line, stats and logs.
    pub fn display(&self) -> &str {
        &self.display
    }

    pub(crate) fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl fmt::Debug for RedisUrl {
    // The derived form would print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.display)
    }
}

/// Everything fleet mode needs to know; `new` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub url: RedisUrl,
    /// Every key is `PREFIX:...`.
    pub prefix: String,
    /// Approximate bound of the log (`XADD MAXLEN ~`).
    pub maxlen: u64,
    /// Seconds an idempotency key is remembered.
    pub dedup_window_s: u64,
    /// See `DEFAULT_REPLY_TIMEOUT`; also bounds a connect.
    pub reply_timeout: Duration,
    /// See `DEFAULT_BLOCK_MS`.
    pub block_ms: u64,
    /// See `DEFAULT_READ_COUNT`.
    pub read_count: usize,
}

impl FleetOptions {
    pub fn new(url: RedisUrl) -> FleetOptions {
        FleetOptions {
            url,
            prefix: DEFAULT_PREFIX.to_string(),
            maxlen: DEFAULT_MAXLEN,
            dedup_window_s: DEFAULT_DEDUP_WINDOW_S,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            block_ms: DEFAULT_BLOCK_MS,
            read_count: DEFAULT_READ_COUNT,
        }
    }

    /// Checks the values a user can set; the error is one line naming the option.
    pub fn check(&self) -> Result<(), String> {
        if self.prefix.is_empty() || self.prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("--redis-prefix must be non-empty, without spaces or control bytes".into());
        }
        if self.maxlen == 0 {
            return Err("--redis-maxlen must be at least 1".into());
        }
        if self.dedup_window_s == 0 {
            return Err("--dedup-window must be at least 1 second".into());
        }
        Ok(())
    }

    /// `store=redis://…` as the startup line and stats show it.
    pub fn store_label(&self) -> String {
        format!("store={}", self.url.display())
    }

    pub fn keys(&self) -> Keys {
        let p = &self.prefix;
        Keys {
            seq: format!("{p}:seq"),
            log: format!("{p}:log"),
            epoch: format!("{p}:epoch"),
            dedup: format!("{p}:key:"),
        }
    }
}

/// The fleet's key names.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The last assigned sequence number.
    pub seq: String,
    /// The stream of entries.
    pub log: String,
    /// The fleet's epoch.
    pub epoch: String,
    /// Prefix of idempotency keys (`P:key:`).
    dedup: String,
}

impl Keys {
    /// The key remembering the idempotency key `key`.
    pub fn dedup(&self, key: &str) -> String {
        format!("{}{key}", self.dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_without_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://u:secret@h:7000/3", "redis://u:***@h:7000/3"),
            ("redis://:secret@h:7000", "redis://:***@h:7000"),
            ("redis://h", "redis://h:6379"),
            ("redis+unix:///run/r.sock", "redis+unix:///run/r.sock"),
        ] {
            let u = RedisUrl::parse(url).unwrap();
            assert_eq!(u.display(), shown, "{url}");
            assert!(!format!("{u:?}").contains("secret"));
        }
    }

    #[test]
    fn refuses_other_schemes() {
        for bad in [
            "http://h:1",
            "rediss://h:6379",
            "h:6379",
            "",
            "redis://:x@[::1",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_values_and_names_keys() {
        let mut o = FleetOptions::new(RedisUrl::parse("redis://h:1").unwrap());
        assert!(o.check().is_ok());
        assert_eq!(o.store_label(), "store=redis://h:1");
        let k = o.keys();
        assert_eq!(
            (k.seq.as_str(), k.log.as_str(), k.epoch.as_str()),
            ("pnsd:seq", "pnsd:log", "pnsd:epoch")
        );
        assert_eq!(k.dedup("abc"), "pnsd:key:abc");
        o.prefix = "a b".into();
        assert!(o.check().is_err());
        o.prefix = "x".into();
        o.maxlen = 0;
        assert!(o.check().is_err());
    }
}
