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
//!   A fetch feeds at most two followers; a full one names one of its followers instead, and this
//!   node follows that one, down the blob's tree (see `p2p::claims` and `p2p::followers`).
//!
//! **Invariant:** every shard handed on has matched the BLAKE3 its map gives; the map itself is
//! proven only by the blob's sha256, which `pullthrough` checks before completing anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use shoal_proto::wire::{MapWanted, ShardRequest, ShardSet};
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
/// How many times a peer may send this node on to another member of a blob's tree (a full fetch
/// names one of its followers) before this node stops following.
const MAX_REDIRECTS: usize = 8;
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

/// The next piece of a blob, in order.
#[derive(Debug)]
pub enum Piece {
    /// A shard from a peer, with its (checked) BLAKE3.
    Shard(Bytes, ShardHash),
    /// Bytes no peer can send any more, while later shards did arrive: fetch this range from the
    /// origin, then carry on.
    FromOrigin(Range<u64>),
}

/// Largest range handed to the origin in one [`Piece::FromOrigin`].
pub const MAX_ORIGIN_FILL: u64 = 16 << 20;

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

    /// The next piece of the blob, in order; `None` after the last.
    pub async fn next_piece(&mut self) -> Result<Option<Piece>, AssemblyError> {
        match self {
            PeerFetch::Parallel(fetch) => fetch.next_piece().await,
            PeerFetch::Follow(fetch) => Ok(fetch
                .next_shard()
                .await?
                .map(|(bytes, hash)| Piece::Shard(bytes, hash))),
        }
    }
}

/// Finds peers that can send `digest` and opens a fetch from them: first the providers the DHT
/// names (best ranked first); when none can help, the blob's home says who is fetching it, and that
/// member is followed. `None` when no peer can help: the caller fetches from the origin, and the
/// home has recorded that it does.
pub async fn open(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    providers: Vec<PeerId>,
) -> Option<PeerFetch> {
    let ranked = network.rank(&providers);
    for peer in ranked.iter().copied().take(HOLDERS_ASKED) {
        match ask(network, metrics, digest, peer, &ranked, false).await {
            Asked::Fetch(fetch) => return Some(fetch),
            Asked::Claimed(next) => {
                if let Some(fetch) = follow_down(network, metrics, digest, next).await {
                    return Some(fetch);
                }
            }
            Asked::Nothing => {}
        }
    }
    let home = network.home(digest);
    let claimant = if home == network.local_peer_id() {
        network.claim_locally(digest)?
    } else {
        tracing::debug!(%digest, %home, "nobody provides the blob; asking its home who fetches it");
        match ask(network, metrics, digest, home, &[home], true).await {
            Asked::Fetch(fetch) => return Some(fetch),
            Asked::Claimed(claimant) if claimant != network.local_peer_id() => claimant,
            Asked::Claimed(_) | Asked::Nothing => return None,
        }
    };
    tracing::debug!(%digest, %claimant, "another member is fetching the blob; following it");
    follow_down(network, metrics, digest, claimant).await
}

/// Follows `first`'s fetch of the blob or, when its followers are full, the member it names, down
/// the blob's tree for at most [`MAX_REDIRECTS`] hops.
async fn follow_down(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    first: PeerId,
) -> Option<PeerFetch> {
    let mut asked = Vec::new();
    let mut next = first;
    for _ in 0..=MAX_REDIRECTS {
        if next == network.local_peer_id() || asked.contains(&next) {
            return None;
        }
        asked.push(next);
        match ask(network, metrics, digest, next, &[next], false).await {
            Asked::Fetch(fetch) => return Some(fetch),
            Asked::Claimed(further) => {
                tracing::debug!(%digest, from = %next, to = %further, "sent on down the blob's tree");
                next = further;
            }
            Asked::Nothing => return None,
        }
    }
    None
}

/// What asking one peer gave.
enum Asked {
    Fetch(PeerFetch),
    Claimed(PeerId),
    Nothing,
}

/// Asks `peer` for the blob's map; with `claim`, asks it (the blob's home) who fetches the blob.
async fn ask(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    peer: PeerId,
    holders: &[PeerId],
    claim: bool,
) -> Asked {
    let request = ShardRequest {
        blob: *digest.as_bytes(),
        shards: ShardSet::Bitfield(Vec::new()),
        map: MapWanted::Full,
        claim,
    };
    match network.request(peer, request).await {
        Ok(PeerAnswer::Map(map, _)) => {
            tracing::info!(%digest, %peer, shards = map.shards.len(), holders = holders.len(), "fetching blob from peers that hold it");
            Asked::Fetch(PeerFetch::Parallel(Box::new(ParallelFetch::new(
                network.clone(),
                metrics.clone(),
                map,
                peer,
                holders,
            ))))
        }
        Ok(PeerAnswer::InFlight(header, stream)) => {
            tracing::info!(%digest, %peer, "following a peer that is fetching the blob");
            Asked::Fetch(PeerFetch::Follow(Box::new(FollowFetch {
                stream,
                blob_len: header.blob_len,
                chunking: header.chunking,
                received: 0,
                next_index: 0,
                metrics: metrics.clone(),
            })))
        }
        Ok(PeerAnswer::Claimed(claimant)) => Asked::Claimed(claimant),
        Ok(PeerAnswer::MapHash(..)) => {
            tracing::warn!(%digest, %peer, "peer sent a map hash where a map was asked for");
            Asked::Nothing
        }
        Err(TransferError::NotHere) => Asked::Nothing,
        Err(error) => {
            metrics.peer_fetch_failures.inc();
            tracing::warn!(%digest, %peer, %error, "peer cannot send the blob; trying the next source");
            if error.is_misbehaviour() {
                network.avoid(peer);
            }
            Asked::Nothing
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
                Err(failed(TransferError::EndedEarly("the blob ended short")))
            }
            None => Ok(None),
        }
    }
}

/// What a batch request reports, as it happens.
enum BatchEvent {
    /// Shard `index` arrived (BLAKE3-checked against the map).
    Shard(u64, usize, Bytes, ShardHash),
    /// The request sent every shard it asked for.
    Done(u64),
    /// The request failed after the shards it already reported.
    Failed(u64, TransferError),
}

/// One request open to a holder: shards `next..end` still to come.
struct OpenBatch {
    peer: PeerId,
    next: usize,
    end: usize,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// A blob fetched from several holders of the whole blob at once. Shards are handed on as soon as
/// the next one in blob order has arrived, whichever request brought it, so a request that fails
/// half way loses nothing it delivered: only its missing shards are asked of someone else.
pub struct ParallelFetch {
    network: PeerNetwork,
    metrics: Arc<Metrics>,
    map: ShardMap,
    map_hash: [u8; 32],
    map_source: PeerId,
    /// Holders still usable, best first.
    holders: Vec<PeerId>,
    /// Shard ranges not yet requested (or to request again), in blob order.
    pending: std::collections::VecDeque<Range<usize>>,
    open: HashMap<u64, OpenBatch>,
    next_request: u64,
    events: tokio::sync::mpsc::UnboundedReceiver<BatchEvent>,
    events_tx: tokio::sync::mpsc::UnboundedSender<BatchEvent>,
    /// Shards arrived ahead of the one being waited for.
    arrived: BTreeMap<usize, (Bytes, ShardHash)>,
    /// The next shard to hand on.
    next_shard: usize,
    /// Batch completion times, for the hedging delay.
    batch_times: Vec<Duration>,
    /// The shard whose wait has been hedged already.
    hedged: HashSet<usize>,
    /// Failed requests per holder.
    failures: HashMap<PeerId, u32>,
    last_failure: String,
}

impl Drop for ParallelFetch {
    fn drop(&mut self) {
        for batch in self.open.values() {
            batch.task.abort();
        }
    }
}

impl ParallelFetch {
    fn new(
        network: PeerNetwork,
        metrics: Arc<Metrics>,
        map: ShardMap,
        map_source: PeerId,
        holders: &[PeerId],
    ) -> Self {
        let mut pending = std::collections::VecDeque::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (index, entry) in map.shards.iter().enumerate() {
            bytes += u64::from(entry.len);
            if bytes >= BATCH_BYTES {
                pending.push_back(start..index + 1);
                start = index + 1;
                bytes = 0;
            }
        }
        if start < map.shards.len() {
            pending.push_back(start..map.shards.len());
        }
        let mut ranked = vec![map_source];
        ranked.extend(holders.iter().copied().filter(|p| *p != map_source));
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        Self {
            map_hash: *blake3::hash(&map.encode()).as_bytes(),
            network,
            metrics,
            map,
            map_source,
            holders: ranked,
            pending,
            open: HashMap::new(),
            next_request: 0,
            events,
            events_tx,
            arrived: BTreeMap::new(),
            next_shard: 0,
            batch_times: Vec::new(),
            hedged: HashSet::new(),
            failures: HashMap::new(),
            last_failure: String::new(),
        }
    }

    fn open_to(&self, peer: PeerId) -> usize {
        self.open.values().filter(|b| b.peer == peer).count()
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

    /// Asks `peer` for shards `range`; their arrival is reported on the event channel.
    fn send(&mut self, range: Range<usize>, peer: PeerId) {
        let id = self.next_request;
        self.next_request += 1;
        let request = ShardRequest {
            blob: self.map.blob,
            shards: ShardSet::from_indices(range.clone()),
            map: MapWanted::HashOnly,
            claim: false,
        };
        let network = self.network.clone();
        let metrics = self.metrics.clone();
        let expected: Vec<[u8; 32]> = self.map.shards[range.clone()]
            .iter()
            .map(|e| e.hash)
            .collect();
        let map_hash = self.map_hash;
        let first = range.start;
        let events = self.events_tx.clone();
        let task = tokio::spawn(async move {
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
                for (offset, hash) in expected.iter().enumerate() {
                    let Some((frame, bytes)) = stream.next_frame().await? else {
                        return Err(TransferError::EndedEarly("batch ended short"));
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
                    let hash = ShardHash::from_bytes(frame.hash);
                    let _ = events.send(BatchEvent::Shard(id, first + offset, bytes, hash));
                }
                Ok(())
            }
            .await;
            let _ = events.send(match result {
                Ok(()) => BatchEvent::Done(id),
                Err(error) => BatchEvent::Failed(id, error),
            });
        });
        self.open.insert(
            id,
            OpenBatch {
                peer,
                next: range.start,
                end: range.end,
                started: Instant::now(),
                task,
            },
        );
    }

    /// Requests pending ranges, in blob order, while the window and the holders allow.
    fn fill_window(&mut self) {
        while self.open.len() < WINDOW {
            let Some(range) = self.pending.front().cloned() else {
                return;
            };
            let Some(peer) = self.pick(&[]) else { return };
            self.pending.pop_front();
            self.send(range, peer);
        }
    }

    fn on_event(&mut self, event: BatchEvent) {
        match event {
            BatchEvent::Shard(id, index, bytes, hash) => {
                if let Some(batch) = self.open.get_mut(&id) {
                    batch.next = batch.next.max(index + 1);
                }
                if index >= self.next_shard {
                    self.arrived.entry(index).or_insert((bytes, hash));
                }
            }
            BatchEvent::Done(id) => {
                if let Some(batch) = self.open.remove(&id) {
                    self.batch_times.push(batch.started.elapsed());
                    // A hedged copy of the same shards is no longer needed.
                    self.open.retain(|_, other| {
                        let redundant = other.end == batch.end;
                        if redundant {
                            other.task.abort();
                        }
                        !redundant
                    });
                }
            }
            BatchEvent::Failed(id, error) => {
                let Some(batch) = self.open.remove(&id) else {
                    return;
                };
                let peer = batch.peer;
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
                // Ask again for what it did not deliver, unless another request brings it.
                let missing = batch.next.max(self.next_shard)..batch.end;
                let covered = self
                    .open
                    .values()
                    .any(|other| other.next <= missing.start && other.end >= missing.end);
                if !missing.is_empty() && !covered {
                    self.pending.push_front(missing);
                }
            }
        }
    }

    async fn next_piece(&mut self) -> Result<Option<Piece>, AssemblyError> {
        loop {
            if self.next_shard >= self.map.shards.len() {
                return Ok(None);
            }
            if let Some((bytes, hash)) = self.arrived.remove(&self.next_shard) {
                self.next_shard += 1;
                return Ok(Some(Piece::Shard(bytes, hash)));
            }
            self.fill_window();
            if self.open.is_empty() {
                // No holder left. Shards that did arrive further on are kept: only the gap before
                // them goes to the origin. With nothing further on, the caller takes the rest
                // from the origin in one request.
                return match self.arrived.keys().next() {
                    Some(&next_arrived) => {
                        Ok(Some(Piece::FromOrigin(self.origin_fill(next_arrived))))
                    }
                    None => Err(AssemblyError::NoPeersLeft(self.last_failure.clone())),
                };
            }
            // Wait for news, or until the shard waited for is late and worth asking elsewhere.
            let waiting_since = self
                .open
                .values()
                .filter(|b| b.next <= self.next_shard && self.next_shard < b.end)
                .map(|b| b.started)
                .min();
            let deadline = match waiting_since {
                Some(at) if !self.hedged.contains(&self.next_shard) => {
                    Some(at + self.hedge_delay())
                }
                _ => None,
            };
            let event = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                        Ok(event) => event,
                        Err(_) => {
                            self.hedge();
                            continue;
                        }
                    }
                }
                None => self.events.recv().await,
            };
            match event {
                Some(event) => self.on_event(event),
                None => return Err(AssemblyError::NoPeersLeft(self.last_failure.clone())),
            }
        }
    }

    /// The byte range of the shards from the next one up to `next_arrived` (at most
    /// [`MAX_ORIGIN_FILL`] bytes, at least one shard), which the caller fetches from the origin.
    fn origin_fill(&mut self, next_arrived: usize) -> Range<u64> {
        let start = self.map.shards[self.next_shard].offset;
        let mut end = start;
        while self.next_shard < next_arrived {
            let entry = self.map.shards[self.next_shard];
            if end > start && entry.end() - start > MAX_ORIGIN_FILL {
                break;
            }
            end = entry.end();
            self.next_shard += 1;
        }
        start..end
    }

    /// Asks another holder for the late shard and the rest of its batch; the first copy wins.
    fn hedge(&mut self) {
        self.hedged.insert(self.next_shard);
        let Some(late) = self
            .open
            .values()
            .find(|b| b.next <= self.next_shard && self.next_shard < b.end)
        else {
            return;
        };
        let (busy, end) = (late.peer, late.end);
        if let Some(peer) = self.pick(&[busy]) {
            tracing::debug!(digest = %self.map.blob_digest(), shard = self.next_shard, %peer, "shard is late; hedging with another holder");
            self.metrics.hedged_requests.inc();
            self.send(self.next_shard..end, peer);
        }
    }
}
