//! Fetching a blob into the store ahead of demand (a preheat): the same flight a client's request
//! would start or join, drained instead of sent, with its progress and where its bytes came from.
//! A fetch started here makes its shards durable as they are written
//! ([`Durability::AsWritten`]): no client waits for its last byte.
//!
//! Nothing here decides *whether* to fetch: the preheat module asks. Like a client's fetch, it
//! asks peers (and the blob's home) before the origin, and only bytes that matched the blob's
//! sha256 are committed.

use futures::StreamExt as _;
use shoal_proto::{BlobDigest, RepoName};
use tokio::sync::watch;

use super::flight::{FlightSource, Outcome};
use super::{PullError, PullThrough};
use crate::store::Durability;
use crate::upstream::Upstream;

/// What a preheat fetch found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warmed {
    /// The blob was already stored.
    AlreadyThere,
    /// The blob was fetched, verified and committed.
    Fetched {
        /// Where its bytes came from, in order (one entry per kind of source).
        sources: Vec<FlightSource>,
        /// Its length.
        bytes: u64,
    },
}

impl PullThrough {
    /// Fetches `digest` of `repo` at `upstream` into the store unless it is there already,
    /// publishing the bytes verified so far on `progress`. An error when the fetch failed or the
    /// store could not keep the blob.
    pub async fn warm_blob(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        progress: &watch::Sender<u64>,
    ) -> Result<Warmed, PullError> {
        // A fetch can commit between the store lookup and the flight table; then look again.
        for _ in 0..3 {
            if self.store.shard_map(&digest)?.is_some() {
                return Ok(Warmed::AlreadyThere);
            }
            // Nobody waits for these bytes: the shards are made durable as they are written.
            let Some(reader) =
                self.join_or_start_flight(upstream, repo, digest, Durability::AsWritten)?
            else {
                continue;
            };
            let flight = reader.flight().clone();
            let mut changes = flight.watch();
            let mut body = self.follow(reader, digest, None).await?.body;
            let mut bytes = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| PullError::UpstreamUnavailable(e.to_string()))?;
                bytes += chunk.len() as u64;
                progress.send_replace(bytes);
            }
            drop(body);
            // The last byte is released once verified; the commit follows.
            let outcome = loop {
                changes.borrow_and_update();
                if let Some(outcome) = flight.outcome() {
                    break outcome;
                }
                if changes.changed().await.is_err() {
                    break Outcome::Failed(PullError::Internal(
                        "flight ended without an outcome".into(),
                    ));
                }
            };
            return match outcome {
                Outcome::Committed => Ok(Warmed::Fetched {
                    sources: flight.sources_seen(),
                    bytes,
                }),
                Outcome::PassedThrough => Err(PullError::Internal(
                    "the store could not keep the blob (passed through only)".into(),
                )),
                Outcome::Failed(error) => Err(error),
            };
        }
        Ok(Warmed::AlreadyThere)
    }
}
