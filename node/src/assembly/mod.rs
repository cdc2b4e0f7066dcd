//! Just-in-time assembly of a blob from peers: choosing which peers to ask, fetching shards from
//! several of them at once, hedging slow ones, and handing the blob's bytes on in order while later
//! shards are still arriving.
//!
//! Owns the fetch plan only. It moves bytes through `p2p` (which owns the streams and the wire
//! format) and hands them to `pullthrough`, which owns the flight, the ingest, the sha256 check and
//! the commit; it never touches the disk or an upstream. When the peers run out it says so and
//! `pullthrough` goes on from the origin with a Range request.
//!
//! Two ways to get a blob from peers:
//! - **Holders of the whole blob** ([`ParallelFetch`]): the best-ranked holder's shard map fixes
//!   the layout; the shards are grouped into batches of about [`BATCH_BYTES`] and up to
//!   [`WINDOW`] batches are requested at once, each from the least-busy holder (ranked by region,
//!   load and RTT), [`PER_PEER`] at most per holder. Other holders must have the same map (they
//!   send its BLAKE3, compared before any shard is used). The batch the reader waits for is
//!   requested again from another holder when it is late (hedging); the first copy wins. A holder
//!   that fails is dropped for this blob (and avoided by the node for a while if it sent bad
//!   bytes); its batches go to the others.
//! - **A holder still fetching it** ([`FollowFetch`]): its shards arrive in order as it gets them.
//!
//! **Invariant:** every shard handed on has matched the BLAKE3 its map gives; the map itself is
//! proven only by the blob's sha256, which `pullthrough` checks before completing anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use libp2p::PeerId;
use shoal_proto::wire::{FetchHint, MapWanted, ShardRequest, ShardSet};
use shoal_proto::{BlobDigest, ChunkingParams, ShardHash, ShardMap};

use crate::metrics::Metrics;
use crate::p2p::{PeerAnswer, PeerNetwork, ShardStream, TransferError};

/// Bytes of shards asked for in one request (at least one shard).
pub const BATCH_BYTES: u64 = 4 << 20;
/// Batches requested at once, over all holders (bounds the memory held for reordering to about
/// `WINDOW * BATCH_BYTES`).
pub const WINDOW: usize = 8;
/// Batches requested at once from one holder.
pub const PER_PEER: usize = 3;
/// How long the batch the reader waits for may take before it is also asked of another holder,
/// until batch times have been measured; then four times the median, at least [`MIN_HEDGE`].
const FIRST_HEDGE: Duration = Duration::from_secs(2);
/// The shortest hedging delay.
const MIN_HEDGE: Duration = Duration::from_millis(300);
/// How many holders are asked for the shard map before giving up on them.
const HOLDERS_ASKED: usize = 3;
/// Failed requests (streams refused or broken, timeouts) after which a holder is dropped from a
/// blob's plan. A holder that sends bad bytes, or lacks the blob, is dropped at once.
const HOLDER_FAILURES: u32 = 3;

/// Why assembly from peers stopped.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// Every holder failed; carries the last failure.
    #[error("no peer can send the rest of the blob (last failure: {0})")]
    NoPeersLeft(String),
    /// The holder being followed failed or broke the protocol.
    #[error("peer {peer} failed: {error}")]
    Peer {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        error: TransferError,
    },
}

/// A blob being fetched from peers.
pub enum PeerFetch {
    /// From holders of the whole blob, in parallel.
    Parallel(Box<ParallelFetch>),
    /// From a holder still fetching it.
    Follow(Box<FollowFetch>),
}

impl PeerFetch {
    /// The blob's length, if known.
    pub fn blob_len(&self) -> Option<u64> {
        match self {
            PeerFetch::Parallel(fetch) => Some(fetch.map.blob_len),
            PeerFetch::Follow(fetch) => fetch.blob_len,
        }
    }

    /// The chunking the peers' shards were cut with: when it is this node's, the shards can be
    /// stored as they come, without cutting and hashing the bytes again.
    pub fn chunking(&self) -> ChunkingParams {
        match self {
            PeerFetch::Parallel(fetch) => fetch.map.chunking,
            PeerFetch::Follow(fetch) => fetch.chunking,
        }
    }

    /// The peer whose shard map (or stream) decides what the bytes are: to blame if the sha256
    /// does not match.
    pub fn accountable_peer(&self) -> PeerId {
        match self {
            PeerFetch::Parallel(fetch) => fetch.map_source,
            PeerFetch::Follow(fetch) => fetch.stream.peer(),
        }
    }

    /// The next shard of the blob, in order, with its (checked) BLAKE3; `None` after the last.
    pub async fn next_shard(&mut self) -> Result<Option<(Bytes, ShardHash)>, AssemblyError> {
        match self {
            PeerFetch::Parallel(fetch) => fetch.next_shard().await,
            PeerFetch::Follow(fetch) => fetch.next_shard().await,
        }
    }
}

/// Finds peers that can send `digest` and opens a fetch from them: first the providers the DHT
/// names (best ranked first), then the blob's home, asked to fetch it for us (`hint`) when nobody
/// has it yet. `None` when no peer can help; the caller goes to the origin.
pub async fn open(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    providers: Vec<PeerId>,
    hint: Option<FetchHint>,
) -> Option<PeerFetch> {
    let ranked = network.rank(&providers);
    for peer in ranked.iter().copied().take(HOLDERS_ASKED) {
        if let Some(fetch) = ask(network, metrics, digest, peer, &ranked, None).await {
            return Some(fetch);
        }
    }
    let hint = hint?;
    let home = network.home(digest);
    if home == network.local_peer_id() || ranked.contains(&home) {
        return None;
    }
    tracing::debug!(%digest, %home, "nobody provides the blob; asking its home");
    ask(network, metrics, digest, home, &[home], Some(hint)).await
}

/// Asks `peer` for the blob's map; with `hint`, asks it to fetch the blob if it has not.
async fn ask(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    peer: PeerId,
    holders: &[PeerId],
    hint: Option<FetchHint>,
) -> Option<PeerFetch> {
    let request = ShardRequest {
        blob: *digest.as_bytes(),
        shards: ShardSet::Bitfield(Vec::new()),
        map: MapWanted::Full,
        fetch: hint,
    };
    match network.request(peer, request).await {
        Ok(PeerAnswer::Map(map, _)) => {
            tracing::info!(%digest, %peer, shards = map.shards.len(), holders = holders.len(), "fetching blob from peers that hold it");
            Some(PeerFetch::Parallel(Box::new(ParallelFetch::new(
                network.clone(),
                metrics.clone(),
                map,
                peer,
                holders,
            ))))
        }
        Ok(PeerAnswer::InFlight(header, stream)) => {
            tracing::info!(%digest, %peer, "following a peer that is fetching the blob");
            Some(PeerFetch::Follow(Box::new(FollowFetch {
                stream,
                blob_len: header.blob_len,
                chunking: header.chunking,
                received: 0,
                next_index: 0,
                metrics: metrics.clone(),
            })))
        }
        Ok(PeerAnswer::MapHash(..)) => {
            tracing::warn!(%digest, %peer, "peer sent a map hash where a map was asked for");
            None
        }
        Err(TransferError::NotHere) => None,
        Err(error) => {
            metrics.peer_fetch_failures.inc();
            tracing::warn!(%digest, %peer, %error, "peer cannot send the blob; trying the next source");
            if error.is_misbehaviour() {
                network.avoid(peer);
            }
            None
        }
    }
}

/// A blob streamed by a holder that is still fetching it.
pub struct FollowFetch {
    stream: ShardStream,
    blob_len: Option<u64>,
    chunking: ChunkingParams,
    received: u64,
    next_index: u32,
    metrics: Arc<Metrics>,
}

impl FollowFetch {
    async fn next_shard(&mut self) -> Result<Option<(Bytes, ShardHash)>, AssemblyError> {
        let peer = self.stream.peer();
        let failed = |error| AssemblyError::Peer { peer, error };
        match self.stream.next_frame().await.map_err(failed)? {
            Some((frame, bytes)) => {
                if frame.index != self.next_index {
                    return Err(failed(TransferError::Protocol("shard out of order")));
                }
                self.next_index += 1;
                self.received += bytes.len() as u64;
                if self.blob_len.is_some_and(|len| self.received > len) {
                    return Err(failed(TransferError::Protocol(
                        "more bytes than the blob's length",
                    )));
                }
                self.metrics
                    .record_shard_from_peer(&peer, bytes.len() as u64, None);
                Ok(Some((bytes, ShardHash::from_bytes(frame.hash))))
            }
            None if self.blob_len.is_some_and(|len| self.received != len) => {
                Err(failed(TransferError::Protocol("the blob ended short")))
            }
            None => Ok(None),
        }
    }
}

/// One request for a batch of shards.
type BatchResult = (
    usize,
    PeerId,
    Result<Vec<(Bytes, ShardHash)>, TransferError>,
);

/// A blob fetched from several holders of the whole blob at once.
pub struct ParallelFetch {
    network: PeerNetwork,
    metrics: Arc<Metrics>,
    map: ShardMap,
    map_hash: [u8; 32],
    map_source: PeerId,
    /// Holders still usable, best first.
    holders: Vec<PeerId>,
    /// Shard index ranges, in blob order.
    batches: Vec<Range<usize>>,
    /// Batches not yet requested (or to request again), lowest first.
    unassigned: std::collections::BTreeSet<usize>,
    /// Requests open, per batch: who, since when.
    open: HashMap<usize, Vec<(PeerId, Instant)>>,
    requests: FuturesUnordered<BoxFuture<'static, BatchResult>>,
    done: BTreeMap<usize, Vec<(Bytes, ShardHash)>>,
    /// The batch being handed on, and the shards of it not yet handed on.
    head: usize,
    head_shards: std::collections::VecDeque<(Bytes, ShardHash)>,
    /// Batch completion times, for the hedging delay.
    batch_times: Vec<Duration>,
    hedged: HashSet<usize>,
    /// Failed requests per holder.
    failures: HashMap<PeerId, u32>,
    last_failure: String,
}

impl ParallelFetch {
    fn new(
        network: PeerNetwork,
        metrics: Arc<Metrics>,
        map: ShardMap,
        map_source: PeerId,
        holders: &[PeerId],
    ) -> Self {
        let mut batches = Vec::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (index, entry) in map.shards.iter().enumerate() {
            bytes += u64::from(entry.len);
            if bytes >= BATCH_BYTES {
                batches.push(start..index + 1);
                start = index + 1;
                bytes = 0;
            }
        }
        if start < map.shards.len() {
            batches.push(start..map.shards.len());
        }
        let mut ranked = vec![map_source];
        ranked.extend(holders.iter().copied().filter(|p| *p != map_source));
        Self {
            map_hash: *blake3::hash(&map.encode()).as_bytes(),
            network,
            metrics,
            map,
            map_source,
            holders: ranked,
            unassigned: (0..batches.len()).collect(),
            batches,
            open: HashMap::new(),
            requests: FuturesUnordered::new(),
            done: BTreeMap::new(),
            head: 0,
            head_shards: Default::default(),
            batch_times: Vec::new(),
            hedged: HashSet::new(),
            failures: HashMap::new(),
            last_failure: String::new(),
        }
    }

    fn open_to(&self, peer: PeerId) -> usize {
        self.open
            .values()
            .flatten()
            .filter(|(p, _)| *p == peer)
            .count()
    }

    /// The usable holder with the fewest open requests (best ranked on ties), other than `not`.
    fn pick(&self, not: &[PeerId]) -> Option<PeerId> {
        self.holders
            .iter()
            .copied()
            .filter(|peer| !not.contains(peer))
            .map(|peer| (self.open_to(peer), peer))
            .filter(|(open, _)| *open < PER_PEER)
            .min_by_key(|(open, _)| *open)
            .map(|(_, peer)| peer)
    }

    fn hedge_delay(&self) -> Duration {
        if self.batch_times.len() < 3 {
            return FIRST_HEDGE;
        }
        let mut times = self.batch_times.clone();
        times.sort();
        (times[times.len() / 2] * 4).max(MIN_HEDGE)
    }

    fn send(&mut self, batch: usize, peer: PeerId) {
        self.open
            .entry(batch)
            .or_default()
            .push((peer, Instant::now()));
        let range = self.batches[batch].clone();
        let request = ShardRequest {
            blob: self.map.blob,
            shards: ShardSet::from_indices(range.clone()),
            map: MapWanted::HashOnly,
            fetch: None,
        };
        let network = self.network.clone();
        let metrics = self.metrics.clone();
        let expected: Vec<[u8; 32]> = self.map.shards[range.clone()]
            .iter()
            .map(|e| e.hash)
            .collect();
        let map_hash = self.map_hash;
        let first = range.start;
        self.requests.push(
            async move {
                let started = Instant::now();
                let result = async {
                    let mut stream = match network.request(peer, request).await? {
                        PeerAnswer::MapHash(hash, stream) if hash == map_hash => stream,
                        PeerAnswer::Map(map, stream)
                            if *blake3::hash(&map.encode()).as_bytes() == map_hash =>
                        {
                            stream
                        }
                        // Another layout (other chunking settings) or still fetching: not a fault,
                        // but no use for this plan.
                        _ => return Err(TransferError::NotHere),
                    };
                    let mut shards = Vec::with_capacity(expected.len());
                    for (offset, hash) in expected.iter().enumerate() {
                        let Some((frame, bytes)) = stream.next_frame().await? else {
                            return Err(TransferError::Protocol("batch ended short"));
                        };
                        if frame.index as usize != first + offset || &frame.hash != hash {
                            return Err(TransferError::Protocol(
                                "shard frame does not match the shard map",
                            ));
                        }
                        metrics.record_shard_from_peer(
                            &peer,
                            bytes.len() as u64,
                            Some(started.elapsed()),
                        );
                        shards.push((bytes, ShardHash::from_bytes(frame.hash)));
                    }
                    Ok(shards)
                }
                .await;
                (batch, peer, result)
            }
            .boxed(),
        );
    }

    /// Requests unassigned batches, lowest first, while the window and the holders allow.
    fn fill_window(&mut self) {
        while self.open.len() < WINDOW {
            let Some(&batch) = self.unassigned.iter().next() else {
                return;
            };
            let Some(peer) = self.pick(&[]) else { return };
            self.unassigned.remove(&batch);
            self.send(batch, peer);
        }
    }

    fn on_result(&mut self, (batch, peer, result): BatchResult) {
        let started = self.open.get_mut(&batch).and_then(|open| {
            let at = open.iter().position(|(p, _)| *p == peer)?;
            Some(open.swap_remove(at).1)
        });
        match result {
            Ok(shards) => {
                if let Some(started) = started {
                    self.batch_times.push(started.elapsed());
                }
                if batch >= self.head && !self.done.contains_key(&batch) {
                    self.done.insert(batch, shards);
                    self.unassigned.remove(&batch);
                }
                // The other copy of a hedged batch is no longer wanted; its answer is ignored.
                self.open.remove(&batch);
            }
            Err(error) => {
                self.metrics.peer_fetch_failures.inc();
                tracing::warn!(digest = %self.map.blob_digest(), %peer, %error, "peer failed a batch; asking another holder");
                if error.is_misbehaviour() {
                    self.network.avoid(peer);
                }
                self.last_failure = format!("{peer}: {error}");
                // A stream can be refused when many open at once; a holder gets a few chances
                // unless it lied or does not have the blob.
                let failures = self.failures.entry(peer).or_default();
                *failures += 1;
                if error.is_misbehaviour()
                    || matches!(error, TransferError::NotHere)
                    || *failures >= HOLDER_FAILURES
                {
                    self.holders.retain(|p| *p != peer);
                }
                if self.open.get(&batch).is_some_and(Vec::is_empty) {
                    self.open.remove(&batch);
                }
                if !self.done.contains_key(&batch)
                    && batch >= self.head
                    && !self.open.contains_key(&batch)
                {
                    self.unassigned.insert(batch);
                }
            }
        }
    }

    async fn next_shard(&mut self) -> Result<Option<(Bytes, ShardHash)>, AssemblyError> {
        loop {
            if let Some(shard) = self.head_shards.pop_front() {
                return Ok(Some(shard));
            }
            if self.head >= self.batches.len() {
                return Ok(None);
            }
            if let Some(shards) = self.done.remove(&self.head) {
                self.head_shards = shards.into();
                self.head += 1;
                continue;
            }
            self.fill_window();
            if self.requests.is_empty() {
                return Err(AssemblyError::NoPeersLeft(self.last_failure.clone()));
            }
            // Wait for an answer, or until the head batch is late and worth asking elsewhere.
            let head_started = self
                .open
                .get(&self.head)
                .and_then(|open| open.iter().map(|(_, at)| *at).min());
            let deadline = match head_started {
                Some(at) if !self.hedged.contains(&self.head) => Some(at + self.hedge_delay()),
                _ => None,
            };
            let next = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline.into(), self.requests.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            self.hedge_head();
                            continue;
                        }
                    }
                }
                None => self.requests.next().await,
            };
            if let Some(result) = next {
                self.on_result(result);
            }
        }
    }

    /// Asks another holder for the late head batch; the first answer wins.
    fn hedge_head(&mut self) {
        self.hedged.insert(self.head);
        let busy: Vec<PeerId> = self
            .open
            .get(&self.head)
            .map(|open| open.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default();
        if let Some(peer) = self.pick(&busy) {
            tracing::debug!(digest = %self.map.blob_digest(), batch = self.head, %peer, "batch is late; hedging with another holder");
            self.metrics.hedged_requests.inc();
            self.send(self.head, peer);
        }
    }
}
