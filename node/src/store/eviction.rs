//! Which blobs go first when the store is over its disk budget.
//!
//! The interface is one method so that the predictive policy can replace LRU without touching
//! the store: the store hands over every blob that may be evicted (none being served), the policy
//! returns them in the order to evict, and the store evicts from the front until it is within
//! budget.

use shoal_proto::BlobDigest;

/// A blob that may be evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionCandidate {
    /// The blob.
    pub digest: BlobDigest,
    /// Its length in bytes.
    pub size: u64,
    /// Milliseconds since the Unix epoch of its last read (or its commit).
    pub last_access_ms: u64,
    /// Reads since it was stored.
    pub access_count: u64,
}

/// Orders eviction candidates.
pub trait EvictionPolicy: Send {
    /// Returns the candidates' digests, the one to evict first at the front. `now_ms` is the
    /// current time; policies take it as an argument and never read a clock.
    fn order_victims(&mut self, now_ms: u64, candidates: Vec<EvictionCandidate>)
        -> Vec<BlobDigest>;
}

/// Least recently used first; ties broken by digest so the order is deterministic.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastRecentlyUsed;

impl EvictionPolicy for LeastRecentlyUsed {
    fn order_victims(
        &mut self,
        _now_ms: u64,
        mut candidates: Vec<EvictionCandidate>,
    ) -> Vec<BlobDigest> {
        candidates.sort_by_key(|c| (c.last_access_ms, c.digest));
        candidates.into_iter().map(|c| c.digest).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_orders_oldest_first() {
        let candidate = |byte: u8, last: u64| EvictionCandidate {
            digest: BlobDigest::from_bytes([byte; 32]),
            size: 1,
            last_access_ms: last,
            access_count: 9,
        };
        let order = LeastRecentlyUsed.order_victims(
            0,
            vec![candidate(1, 30), candidate(2, 10), candidate(3, 20)],
        );
        let bytes: Vec<u8> = order.iter().map(|d| d.as_bytes()[0]).collect();
        assert_eq!(bytes, [2, 3, 1]);
    }
}
