//! The layer dependency graph as JSON (`GET /graph`, `GET /graph?image=REF`): images, their
//! children and layers in order, layers shared between images, sizes, and each layer's state and
//! threat as the lifecycle knows them.
//!
//! Pure: [`graph`] takes the catalog, an optional [`ImageQuery`] and a function that annotates a
//! blob; [`ImageQuery::parse`] checks a reference before anything is looked up.

use std::collections::BTreeSet;

use serde::Serialize;
use shoal_proto::{BlobDigest, RepoName};

use super::{Catalog, Image, ImageKind};

/// Longest `image` query accepted.
pub const MAX_QUERY_LEN: usize = 512;

/// Which images `?image=` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageQuery {
    /// A manifest or index by digest.
    Digest(BlobDigest),
    /// `[upstream/]repository:tag` (the tag `latest` when none is given).
    Tag {
        /// `repository` or `upstream/repository`.
        name: String,
        /// The tag.
        tag: String,
    },
    /// `[upstream/]repository@digest`.
    NameDigest {
        /// `repository` or `upstream/repository`.
        name: String,
        /// The digest.
        digest: BlobDigest,
    },
}

impl ImageQuery {
    /// Reads `REF`: `sha256:<hex>`, `[upstream/]repo[:tag]` or `[upstream/]repo@sha256:<hex>`.
    pub fn parse(text: &str) -> Result<ImageQuery, String> {
        if text.is_empty() || text.len() > MAX_QUERY_LEN {
            return Err(format!(
                "an image reference is 1 to {MAX_QUERY_LEN} characters"
            ));
        }
        if text.starts_with("sha256:") {
            return text
                .parse()
                .map(ImageQuery::Digest)
                .map_err(|e| format!("bad digest {text:?}: {e}"));
        }
        let check_name = |name: &str| -> Result<String, String> {
            // The repository is the part after the upstream, when one is given.
            let repo = match name.split_once('/') {
                Some((host, rest)) if host.contains('.') || host.contains(':') => rest,
                _ => name,
            };
            repo.parse::<RepoName>()
                .map_err(|e| format!("bad repository in {text:?}: {e}"))?;
            Ok(name.to_owned())
        };
        if let Some((name, digest)) = text.split_once('@') {
            let digest = digest
                .parse()
                .map_err(|e| format!("bad digest in {text:?}: {e}"))?;
            return Ok(ImageQuery::NameDigest {
                name: check_name(name)?,
                digest,
            });
        }
        let (name, tag) = match text.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (text, "latest"),
        };
        if !shoal_proto::oci::is_valid_tag(tag) {
            return Err(format!("bad tag in {text:?}"));
        }
        Ok(ImageQuery::Tag {
            name: check_name(name)?,
            tag: tag.to_owned(),
        })
    }

    fn name_matches(name: &str, image: &Image) -> bool {
        image.repository.as_deref() == Some(name) || image.name().as_deref() == Some(name)
    }

    /// Whether `image` is one the query names.
    pub fn matches(&self, image: &Image) -> bool {
        match self {
            ImageQuery::Digest(digest) => image.digest == *digest,
            ImageQuery::Tag { name, tag } => {
                Self::name_matches(name, image) && image.tags.iter().any(|t| t == tag)
            }
            ImageQuery::NameDigest { name, digest } => {
                image.digest == *digest && Self::name_matches(name, image)
            }
        }
    }
}

/// What the lifecycle says about a blob, for the graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlobAnnotation {
    /// The store holds it.
    pub held: bool,
    /// Its lifecycle state (`active`, `warm`, `cold`, `pending_deletion`, `deleted`), if known.
    pub state: Option<String>,
    /// Its threat score 0-100.
    pub threat: f64,
}

/// A descriptor in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobRef {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// An index entry in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildRef {
    /// The child manifest.
    pub digest: String,
    /// `os/architecture[/variant]`.
    pub platform: Option<String>,
    /// Whether the cache holds its manifest.
    pub cached: bool,
}

/// An image in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageNode {
    /// Manifest or index digest.
    pub digest: String,
    /// `manifest` or `index`.
    pub kind: ImageKind,
    /// Upstream, when known.
    pub upstream: Option<String>,
    /// Repository, when known.
    pub repository: Option<String>,
    /// Tags naming it directly.
    pub tags: Vec<String>,
    /// The index it belongs to.
    pub parent: Option<String>,
    /// An index's children.
    pub children: Vec<ChildRef>,
    /// A manifest's config blob.
    pub config: Option<BlobRef>,
    /// A manifest's layers, bottom first.
    pub layers: Vec<BlobRef>,
    /// Bytes of its blobs (an index: its cached children's), each distinct blob once.
    pub size: u64,
}

/// A blob in the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlobNode {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// A config blob rather than a layer.
    pub config: bool,
    /// The image manifests that name it.
    pub images: Vec<String>,
    /// More than one image manifest names it.
    pub shared: bool,
    /// What the lifecycle says.
    #[serde(flatten)]
    pub annotation: BlobAnnotation,
}

/// The answer of `GET /graph`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    /// The images (all, or those the query names with their children).
    pub images: Vec<ImageNode>,
    /// The blobs those images name.
    pub blobs: Vec<BlobNode>,
    /// Layers named by more than one image manifest of this graph.
    pub shared_layers: Vec<String>,
}

fn blob_ref(d: &super::Descriptor) -> BlobRef {
    BlobRef {
        digest: d.digest.to_string(),
        size: d.size,
    }
}

/// Builds the graph of the images `query` names (all when `None`) and their children.
pub fn graph(
    catalog: &Catalog,
    query: Option<&ImageQuery>,
    annotate: impl Fn(&BlobDigest) -> BlobAnnotation,
) -> Graph {
    let mut chosen: BTreeSet<BlobDigest> = BTreeSet::new();
    for image in catalog.images.values() {
        if query.is_none_or(|q| q.matches(image)) {
            chosen.extend(
                catalog
                    .with_children(&image.digest)
                    .iter()
                    .map(|i| i.digest),
            );
        }
    }
    let images: Vec<ImageNode> = chosen
        .iter()
        .filter_map(|d| catalog.images.get(d))
        .map(|image| ImageNode {
            digest: image.digest.to_string(),
            kind: image.kind,
            upstream: image.upstream.clone(),
            repository: image.repository.clone(),
            tags: image.tags.clone(),
            parent: image.parent.map(|p| p.to_string()),
            children: image
                .children
                .iter()
                .map(|(c, cached)| ChildRef {
                    digest: c.digest.to_string(),
                    platform: c.platform.clone(),
                    cached: *cached,
                })
                .collect(),
            config: image.config.as_ref().map(blob_ref),
            layers: image.layers.iter().map(blob_ref).collect(),
            size: catalog.image_size(&image.digest),
        })
        .collect();
    let mut blobs = Vec::new();
    let mut shared_layers = Vec::new();
    let mut seen = BTreeSet::new();
    for digest in &chosen {
        let Some(image) = catalog.images.get(digest) else {
            continue;
        };
        for blob in image.blobs() {
            if !seen.insert(blob.digest) {
                continue;
            }
            let Some(usage) = catalog.blobs.get(&blob.digest) else {
                continue;
            };
            let in_graph: Vec<String> = usage
                .images
                .iter()
                .filter(|i| chosen.contains(i))
                .map(|i| i.to_string())
                .collect();
            let shared = !usage.is_config && in_graph.len() > 1;
            if shared {
                shared_layers.push(blob.digest.to_string());
            }
            blobs.push(BlobNode {
                digest: blob.digest.to_string(),
                size: usage.size,
                config: usage.is_config,
                images: in_graph,
                shared,
                annotation: annotate(&blob.digest),
            });
        }
    }
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    shared_layers.sort();
    Graph {
        images,
        blobs,
        shared_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{d, sample};
    use super::*;

    #[test]
    fn queries_are_checked_before_anything_is_looked_up() {
        assert_eq!(
            ImageQuery::parse("app:v1"),
            Ok(ImageQuery::Tag {
                name: "app".into(),
                tag: "v1".into()
            })
        );
        assert_eq!(
            ImageQuery::parse("origin.test:5000/team/app"),
            Ok(ImageQuery::Tag {
                name: "origin.test:5000/team/app".into(),
                tag: "latest".into()
            })
        );
        assert_eq!(
            ImageQuery::parse(&d('1').to_string()),
            Ok(ImageQuery::Digest(d('1')))
        );
        assert!(ImageQuery::parse("").is_err());
        assert!(ImageQuery::parse("UPPER:v1").is_err());
        assert!(ImageQuery::parse("app:bad tag").is_err());
        assert!(ImageQuery::parse("app@sha256:12").is_err());
        assert!(ImageQuery::parse("sha256:xyz").is_err());
        assert!(ImageQuery::parse(&"a".repeat(MAX_QUERY_LEN + 1)).is_err());
    }

    #[test]
    fn the_graph_of_an_index_holds_its_children_and_their_shared_layers() {
        let catalog = sample();
        let query = ImageQuery::parse("origin/app:v1").unwrap();
        let graph = graph(&catalog, Some(&query), |digest| BlobAnnotation {
            held: *digest == d('0'),
            state: Some("active".into()),
            threat: 0.0,
        });
        let images: Vec<&str> = graph.images.iter().map(|i| i.digest.as_str()).collect();
        assert_eq!(
            images,
            [d('1').to_string(), d('2').to_string(), d('3').to_string()]
        );
        assert_eq!(graph.shared_layers, [d('0').to_string()]);
        let shared = graph.blobs.iter().find(|b| b.shared).unwrap();
        assert!(shared.annotation.held);
        assert_eq!(shared.images.len(), 2);
        // Configs c, e and layers 0, a, b; nothing of the untagged image.
        assert_eq!(graph.blobs.len(), 5);
        let all = super::graph(&catalog, None, |_| BlobAnnotation::default());
        assert_eq!(all.images.len(), 4);
        let none = super::graph(
            &catalog,
            Some(&ImageQuery::parse("other:v1").unwrap()),
            |_| BlobAnnotation::default(),
        );
        assert!(none.images.is_empty() && none.blobs.is_empty());
    }
}
