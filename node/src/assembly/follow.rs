//! What a follower accepts from the stream of a member still fetching the blob: a sans-IO check of
//! each frame's order and of the blob's length, fed one frame at a time by
//! [`FollowFetch`](super::FollowFetch), its async shell.
//!
//! A parent sends every shard in blob order as it gets it, then an end frame that counts them,
//! once the blob matched its digest there. The follower cannot check a shard's bytes against a
//! map (there is none yet: the parent is still cutting it), only against the BLAKE3 the frame
//! names (done by `p2p::ShardStream`), so the order, the count and the length are what keep a
//! wrong or short stream from being taken as the blob.
//!
//! **Invariant:** a followed blob is complete only at an end frame that counts exactly the shards
//! received, after exactly the blob's length when the parent knew it; a stream that ends any
//! other way is a failed fetch, never a complete blob.

use crate::p2p::TransferError;

/// The state of one followed stream.
#[derive(Debug, Clone)]
pub struct FollowOrder {
    /// The blob's length, when the parent's origin sent one.
    blob_len: Option<u64>,
    /// Bytes of the shards accepted so far.
    received: u64,
    /// The index the next shard frame must carry.
    next_index: u32,
}

/// What the end frame meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Complete {
    /// Shards in the blob.
    pub shards: u32,
    /// Bytes in the blob.
    pub bytes: u64,
}

impl FollowOrder {
    /// A stream from its first shard; `blob_len` is the parent's answer's length, if any.
    pub fn new(blob_len: Option<u64>) -> Self {
        Self {
            blob_len,
            received: 0,
            next_index: 0,
        }
    }

    /// The blob's length, when known.
    pub fn blob_len(&self) -> Option<u64> {
        self.blob_len
    }

    /// Shard `index` of `len` bytes arrived: accepted only as the next shard in order and within
    /// the blob's length.
    pub fn on_shard(&mut self, index: u32, len: u64) -> Result<(), TransferError> {
        if index != self.next_index {
            return Err(TransferError::Protocol("shard out of order"));
        }
        let received = self.received.checked_add(len);
        let Some(received) =
            received.filter(|received| self.blob_len.is_none_or(|blob_len| *received <= blob_len))
        else {
            return Err(TransferError::Protocol("more bytes than the blob's length"));
        };
        self.next_index += 1;
        self.received = received;
        Ok(())
    }

    /// The end frame counting `count` shards arrived: the blob is complete, or the stream was
    /// wrong (a miscount is a protocol fault) or short (an early end, which is not a lie: the
    /// parent's own fetch may have failed).
    pub fn on_end(&self, count: u32) -> Result<Complete, TransferError> {
        if count != self.next_index {
            return Err(TransferError::Protocol(
                "the end frame counts other shards than were sent",
            ));
        }
        if self
            .blob_len
            .is_some_and(|blob_len| self.received != blob_len)
        {
            return Err(TransferError::EndedEarly("the blob ended short"));
        }
        Ok(Complete {
            shards: count,
            bytes: self.received,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_in_order_then_an_end_that_counts_them_complete_the_blob() {
        let mut order = FollowOrder::new(Some(7));
        order.on_shard(0, 3).unwrap();
        order.on_shard(1, 4).unwrap();
        assert_eq!(
            order.on_end(2).unwrap(),
            Complete {
                shards: 2,
                bytes: 7
            }
        );
        // Without a known length, the end frame alone decides.
        let mut order = FollowOrder::new(None);
        order.on_shard(0, 3).unwrap();
        assert_eq!(order.on_end(1).unwrap().bytes, 3);
    }

    #[test]
    fn a_shard_out_of_order_is_refused_and_changes_nothing() {
        let mut order = FollowOrder::new(None);
        order.on_shard(0, 3).unwrap();
        for wrong in [0, 2, u32::MAX] {
            let error = order.on_shard(wrong, 1).unwrap_err();
            assert!(matches!(error, TransferError::Protocol(_)));
            assert!(error.is_misbehaviour());
        }
        // The right one is still taken.
        order.on_shard(1, 1).unwrap();
        assert_eq!(order.on_end(2).unwrap().bytes, 4);
    }

    #[test]
    fn bytes_beyond_the_blobs_length_are_refused() {
        let mut order = FollowOrder::new(Some(5));
        order.on_shard(0, 3).unwrap();
        assert!(matches!(
            order.on_shard(1, 3),
            Err(TransferError::Protocol(_))
        ));
        // A length that would overflow is refused too, not wrapped.
        let mut order = FollowOrder::new(Some(u64::MAX));
        order.on_shard(0, u64::MAX).unwrap();
        assert!(order.on_shard(1, 1).is_err());
    }

    #[test]
    fn an_end_that_miscounts_is_a_fault_and_one_that_comes_short_is_an_early_end() {
        let mut order = FollowOrder::new(Some(7));
        order.on_shard(0, 3).unwrap();
        let miscount = order.on_end(2).unwrap_err();
        assert!(miscount.is_misbehaviour());
        let short = order.on_end(1).unwrap_err();
        assert!(matches!(short, TransferError::EndedEarly(_)));
        // Not a lie: the parent is not avoided for it.
        assert!(!short.is_misbehaviour());
    }
}
