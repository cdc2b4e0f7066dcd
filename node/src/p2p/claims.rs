//! Who fetches a blob from the origin, and whom everyone else follows, as recorded by the blob's
//! home.
//!
//! The first member to ask (or the home itself) is granted the origin fetch. Everyone asking
//! after it is given a parent to follow, chosen to build a tree rather than a star: a member of
//! the asker's own region if one has room, else the shallowest member with room, where room means
//! fewer than [`FANOUT`] followers. So one origin copy enters the network, each member uploads at
//! most [`FANOUT`] copies while it downloads one, and the tree is about `log_FANOUT(N)` deep.
//!
//! A tree lapses [`CLAIM_TTL`] after its claim; by then the blob is stored somewhere and announced,
//! or the claimant failed and the next asker fetches it instead.
//!
//! Bounded: at most [`MAX_CLAIMS`] blobs, the oldest claim dropped first, and at most
//! [`MAX_FOLLOWERS`] followers placed per blob (later ones follow the claimant).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_proto::BlobDigest;

/// How long a claim holds.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Claims kept at once.
pub const MAX_CLAIMS: usize = 65_536;
/// Followers a member is given at most.
pub const FANOUT: u8 = 2;
/// Followers placed in one blob's tree.
pub const MAX_FOLLOWERS: usize = 256;

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The claimant fetches the blob.
    Granted,
    /// Follow this member, which fetches the blob or follows another that does.
    Held(PeerId),
}

/// One member of a blob's tree.
#[derive(Debug)]
struct Placed {
    peer: PeerId,
    region: Option<String>,
    /// Hops from the claimant (0).
    depth: u8,
    /// Whom it follows; `None` for the claimant.
    parent: Option<PeerId>,
    followers: u8,
}

/// The tree of one blob.
#[derive(Debug)]
struct Tree {
    claimed_at: Instant,
    /// The claimant first, then followers in the order they asked.
    members: Vec<Placed>,
}

impl Tree {
    fn new(claimant: PeerId, region: Option<String>, now: Instant) -> Self {
        Tree {
            claimed_at: now,
            members: vec![Placed {
                peer: claimant,
                region,
                depth: 0,
                parent: None,
                followers: 0,
            }],
        }
    }

    /// Whether `member` follows `ancestor`, directly or down the tree: a member placed again
    /// must not be placed under its own followers, or two fetches would wait on each other.
    fn descends_from(&self, member: PeerId, ancestor: PeerId) -> bool {
        let mut current = member;
        // Each hop goes to a parent placed before; the bound guards against a malformed table.
        for _ in 0..self.members.len() {
            let Some(parent) = self
                .members
                .iter()
                .find(|m| m.peer == current)
                .and_then(|m| m.parent)
            else {
                return false;
            };
            if parent == ancestor {
                return true;
            }
            current = parent;
        }
        false
    }

    /// Places `asker` under a live parent and returns the parent. A member asking again keeps
    /// its parent while that one is connected; one whose parent went away (killed, or gone from
    /// the network) is placed again, under a member still there, and resumes from it.
    fn place(
        &mut self,
        asker: PeerId,
        region: Option<String>,
        alive: &dyn Fn(&PeerId) -> bool,
    ) -> PeerId {
        if let Some(index) = self.members.iter().position(|m| m.peer == asker) {
            let placed = &self.members[index];
            match placed.parent {
                None => return placed.peer,
                Some(parent) if alive(&parent) => return parent,
                Some(gone) => {
                    let placed = self.members.remove(index);
                    if let Some(old) = self.members.iter_mut().find(|m| m.peer == gone) {
                        old.followers = old.followers.saturating_sub(1);
                    }
                    // Its own followers stay with it: it keeps its place in their chains.
                    let followers = placed.followers;
                    let parent = self.place(asker, region, alive);
                    if let Some(again) = self.members.iter_mut().find(|m| m.peer == asker) {
                        again.followers = followers;
                    }
                    return parent;
                }
            }
        }
        let same_region = |m: &Placed| region.is_some() && m.region == region;
        let parent = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.followers < FANOUT
                    && m.peer != asker
                    && alive(&m.peer)
                    && !self.descends_from(m.peer, asker)
            })
            // Same region first, then shallowest, then the earliest to ask.
            .min_by_key(|(order, m)| (!same_region(m), m.depth, *order))
            .map(|(order, _)| order);
        let Some(parent) = parent.filter(|_| self.members.len() <= MAX_FOLLOWERS) else {
            return self.members[0].peer;
        };
        let parent = &mut self.members[parent];
        parent.followers += 1;
        let (parent_peer, depth) = (parent.peer, parent.depth.saturating_add(1));
        self.members.push(Placed {
            peer: asker,
            region,
            depth,
            parent: Some(parent_peer),
            followers: 0,
        });
        parent_peer
    }
}

#[derive(Debug, Default)]
struct ClaimTable {
    by_blob: HashMap<BlobDigest, Tree>,
    /// Claims in the order they were made (entries whose claim was replaced are skipped).
    order: VecDeque<(BlobDigest, Instant)>,
}

/// The claims this node keeps as a home; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims(Arc<Mutex<ClaimTable>>);

impl Claims {
    /// `asker`, in `region`, asks at `now` to fetch `digest`, every member being connected.
    #[cfg(test)]
    pub(crate) fn claim(
        &self,
        digest: BlobDigest,
        asker: PeerId,
        region: Option<String>,
        now: Instant,
    ) -> Claim {
        self.claim_among(digest, asker, region, now, &|_| true)
    }

    /// `asker`, in `region`, asks at `now` to fetch `digest`; `alive` says which members are still
    /// connected to this home. A claimant that went away lapses at once: the asker is granted the
    /// fetch (it resumes from the origin where it stopped, and the others re-home under it), so a
    /// killed claimant does not leave each of its followers to fetch the rest from the origin.
    pub(crate) fn claim_among(
        &self,
        digest: BlobDigest,
        asker: PeerId,
        region: Option<String>,
        now: Instant,
        alive: &dyn Fn(&PeerId) -> bool,
    ) -> Claim {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tree) = table.by_blob.get_mut(&digest) {
            let claimant = tree.members[0].peer;
            let lapsed = now.saturating_duration_since(tree.claimed_at) >= CLAIM_TTL;
            if !lapsed && (claimant == asker || alive(&claimant)) {
                if claimant == asker {
                    return Claim::Granted;
                }
                return Claim::Held(tree.place(asker, region, alive));
            }
        }
        table.by_blob.insert(digest, Tree::new(asker, region, now));
        table.order.push_back((digest, now));
        while table.by_blob.len() > MAX_CLAIMS || table.order.len() > 2 * MAX_CLAIMS {
            let Some((oldest, at)) = table.order.pop_front() else {
                break;
            };
            if table
                .by_blob
                .get(&oldest)
                .is_some_and(|tree| tree.claimed_at == at)
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
    use std::collections::HashMap;

    use super::*;

    fn digest(n: u64) -> BlobDigest {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        BlobDigest::from_bytes(bytes)
    }

    fn region(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    #[test]
    fn the_first_claimant_fetches_and_later_ones_follow_until_it_lapses() {
        let claims = Claims::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        assert_eq!(claims.claim(digest(1), a, None, now), Claim::Granted);
        assert_eq!(claims.claim(digest(1), b, None, now), Claim::Held(a));
        // Asking again is not a conflict with oneself, and a follower keeps its parent.
        assert_eq!(claims.claim(digest(1), a, None, now), Claim::Granted);
        assert_eq!(claims.claim(digest(1), b, None, now), Claim::Held(a));
        assert_eq!(claims.claim(digest(2), b, None, now), Claim::Granted);
        let later = now + CLAIM_TTL;
        assert_eq!(claims.claim(digest(1), b, None, later), Claim::Granted);
        assert_eq!(claims.claim(digest(1), a, None, later), Claim::Held(b));
    }

    #[test]
    fn followers_form_a_shallow_tree_with_bounded_fanout() {
        let claims = Claims::default();
        let now = Instant::now();
        let claimant = PeerId::random();
        assert_eq!(claims.claim(digest(1), claimant, None, now), Claim::Granted);
        let mut parent_of = HashMap::new();
        let mut followers: HashMap<PeerId, usize> = HashMap::new();
        for _ in 0..100 {
            let asker = PeerId::random();
            let Claim::Held(parent) = claims.claim(digest(1), asker, None, now) else {
                panic!("a second asker was granted the fetch");
            };
            assert_ne!(parent, asker);
            parent_of.insert(asker, parent);
            *followers.entry(parent).or_default() += 1;
        }
        assert!(followers.values().all(|&n| n <= usize::from(FANOUT)));
        let depth = |mut peer: PeerId| {
            let mut hops = 0;
            while let Some(&parent) = parent_of.get(&peer) {
                peer = parent;
                hops += 1;
                assert!(hops <= 100, "a loop in the tree");
            }
            assert_eq!(peer, claimant, "every chain ends at the claimant");
            hops
        };
        // 101 members in a binary tree filled breadth first: 7 levels below the claimant.
        let deepest = parent_of.keys().map(|&p| depth(p)).max().unwrap();
        assert_eq!(deepest, 6);
    }

    #[test]
    fn a_follower_is_placed_in_its_own_region_when_there_is_room() {
        let claims = Claims::default();
        let now = Instant::now();
        let (claimant, east_1, east_2, west_1, west_2) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        claims.claim(digest(1), claimant, region("west"), now);
        // Nobody in the east yet: the shallowest member with room.
        assert_eq!(
            claims.claim(digest(1), east_1, region("east"), now),
            Claim::Held(claimant)
        );
        // Now the east has a member: the next one follows it rather than cross regions again.
        assert_eq!(
            claims.claim(digest(1), east_2, region("east"), now),
            Claim::Held(east_1)
        );
        assert_eq!(
            claims.claim(digest(1), west_1, region("west"), now),
            Claim::Held(claimant)
        );
        // The claimant is full (FANOUT 2): the next westerner follows the other westerner.
        assert_eq!(
            claims.claim(digest(1), west_2, region("west"), now),
            Claim::Held(west_1)
        );
    }

    #[test]
    fn the_table_is_bounded_oldest_first() {
        let claims = Claims::default();
        let peer = PeerId::random();
        let now = Instant::now();
        for n in 0..(MAX_CLAIMS as u64 + 10) {
            claims.claim(digest(n), peer, None, now);
        }
        assert_eq!(claims.len(), MAX_CLAIMS);
        // The oldest went first: a new claimant gets it.
        assert_eq!(
            claims.claim(digest(0), PeerId::random(), None, now),
            Claim::Granted
        );
        assert_eq!(
            claims.claim(digest(MAX_CLAIMS as u64 + 9), PeerId::random(), None, now),
            Claim::Held(peer)
        );
    }

    #[test]
    fn a_claimant_that_went_away_hands_the_fetch_to_the_next_asker_and_the_tree_regrows() {
        let claims = Claims::default();
        let now = Instant::now();
        let (claimant, a, b, c) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let everyone = |_: &PeerId| true;
        claims.claim_among(digest(1), claimant, None, now, &everyone);
        assert_eq!(
            claims.claim_among(digest(1), a, None, now, &everyone),
            Claim::Held(claimant)
        );
        assert_eq!(
            claims.claim_among(digest(1), b, None, now, &everyone),
            Claim::Held(claimant)
        );
        // The claimant is killed; its followers ask again.
        let without = |peer: &PeerId| *peer != claimant;
        assert_eq!(
            claims.claim_among(digest(1), a, None, now, &without),
            Claim::Granted
        );
        assert_eq!(
            claims.claim_among(digest(1), b, None, now, &without),
            Claim::Held(a)
        );
        assert_eq!(
            claims.claim_among(digest(1), c, None, now, &without),
            Claim::Held(a)
        );
        // Back after a restart, the old claimant is only a follower now.
        assert_eq!(
            claims.claim_among(digest(1), claimant, None, now, &everyone),
            Claim::Held(b)
        );
    }

    #[test]
    fn a_follower_whose_parent_went_away_is_placed_again_under_a_live_member() {
        let claims = Claims::default();
        let now = Instant::now();
        let everyone = |_: &PeerId| true;
        let claimant = PeerId::random();
        claims.claim_among(digest(1), claimant, None, now, &everyone);
        let (a, b) = (PeerId::random(), PeerId::random());
        claims.claim_among(digest(1), a, None, now, &everyone);
        claims.claim_among(digest(1), b, None, now, &everyone);
        // The claimant is full: the next one follows `a`.
        let deep = PeerId::random();
        assert_eq!(
            claims.claim_among(digest(1), deep, None, now, &everyone),
            Claim::Held(a)
        );
        // `a` dies: `deep` asks again and is placed under a live member, never under `a`.
        let without_a = |peer: &PeerId| *peer != a;
        let Claim::Held(parent) = claims.claim_among(digest(1), deep, None, now, &without_a) else {
            panic!("the claimant is alive: nobody else is granted the fetch");
        };
        assert_ne!(parent, a);
        assert_ne!(parent, deep);
        // Asked again, it keeps that parent.
        assert_eq!(
            claims.claim_among(digest(1), deep, None, now, &without_a),
            Claim::Held(parent)
        );
    }

    #[test]
    fn a_member_placed_again_is_never_put_under_its_own_followers() {
        let (claimant, x, y, a, a1) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let placed = |peer, depth, parent, followers| Placed {
            peer,
            region: None,
            depth,
            parent,
            followers,
        };
        // Everyone is full but `a`'s own follower `a1`; `a`'s parent `x` went away.
        let mut tree = Tree {
            claimed_at: Instant::now(),
            members: vec![
                placed(claimant, 0, None, FANOUT),
                placed(x, 1, Some(claimant), 1),
                placed(y, 1, Some(claimant), FANOUT),
                placed(a, 2, Some(x), 1),
                placed(a1, 3, Some(a), 0),
            ],
        };
        let without_x = |peer: &PeerId| *peer != x;
        let parent = tree.place(a, None, &without_x);
        assert_ne!(parent, a1, "placed under its own follower: a loop");
        assert_eq!(parent, claimant, "with no room left, the claimant");
        // A newcomer may follow `a1`.
        assert_eq!(tree.place(PeerId::random(), None, &without_x), a1);
    }

    #[test]
    fn a_full_tree_sends_later_followers_to_the_claimant() {
        let claims = Claims::default();
        let now = Instant::now();
        let claimant = PeerId::random();
        claims.claim(digest(1), claimant, None, now);
        for _ in 0..MAX_FOLLOWERS {
            claims.claim(digest(1), PeerId::random(), None, now);
        }
        assert_eq!(
            claims.claim(digest(1), PeerId::random(), None, now),
            Claim::Held(claimant)
        );
    }
}
