//! The image catalog: which images the cache holds and which layers they are made of, built from
//! the manifests and tag records the store keeps.
//!
//! Pure functions over records: [`parse_manifest`] reads one manifest body, [`Catalog::build`]
//! joins tags and parsed manifests into images (upstream, repository, tags, manifest digest, an
//! index's children with their platforms), their config and layers in order, and which layers
//! are shared between images. [`read_catalog`] is the one function that reads the store for it.
//! The catalog feeds `GET /graph`, the lifecycle (which layers a retained image references) and
//! retention (the images and their layers).
//!
//! What it may touch: it reads the store's manifest and tag records; it never writes anything
//! and never asks an upstream. Bounded: at most [`MAX_MANIFESTS`] manifests and [`MAX_TAGS`]
//! tags are read, at most [`MAX_DESCRIPTORS`] descriptors of one manifest, and a manifest body
//! larger than [`MAX_MANIFEST_BYTES`] is skipped.

pub mod graph;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use shoal_proto::BlobDigest;

use crate::store::{ShardStore, StoreError};

/// Manifests read from the store at most.
pub const MAX_MANIFESTS: usize = 50_000;
/// Tag records read from the store at most.
pub const MAX_TAGS: usize = 50_000;
/// Descriptors read from one manifest at most.
pub const MAX_DESCRIPTORS: usize = 1024;
/// Largest manifest body parsed.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A blob a manifest names: digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Descriptor {
    /// The blob's digest.
    pub digest: BlobDigest,
    /// Its size in bytes, as the manifest says.
    pub size: u64,
}

/// One entry of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChild {
    /// The child manifest.
    pub digest: BlobDigest,
    /// `os/architecture[/variant]`, when the index says.
    pub platform: Option<String>,
}

/// What a manifest body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedManifest {
    /// An image manifest: its config blob and layers, bottom first.
    Image {
        /// The config blob.
        config: Option<Descriptor>,
        /// The layers in order.
        layers: Vec<Descriptor>,
    },
    /// An index (or Docker manifest list): the manifests it lists.
    Index {
        /// Its children.
        children: Vec<IndexChild>,
    },
}

fn descriptor(value: &serde_json::Value) -> Option<Descriptor> {
    let digest = value.get("digest")?.as_str()?.parse().ok()?;
    let size = value.get("size")?.as_u64()?;
    Some(Descriptor { digest, size })
}

/// Reads a manifest body. `None` when it is too large or not a JSON object; descriptors with a
/// bad digest or size are skipped, not trusted.
pub fn parse_manifest(body: &[u8]) -> Option<ParsedManifest> {
    if body.len() > MAX_MANIFEST_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if let Some(manifests) = object.get("manifests").and_then(|m| m.as_array()) {
        let children = manifests
            .iter()
            .take(MAX_DESCRIPTORS)
            .filter_map(|m| {
                let digest = descriptor(m)?.digest;
                let platform = m.get("platform").and_then(|p| {
                    let field = |k: &str| p.get(k).and_then(|v| v.as_str());
                    let mut name = format!("{}/{}", field("os")?, field("architecture")?);
                    if let Some(variant) = field("variant") {
                        name.push('/');
                        name.push_str(variant);
                    }
                    Some(name)
                });
                Some(IndexChild { digest, platform })
            })
            .collect();
        return Some(ParsedManifest::Index { children });
    }
    let config = object.get("config").and_then(descriptor);
    let layers = object
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|layers| {
            layers
                .iter()
                .take(MAX_DESCRIPTORS)
                .filter_map(descriptor)
                .collect()
        })
        .unwrap_or_default();
    Some(ParsedManifest::Image { config, layers })
}

/// A cached tag resolution: which manifest `upstream/repository:tag` named when last asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    /// The upstream, as containerd names it in `ns`.
    pub upstream: String,
    /// The repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest (or index) it resolved to.
    pub digest: BlobDigest,
}

impl TagEntry {
    /// Reads a store tag key, `upstream/repository:tag`.
    pub fn from_key(key: &str, digest: BlobDigest) -> Option<TagEntry> {
        let (upstream, rest) = key.split_once('/')?;
        let (repository, tag) = rest.rsplit_once(':')?;
        if upstream.is_empty() || repository.is_empty() || tag.is_empty() {
            return None;
        }
        Some(TagEntry {
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest,
        })
    }
}

/// Whether an image is a single-platform manifest or an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// An image manifest.
    Manifest,
    /// An index or manifest list.
    Index,
}

/// One image in the cache: a manifest or index, where it came from and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The upstream it was pulled from, when a tag (of it or of its index) says.
    pub upstream: Option<String>,
    /// Its repository, when a tag (of it or of its index) says.
    pub repository: Option<String>,
    /// Tags that name it directly.
    pub tags: Vec<String>,
    /// Its manifest (or index) digest.
    pub digest: BlobDigest,
    /// Manifest or index.
    pub kind: ImageKind,
    /// The index this manifest is a child of, if any (the first one found).
    pub parent: Option<BlobDigest>,
    /// For an index: its children, with whether the cache holds their manifests.
    pub children: Vec<(IndexChild, bool)>,
    /// For a manifest: its config blob.
    pub config: Option<Descriptor>,
    /// For a manifest: its layers, bottom first.
    pub layers: Vec<Descriptor>,
}

impl Image {
    /// The blobs this image itself names: its config, then its layers (an index names none).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// Config and layer bytes (an index: 0; see [`Catalog::image_size`] for its children's).
    pub fn own_size(&self) -> u64 {
        self.blobs().map(|d| d.size).sum()
    }

    /// `upstream/repository` when known.
    pub fn name(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.upstream.as_deref()?,
            self.repository.as_deref()?
        ))
    }
}

/// The images in the cache and the blobs they name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Images by manifest digest.
    pub images: BTreeMap<BlobDigest, Image>,
    /// For every blob an image names (configs and layers): its size and the image manifests
    /// that name it.
    pub blobs: BTreeMap<BlobDigest, BlobUse>,
}

/// Which images name a blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobUse {
    /// Its size, as the first manifest naming it says.
    pub size: u64,
    /// Whether it is some image's config blob (else a layer).
    pub is_config: bool,
    /// Image manifests naming it.
    pub images: BTreeSet<BlobDigest>,
}

impl Catalog {
    /// Joins tags and parsed manifests. Tags naming a manifest the cache does not hold are
    /// skipped; manifests no tag reaches are images without repository.
    pub fn build(tags: &[TagEntry], manifests: &BTreeMap<BlobDigest, ParsedManifest>) -> Catalog {
        let mut catalog = Catalog::default();
        for (digest, parsed) in manifests {
            let (kind, children, config, layers) = match parsed {
                ParsedManifest::Image { config, layers } => {
                    (ImageKind::Manifest, Vec::new(), *config, layers.clone())
                }
                ParsedManifest::Index { children } => (
                    ImageKind::Index,
                    children
                        .iter()
                        .map(|c| (c.clone(), manifests.contains_key(&c.digest)))
                        .collect(),
                    None,
                    Vec::new(),
                ),
            };
            catalog.images.insert(
                *digest,
                Image {
                    upstream: None,
                    repository: None,
                    tags: Vec::new(),
                    digest: *digest,
                    kind,
                    parent: None,
                    children,
                    config,
                    layers,
                },
            );
        }
        for tag in tags {
            let Some(image) = catalog.images.get_mut(&tag.digest) else {
                continue;
            };
            if image.upstream.is_none() {
                image.upstream = Some(tag.upstream.clone());
                image.repository = Some(tag.repository.clone());
            }
            image.tags.push(tag.tag.clone());
        }
        // Children take their index's origin (an index's children are never nested deeper than
        // one level in practice; one pass per level, bounded by the index count).
        type Origin = (Option<String>, Option<String>);
        let indexes: Vec<(BlobDigest, Origin, Vec<BlobDigest>)> = catalog
            .images
            .values()
            .filter(|i| i.kind == ImageKind::Index)
            .map(|i| {
                (
                    i.digest,
                    (i.upstream.clone(), i.repository.clone()),
                    i.children.iter().map(|(c, _)| c.digest).collect(),
                )
            })
            .collect();
        for (index, (upstream, repository), children) in indexes {
            for child in children {
                let Some(image) = catalog.images.get_mut(&child) else {
                    continue;
                };
                if image.parent.is_none() && child != index {
                    image.parent = Some(index);
                }
                if image.upstream.is_none() {
                    image.upstream.clone_from(&upstream);
                    image.repository.clone_from(&repository);
                }
            }
        }
        for image in catalog.images.values_mut() {
            image.tags.sort();
            image.tags.dedup();
        }
        for image in catalog.images.values() {
            for (i, blob) in image.blobs().enumerate() {
                let is_config = i == 0 && image.config.is_some();
                let entry = catalog.blobs.entry(blob.digest).or_insert_with(|| BlobUse {
                    size: blob.size,
                    is_config,
                    images: BTreeSet::new(),
                });
                entry.images.insert(image.digest);
            }
        }
        catalog
    }

    /// The images that name `blob` directly (manifests), with the indexes above them.
    pub fn images_of(&self, blob: &BlobDigest) -> Vec<&Image> {
        let Some(usage) = self.blobs.get(blob) else {
            return Vec::new();
        };
        usage
            .images
            .iter()
            .filter_map(|d| self.images.get(d))
            .collect()
    }

    /// Layers (not configs) that more than one image manifest names.
    pub fn shared_layers(&self) -> impl Iterator<Item = (&BlobDigest, &BlobUse)> {
        self.blobs
            .iter()
            .filter(|(_, u)| !u.is_config && u.images.len() > 1)
    }

    /// The bytes of an image: its own blobs, and for an index its cached children's, each
    /// distinct blob counted once.
    pub fn image_size(&self, digest: &BlobDigest) -> u64 {
        let mut seen = BTreeSet::new();
        let mut total = 0u64;
        for image in self.with_children(digest) {
            for blob in image.blobs() {
                if seen.insert(blob.digest) {
                    total = total.saturating_add(blob.size);
                }
            }
        }
        total
    }

    /// The image and, for an index, its cached children.
    pub fn with_children(&self, digest: &BlobDigest) -> Vec<&Image> {
        let Some(image) = self.images.get(digest) else {
            return Vec::new();
        };
        let mut out = vec![image];
        for (child, _) in &image.children {
            if let Some(child) = self.images.get(&child.digest) {
                if child.digest != image.digest {
                    out.push(child);
                }
            }
        }
        out
    }
}

/// Reads the catalog from the store's manifest and tag records (bounded, see the module docs).
/// Blocking: call from a blocking thread.
pub fn read_catalog(store: &ShardStore) -> Result<Catalog, StoreError> {
    let mut manifests = BTreeMap::new();
    for digest in store.manifest_digests(MAX_MANIFESTS)? {
        let Some(record) = store.manifest(&digest)? else {
            continue;
        };
        if let Some(parsed) = parse_manifest(&record.body) {
            manifests.insert(digest, parsed);
        }
    }
    let tags: Vec<TagEntry> = store
        .tags(MAX_TAGS)?
        .into_iter()
        .filter_map(|(key, record)| TagEntry::from_key(&key, BlobDigest::from_bytes(record.digest)))
        .collect();
    Ok(Catalog::build(&tags, &manifests))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn d(c: char) -> BlobDigest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    pub(crate) fn image_body(config: char, layers: &[(char, u64)]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(c, size)| serde_json::json!({"digest": d(*c).to_string(), "size": size}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": d(config).to_string(), "size": 10},
            "layers": layers,
        }))
        .unwrap()
    }

    pub(crate) fn index_body(children: &[(char, &str)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(c, arch)| {
                serde_json::json!({"digest": d(*c).to_string(), "size": 100,
                    "platform": {"os": "linux", "architecture": arch}})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    /// An index `i` (tagged `origin/app:v1`) over amd64 `m` and arm64 `n`, which share layer
    /// `s`; an untagged image `u`; a tag naming a manifest the cache does not hold.
    pub(crate) fn sample() -> Catalog {
        let manifests = BTreeMap::from([
            (
                d('1'),
                parse_manifest(&index_body(&[
                    ('2', "amd64"),
                    ('3', "arm64"),
                    ('9', "s390x"),
                ]))
                .unwrap(),
            ),
            (
                d('2'),
                parse_manifest(&image_body('c', &[('0', 100), ('a', 5)])).unwrap(),
            ),
            (
                d('3'),
                parse_manifest(&image_body('e', &[('0', 100), ('b', 7)])).unwrap(),
            ),
            (
                d('4'),
                parse_manifest(&image_body('f', &[('7', 3)])).unwrap(),
            ),
        ]);
        let tags = vec![
            TagEntry::from_key("origin/app:v1", d('1')).unwrap(),
            TagEntry::from_key("origin/app:latest", d('1')).unwrap(),
            TagEntry::from_key("origin/gone:v1", d('8')).unwrap(),
        ];
        Catalog::build(&tags, &manifests)
    }

    #[test]
    fn an_index_lists_its_children_with_platforms_and_they_inherit_its_repository() {
        let catalog = sample();
        let index = &catalog.images[&d('1')];
        assert_eq!(index.kind, ImageKind::Index);
        assert_eq!(index.tags, ["latest", "v1"]);
        assert_eq!(index.name().as_deref(), Some("origin/app"));
        let children: Vec<(BlobDigest, Option<&str>, bool)> = index
            .children
            .iter()
            .map(|(c, held)| (c.digest, c.platform.as_deref(), *held))
            .collect();
        assert_eq!(
            children,
            [
                (d('2'), Some("linux/amd64"), true),
                (d('3'), Some("linux/arm64"), true),
                (d('9'), Some("linux/s390x"), false)
            ]
        );
        let arm = &catalog.images[&d('3')];
        assert_eq!(arm.parent, Some(d('1')));
        assert_eq!(arm.repository.as_deref(), Some("app"));
        assert!(arm.tags.is_empty());
        assert_eq!(
            arm.layers,
            [
                Descriptor {
                    digest: d('0'),
                    size: 100
                },
                Descriptor {
                    digest: d('b'),
                    size: 7
                }
            ]
        );
        let untagged = &catalog.images[&d('4')];
        assert_eq!(untagged.repository, None);
        assert!(!catalog.images.contains_key(&d('8')));
    }

    #[test]
    fn layers_shared_between_images_are_found_and_counted_once_in_sizes() {
        let catalog = sample();
        let shared: Vec<&BlobDigest> = catalog.shared_layers().map(|(d, _)| d).collect();
        assert_eq!(shared, [&d('0')]);
        assert_eq!(
            catalog.blobs[&d('0')].images,
            BTreeSet::from([d('2'), d('3')])
        );
        assert!(catalog.blobs[&d('c')].is_config);
        // The index: both children's configs (10 each), `0` once, `a` and `b`.
        assert_eq!(catalog.image_size(&d('1')), 10 + 10 + 100 + 5 + 7);
        assert_eq!(catalog.image_size(&d('2')), 10 + 100 + 5);
        let names: Vec<BlobDigest> = catalog
            .images_of(&d('0'))
            .iter()
            .map(|i| i.digest)
            .collect();
        assert_eq!(names, [d('2'), d('3')]);
    }

    #[test]
    fn bad_manifests_and_descriptors_are_skipped_not_trusted() {
        assert_eq!(parse_manifest(b"[1]"), None);
        assert_eq!(parse_manifest(b"{"), None);
        assert_eq!(parse_manifest(&vec![b' '; MAX_MANIFEST_BYTES + 1]), None);
        let body = br#"{"config":{"digest":"md5:00","size":1},
            "layers":[{"digest":"sha256:zz","size":1},{"size":3}]}"#;
        assert_eq!(
            parse_manifest(body),
            Some(ParsedManifest::Image {
                config: None,
                layers: Vec::new()
            })
        );
        assert_eq!(TagEntry::from_key("no-slash", d('1')), None);
        assert_eq!(TagEntry::from_key("up/repo", d('1')), None);
        let entry = TagEntry::from_key("host:5000/a/b:v2", d('1')).unwrap();
        assert_eq!(
            (
                entry.upstream.as_str(),
                entry.repository.as_str(),
                entry.tag.as_str()
            ),
            ("host:5000", "a/b", "v2")
        );
    }
}
