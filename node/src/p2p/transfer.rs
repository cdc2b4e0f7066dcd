//! Shard transfer on `/shoal/shards/1`: serving the blobs this node holds to members, and fetching
//! a blob's shard map and shards from a peer. Message layout and flow are in `shoal_proto::wire`.
//!
//! The fetching side checks every frame's length before allocating and every shard's BLAKE3
//! against the peer's shard map; the map itself is untrusted until the whole blob's sha256 matches,
//! which is `pullthrough`'s job (it ingests what this module returns).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::PeerId;
use shoal_proto::wire::{
    self, ShardAnswer, ShardFrame, ShardRequest, ShardSet, WireError, WireMessage,
};
use shoal_proto::{BlobDigest, ShardMap};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument as _;

use super::shaping::Shaping;
use super::{PeerTable, SHARDS_PROTOCOL};
use crate::metrics::Metrics;
use crate::store::ShardStore;

/// Transfers served at once; further requests are refused (the requester asks someone else).
const CONCURRENT_SERVES: usize = 32;
/// Longest wait for one frame or one shard's bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait to open a stream to a peer (dialling it if needed).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Reads one framed message, checking its length against the message's limit before allocating.
pub(super) async fn read_message<M: WireMessage>(
    stream: &mut (impl AsyncRead + Unpin),
) -> Result<M, TransferError> {
    let read = async {
        let mut prefix = [0u8; wire::PREFIX_LEN];
        stream.read_exact(&mut prefix).await?;
        let len = wire::body_len(prefix);
        wire::check_len::<M>(len)?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        Ok::<M, TransferError>(M::decode(&body)?)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| TransferError::Timeout)?
}

/// A blob being received from a peer: its (untrusted) shard map, and the shards in order.
pub struct PeerBlob {
    peer: PeerId,
    stream: libp2p::Stream,
    map: ShardMap,
    next: usize,
    _load: super::peers::OpenRequest,
}

impl std::fmt::Debug for PeerBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerBlob")
            .field("peer", &self.peer)
            .field("next", &self.next)
            .finish()
    }
}

impl PeerBlob {
    /// The peer sending the blob.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The peer's shard map of the blob (validated, but proven only by the blob's sha256).
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The next shard's bytes, BLAKE3-checked against the map; `None` after the last shard.
    pub async fn next_shard(&mut self) -> Result<Option<Bytes>, TransferError> {
        let Some(entry) = self.map.shards.get(self.next).copied() else {
            return Ok(None);
        };
        let frame: ShardFrame = read_message(&mut self.stream).await?;
        if frame.index as usize != self.next || frame.len != entry.len {
            return Err(TransferError::Protocol(
                "shard frame does not match the shard map",
            ));
        }
        // The length is bounded by the map entry, which `ShardMap::validate` bounded.
        let mut bytes = vec![0u8; entry.len as usize];
        tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut bytes))
            .await
            .map_err(|_| TransferError::Timeout)??;
        if blake3::hash(&bytes).as_bytes() != &entry.hash {
            return Err(TransferError::Protocol(
                "shard bytes do not match their BLAKE3 hash",
            ));
        }
        self.next += 1;
        Ok(Some(Bytes::from(bytes)))
    }
}

/// Asks `peer` for every shard of `digest`; returns once the shard map has arrived.
pub(super) async fn open_blob(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    digest: BlobDigest,
    load: super::peers::OpenRequest,
) -> Result<PeerBlob, TransferError> {
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, SHARDS_PROTOCOL))
        .await
        .map_err(|_| TransferError::Timeout)?
        .map_err(|e| TransferError::Open(e.to_string()))?;
    let request = ShardRequest {
        blob: *digest.as_bytes(),
        shards: ShardSet::All,
    };
    stream.write_all(&request.encode()).await?;
    stream.flush().await?;
    match read_message::<ShardAnswer>(&mut stream).await? {
        ShardAnswer::NotHere => Err(TransferError::NotHere),
        ShardAnswer::Map(map) if map.blob != *digest.as_bytes() => {
            Err(TransferError::Protocol("the shard map is for another blob"))
        }
        ShardAnswer::Map(map) => Ok(PeerBlob {
            peer,
            stream,
            map,
            next: 0,
            _load: load,
        }),
    }
}

/// Serves transfer requests from members until `stop`.
pub(super) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    members: PeerTable,
    shaping: Shaping,
    store: ShardStore,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(CONCURRENT_SERVES));
    loop {
        let (peer, stream) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        if !members.is_member(&peer) {
            tracing::warn!(%peer, "transfer request from a peer that has not proved membership; refused");
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many transfers in progress; request refused");
            continue;
        };
        let (store, metrics, shaping) = (store.clone(), metrics.clone(), shaping.clone());
        let peer_region = members.info(&peer).and_then(|info| info.region);
        let span = tracing::info_span!("peer", %peer);
        tokio::spawn(
            async move {
                if let Err(error) = serve_one(stream, store, metrics, shaping, peer_region).await {
                    tracing::debug!(%error, "transfer ended early");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn serve_one(
    mut stream: libp2p::Stream,
    store: ShardStore,
    metrics: Arc<Metrics>,
    shaping: Shaping,
    peer_region: Option<String>,
) -> Result<(), TransferError> {
    let request: ShardRequest = read_message(&mut stream).await?;
    let digest = request.blob_digest();
    // Hold a reader guard so the blob is not evicted while it is being sent.
    let opened = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.open_blob(&digest))
            .await
            .map_err(|e| TransferError::Io(std::io::Error::other(e)))?
            .map_err(|e| TransferError::Io(std::io::Error::other(e)))?
    };
    shaping.delay_answer(peer_region.as_deref()).await;
    let Some((map, _guard)) = opened else {
        stream.write_all(&ShardAnswer::NotHere.encode()).await?;
        stream.close().await?;
        return Ok(());
    };
    stream
        .write_all(&ShardAnswer::Map(map.clone()).encode())
        .await?;
    let mut sent = 0u64;
    for (index, entry) in map.shards.iter().copied().enumerate() {
        if !request.shards.contains(index) {
            continue;
        }
        let bytes = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.read_shard(&entry))
                .await
                .map_err(|e| TransferError::Io(std::io::Error::other(e)))?
        };
        // A shard that fails verification here is never sent: closing the stream makes the
        // requester go elsewhere.
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                metrics.shard_verify_failures.inc();
                tracing::warn!(%digest, %error, "cannot send a stored shard; transfer stopped");
                return Err(TransferError::Io(std::io::Error::other(error)));
            }
        };
        let frame = ShardFrame {
            index: index as u32,
            len: entry.len,
        };
        stream.write_all(&frame.encode()).await?;
        shaping.write_paced(&mut stream, &bytes).await?;
        sent += bytes.len() as u64;
    }
    stream.close().await?;
    metrics.bytes_sent_peer.add(sent);
    tracing::info!(%digest, bytes = sent, "blob sent to peer");
    Ok(())
}
