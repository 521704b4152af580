//! A connection's part of the upgrade image (`state::ConnImage`) and the connection an image
//! describes in the process that takes over.
//!
//! Invariants:
//! - Everything the state machine keeps travels: flags (with the phase and the stream bit), the
//!   CORS match, a stream's heartbeats left, the parked cursor, unparsed
//!   input and the body bytes to skip, and the unsent part of the response in flight (as flat
//!   bytes: the answer's segments are concatenated from the written position on).
//! - The timer travels as the time left, not as a tick: each process has its own clock
//!   origin. A parked poll keeps its original deadline (rounded up to the next tick, as
//!   always), and a token timer stays a token timer.
//! - A restored connection asks for a turn when it has input or output to go on with, and a
//!   parked one (a poll or an event stream, which stays linked while it writes) asks to be
//!   parked again under its channels, so `parked` re-links it; a stream's pending events are
//!   flushed on its first writable edge, then it catches up from its cursor as always.

use std::io::IoSlice;

use super::{Conn, Ctx, Next, Out, Pending, Phase, Step, Transport, PHASE_BITS, PHASE_SHIFT};
use crate::answer::Answer;
use crate::poll::Park;
use crate::sockio::Segments;
use crate::state::ConnImage;
use crate::waiters;
use crate::wheel::{tick_up, TimerLink, TICK_MS};

/// Segments copied per call while flattening an answer in flight.
const SLICES: usize = 64;

/// The phase `flags` hold, `None` for bits no phase has.
fn phase_in(flags: u8) -> Option<Phase> {
    match (flags & PHASE_BITS) >> PHASE_SHIFT {
        0 => Some(Phase::Head),
        1 => Some(Phase::Idle),
        2 => Some(Phase::Parked),
        _ => None,
    }
}

/// The bytes of `answer` from `pos` on.
fn unsent(answer: &Answer, mut pos: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(answer.total_len().saturating_sub(pos));
    loop {
        let mut slices = [IoSlice::new(&[]); SLICES];
        let n = answer.slices_from(pos, &mut slices);
        if n == 0 {
            return out;
        }
        for s in &slices[..n] {
            out.extend_from_slice(s);
            pos += s.len();
        }
    }
}

impl<S> Conn<S> {
    /// This connection's image at clock time `now`, with `fd` its socket and `channels` its
    /// parked poll's channels (from `parked`).
    pub fn image(&self, fd: i32, channels: Vec<String>, now: u64) -> ConnImage {
        let (input, skip, out) = match &self.pending {
            Some(p) => (
                p.input.clone(),
                p.skip,
                p.out
                    .as_ref()
                    .map(|(o, pos)| unsent(o.answer(), *pos))
                    .unwrap_or_default(),
            ),
            None => (Vec::new(), 0, Vec::new()),
        };
        ConnImage {
            fd,
            flags: self.flags,
            cors: self.cors,
            beats: self.beats,
            after: self.after,
            channels,
            timer_ms: self
                .timer
                .deadline()
                .map(|tick| (u64::from(tick) * TICK_MS).saturating_sub(now)),
            input,
            skip,
            out,
        }
    }
}

impl<S: Transport> Conn<S> {
    /// The connection `image` describes, on `sock`, and what its owner does next; `None` for
    /// an image this binary cannot interpret.
    pub fn restore(sock: S, image: &ConnImage, cx: &Ctx<'_>) -> Option<(Conn<S>, Step)> {
        let phase = phase_in(image.flags)?;
        let has_out = !image.out.is_empty();
        let pending = (!image.input.is_empty() || image.skip > 0 || has_out).then(|| {
            Box::new(Pending {
                input: image.input.clone(),
                skip: image.skip,
                out: has_out.then(|| (Out::Own(Answer::Flat(image.out.clone())), 0)),
            })
        });
        let c = Conn {
            sock,
            timer: TimerLink::new(),
            waits: waiters::NIL,
            after: image.after,
            pending,
            flags: image.flags,
            cors: image.cors,
            beats: image.beats,
        };
        let next = if phase == Phase::Parked {
            Next::Park(Park {
                channels: image.channels.clone(),
                after: image.after,
                hold_ms: image.timer_ms.unwrap_or(0),
                close: c.has(super::CLOSE_AFTER),
                token_ms: None,
                cors: image.cors,
                stream: c.has(super::STREAM),
                more: false,
            })
        } else if c.pending.is_some() || c.has(super::READABLE) {
            Next::Later
        } else {
            Next::Wait
        };
        let mut step = Step::new(next);
        step.timer = image.timer_ms.map(|ms| tick_up(cx.now.saturating_add(ms)));
        Some((c, step))
    }
}
