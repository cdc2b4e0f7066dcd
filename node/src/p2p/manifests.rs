//! Manifest lookup on `/shoal/manifests/1`: answering members from this node's manifest cache,
//! and asking one peer for a manifest. Message layout and flow are in `shoal_proto::wire`.
//!
//! The serving side reads the cache only through [`ManifestSource`], which `pullthrough`
//! implements (it owns how manifests and tags are cached), and never contacts an upstream on a
//! peer's behalf. The fetching side checks the answer's length before allocating and that the
//! sha256 of the manifest's bytes is the digest it names (and, for a request by digest, the digest
//! asked for) before returning it; when to ask peers, and what to trust a tag's answer for, is
//! `pullthrough`'s decision.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::AsyncWriteExt as _;
use libp2p::PeerId;
use sha2::{Digest as _, Sha256};
use shoal_proto::limits::{MAX_MANIFEST_BYTES, MAX_MEDIA_TYPE_BYTES};
use shoal_proto::wire::{FoundManifest, ManifestAnswer, ManifestRequest, WireMessage as _};
use shoal_proto::{BlobDigest, Reference, RepoName};
use tokio::sync::watch;

use super::accept::{accept_streams, Admit};

use super::transfer::{read_message, TransferError};
use super::{PeerTable, MANIFESTS_PROTOCOL};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Manifest requests served at once; further requests are refused (the requester asks another
/// member).
const CONCURRENT_SERVES: usize = 16;
/// Longest time one request may take to serve, from its first byte to the answer's last: a
/// requester that stops reading cannot hold a serving slot longer.
const SERVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait to open a stream to a peer (it is a connected member, so no dial is expected).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a request is sent again when its stream is refused or reset before any answer.
const OPEN_RETRIES: u32 = 2;

/// A manifest as one node's cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedManifest {
    /// The `Content-Type` it is served with.
    pub media_type: String,
    /// Its digest: the sha256 of `body`.
    pub digest: BlobDigest,
    /// The exact bytes.
    pub body: Bytes,
    /// For a tag: when the upstream resolved it (milliseconds since the Unix epoch), whether or not
    /// that is within the tag lifetime. `None` for a manifest asked for by digest.
    pub tag_fetched_at_ms: Option<u64>,
}

/// Read access to this node's manifest cache, for answering peers.
pub trait ManifestSource: Send + Sync + 'static {
    /// What the cache holds for `reference` in `repo` of `upstream` (the registry host name as
    /// containerd sends it in `ns`): by digest, the cached manifest; by tag, what the tag last
    /// resolved to and that manifest, however old. Blocking (reads the index); never contacts an
    /// upstream.
    fn cached_manifest(
        &self,
        upstream: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<CachedManifest>, StoreError>;
}

/// Why a manifest could not be fetched from a peer.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFetchError {
    /// The stream could not be opened.
    #[error("opening a stream: {0}")]
    Open(String),
    /// Writing the request failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The answer could not be read: cut short, over its limit, malformed or too slow.
    #[error("reading the answer: {0}")]
    Read(TransferError),
    /// The peer answered with a manifest that is not what it claims to be.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The stream could not be opened in time.
    #[error("timed out")]
    Timeout,
}

/// Asks `peer` for a manifest; `None` if it has none cached. A returned manifest's bytes hash to
/// its digest, which is the requested one for a request by digest.
pub(super) async fn fetch_manifest(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: ManifestRequest,
    _load: super::peers::OpenRequest,
) -> Result<Option<CachedManifest>, ManifestFetchError> {
    let (_, reference) = request
        .parse()
        .map_err(|_| ManifestFetchError::Protocol("request outside the grammar"))?;
    let sent = request.encode();
    let mut attempt = 0;
    let answer = loop {
        match ask_once(&mut control, peer, &sent).await {
            Ok(answer) => break answer,
            // A stream refused or reset before any answer (libp2p-stream drops an inbound stream
            // that arrives while another waits to be accepted, and a member over its serving
            // limit refuses) is worth asking again: the request has no effect until it is
            // answered.
            Err(
                ManifestFetchError::Open(_)
                | ManifestFetchError::Io(_)
                | ManifestFetchError::Read(TransferError::Io(_) | TransferError::EndedEarly(_)),
            ) if attempt < OPEN_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            Err(error) => return Err(error),
        }
    };
    let ManifestAnswer::Found(found) = answer else {
        return Ok(None);
    };
    verify_answer(&reference, found).map(Some)
}

/// Opens a stream, sends the request and reads the answer.
async fn ask_once(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &[u8],
) -> Result<ManifestAnswer, ManifestFetchError> {
    let mut stream =
        tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, MANIFESTS_PROTOCOL))
            .await
            .map_err(|_| ManifestFetchError::Timeout)?
            .map_err(|e| ManifestFetchError::Open(e.to_string()))?;
    stream.write_all(request).await?;
    stream.flush().await?;
    let answer = read_message::<ManifestAnswer>(&mut stream, SERVE_TIMEOUT)
        .await
        .map_err(ManifestFetchError::Read)?;
    let _ = stream.close().await;
    Ok(answer)
}

/// Checks a found manifest against the request and its own digest.
fn verify_answer(
    reference: &Reference,
    found: FoundManifest,
) -> Result<CachedManifest, ManifestFetchError> {
    let digest = found.digest();
    let tag_fetched_at_ms = match reference {
        Reference::Digest(wanted) if *wanted != digest => {
            return Err(ManifestFetchError::Protocol(
                "the answer names another digest",
            ))
        }
        Reference::Digest(_) => None,
        Reference::Tag(_) => Some(found.tag_fetched_at_ms.ok_or(ManifestFetchError::Protocol(
            "a tag's answer without the time it was resolved",
        ))?),
    };
    if Sha256::digest(&found.body).as_slice() != digest.as_bytes() {
        return Err(ManifestFetchError::Protocol(
            "the manifest's bytes do not match its digest",
        ));
    }
    Ok(CachedManifest {
        media_type: found.media_type,
        digest,
        body: Bytes::from(found.body),
        tag_fetched_at_ms,
    })
}

/// Serves manifest requests from members until `stop`.
pub(super) async fn serve(
    incoming: libp2p_stream::IncomingStreams,
    members: PeerTable,
    source: Arc<dyn ManifestSource>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    accept_streams(
        incoming,
        Admit::Members(members, metrics.clone()),
        CONCURRENT_SERVES,
        "manifest lookup",
        stop,
        |_peer, stream| {
            let (source, metrics) = (source.clone(), metrics.clone());
            async move {
                match tokio::time::timeout(SERVE_TIMEOUT, serve_one(stream, source, metrics)).await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "manifest request ended early"),
                    Err(_) => tracing::debug!("manifest request timed out"),
                }
            }
        },
    )
    .await;
}

/// Why serving one manifest request stopped.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("reading the request: {0}")]
    Read(TransferError),
    #[error("the request names no valid manifest: {0}")]
    Request(shoal_proto::wire::WireError),
    #[error("reading the cache: {0}")]
    Cache(String),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

async fn serve_one(
    mut stream: libp2p::Stream,
    source: Arc<dyn ManifestSource>,
    metrics: Arc<Metrics>,
) -> Result<(), ServeError> {
    let request: ManifestRequest = read_message(&mut stream, SERVE_TIMEOUT)
        .await
        .map_err(ServeError::Read)?;
    let (repo, reference) = request.parse().map_err(ServeError::Request)?;
    let upstream = request.upstream;
    let cached = {
        let (upstream, reference) = (upstream.clone(), reference.clone());
        tokio::task::spawn_blocking(move || source.cached_manifest(&upstream, &repo, &reference))
            .await
            .map_err(|e| ServeError::Cache(e.to_string()))?
            .map_err(|e| ServeError::Cache(e.to_string()))?
    };
    let answer = match cached.and_then(|cached| answer_for(&reference, cached)) {
        Some(found) => {
            tracing::info!(ns = %upstream, %reference, digest = %found.digest(), "manifest sent to peer");
            metrics.manifests_sent_peer.inc();
            ManifestAnswer::Found(found)
        }
        None => {
            tracing::debug!(ns = %upstream, %reference, "manifest asked for by a peer is not cached");
            ManifestAnswer::NotHere
        }
    };
    stream.write_all(&answer.encode()).await?;
    stream.close().await?;
    Ok(())
}

/// The answer to send for what the cache holds: `None` (sent as `NotHere`) when the cached entry
/// could not pass the requester's checks (another digest than asked for, a tag without its time,
/// or a media type or size outside the wire limits), so a peer is never sent what it must reject.
fn answer_for(reference: &Reference, cached: CachedManifest) -> Option<FoundManifest> {
    let consistent = match reference {
        Reference::Digest(wanted) => *wanted == cached.digest,
        Reference::Tag(_) => cached.tag_fetched_at_ms.is_some(),
    };
    let within_limits = !cached.body.is_empty()
        && cached.body.len() as u64 <= MAX_MANIFEST_BYTES
        && !cached.media_type.is_empty()
        && cached.media_type.len() <= MAX_MEDIA_TYPE_BYTES
        && cached.media_type.bytes().all(|b| b.is_ascii_graphic());
    (consistent && within_limits).then(|| FoundManifest {
        media_type: cached.media_type,
        digest: *cached.digest.as_bytes(),
        body: cached.body.to_vec(),
        tag_fetched_at_ms: match reference {
            Reference::Digest(_) => None,
            Reference::Tag(_) => cached.tag_fetched_at_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

    fn found(body: &[u8], fetched_at: Option<u64>) -> FoundManifest {
        FoundManifest {
            media_type: MEDIA_TYPE.into(),
            digest: Sha256::digest(body).into(),
            body: body.to_vec(),
            tag_fetched_at_ms: fetched_at,
        }
    }

    #[test]
    fn answers_are_verified_against_the_request_and_their_digest() {
        let body = br#"{"schemaVersion":2}"#;
        let digest = BlobDigest::from_bytes(Sha256::digest(body).into());
        let tag = Reference::Tag("v1".into());

        let by_digest = verify_answer(&Reference::Digest(digest), found(body, Some(5))).unwrap();
        assert_eq!(by_digest.digest, digest);
        assert_eq!(by_digest.body.as_ref(), body);
        assert_eq!(by_digest.tag_fetched_at_ms, None);
        let by_tag = verify_answer(&tag, found(body, Some(5))).unwrap();
        assert_eq!(by_tag.tag_fetched_at_ms, Some(5));

        let other = BlobDigest::from_bytes([7; 32]);
        assert!(matches!(
            verify_answer(&Reference::Digest(other), found(body, None)),
            Err(ManifestFetchError::Protocol(_))
        ));
        let mut forged = found(body, Some(5));
        forged.body.push(b' ');
        assert!(matches!(
            verify_answer(&tag, forged.clone()),
            Err(ManifestFetchError::Protocol(_))
        ));
        assert!(matches!(
            verify_answer(&Reference::Digest(digest), forged),
            Err(ManifestFetchError::Protocol(_))
        ));
        assert!(matches!(
            verify_answer(&tag, found(body, None)),
            Err(ManifestFetchError::Protocol(_))
        ));
    }

    #[test]
    fn only_consistent_cache_entries_are_sent() {
        let body = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let digest = BlobDigest::from_bytes(Sha256::digest(&body).into());
        let cached = CachedManifest {
            media_type: MEDIA_TYPE.into(),
            digest,
            body: body.clone(),
            tag_fetched_at_ms: Some(42),
        };
        let tag = Reference::Tag("v1".into());

        let sent = answer_for(&tag, cached.clone()).unwrap();
        assert_eq!(sent.tag_fetched_at_ms, Some(42));
        assert_eq!(sent.body, body.to_vec());
        // What is sent passes the requester's checks.
        assert!(verify_answer(&tag, sent).is_ok());
        let sent = answer_for(&Reference::Digest(digest), cached.clone()).unwrap();
        assert_eq!(sent.tag_fetched_at_ms, None);
        assert!(verify_answer(&Reference::Digest(digest), sent).is_ok());

        let elsewhere = Reference::Digest(BlobDigest::from_bytes([1; 32]));
        assert_eq!(answer_for(&elsewhere, cached.clone()), None);
        let untimed = CachedManifest {
            tag_fetched_at_ms: None,
            ..cached.clone()
        };
        assert_eq!(answer_for(&tag, untimed), None);
        let odd_type = CachedManifest {
            media_type: "text/plain; charset=utf-8".into(),
            ..cached
        };
        assert_eq!(answer_for(&tag, odd_type), None);
    }
}
