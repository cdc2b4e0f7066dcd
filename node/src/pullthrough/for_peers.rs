//! What this node offers peers for blobs it has not committed: the flights it is running, shard by
//! shard, and, as a blob's home, a fetch started on a peer's behalf.
//!
//! A flight is offered only once its source is known and only when its bytes do not come from
//! another flight (see [`FlightSource::shareable`]), so followers form trees, never loops. A fetch
//! for a peer only ever goes to an upstream configured here under the name the peer gave.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use shoal_proto::wire::FetchHint;
use shoal_proto::{BlobDigest, RepoName};

use super::blobs::FetchFor;
use super::flight::{Flight, FlightSource, NextShard};
use super::PullThrough;
use crate::p2p::{InFlightBlob, InFlightBlobs, InFlightShard, Offer};
use crate::upstream::Upstream;

/// How long a peer's request waits for a new flight to pick its source before it is told no.
const SOURCE_WAIT: Duration = Duration::from_secs(15);

/// The pull-through cache's flights, offered to peers.
#[derive(Clone)]
pub struct PeerOffers {
    pull: PullThrough,
    upstreams: Arc<BTreeMap<String, Upstream>>,
}

impl PeerOffers {
    /// Offers `pull`'s flights; fetches for peers may use `upstreams`.
    pub fn new(pull: PullThrough, upstreams: BTreeMap<String, Upstream>) -> Self {
        Self {
            pull,
            upstreams: Arc::new(upstreams),
        }
    }

    fn flight(&self, digest: &BlobDigest) -> Option<Arc<Flight>> {
        self.pull
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Starts (or joins) a fetch of `digest` for a peer, if the hint names an upstream and a
    /// repository this node accepts.
    fn fetch_for_peer(&self, digest: BlobDigest, hint: &FetchHint) -> Option<Arc<Flight>> {
        let upstream = self.upstreams.get(&hint.upstream)?;
        let repo: RepoName = hint.repo.parse().ok()?;
        match self
            .pull
            .join_or_start_flight(upstream, &repo, digest, FetchFor::Peer)
        {
            Ok(flight) => {
                if flight.is_some() {
                    tracing::info!(%digest, %repo, upstream = upstream.name(), "fetching a blob for a peer (this node is its home)");
                }
                flight
            }
            Err(error) => {
                tracing::warn!(%digest, %error, "cannot fetch a blob for a peer");
                None
            }
        }
    }

    async fn offer_now(self, digest: BlobDigest, hint: Option<FetchHint>) -> Offer {
        let flight = match self.flight(&digest) {
            Some(flight) => flight,
            None => match hint.and_then(|hint| self.fetch_for_peer(digest, &hint)) {
                Some(flight) => flight,
                None => return self.stored_or_not(&digest),
            },
        };
        let mut changes = flight.watch();
        let decided = tokio::time::timeout(SOURCE_WAIT, async {
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
            Ok(Some(source)) if source.shareable() => {
                Offer::InFlight(self.follow(flight, digest, source))
            }
            Ok(Some(_)) | Err(_) => Offer::NotHere,
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
    fn offer(&self, digest: BlobDigest, fetch: Option<FetchHint>) -> BoxFuture<'static, Offer> {
        self.clone().offer_now(digest, fetch).boxed()
    }
}
