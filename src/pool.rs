//! A per-reactor pool of read buffers.
//!
//! A connection borrows a buffer only while it has bytes to parse and gives it back before it
//! waits again, so an idle or parked connection owns none (nginx frees its header buffer the
//! same way). Invariants: every buffer handed out has capacity `size` and length 0; the pool
//! keeps at most `keep` free buffers, so its memory is bounded whatever the load was.

/// See the module documentation.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    size: usize,
    keep: usize,
}

impl BufferPool {
    pub fn new(size: usize, keep: usize) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            size,
            keep,
        }
    }

    /// An empty buffer with capacity `size`.
    pub fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer; one that grew or shrank away from `size` is dropped.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == self.size && self.free.len() < self.keep {
            buf.clear();
            self.free.push(buf);
        }
    }

    pub fn free_buffers(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut p = BufferPool::new(16, 2);
        let a = p.take();
        let mut b = p.take();
        let c = p.take();
        b.extend_from_slice(b"hello");
        assert_eq!(a.capacity(), 16);
        p.give(a);
        p.give(b);
        p.give(c);
        assert_eq!(p.free_buffers(), 2);
        let d = p.take();
        assert!(d.is_empty() && d.capacity() == 16);
        p.give(Vec::with_capacity(64));
        assert_eq!(p.free_buffers(), 1);
    }
}
