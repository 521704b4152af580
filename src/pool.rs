//! A per-reactor pool of read buffers.
//!
//! A connection borrows a buffer only while it has bytes to parse and gives it back before it
//! waits again, so an idle or parked connection owns none (nginx frees its header buffer the
//! same way). Invariants: every buffer handed out has length and capacity `size` (zeroed once
//! when first made, so reusing one costs no memset); the pool keeps at most `keep` free
//! buffers, so its memory is bounded whatever the load was.

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

    /// A buffer of `size` initialised bytes (contents unspecified).
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| vec![0; self.size])
    }

    /// Returns a buffer; one whose length or capacity moved away from `size` is dropped.
    pub fn give(&mut self, buf: Vec<u8>) {
        if buf.len() == self.size && buf.capacity() == self.size && self.free.len() < self.keep {
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
        b.extend_from_slice(b"hello"); // grew: not kept
        assert_eq!((a.len(), a.capacity()), (16, 16));
        p.give(a);
        p.give(b);
        p.give(c);
        assert_eq!(p.free_buffers(), 2);
        let d = p.take();
        assert!(d.len() == 16 && d.capacity() == 16);
        p.give(vec![0; 64]);
        p.give(vec![0; 16]);
        p.give(vec![0; 16]);
        assert_eq!(p.free_buffers(), 2);
    }
}
