//! A Server-Sent Events stream's side of a connection (see `sse` for the bytes): started by
//! `poll::Outcome::Stream`, parked for its whole life, written to by `parked` through
//! `stream`, and ended by its timer (`--sse-max`, or its token's expiry), the drain, the
//! session's end, a hang-up, or a client that stops reading (`--write-timeout`).
//!
//! Invariants:
//! - An idle stream owns nothing beyond its entry (`pending` is `None`): its bytes are written
//!   when `parked` hands them over, or kept in `pending.out` (at most one event batch, bounded
//!   as `answer` bounds a poll's answer) while the client is slow. While output is pending it
//!   is not parked (`is_parked` is false): no wake-up reaches it, and once the output drains it
//!   asks to catch up from its cursor (`Next::CatchUp`), so nothing is skipped or buffered
//!   twice.
//! - Its one timer is the next heartbeat, counted down in `beats` (a u16 beside the flags, so
//!   the entry does not grow): the first one fires after the remainder of the stream's
//!   lifetime modulo the heartbeat interval, then every interval; the timer that fires with
//!   no beat left is the stream's end. A stream lasts min(`--sse-max`, the token's lifetime),
//!   and at most 65,535 heartbeats.

use super::*;
use crate::sse;

impl<S: Transport> Conn<S> {
    /// Writes a stream's first bytes and parks it (`Next::Park`), or closes.
    pub(super) fn start_stream(
        &mut self,
        out: Out,
        park: Park,
        cx: &Ctx<'_>,
        step: &mut Step,
    ) -> Next {
        let c = &cx.hub.config;
        let heartbeat = c.sse_heartbeat_secs.saturating_mul(1000).max(1);
        let life = park
            .token_ms
            .map_or(c.sse_max_secs.saturating_mul(1000), |t| {
                t.min(c.sse_max_secs.saturating_mul(1000))
            });
        let (n, rest) = (life / heartbeat, life % heartbeat);
        let (beats, first) = if rest > 0 || n == 0 {
            (n, rest.max(1))
        } else {
            (n - 1, heartbeat)
        };
        self.beats = u16::try_from(beats).unwrap_or(u16::MAX);
        self.set_phase(Phase::Parked);
        self.set(STREAM, true);
        self.after = park.after;
        self.cors = park.cors;
        step.timer = Some(tick_up(cx.now.saturating_add(first)));
        let mut pos = 0;
        match sockio::write_segments(&mut self.sock, out.answer(), &mut pos) {
            Ok(true) => {}
            Ok(false) => {
                self.pending.get_or_insert_with(Box::default).out = Some((out, pos));
                step.timer = Some(cx.after_secs(c.write_timeout_secs));
            }
            Err(_) => return Next::Close,
        }
        Next::Park(park)
    }

    /// Writes events from `parked` (the stream stays linked); `next` is its new cursor, or
    /// `None` when these are its last events (the session ended); `more` when the batch was
    /// full and more may wait in the store.
    pub fn stream(
        &mut self,
        out: Out,
        delivered: bool,
        next: Option<u64>,
        more: bool,
        cx: &mut Ctx<'_>,
    ) -> Step {
        let mut step = Step::new(Next::Wait);
        if !self.is_parked() || !self.has(STREAM) {
            return step;
        }
        count_delivered(delivered, cx, &mut step);
        match next {
            Some(seq) => self.after = seq,
            None => self.set(CLOSE_AFTER, true),
        }
        let mut pos = 0;
        match sockio::write_segments(&mut self.sock, out.answer(), &mut pos) {
            Ok(true) if self.has(CLOSE_AFTER) => step.next = Next::Close,
            Ok(true) if more => step.next = Next::CatchUp,
            Ok(true) => {}
            Ok(false) => {
                self.pending.get_or_insert_with(Box::default).out = Some((out, pos));
                step.timer = Some(cx.after_secs(cx.hub.config.write_timeout_secs));
            }
            Err(_) => step.next = Next::Close,
        }
        step
    }

    /// A stream's readiness: flushes pending output; once drained, catches up (or closes when
    /// that was its last output). Input is not read: a stream takes no further request.
    pub(super) fn drive_stream(&mut self, cx: &mut Ctx<'_>) -> Step {
        let mut step = Step::new(Next::Wait);
        if !self.has_output() {
            return step;
        }
        match self.flush() {
            Ok(true) if self.has(CLOSE_AFTER) => step.next = Next::Close,
            Ok(true) => {
                step.timer = Some(self.heartbeat_tick(cx));
                step.next = Next::CatchUp;
            }
            Ok(false) => {}
            Err(_) => step.next = Next::Close,
        }
        step
    }

    fn heartbeat_tick(&self, cx: &Ctx<'_>) -> u32 {
        cx.after_secs(cx.hub.config.sse_heartbeat_secs)
    }

    /// A stream's timer: its end, or a heartbeat.
    pub(super) fn stream_timer(&mut self, cx: &mut Ctx<'_>) -> Step {
        if self.beats == 0 {
            return Step::new(Next::Close);
        }
        self.beats -= 1;
        let mut step = Step::new(Next::Wait);
        step.timer = Some(self.heartbeat_tick(cx));
        match sockio::write_some(&mut self.sock, sse::HEARTBEAT) {
            Ok(n) if n == sse::HEARTBEAT.len() => {}
            Ok(n) => {
                let rest = sse::HEARTBEAT.get(n..).unwrap_or_default().to_vec();
                self.pending.get_or_insert_with(Box::default).out =
                    Some((Out::Own(Answer::Flat(rest)), 0));
                step.timer = Some(cx.after_secs(cx.hub.config.write_timeout_secs));
            }
            Err(_) => step.next = Next::Close,
        }
        step
    }

    /// The connection is an event stream.
    pub fn is_stream(&self) -> bool {
        self.has(STREAM)
    }
}
