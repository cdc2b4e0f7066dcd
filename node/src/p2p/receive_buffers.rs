//! The buffers arriving shards are read into, kept for the next shard once the one they held is
//! dropped (written to the store, handed to every follower).
//!
//! Why: a shard's bytes come out of the transport through `AsyncRead`, which can only fill
//! initialised memory, so a fresh buffer would be zeroed before each piece is read into it (4% of
//! a fetching node's CPU, BENCHMARKS.md "where the peer path's CPU goes"). A buffer that comes
//! back here keeps its initialised length, so the next shard is read into it without zeroing it
//! or faulting its pages in again. No `unsafe`: nothing is ever read into uninitialised memory.
//!
//! Bounds: at most [`IDLE_BYTES`] of capacity wait here (a buffer that would go over is freed),
//! and a buffer is only handed out with its already-initialised length; memory a member can make
//! this node touch anew is still what arrived plus one piece (the reader grows a buffer piece by
//! piece). This module does no I/O.

use std::sync::Mutex;

use bytes::Bytes;

/// Most capacity kept idle for reuse: a few shards of the default chunking beyond the batches
/// asked for from one holder at once.
const IDLE_BYTES: usize = 24 * 1024 * 1024;

/// Buffers waiting to hold the next shard.
#[derive(Debug)]
pub(super) struct ReceiveBuffers {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    capacity: usize,
}

/// The node's buffers: one pool for every transfer stream, as the allocator is one for the
/// process (a pool per stream would rarely see its buffers come back before the stream ends).
static SHARED: ReceiveBuffers = ReceiveBuffers::new();

impl ReceiveBuffers {
    const fn new() -> Self {
        Self {
            idle: Mutex::new(Idle {
                buffers: Vec::new(),
                capacity: 0,
            }),
        }
    }

    /// The node's pool.
    pub(super) fn shared() -> &'static Self {
        &SHARED
    }

    /// An empty buffer for a shard of `len` bytes: the idle buffer of least capacity that holds
    /// `len`, or a new one of exactly that capacity.
    pub(super) fn take(&'static self, len: usize) -> ShardBuffer {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let best = idle
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| {
                let buffer = idle.buffers.swap_remove(i);
                idle.capacity -= buffer.capacity();
                buffer
            })
        };
        ShardBuffer {
            bytes: reused.unwrap_or_else(|| Vec::with_capacity(len)),
            filled: 0,
            home: self,
        }
    }

    fn give_back(&self, buffer: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.capacity + buffer.capacity() > IDLE_BYTES {
            return;
        }
        idle.capacity += buffer.capacity();
        idle.buffers.push(buffer);
    }

    #[cfg(test)]
    fn idle_capacity(&self) -> usize {
        self.idle.lock().unwrap().capacity
    }
}

/// One shard's bytes as they are read: `filled` bytes at the start of `bytes` are the shard's;
/// `bytes` may be initialised further (from a shard it held before), which is never shown.
#[derive(Debug)]
pub(super) struct ShardBuffer {
    bytes: Vec<u8>,
    filled: usize,
    home: &'static ReceiveBuffers,
}

impl ShardBuffer {
    /// The bytes filled so far.
    pub(super) fn filled(&self) -> &[u8] {
        &self.bytes[..self.filled]
    }

    /// The next `n` bytes to read into, right after those filled: the buffer's initialised
    /// length grows to cover them if it must (zeroing only memory it never held before).
    pub(super) fn unfilled(&mut self, n: usize) -> &mut [u8] {
        let end = self.filled + n;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        &mut self.bytes[self.filled..end]
    }

    /// Marks the `n` bytes after those filled as filled (after [`Self::unfilled`] gave them).
    pub(super) fn advance(&mut self, n: usize) {
        assert!(
            self.filled + n <= self.bytes.len(),
            "advanced past the read"
        );
        self.filled += n;
    }

    /// The filled bytes as `Bytes`, without a copy; the buffer comes back to its pool when the
    /// last clone is dropped.
    pub(super) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ShardBuffer {
    fn as_ref(&self) -> &[u8] {
        self.filled()
    }
}

impl Drop for ShardBuffer {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static ReceiveBuffers {
        Box::leak(Box::new(ReceiveBuffers::new()))
    }

    #[test]
    fn a_dropped_shard_lends_its_buffer_to_the_next_and_old_bytes_are_never_shown() {
        let pool = pool();
        let mut first = pool.take(1000);
        first.unfilled(1000).fill(7);
        first.advance(1000);
        let bytes = first.into_bytes();
        assert_eq!(&bytes[..], &[7u8; 1000][..]);
        let address = bytes.as_ptr();
        drop(bytes);
        assert_eq!(pool.idle_capacity(), 1000);

        let mut second = pool.take(600);
        assert_eq!(second.filled(), &[] as &[u8]);
        // The old bytes are there to be overwritten, not shown.
        assert_eq!(second.unfilled(10), &[7u8; 10][..]);
        second.unfilled(10).fill(1);
        second.advance(10);
        let bytes = second.into_bytes();
        assert_eq!(bytes.as_ptr(), address);
        assert_eq!(&bytes[..], &[1u8; 10][..]);
        assert_eq!(pool.idle_capacity(), 0);
    }

    #[test]
    fn a_buffer_too_small_for_the_shard_is_left_idle() {
        let pool = pool();
        drop(pool.take(100));
        let big = pool.take(5000);
        assert!(big.bytes.capacity() >= 5000);
        assert_eq!(pool.idle_capacity(), 100);
    }

    #[test]
    fn idle_capacity_stays_under_its_bound() {
        let pool = pool();
        let held: Vec<ShardBuffer> = (0..4).map(|_| pool.take(IDLE_BYTES / 3)).collect();
        drop(held);
        assert!(pool.idle_capacity() <= IDLE_BYTES);
        assert_eq!(pool.idle_capacity(), 3 * (IDLE_BYTES / 3));
    }
}
