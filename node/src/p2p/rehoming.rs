//! The node's side of re-homing away from a member that failed it: asking the blob's home, or
//! deciding as the home when that is this node, for another place in the blob's tree than under
//! the failed member (`ClaimAsk::WhoElseFetches`; the home's decision is in `claims`).
//!
//! Owns no state: the decision is `claims`', the loop around it `assembly::rehome`'s.

use std::time::Instant;

use libp2p::PeerId;
use shoal_proto::wire::{ClaimAsk, MapWanted, ShardRequest, ShardSet};
use shoal_proto::BlobDigest;

use super::claims::Claim;
use super::transfer::{self, PeerAnswer, TransferError};
use super::{PeerNetwork, NOT_READY};

impl PeerNetwork {
    /// As the blob's home, places this node again in `digest`'s tree anywhere but under `failed`,
    /// which failed it mid-blob: the member to follow, or `None` when this node fetches the rest
    /// from the origin (see `claims`).
    pub fn claim_locally_instead_of(&self, digest: BlobDigest, failed: PeerId) -> Option<PeerId> {
        let region = Some(self.region.clone());
        match self
            .claims
            .claim_instead_of(digest, self.local, failed, region, Instant::now())
        {
            Claim::Granted => None,
            Claim::Held(parent) => Some(parent),
        }
    }

    /// Asks `home`, the blob's home, for another place in `digest`'s tree than under `failed`:
    /// `Claimed(member)` to follow, or `Err(NotHere)` to fetch the rest from the origin. A home
    /// that predates re-homing requests refuses this one (an error of the stream).
    pub async fn request_instead_of(
        &self,
        home: PeerId,
        digest: BlobDigest,
        failed: PeerId,
    ) -> Result<PeerAnswer, TransferError> {
        if !self.ready(home).await {
            return Err(TransferError::Open(NOT_READY.into()));
        }
        let request = ShardRequest {
            blob: *digest.as_bytes(),
            shards: ShardSet::Bitfield(Vec::new()),
            map: MapWanted::Full,
            claim: ClaimAsk::WhoElseFetches,
        };
        transfer::request(
            self.control.clone(),
            home,
            request,
            Some(failed),
            self.peers.begin_request(home),
        )
        .await
    }
}
