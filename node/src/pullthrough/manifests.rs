//! Manifest requests: digests are cached for good, tags for a TTL, stale tags are served while the
//! upstream is down.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use shoal_proto::limits::MAX_MANIFEST_BYTES;
use shoal_proto::records::{ManifestRecord, TagRecord};
use shoal_proto::{BlobDigest, Reference, RepoName};

use super::{PullError, PullThrough};
use crate::store::now_ms;
use crate::upstream::Upstream;

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
            Reference::Tag(tag) => format!("{}/{repo}:{tag}", upstream.name()),
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
                let reply = self
                    .fetch_manifest(upstream, repo, reference, accept)
                    .await?;
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
                let cached = self.store.tag(key)?;
                let cached_manifest = match &cached {
                    Some(tag) => self.store.manifest(&BlobDigest::from_bytes(tag.digest))?,
                    None => None,
                };
                if let (Some(tag), Some(manifest)) = (&cached, &cached_manifest) {
                    let fresh = now_ms().saturating_sub(tag.fetched_at_ms)
                        < self.config.tag_ttl.as_millis() as u64;
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
                        Ok(reply)
                    }
                    Err(PullError::UpstreamUnavailable(reason)) => {
                        match (&cached, &cached_manifest) {
                            (Some(tag), Some(manifest)) => {
                                self.metrics.stale_tags_served.inc();
                                tracing::warn!(tag = key, %reason, "upstream unavailable: serving the cached tag stale");
                                Ok(reply_from(tag, manifest))
                            }
                            _ => Err(PullError::UpstreamUnavailable(reason)),
                        }
                    }
                    Err(other) => Err(other),
                }
            }
        }
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
            .await?;
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

    fn cache_manifest(&self, reply: &ManifestReply) -> Result<(), PullError> {
        let record = ManifestRecord {
            media_type: reply.media_type.clone(),
            body: reply.body.to_vec(),
        };
        self.store.put_manifest(&reply.digest, &record)?;
        Ok(())
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
