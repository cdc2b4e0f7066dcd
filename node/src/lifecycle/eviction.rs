//! The lifecycle's say in the store's eviction order: Cold and Pending Deletion layers go first,
//! layers pinned keep go last, and the node's own order (placement's, or LRU) decides within each
//! group. Until Cold layers can move to object storage, Cold stays on local disk and is simply
//! the first to go when room is needed.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use shoal_proto::BlobDigest;

use crate::store::{EvictionCandidate, EvictionPolicy};

/// Which layers the lifecycle wants evicted first and last; replaced after every review.
#[derive(Debug, Default)]
pub struct EvictionMarks {
    first: HashSet<BlobDigest>,
    last: HashSet<BlobDigest>,
}

impl EvictionMarks {
    /// Replaces the marks.
    pub fn set(&mut self, first: HashSet<BlobDigest>, last: HashSet<BlobDigest>) {
        self.first = first;
        self.last = last;
    }
}

/// Shared marks: the lifecycle writes them, the store's eviction reads them.
pub type SharedMarks = Arc<RwLock<EvictionMarks>>;

/// Wraps the node's eviction policy with the lifecycle's marks.
pub struct LifecycleEviction {
    inner: Box<dyn EvictionPolicy>,
    marks: SharedMarks,
}

impl LifecycleEviction {
    /// `inner`'s order, with the marks applied.
    pub fn new(inner: Box<dyn EvictionPolicy>, marks: SharedMarks) -> Self {
        Self { inner, marks }
    }
}

/// Stable regrouping: marked-first, then the rest, then marked-last, each in `order`'s order.
pub fn regroup(
    order: Vec<BlobDigest>,
    first: &HashSet<BlobDigest>,
    last: &HashSet<BlobDigest>,
) -> Vec<BlobDigest> {
    let (mut head, mut middle, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    for digest in order {
        if last.contains(&digest) {
            tail.push(digest);
        } else if first.contains(&digest) {
            head.push(digest);
        } else {
            middle.push(digest);
        }
    }
    head.extend(middle);
    head.extend(tail);
    head
}

impl EvictionPolicy for LifecycleEviction {
    fn order_victims(
        &mut self,
        now_ms: u64,
        candidates: Vec<EvictionCandidate>,
    ) -> Vec<BlobDigest> {
        let order = self.inner.order_victims(now_ms, candidates);
        let marks = self.marks.read().unwrap_or_else(|p| p.into_inner());
        regroup(order, &marks.first, &marks.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> BlobDigest {
        BlobDigest::from_bytes([n; 32])
    }

    #[test]
    fn cold_goes_first_keep_goes_last_and_the_inner_order_holds_within() {
        let order = vec![d(1), d(2), d(3), d(4), d(5)];
        let first = HashSet::from([d(4), d(2)]);
        let last = HashSet::from([d(1), d(2)]);
        assert_eq!(
            regroup(order, &first, &last),
            [d(4), d(3), d(5), d(1), d(2)]
        );
    }
}
