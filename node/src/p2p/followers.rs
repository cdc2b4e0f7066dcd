//! The peers following this node's fetches shard by shard, so that no fetch feeds more than
//! [`FANOUT`] of them: the next peer that asks is sent to one of the followers instead (same region
//! as the asker first, then in turn), one level lower in the same tree.
//!
//! The blob's home already places the peers it hears from under a parent with room (see
//! `claims`); this catches the peers that found the fetch some other way, through its DHT provider
//! record, which would otherwise all follow the first fetcher. Followers decided after the node
//! they follow, so sending an asker down the tree never loops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use shoal_proto::BlobDigest;

use super::claims::FANOUT;

#[derive(Debug, Default)]
struct Following {
    /// Who follows, with their region.
    followers: Vec<(PeerId, Option<String>)>,
    /// Askers sent elsewhere so far, to spread them over the followers.
    sent_on: usize,
}

/// This node's followers, per blob; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Followers(Arc<Mutex<HashMap<BlobDigest, Following>>>);

/// What to tell a peer that asks to follow a fetch.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Follow this node; the peer counts as a follower while the guard lives.
    Follow(FollowerGuard),
    /// This fetch is full: follow that member instead.
    Elsewhere(PeerId),
}

impl Followers {
    /// `peer`, in `region`, asks to follow this node's fetch of `digest`.
    pub(crate) fn admit(
        &self,
        digest: BlobDigest,
        peer: PeerId,
        region: Option<String>,
    ) -> Admission {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let following = table.entry(digest).or_default();
        let full = following.followers.len() >= usize::from(FANOUT);
        let already = following.followers.iter().any(|(p, _)| *p == peer);
        if full && !already {
            let same_region: Vec<PeerId> = following
                .followers
                .iter()
                .filter(|(_, r)| region.is_some() && *r == region)
                .map(|(p, _)| *p)
                .collect();
            let candidates = if same_region.is_empty() {
                following.followers.iter().map(|(p, _)| *p).collect()
            } else {
                same_region
            };
            let next = candidates[following.sent_on % candidates.len()];
            following.sent_on += 1;
            return Admission::Elsewhere(next);
        }
        following.followers.push((peer, region));
        Admission::Follow(FollowerGuard {
            followers: self.clone(),
            digest,
            peer,
        })
    }

    #[cfg(test)]
    fn count(&self, digest: &BlobDigest) -> usize {
        self.0
            .lock()
            .unwrap()
            .get(digest)
            .map_or(0, |f| f.followers.len())
    }
}

/// A peer following one of this node's fetches; dropping it ends that.
#[derive(Debug)]
pub(crate) struct FollowerGuard {
    followers: Followers,
    digest: BlobDigest,
    peer: PeerId,
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        let mut table = self.followers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(following) = table.get_mut(&self.digest) {
            if let Some(at) = following
                .followers
                .iter()
                .position(|(p, _)| *p == self.peer)
            {
                following.followers.remove(at);
            }
            if following.followers.is_empty() {
                table.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> BlobDigest {
        BlobDigest::from_bytes([7; 32])
    }

    fn region(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    #[test]
    fn a_full_fetch_sends_askers_to_its_followers_same_region_first() {
        let followers = Followers::default();
        let (east, west) = (PeerId::random(), PeerId::random());
        let Admission::Follow(_east_guard) = followers.admit(digest(), east, region("east")) else {
            panic!("the first follower was sent away");
        };
        let Admission::Follow(west_guard) = followers.admit(digest(), west, region("west")) else {
            panic!("the second follower was sent away");
        };
        assert_eq!(usize::from(FANOUT), 2);
        for _ in 0..3 {
            match followers.admit(digest(), PeerId::random(), region("west")) {
                Admission::Elsewhere(next) => assert_eq!(next, west),
                Admission::Follow(_) => panic!("a third follower was admitted"),
            }
        }
        // Without a region match the askers are spread over every follower.
        let mut sent_to = std::collections::HashSet::new();
        for _ in 0..2 {
            match followers.admit(digest(), PeerId::random(), None) {
                Admission::Elsewhere(next) => sent_to.insert(next),
                Admission::Follow(_) => panic!("a third follower was admitted"),
            };
        }
        assert_eq!(sent_to.len(), 2);
        // A follower that leaves makes room.
        drop(west_guard);
        assert_eq!(followers.count(&digest()), 1);
        assert!(matches!(
            followers.admit(digest(), PeerId::random(), None),
            Admission::Follow(_)
        ));
    }

    #[test]
    fn the_table_forgets_a_blob_with_no_followers() {
        let followers = Followers::default();
        let guard = followers.admit(digest(), PeerId::random(), None);
        drop(guard);
        assert_eq!(followers.count(&digest()), 0);
        assert!(followers.0.lock().unwrap().is_empty());
    }
}
