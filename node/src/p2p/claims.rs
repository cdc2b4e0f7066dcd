//! Who is fetching a blob from the origin, as recorded by the blob's home: the first member to
//! ask (or the home itself) is granted the fetch, and everyone asking after it is told to follow
//! that member. A claim lapses after [`CLAIM_TTL`], by then the blob is stored somewhere and
//! announced, or the claimant failed and the next asker fetches it instead.
//!
//! Bounded: at most [`MAX_CLAIMS`] blobs, the oldest claim dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_proto::BlobDigest;

/// How long a claim holds.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Claims kept at once.
pub const MAX_CLAIMS: usize = 65_536;

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The claimant fetches the blob.
    Granted,
    /// This member claimed it first and has not lapsed: follow it.
    Held(PeerId),
}

#[derive(Debug, Default)]
struct ClaimTable {
    by_blob: HashMap<BlobDigest, (PeerId, Instant)>,
    /// Claims in the order they were made (entries whose claim was replaced are skipped).
    order: VecDeque<(BlobDigest, Instant)>,
}

/// The claims this node keeps as a home; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims(Arc<Mutex<ClaimTable>>);

impl Claims {
    /// `claimant` asks to fetch `digest` at `now`.
    pub(crate) fn claim(&self, digest: BlobDigest, claimant: PeerId, now: Instant) -> Claim {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((holder, at)) = table.by_blob.get(&digest) {
            if *holder != claimant && now.saturating_duration_since(*at) < CLAIM_TTL {
                return Claim::Held(*holder);
            }
        }
        table.by_blob.insert(digest, (claimant, now));
        table.order.push_back((digest, now));
        while table.by_blob.len() > MAX_CLAIMS || table.order.len() > 2 * MAX_CLAIMS {
            let Some((oldest, at)) = table.order.pop_front() else {
                break;
            };
            if table
                .by_blob
                .get(&oldest)
                .is_some_and(|(_, when)| *when == at)
            {
                table.by_blob.remove(&oldest);
            }
        }
        Claim::Granted
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().by_blob.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u64) -> BlobDigest {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        BlobDigest::from_bytes(bytes)
    }

    #[test]
    fn the_first_claimant_fetches_and_later_ones_follow_until_it_lapses() {
        let claims = Claims::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        assert_eq!(claims.claim(digest(1), a, now), Claim::Granted);
        assert_eq!(claims.claim(digest(1), b, now), Claim::Held(a));
        // Asking again is not a conflict with oneself.
        assert_eq!(claims.claim(digest(1), a, now), Claim::Granted);
        assert_eq!(claims.claim(digest(2), b, now), Claim::Granted);
        let later = now + CLAIM_TTL;
        assert_eq!(claims.claim(digest(1), b, later), Claim::Granted);
        assert_eq!(claims.claim(digest(1), a, later), Claim::Held(b));
    }

    #[test]
    fn the_table_is_bounded_oldest_first() {
        let claims = Claims::default();
        let peer = PeerId::random();
        let now = Instant::now();
        for n in 0..(MAX_CLAIMS as u64 + 10) {
            claims.claim(digest(n), peer, now);
        }
        assert_eq!(claims.len(), MAX_CLAIMS);
        // The oldest went first: a new claimant gets it.
        assert_eq!(
            claims.claim(digest(0), PeerId::random(), now),
            Claim::Granted
        );
        assert_eq!(
            claims.claim(digest(MAX_CLAIMS as u64 + 9), PeerId::random(), now),
            Claim::Held(peer)
        );
    }
}
