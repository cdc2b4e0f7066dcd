//! Who fetches a blob from the origin, and whom everyone else follows, as recorded by the blob's
//! home.
//!
//! The first member to ask (or the home itself) is granted the origin fetch. Everyone asking
//! after it is given a parent to follow, chosen to build a tree rather than a star: a member of
//! the asker's own region if one has room, else the shallowest member with room, where room means
//! fewer than [`FANOUT`] followers. So one origin copy enters the network, each member uploads at
//! most [`FANOUT`] copies while it downloads one, and the tree is about `log_FANOUT(N)` deep.
//!
//! **Leases, not connections.** A place in a tree (the claim itself, or a follower's place) is a
//! lease of [`LEASE`]: each member renews it every [`RENEW_EVERY`] while its fetch runs, over a
//! stream it opens to the home (`ClaimAsk::StillFetchingFromOrigin` or `StillFollowing`), and
//! asking the home again renews it too. A member whose lease ran out (killed, or its fetch ended)
//! is no longer given followers, and a claim whose claimant's lease ran out passes to the next
//! asker, which resumes from the origin where it stopped while the others re-home under it. The
//! home never needs a connection to a member to know it is alive: with thousands of daemons per
//! region a home cannot be connected to every member of every tree, and whether it happens to be
//! connected says nothing about whether the member still fetches. A follower whose parent stops
//! answering asks the home again; while the parent's lease still runs it is named again, and the
//! follower asks once more a little later (`assembly::rehome`), so a parent that died is replaced
//! within [`LEASE`] and one that lives is not abandoned.
//!
//! **Re-homing away from a member that failed.** A member whose parent (or the holder whose map
//! led) failed it mid-blob names that member when it asks again ([`Claims::claim_instead_of`]):
//! the home places it under another live member of the tree (one with room first, in its region
//! first, and one that does not fetch through the failed member first), never under the failed
//! one nor under its own followers, and grants it the rest from the origin only when no such
//! member is left. A member granted the rest that way becomes a second root of the tree, so the
//! next member the same member fails follows it instead of fetching the blob a third time. Without this the home named the failed member again until that member's lease
//! ran out (a parent that finished its own fetch renews nothing, so 10 s later the asker went to
//! the origin while the rest of the tree finished a second later). The failed member keeps its
//! place for the others: one member's word does not evict another.
//!
//! A renewal never places anyone: only the claimant renewing a claim that lapsed (or one this home
//! never saw, after a restart or a change of home) takes it back, since it follows nobody. A tree
//! records who follows whom exactly as the home told them; placing a member where it does not
//! really fetch from could make two fetches wait on each other.
//!
//! Bounded: at most [`MAX_CLAIMS`] blobs, the oldest claim dropped first, and at most
//! [`MAX_FOLLOWERS`] followers placed per blob (later ones follow the claimant).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_proto::BlobDigest;

/// How long a place in a tree (the claim included) holds without being renewed.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a member fetching a blob renews its place at the blob's home.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
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

/// What a member renewing its lease says it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// It fetches the blob from the origin (it is the claimant, or believes it is).
    FromOrigin,
    /// It follows another member (or takes a stored copy).
    Following,
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
    /// When it last asked or renewed.
    renewed_at: Instant,
}

impl Placed {
    fn alive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.renewed_at) < LEASE
    }
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
                renewed_at: now,
            }],
        }
    }

    /// Whether the claimant still renews its claim.
    fn live(&self, now: Instant) -> bool {
        self.members[0].alive(now)
    }

    /// Renews `peer`'s lease, if it has a place.
    fn renew(&mut self, peer: PeerId, now: Instant) -> bool {
        match self.members.iter_mut().find(|m| m.peer == peer) {
            Some(placed) => {
                placed.renewed_at = now;
                true
            }
            None => false,
        }
    }

    fn alive(&self, peer: PeerId, now: Instant) -> bool {
        self.members.iter().any(|m| m.peer == peer && m.alive(now))
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

    /// Whether `peer` fetches from the origin in this tree: the claimant, or a member granted the
    /// rest beside it because no one else could take it ([`Self::place_avoiding`]).
    fn fetches_from_origin(&self, peer: PeerId) -> bool {
        self.members
            .iter()
            .any(|m| m.peer == peer && m.parent.is_none())
    }

    /// Places `asker` again, anywhere but under `failed` (which failed it) or its own followers:
    /// under a live member with room, in its region, that does not fetch through `failed`,
    /// preferring each of these in that order, then the shallowest and earliest. `None` when no
    /// such member is live: the asker fetches the rest from the origin, and is recorded as a root
    /// of the tree beside the claimant (with its followers), so that the next member the same
    /// member fails is placed under it instead of being granted a second fetch.
    fn place_avoiding(
        &mut self,
        asker: PeerId,
        failed: PeerId,
        region: Option<String>,
        now: Instant,
    ) -> Option<PeerId> {
        // Its own followers stay with it: it keeps its place in their chains.
        let followers = match self.members.iter().position(|m| m.peer == asker) {
            Some(index) => {
                let placed = self.members.remove(index);
                if let Some(old) = placed
                    .parent
                    .and_then(|parent| self.members.iter_mut().find(|m| m.peer == parent))
                {
                    old.followers = old.followers.saturating_sub(1);
                }
                placed.followers
            }
            None => 0,
        };
        let same_region = |m: &Placed| region.is_some() && m.region == region;
        let parent = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.peer != asker
                    && m.peer != failed
                    && m.alive(now)
                    && !self.descends_from(m.peer, asker)
            })
            .min_by_key(|(order, m)| {
                (
                    self.descends_from(m.peer, failed),
                    m.followers >= FANOUT,
                    !same_region(m),
                    m.depth,
                    *order,
                )
            })
            .map(|(order, _)| order);
        let Some(parent) = parent else {
            self.members.push(Placed {
                peer: asker,
                region,
                depth: 0,
                parent: None,
                followers,
                renewed_at: now,
            });
            return None;
        };
        let parent = &mut self.members[parent];
        parent.followers = parent.followers.saturating_add(1);
        let (parent_peer, depth) = (parent.peer, parent.depth.saturating_add(1));
        self.members.push(Placed {
            peer: asker,
            region,
            depth,
            parent: Some(parent_peer),
            followers,
            renewed_at: now,
        });
        Some(parent_peer)
    }

    /// Places `asker` under a parent whose lease runs and returns the parent. A member asking
    /// again renews its own lease and keeps its parent while that one's lease runs; one whose
    /// parent's lease ran out is placed again, under a member still renewing, and resumes from it.
    fn place(&mut self, asker: PeerId, region: Option<String>, now: Instant) -> PeerId {
        if let Some(index) = self.members.iter().position(|m| m.peer == asker) {
            self.members[index].renewed_at = now;
            let placed = &self.members[index];
            match placed.parent {
                None => return placed.peer,
                Some(parent) if self.alive(parent, now) => return parent,
                Some(gone) => {
                    let placed = self.members.remove(index);
                    if let Some(old) = self.members.iter_mut().find(|m| m.peer == gone) {
                        old.followers = old.followers.saturating_sub(1);
                    }
                    // Its own followers stay with it: it keeps its place in their chains.
                    let followers = placed.followers;
                    let parent = self.place(asker, region, now);
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
                    && m.alive(now)
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
            renewed_at: now,
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

impl ClaimTable {
    /// Records `claimant` as the one that fetches `digest`, replacing a lapsed tree.
    fn grant(
        &mut self,
        digest: BlobDigest,
        claimant: PeerId,
        region: Option<String>,
        now: Instant,
    ) {
        self.by_blob
            .insert(digest, Tree::new(claimant, region, now));
        self.order.push_back((digest, now));
        while self.by_blob.len() > MAX_CLAIMS || self.order.len() > 2 * MAX_CLAIMS {
            let Some((oldest, at)) = self.order.pop_front() else {
                break;
            };
            if self
                .by_blob
                .get(&oldest)
                .is_some_and(|tree| tree.claimed_at == at)
            {
                self.by_blob.remove(&oldest);
            }
        }
    }
}

/// The claims this node keeps as a home; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims(Arc<Mutex<ClaimTable>>);

impl Claims {
    /// `asker`, in `region`, asks at `now` to fetch `digest`. While the claimant's lease runs,
    /// the asker is placed in its tree; once it ran out (the claimant was killed or its fetch
    /// ended), the asker is granted the fetch and a new tree grows under it.
    pub(crate) fn claim(
        &self,
        digest: BlobDigest,
        asker: PeerId,
        region: Option<String>,
        now: Instant,
    ) -> Claim {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tree) = table.by_blob.get_mut(&digest).filter(|t| t.live(now)) {
            if tree.fetches_from_origin(asker) {
                tree.renew(asker, now);
                return Claim::Granted;
            }
            return Claim::Held(tree.place(asker, region, now));
        }
        table.grant(digest, asker, region, now);
        Claim::Granted
    }

    /// `asker`, in `region`, asks at `now` again for `digest` because `failed` (its parent, or the
    /// holder whose map led) failed it mid-blob. While the claimant's lease runs, the asker is
    /// placed under another live member of the tree, never `failed` (see the module docs), or,
    /// when none is left, let fetch the rest from the origin beside the tree (not as its claimant:
    /// the claimant still renews; as a second root, under which the next member `failed` fails is
    /// placed). Once the claimant's lease ran out, the asker is granted the
    /// fetch as [`Self::claim`] grants it.
    pub(crate) fn claim_instead_of(
        &self,
        digest: BlobDigest,
        asker: PeerId,
        failed: PeerId,
        region: Option<String>,
        now: Instant,
    ) -> Claim {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tree) = table.by_blob.get_mut(&digest).filter(|t| t.live(now)) else {
            table.grant(digest, asker, region, now);
            return Claim::Granted;
        };
        if tree.fetches_from_origin(asker) {
            tree.renew(asker, now);
            return Claim::Granted;
        }
        match tree.place_avoiding(asker, failed, region, now) {
            Some(parent) => Claim::Held(parent),
            None => Claim::Granted,
        }
    }

    /// `member`, in `region`, renews at `now` its lease in `digest`'s tree, saying what it does.
    /// A member of the live tree is renewed; the claimant of a lapsed (or unknown) claim that
    /// still fetches from the origin takes it back. Anyone else is ignored: a renewal never
    /// places a member. Returns whether a lease was renewed.
    pub(crate) fn renew(
        &self,
        digest: BlobDigest,
        member: PeerId,
        renewal: Renewal,
        region: Option<String>,
        now: Instant,
    ) -> bool {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match table.by_blob.get_mut(&digest).filter(|t| t.live(now)) {
            Some(tree) => tree.renew(member, now),
            None if renewal == Renewal::FromOrigin => {
                table.grant(digest, member, region, now);
                true
            }
            None => false,
        }
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
        let later = now + LEASE;
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
    fn a_claimant_that_stops_renewing_hands_the_fetch_to_the_next_asker_and_the_tree_regrows() {
        let claims = Claims::default();
        let start = Instant::now();
        let (claimant, a, b, c) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        claims.claim(digest(1), claimant, None, start);
        assert_eq!(
            claims.claim(digest(1), a, None, start),
            Claim::Held(claimant)
        );
        assert_eq!(
            claims.claim(digest(1), b, None, start),
            Claim::Held(claimant)
        );
        // The claimant is killed just after; its followers keep renewing.
        let mut now = start;
        while now + RENEW_EVERY < start + LEASE {
            now += RENEW_EVERY;
            assert!(claims.renew(digest(1), a, Renewal::Following, None, now));
            assert!(claims.renew(digest(1), b, Renewal::Following, None, now));
        }
        now = start + LEASE;
        // Its lease ran out: the first follower to ask again resumes from the origin, and the
        // others are placed under it.
        assert_eq!(claims.claim(digest(1), a, None, now), Claim::Granted);
        assert_eq!(claims.claim(digest(1), b, None, now), Claim::Held(a));
        assert_eq!(claims.claim(digest(1), c, None, now), Claim::Held(a));
        // Back after a restart, the old claimant is only a follower now.
        assert_eq!(claims.claim(digest(1), claimant, None, now), Claim::Held(b));
    }

    #[test]
    fn a_claimant_that_renews_keeps_its_claim_however_long_its_fetch_takes() {
        let claims = Claims::default();
        let start = Instant::now();
        let claimant = PeerId::random();
        claims.claim(digest(1), claimant, None, start);
        let mut now = start;
        for _ in 0..100 {
            now += RENEW_EVERY;
            assert!(claims.renew(digest(1), claimant, Renewal::FromOrigin, None, now));
        }
        assert!(now - start > 10 * LEASE);
        assert_eq!(
            claims.claim(digest(1), PeerId::random(), None, now),
            Claim::Held(claimant),
            "a second claimant would fetch the blob from the origin again"
        );
    }

    #[test]
    fn a_follower_whose_parent_stopped_renewing_is_placed_again_under_a_live_member() {
        let claims = Claims::default();
        let start = Instant::now();
        let claimant = PeerId::random();
        claims.claim(digest(1), claimant, None, start);
        let (a, b) = (PeerId::random(), PeerId::random());
        claims.claim(digest(1), a, None, start);
        claims.claim(digest(1), b, None, start);
        // The claimant is full: the next one follows `a`.
        let deep = PeerId::random();
        assert_eq!(claims.claim(digest(1), deep, None, start), Claim::Held(a));
        // `deep` loses `a` at once and asks again: `a`'s lease still runs, so it is named again
        // (it may only have been slow); `deep` asks again later.
        assert_eq!(claims.claim(digest(1), deep, None, start), Claim::Held(a));
        // `a` was killed: everyone else renews, `a` does not.
        let mut now = start;
        while now < start + LEASE {
            now += RENEW_EVERY;
            for member in [claimant, b, deep] {
                assert!(claims.renew(digest(1), member, Renewal::Following, None, now));
            }
        }
        let Claim::Held(parent) = claims.claim(digest(1), deep, None, now) else {
            panic!("the claimant renews: nobody else is granted the fetch");
        };
        assert_ne!(parent, a);
        assert_ne!(parent, deep);
        // Asked again, it keeps that parent.
        assert_eq!(
            claims.claim(digest(1), deep, None, now),
            Claim::Held(parent)
        );
    }

    #[test]
    fn a_renewal_never_places_a_member_and_only_an_origin_fetch_takes_a_lapsed_claim_back() {
        let claims = Claims::default();
        let now = Instant::now();
        let (claimant, stranger) = (PeerId::random(), PeerId::random());
        // Nothing recorded (this home restarted): a follower's renewal changes nothing, the
        // claimant's takes the claim back so that later askers follow it.
        assert!(!claims.renew(digest(1), stranger, Renewal::Following, None, now));
        assert_eq!(claims.len(), 0);
        assert!(claims.renew(digest(1), claimant, Renewal::FromOrigin, None, now));
        assert_eq!(
            claims.claim(digest(1), PeerId::random(), None, now),
            Claim::Held(claimant)
        );
        // A live tree: a renewal from someone the home never placed places nobody.
        assert!(!claims.renew(digest(1), stranger, Renewal::FromOrigin, None, now));
        assert_eq!(
            claims.0.lock().unwrap().by_blob[&digest(1)].members.len(),
            2
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
        let start = Instant::now();
        let now = start + LEASE;
        // Everyone renewed at `now` but `x`, whose lease ran out.
        let placed = |peer, depth, parent, followers| Placed {
            peer,
            region: None,
            depth,
            parent,
            followers,
            renewed_at: if peer == x { start } else { now },
        };
        // Everyone is full but `a`'s own follower `a1`; `a`'s parent `x` went away.
        let mut tree = Tree {
            claimed_at: start,
            members: vec![
                placed(claimant, 0, None, FANOUT),
                placed(x, 1, Some(claimant), 1),
                placed(y, 1, Some(claimant), FANOUT),
                placed(a, 2, Some(x), 1),
                placed(a1, 3, Some(a), 0),
            ],
        };
        let parent = tree.place(a, None, now);
        assert_ne!(parent, a1, "placed under its own follower: a loop");
        assert_eq!(parent, claimant, "with no room left, the claimant");
        // A newcomer may follow `a1`.
        assert_eq!(tree.place(PeerId::random(), None, now), a1);
    }

    #[test]
    fn a_member_failed_by_its_parent_is_placed_under_another_live_member_at_once() {
        let claims = Claims::default();
        let now = Instant::now();
        let (claimant, a, b, c) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        claims.claim(digest(1), claimant, region("eu"), now);
        assert_eq!(
            claims.claim(digest(1), a, region("eu"), now),
            Claim::Held(claimant)
        );
        assert_eq!(
            claims.claim(digest(1), b, region("eu"), now),
            Claim::Held(claimant)
        );
        assert_eq!(
            claims.claim(digest(1), c, region("eu"), now),
            Claim::Held(a)
        );
        // `a` fails `c` while `a`'s lease still runs: a plain claim names `a` again...
        assert_eq!(
            claims.claim(digest(1), c, region("eu"), now),
            Claim::Held(a)
        );
        // ...but naming `a` places `c` elsewhere at once: `b`, with room and not under `a`.
        assert_eq!(
            claims.claim_instead_of(digest(1), c, a, region("eu"), now),
            Claim::Held(b)
        );
        // `a` keeps its place for the others: it lost `c` as a follower only.
        let d = PeerId::random();
        assert_eq!(
            claims.claim(digest(1), d, region("eu"), now),
            Claim::Held(a)
        );
        // Asked plainly again, `c` keeps its new parent.
        assert_eq!(
            claims.claim(digest(1), c, region("eu"), now),
            Claim::Held(b)
        );
    }

    #[test]
    fn a_claimant_that_failed_its_follower_is_never_named_to_it_again() {
        let claims = Claims::default();
        let now = Instant::now();
        let (liar, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        claims.claim(digest(1), liar, None, now);
        assert_eq!(claims.claim(digest(1), a, None, now), Claim::Held(liar));
        assert_eq!(claims.claim(digest(1), b, None, now), Claim::Held(liar));
        // `a` got bad bytes from the claimant: it goes under `b`, which fetches through the liar
        // too but is the only member left (its sha256 decides in the end).
        assert_eq!(
            claims.claim_instead_of(digest(1), a, liar, None, now),
            Claim::Held(b)
        );
        // `b` is failed by the liar as well: nobody else is left (`a` follows `b`), so `b`
        // fetches the rest from the origin, beside the tree whose claimant still renews.
        assert_eq!(
            claims.claim_instead_of(digest(1), b, liar, None, now),
            Claim::Granted
        );
        // The liar stays the claimant for others: one member's word evicts nobody.
        assert_eq!(
            claims.claim(digest(1), PeerId::random(), None, now),
            Claim::Held(liar)
        );
        // `b` is recorded as fetching from the origin: asking or renewing keeps it so, and the
        // next member the liar fails is placed under `b` rather than granted a third fetch.
        assert_eq!(claims.claim(digest(1), b, None, now), Claim::Granted);
        assert!(claims.renew(digest(1), b, Renewal::FromOrigin, None, now + LEASE / 2));
        let c = PeerId::random();
        assert_eq!(claims.claim(digest(1), c, None, now), Claim::Held(liar));
        assert_eq!(
            claims.claim_instead_of(digest(1), c, liar, None, now),
            Claim::Held(b)
        );
    }

    #[test]
    fn a_re_homed_member_prefers_members_that_do_not_fetch_through_the_one_that_failed() {
        let (claimant, x, y, x1, asker) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let now = Instant::now();
        let placed = |peer, depth, parent, followers| Placed {
            peer,
            region: None,
            depth,
            parent,
            followers,
            renewed_at: now,
        };
        // `x1` (under `x`, with room) would come first by room; `y` is full but not under `x`.
        let mut tree = Tree {
            claimed_at: now,
            members: vec![
                placed(claimant, 0, None, FANOUT),
                placed(x, 1, Some(claimant), 2),
                placed(y, 1, Some(claimant), FANOUT),
                placed(x1, 2, Some(x), 0),
                placed(asker, 2, Some(x), 0),
            ],
        };
        assert_eq!(tree.place_avoiding(asker, x, None, now), Some(claimant));
        // Counted: `x` lost a follower, the claimant gained one (over its fanout: it redirects).
        assert_eq!(tree.members[1].followers, 1);
        assert_eq!(tree.members[0].followers, FANOUT + 1);
        // With no `y` and the claimant's lease run out, only `x1` is left, and it is taken.
        let mut tree = Tree {
            claimed_at: now,
            members: vec![
                placed(claimant, 0, None, 1),
                placed(x, 1, Some(claimant), 2),
                placed(x1, 2, Some(x), 0),
                placed(asker, 2, Some(x), 0),
            ],
        };
        tree.members[0].renewed_at = now - LEASE;
        assert_eq!(tree.place_avoiding(asker, x, None, now), Some(x1));
    }

    #[test]
    fn a_member_named_as_failed_after_the_claimant_lapsed_is_granted_the_fetch() {
        let claims = Claims::default();
        let start = Instant::now();
        let (claimant, a) = (PeerId::random(), PeerId::random());
        claims.claim(digest(1), claimant, None, start);
        claims.claim(digest(1), a, None, start);
        let later = start + LEASE;
        assert_eq!(
            claims.claim_instead_of(digest(1), a, claimant, None, later),
            Claim::Granted
        );
        assert_eq!(
            claims.claim(digest(1), claimant, None, later),
            Claim::Held(a)
        );
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
