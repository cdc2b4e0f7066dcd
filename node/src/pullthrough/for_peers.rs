//! What this node offers peers for blobs it has not committed: the flights it is running, shard by
//! shard.
//!
//! A flight is offered only once its source is known. A flight that follows another flight is
//! offered too, so followers form trees (the blob's home places them, see `p2p::claims`). They
//! never form loops: a flight picks its source once, among flights whose source was already
//! known, and when that source fails it goes on from the origin, never from another flight. Peers
//! never make this node fetch anything.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use shoal_proto::BlobDigest;

use super::flight::{Flight, FlightSource, NextShard};
use super::PullThrough;
use crate::p2p::{InFlightBlob, InFlightBlobs, InFlightShard, Offer};

/// How long a peer's request waits for a new flight to pick its source before it is told no.
const SOURCE_WAIT: Duration = Duration::from_secs(15);

/// The pull-through cache's flights, offered to peers.
#[derive(Clone)]
pub struct PeerOffers {
    pull: PullThrough,
}

impl PeerOffers {
    /// Offers `pull`'s flights.
    pub fn new(pull: PullThrough) -> Self {
        Self { pull }
    }

    fn flight(&self, digest: &BlobDigest) -> Option<Arc<Flight>> {
        self.pull
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    async fn offer_now(self, digest: BlobDigest, wait: bool) -> Offer {
        let Some(flight) = self.flight(&digest) else {
            return self.stored_or_not(&digest);
        };
        let mut changes = flight.watch();
        let limit = if wait { SOURCE_WAIT } else { Duration::ZERO };
        let decided = tokio::time::timeout(limit, async {
            loop {
                changes.borrow_and_update();
                if let Some(source) = flight.source() {
                    return source;
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match decided {
            Ok(Some(source)) => Offer::InFlight(self.follow(flight, digest, source)),
            Err(_) => Offer::NotHere,
            // The flight ended before it could be offered: committed, or failed.
            Ok(None) => self.stored_or_not(&digest),
        }
    }

    fn stored_or_not(&self, digest: &BlobDigest) -> Offer {
        match self.pull.store.shard_map(digest) {
            Ok(Some(_)) => Offer::Stored,
            _ => Offer::NotHere,
        }
    }

    /// The flight's shards in order, read from the files the ingest wrote, as they are written.
    fn follow(
        &self,
        flight: Arc<Flight>,
        digest: BlobDigest,
        source: FlightSource,
    ) -> InFlightBlob {
        tracing::debug!(%digest, ?source, "a peer follows this flight");
        let guard = self.pull.store.register_reader(digest);
        let changes = flight.watch();
        let header = shoal_proto::wire::InFlightHeader {
            blob_len: flight.total(),
            // Peer shards are stored as they come only when their layout is this store's, so a
            // flight's shards are always cut with this store's settings.
            chunking: self.pull.store.chunking(),
        };
        let shards = futures::stream::unfold(
            (flight, changes, 0usize, guard),
            |(flight, mut changes, index, guard)| async move {
                loop {
                    changes.borrow_and_update();
                    match flight.shard(index) {
                        NextShard::Ready(shard) => {
                            let read = tokio::task::spawn_blocking(move || {
                                let bytes = std::fs::read(&shard.path)?;
                                if bytes.len() != shard.len as usize {
                                    return Err(std::io::Error::other(
                                        "shard file has the wrong length",
                                    ));
                                }
                                Ok(InFlightShard {
                                    hash: *shard.hash.as_bytes(),
                                    bytes: bytes.into(),
                                })
                            })
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                            return Some((read, (flight, changes, index + 1, guard)));
                        }
                        NextShard::End => return None,
                        NextShard::Failed => {
                            return Some((
                                Err(std::io::Error::other("the fetch failed")),
                                (flight, changes, index, guard),
                            ))
                        }
                        NextShard::Wait => {
                            if changes.changed().await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            },
        )
        // After an error the stream ends.
        .scan(false, |failed, item| {
            let stop = *failed;
            *failed = item.is_err();
            futures::future::ready((!stop).then_some(item))
        })
        .boxed();
        InFlightBlob { header, shards }
    }
}

impl InFlightBlobs for PeerOffers {
    fn offer(&self, digest: BlobDigest, wait: bool) -> BoxFuture<'static, Offer> {
        self.clone().offer_now(digest, wait).boxed()
    }
}
