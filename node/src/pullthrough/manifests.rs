//! Manifest requests: digests are cached for good, tags for a TTL, stale tags are served while the
//! upstream is down.
//!
//! When the upstream is unavailable and the cache cannot answer (no stale tag either), members of
//! the peer network are asked ([`PullThrough::manifest_from_peers`]): a few at a time, best ranked
//! first, the first valid answer wins, all within [`PEER_MANIFEST_TIMEOUT`]. A manifest by digest is
//! proved by its sha256; a tag's answer can only be trusted because the member holds the network
//! key, so its manifest must still hash to the digest it names, and the tag is cached as already
//! stale: it is served while the upstream stays down and asked of the upstream again as soon as it
//! is back. Peers are never asked while the upstream answers. [`CachedManifests`] is the other side:
//! what this node tells members, from its cache only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use libp2p::PeerId;
use sha2::{Digest as _, Sha256};
use shoal_proto::limits::MAX_MANIFEST_BYTES;
use shoal_proto::records::{ManifestRecord, TagRecord};
use shoal_proto::{BlobDigest, Reference, RepoName};
use tracing::Instrument as _;

use super::{PullError, PullThrough};
use crate::p2p::{CachedManifest, ManifestFetchError, ManifestSource};
use crate::store::{now_ms, ShardStore, StoreError};
use crate::upstream::Upstream;

/// Members asked for one manifest at once.
const PEER_MANIFEST_FANOUT: usize = 3;
/// Most members asked for one manifest in all.
const PEER_MANIFEST_CANDIDATES: usize = 8;
/// Longest wait for a member's valid answer, over all members asked.
const PEER_MANIFEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The manifest media types Shoal serves: OCI manifests and indexes, Docker schema 2 manifests
/// and manifest lists.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A manifest ready to send.
#[derive(Debug, Clone)]
pub struct ManifestReply {
    /// Its `Content-Type`.
    pub media_type: String,
    /// The exact bytes.
    pub body: Bytes,
    /// Their sha256.
    pub digest: BlobDigest,
    /// Whether it came from the cache.
    pub from_cache: bool,
}

/// Whether a client's `Accept` admits `media_type` (no header, or `*/*`, admits everything).
fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    accept
        .split(',')
        .map(|item| item.split(';').next().unwrap_or("").trim())
        .any(|item| item == media_type || item == "*/*")
}

/// The `Accept` sent upstream: the manifest types the client listed, or all of them when it listed
/// none (no header, or only wildcards; registries read `*/*` as "no OCI", so it is not forwarded).
fn upstream_accept(client: Option<&str>) -> String {
    let listed: Vec<&str> = MANIFEST_MEDIA_TYPES
        .iter()
        .copied()
        .filter(|t| {
            client.is_some_and(|c| {
                c.split(',')
                    .any(|item| item.split(';').next().unwrap_or("").trim() == *t)
            })
        })
        .collect();
    if listed.is_empty() {
        MANIFEST_MEDIA_TYPES.join(", ")
    } else {
        listed.join(", ")
    }
}

/// The media type of a manifest body: the upstream's `Content-Type` if it is a manifest type,
/// else the body's own `mediaType`, else what its shape says.
fn media_type_of(header: Option<&str>, body: &serde_json::Value) -> String {
    if let Some(header) = header.filter(|h| MANIFEST_MEDIA_TYPES.contains(h)) {
        return header.to_owned();
    }
    if let Some(declared) = body
        .get("mediaType")
        .and_then(|m| m.as_str())
        .filter(|m| MANIFEST_MEDIA_TYPES.contains(m))
    {
        return declared.to_owned();
    }
    if body.get("manifests").is_some() {
        MANIFEST_MEDIA_TYPES[0].to_owned()
    } else {
        MANIFEST_MEDIA_TYPES[1].to_owned()
    }
}

impl PullThrough {
    /// Answers a manifest request.
    pub async fn manifest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
    ) -> Result<ManifestReply, PullError> {
        let key = match reference {
            Reference::Digest(digest) => digest.to_string(),
            Reference::Tag(tag) => tag_key(upstream.name(), repo, tag),
        };
        // Coalesce concurrent requests for the same manifest into one upstream request.
        let lock = {
            let mut locks = self
                .manifest_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let result = {
            let _held = lock.lock().await;
            self.manifest_locked(upstream, repo, reference, accept, &key)
                .await
        };
        let mut locks = self
            .manifest_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&key);
        }
        result
    }

    async fn manifest_locked(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
        key: &str,
    ) -> Result<ManifestReply, PullError> {
        match reference {
            Reference::Digest(digest) => {
                if let Some(record) = self.store.manifest(digest)? {
                    self.metrics.cache_hits.inc();
                    return Ok(ManifestReply {
                        media_type: record.media_type,
                        body: record.body.into(),
                        digest: *digest,
                        from_cache: true,
                    });
                }
                self.metrics.cache_misses.inc();
                let reply = match self.fetch_manifest(upstream, repo, reference, accept).await {
                    Ok(reply) => reply,
                    Err(PullError::UpstreamUnavailable(reason)) => {
                        let Some(found) = self.manifest_from_peers(upstream, repo, reference).await
                        else {
                            return Err(PullError::UpstreamUnavailable(reason));
                        };
                        tracing::info!(%digest, %reason, "upstream unavailable: manifest taken from a peer");
                        let reply = reply_from_peer(found);
                        self.cache_manifest(&reply)?;
                        return Ok(reply);
                    }
                    Err(other) => return Err(other),
                };
                if reply.digest != *digest {
                    return Err(PullError::UpstreamInvalid(format!(
                        "manifest {digest} has digest {}",
                        reply.digest
                    )));
                }
                self.cache_manifest(&reply)?;
                Ok(reply)
            }
            Reference::Tag(_) => {
                if let Some(held) = self.held_tags.as_ref().and_then(|h| h.held_digest(key)) {
                    return self.held_manifest(upstream, repo, key, held, accept).await;
                }
                let cached = self.store.tag(key)?;
                let cached_manifest = match &cached {
                    Some(tag) => self.store.manifest(&BlobDigest::from_bytes(tag.digest))?,
                    None => None,
                };
                if let (Some(tag), Some(manifest)) = (&cached, &cached_manifest) {
                    let fresh = self.tag_times.is_fresh(
                        key,
                        tag.fetched_at_ms,
                        std::time::Instant::now(),
                        now_ms(),
                        self.config.tag_ttl,
                    );
                    if fresh && accepts(accept, &manifest.media_type) {
                        self.metrics.cache_hits.inc();
                        return Ok(reply_from(tag, manifest));
                    }
                }
                self.metrics.cache_misses.inc();
                match self.fetch_manifest(upstream, repo, reference, accept).await {
                    Ok(reply) => {
                        self.cache_manifest(&reply)?;
                        let record = TagRecord {
                            digest: *reply.digest.as_bytes(),
                            media_type: reply.media_type.clone(),
                            fetched_at_ms: now_ms(),
                        };
                        self.store.put_tag(key, &record)?;
                        self.tag_times.resolved(key, std::time::Instant::now());
                        Ok(reply)
                    }
                    Err(PullError::UpstreamUnavailable(reason)) => {
                        if let (Some(tag), Some(manifest)) = (&cached, &cached_manifest) {
                            self.metrics.stale_tags_served.inc();
                            tracing::warn!(tag = key, %reason, "upstream unavailable: serving the cached tag stale");
                            return Ok(reply_from(tag, manifest));
                        }
                        let Some(found) = self.manifest_from_peers(upstream, repo, reference).await
                        else {
                            return Err(PullError::UpstreamUnavailable(reason));
                        };
                        let now = now_ms();
                        let peer_fetched_at = found.tag_fetched_at_ms.unwrap_or(0);
                        tracing::warn!(
                            tag = key,
                            digest = %found.digest,
                            resolved_by_peer_s_ago = now.saturating_sub(peer_fetched_at) / 1000,
                            %reason,
                            "upstream unavailable: serving the tag as a peer resolved it"
                        );
                        let reply = reply_from_peer(found);
                        self.cache_manifest(&reply)?;
                        // Cached as already stale, so the upstream is asked again as soon as it
                        // answers: a peer's word never makes a tag fresh here.
                        let record = TagRecord {
                            digest: *reply.digest.as_bytes(),
                            media_type: reply.media_type.clone(),
                            fetched_at_ms: stale_fetch_time(
                                peer_fetched_at,
                                now,
                                self.config.tag_ttl,
                            ),
                        };
                        self.store.put_tag(key, &record)?;
                        self.tag_times.forget(key);
                        Ok(reply)
                    }
                    Err(other) => Err(other),
                }
            }
        }
    }

    /// Answers a held tag with its held digest: from the cache, else by digest (the upstream,
    /// or members while it is down; verified either way). The tag's own record is left alone.
    async fn held_manifest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        key: &str,
        held: BlobDigest,
        accept: Option<&str>,
    ) -> Result<ManifestReply, PullError> {
        tracing::debug!(tag = key, digest = %held, "tag held by a rebuild: serving the held digest");
        self.metrics.rebuild_held_tags_served.inc();
        let by_digest = Reference::Digest(held);
        Box::pin(self.manifest_locked(upstream, repo, &by_digest, accept, &held.to_string())).await
    }

    /// Resolves a tag at the upstream itself, bypassing the cached tag (a rebuild's check for a
    /// new digest). The manifest is cached by digest; the tag's record is not touched.
    pub async fn resolve_tag_upstream(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        tag: &str,
    ) -> Result<ManifestReply, PullError> {
        let reply = self
            .fetch_manifest(upstream, repo, &Reference::Tag(tag.to_owned()), None)
            .await?;
        self.cache_manifest(&reply)?;
        Ok(reply)
    }

    /// The digest the cached record of a tag names, whatever its age.
    pub fn cached_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &str,
    ) -> Result<Option<BlobDigest>, PullError> {
        Ok(self
            .store
            .tag(&tag_key(upstream, repo, tag))?
            .map(|record| BlobDigest::from_bytes(record.digest)))
    }

    /// Points a tag at `reply` (a rebuild's switchover). `fresh` when this node resolved it at the
    /// upstream itself; a member's word is recorded as already stale, like a tag a member
    /// answered (the upstream is asked again on the next pull, and serves it while down).
    pub fn point_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &str,
        reply: &ManifestReply,
        fresh: bool,
    ) -> Result<(), PullError> {
        let key = tag_key(upstream, repo, tag);
        let now = now_ms();
        let record = TagRecord {
            digest: *reply.digest.as_bytes(),
            media_type: reply.media_type.clone(),
            fetched_at_ms: match fresh {
                true => now,
                false => stale_fetch_time(now, now, self.config.tag_ttl),
            },
        };
        self.cache_manifest(reply)?;
        self.store.put_tag(&key, &record)?;
        match fresh {
            true => self.tag_times.resolved(&key, std::time::Instant::now()),
            false => self.tag_times.forget(&key),
        }
        Ok(())
    }

    async fn fetch_manifest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
    ) -> Result<ManifestReply, PullError> {
        let fetched = upstream
            .fetch_manifest(
                repo,
                reference,
                &upstream_accept(accept),
                MAX_MANIFEST_BYTES,
            )
            .await;
        let fetched = self.note_upstream(fetched)?;
        let parsed: serde_json::Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| PullError::UpstreamInvalid(format!("manifest is not JSON: {e}")))?;
        if !parsed.is_object() {
            return Err(PullError::UpstreamInvalid(
                "manifest is not a JSON object".into(),
            ));
        }
        let media_type = media_type_of(fetched.media_type.as_deref(), &parsed);
        let digest = BlobDigest::from_bytes(Sha256::digest(&fetched.body).into());
        Ok(ManifestReply {
            media_type,
            body: fetched.body,
            digest,
            from_cache: false,
        })
    }

    /// A manifest from the first member with a valid answer: members ranked best first, at most
    /// [`PEER_MANIFEST_FANOUT`] asked at once and [`PEER_MANIFEST_CANDIDATES`] in all, within
    /// [`PEER_MANIFEST_TIMEOUT`]. `None` without a peer network, or when no member has it. A member
    /// whose answer fails its checks is avoided like one that sent a bad blob.
    async fn manifest_from_peers(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        reference: &Reference,
    ) -> Option<CachedManifest> {
        let peers = self.peers.as_ref()?;
        let mut candidates = peers
            .members_to_ask()
            .into_iter()
            .take(PEER_MANIFEST_CANDIDATES);
        let ask = |peer: PeerId| {
            async move {
                let answer = peers
                    .fetch_manifest(peer, upstream.name(), repo, reference)
                    .await;
                (peer, answer)
            }
            .instrument(tracing::info_span!("peer", %peer))
        };
        let mut asking: FuturesUnordered<_> = candidates
            .by_ref()
            .take(PEER_MANIFEST_FANOUT)
            .map(ask)
            .collect();
        if asking.is_empty() {
            tracing::debug!(%repo, %reference, "no member to ask for the manifest");
            return None;
        }
        let search = async {
            while let Some((peer, answer)) = asking.next().await {
                match answer.map(|found| found.map(|f| (check_peer_manifest(&f), f))) {
                    Ok(Some((Ok(()), found))) => {
                        self.metrics.manifests_received_peer.inc();
                        tracing::info!(%peer, %repo, %reference, digest = %found.digest, "manifest received from peer");
                        return Some(found);
                    }
                    Ok(Some((Err(why), _))) | Err(ManifestFetchError::Protocol(why)) => {
                        tracing::warn!(%peer, %repo, %reference, why, "peer sent an invalid manifest");
                        peers.avoid(peer);
                    }
                    Ok(None) => {
                        tracing::debug!(%peer, %repo, %reference, "peer has no such manifest")
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %repo, %reference, %error, "peer could not answer")
                    }
                }
                if let Some(next) = candidates.next() {
                    asking.push(ask(next));
                }
            }
            None
        };
        let found = tokio::time::timeout(PEER_MANIFEST_TIMEOUT, search)
            .await
            .ok()
            .flatten();
        if found.is_none() {
            tracing::info!(%repo, %reference, "no member had the manifest");
        }
        found
    }

    fn cache_manifest(&self, reply: &ManifestReply) -> Result<(), PullError> {
        let record = ManifestRecord {
            media_type: reply.media_type.clone(),
            body: reply.body.to_vec(),
        };
        self.store.put_manifest(&reply.digest, &record)?;
        Ok(())
    }
}

/// Where a tag is cached: upstream (as containerd names it in `ns`), repository and tag.
pub(crate) fn tag_key(upstream: &str, repo: &RepoName, tag: &str) -> String {
    format!("{upstream}/{repo}:{tag}")
}

/// Checks what the node itself requires of a manifest beyond its digest: a manifest media type
/// and a JSON object, as for one from an upstream.
fn check_peer_manifest(found: &CachedManifest) -> Result<(), &'static str> {
    if !MANIFEST_MEDIA_TYPES.contains(&found.media_type.as_str()) {
        return Err("not a manifest media type");
    }
    match serde_json::from_slice::<serde_json::Value>(&found.body) {
        Ok(value) if value.is_object() => Ok(()),
        _ => Err("not a JSON object"),
    }
}

/// The fetch time to record for a tag a peer resolved at `peer_fetched_at_ms`: never later than
/// `now_ms - tag_ttl`, so the tag is stale from the start (and a peer's clock cannot make it
/// fresh).
fn stale_fetch_time(peer_fetched_at_ms: u64, now_ms: u64, tag_ttl: Duration) -> u64 {
    let ttl_ms = u64::try_from(tag_ttl.as_millis()).unwrap_or(u64::MAX);
    peer_fetched_at_ms.min(now_ms.saturating_sub(ttl_ms))
}

fn reply_from_peer(found: CachedManifest) -> ManifestReply {
    ManifestReply {
        media_type: found.media_type,
        body: found.body,
        digest: found.digest,
        from_cache: false,
    }
}

/// This node's manifest cache as members see it ([`ManifestSource`]): by digest, the cached
/// manifest; by tag, the tag's last resolution and its manifest whatever their age (the requester
/// decides what a stale tag is worth). It never asks an upstream.
#[derive(Debug, Clone)]
pub struct CachedManifests {
    store: ShardStore,
}

impl CachedManifests {
    /// The manifest cache of `store`.
    pub fn new(store: ShardStore) -> Self {
        Self { store }
    }
}

impl ManifestSource for CachedManifests {
    fn cached_manifest(
        &self,
        upstream: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<CachedManifest>, StoreError> {
        let (digest, tag_fetched_at_ms) = match reference {
            Reference::Digest(digest) => (*digest, None),
            Reference::Tag(tag) => match self.store.tag(&tag_key(upstream, repo, tag))? {
                Some(record) => (
                    BlobDigest::from_bytes(record.digest),
                    Some(record.fetched_at_ms),
                ),
                None => return Ok(None),
            },
        };
        Ok(self
            .store
            .manifest(&digest)?
            .map(|manifest| CachedManifest {
                media_type: manifest.media_type,
                digest,
                body: manifest.body.into(),
                tag_fetched_at_ms,
            }))
    }
}

fn reply_from(tag: &TagRecord, manifest: &ManifestRecord) -> ManifestReply {
    ManifestReply {
        media_type: manifest.media_type.clone(),
        body: Bytes::from(manifest.body.clone()),
        digest: BlobDigest::from_bytes(tag.digest),
        from_cache: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CHUNKING;
    use crate::store::StoreConfig;

    fn store() -> (ShardStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(&StoreConfig {
            data_dir: dir.path().to_path_buf(),
            chunking: DEFAULT_CHUNKING,
            max_disk_bytes: 1 << 30,
        })
        .unwrap();
        (store, dir)
    }

    fn put_manifest(store: &ShardStore, body: &[u8]) -> BlobDigest {
        let digest = BlobDigest::from_bytes(Sha256::digest(body).into());
        let record = ManifestRecord {
            media_type: MANIFEST_MEDIA_TYPES[1].into(),
            body: body.to_vec(),
        };
        store.put_manifest(&digest, &record).unwrap();
        digest
    }

    #[test]
    fn peers_are_answered_from_the_cache_only_and_tags_whatever_their_age() {
        let (store, _dir) = store();
        let source = CachedManifests::new(store.clone());
        let repo: RepoName = "team/app".parse().unwrap();
        let body = br#"{"schemaVersion":2}"#;
        let digest = put_manifest(&store, body);
        // A tag resolved long ago: far beyond any tag lifetime, still answered with its time.
        let tag = TagRecord {
            digest: *digest.as_bytes(),
            media_type: MANIFEST_MEDIA_TYPES[1].into(),
            fetched_at_ms: 1_000,
        };
        store
            .put_tag(&tag_key("docker.io", &repo, "v1"), &tag)
            .unwrap();

        let by_tag = source
            .cached_manifest("docker.io", &repo, &Reference::Tag("v1".into()))
            .unwrap()
            .unwrap();
        assert_eq!(by_tag.digest, digest);
        assert_eq!(by_tag.body.as_ref(), body);
        assert_eq!(by_tag.media_type, MANIFEST_MEDIA_TYPES[1]);
        assert_eq!(by_tag.tag_fetched_at_ms, Some(1_000));

        // By digest, from any repository and upstream (the cache is by digest), without a time.
        let other_repo: RepoName = "other".parse().unwrap();
        let by_digest = source
            .cached_manifest("quay.io", &other_repo, &Reference::Digest(digest))
            .unwrap()
            .unwrap();
        assert_eq!(by_digest.body.as_ref(), body);
        assert_eq!(by_digest.tag_fetched_at_ms, None);

        // A tag is scoped by upstream, repository and tag.
        for (upstream, repo, tag) in [
            ("quay.io", &repo, "v1"),
            ("docker.io", &other_repo, "v1"),
            ("docker.io", &repo, "v2"),
        ] {
            let answer = source
                .cached_manifest(upstream, repo, &Reference::Tag(tag.into()))
                .unwrap();
            assert_eq!(answer, None, "{upstream} {repo} {tag}");
        }
        let unknown = BlobDigest::from_bytes([9; 32]);
        assert_eq!(
            source
                .cached_manifest("docker.io", &repo, &Reference::Digest(unknown))
                .unwrap(),
            None
        );
        // A tag whose manifest is not cached is not answered.
        let dangling = TagRecord {
            digest: *unknown.as_bytes(),
            ..tag
        };
        store
            .put_tag(&tag_key("docker.io", &repo, "v3"), &dangling)
            .unwrap();
        assert_eq!(
            source
                .cached_manifest("docker.io", &repo, &Reference::Tag("v3".into()))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_tag_from_a_peer_is_never_fresh() {
        let ttl = Duration::from_secs(300);
        let now = 10_000_000;
        // Resolved by the peer a second ago: recorded as exactly one lifetime old, so stale.
        let recorded = stale_fetch_time(now - 1_000, now, ttl);
        assert_eq!(recorded, now - 300_000);
        assert!(now - recorded >= ttl.as_millis() as u64);
        // Resolved long ago: kept, so the staleness logs stay true.
        assert_eq!(stale_fetch_time(5, now, ttl), 5);
        // A peer's clock ahead of ours changes nothing.
        assert_eq!(stale_fetch_time(u64::MAX, now, ttl), now - 300_000);
        assert_eq!(stale_fetch_time(u64::MAX, 10, ttl), 0);
    }

    #[test]
    fn peer_manifests_must_be_manifests() {
        let manifest = |media_type: &str, body: &'static [u8]| CachedManifest {
            media_type: media_type.into(),
            digest: BlobDigest::from_bytes(Sha256::digest(body).into()),
            body: Bytes::from_static(body),
            tag_fetched_at_ms: None,
        };
        assert!(check_peer_manifest(&manifest(MANIFEST_MEDIA_TYPES[0], b"{}")).is_ok());
        assert!(check_peer_manifest(&manifest("application/json", b"{}")).is_err());
        assert!(check_peer_manifest(&manifest(MANIFEST_MEDIA_TYPES[0], b"[]")).is_err());
        assert!(check_peer_manifest(&manifest(MANIFEST_MEDIA_TYPES[0], b"{")).is_err());
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(None, MANIFEST_MEDIA_TYPES[0]));
        assert!(accepts(Some("*/*"), MANIFEST_MEDIA_TYPES[0]));
        let docker_only = "application/vnd.docker.distribution.manifest.v2+json; q=0.9";
        assert!(accepts(Some(docker_only), MANIFEST_MEDIA_TYPES[3]));
        assert!(!accepts(Some(docker_only), MANIFEST_MEDIA_TYPES[0]));
    }

    #[test]
    fn upstream_accept_lists_known_types_only() {
        assert_eq!(upstream_accept(None), MANIFEST_MEDIA_TYPES.join(", "));
        assert_eq!(
            upstream_accept(Some("*/*")),
            MANIFEST_MEDIA_TYPES.join(", ")
        );
        let docker = "application/vnd.docker.distribution.manifest.v2+json, text/html";
        assert_eq!(upstream_accept(Some(docker)), MANIFEST_MEDIA_TYPES[3]);
    }

    #[test]
    fn media_type_comes_from_header_body_or_shape() {
        let index = serde_json::json!({"manifests": []});
        assert_eq!(media_type_of(None, &index), MANIFEST_MEDIA_TYPES[0]);
        assert_eq!(
            media_type_of(Some("application/octet-stream"), &serde_json::json!({})),
            MANIFEST_MEDIA_TYPES[1]
        );
        let declared = serde_json::json!({"mediaType": MANIFEST_MEDIA_TYPES[3]});
        assert_eq!(
            media_type_of(Some("text/plain"), &declared),
            MANIFEST_MEDIA_TYPES[3]
        );
        assert_eq!(
            media_type_of(Some(MANIFEST_MEDIA_TYPES[2]), &declared),
            MANIFEST_MEDIA_TYPES[2]
        );
    }
}
