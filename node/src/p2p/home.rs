//! A blob's home: the member whose peer id is closest to the blob's DHT key (XOR distance, as
//! Kademlia measures it), which records who fetches the blob from the origin (see `claims`).
//!
//! Nodes agree on the home only if they look among the same members. A region's nodes cannot all
//! be connected to each other once there are thousands, so the home is found the way Kademlia
//! finds the closest peers to a key: an iterative closest-peers lookup through the routing table
//! (`kad::Behaviour::get_closest_peers`), whose answer does not depend on whom a node happens to be
//! connected to. The lookup's closest peers, the members connected now and this node are the
//! candidates; the closest that is this node, or a member that proves the key, is the home. The
//! answer is cached for [`HOME_TTL`] per blob ([`HomeCache`], bounded), since the misses of one
//! blob come in bursts.
//!
//! Every node must find the same home, so nothing a node learnt on its own changes the choice: a
//! member this node avoids (it sent bad bytes) is still the home if it is the closest (its claims
//! are not its bytes; the first version skipped it, so the nodes it had lied to chose another home
//! than the rest, and the two homes granted the blob twice: the soak's double origin fetches). A
//! node given bootstrap peers that has no member in view yet (just restarted) waits up to
//! [`FIRST_MEMBER_WAIT`] for the first before looking, and does not keep a home chosen alone.
//!
//! This module holds the pure parts (ordering candidates, the cache, driven by an explicit `now`);
//! `PeerNetwork::find_home` runs the lookup and the proofs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{kad, PeerId};
use shoal_proto::BlobDigest;

/// How long a blob's home, once found, is used without looking it up again.
pub const HOME_TTL: Duration = Duration::from_secs(30);
/// Most blobs whose home is cached.
pub const MAX_CACHED_HOMES: usize = 4096;
/// How long a node that was given bootstrap peers but has no member in view yet (just started)
/// waits for the first before it looks a home up: alone, it would find itself every blob's home.
pub const FIRST_MEMBER_WAIT: Duration = Duration::from_secs(5);

/// The blob's key in the DHT's XOR metric.
fn key(digest: &BlobDigest) -> kad::KBucketKey<kad::RecordKey> {
    kad::KBucketKey::new(kad::RecordKey::new(digest.as_bytes()))
}

/// `candidates` without repeats, closest to `digest`'s key first.
pub(crate) fn closest_first(
    digest: &BlobDigest,
    candidates: impl IntoIterator<Item = PeerId>,
) -> Vec<PeerId> {
    let key = key(digest);
    let mut peers: Vec<PeerId> = candidates.into_iter().collect();
    peers.sort_by_key(|peer| kad::KBucketKey::from(*peer).distance(&key));
    peers.dedup();
    peers
}

/// Homes found recently, per blob, each until its expiry.
#[derive(Debug)]
pub(crate) struct HomeCache {
    homes: HashMap<BlobDigest, (PeerId, Instant)>,
    max: usize,
}

impl Default for HomeCache {
    fn default() -> Self {
        Self::new(MAX_CACHED_HOMES)
    }
}

impl HomeCache {
    /// An empty cache of at most `max` blobs.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            homes: HashMap::new(),
            max,
        }
    }

    /// The home found for `digest`, unless it expired by `now`.
    pub(crate) fn get(&mut self, digest: &BlobDigest, now: Instant) -> Option<PeerId> {
        match self.homes.get(digest) {
            Some((home, expires)) if *expires > now => Some(*home),
            Some(_) => {
                self.homes.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Records `home` for `digest` until `now + HOME_TTL`. When the cache is full, expired
    /// entries go first, then the one that expires soonest.
    pub(crate) fn insert(&mut self, digest: BlobDigest, home: PeerId, now: Instant) {
        if !self.homes.contains_key(&digest) && self.homes.len() >= self.max {
            self.homes.retain(|_, (_, expires)| *expires > now);
            if self.homes.len() >= self.max {
                let soonest = self
                    .homes
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(digest, _)| *digest);
                if let Some(soonest) = soonest {
                    self.homes.remove(&soonest);
                }
            }
        }
        self.homes.insert(digest, (home, now + HOME_TTL));
    }

    /// Forgets `digest`'s home (it could not be reached).
    pub(crate) fn forget(&mut self, digest: &BlobDigest) {
        self.homes.remove(digest);
    }

    /// Blobs cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.homes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> BlobDigest {
        BlobDigest::from_bytes([n; 32])
    }

    #[test]
    fn candidates_are_ordered_by_xor_distance_whatever_order_they_come_in() {
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        let blob = digest(1);
        let ordered = closest_first(&blob, peers.iter().copied());
        let mut reversed = peers.clone();
        reversed.reverse();
        reversed.extend(peers.iter().copied());
        assert_eq!(closest_first(&blob, reversed), ordered);
        let key = key(&blob);
        for pair in ordered.windows(2) {
            assert!(
                kad::KBucketKey::from(pair[0]).distance(&key)
                    < kad::KBucketKey::from(pair[1]).distance(&key)
            );
        }
    }

    #[test]
    fn a_home_is_used_until_it_expires() {
        let mut cache = HomeCache::default();
        let now = Instant::now();
        let home = PeerId::random();
        cache.insert(digest(1), home, now);
        assert_eq!(cache.get(&digest(1), now + HOME_TTL / 2), Some(home));
        assert_eq!(cache.get(&digest(1), now + HOME_TTL), None);
        assert_eq!(cache.len(), 0);
        cache.insert(digest(2), home, now);
        cache.forget(&digest(2));
        assert_eq!(cache.get(&digest(2), now), None);
    }

    #[test]
    fn the_cache_stays_within_its_bound_dropping_the_oldest_first() {
        let mut cache = HomeCache::new(3);
        let start = Instant::now();
        for n in 0..10u8 {
            cache.insert(
                digest(n),
                PeerId::random(),
                start + Duration::from_secs(u64::from(n)),
            );
            assert!(cache.len() <= 3);
        }
        let now = start + Duration::from_secs(10);
        assert!(cache.get(&digest(9), now).is_some());
        assert!(cache.get(&digest(7), now).is_some());
        assert!(cache.get(&digest(0), now).is_none());
    }
}
