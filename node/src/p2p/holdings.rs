//! Which connected members hold which shards of which blob, as they announced over gossip
//! (`shoal/announce/1`). The swarm task writes it from validated announcements and forgets a peer
//! when its last connection closes; fetchers read it through
//! [`super::PeerNetwork::announced_holders`].
//!
//! It is a hint, never a proof: a holder may have evicted the blob since, and the transfer
//! verifies every byte. It is bounded by entries (overall and per peer) and by bitfield bytes;
//! when a bound is reached the least recently announced entries go first.

use std::collections::{BTreeMap, HashMap};

use libp2p::PeerId;
use shoal_proto::gossip::Announcement;
use shoal_proto::wire::ShardSet;
use shoal_proto::BlobDigest;

/// Most (peer, blob) entries kept overall.
pub const MAX_HOLDINGS: usize = 100_000;
/// Most blobs kept for one peer.
pub const MAX_HOLDINGS_PER_PEER: usize = 50_000;
/// Most bitfield bytes kept overall (partial holdings only; a complete one stores no bitfield).
pub const MAX_HOLDING_BITFIELD_BYTES: usize = 32 * 1024 * 1024;

/// What one member announced it holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedHolding {
    /// The member.
    pub peer: PeerId,
    /// How many shards the blob has.
    pub shard_count: u32,
    /// The shards it holds ([`ShardSet::All`] when complete).
    pub shards: ShardSet,
    /// It holds every shard: the whole blob is committed there.
    pub complete: bool,
}

/// The bounds of a [`Holdings`] table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HoldingsLimits {
    pub(crate) entries: usize,
    pub(crate) entries_per_peer: usize,
    pub(crate) bitfield_bytes: usize,
}

impl Default for HoldingsLimits {
    fn default() -> Self {
        Self {
            entries: MAX_HOLDINGS,
            entries_per_peer: MAX_HOLDINGS_PER_PEER,
            bitfield_bytes: MAX_HOLDING_BITFIELD_BYTES,
        }
    }
}

/// What an announcement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A holding was recorded or replaced.
    Recorded,
    /// A holding was removed, or there was none to remove.
    Removed,
    /// The author already announced something newer about this blob; nothing changed.
    Stale,
}

#[derive(Debug)]
struct Entry {
    /// Position in the eviction order (higher is more recent).
    order: u64,
    /// The author's gossip sequence number for this announcement.
    sequence: u64,
    shard_count: u32,
    shards: ShardSet,
}

impl Entry {
    fn bitfield_bytes(&self) -> usize {
        match &self.shards {
            ShardSet::All => 0,
            ShardSet::Bitfield(bits) => bits.len(),
        }
    }
}

/// The table itself; the swarm task and fetchers share it behind a mutex.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    by_blob: HashMap<BlobDigest, HashMap<PeerId, Entry>>,
    by_peer: HashMap<PeerId, BTreeMap<u64, BlobDigest>>,
    order: BTreeMap<u64, (PeerId, BlobDigest)>,
    /// The entries with a bitfield, in the same order: the byte bound evicts only these.
    partial_order: BTreeMap<u64, (PeerId, BlobDigest)>,
    next_order: u64,
    bitfield_bytes: usize,
    limits: HoldingsLimits,
}

impl Holdings {
    #[cfg(test)]
    fn with_limits(limits: HoldingsLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Applies an announcement `author` published with gossip sequence number `sequence`.
    pub(crate) fn apply(
        &mut self,
        author: PeerId,
        sequence: u64,
        announcement: &Announcement,
    ) -> Applied {
        let blob = announcement.blob_digest();
        let known = self
            .by_blob
            .get(&blob)
            .and_then(|holders| holders.get(&author));
        if known.is_some_and(|entry| entry.sequence >= sequence) {
            return Applied::Stale;
        }
        self.remove(author, blob);
        let Announcement::Holds {
            shard_count,
            shards,
            ..
        } = announcement
        else {
            return Applied::Removed;
        };
        let order = self.next_order;
        self.next_order += 1;
        let entry = Entry {
            order,
            sequence,
            shard_count: *shard_count,
            shards: shards.clone(),
        };
        self.bitfield_bytes += entry.bitfield_bytes();
        if entry.bitfield_bytes() > 0 {
            self.partial_order.insert(order, (author, blob));
        }
        self.by_blob.entry(blob).or_default().insert(author, entry);
        let peer_entries = self.by_peer.entry(author).or_default();
        peer_entries.insert(order, blob);
        let oldest_of_peer = (peer_entries.len() > self.limits.entries_per_peer)
            .then(|| peer_entries.first_key_value().map(|(_, blob)| *blob))
            .flatten();
        self.order.insert(order, (author, blob));
        if let Some(oldest) = oldest_of_peer {
            self.remove(author, oldest);
        }
        while self.order.len() > self.limits.entries {
            let Some((_, &(peer, blob))) = self.order.first_key_value() else {
                break;
            };
            self.remove(peer, blob);
        }
        while self.bitfield_bytes > self.limits.bitfield_bytes {
            let Some((_, &(peer, blob))) = self.partial_order.first_key_value() else {
                break;
            };
            self.remove(peer, blob);
        }
        Applied::Recorded
    }

    fn remove(&mut self, peer: PeerId, blob: BlobDigest) {
        let Some(holders) = self.by_blob.get_mut(&blob) else {
            return;
        };
        let Some(entry) = holders.remove(&peer) else {
            return;
        };
        if holders.is_empty() {
            self.by_blob.remove(&blob);
        }
        self.bitfield_bytes -= entry.bitfield_bytes();
        self.order.remove(&entry.order);
        self.partial_order.remove(&entry.order);
        if let Some(peer_entries) = self.by_peer.get_mut(&peer) {
            peer_entries.remove(&entry.order);
            if peer_entries.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Forgets everything `peer` announced (its last connection closed); returns how many
    /// holdings went.
    pub(crate) fn forget_peer(&mut self, peer: &PeerId) -> usize {
        let blobs: Vec<BlobDigest> = self
            .by_peer
            .get(peer)
            .map(|entries| entries.values().copied().collect())
            .unwrap_or_default();
        for blob in &blobs {
            self.remove(*peer, *blob);
        }
        blobs.len()
    }

    /// Who announced holding shards of `blob`, complete holders first, then by most shards held.
    pub(crate) fn holders(&self, blob: &BlobDigest) -> Vec<AnnouncedHolding> {
        let mut holders: Vec<AnnouncedHolding> = self
            .by_blob
            .get(blob)
            .into_iter()
            .flatten()
            .map(|(peer, entry)| AnnouncedHolding {
                peer: *peer,
                shard_count: entry.shard_count,
                shards: entry.shards.clone(),
                complete: matches!(entry.shards, ShardSet::All),
            })
            .collect();
        holders.sort_by_key(|holding| {
            let held = match &holding.shards {
                ShardSet::All => holding.shard_count,
                ShardSet::Bitfield(bits) => bits.iter().map(|byte| byte.count_ones()).sum(),
            };
            (!holding.complete, std::cmp::Reverse(held), holding.peer)
        });
        holders
    }

    /// How many (peer, blob) holdings are kept.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u32) -> BlobDigest {
        let mut bytes = [0; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        BlobDigest::from_bytes(bytes)
    }

    fn partial(n: u32, indices: &[usize]) -> Announcement {
        Announcement::holds(
            blob(n),
            100,
            &ShardSet::from_indices(indices.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn newer_announcements_replace_older_ones_and_dropped_removes() {
        let mut table = Holdings::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(table.apply(a, 10, &partial(1, &[0, 1])), Applied::Recorded);
        assert_eq!(
            table.apply(b, 5, &Announcement::complete(blob(1), 100)),
            Applied::Recorded
        );
        // An older message from A, delivered late, changes nothing.
        assert_eq!(table.apply(a, 9, &partial(1, &[7])), Applied::Stale);
        assert_eq!(
            table.apply(a, 11, &partial(1, &[0, 1, 2])),
            Applied::Recorded
        );
        let holders = table.holders(&blob(1));
        assert_eq!(holders.len(), 2);
        assert_eq!(holders[0].peer, b);
        assert!(holders[0].complete);
        assert_eq!(holders[1].peer, a);
        assert!(!holders[1].complete);
        assert_eq!(holders[1].shards, ShardSet::from_indices([0, 1, 2]));
        assert_eq!(
            table.apply(a, 12, &Announcement::dropped(blob(1))),
            Applied::Removed
        );
        assert_eq!(table.holders(&blob(1)).len(), 1);
        assert_eq!(table.len(), 1);
        assert!(table.holders(&blob(2)).is_empty());
    }

    #[test]
    fn a_peer_is_forgotten_entirely() {
        let mut table = Holdings::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        for n in 0..10 {
            table.apply(a, u64::from(n) + 1, &Announcement::complete(blob(n), 3));
        }
        table.apply(b, 1, &partial(3, &[4]));
        assert_eq!(table.forget_peer(&a), 10);
        assert_eq!(table.forget_peer(&a), 0);
        assert_eq!(table.len(), 1);
        assert_eq!(table.bitfield_bytes, 1);
        let holders = table.holders(&blob(3));
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].peer, b);
        table.forget_peer(&b);
        assert!(table.by_blob.is_empty() && table.by_peer.is_empty());
        assert!(table.order.is_empty() && table.partial_order.is_empty());
        assert_eq!(table.bitfield_bytes, 0);
    }

    #[test]
    fn bounds_drop_the_least_recently_announced_first() {
        let mut table = Holdings::with_limits(HoldingsLimits {
            entries: 5,
            entries_per_peer: 3,
            bitfield_bytes: 20,
        });
        let (a, b) = (PeerId::random(), PeerId::random());
        // Per peer: A's fourth blob pushes out its first.
        for n in 0..4 {
            table.apply(a, u64::from(n) + 1, &Announcement::complete(blob(n), 3));
        }
        assert!(table.holders(&blob(0)).is_empty());
        assert_eq!(table.len(), 3);
        // Overall: B's entries push out A's oldest.
        for n in 10..13 {
            table.apply(b, u64::from(n), &Announcement::complete(blob(n), 3));
        }
        assert_eq!(table.len(), 5);
        assert!(table.holders(&blob(1)).is_empty());
        assert_eq!(table.holders(&blob(2))[0].peer, a);
        // Re-announcing refreshes an entry's place in the order.
        table.apply(a, 20, &Announcement::complete(blob(2), 3));
        table.apply(b, 21, &Announcement::complete(blob(13), 3));
        let c = PeerId::random();
        table.apply(c, 1, &Announcement::complete(blob(14), 3));
        assert_eq!(table.holders(&blob(2)).len(), 1);
        assert!(table.holders(&blob(3)).is_empty());
        // Bitfield bytes: two 13-byte bitfields exceed 20 bytes, so the older one goes, and no
        // complete holding goes for it.
        table.apply(b, 30, &partial(20, &[99]));
        let before = table.len();
        table.apply(a, 31, &partial(21, &[98]));
        assert!(table.holders(&blob(20)).is_empty());
        assert_eq!(table.holders(&blob(21)).len(), 1);
        assert_eq!(table.holders(&blob(2)).len(), 1);
        assert!(table.len() >= before - 1);
        assert!(table.bitfield_bytes <= 20);
        assert!(table.len() <= 5);
        for (peer, entries) in &table.by_peer {
            assert!(entries.len() <= 3, "{peer} keeps {}", entries.len());
        }
    }
}
