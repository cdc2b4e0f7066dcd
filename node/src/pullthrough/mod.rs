//! Pull-through caching: answers manifest and blob requests from the store, or fetches them from
//! the upstream, verifies them and stores them while they stream to the client.
//!
//! Owns the policy of *when* to go upstream (cache lifetimes, single flight, stale answers,
//! healing). It speaks neither HTTP to clients (that is `registry`) nor to upstreams directly
//! (that is `upstream`), and reaches the disk only through `store`. A cold blob is asked of peers
//! first when the node has a peer network (`p2p` finds them and moves the bytes; the ingest,
//! verification and commit stay here), else, or when no peer has it or a peer fails, of the
//! upstream. A manifest is asked of peers only when the upstream is unavailable and the cache has
//! nothing to serve, not even a stale tag; this module also says what peers are told from the
//! manifest cache ([`CachedManifests`]).
//!
//! **Invariant:** a blob response is completed only with bytes that are verified: shards by BLAKE3
//! as they are read, a blob fetched from an upstream by its sha256 before its last byte is released.
//! A response that cannot be completed correctly is aborted, never finished short or wrong.

mod blobs;
mod claim_lease;
mod fetch_core;
mod flight;
mod for_peers;
mod manifests;
pub mod range;
mod spooling;
pub mod tag_times;
#[cfg(test)]
mod tests;
mod warm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::BlobDigest;

use crate::metrics::Metrics;
use crate::p2p::PeerNetwork;
use crate::store::ShardStore;

pub use blobs::{BlobBody, BlobReply};
pub use flight::FlightSource;
pub use for_peers::PeerOffers;
pub(crate) use manifests::tag_key;
pub use manifests::{CachedManifests, ManifestReply, MANIFEST_MEDIA_TYPES};
pub use warm::Warmed;

/// Why a request could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// Neither the store nor the upstream has it.
    #[error("not found")]
    NotFound,
    /// The upstream could not be reached or failed, and nothing usable is cached.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream refused access (we hold no credentials that work).
    #[error("upstream denied access: {0}")]
    UpstreamDenied(String),
    /// The upstream sent something invalid (wrong digest, oversized or malformed manifest).
    #[error("upstream sent invalid content: {0}")]
    UpstreamInvalid(String),
    /// A peer's shard map and shards, each BLAKE3-checked, made bytes that fail the blob's sha256:
    /// the peer is avoided and the blob fetched again without it.
    #[error("a peer sent invalid content: {0}")]
    PeerInvalid(String),
    /// The `Range` cannot be served; carries the blob's length.
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    /// The node itself failed (disk, index).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::upstream::UpstreamError> for PullError {
    fn from(error: crate::upstream::UpstreamError) -> Self {
        use crate::upstream::UpstreamError as E;
        match error {
            E::NotFound => Self::NotFound,
            E::Denied(status) => Self::UpstreamDenied(status.to_string()),
            E::TooLarge { .. } => Self::UpstreamInvalid(error.to_string()),
            other => Self::UpstreamUnavailable(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for PullError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

/// Settings of the pull-through cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullConfig {
    /// How long a tag's digest is trusted before the upstream is asked again.
    pub tag_ttl: Duration,
}

/// The pull-through cache; cheap to clone.
#[derive(Clone, Debug)]
pub struct PullThrough {
    store: ShardStore,
    metrics: Arc<Metrics>,
    config: PullConfig,
    flights: Arc<Mutex<HashMap<BlobDigest, Arc<flight::Flight>>>>,
    manifest_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    peers: Option<PeerNetwork>,
    /// Whether the last request to an upstream failed for want of an answer (for `/healthz`).
    upstream_unreachable: Arc<AtomicBool>,
    /// When this process resolved each tag, on the monotonic clock.
    tag_times: Arc<tag_times::TagTimes>,
    /// Tags a rebuild holds at a digest until its switchover.
    held_tags: Option<Arc<dyn HeldTags>>,
}

/// Tags held at a digest until a rebuild's switchover (`rebuild::holds::TagHolds`): while a tag
/// is held, the manifest path answers it with the held digest, whatever the tag's TTL and the
/// upstream say.
pub trait HeldTags: Send + Sync + std::fmt::Debug {
    /// The digest the tag key (`upstream/repository:tag`) is held at now, if it is.
    fn held_digest(&self, key: &str) -> Option<BlobDigest>;
}

impl PullThrough {
    /// A cache over `store`.
    pub fn new(store: ShardStore, metrics: Arc<Metrics>, config: PullConfig) -> Self {
        Self {
            store,
            metrics,
            config,
            flights: Arc::default(),
            manifest_locks: Arc::default(),
            peers: None,
            upstream_unreachable: Arc::default(),
            tag_times: Arc::default(),
            held_tags: None,
        }
    }

    /// Honours the holds of `held` on the manifest path.
    pub fn with_held_tags(mut self, held: Arc<dyn HeldTags>) -> Self {
        self.held_tags = Some(held);
        self
    }

    /// Asks peers (through the DHT) for a blob before its upstream, and announces every blob
    /// committed.
    pub fn with_peers(mut self, peers: PeerNetwork) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &ShardStore {
        &self.store
    }

    /// Why the node is degraded, if it is: the store cannot take writes (`disk_full`,
    /// `store_read_only`, `store_io_error`), the last upstream request went unanswered
    /// (`upstream_unreachable`). Empty when healthy. Each reason clears by itself when its cause
    /// goes away: a commit succeeds, space returns, an upstream answers.
    pub fn degradations(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        match self.store.write_failure() {
            // A store closed for shutdown is not a degradation.
            Some(crate::store::WriteFailure::Closed) | None => {}
            Some(cause) => reasons.push(cause.label()),
        }
        if self.upstream_unreachable.load(Ordering::Relaxed) {
            reasons.push("upstream_unreachable");
        }
        reasons
    }

    /// Notes whether an upstream answered usefully (a refusal or a "not found" counts; a
    /// transport failure, a server error or "too many requests" does not).
    fn note_upstream<T>(
        &self,
        result: Result<T, crate::upstream::UpstreamError>,
    ) -> Result<T, crate::upstream::UpstreamError> {
        let unreachable = matches!(&result, Err(error) if error.is_unavailable());
        self.upstream_unreachable
            .store(unreachable, Ordering::Relaxed);
        result
    }

    /// Waits, for at most `timeout`, until no blob fetch is in flight, so that a stopping node
    /// commits what it has already fetched. Returns how many were still in flight.
    pub async fn drain_flights(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let in_flight = self.flights.lock().unwrap_or_else(|p| p.into_inner()).len();
            if in_flight == 0 || tokio::time::Instant::now() >= deadline {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
