//! Fleet mode's publish route: the publish thread sends one connection's run of publish lines
//! to Redis (pipelined, in order, through `FleetPublisher`), waits until this node's store
//! holds them, and writes their answer lines.
//!
//! Invariants:
//! - Ack after visibility: an ack is written only once the feed applied its entry to this
//!   node's store (`FeedState::wait_applied`), so a poll on this node after the ack sees it.
//! - Every line gets exactly one answer, in line order: its cursor, or an `ok:false` line that
//!   says whether it was not sent (no link: at once), refused, or of unknown outcome (no reply
//!   in time, or appended but not seen here in time: a retry with the same `key` is safe).
//! - Runs on the publish thread only, never on a reactor; it blocks at most one reply timeout
//!   for Redis plus one for the feed per run.

use std::sync::Arc;
use std::time::Duration;

use crate::cursor;
use crate::fleet::{Applied, FeedState, FleetOptions, FleetPublisher, PublishLine, Published};
use crate::ingest::Publish;
use crate::line;

/// The answer to a line Redis appended whose entry this node did not apply in time.
const NOT_SEEN: &str = "outcome unknown: redis appended it but this node did not read it back \
                        in time; retry with the same key";
/// The answer to a line Redis appended under an epoch the fleet left before this node read it.
const EPOCH_GONE: &str = "outcome unknown: redis lost data before this node read the entry; \
                          retry with the same key";

/// See the module documentation.
#[derive(Debug)]
pub struct FleetRoute {
    publisher: FleetPublisher,
    feed: Arc<FeedState>,
    /// How long an ack waits for the feed to apply its entry.
    visible_within: Duration,
    run: Vec<PublishLine>,
}

impl FleetRoute {
    pub fn new(opts: FleetOptions, feed: Arc<FeedState>) -> FleetRoute {
        FleetRoute {
            visible_within: opts.reply_timeout,
            publisher: FleetPublisher::new(opts, feed.clone()),
            feed,
            run: Vec::new(),
        }
    }

    /// Queues one publish line of the current run.
    pub fn push(&mut self, p: Publish) {
        self.run.push(PublishLine {
            channels: p.channels,
            kind: p.kind,
            data: p.data,
            key: p.key,
        });
    }

    /// Sends the queued run and writes one answer line per line to `out`, in order; returns
    /// the number of `ok:false` lines written.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> u64 {
        if self.run.is_empty() {
            return 0;
        }
        let results = self.publisher.publish(&self.run);
        self.run.clear();
        // One wait covers the run: entries of one epoch are applied in seq order.
        let newest = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .max_by_key(|p| p.seq);
        let applied = newest.map(|p| self.feed.wait_applied(p.epoch, p.seq, self.visible_within));
        let mut id = String::with_capacity(cursor::MAX_LEN);
        let mut errors = 0;
        for r in results {
            errors += u64::from(!matches!((&r, applied), (Ok(_), Some(Applied::Yes))));
            match (r, applied) {
                (Ok(Published { epoch, seq, .. }), Some(Applied::Yes)) => {
                    id.clear();
                    cursor::encode_into(&mut id, epoch, seq);
                    line::ack_line(out, &id);
                }
                (Ok(_), Some(Applied::EpochChanged)) => line::error_line(out, EPOCH_GONE),
                (Ok(_), _) => line::error_line(out, NOT_SEEN),
                (Err(e), _) => line::error_line(out, &e.to_string()),
            }
        }
        errors
    }
}
