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
//!   bytes); its batches go to the others. Nothing is requested further than [`REORDER_BYTES`]
//!   past the next shard to hand on, which bounds the memory held for reordering. These decisions
//!   are a state machine driven by events and an explicit `now` (`plan`, unit-tested);
//!   [`ParallelFetch`] is its thin async shell.
//! - **A holder still fetching it** ([`FollowFetch`]): its shards arrive in order as it gets them;
//!   what each frame means (order, length, the end frame's count) is decided by `follow`'s
//!   sans-IO [`FollowOrder`], unit-tested.
//!   A fetch feeds at most two followers; a full one names one of its followers instead, and this
//!   node follows that one, down the blob's tree (see `p2p::claims` and `p2p::followers`).
//!
//! **Invariant:** every shard handed on has matched the BLAKE3 its map gives; the map itself is
//! proven only by the blob's sha256, which `pullthrough` checks before completing anything.

mod follow;
mod plan;
mod rehoming;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use libp2p::PeerId;
use shoal_proto::wire::{ClaimAsk, MapWanted, ShardRequest, ShardSet};
use shoal_proto::{BlobDigest, ChunkingParams, ShardHash, ShardMap};

use crate::metrics::Metrics;
use crate::p2p::{NextFrame, PeerAnswer, PeerNetwork, ShardStream, TransferError};

use follow::FollowOrder;
pub use plan::{
    Action, BatchId, Failure, ParallelPlan, Step, FIRST_HEDGE, HOLDER_FAILURES, MIN_HEDGE,
    REORDER_BYTES,
};
use rehoming::{AskHow, HomeAnswer, RehomeAction, Rehoming};

/// Bytes of shards asked for in one request (at least one shard).
pub const BATCH_BYTES: u64 = 4 << 20;
/// Batches requested at once, over all holders.
pub const WINDOW: usize = 8;
/// Batches requested at once from one holder.
pub const PER_PEER: usize = 3;
/// How many holders are asked for the shard map before giving up on them.
const HOLDERS_ASKED: usize = 3;
/// How long a re-home waits for the DHT to name providers of the blob.
const REHOME_PROVIDER_LOOKUP: std::time::Duration = std::time::Duration::from_secs(3);
/// How many times a peer may send this node on to another member of a blob's tree (a full fetch
/// names one of its followers) before this node stops following.
const MAX_REDIRECTS: usize = 8;

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
            PeerFetch::Parallel(fetch) => Some(fetch.map().blob_len),
            PeerFetch::Follow(fetch) => fetch.order.blob_len(),
        }
    }

    /// The chunking the peers' shards were cut with: when it is this node's, the shards can be
    /// stored as they come, without cutting and hashing the bytes again.
    pub fn chunking(&self) -> ChunkingParams {
        match self {
            PeerFetch::Parallel(fetch) => fetch.map().chunking,
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
            Asked::Nothing | Asked::Failed => {}
        }
    }
    let home = network.find_home(digest).await;
    let claimant = if home == network.local_peer_id() {
        let Some(claimant) = network.claim_locally(digest) else {
            tracing::info!(%digest, %home, answer = "fetch it", "claim: this node is the blob's home");
            return None;
        };
        tracing::info!(%digest, %home, answer = %claimant, "claim: this node is the blob's home");
        claimant
    } else {
        tracing::debug!(%digest, %home, "nobody provides the blob; asking its home who fetches it");
        match ask(network, metrics, digest, home, &[home], true).await {
            // A home this node avoids (it sent bad bytes) is still every node's home, so it is
            // asked; but its bytes are not taken again: the origin sends them.
            Asked::Fetch(_) if network.is_avoided(&home) => {
                tracing::info!(%digest, %home, answer = "its own copy, not taken from a peer this node avoids", "claim: the blob's home answered");
                return None;
            }
            Asked::Fetch(fetch) => {
                tracing::info!(%digest, %home, answer = "its own copy", "claim: the blob's home answered");
                return Some(fetch);
            }
            Asked::Claimed(claimant) if claimant != network.local_peer_id() => {
                tracing::info!(%digest, %home, answer = %claimant, "claim: the blob's home answered");
                claimant
            }
            Asked::Claimed(_) | Asked::Nothing => {
                tracing::info!(%digest, %home, answer = "fetch it", "claim: the blob's home answered");
                return None;
            }
            Asked::Failed => {
                tracing::info!(%digest, %home, answer = "none", "claim: the blob's home did not answer");
                return None;
            }
        }
    };
    tracing::debug!(%digest, %claimant, "another member is fetching the blob; following it");
    if let Some(fetch) = follow_down(network, metrics, digest, claimant).await {
        return Some(fetch);
    }
    // The member the home named does not answer (killed, say, its lease not yet run out): look
    // again as a fetch whose parent went away does, rather than fetch beside the tree.
    rehome(network, metrics, digest, claimant).await
}

/// Finds a new source for a fetch whose parent or holders (`gone`: the one followed, or whose map
/// led) failed mid-blob: members that announced the whole blob or that the DHT names as providers
/// (a stored copy only), else the blob's home, asked even when it is `gone`, naming `gone`: it
/// places this node under another member of the blob's tree that still renews its lease and does
/// not follow it, or grants it the rest (`None`, and the caller goes on from the origin where it
/// stopped). A home that predates that request is asked plainly, and again every
/// `RENEW_CLAIM_EVERY` for at most one lease while it names `gone`; a stored copy it offers is
/// taken unless it is `gone`'s, a flight it runs itself is not (it may follow this node, and a
/// flight must never wait on its own follower). The decisions are `rehoming`'s state machine.
/// `None` when no peer can help.
pub async fn rehome(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    gone: PeerId,
) -> Option<PeerFetch> {
    // Members that announced the whole blob first, else the DHT's providers: only a stored copy
    // is taken from them, since it follows nobody.
    let mut holders: Vec<PeerId> = network
        .announced_holders(&digest)
        .into_iter()
        .filter(|holding| holding.complete && holding.peer != gone)
        .map(|holding| holding.peer)
        .collect();
    if holders.is_empty() {
        holders = network
            .find_providers(digest, REHOME_PROVIDER_LOOKUP)
            .await
            .into_iter()
            .filter(|peer| *peer != gone)
            .collect();
    }
    let ranked = network.rank(&holders);
    for peer in ranked.iter().copied().take(HOLDERS_ASKED) {
        match ask(network, metrics, digest, peer, &ranked, false).await {
            Asked::Fetch(fetch @ PeerFetch::Parallel(_)) => {
                tracing::info!(%digest, %gone, "the parent went away; going on from members that hold the blob");
                return Some(fetch);
            }
            // A holder that is fetching the blob again may follow this node: not taken.
            Asked::Fetch(PeerFetch::Follow(_))
            | Asked::Claimed(_)
            | Asked::Nothing
            | Asked::Failed => {}
        }
    }
    // The blob's home, asked even when it is the peer that failed (its claims are not its
    // bytes), places this node elsewhere in the blob's tree; `rehoming` decides what its answers
    // mean.
    let (mut rehoming, mut action) = Rehoming::start(network.local_peer_id(), gone, Instant::now());
    let mut copy = None;
    loop {
        match action {
            RehomeAction::AskHome { at, how } => {
                tokio::time::sleep_until(at.into()).await;
                let home = network.find_home(digest).await;
                let answer =
                    ask_home_again(network, metrics, digest, home, gone, how, &mut copy).await;
                tracing::info!(%digest, %home, %gone, ?how, ?answer, "re-home: the blob's home answered");
                action = rehoming.on_answer(home, answer, Instant::now());
            }
            RehomeAction::Follow(parent) => {
                tracing::info!(%digest, %gone, %parent, "the parent went away; re-homed under another member of the blob's tree");
                return follow_down(network, metrics, digest, parent).await;
            }
            RehomeAction::TakeCopy => return copy,
            RehomeAction::FetchFromOrigin | RehomeAction::GiveUp => return None,
        }
    }
}

/// Asks the blob's `home` (or decides, when it is this node) where this node goes on now that
/// `gone` failed it, the way `how` says; a stored copy the home offers is kept in `copy`.
async fn ask_home_again(
    network: &PeerNetwork,
    metrics: &Arc<Metrics>,
    digest: BlobDigest,
    home: PeerId,
    gone: PeerId,
    how: AskHow,
    copy: &mut Option<PeerFetch>,
) -> HomeAnswer {
    if home == network.local_peer_id() {
        return match network.claim_locally_instead_of(digest, gone) {
            Some(parent) => HomeAnswer::Follow(parent),
            None => HomeAnswer::FetchIt,
        };
    }
    match how {
        AskHow::NamingTheFailed => match network.request_instead_of(home, digest, gone).await {
            Ok(PeerAnswer::Claimed(parent)) => HomeAnswer::Follow(parent),
            Err(TransferError::NotHere) => HomeAnswer::FetchIt,
            Ok(_) => {
                tracing::warn!(%digest, %home, "the home answered a re-homing request with more than a place");
                HomeAnswer::NoAnswer
            }
            Err(error) => {
                tracing::debug!(%digest, %home, %error, "the home did not answer a re-homing request");
                HomeAnswer::NoAnswer
            }
        },
        AskHow::Plainly => match ask(network, metrics, digest, home, &[home], true).await {
            Asked::Fetch(fetch @ PeerFetch::Parallel(_)) => {
                *copy = Some(fetch);
                HomeAnswer::StoredCopy
            }
            Asked::Fetch(PeerFetch::Follow(_)) => HomeAnswer::OwnFlight,
            Asked::Claimed(parent) => HomeAnswer::Follow(parent),
            Asked::Nothing => HomeAnswer::FetchIt,
            Asked::Failed => HomeAnswer::NoAnswer,
        },
    }
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
            Asked::Nothing | Asked::Failed => return None,
        }
    }
    None
}

/// What asking one peer gave.
enum Asked {
    Fetch(PeerFetch),
    Claimed(PeerId),
    /// It has nothing to offer (to a claim: this node fetches the blob).
    Nothing,
    /// It did not answer, or broke the protocol.
    Failed,
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
        claim: if claim {
            ClaimAsk::WhoFetches
        } else {
            ClaimAsk::NoClaim
        },
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
                order: FollowOrder::new(header.blob_len),
                chunking: header.chunking,
                metrics: metrics.clone(),
            })))
        }
        Ok(PeerAnswer::Claimed(claimant)) => Asked::Claimed(claimant),
        Ok(PeerAnswer::MapHash(..)) => {
            tracing::warn!(%digest, %peer, "peer sent a map hash where a map was asked for");
            Asked::Failed
        }
        Err(TransferError::NotHere) => Asked::Nothing,
        Err(error) => {
            metrics.peer_fetch_failures.inc();
            tracing::warn!(%digest, %peer, %error, "peer cannot send the blob; trying the next source");
            if error.is_misbehaviour() {
                network.avoid(peer);
            }
            Asked::Failed
        }
    }
}

/// A blob streamed by a holder that is still fetching it: the async shell of a [`FollowOrder`],
/// which decides what each frame means.
pub struct FollowFetch {
    stream: ShardStream,
    order: FollowOrder,
    chunking: ChunkingParams,
    metrics: Arc<Metrics>,
}

impl FollowFetch {
    async fn next_shard(&mut self) -> Result<Option<(Bytes, ShardHash)>, AssemblyError> {
        let peer = self.stream.peer();
        let failed = |error| AssemblyError::Peer { peer, error };
        match self.stream.next_frame().await.map_err(failed)? {
            NextFrame::Shard(frame, bytes) => {
                self.order
                    .on_shard(frame.index, bytes.len() as u64)
                    .map_err(failed)?;
                self.metrics
                    .record_shard_from_peer(&peer, bytes.len() as u64, None);
                Ok(Some((bytes, ShardHash::from_bytes(frame.hash))))
            }
            // Only the end frame completes a followed blob: the holder sends it once the blob
            // matched its digest there. A bare end of the stream is an error of the stream.
            NextFrame::End { count } => {
                self.order.on_end(count).map_err(failed)?;
                Ok(None)
            }
        }
    }
}

/// What a batch request reports, as it happens.
enum BatchEvent {
    /// Shard `index` arrived (BLAKE3-checked against the map).
    Shard(BatchId, usize, Bytes, ShardHash),
    /// The request sent every shard it asked for.
    Done(BatchId),
    /// The request failed after the shards it already reported.
    Failed(BatchId, TransferError),
}

/// A blob fetched from several holders of the whole blob at once: the shell of a
/// [`ParallelPlan`], which decides; this runs its requests as tasks, feeds it what they report and
/// waits until it says. Shards are handed on as soon as the next one in blob order has arrived,
/// whichever request brought it, so a request that fails half way loses nothing it delivered.
pub struct ParallelFetch {
    network: PeerNetwork,
    metrics: Arc<Metrics>,
    plan: ParallelPlan,
    map_hash: [u8; 32],
    map_source: PeerId,
    requests: HashMap<BatchId, tokio::task::JoinHandle<()>>,
    events: tokio::sync::mpsc::UnboundedReceiver<BatchEvent>,
    events_tx: tokio::sync::mpsc::UnboundedSender<BatchEvent>,
}

impl Drop for ParallelFetch {
    fn drop(&mut self) {
        for task in self.requests.values() {
            task.abort();
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
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        Self {
            map_hash: *blake3::hash(&map.encode()).as_bytes(),
            plan: ParallelPlan::new(map, map_source, holders),
            network,
            metrics,
            map_source,
            requests: HashMap::new(),
            events,
            events_tx,
        }
    }

    fn map(&self) -> &ShardMap {
        self.plan.map()
    }

    /// Carries out what the plan decided.
    fn act(&mut self) {
        while let Some(action) = self.plan.poll_action() {
            match action {
                Action::Request {
                    id,
                    peer,
                    shards,
                    hedge,
                } => {
                    if hedge {
                        tracing::debug!(digest = %self.map().blob_digest(), shard = shards.start, %peer, "shard is late; hedging with another holder");
                        self.metrics.hedged_requests.inc();
                    }
                    let task = self.send(id, shards, peer);
                    self.requests.insert(id, task);
                }
                Action::Cancel(id) => {
                    if let Some(task) = self.requests.remove(&id) {
                        task.abort();
                    }
                }
                Action::Avoid(peer) => self.network.avoid(peer),
            }
        }
    }

    /// Asks `peer` for shards `range`; their arrival is reported on the event channel.
    fn send(&self, id: BatchId, range: Range<usize>, peer: PeerId) -> tokio::task::JoinHandle<()> {
        let request = ShardRequest {
            blob: self.map().blob,
            shards: ShardSet::from_indices(range.clone()),
            map: MapWanted::HashOnly,
            claim: ClaimAsk::NoClaim,
        };
        let network = self.network.clone();
        let metrics = self.metrics.clone();
        let expected: Vec<[u8; 32]> = self.map().shards[range.clone()]
            .iter()
            .map(|e| e.hash)
            .collect();
        let map_hash = self.map_hash;
        let first = range.start;
        let events = self.events_tx.clone();
        tokio::spawn(async move {
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
                    let NextFrame::Shard(frame, bytes) = stream.next_frame().await? else {
                        return Err(TransferError::Protocol(
                            "an end frame in the answer of a holder of the whole blob",
                        ));
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
        })
    }

    fn on_event(&mut self, event: BatchEvent) {
        match event {
            BatchEvent::Shard(id, index, bytes, hash) => self.plan.on_shard(id, index, bytes, hash),
            BatchEvent::Done(id) => {
                self.requests.remove(&id);
                self.plan.on_done(id, Instant::now());
            }
            BatchEvent::Failed(id, error) => {
                let Some(task) = self.requests.remove(&id) else {
                    // Cancelled meanwhile.
                    return;
                };
                drop(task);
                self.metrics.peer_fetch_failures.inc();
                tracing::warn!(digest = %self.map().blob_digest(), %error, "peer failed a batch; asking another holder");
                let failure = if error.is_misbehaviour() {
                    Failure::Misbehaved
                } else if matches!(error, TransferError::NotHere) {
                    Failure::NotHere
                } else {
                    Failure::Failed
                };
                self.plan.on_failed(id, failure, error.to_string());
            }
        }
    }

    async fn next_piece(&mut self) -> Result<Option<Piece>, AssemblyError> {
        loop {
            let step = self.plan.step(Instant::now());
            self.act();
            let deadline = match step {
                Step::Piece(piece) => return Ok(Some(piece)),
                Step::Finished => return Ok(None),
                Step::NoPeersLeft(last) => return Err(AssemblyError::NoPeersLeft(last)),
                Step::Wait(deadline) => deadline,
            };
            // Wait for news, or until the plan's deadline (a late batch to hedge).
            let event = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                        Ok(event) => event,
                        Err(_) => continue,
                    }
                }
                None => self.events.recv().await,
            };
            match event {
                Some(event) => self.on_event(event),
                None => return Err(AssemblyError::NoPeersLeft("the requests ended".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::wire::{ShardFrame, WireMessage as _};

    use super::*;

    /// The bytes a holder still fetching a blob sends after its answer: one frame and the bytes
    /// per shard, then the end frame if `end` says so.
    fn in_flight_stream(shards: &[&[u8]], end: Option<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, shard) in shards.iter().enumerate() {
            let frame = ShardFrame {
                index: index as u32,
                len: shard.len() as u32,
                hash: *blake3::hash(shard).as_bytes(),
            };
            out.extend_from_slice(&frame.encode());
            out.extend_from_slice(shard);
        }
        if let Some(count) = end {
            out.extend_from_slice(&ShardFrame::end(count).encode());
        }
        out
    }

    fn follow(bytes: Vec<u8>, blob_len: Option<u64>) -> FollowFetch {
        FollowFetch {
            stream: ShardStream::from_bytes(PeerId::random(), bytes),
            order: FollowOrder::new(blob_len),
            chunking: ChunkingParams {
                min: 1,
                avg: 2,
                max: 4,
            },
            metrics: Arc::default(),
        }
    }

    async fn drain(fetch: &mut FollowFetch) -> (usize, Result<(), AssemblyError>) {
        let mut shards = 0;
        loop {
            match fetch.next_shard().await {
                Ok(Some(_)) => shards += 1,
                Ok(None) => return (shards, Ok(())),
                Err(error) => return (shards, Err(error)),
            }
        }
    }

    #[tokio::test]
    async fn a_followed_stream_that_ends_without_its_end_frame_is_a_failed_fetch() {
        // The parent's origin sent no length, so only the end frame can say the blob is whole.
        let mut fetch = follow(in_flight_stream(&[b"abc", b"defg"], None), None);
        let (shards, result) = drain(&mut fetch).await;
        assert_eq!(shards, 2);
        match result {
            Err(AssemblyError::Peer { error, .. }) => {
                assert!(matches!(error, TransferError::EndedEarly(_)));
                // Not a lie: the parent is not to be avoided for it.
                assert!(!error.is_misbehaviour());
            }
            other => panic!("an early end was taken as {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_followed_stream_is_complete_at_its_end_frame() {
        let mut fetch = follow(in_flight_stream(&[b"abc", b"defg"], Some(2)), None);
        let (shards, result) = drain(&mut fetch).await;
        assert_eq!(shards, 2);
        assert!(result.is_ok());
        // With a known length too.
        let mut fetch = follow(in_flight_stream(&[b"abc", b"defg"], Some(2)), Some(7));
        assert!(matches!(drain(&mut fetch).await, (2, Ok(()))));
    }

    #[tokio::test]
    async fn an_end_frame_that_miscounts_or_comes_short_is_refused() {
        let mut fetch = follow(in_flight_stream(&[b"abc", b"defg"], Some(3)), None);
        assert!(matches!(
            drain(&mut fetch).await,
            (
                2,
                Err(AssemblyError::Peer {
                    error: TransferError::Protocol(_),
                    ..
                })
            )
        ));
        let mut fetch = follow(in_flight_stream(&[b"abc"], Some(1)), Some(7));
        assert!(matches!(
            drain(&mut fetch).await,
            (
                1,
                Err(AssemblyError::Peer {
                    error: TransferError::EndedEarly(_),
                    ..
                })
            )
        ));
    }
}
