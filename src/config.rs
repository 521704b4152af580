//! The server's configuration, as the command line gives it (see `cli`).
//!
//! Invariants (checked by `cli`): every timeout is 1..=`MAX_TIMEOUT_SECS` seconds; the defaults
//! are the contract's (PROTOCOL.md section 1).

use std::net::SocketAddr;
use std::path::PathBuf;

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
    pub cors_origin: Option<String>,
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
            cors_origin: None,
            max_publishers: DEFAULT_MAX_PUBLISHERS,
            head_timeout_secs: DEFAULT_HEAD_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            write_timeout_secs: DEFAULT_WRITE_TIMEOUT_SECS,
            state_file: None,
            metrics_listen: None,
            access_log: None,
        }
    }
}
