//! Shard transfer on `/shoal/shards/1`: serving blobs to members (whole blobs from the store,
//! blobs still being fetched from the flight that fetches them), and asking a peer for shards.
//! Message layout and flow are in `shoal_proto::wire`.
//!
//! The asking side checks every frame's length before allocating and every shard's BLAKE3 against
//! the frame's hash; which hash is right (the shard map's) is the caller's check, and the map
//! itself is untrusted until the whole blob's sha256 matches, which is `pullthrough`'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::PeerId;
use shoal_proto::wire::{
    self, ClaimAsk, FailedMember, InFlightHeader, MapWanted, ShardAnswer, ShardFrame, ShardRequest,
    WireError, WireMessage,
};
use shoal_proto::{BlobDigest, ShardMap};
use tokio::sync::watch;

use super::accept::{accept_streams, Admit};
use super::claims::{Claim, Claims, Renewal};
use super::followers::{Admission, Followers};
use super::peers::OpenRequest;
use super::shaping::Shaping;
use super::{PeerTable, SHARDS_PROTOCOL};
use crate::metrics::Metrics;
use crate::store::ShardStore;

/// Transfers served at once; further requests are refused (the requester asks someone else).
const CONCURRENT_SERVES: usize = 64;
/// Longest wait for one frame or one shard's bytes from a holder of the whole blob.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next shard of a blob the holder is still fetching (it waits on its own
/// source).
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait to open a stream to a peer (dialling it if needed).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a request is sent again when its stream is refused or reset before any answer.
const OPEN_RETRIES: u32 = 2;
/// Largest piece a message body is read in (the body's buffer grows piece by piece).
const READ_PIECE: usize = 64 * 1024;

/// Why a transfer from a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The stream could not be opened.
    #[error("opening a stream: {0}")]
    Open(String),
    /// Reading or writing the stream failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A message was malformed or over its limit.
    #[error("bad message: {0}")]
    Wire(#[from] WireError),
    /// The peer does not have the blob.
    #[error("the peer does not have the blob")]
    NotHere,
    /// The peer broke the protocol (wrong blob, shard out of order, bad hash).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer went quiet.
    #[error("timed out")]
    Timeout,
    /// The peer's stream ended before everything it promised had come. Not misbehaviour: a
    /// holder whose own fetch failed, or that is shutting down, ends its streams the same way, and
    /// every shard it did send was checked.
    #[error("the stream ended early: {0}")]
    EndedEarly(&'static str),
}

impl TransferError {
    /// Whether the peer sent something it must not (as opposed to failing or going away).
    pub fn is_misbehaviour(&self) -> bool {
        matches!(self, TransferError::Protocol(_) | TransferError::Wire(_))
    }
}

/// One shard of a blob this node is still fetching, as offered to a peer.
#[derive(Debug, Clone)]
pub struct InFlightShard {
    /// Its BLAKE3.
    pub hash: [u8; 32],
    /// Its bytes.
    pub bytes: Bytes,
}

/// A blob this node is still fetching, offered to a peer: its shards in order as they are
/// written; the stream ends after the last one once the blob has matched its digest, and yields an
/// error if the fetch fails.
pub struct InFlightBlob {
    /// The blob's length if known, and how it is cut.
    pub header: InFlightHeader,
    /// The shards.
    pub shards: BoxStream<'static, Result<InFlightShard, std::io::Error>>,
}

/// What this node can offer a peer for a blob it has not committed.
pub enum Offer {
    /// The blob was committed meanwhile: look in the store again.
    Stored,
    /// The blob is being fetched and may be followed.
    InFlight(InFlightBlob),
    /// Nothing.
    NotHere,
}

/// Blobs this node is fetching, for peers: implemented by `pullthrough`, which owns the flights
/// (this module never starts a fetch).
pub trait InFlightBlobs: Send + Sync + 'static {
    /// Offers `digest` to a peer. With `wait`, a flight that has not yet picked its source is
    /// waited for; without, only a flight that has already picked its source is offered.
    fn offer(&self, digest: BlobDigest, wait: bool) -> BoxFuture<'static, Offer>;
}

/// The late-bound in-flight source (set once the pull-through cache exists).
pub(super) type InFlightSlot = Arc<OnceLock<Arc<dyn InFlightBlobs>>>;

/// Reads one framed message: its length is checked against the message's limit and its header
/// against the message's kind before anything else is read, and the body is read piece by piece
/// into the buffer it is decoded from, which grows with the bytes that arrived (see
/// [`wire::BodyReader`]): a member that announces a large answer and sends little costs little.
pub(super) async fn read_message<M: WireMessage>(
    stream: &mut (impl AsyncRead + Unpin),
    timeout: Duration,
) -> Result<M, TransferError> {
    let read = async {
        let mut prefix = [0u8; wire::PREFIX_LEN];
        stream.read_exact(&mut prefix).await?;
        let mut body = wire::BodyReader::<M>::new(prefix)?;
        let mut piece = vec![0u8; body.remaining().min(READ_PIECE)];
        while body.remaining() > 0 {
            let n = body.remaining().min(piece.len());
            stream.read_exact(&mut piece[..n]).await?;
            body.feed(&piece[..n])?;
        }
        Ok::<M, TransferError>(body.finish()?)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| TransferError::Timeout)?
}

/// Reads the `len` raw bytes of one shard into one buffer of that capacity (so they are never
/// copied again), [`READ_PIECE`] at a time: the memory touched is what arrived plus one piece.
async fn read_shard_bytes(
    stream: &mut (impl AsyncRead + Unpin),
    len: usize,
) -> Result<Vec<u8>, std::io::Error> {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let start = bytes.len();
        bytes.resize(len.min(start + READ_PIECE), 0);
        stream.read_exact(&mut bytes[start..]).await?;
    }
    Ok(bytes)
}

/// What came next on a transfer stream.
#[derive(Debug)]
pub enum NextFrame {
    /// A shard: its frame and its bytes, BLAKE3-checked against the frame's hash.
    Shard(ShardFrame, Bytes),
    /// The end frame of an in-flight answer, after `count` shards.
    End {
        /// How many shards the holder says it sent.
        count: u32,
    },
}

/// The shard frames of one answer, as they arrive.
pub struct ShardStream {
    peer: PeerId,
    stream: Box<dyn AsyncRead + Send + Unpin>,
    timeout: Duration,
    _load: OpenRequest,
}

impl std::fmt::Debug for ShardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStream")
            .field("peer", &self.peer)
            .finish()
    }
}

impl ShardStream {
    /// The frames `peer` sends on `stream`.
    pub(crate) fn new(
        peer: PeerId,
        stream: impl AsyncRead + Send + Unpin + 'static,
        timeout: Duration,
        load: OpenRequest,
    ) -> Self {
        Self {
            peer,
            stream: Box::new(stream),
            timeout,
            _load: load,
        }
    }

    /// The frames of `bytes`, as if `peer` sent them (for tests of the fetching side).
    #[cfg(test)]
    pub(crate) fn from_bytes(peer: PeerId, bytes: Vec<u8>) -> Self {
        Self::new(
            peer,
            futures::io::Cursor::new(bytes),
            READ_TIMEOUT,
            PeerTable::default().begin_request(peer),
        )
    }

    /// The peer answering.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The next frame, with its bytes BLAKE3-checked against the frame's hash. A stream that ends
    /// before a frame is [`TransferError::EndedEarly`]: callers know how many shards they asked
    /// for, and an in-flight answer is complete only at its end frame, never at a bare end of the
    /// stream (a holder whose fetch failed ends its streams that way).
    pub async fn next_frame(&mut self) -> Result<NextFrame, TransferError> {
        let frame: ShardFrame = match read_message(&mut self.stream, self.timeout).await {
            Ok(frame) => frame,
            Err(TransferError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(TransferError::EndedEarly(
                    "the stream ended without its end frame",
                ))
            }
            Err(e) => return Err(e),
        };
        if frame.is_end() {
            return Ok(NextFrame::End { count: frame.index });
        }
        // The length is bounded by `ShardFrame::check` (at most one maximum shard), and the
        // buffer is filled piece by piece: only bytes that arrived (and one piece) are touched, so
        // a member that announces a large shard and sends little costs little memory.
        let bytes = tokio::time::timeout(
            self.timeout,
            read_shard_bytes(&mut self.stream, frame.len as usize),
        )
        .await
        .map_err(|_| TransferError::Timeout)??;
        if blake3::hash(&bytes).as_bytes() != &frame.hash {
            return Err(TransferError::Protocol(
                "shard bytes do not match their BLAKE3 hash",
            ));
        }
        Ok(NextFrame::Shard(frame, Bytes::from(bytes)))
    }
}

/// A holder's answer to a request, with the stream its shards follow on.
#[derive(Debug)]
pub enum PeerAnswer {
    /// The holder has the whole blob; its map.
    Map(ShardMap, ShardStream),
    /// The holder has the whole blob; its map's BLAKE3.
    MapHash([u8; 32], ShardStream),
    /// The holder is fetching the blob; every shard follows in order.
    InFlight(InFlightHeader, ShardStream),
    /// The blob's home says this member is fetching the blob: ask it.
    Claimed(PeerId),
}

/// Sends `request` to `peer` and reads the answer. A re-homing request (claim
/// `WhoElseFetches`) names in `failed` the member that failed the requester; any other ignores it.
pub(super) async fn request(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: ShardRequest,
    failed: Option<PeerId>,
    load: OpenRequest,
) -> Result<PeerAnswer, TransferError> {
    let mut sent = request.encode();
    if request.claim == ClaimAsk::WhoElseFetches {
        let Some(failed) = failed else {
            return Err(TransferError::Protocol(
                "a re-homing request must name the member that failed",
            ));
        };
        sent.extend_from_slice(
            &FailedMember {
                peer: failed.to_bytes(),
            }
            .encode(),
        );
    }
    // A holder whose fetch has not picked its source yet answers once it has.
    let first_answer = IN_FLIGHT_TIMEOUT;
    let mut attempt = 0;
    let (stream, answer) = loop {
        match ask_once(&mut control, peer, &sent, first_answer).await {
            Ok(answered) => break answered,
            // A stream refused or reset before any answer (libp2p-stream refuses an inbound
            // stream while another waits to be accepted) is worth asking again: the request has
            // no effect until it is answered.
            Err(TransferError::Open(_) | TransferError::Io(_)) if attempt < OPEN_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let shards = |stream: libp2p::Stream, timeout| ShardStream::new(peer, stream, timeout, load);
    match answer {
        ShardAnswer::NotHere => Err(TransferError::NotHere),
        ShardAnswer::Map(map) if map.blob != request.blob => {
            Err(TransferError::Protocol("the shard map is for another blob"))
        }
        ShardAnswer::Map(map) => Ok(PeerAnswer::Map(map, shards(stream, READ_TIMEOUT))),
        ShardAnswer::MapHash(hash) => Ok(PeerAnswer::MapHash(hash, shards(stream, READ_TIMEOUT))),
        ShardAnswer::InFlight(header) => Ok(PeerAnswer::InFlight(
            header,
            shards(stream, IN_FLIGHT_TIMEOUT),
        )),
        ShardAnswer::Claimed(claimant) => PeerId::from_bytes(&claimant)
            .map(PeerAnswer::Claimed)
            .map_err(|_| TransferError::Protocol("the claimant is not a peer id")),
    }
}

/// Opens a stream, sends the request's frames and reads the answer.
async fn ask_once(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &[u8],
    timeout: Duration,
) -> Result<(libp2p::Stream, ShardAnswer), TransferError> {
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, SHARDS_PROTOCOL))
        .await
        .map_err(|_| TransferError::Timeout)?
        .map_err(|e| TransferError::Open(e.to_string()))?;
    stream.write_all(request).await?;
    stream.flush().await?;
    let answer = read_message::<ShardAnswer>(&mut stream, timeout).await?;
    Ok((stream, answer))
}

/// What serving needs, shared by every transfer.
#[derive(Clone)]
pub(super) struct Serving {
    pub(super) members: PeerTable,
    pub(super) store: ShardStore,
    pub(super) in_flight: InFlightSlot,
    pub(super) metrics: Arc<Metrics>,
    /// TESTING ONLY delays and pacing (off in production).
    pub(super) shaping: Shaping,
    /// Who fetches which blob, for the blobs this node is home of.
    pub(super) claims: Claims,
    /// Who follows this node's fetches.
    pub(super) followers: Followers,
    /// This node.
    pub(super) local: PeerId,
}

/// Serves transfer requests from members until `stop`.
pub(super) async fn serve(
    incoming: libp2p_stream::IncomingStreams,
    serving: Serving,
    stop: watch::Receiver<bool>,
) {
    let admit = Admit::Members(serving.members.clone(), serving.metrics.clone());
    accept_streams(
        incoming,
        admit,
        CONCURRENT_SERVES,
        "shard transfer",
        stop,
        |peer, stream| {
            let serving = serving.clone();
            async move {
                if let Err(error) = serve_one(stream, peer, serving).await {
                    tracing::debug!(%error, "transfer ended early");
                }
            }
        },
    )
    .await;
}

async fn serve_one(
    mut stream: libp2p::Stream,
    peer: PeerId,
    serving: Serving,
) -> Result<(), TransferError> {
    let request: ShardRequest = read_message(&mut stream, READ_TIMEOUT).await?;
    let digest = request.blob_digest();
    let peer_region = serving.members.info(&peer).and_then(|info| info.region);
    if request.claim.is_renewal() {
        // Only the lease is renewed: nothing is offered, placed or sent (see `claims`).
        let renewal = match request.claim {
            ClaimAsk::StillFetchingFromOrigin => Renewal::FromOrigin,
            _ => Renewal::Following,
        };
        let renewed = serving
            .claims
            .renew(digest, peer, renewal, peer_region, Instant::now());
        tracing::trace!(%digest, %peer, renewed, "claim renewal");
        return answer(&mut stream, ShardAnswer::NotHere).await;
    }
    if request.claim == ClaimAsk::WhoElseFetches {
        return answer_re_homing(stream, peer, peer_region, digest, &serving).await;
    }
    let claim = request.claim == ClaimAsk::WhoFetches;
    serving.shaping.delay_answer(peer_region.as_deref()).await;
    let mut offered = false;
    loop {
        // Hold a reader guard so the blob is not evicted while it is being sent.
        let opened = {
            let store = serving.store.clone();
            tokio::task::spawn_blocking(move || store.open_blob(&digest))
                .await
                .map_err(|e| TransferError::Io(std::io::Error::other(e)))?
                .map_err(|e| TransferError::Io(std::io::Error::other(e)))?
        };
        if let Some((map, _guard)) = opened {
            return send_stored(stream, peer, &request, map, &serving).await;
        }
        if offered {
            return answer(&mut stream, ShardAnswer::NotHere).await;
        }
        offered = true;
        // A request with a claim never waits on this node's own fetch: the home answers at once
        // (a fetch here that has not picked its source may be about to follow the requester).
        let offered_now = offer(&serving, digest, !claim).await;
        match offered_now {
            Offer::Stored => continue,
            Offer::InFlight(blob) => {
                return follow_or_redirect(stream, peer, peer_region, digest, blob, &serving).await
            }
            Offer::NotHere if !claim => return answer(&mut stream, ShardAnswer::NotHere).await,
            Offer::NotHere => {}
        }
        match serving
            .claims
            .claim(digest, peer, peer_region.clone(), Instant::now())
        {
            Claim::Granted => {
                tracing::info!(%digest, asker = %peer, "claim granted as the blob's home: the asker fetches it from the origin");
                return answer(&mut stream, ShardAnswer::NotHere).await;
            }
            Claim::Held(holder) if holder == serving.local => {
                // This node fetches it: wait until its flight is under way, then offer it.
                match offer(&serving, digest, true).await {
                    Offer::Stored => continue,
                    Offer::InFlight(blob) => {
                        return follow_or_redirect(
                            stream,
                            peer,
                            peer_region,
                            digest,
                            blob,
                            &serving,
                        )
                        .await
                    }
                    Offer::NotHere => return answer(&mut stream, ShardAnswer::NotHere).await,
                }
            }
            Claim::Held(holder) => {
                tracing::debug!(%digest, claimant = %holder, "the blob is being fetched by another member");
                return answer(&mut stream, ShardAnswer::Claimed(holder.to_bytes())).await;
            }
        }
    }
}

/// Answers a re-homing request from the blob's tree alone (see `claims`): another member to
/// follow than the one the requester names as having failed it, or `NotHere` (fetch the rest from
/// the origin). Never this node's own copy or flight unless the tree places the requester under
/// it: the requester then asks this node plainly.
async fn answer_re_homing(
    mut stream: libp2p::Stream,
    peer: PeerId,
    peer_region: Option<String>,
    digest: BlobDigest,
    serving: &Serving,
) -> Result<(), TransferError> {
    let named: FailedMember = read_message(&mut stream, READ_TIMEOUT).await?;
    let failed = PeerId::from_bytes(&named.peer)
        .map_err(|_| TransferError::Protocol("the failed member is not a peer id"))?;
    let claim = serving
        .claims
        .claim_instead_of(digest, peer, failed, peer_region, Instant::now());
    tracing::info!(%digest, asker = %peer, %failed, answer = ?claim, "re-home answered as the blob's home");
    match claim {
        Claim::Granted => answer(&mut stream, ShardAnswer::NotHere).await,
        Claim::Held(parent) => answer(&mut stream, ShardAnswer::Claimed(parent.to_bytes())).await,
    }
}

async fn offer(serving: &Serving, digest: BlobDigest, wait: bool) -> Offer {
    match serving.in_flight.get() {
        Some(in_flight) => in_flight.offer(digest, wait).await,
        None => Offer::NotHere,
    }
}

async fn answer(stream: &mut libp2p::Stream, answer: ShardAnswer) -> Result<(), TransferError> {
    stream.write_all(&answer.encode()).await?;
    stream.close().await?;
    Ok(())
}

/// Answers from a committed blob: the map (or its hash), then the wanted shards.
async fn send_stored(
    mut stream: libp2p::Stream,
    peer: PeerId,
    request: &ShardRequest,
    map: ShardMap,
    serving: &Serving,
) -> Result<(), TransferError> {
    let digest = request.blob_digest();
    let answer = match request.map {
        MapWanted::Full => ShardAnswer::Map(map.clone()),
        MapWanted::HashOnly => ShardAnswer::MapHash(*blake3::hash(&map.encode()).as_bytes()),
    };
    stream.write_all(&answer.encode()).await?;
    let mut sent = 0u64;
    for (index, entry) in map.shards.iter().copied().enumerate() {
        if !request.shards.contains(index) {
            continue;
        }
        let bytes = {
            let store = serving.store.clone();
            tokio::task::spawn_blocking(move || store.read_shard(&entry))
                .await
                .map_err(|e| TransferError::Io(std::io::Error::other(e)))?
        };
        // A shard that fails verification here is never sent: closing the stream makes the
        // requester go elsewhere.
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                serving.metrics.shard_verify_failures.inc();
                tracing::warn!(%digest, %error, "cannot send a stored shard; transfer stopped");
                return Err(TransferError::Io(std::io::Error::other(error)));
            }
        };
        let frame = ShardFrame {
            index: index as u32,
            len: entry.len,
            hash: entry.hash,
        };
        stream.write_all(&frame.encode()).await?;
        serving.shaping.write_paced(&mut stream, &bytes).await?;
        // Counted shard by shard, so a transfer cut short still reports what it delivered.
        serving
            .metrics
            .record_bytes_sent_to_peer(&peer, bytes.len() as u64);
        sent += bytes.len() as u64;
    }
    stream.close().await?;
    tracing::debug!(%digest, bytes = sent, "shards sent to peer");
    Ok(())
}

/// Streams this node's fetch of `digest` to `peer`, unless the fetch already feeds as many
/// followers as it may: then `peer` is told which follower to ask instead (see `followers`).
async fn follow_or_redirect(
    mut stream: libp2p::Stream,
    peer: PeerId,
    peer_region: Option<String>,
    digest: BlobDigest,
    blob: InFlightBlob,
    serving: &Serving,
) -> Result<(), TransferError> {
    match serving.followers.admit(digest, peer, peer_region) {
        Admission::Follow(_following) => {
            let _counted = Counted::new(&serving.metrics.p2p_followers);
            send_in_flight(stream, peer, digest, blob, serving).await
        }
        Admission::Elsewhere(next) => {
            serving.metrics.p2p_followers_sent_on.inc();
            drop(blob);
            tracing::debug!(%digest, %next, "this fetch feeds enough followers; sending the peer to one of them");
            answer(&mut stream, ShardAnswer::Claimed(next.to_bytes())).await
        }
    }
}

/// One more in a gauge for as long as it lives (also when the future holding it is dropped).
struct Counted<'a>(&'a AtomicU64);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers from a blob still being fetched: every shard in order as it is written, then the end
/// frame once the blob is verified here.
async fn send_in_flight(
    mut stream: libp2p::Stream,
    peer: PeerId,
    digest: BlobDigest,
    mut blob: InFlightBlob,
    serving: &Serving,
) -> Result<(), TransferError> {
    stream
        .write_all(&ShardAnswer::InFlight(blob.header).encode())
        .await?;
    stream.flush().await?;
    let mut index = 0u32;
    let mut sent = 0u64;
    while let Some(shard) = blob.shards.next().await {
        let shard = shard?;
        let frame = ShardFrame {
            index,
            len: shard.bytes.len() as u32,
            hash: shard.hash,
        };
        stream.write_all(&frame.encode()).await?;
        serving
            .shaping
            .write_paced(&mut stream, &shard.bytes)
            .await?;
        serving
            .metrics
            .record_bytes_sent_to_peer(&peer, shard.bytes.len() as u64);
        sent += shard.bytes.len() as u64;
        index += 1;
    }
    stream.write_all(&ShardFrame::end(index).encode()).await?;
    stream.close().await?;
    tracing::info!(%digest, bytes = sent, shards = index, "blob sent to peer while fetching it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shard_bytes_are_read_whole_across_pieces_and_no_further() {
        let len = 3 * READ_PIECE + 5;
        let sent: Vec<u8> = (0..len + 7).map(|i| (i % 251) as u8).collect();
        let mut stream = futures::io::Cursor::new(sent.clone());
        let bytes = read_shard_bytes(&mut stream, len).await.unwrap();
        assert_eq!(bytes, sent[..len]);
        // What follows the shard (the next frame) is left on the stream.
        assert_eq!(stream.position(), len as u64);
    }

    #[tokio::test]
    async fn a_shard_cut_short_is_an_error_not_a_short_shard() {
        let mut stream = futures::io::Cursor::new(vec![7u8; READ_PIECE + 1]);
        let error = read_shard_bytes(&mut stream, 2 * READ_PIECE)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_stream_that_ends_early_is_a_failure_not_misbehaviour() {
        // A parent whose own fetch failed ends its followers' streams early; they must go on from
        // the origin without disconnecting and avoiding it as if it had lied.
        assert!(!TransferError::EndedEarly("the blob ended short").is_misbehaviour());
        assert!(!TransferError::Timeout.is_misbehaviour());
        assert!(!TransferError::NotHere.is_misbehaviour());
        assert!(
            TransferError::Protocol("shard bytes do not match their BLAKE3 hash").is_misbehaviour()
        );
    }
}
