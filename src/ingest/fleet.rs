//! Fleet mode's writer of the store: the feed thread's `FeedSink`, which hands the log's
//! entries, epochs and gaps to `ingest` like any other source.
//!
//! Invariants:
//! - In fleet mode this is the store's only writer of messages (the publish socket sends its
//!   lines to Redis, and they come back here): every node's store is the same function of the
//!   log, so a cursor means the same position on every node.
//! - An entry is held at its log seq and expires `--message-ttl` after Redis appended it (by
//!   the fleet's clock, as on every node), never later than a local publish would.
//! - Nothing is skipped silently: a gap, an entry the store could not hold (`--max-channels`)
//!   and a new epoch each reset every older cursor (`Ingest::lose_upto`, `take_epoch`), and
//!   every parked poll they void is answered `reset:true`.
//! - Each call returns after the store holds its effect, so the feed's position (set after
//!   the call) never runs ahead of the store (the publisher's ack waits on that position).

use std::ops::RangeInclusive;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

use crate::fleet::{Entry, FeedSink};
use crate::ingest::{Ingest, Publish};

/// See the module documentation.
#[derive(Debug)]
pub struct StoreSink {
    ingest: Ingest,
}

impl StoreSink {
    pub fn new(ingest: Ingest) -> StoreSink {
        StoreSink { ingest }
    }
}

/// Milliseconds since the Unix epoch, as Redis `TIME` counts them.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FeedSink for StoreSink {
    fn epoch(&self, epoch: u64, start_seq: u64) {
        self.ingest.take_epoch(epoch, start_seq);
    }

    fn apply(&self, entries: &[Entry]) {
        let now = unix_ms();
        let mut lost = None;
        {
            let mut batch = self.ingest.batch();
            for e in entries {
                let p = Publish {
                    channels: e.channels.clone(),
                    kind: e.kind,
                    data: e.data.clone(),
                    key: None,
                };
                // A clock behind Redis's makes an entry look new: it is kept for the TTL.
                let age = now.saturating_sub(e.time_ms);
                if let Err(why) = batch.append_at(e.seq, p, age) {
                    warn!(
                        "log entry {} is not held here: {why}; older cursors are reset",
                        e.seq
                    );
                    lost = Some(e.seq);
                }
            }
        }
        if let Some(seq) = lost {
            self.ingest.lose_upto(seq);
        }
    }

    fn gap(&self, lost: RangeInclusive<u64>) {
        self.ingest.lose_upto(*lost.end());
    }

    fn link(&self, _up: bool) {
        // The link's state is the feed's (`FeedState::connected`, read by health and stats);
        // what the store holds stays served while it is down.
    }
}
