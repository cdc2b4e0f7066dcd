//! Keeps a fetch's place in its blob's tree at the blob's home while the fetch runs: the thin
//! shell around `p2p::claims`' leases. Every [`crate::p2p::RENEW_CLAIM_EVERY`] it renews the claim
//! while the fetch takes the blob from the origin, or the place as a follower while it follows a
//! member; it renews nothing while the fetch takes stored copies, which follow nobody. Dropped
//! with the fetch, it stops, and the lease runs out at the home: that is how the home learns a
//! fetch ended or its node was killed, without a connection to it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use shoal_proto::BlobDigest;

use crate::p2p::{PeerNetwork, RENEW_CLAIM_EVERY};

/// What the fetch does now, as far as the blob's tree is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum LeaseRole {
    /// Taking stored copies, or not started: nothing to renew.
    Outside = 0,
    /// Fetching from the origin: the claimant.
    FromOrigin = 1,
    /// Following a member that fetches the blob.
    Following = 2,
}

/// Renews a fetch's lease until dropped.
pub(super) struct ClaimLease {
    role: Arc<AtomicU8>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ClaimLease {
    /// Starts renewing `digest`'s lease through `peers` (nothing without a peer network).
    pub(super) fn start(peers: Option<&PeerNetwork>, digest: BlobDigest) -> Self {
        let role = Arc::new(AtomicU8::new(LeaseRole::Outside as u8));
        let task = peers.cloned().map(|peers| {
            let role = role.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(RENEW_CLAIM_EVERY);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick is immediate; the claim was just made.
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    match role.load(Ordering::Relaxed) {
                        r if r == LeaseRole::FromOrigin as u8 => {
                            peers.renew_claim(digest, true).await
                        }
                        r if r == LeaseRole::Following as u8 => {
                            peers.renew_claim(digest, false).await
                        }
                        _ => {}
                    }
                }
            })
        });
        ClaimLease { role, task }
    }

    /// The fetch now does `role`.
    pub(super) fn set(&self, role: LeaseRole) {
        self.role.store(role as u8, Ordering::Relaxed);
    }
}

impl Drop for ClaimLease {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
