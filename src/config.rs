//! The server's configuration, as the command line gives it (see `cli`).
//!
//! Invariants (checked by `cli`): every timeout is 1..=`MAX_TIMEOUT_SECS` seconds; the defaults
//! are the contract's (PROTOCOL.md section 1).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::fleet::FleetOptions;

/// Defaults of the contract (PROTOCOL.md section 1).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_PUBLISH_SOCKET: &str = "./pnsd.sock";
pub const DEFAULT_HOLD_SECS: u64 = 30;
pub const DEFAULT_MAX_HOLD_SECS: u64 = 120;
pub const DEFAULT_BUFFER: usize = 64;
pub const DEFAULT_MESSAGE_TTL_SECS: u64 = 600;
/// Channels the store holds at most: a dense host with a channel per user (a million users)
/// fits, and a publisher inventing names stops there, at a few hundred MB (see tuning.md).
pub const DEFAULT_MAX_CHANNELS: usize = 1_000_000;
/// Publisher connections served at once: a host runs a few publishing services, each with a
/// connection or a small pool; the bound keeps publishers from taking the descriptors of HTTP
/// clients (it fits in `FD_RESERVE`).
pub const DEFAULT_MAX_PUBLISHERS: usize = 64;
/// Contract: a request head must be complete within 10 s of accept or of its first byte.
pub const DEFAULT_HEAD_TIMEOUT_SECS: u64 = 10;
/// Contract: a keep-alive connection with no request in flight is closed after 75 s.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 75;
/// A client that does not take its answer within 30 s is dropped: its output is bounded to one
/// response, but the slot is not held forever.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// Proxies commonly close a response idle for 60 s (nginx `proxy_read_timeout`, AWS ALB's
/// idle timeout): a comment every 30 s keeps a stream under both.
pub const DEFAULT_SSE_HEARTBEAT_SECS: u64 = 30;
/// A stream ends after 5 minutes so load balancers rebalance; the browser reconnects at once
/// with its Last-Event-ID and loses nothing.
pub const DEFAULT_SSE_MAX_SECS: u64 = 300;
/// Longest accepted timeout option: a day, like `--max-hold`.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// File descriptors kept back from `--max-connections`' default: listeners, the publish socket
/// and its clients, epoll and waker fds, log files, with room to spare.
pub const FD_RESERVE: u64 = 128;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub publish_socket: PathBuf,
    /// File mode of the publish socket (0600 unless `--publish-socket-mode` widens it).
    pub publish_socket_mode: u32,
    pub threads: usize,
    pub hold_secs: u64,
    pub max_hold_secs: u64,
    pub buffer: usize,
    pub message_ttl_secs: u64,
    /// Channels held at most; a publish that would create more is refused.
    pub max_channels: usize,
    /// `None`: derived from RLIMIT_NOFILE at start.
    pub max_connections: Option<usize>,
    pub secret_file: Option<PathBuf>,
    pub allow_anonymous: bool,
    /// `--cors-origin`, repeatable: which request origins get CORS headers.
    pub cors: Cors,
    /// `--max-sessions`: sessions held at once; a registration beyond it is refused.
    pub max_sessions: usize,
    /// `--sse-heartbeat`: seconds between the comments that keep an idle stream open.
    pub sse_heartbeat_secs: u64,
    /// `--sse-max`: seconds after which a stream ends (the browser reconnects).
    pub sse_max_secs: u64,
    /// Publisher connections served at once; one more gets an error line and is closed.
    pub max_publishers: usize,
    /// `--head-timeout`: seconds for a request head to arrive.
    pub head_timeout_secs: u64,
    /// `--idle-timeout`: seconds a keep-alive connection may wait for its next request.
    pub idle_timeout_secs: u64,
    /// `--write-timeout`: seconds a client may take to read its answer.
    pub write_timeout_secs: u64,
    /// `--state-file`: where the drain writes the server's state and a start reads it.
    pub state_file: Option<PathBuf>,
    /// `--metrics-listen`: where `GET /metrics` is served (off when `None`).
    pub metrics_listen: Option<SocketAddr>,
    /// `--access-log`: the access log's file, `-` for stderr (off when `None`).
    pub access_log: Option<PathBuf>,
    /// `--redis` and its companions: fleet mode (`None`: the embedded local store).
    pub fleet: Option<Box<FleetOptions>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![DEFAULT_LISTEN.parse().expect("constant address parses")],
            publish_socket: PathBuf::from(DEFAULT_PUBLISH_SOCKET),
            publish_socket_mode: 0o600,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            hold_secs: DEFAULT_HOLD_SECS,
            max_hold_secs: DEFAULT_MAX_HOLD_SECS,
            buffer: DEFAULT_BUFFER,
            message_ttl_secs: DEFAULT_MESSAGE_TTL_SECS,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_connections: None,
            secret_file: None,
            allow_anonymous: false,
            cors: Cors::default(),
            max_sessions: crate::session::DEFAULT_MAX_SESSIONS,
            sse_heartbeat_secs: DEFAULT_SSE_HEARTBEAT_SECS,
            sse_max_secs: DEFAULT_SSE_MAX_SECS,
            max_publishers: DEFAULT_MAX_PUBLISHERS,
            head_timeout_secs: DEFAULT_HEAD_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            write_timeout_secs: DEFAULT_WRITE_TIMEOUT_SECS,
            state_file: None,
            metrics_listen: None,
            access_log: None,
            fleet: None,
        }
    }
}

impl Config {
    /// `local` or the Redis URL with its password masked: the `store` of the stats line.
    pub fn store_name(&self) -> &str {
        match &self.fleet {
            Some(f) => f.url.display(),
            None => "local",
        }
    }
}

/// Most `--cors-origin` values: an answer names its origin by a one-byte index (see `Cors`).
pub const MAX_CORS_ORIGINS: usize = 250;

/// Which origins get `Access-Control-Allow-Origin` (with `Vary: Origin`). A request's match is one byte
/// ([`Cors::matching`]): 0 no header, 1 `*`, 2 + i the i-th listed origin, so a parked poll
/// keeps it without growing and answers can share an encoding per match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers (no `--cors-origin`).
    #[default]
    Off,
    /// `--cors-origin *`: `*` on every answer.
    Any,
    /// These origins, each echoed only to a request whose `Origin` is exactly it.
    List(Vec<String>),
}

/// A request's CORS match: no header.
pub const CORS_NONE: u8 = 0;
/// A request's CORS match: `*`.
pub const CORS_ANY: u8 = 1;

impl Cors {
    /// The match of a request with `origin` (see the type's documentation); the second value
    /// is true for a mismatch (a listed policy and an Origin not in it).
    pub fn matching(&self, origin: Option<&str>) -> (u8, bool) {
        match self {
            Cors::Off => (CORS_NONE, false),
            Cors::Any => (CORS_ANY, false),
            Cors::List(list) => match origin {
                // No Origin (not a cross-origin browser request, or an answer with no parsed
                // request): one listed origin is the only one it can be; of several, none.
                None if list.len() == 1 => (2, false),
                None => (CORS_NONE, false),
                Some(o) => match list.iter().position(|l| l == o) {
                    Some(i) => (2 + i as u8, false),
                    None => (CORS_NONE, true),
                },
            },
        }
    }

    /// The `Access-Control-Allow-Origin` value of match `m`.
    pub fn header(&self, m: u8) -> Option<&str> {
        match (self, m) {
            (_, CORS_NONE) => None,
            (Cors::Any, _) => Some("*"),
            (Cors::List(list), m) => list.get(usize::from(m) - 2).map(String::as_str),
            (Cors::Off, _) => None,
        }
    }

    /// The value for answers that have no request to match (a bad head, a timeout, a refusal
    /// at accept): `*`, or the one listed origin.
    pub fn without_request(&self) -> Option<&str> {
        self.header(self.matching(None).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_matching() {
        let list = Cors::List(vec!["https://a.example".into(), "https://b.example".into()]);
        assert_eq!(list.matching(Some("https://b.example")), (3, false));
        assert_eq!(list.header(3), Some("https://b.example"));
        assert_eq!(list.matching(Some("https://c.example")), (CORS_NONE, true));
        assert_eq!(
            list.matching(Some("https://a.example.evil")),
            (CORS_NONE, true)
        );
        assert_eq!(list.matching(None), (CORS_NONE, false));
        assert_eq!(list.header(CORS_NONE), None);
        assert_eq!(Cors::Any.matching(Some("x")), (CORS_ANY, false));
        assert_eq!(Cors::Any.header(CORS_ANY), Some("*"));
        assert_eq!(Cors::Off.matching(Some("x")), (CORS_NONE, false));
        assert_eq!(Cors::Off.without_request(), None);
        assert_eq!(Cors::Any.without_request(), Some("*"));
        assert_eq!(list.without_request(), None);
        let one = Cors::List(vec!["https://a.example".into()]);
        assert_eq!(one.matching(None), (2, false));
        assert_eq!(one.without_request(), Some("https://a.example"));
        assert_eq!(one.matching(Some("https://b.example")), (CORS_NONE, true));
    }
}
