//! Accept back-off: what a listener does when `accept` fails for want of resources.
//!
//! EMFILE, ENFILE, ENOBUFS and ENOMEM leave the pending connection in the kernel's backlog, and
//! an edge-triggered listener gets no new edge for it, so the owner must retry by itself; it
//! must not retry at once either, or a full fd table spins the loop at 100 % CPU. Both the
//! reactors (through `sockio::accept`) and the publish thread use this. Invariants: while paused, the owner does not call
//! `accept`; the failure is logged at most once per `WARN_EVERY_MS`. Time is a parameter (ms).

use log::warn;

/// How long accepting pauses after a resource failure: short enough that a freed descriptor
/// is used promptly, long enough that the retries cost nothing measurable.
pub const PAUSE_MS: u64 = 100;
/// A full fd table fails every retry: log it at most this often.
pub const WARN_EVERY_MS: u64 = 10_000;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    until: Option<u64>,
    warned_at: Option<u64>,
}

impl AcceptBackoff {
    pub fn is_paused(&self) -> bool {
        self.until.is_some()
    }

    /// Records a failed accept at `now` by the listener named `what`: pause, maybe log.
    pub fn failed(&mut self, now: u64, what: &str, err: &std::io::Error) {
        if self.warned_at.is_none_or(|t| now >= t + WARN_EVERY_MS) {
            warn!("{what} accept failed, retrying every {PAUSE_MS} ms: {err}");
            self.warned_at = Some(now);
        }
        self.until = Some(now + PAUSE_MS);
    }

    /// True once when the pause is over at `now`: the owner should accept again.
    pub fn resume(&mut self, now: u64) -> bool {
        if self.until.is_some_and(|t| now >= t) {
            self.until = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_then_resumes_once() {
        let mut b = AcceptBackoff::default();
        assert!(!b.is_paused() && !b.resume(0));
        let e = std::io::Error::from_raw_os_error(24);
        b.failed(1_000, "test", &e);
        assert!(b.is_paused());
        assert!(!b.resume(1_000 + PAUSE_MS - 1));
        assert!(b.resume(1_000 + PAUSE_MS));
        assert!(!b.is_paused() && !b.resume(5_000));
    }
}
