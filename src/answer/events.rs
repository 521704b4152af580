//! A batch of Server-Sent Events message events written by reference, the event-stream form of
//! an `Answer` (`sse` decides when to build one and encodes everything else of a stream).
//!
//! Invariants:
//! - Its bytes are exactly `id: CURSOR`, `EVENT_MESSAGE`, the message JSON (named by its
//!   channel) and `END` per message, after the preamble; `len` is their sum.
//! - It owns the preamble, one `id:` prefix per message and one `(Arc<Message>, channel index,
//!   end of its id)` per message; the message bytes stay the store's.

use std::io::IoSlice;
use std::sync::Arc;

use crate::cursor;
use crate::sockio;
use crate::store::Message;

/// Between a message's `id:` prefix and its JSON.
const EVENT_MESSAGE: &[u8] = b"\nevent: message\ndata: ";
const QUOTE: &[u8] = b"\"";
/// Ends every event: a blank line.
pub const END: &[u8] = b"\n\n";

/// A batch of message events written from the stored messages by reference.
#[derive(Debug)]
pub struct EventBatch {
    /// The preamble (the response head on a stream's first write, a reset event).
    head: Vec<u8>,
    /// `id: CURSOR` of every message, one after the other.
    ids: Vec<u8>,
    /// Each message, the index of the channel it is named by, and where its `id:` ends in
    /// `ids`.
    msgs: Vec<(Arc<Message>, u32, u32)>,
    len: usize,
}

impl EventBatch {
    /// The events of `messages` (each named by the channel `named` gives) after `head`.
    pub fn new(
        head: Vec<u8>,
        messages: &[Arc<Message>],
        epoch: u64,
        named: impl Fn(&Message) -> u32,
    ) -> EventBatch {
        let mut ids = Vec::with_capacity(messages.len() * (4 + cursor::MAX_LEN));
        let mut msgs = Vec::with_capacity(messages.len());
        let mut len = head.len();
        for m in messages {
            ids.extend_from_slice(b"id: ");
            ids.extend_from_slice(cursor::encode(epoch, m.seq).as_bytes());
            let ch = named(m);
            let name = m.channels.get(ch as usize).map_or(0, |c| c.len());
            msgs.push((m.clone(), ch, ids.len() as u32));
            len += EVENT_MESSAGE.len() + m.head().len() + 2 + name + m.tail().len() + END.len();
        }
        len += ids.len();
        EventBatch {
            head,
            ids,
            msgs,
            len,
        }
    }

    /// The preamble (response head and/or reset event); empty on a stream's later writes.
    pub(crate) fn preamble(&self) -> &[u8] {
        &self.head
    }

    /// Messages in this batch.
    pub(crate) fn message_count(&self) -> usize {
        self.msgs.len()
    }

    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let msgs = self.msgs.iter().enumerate().flat_map(|(i, (m, ch, end))| {
            let start = if i == 0 {
                0
            } else {
                self.msgs[i - 1].2 as usize
            };
            let id = self.ids.get(start..*end as usize).unwrap_or_default();
            let name = m.channels.get(*ch as usize).map_or("", |c| &**c);
            [
                id,
                EVENT_MESSAGE,
                m.head().as_bytes(),
                QUOTE,
                name.as_bytes(),
                QUOTE,
                m.tail().as_bytes(),
                END,
            ]
        });
        std::iter::once(&self.head[..]).chain(msgs)
    }

    /// Bytes this batch owns beside the shared messages.
    pub fn owned_bytes(&self) -> usize {
        std::mem::size_of::<EventBatch>()
            + self.head.capacity()
            + self.ids.capacity()
            + self.msgs.capacity() * std::mem::size_of::<(Arc<Message>, u32, u32)>()
    }

    pub fn total_len(&self) -> usize {
        self.len
    }

    pub fn slices_from<'a>(&'a self, pos: usize, out: &mut [IoSlice<'a>]) -> usize {
        sockio::slices_of(self.parts(), pos, out)
    }
}
