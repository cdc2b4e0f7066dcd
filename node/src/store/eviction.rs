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

/// Runs a `shoal-policy` eviction policy, the same code the simulator runs, over the store's
/// candidates. The store's default is the policy crate's plain LRU.
///
/// Candidates are numbered afresh on every call (ordered by last access, then digest, so ties
/// within a second keep their millisecond order) and their accesses replayed, so the policy sees
/// exactly what the store knows; what the policy learns is forgotten after the call.
pub struct PolicyEviction {
    policy: Box<dyn shoal_policy::eviction::EvictionPolicy>,
}

impl std::fmt::Debug for PolicyEviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEviction")
            .field("policy", &self.policy.name())
            .finish()
    }
}

impl PolicyEviction {
    /// Least recently used first.
    pub fn lru() -> Self {
        Self {
            policy: Box::new(shoal_policy::eviction::Lru::new()),
        }
    }
}

impl EvictionPolicy for PolicyEviction {
    fn order_victims(
        &mut self,
        now_ms: u64,
        mut candidates: Vec<EvictionCandidate>,
    ) -> Vec<BlobDigest> {
        use shoal_policy::eviction::CandidateLayer;
        use shoal_policy::{LayerId, Timestamp};
        candidates.sort_by_key(|c| (c.last_access_ms, c.digest));
        candidates.truncate(u32::MAX as usize);
        let layers: Vec<CandidateLayer> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let layer = LayerId(i as u32);
                self.policy
                    .record_access(Timestamp(c.last_access_ms / 1000), layer, c.size);
                CandidateLayer::new(layer, c.size)
            })
            .collect();
        let victims = self
            .policy
            .choose_victims(Timestamp(now_ms / 1000), &layers, u64::MAX);
        for layer in &layers {
            self.policy.forget(layer.layer);
        }
        victims
            .into_iter()
            .filter_map(|id| candidates.get(id.0 as usize).map(|c| c.digest))
            .collect()
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
        let order = PolicyEviction::lru().order_victims(
            0,
            vec![candidate(1, 30), candidate(2, 10), candidate(3, 20)],
        );
        let bytes: Vec<u8> = order.iter().map(|d| d.as_bytes()[0]).collect();
        assert_eq!(bytes, [2, 3, 1]);
    }
}
