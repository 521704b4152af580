//! Fleet mode: every node's publishes go into one Redis stream, and every node reads that
//! stream back into its own store, so a cursor means the same position on every node.
//!
//! The rooms, each one concern:
//! - `options`: the `--redis` URL (password masked in its display form), prefix, bounds, keys;
//! - `script` + `publish.lua`: the one atomic step that numbers and appends a publish;
//! - `entry`: the shape of a log entry and how a stream reply is read back;
//! - `epoch`: the fleet's epoch in `P:epoch` (created once, replaced only when Redis lost data);
//! - `link`: connecting, the reconnect back-off, logging link changes once;
//! - `publisher`: a blocking client that sends a batch of publishes pipelined;
//! - `feed`: the thread that follows the log and hands entries to a `FeedSink`;
//! - `state`: what the feed shares (stats, health, waiting for visibility).
//!
//! Invariants of the whole: Redis is only spoken to from the publisher's thread and the feed
//! thread, never from a reactor; the log's stream id of an entry is `<seq>-0` where seq is the
//! fleet's dense global position (`P:seq`), so a missing number is a detectable gap; an entry is
//! only appended under the epoch the appending node follows, and only applied by a node that
//! checked, after reading it, that the epoch still holds.

mod entry;
mod epoch;
mod feed;
mod link;
mod options;
mod publisher;
mod script;
mod state;

pub use entry::Entry;
pub use epoch::format as format_epoch;
pub use feed::{spawn, FeedSink};
pub use link::{CAP as BACKOFF_CAP, FIRST as BACKOFF_FIRST};
pub use options::{
    FleetOptions, Keys, RedisUrl, DEFAULT_BLOCK_MS, DEFAULT_DEDUP_WINDOW_S, DEFAULT_MAXLEN,
    DEFAULT_PREFIX, DEFAULT_READ_COUNT, DEFAULT_REPLY_TIMEOUT,
};
pub use publisher::{FleetPublisher, LineResult, PublishError, Published};
pub use script::{PublishLine, SOURCE as PUBLISH_SCRIPT};
pub use state::{Applied, FeedState, FeedStats, Position};
