//! Blob requests: from the store with per-shard verification and healing, or from a flight.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_proto::gossip::Announcement;
use shoal_proto::{BlobDigest, RepoName, ShardHash, ShardMap};
use tokio::sync::mpsc;

use super::claim_lease::{ClaimLease, LeaseRole};
use super::fetch_core::{CoreSource, FetchCore, IngestEnd, OriginFailure, Step, Verdict};
use super::flight::{read_file_range, Flight, FlightReader, FlightSource, Next, Outcome};
use super::range::RangeSpec;
use super::spooling::{
    self, FeedStep, ReadBackChecks, ReadBackError, SpoolFeed, INGEST_WINDOW, INGEST_WINDOW_MIN,
};
use super::{PullError, PullThrough};
use crate::assembly::{self, PeerFetch};
use crate::metrics::ByteSource;
use crate::store::{
    Durability, Ingest, IngestError, ReaderGuard, ShardReadError, ShardStore, Spool, StoreError,
    WriteFailure,
};
use crate::upstream::Upstream;

/// A blob response body: verified bytes, or an error that must abort the response.
pub type BlobBody = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A blob response ready to send.
pub struct BlobReply {
    /// The blob's full length, if known (always known when served from the store).
    pub total_len: Option<u64>,
    /// The bytes being sent, if the request asked for a range.
    pub range: Option<Range<u64>>,
    /// Whether the bytes come from the store (a hit).
    pub from_cache: bool,
    /// The body.
    pub body: BlobBody,
}

/// Pieces sent per response before backpressure stops reading ahead.
const READ_AHEAD: usize = 4;
/// Blobs of one shard up to this size are read in the lookup call and sent in one piece.
const INLINE_MAX: u32 = 1 << 20;
/// How long a cold miss waits for the DHT to name a provider before going to the origin.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(3);
/// How many times a blob whose peer bytes failed its sha256 is fetched again, in the background,
/// from the remaining peers or the origin.
const REFETCHES_AFTER_BAD_PEER: u32 = 2;

/// What a flight's fetch achieved.
struct Fetched {
    /// The blob's length.
    len: u64,
    /// Where its bytes came from ("peer", "origin" or "peer+origin").
    source: &'static str,
    /// Whether it was committed (else it was only passed through to the flight's readers).
    stored: bool,
    /// From the release of the last byte to the end of the ingest (the commit, when stored).
    release_to_end: Option<Duration>,
}

/// How the ingest worker ended.
enum WorkerEnd {
    /// The blob is committed; its length.
    Committed(u64),
    /// The store failed; the ingest was handed to the flight ([`WorkerEvent::StoreFailed`]).
    HandedOver,
}

/// Where a cold blob's bytes are coming from.
enum Source {
    /// Peers, shard by shard.
    Peers(PeerFetch),
    /// The upstream registry.
    Origin(crate::upstream::BlobResponse),
}

impl PullThrough {
    /// The length of a blob, from the store or the upstream (`HEAD`).
    pub async fn blob_length(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &BlobDigest,
    ) -> Result<u64, PullError> {
        if let Some(map) = self.store.shard_map(digest)? {
            return Ok(map.blob_len);
        }
        upstream
            .blob_length(repo, digest)
            .await?
            .ok_or_else(|| PullError::UpstreamInvalid("HEAD without Content-Length".into()))
    }

    /// Serves a blob from the store, if it is there.
    async fn open_cached(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        range: Option<RangeSpec>,
    ) -> Result<Option<BlobReply>, PullError> {
        // Look the blob up; a small one (a single shard) is read and verified in the same
        // blocking call, which halves the latency of config blobs and small layers.
        let cached = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
                let Some((map, guard)) = store.open_blob(&digest)? else {
                    return Ok(None);
                };
                let inline = match map.shards.as_slice() {
                    [only] if only.len <= INLINE_MAX => store.read_shard(only).ok(),
                    _ => None,
                };
                Ok(Some((map, guard, inline)))
            })
            .await
            .map_err(|e| PullError::Internal(e.to_string()))??
        };
        if let Some((map, guard, inline)) = cached {
            self.metrics.cache_hits.inc();
            let byte_range = match range {
                Some(spec) => Some(
                    spec.resolve(map.blob_len)
                        .map_err(|_| PullError::RangeNotSatisfiable(map.blob_len))?,
                ),
                None => None,
            };
            let wanted = byte_range.clone().unwrap_or(0..map.blob_len);
            let body = match inline {
                Some(bytes) => {
                    let piece = bytes.slice(wanted.start as usize..wanted.end as usize);
                    self.metrics
                        .record_bytes_served(ByteSource::Cache, piece.len() as u64);
                    drop(guard);
                    futures::stream::once(async move { Ok(piece) }).boxed()
                }
                // A shard that failed verification takes the streaming path, which heals it.
                None => {
                    self.serve_stored(upstream.clone(), repo.clone(), map.clone(), guard, wanted)
                }
            };
            return Ok(Some(BlobReply {
                total_len: Some(map.blob_len),
                range: byte_range,
                from_cache: true,
                body,
            }));
        }
        Ok(None)
    }

    /// Opens a blob (or a range of it) for a client waiting for its bytes: from the store, or by
    /// joining or starting the one upstream fetch of it (which then makes its shards durable only
    /// once the last byte is released, [`Durability::AfterRelease`]).
    pub async fn open_blob(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        range: Option<RangeSpec>,
    ) -> Result<BlobReply, PullError> {
        self.open_blob_with(upstream, repo, digest, range, Durability::AfterRelease)
            .await
    }

    /// [`Self::open_blob`], saying how a fetch this call starts makes its shards durable:
    /// [`Durability::AsWritten`] when no client waits for the bytes (a copy made ahead of
    /// demand).
    pub async fn open_blob_with(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        range: Option<RangeSpec>,
        durability: Durability,
    ) -> Result<BlobReply, PullError> {
        // A fetch can commit between the store lookup and the flight table; then look again.
        for _ in 0..3 {
            if let Some(reply) = self.open_cached(upstream, repo, digest, range).await? {
                return Ok(reply);
            }
            if let Some(reader) = self.join_or_start_flight(upstream, repo, digest, durability)? {
                self.metrics.cache_misses.inc();
                return self.follow(reader, digest, range).await;
            }
        }
        Err(PullError::Internal(format!("{digest} kept changing state")))
    }

    pub(super) async fn follow(
        &self,
        reader: FlightReader,
        digest: BlobDigest,
        range: Option<RangeSpec>,
    ) -> Result<BlobReply, PullError> {
        let flight = reader.flight().clone();
        let guard = self.store.register_reader(digest);
        let mut changes = flight.watch();
        let total = loop {
            changes.borrow_and_update();
            if let Some(state) = flight.header_state() {
                break state?;
            }
            if changes.changed().await.is_err() {
                return Err(PullError::Internal(
                    "flight ended without an outcome".into(),
                ));
            }
        };
        let byte_range = match (range, total) {
            (Some(spec), Some(total)) => Some(
                spec.resolve(total)
                    .map_err(|_| PullError::RangeNotSatisfiable(total))?,
            ),
            // Without a known length a range cannot be resolved up front: send the whole blob.
            _ => None,
        };
        let (start, end) = match &byte_range {
            Some(r) => (r.start, Some(r.end)),
            None => (0, total),
        };
        reader.advance(start);
        let body = follow_flight(reader, start, end, guard, self.metrics.clone());
        Ok(BlobReply {
            total_len: total,
            range: byte_range,
            from_cache: false,
            body,
        })
    }

    /// Joins the flight of `digest`, or starts one whose ingest makes its shards durable as
    /// `durability` says (a flight already running keeps its own).
    pub(super) fn join_or_start_flight(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        durability: Durability,
    ) -> Result<Option<FlightReader>, PullError> {
        self.join_or_start_attempt(upstream, repo, digest, durability, 0)
    }

    /// [`Self::join_or_start_flight`], where `refetch` counts the fetches of this blob already
    /// discarded because a peer's bytes failed its sha256.
    fn join_or_start_attempt(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        durability: Durability,
        refetch: u32,
    ) -> Result<Option<FlightReader>, PullError> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&digest) {
            if let Some(reader) = flight.join() {
                self.metrics.single_flight_joins.inc();
                if durability == Durability::AfterRelease {
                    // A fetch made ahead of demand now has a client waiting: its ingest defers.
                    flight.client_waits();
                }
                return Ok(Some(reader));
            }
            // A flight passing its blob through no longer holds its first bytes: fetch again
            // (the store may take the blob now). The old flight goes on for its own readers.
        }
        // A flight leaves the table only after its blob is indexed: if there is none now, the
        // blob is either stored already or nobody is fetching it.
        if self.store.shard_map(&digest)?.is_some() {
            return Ok(None);
        }
        let flight = Flight::new(digest);
        if durability == Durability::AfterRelease {
            flight.client_waits();
        }
        let Some(reader) = flight.join() else {
            return Err(PullError::Internal(
                "a new flight refused its first reader".into(),
            ));
        };
        flights.insert(digest, flight.clone());
        drop(flights);
        let this = self.clone();
        let (upstream, repo, driven) = (upstream.clone(), repo.clone(), flight.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = match this
                .fetch_and_ingest(&driven, &upstream, &repo, durability)
                .await
            {
                Ok(Fetched {
                    len,
                    source,
                    stored: true,
                    release_to_end,
                }) => {
                    this.metrics.blobs_committed.inc();
                    if let Some(peers) = &this.peers {
                        peers.provide(digest);
                        peers.announce_held(digest);
                    }
                    let commit_after_release_ms = release_to_end.map(|d| d.as_millis() as u64);
                    tracing::info!(%digest, %repo, upstream = upstream.name(), source, bytes = len, elapsed_ms = started.elapsed().as_millis() as u64, commit_after_release_ms, "blob fetched, verified and stored");
                    Outcome::Committed
                }
                Ok(Fetched {
                    len,
                    source,
                    stored: false,
                    ..
                }) => {
                    this.metrics.blobs_passed_through.inc();
                    if let Some(peers) = &this.peers {
                        peers.stop_providing(digest);
                    }
                    tracing::warn!(%digest, %repo, upstream = upstream.name(), source, bytes = len, "blob passed through verified but not stored: the store cannot take it");
                    Outcome::PassedThrough
                }
                Err(error) => {
                    tracing::warn!(%digest, %repo, upstream = upstream.name(), %error, "blob fetch failed; nothing stored");
                    if let Some(peers) = &this.peers {
                        peers.stop_providing(digest);
                    }
                    Outcome::Failed(error)
                }
            };
            let peer_lied = matches!(&outcome, Outcome::Failed(PullError::PeerInvalid(_)));
            driven.finish(outcome);
            {
                // Only this flight: a later one may have replaced a flight passing through.
                let mut flights = this.flights.lock().unwrap_or_else(|p| p.into_inner());
                if flights
                    .get(&digest)
                    .is_some_and(|f| Arc::ptr_eq(f, &driven))
                {
                    flights.remove(&digest);
                }
            }
            // The clients of this flight got bytes that cannot be taken back, so their responses
            // were aborted; the blob is fetched again without that peer for their retries.
            if peer_lied && refetch < REFETCHES_AFTER_BAD_PEER {
                tracing::info!(%digest, "fetching the blob again without the peer that sent bad bytes");
                this.metrics.refetches_after_bad_peer.inc();
                if let Err(error) =
                    this.join_or_start_attempt(&upstream, &repo, digest, durability, refetch + 1)
                {
                    tracing::warn!(%digest, %error, "cannot fetch the blob again");
                }
            }
            let store = this.store.clone();
            let evicted = tokio::task::spawn_blocking(move || store.evict_to_budget()).await;
            if let Ok(Ok(evicted)) = evicted {
                this.evicted(evicted);
            }
        });
        Ok(Some(reader))
    }

    /// Counts and announces blobs evicted for the disk budget.
    fn evicted(&self, evicted: Vec<BlobDigest>) {
        self.metrics.evictions.add(evicted.len() as u64);
        for digest in evicted {
            tracing::info!(%digest, "evicted for the disk budget");
            if let Some(peers) = &self.peers {
                // Withdrawn: no longer republished here, and members that hear the
                // `Dropped` remove this node's record from their DHT stores.
                peers.stop_providing(digest);
                self.metrics.provider_records_withdrawn.inc();
                peers.announce(Announcement::dropped(digest));
            }
        }
    }

    /// Evicts until a blob of `len` bytes fits in the store's effective budget; `false` if it
    /// cannot fit (then the blob passes through without touching the disk).
    async fn make_room(&self, len: u64) -> bool {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.evict_to_fit(len)).await {
            Ok(Ok(eviction)) => {
                self.evicted(eviction.evicted);
                if !eviction.fits {
                    self.store.record_no_room(len);
                }
                eviction.fits
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "eviction before an ingest failed; trying the ingest anyway");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "eviction before an ingest failed; trying the ingest anyway");
                true
            }
        }
    }

    /// Fetches the blob, feeding the flight and the ingest worker. When the store cannot take the
    /// blob (no room even after eviction, or a write fails), the flight goes on without it: the
    /// bytes still reach its readers, verified here instead of by the ingest, and nothing is
    /// stored.
    async fn fetch_and_ingest(
        &self,
        flight: &Arc<Flight>,
        upstream: &Upstream,
        repo: &RepoName,
        durability: Durability,
    ) -> Result<Fetched, PullError> {
        let digest = flight.digest;
        // The decisions (which source next, when, giving up, blame) are the core's; this shell
        // does the I/O it asks for.
        let mut core = FetchCore::new();
        // Renews this fetch's place at the blob's home (a claim, or a follower's place) until
        // the fetch ends, whichever way.
        let lease = ClaimLease::start(self.peers.as_ref(), digest);
        let mut source = match self.peer_fetch(digest).await {
            Some(fetch) => Source::Peers(fetch),
            None => {
                let fetched = upstream.fetch_blob(repo, &digest, None).await;
                Source::Origin(self.note_upstream(fetched)?)
            }
        };
        match &source {
            Source::Peers(fetch) => core.opened(
                CoreSource::Peers {
                    accountable: fetch.accountable_peer(),
                },
                fetch.blob_len(),
            )?,
            Source::Origin(response) => core.opened(CoreSource::Origin, response.content_length)?,
        }
        let total = core.total();
        // Make room before the first byte when the length is known, so a full disk is rare.
        let room = match total {
            Some(len) => self.make_room(len).await,
            None => true,
        };
        flight.start(total);
        // Followers learn the blob's length from the flight, so announce it once it is known.
        self.announce_source(flight, &source, &lease);
        // The client's path: this task reads the source into the flight's memory; a blocking
        // thread appends each read to the spool and computes the blob's sha256. The ingest
        // thread (lower CPU priority) reads the spool behind them, cuts, hashes, writes shards
        // and commits; the source waits only when it falls the spool's lag bound behind.
        let spool = if room {
            match self.store.create_spool() {
                Ok(spool) => Some(Arc::new(spool)),
                Err(error) => {
                    let cause = error.write_failure().unwrap_or(WriteFailure::Io);
                    self.metrics.record_store_write_failure(cause);
                    tracing::warn!(%digest, %error, "cannot create the blob's spool; passing it through uncached");
                    None
                }
            }
        } else {
            tracing::warn!(%digest, len = total, "no room for the blob even after eviction; passing it through uncached");
            None
        };
        let spool_feed = Arc::new(SpoolFeed::default());
        // Without an end, a feed closed by this task's return abandons the ingest.
        let _close_feed = CloseFeedOnDrop(spool_feed.clone());
        let (hash_feed, hasher_feed) = mpsc::channel::<(Bytes, Option<ShardHash>)>(16);
        let hasher = {
            let (spool, feed, driven) = (spool.clone(), spool_feed.clone(), flight.clone());
            tokio::task::spawn_blocking(move || {
                spool_and_hash(&driven, spool.as_deref(), &feed, hasher_feed)
            })
        };
        let (event_tx, mut events) = mpsc::unbounded_channel::<WorkerEvent>();
        let worker = match &spool {
            Some(spool) => {
                let lag_bound =
                    spooling::lag_bound(total, self.store.fs_space().map(|s| s.available));
                flight.attach_spool(spool.clone(), lag_bound, spool_feed.clone());
                let (done_tx, done) = tokio::sync::oneshot::channel();
                let (store, metrics, driven, spool, feed) = (
                    self.store.clone(),
                    self.metrics.clone(),
                    flight.clone(),
                    spool.clone(),
                    spool_feed.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("shoal-ingest".into())
                    .spawn(move || {
                        // Its shard writer and sync threads inherit the lower priority.
                        spooling::lower_this_threads_priority();
                        let end = ingest_worker(
                            &store, &metrics, &driven, durability, &spool, &feed, &event_tx,
                        );
                        drop(event_tx);
                        feed.ingest_ended();
                        let _ = done_tx.send(end);
                    });
                match spawned {
                    Ok(_) => Some(done),
                    Err(error) => {
                        tracing::warn!(%digest, %error, "cannot start the ingest thread; passing the blob through uncached");
                        flight.pass_through(None);
                        None
                    }
                }
            }
            None => {
                drop(event_tx);
                flight.pass_through(None);
                None
            }
        };
        let mut ingest_feed = worker.as_ref().map(|_| spool_feed.clone());
        loop {
            while let Ok(event) = events.try_recv() {
                self.apply(flight, event);
            }
            let response = match &mut source {
                Source::Origin(response) => response,
                Source::Peers(fetch) => match fetch.next_piece().await {
                    Ok(Some(assembly::Piece::FromOrigin(range))) => {
                        let range = core.new_gap(range);
                        if range.is_empty() {
                            continue;
                        }
                        tracing::info!(%digest, start = range.start, end = range.end, "no peer can send these shards; fetching them from the origin");
                        let chunk = self
                            .fetch_gap(&mut core, upstream, repo, digest, range)
                            .await?;
                        self.metrics.bytes_received_origin.add(chunk.len() as u64);
                        core.bytes_arrived(chunk.len() as u64, true)?;
                        if !self
                            .push_piece(
                                flight,
                                chunk,
                                None,
                                &hash_feed,
                                &mut ingest_feed,
                                &mut events,
                            )
                            .await?
                        {
                            break;
                        }
                        continue;
                    }
                    Ok(Some(assembly::Piece::Shard(chunk, hash))) => {
                        // A shard cut with this store's settings is stored as it came (its BLAKE3
                        // is checked); otherwise its bytes are cut again like origin bytes.
                        let hash = (fetch.chunking() == self.store.chunking()).then_some(hash);
                        // After a re-home the new parent starts at 0: keep only the new bytes (a
                        // cut shard is no longer the shard its hash names).
                        let part = core.new_part(chunk.len() as u64);
                        if part.is_empty() {
                            continue;
                        }
                        let (chunk, hash) = if part.start == 0 {
                            (chunk, hash)
                        } else {
                            (chunk.slice(part.start as usize..), None)
                        };
                        core.bytes_arrived(chunk.len() as u64, false)?;
                        if !self
                            .push_piece(
                                flight,
                                chunk,
                                hash,
                                &hash_feed,
                                &mut ingest_feed,
                                &mut events,
                            )
                            .await?
                        {
                            break;
                        }
                        continue;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // Shards already received were BLAKE3-checked against the peer's map; the
                        // sha256 at the end decides whether that map was true. Go on from the
                        // origin where the peers stopped.
                        self.metrics.peer_fetch_failures.inc();
                        tracing::warn!(%digest, received = core.received(), %error, "peers cannot send the rest; continuing from the origin");
                        let failed = match &error {
                            assembly::AssemblyError::Peer { peer, error } => {
                                Some((*peer, error.is_misbehaviour()))
                            }
                            // Every holder failed: look again without the one whose map led.
                            assembly::AssemblyError::NoPeersLeft(_) => {
                                Some((fetch.accountable_peer(), false))
                            }
                        };
                        let (avoid, mut step) = core.peers_failed(Instant::now(), failed);
                        if let (Some(peer), Some(peers)) = (avoid, &self.peers) {
                            peers.avoid(peer);
                        }
                        if let (Step::Rehome { gone }, Some(peers)) = (&step, &self.peers) {
                            match assembly::rehome(peers, &self.metrics, digest, *gone).await {
                                Some(fetch)
                                    if core.rehomed(fetch.accountable_peer(), fetch.blob_len()) =>
                                {
                                    self.metrics.rehomes.inc();
                                    source = Source::Peers(fetch);
                                    self.announce_source(flight, &source, &lease);
                                    continue;
                                }
                                _ => step = core.rehome_failed(Instant::now()),
                            }
                        }
                        let resumed = self
                            .ask_origin(&mut core, step, upstream, repo, digest)
                            .await?;
                        source = Source::Origin(resumed);
                        self.announce_source(flight, &source, &lease);
                        continue;
                    }
                },
            };
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%digest, received = core.received(), %error, "upstream body broke; resuming with a Range request");
                    let step =
                        core.origin_body_broke(Instant::now(), OriginFailure::from_upstream(error));
                    *response = self
                        .ask_origin(&mut core, step, upstream, repo, digest)
                        .await?;
                    continue;
                }
            };
            self.metrics.bytes_received_origin.add(chunk.len() as u64);
            core.bytes_arrived(chunk.len() as u64, true)?;
            if !self
                .push_piece(
                    flight,
                    chunk,
                    None,
                    &hash_feed,
                    &mut ingest_feed,
                    &mut events,
                )
                .await?
            {
                break;
            }
        }
        drop(hash_feed);
        tracing::debug!(%digest, "source complete");
        let actual = hasher
            .await
            .map_err(|e| PullError::Internal(e.to_string()))?;
        // Every byte the readers have is now known good: release the last one without waiting
        // for the ingest to write the blob's last shards (the ingest checks the digest again
        // before it commits, and peers following shard by shard still wait for the shards).
        let released = (actual == digest).then(|| {
            flight.mark_digest_matched();
            Instant::now()
        });
        spool_feed.end(actual);
        // The worker drops its sender when it is done.
        while let Some(event) = events.recv().await {
            self.apply(flight, event);
        }
        let worker_end = match worker {
            Some(worker) => Some(
                worker
                    .await
                    .map_err(|_| PullError::Internal("the ingest thread ended unheard".into()))?,
            ),
            None => None,
        };
        let release_to_end = released.map(|at| at.elapsed());
        let ingest_end = match worker_end {
            Some(Ok(WorkerEnd::Committed(len))) => IngestEnd::Committed(len),
            Some(Ok(WorkerEnd::HandedOver)) | None => IngestEnd::NotStored,
            Some(Err(IngestError::DigestMismatch { .. })) => IngestEnd::DigestMismatch,
            Some(Err(error)) => IngestEnd::Failed(error.to_string()),
        };
        match core.finished(actual == digest, ingest_end) {
            Verdict::Complete {
                len,
                source,
                stored,
            } => {
                if !stored {
                    // The store failed: the blob was verified here, and is released only now.
                    flight.mark_digest_matched();
                }
                Ok(Fetched {
                    len,
                    source,
                    stored,
                    release_to_end,
                })
            }
            Verdict::Failed(error) => Err(error),
            Verdict::Mismatch { blame } => {
                self.metrics.digest_mismatches.inc();
                if let (Some(peer), Some(peers)) = (blame, &self.peers) {
                    tracing::error!(expected = %digest, %actual, %peer, "a peer's shard map and shards do not make the blob; nothing stored, peer avoided");
                    peers.avoid(peer);
                    return Err(PullError::PeerInvalid(format!(
                        "digest mismatch from peer {peer}: got {actual}"
                    )));
                }
                tracing::error!(expected = %digest, %actual, %repo, upstream = upstream.name(), "upstream served bytes that do not match the digest; response aborted, nothing stored");
                Err(PullError::UpstreamInvalid(format!(
                    "digest mismatch: got {actual}"
                )))
            }
        }
    }

    /// Carries out the core's origin steps (ask for the rest of the blob or its length, again
    /// after a pause while the origin is unavailable) until a body answers or the core gives up.
    async fn ask_origin(
        &self,
        core: &mut FetchCore,
        mut step: Step,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
    ) -> Result<crate::upstream::BlobResponse, PullError> {
        loop {
            step = match step {
                Step::Fail(error) => return Err(error),
                // Only a peer failure asks for a new parent; here the peers are done with.
                Step::Rehome { .. } => core.rehome_failed(Instant::now()),
                Step::AskLength { at } => {
                    tokio::time::sleep_until(at.into()).await;
                    match self.note_upstream(upstream.blob_length(repo, &digest).await) {
                        Ok(total) => core.length_known(Instant::now(), total),
                        Err(error) => core.origin_request_failed(
                            Instant::now(),
                            OriginFailure::from_upstream(error),
                        ),
                    }
                }
                Step::FetchOrigin { range, at } => {
                    tokio::time::sleep_until(at.into()).await;
                    match self.note_upstream(upstream.fetch_blob(repo, &digest, range).await) {
                        Ok(response) => {
                            core.origin_answered(response.partial)?;
                            return Ok(response);
                        }
                        Err(error) => {
                            tracing::info!(%digest, %error, "the origin cannot resume the blob yet");
                            core.origin_request_failed(
                                Instant::now(),
                                OriginFailure::from_upstream(error),
                            )
                        }
                    }
                }
            };
        }
    }

    /// Fetches a gap the peers left from the origin, asking again while the origin is
    /// unavailable as the core says.
    async fn fetch_gap(
        &self,
        core: &mut FetchCore,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
        range: Range<u64>,
    ) -> Result<Bytes, PullError> {
        core.gap_requested(range.clone());
        loop {
            match self.note_upstream(
                upstream
                    .fetch_blob_range(repo, &digest, range.clone())
                    .await,
            ) {
                Ok(chunk) if chunk.len() as u64 == range.end - range.start => return Ok(chunk),
                Ok(_) => {
                    return Err(PullError::UpstreamInvalid(
                        "the upstream sent a short range".into(),
                    ))
                }
                Err(error) => {
                    match core
                        .origin_request_failed(Instant::now(), OriginFailure::from_upstream(error))
                    {
                        Step::FetchOrigin { at, .. } | Step::AskLength { at } => {
                            tokio::time::sleep_until(at.into()).await;
                        }
                        Step::Fail(error) => return Err(error),
                        Step::Rehome { .. } => {
                            return Err(PullError::Internal(
                                "a gap fill asked for a new parent".into(),
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Applies what the ingest worker reports to the flight.
    fn apply(&self, flight: &Flight, event: WorkerEvent) {
        match event {
            WorkerEvent::Shards(shards) => flight.add_shards(shards),
            WorkerEvent::Verified => flight.mark_verified(),
            WorkerEvent::StoreFailed(error, ingest) => {
                let cause = error.write_failure().unwrap_or(WriteFailure::Io);
                self.metrics.record_store_write_failure(cause);
                tracing::warn!(digest = %flight.digest, %error, cause = cause.label(), "the store cannot take the blob; passing it through to its clients uncached");
                flight.pass_through(Some(*ingest));
            }
        }
    }

    /// Hands one piece of the blob to the flight and the spooling thread (a whole shard when
    /// `shard_hash` is given); `false` if the source must stop (the ingest ended other than by a
    /// store error). Waits first while the ingest is the spool's lag bound behind, or, while the
    /// blob passes through, for room in the flight's window (failing when no reader is left).
    async fn push_piece(
        &self,
        flight: &Flight,
        chunk: Bytes,
        shard_hash: Option<ShardHash>,
        hash_feed: &mpsc::Sender<(Bytes, Option<ShardHash>)>,
        ingest_feed: &mut Option<Arc<SpoolFeed>>,
        events: &mut mpsc::UnboundedReceiver<WorkerEvent>,
    ) -> Result<bool, PullError> {
        if let Some(feed) = ingest_feed.as_ref() {
            if feed.has_ingest_ended() {
                // The ingest stopped; its last events say whether the store failed.
                *ingest_feed = None;
                while let Some(event) = events.recv().await {
                    self.apply(flight, event);
                }
                if !flight.passing_through() {
                    return Ok(false);
                }
            } else {
                let mut changes = flight.watch();
                loop {
                    changes.borrow_and_update();
                    if flight.source_may_go_on() {
                        break;
                    }
                    tokio::select! {
                        event = events.recv() => match event {
                            Some(event) => self.apply(flight, event),
                            None => break,
                        },
                        changed = changes.changed() => if changed.is_err() {
                            break;
                        },
                    }
                }
            }
        }
        if flight.passing_through() && !flight.wait_for_room(chunk.len() as u64).await {
            return Err(PullError::Internal(
                "every client left a blob the store cannot take".into(),
            ));
        }
        if flight.passing_through() {
            self.metrics.bytes_passed_through.add(chunk.len() as u64);
        }
        flight.push(chunk.clone());
        Ok(hash_feed.send((chunk, shard_hash)).await.is_ok())
    }

    /// Peers that can send the blob: members that announced it, the DHT's providers, or the member
    /// the blob's home says is fetching it. `None` when there is no peer network or no peer can
    /// help (then this node fetches it, and the home knows).
    async fn peer_fetch(&self, digest: BlobDigest) -> Option<PeerFetch> {
        let peers = self.peers.as_ref()?;
        // Members that announced the whole blob over gossip need no DHT lookup; otherwise the
        // DHT names holders and nodes still fetching it.
        let announced: Vec<_> = peers
            .announced_holders(&digest)
            .into_iter()
            .filter(|holding| holding.complete)
            .map(|holding| holding.peer)
            .collect();
        let providers = if announced.is_empty() {
            peers.find_providers(digest, PROVIDER_LOOKUP).await
        } else {
            announced
        };
        if providers.is_empty() {
            tracing::debug!(%digest, "no peer provides the blob");
        }
        assembly::open(peers, &self.metrics, digest, providers).await
    }

    /// Records where a flight's bytes now come from and announces the flight in the DHT at once,
    /// so that nodes missing the blob meanwhile find it and follow it.
    /// The fetch's lease at the blob's home follows its source.
    fn announce_source(&self, flight: &Flight, source: &Source, lease: &ClaimLease) {
        let (kind, role) = match source {
            Source::Origin(_) => (FlightSource::Origin, LeaseRole::FromOrigin),
            Source::Peers(PeerFetch::Parallel(_)) => {
                (FlightSource::StoredPeers, LeaseRole::Outside)
            }
            Source::Peers(PeerFetch::Follow(_)) => {
                (FlightSource::InFlightPeer, LeaseRole::Following)
            }
        };
        flight.set_source(kind);
        lease.set(role);
        if let Some(peers) = &self.peers {
            peers.provide(flight.digest);
        }
    }

    /// Streams `wanted` of a stored blob, verifying each shard and healing bad ones from the
    /// upstream without interrupting the response.
    fn serve_stored(
        &self,
        upstream: Upstream,
        repo: RepoName,
        map: ShardMap,
        guard: ReaderGuard,
        wanted: Range<u64>,
    ) -> BlobBody {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(READ_AHEAD);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if wanted.is_empty() {
                return;
            }
            let first = map.shard_index_at(wanted.start).unwrap_or(map.shards.len());
            for entry in map.shards[first..].iter().copied() {
                if entry.offset >= wanted.end {
                    break;
                }
                let started = Instant::now();
                let read = {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.read_shard(&entry)).await
                };
                let bytes = match read {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(error @ (ShardReadError::Corrupt(_) | ShardReadError::Missing(_)))) => {
                        metrics.shard_verify_failures.inc();
                        tracing::warn!(digest = %map.blob_digest(), %error, "healing shard from the upstream");
                        match heal(&store, &upstream, &repo, &map, entry).await {
                            Ok(bytes) => {
                                metrics.shards_healed.inc();
                                bytes
                            }
                            Err(error) => {
                                metrics.heal_failures.inc();
                                tracing::error!(digest = %map.blob_digest(), %error, "could not heal shard; aborting the response");
                                let _ = tx.send(Err(std::io::Error::other(error))).await;
                                return;
                            }
                        }
                    }
                    Ok(Err(error)) => {
                        let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                        return;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                        return;
                    }
                };
                metrics
                    .serve_busy_us
                    .add(started.elapsed().as_micros() as u64);
                let from = wanted.start.saturating_sub(entry.offset) as usize;
                let to = (wanted.end.min(entry.end()) - entry.offset) as usize;
                let piece = bytes.slice(from..to);
                metrics.record_bytes_served(ByteSource::Cache, piece.len() as u64);
                if tx.send(Ok(piece)).await.is_err() {
                    return;
                }
            }
        });
        tokio_stream_from(rx)
    }
}

/// Closes the ingest's feed when the driver is done, whichever way it returns.
struct CloseFeedOnDrop(Arc<SpoolFeed>);

impl Drop for CloseFeedOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The spooling thread: appends every piece the driver reads to the spool (while the flight
/// stores its blob), tells the ingest and the flight, and returns the sha256 of every piece. A
/// failed append stops the spooling and fails the ingest (the blob then passes through).
fn spool_and_hash(
    flight: &Flight,
    spool: Option<&Spool>,
    feed: &SpoolFeed,
    mut pieces: mpsc::Receiver<(Bytes, Option<ShardHash>)>,
) -> BlobDigest {
    let mut sha256 = Sha256::new();
    let mut spooling = spool;
    while let Some((bytes, shard)) = pieces.blocking_recv() {
        sha256.update(&bytes);
        let Some(spool) = spooling else {
            continue;
        };
        if flight.passing_through() {
            spooling = None;
            continue;
        }
        let offset = spool.len();
        match spool.append(&bytes) {
            Ok(()) => {
                feed.spooled_checked(offset, &bytes, shard);
                flight.spooled_to(spool.len());
            }
            Err(error) => {
                tracing::warn!(digest = %flight.digest, %error, "cannot append to the blob's spool");
                spooling = None;
                flight.stop_spooling();
                feed.fail(error);
            }
        }
    }
    BlobDigest::from_bytes(sha256.finalize().into())
}

/// What the ingest worker reports to the driver.
enum WorkerEvent {
    /// Shards written (their bytes can now be read from disk).
    Shards(Vec<crate::store::StoredShard>),
    /// The sha256 matched.
    Verified,
    /// The store failed; the ingest is handed over so that its shard files stay readable until
    /// the flight ends (then dropping it removes them).
    StoreFailed(StoreError, Box<Ingest>),
}

/// The ingest thread: maps windows of the spool behind the spooling thread, checks every byte
/// against the XXH3 of its append (they must be the bytes the client got), cuts, hashes and
/// writes the shards, checks the sha256 of the blob, commits, and frees the spool's ranges
/// behind its shards as it goes. A store failure hands the ingest to the driver (the blob then
/// passes through) instead of failing the flight. An ingest started as [`Durability::AsWritten`]
/// defers its durability once a client joins the flight.
fn ingest_worker(
    store: &ShardStore,
    metrics: &crate::metrics::Metrics,
    flight: &Flight,
    durability: Durability,
    spool: &Spool,
    feed: &SpoolFeed,
    events: &mpsc::UnboundedSender<WorkerEvent>,
) -> Result<WorkerEnd, IngestError> {
    let hand_over = |ingest: Ingest, error: IngestError| match error {
        IngestError::Store(error) => {
            let _ = events.send(WorkerEvent::StoreFailed(error, Box::new(ingest)));
            Ok(WorkerEnd::HandedOver)
        }
        other => Err(other),
    };
    let digest = flight.digest;
    let mut ingest = store.begin_ingest_with(digest, durability);
    let mut deferred = durability == Durability::AfterRelease;
    let mut cursor = SpoolCursor::default();
    // The end of the bytes the feed handed over.
    let mut handed = 0u64;
    let mut written_end = 0u64;
    let actual = loop {
        if !deferred && flight.has_waiting_client() {
            tracing::debug!(%digest, "a client joined a fetch ahead of demand; durability deferred to the release");
            ingest.defer_durability();
            metrics.ingests_deferred_for_client.inc();
            deferred = true;
        }
        let segment = match feed.next(INGEST_WINDOW) {
            FeedStep::Read(segment) => segment,
            FeedStep::End(actual) => break actual,
            FeedStep::SpoolFailed(error) => return hand_over(ingest, IngestError::Store(error)),
            // The driver gave up: dropping the ingest removes what it wrote.
            FeedStep::Abandoned => return Err(IngestError::Abandoned),
        };
        let started = Instant::now();
        feed.take_checks(&mut cursor.read_back);
        handed = segment.offset + segment.len;
        metrics.ingested_bytes.add(segment.len);
        let written = match segment.shard {
            // A peer's shard that starts where the last cut ended is stored as it is.
            Some(hash) if cursor.cut_to == segment.offset => {
                cursor.store_shard(&mut ingest, spool, flight, segment.len, hash)
            }
            // Mapping a window costs a system call and its page tables: wait for enough bytes.
            _ if handed - cursor.cut_to < INGEST_WINDOW_MIN => continue,
            _ => cursor.cut(&mut ingest, spool, flight, handed, false),
        };
        match written {
            Ok(shards) => {
                metrics
                    .ingest_busy_us
                    .add(started.elapsed().as_micros() as u64);
                if let Some(last) = shards.last() {
                    written_end = last.offset + u64::from(last.len);
                }
                let _ = events.send(WorkerEvent::Shards(shards));
                flight.free_spool_up_to(written_end);
            }
            Err(error) => return hand_over(ingest, error),
        }
    };
    let started = Instant::now();
    feed.take_checks(&mut cursor.read_back);
    match cursor.cut(&mut ingest, spool, flight, handed, true) {
        Ok(shards) => {
            let _ = events.send(WorkerEvent::Shards(shards));
        }
        Err(error) => return hand_over(ingest, error),
    }
    if let Err(error) = cursor.read_back.finish(spool.len()) {
        return hand_over(ingest, spool_differs(flight, spool, error));
    }
    let len = ingest.received();
    match ingest.verify_with(actual) {
        Ok(last) => {
            let _ = events.send(WorkerEvent::Shards(last));
        }
        Err(error) => return hand_over(ingest, error),
    }
    // Peers following shard by shard get the end now; durability follows.
    let _ = events.send(WorkerEvent::Verified);
    tracing::debug!(%digest, "blob verified; committing");
    if let Err(error) = ingest.commit_in_place() {
        return hand_over(ingest, error);
    }
    tracing::debug!(%digest, "blob committed");
    metrics
        .ingest_busy_us
        .add(started.elapsed().as_micros() as u64);
    Ok(WorkerEnd::Committed(len))
}

/// Where the ingest is in its spool: bytes before `cut_to` are in shards, `cut_to..checked_to`
/// were read back and checked and wait for more bytes to be cut with.
#[derive(Default)]
struct SpoolCursor {
    cut_to: u64,
    checked_to: u64,
    /// What is committed must be exactly what the client was given: every byte read back from
    /// the spool is checked against the append that wrote it.
    read_back: ReadBackChecks,
}

impl SpoolCursor {
    /// Maps the spool from `cut_to` to `end`, checks the bytes not checked yet against their
    /// appends, and cuts every shard whose end is final (all of them `at_end`) straight from the
    /// mapping. The mapping stays alive while the shard writer holds shards of it.
    fn cut(
        &mut self,
        ingest: &mut Ingest,
        spool: &Spool,
        flight: &Flight,
        end: u64,
        at_end: bool,
    ) -> Result<Vec<crate::store::StoredShard>, IngestError> {
        flight.ingest_read_to(end);
        let window = spool
            .map(self.cut_to, (end - self.cut_to) as usize)
            .map_err(|error| spool_error(spool, error))?;
        let unchecked = &window[(self.checked_to - self.cut_to) as usize..];
        self.read_back
            .read(self.checked_to, unchecked)
            .map_err(|error| spool_differs(flight, spool, error))?;
        self.checked_to = end;
        let (cut, shards) = ingest.write_window(&window, at_end)?;
        self.cut_to += cut as u64;
        Ok(shards)
    }

    /// Stores the peer's shard of `len` bytes at `cut_to` as it is, once checked.
    fn store_shard(
        &mut self,
        ingest: &mut Ingest,
        spool: &Spool,
        flight: &Flight,
        len: u64,
        hash: ShardHash,
    ) -> Result<Vec<crate::store::StoredShard>, IngestError> {
        let end = self.cut_to + len;
        flight.ingest_read_to(end);
        let bytes = spool
            .map(self.cut_to, len as usize)
            .map_err(|error| spool_error(spool, error))?;
        self.read_back
            .read(self.cut_to, &bytes)
            .map_err(|error| spool_differs(flight, spool, error))?;
        (self.cut_to, self.checked_to) = (end, end);
        ingest.write_shard(bytes, hash)
    }
}

/// A spool that cannot be read is a store failure: the blob passes through.
fn spool_error(spool: &Spool, error: std::io::Error) -> IngestError {
    IngestError::Store(StoreError::Io {
        context: format!("reading spool {}", spool.path().display()),
        source: error,
    })
}

/// A spool that does not read back as appended: nothing of it is stored.
fn spool_differs(flight: &Flight, spool: &Spool, error: ReadBackError) -> IngestError {
    tracing::error!(digest = %flight.digest, %error, "the blob's spool does not read back as received; not stored");
    spool_error(
        spool,
        std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    )
}

async fn heal(
    store: &crate::store::ShardStore,
    upstream: &Upstream,
    repo: &RepoName,
    map: &ShardMap,
    entry: shoal_proto::ShardEntry,
) -> Result<Bytes, String> {
    let bytes = upstream
        .fetch_blob_range(repo, &map.blob_digest(), entry.offset..entry.end())
        .await
        .map_err(|e| e.to_string())?;
    if bytes.len() != entry.len as usize || blake3::hash(&bytes).as_bytes() != &entry.hash {
        return Err("the upstream's bytes for the shard do not match its hash".into());
    }
    let store = store.clone();
    let to_store = bytes.clone();
    tokio::task::spawn_blocking(move || store.repair_shard(&entry, &to_store))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> BlobBody {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Streams bytes `start..end` of a flight as they become readable, telling the flight where the
/// reader is (a flight passing its blob through drops what every reader has passed).
fn follow_flight(
    reader: FlightReader,
    start: u64,
    end: Option<u64>,
    guard: ReaderGuard,
    metrics: Arc<crate::metrics::Metrics>,
) -> BlobBody {
    let changes = reader.flight().watch();
    futures::stream::unfold(
        (reader, start, changes, guard, false),
        move |(reader, mut cursor, mut changes, guard, failed)| {
            let metrics = metrics.clone();
            async move {
                if failed {
                    return None;
                }
                reader.advance(cursor);
                let flight = reader.flight().clone();
                loop {
                    changes.borrow_and_update();
                    match flight.next(cursor, end) {
                        Next::Bytes(bytes) => {
                            cursor += bytes.len() as u64;
                            metrics.record_bytes_served(ByteSource::Upstream, bytes.len() as u64);
                            return Some((Ok(bytes), (reader, cursor, changes, guard, false)));
                        }
                        Next::File(shard, offset, len) => {
                            let read = read_blocking(move || read_file_range(&shard, offset, len));
                            let result = match read.await {
                                Ok(bytes) => bytes,
                                Err(error) => {
                                    return Some((
                                        Err(error),
                                        (reader, cursor, changes, guard, true),
                                    ))
                                }
                            };
                            cursor += result.len() as u64;
                            metrics.record_bytes_served(ByteSource::Upstream, result.len() as u64);
                            return Some((Ok(result), (reader, cursor, changes, guard, false)));
                        }
                        Next::Spool(spool, range) => {
                            let (offset, len) = (range.start, (range.end - range.start) as usize);
                            let bytes =
                                match read_blocking(move || spool.read_at(offset, len)).await {
                                    Ok(bytes) => bytes,
                                    Err(error) => {
                                        return Some((
                                            Err(error),
                                            (reader, cursor, changes, guard, true),
                                        ))
                                    }
                                };
                            // The ingest may have freed the range while it was read (it reads as
                            // zeros then): ask again, the bytes are in shard files by now.
                            if !flight.spool_read_still_good(&range) {
                                continue;
                            }
                            cursor += bytes.len() as u64;
                            metrics.record_bytes_served(ByteSource::Upstream, bytes.len() as u64);
                            return Some((Ok(bytes), (reader, cursor, changes, guard, false)));
                        }
                        Next::End => return None,
                        Next::Failed(error) => {
                            return Some((
                                Err(std::io::Error::other(error.to_string())),
                                (reader, cursor, changes, guard, true),
                            ));
                        }
                        Next::Wait => {
                            if changes.changed().await.is_err() {
                                // The sender lives in the flight, which we hold: cannot happen.
                                return None;
                            }
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

/// Runs a blocking read on the blocking pool; a read that panicked or was cancelled is an I/O
/// error like any other.
async fn read_blocking(
    read: impl FnOnce() -> std::io::Result<Bytes> + Send + 'static,
) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|error| Err(std::io::Error::other(error)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt as _;

    use shoal_proto::ChunkingParams;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::StoreConfig;

    /// Spools `data` as the spooling thread does, lets `alter` change the spool file behind the
    /// ingest, then runs the ingest thread's work to its end.
    fn ingest_spooled(data: &[u8], alter: impl FnOnce(&std::fs::File)) -> (WorkerEnd, bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(&StoreConfig {
            data_dir: dir.path().to_path_buf(),
            chunking: ChunkingParams {
                min: 1024,
                avg: 4096,
                max: 16384,
            },
            max_disk_bytes: u64::MAX,
        })
        .unwrap();
        store.set_disk_reserve_percent(0);
        let digest = BlobDigest::from_bytes(Sha256::digest(data).into());
        let flight = Flight::new(digest);
        let spool = Arc::new(store.create_spool().unwrap());
        let feed = Arc::new(SpoolFeed::default());
        flight.attach_spool(spool.clone(), 1 << 30, feed.clone());
        flight.start(Some(data.len() as u64));
        for piece in data.chunks(64 << 10) {
            let offset = spool.len();
            spool.append(piece).unwrap();
            feed.spooled_checked(offset, piece, None);
        }
        alter(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(spool.path())
                .unwrap(),
        );
        feed.end(digest);
        let (events, _received) = mpsc::unbounded_channel();
        let metrics = Metrics::default();
        let end = ingest_worker(
            &store,
            &metrics,
            &flight,
            Durability::AsWritten,
            &spool,
            &feed,
            &events,
        )
        .unwrap();
        let committed = store.shard_map(&digest).unwrap().is_some();
        (end, committed)
    }

    #[test]
    fn a_spool_changed_behind_the_ingest_is_never_committed() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 / 7) as u8).collect();
        let (end, committed) = ingest_spooled(&data, |_| {});
        assert!(matches!(end, WorkerEnd::Committed(300_000)) && committed);

        let (end, committed) = ingest_spooled(&data, |file| {
            file.write_all_at(&[data[200_000] ^ 1], 200_000).unwrap();
        });
        assert!(matches!(end, WorkerEnd::HandedOver));
        assert!(!committed, "bytes the client never got were committed");
    }
}
