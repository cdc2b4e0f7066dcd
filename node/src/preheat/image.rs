//! What an operator names in a preheat: image references (`registry/repo:tag`, `repo@digest`)
//! mapped to a configured upstream, platforms (`os/arch[/variant]`), and what a manifest names
//! (an index's children with their platforms, an image's config and layers). Pure: no I/O.
//!
//! Bounded: a reference is at most [`MAX_IMAGE_REF_BYTES`] bytes, and at most
//! [`MAX_DESCRIPTORS`] descriptors are read from one manifest; a descriptor with a bad digest or
//! size is skipped, not trusted.

use std::fmt;

use serde::{Deserialize, Serialize};
use shoal_proto::limits::MAX_BLOB_BYTES;
use shoal_proto::{BlobDigest, Reference, RepoName};

pub use crate::placement::manifest::MAX_DESCRIPTORS;

/// Longest image reference accepted.
pub const MAX_IMAGE_REF_BYTES: usize = 512;
/// Longest platform string accepted.
pub const MAX_PLATFORM_BYTES: usize = 64;

/// Why an image reference or a platform was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Empty, too long or not printable ASCII.
    #[error(
        "{0:?} is not an image reference (at most {MAX_IMAGE_REF_BYTES} printable ASCII bytes)"
    )]
    Malformed(String),
    /// The repository or reference breaks the OCI grammar.
    #[error("{text:?}: {reason}")]
    Grammar {
        /// The reference as given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry is not one of this node's upstreams.
    #[error("{text:?} names registry {registry:?}, which is not a configured upstream (configured: {configured})")]
    UnknownRegistry {
        /// The reference as given.
        text: String,
        /// The registry it names.
        registry: String,
        /// The configured upstreams, comma-separated.
        configured: String,
    },
    /// No registry named and no default upstream configured.
    #[error("{0:?} names no registry and no default_upstream is configured; write it as registry/repository:tag")]
    NoRegistry(String),
    /// A platform outside `os/arch[/variant]`.
    #[error("{0:?} is not a platform such as linux/amd64 or linux/arm64/v8")]
    Platform(String),
}

/// An image to preheat: which upstream, repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The upstream's name (the registry host as containerd sends it in `ns`).
    pub upstream: String,
    /// The repository.
    pub repo: RepoName,
    /// The tag or digest.
    pub reference: Reference,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}/{}:{tag}", self.upstream, self.repo),
            Reference::Digest(digest) => write!(f, "{}/{}@{digest}", self.upstream, self.repo),
        }
    }
}

/// Whether the first path component of a reference is a registry host (the rule docker and
/// containerd use: it has a dot or a port, or is `localhost`).
fn names_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// Reads an image reference: `[registry/]repository[:tag][@digest]`. A digest wins over a tag;
/// neither means `latest`. Without a registry, `default_upstream` is used (with Docker Hub's
/// `library/` prefix for one-component names on `docker.io`). The registry must be one of
/// `upstreams`.
pub fn parse_image_ref<'a>(
    text: &str,
    upstreams: impl IntoIterator<Item = &'a str> + Clone,
    default_upstream: Option<&str>,
) -> Result<ImageRef, ImageError> {
    if text.is_empty()
        || text.len() > MAX_IMAGE_REF_BYTES
        || !text.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ImageError::Malformed(text.to_owned()));
    }
    let grammar = |reason: &str| ImageError::Grammar {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (text, None),
    };
    let (registry, path) = match name.split_once('/') {
        Some((first, rest)) if names_registry(first) => (Some(first), rest),
        _ => (None, name),
    };
    // A tag is after the last ':' of the last path component.
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match path[last_slash..].rfind(':') {
        Some(colon) => (
            &path[..last_slash + colon],
            Some(&path[last_slash + colon + 1..]),
        ),
        None => (path, None),
    };
    let upstream = match registry {
        Some(registry) => registry.to_owned(),
        None => default_upstream
            .ok_or_else(|| ImageError::NoRegistry(text.to_owned()))?
            .to_owned(),
    };
    if !upstreams.clone().into_iter().any(|u| u == upstream) {
        let configured: Vec<&str> = upstreams.into_iter().collect();
        return Err(ImageError::UnknownRegistry {
            text: text.to_owned(),
            registry: upstream,
            configured: configured.join(", "),
        });
    }
    let repo = if registry.is_none() && upstream == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_owned()
    };
    let repo: RepoName = repo
        .parse()
        .map_err(|_| grammar("the repository name breaks the OCI grammar"))?;
    let reference = match (digest, tag) {
        (Some(digest), _) => Reference::Digest(
            digest
                .parse()
                .map_err(|_| grammar("the digest is not sha256:<64 hex>"))?,
        ),
        (None, Some(tag)) => tag
            .parse::<Reference>()
            .ok()
            .filter(|r| matches!(r, Reference::Tag(_)))
            .ok_or_else(|| grammar("the tag breaks the OCI grammar"))?,
        (None, None) => Reference::Tag("latest".into()),
    };
    Ok(ImageRef {
        upstream,
        repo,
        reference,
    })
}

/// A platform, as an index names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... when the index gives one.
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Reads `os/arch[/variant]` (lower-case letters, digits, `_` and `-` in each part).
    pub fn parse(text: &str) -> Result<Platform, ImageError> {
        let refuse = || ImageError::Platform(text.to_owned());
        if text.len() > MAX_PLATFORM_BYTES {
            return Err(refuse());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let part_ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(part_ok) {
            return Err(refuse());
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }

    /// Whether a platform asked for matches one an index names: os and architecture equal, and
    /// the variant too when the one asked for names it.
    pub fn matches(&self, named: &Platform) -> bool {
        self.os == named.os
            && self.architecture == named.architecture
            && (self.variant.is_none() || self.variant == named.variant)
    }
}

/// What a manifest names, for a preheat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Named {
    /// Whether it is an index (its `manifests` list), not an image manifest.
    pub index: bool,
    /// An index's manifests, with their platforms when given.
    pub children: Vec<(BlobDigest, Option<Platform>)>,
    /// An image manifest's config: (digest, size).
    pub config: Option<(BlobDigest, u64)>,
    /// An image manifest's layers in order: (digest, size).
    pub layers: Vec<(BlobDigest, u64)>,
}

fn descriptor(value: &serde_json::Value) -> Option<(BlobDigest, u64)> {
    let digest = value.get("digest")?.as_str()?.parse().ok()?;
    let size = value
        .get("size")?
        .as_u64()
        .filter(|s| *s <= MAX_BLOB_BYTES)?;
    Some((digest, size))
}

fn platform(value: &serde_json::Value) -> Option<Platform> {
    let platform = value.get("platform")?;
    let field = |k: &str| platform.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Some(Platform {
        os: field("os")?,
        architecture: field("architecture")?,
        variant: field("variant"),
    })
}

/// Reads a manifest body (image manifest or index, OCI or Docker). `None` when it is not a JSON
/// object.
pub fn read_manifest(body: &[u8]) -> Option<Named> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let mut named = Named::default();
    if let Some(manifests) = object.get("manifests").and_then(|m| m.as_array()) {
        named.index = true;
        named.children = manifests
            .iter()
            .take(MAX_DESCRIPTORS)
            .filter_map(|m| Some((descriptor(m)?.0, platform(m))))
            .collect();
        return Some(named);
    }
    named.config = object.get("config").and_then(descriptor);
    if let Some(layers) = object.get("layers").and_then(|l| l.as_array()) {
        named.layers = layers
            .iter()
            .take(MAX_DESCRIPTORS)
            .filter_map(descriptor)
            .collect();
    }
    Some(named)
}

/// The children of an index to preheat: every one when `wanted` is empty, else those whose
/// platform matches one wanted (children without a platform are then left out).
pub fn choose_children(
    children: &[(BlobDigest, Option<Platform>)],
    wanted: &[Platform],
) -> Vec<BlobDigest> {
    children
        .iter()
        .filter(|(_, named)| {
            wanted.is_empty()
                || named
                    .as_ref()
                    .is_some_and(|named| wanted.iter().any(|w| w.matches(named)))
        })
        .map(|(digest, _)| *digest)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAMS: [&str; 3] = ["docker.io", "127.0.0.1:5000", "reg.example"];

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn references_map_to_configured_upstreams() {
        let parse = |t: &str| parse_image_ref(t, UPSTREAMS, Some("docker.io"));
        let image = parse("127.0.0.1:5000/test/app:v1").unwrap();
        assert_eq!(image.upstream, "127.0.0.1:5000");
        assert_eq!(image.repo.as_str(), "test/app");
        assert_eq!(image.reference, Reference::Tag("v1".into()));
        assert_eq!(image.to_string(), "127.0.0.1:5000/test/app:v1");

        let image = parse("alpine").unwrap();
        assert_eq!(image.upstream, "docker.io");
        assert_eq!(image.repo.as_str(), "library/alpine");
        assert_eq!(image.reference, Reference::Tag("latest".into()));

        let pinned = format!("reg.example/team/app:v2@{}", digest('a'));
        let image = parse(&pinned).unwrap();
        assert_eq!(
            image.reference,
            Reference::Digest(digest('a').parse().unwrap())
        );
        assert_eq!(image.repo.as_str(), "team/app");
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        let parse = |t: &str| parse_image_ref(t, UPSTREAMS, None);
        assert!(matches!(parse(""), Err(ImageError::Malformed(_))));
        assert!(matches!(parse("a b"), Err(ImageError::Malformed(_))));
        let long = format!("reg.example/{}", "a".repeat(MAX_IMAGE_REF_BYTES));
        assert!(matches!(parse(&long), Err(ImageError::Malformed(_))));
        assert!(matches!(
            parse("other.example/app:v1"),
            Err(ImageError::UnknownRegistry { .. })
        ));
        assert!(matches!(parse("app:v1"), Err(ImageError::NoRegistry(_))));
        assert!(matches!(
            parse("reg.example/App:v1"),
            Err(ImageError::Grammar { .. })
        ));
        assert!(matches!(
            parse("reg.example/app:-bad"),
            Err(ImageError::Grammar { .. })
        ));
        assert!(matches!(
            parse("reg.example/app@sha256:12"),
            Err(ImageError::Grammar { .. })
        ));
    }

    #[test]
    fn platforms_parse_and_match_with_optional_variants() {
        let arm = Platform::parse("linux/arm64").unwrap();
        let arm_v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(arm_v8.to_string(), "linux/arm64/v8");
        assert!(arm.matches(&arm_v8));
        assert!(arm_v8.matches(&arm_v8));
        assert!(!arm_v8.matches(&arm));
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn indexes_name_children_with_platforms_and_images_their_blobs() {
        let index = format!(
            r#"{{"manifests":[
                {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
                {{"digest":"{}","size":1}},
                {{"digest":"bad","size":1}}]}}"#,
            digest('a'),
            digest('b'),
            digest('c')
        );
        let named = read_manifest(index.as_bytes()).unwrap();
        assert!(named.index);
        assert_eq!(named.children.len(), 3);
        let all = choose_children(&named.children, &[]);
        assert_eq!(all.len(), 3);
        let arm = choose_children(&named.children, &[Platform::parse("linux/arm64").unwrap()]);
        assert_eq!(arm, [digest('b').parse().unwrap()]);

        let image = format!(
            r#"{{"config":{{"digest":"{}","size":5}},"layers":[{{"digest":"{}","size":7}},{{"digest":"{}"}}]}}"#,
            digest('d'),
            digest('e'),
            digest('f')
        );
        let named = read_manifest(image.as_bytes()).unwrap();
        assert!(!named.index);
        assert_eq!(named.config, Some((digest('d').parse().unwrap(), 5)));
        assert_eq!(named.layers, [(digest('e').parse().unwrap(), 7)]);
        assert_eq!(read_manifest(b"[]"), None);
    }
}
