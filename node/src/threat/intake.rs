//! Intake of one scanner report: read it, find the image it scanned, map its findings to blob
//! digests, and turn them into one threat record per layer.
//!
//! The image's manifest and config are fetched through the pull-through cache (so from the cache,
//! from peers or from the origin, verified like any pull), and only when the report names the image
//! on a configured upstream. The DiffIDs of findings are mapped to blob digests through the
//! config's `rootfs.diff_ids` and the manifest's `layers` ([`DiffIdMap`]); a finding that names a
//! blob digest itself (Trivy's `Layer.Digest`) is taken as such only when no image was resolved
//! or the digest is one of the image's layers. Every layer of a resolved image gets a record, so a
//! clean layer is recorded as clean (score 0).
//!
//! [`group_findings`] and [`records_for`] are pure; [`resolve_image`] is the I/O.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use serde::Deserialize;
use shoal_policy::threat::{DiffIdMap, Scanner, VulnReport};
use shoal_proto::{BlobDigest, Reference};

use super::book::{record_from_findings, ScoredFinding, ThreatRecord};
use super::report::ImageRef;
use crate::placement::manifest::host_architecture;
use crate::pullthrough::PullThrough;
use crate::upstream::Upstream;

/// Largest image config read.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Why a report was not taken. Each names the problem; none changed anything.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Larger than `threat.max_report_bytes`.
    #[error("the report is larger than the limit of {limit} bytes (threat.max_report_bytes)")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not a Trivy or Grype report, or a field of the wrong type.
    #[error("{0}")]
    Report(#[from] shoal_policy::threat::ReportError),
    /// Nothing in the report could be tied to a blob digest.
    #[error("no layer of the report could be mapped to a blob digest: {0}")]
    NothingMapped(String),
    /// The image's manifest or config could not be read through the cache.
    #[error("reading the scanned image {image} through the cache: {reason}")]
    Image {
        /// The image.
        image: String,
        /// What failed.
        reason: String,
    },
}

/// The scanned image as the cache has it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The name it was found under.
    pub name: ImageRef,
    /// The image manifest's digest (an index's child when the name is an index).
    pub manifest: BlobDigest,
    /// Its layers, bottom first.
    pub layers: Vec<BlobDigest>,
    /// DiffID → blob digest.
    pub diff_ids: DiffIdMap,
}

/// The findings of a report, grouped by the blob digest of their layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grouped {
    /// Findings per layer.
    pub per_layer: BTreeMap<BlobDigest, Vec<ScoredFinding>>,
    /// Findings whose layer could not be mapped.
    pub unmapped: usize,
}

/// Groups `report`'s findings by blob digest (see the module docs for the mapping).
pub fn group_findings(report: &VulnReport, image: Option<&ResolvedImage>) -> Grouped {
    let mut grouped = Grouped::default();
    let image_layers: Option<BTreeSet<&BlobDigest>> = image.map(|i| i.layers.iter().collect());
    for finding in &report.findings {
        let by_diff_id = finding
            .layer
            .diff_id
            .as_ref()
            .and_then(|d| image.and_then(|i| i.diff_ids.blob_for(d)))
            .and_then(to_proto);
        let by_digest = finding
            .layer
            .digest
            .as_ref()
            .and_then(to_proto)
            .filter(|d| {
                image_layers
                    .as_ref()
                    .is_none_or(|layers| layers.contains(d))
            });
        match by_diff_id.or(by_digest) {
            Some(blob) => grouped
                .per_layer
                .entry(blob)
                .or_default()
                .push(ScoredFinding {
                    id: finding.id.clone(),
                    severity: finding.severity,
                    score: finding.score(),
                    fixed: finding.fix_available,
                }),
            None => grouped.unmapped += 1,
        }
    }
    grouped
}

/// One record per layer: every layer of a resolved image (clean ones with score 0), else every
/// layer with findings. Findings with an id that is not a valid vulnerability id are dropped.
pub fn records_for(
    grouped: &Grouped,
    image: Option<&ResolvedImage>,
    reported_at: u64,
    max_cves: usize,
) -> BTreeMap<BlobDigest, ThreatRecord> {
    let mut layers: BTreeSet<BlobDigest> = grouped.per_layer.keys().copied().collect();
    if let Some(image) = image {
        layers.extend(image.layers.iter().copied());
    }
    layers
        .into_iter()
        .map(|layer| {
            let findings: Vec<ScoredFinding> = grouped
                .per_layer
                .get(&layer)
                .map(|f| {
                    f.iter()
                        .filter(|f| super::book::valid_cve_id(&f.id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            (
                layer,
                record_from_findings(&findings, reported_at, max_cves),
            )
        })
        .collect()
}

/// The policy crate's digest as the node's (`None` for a sha512 digest, which no blob here has).
fn to_proto(digest: &shoal_policy::BlobDigest) -> Option<BlobDigest> {
    digest.as_str().parse().ok()
}

/// The scanner's name as shown.
pub fn scanner_name(scanner: Scanner) -> &'static str {
    match scanner {
        Scanner::Trivy => "trivy",
        Scanner::Grype => "grype",
    }
}

#[derive(Deserialize)]
struct ManifestDoc {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

fn parse_digest(name: &ImageRef, digest: &str) -> Result<BlobDigest, IntakeError> {
    digest
        .parse()
        .map_err(|_| image_error(name, format!("the manifest names a bad digest {digest:?}")))
}

#[derive(Deserialize)]
struct Platform {
    os: Option<String>,
    architecture: Option<String>,
}

fn image_error(name: &ImageRef, reason: impl Into<String>) -> IntakeError {
    IntakeError::Image {
        image: name.to_string(),
        reason: reason.into(),
    }
}

/// Reads the image `name` names through the cache: its manifest (an index's child: the one the
/// report says it scanned, else this host's platform), then its config, and maps DiffIDs to blob
/// digests.
pub async fn resolve_image(
    pull: &PullThrough,
    upstream: &Upstream,
    name: &ImageRef,
    scanned_manifest: Option<BlobDigest>,
) -> Result<ResolvedImage, IntakeError> {
    let mut reference = name.reference();
    // An index leads to one child; a child that is an index again is refused.
    for _ in 0..2 {
        let reply = pull
            .manifest(upstream, &name.repo, &reference, None)
            .await
            .map_err(|e| image_error(name, format!("manifest {reference}: {e}")))?;
        let doc: ManifestDoc = serde_json::from_slice(&reply.body)
            .map_err(|e| image_error(name, format!("manifest {reference} unreadable: {e}")))?;
        if let Some(children) = doc.manifests {
            let chosen = scanned_manifest
                .filter(|d| children.iter().any(|c| c.digest == d.to_string()))
                .or_else(|| {
                    children
                        .iter()
                        .find(|c| {
                            c.platform.as_ref().is_some_and(|p| {
                                p.os.as_deref() == Some("linux")
                                    && p.architecture.as_deref() == Some(host_architecture())
                            })
                        })
                        .map(|c| parse_digest(name, &c.digest))
                        .transpose()
                        .ok()
                        .flatten()
                })
                .ok_or_else(|| image_error(name, "the index has no manifest for this platform"))?;
            reference = Reference::Digest(chosen);
            continue;
        }
        let config = doc
            .config
            .ok_or_else(|| image_error(name, "the manifest names no config"))?;
        if config.size > MAX_CONFIG_BYTES {
            return Err(image_error(
                name,
                format!(
                    "its config is {} bytes, over {MAX_CONFIG_BYTES}",
                    config.size
                ),
            ));
        }
        let config_digest = parse_digest(name, &config.digest)?;
        let blob = pull
            .open_blob(upstream, &name.repo, config_digest, None)
            .await
            .map_err(|e| image_error(name, format!("config {}: {e}", config.digest)))?;
        let mut body = blob.body;
        let mut bytes = Vec::with_capacity(config.size as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| image_error(name, format!("config: {e}")))?;
            if (bytes.len() + chunk.len()) as u64 > config.size.min(MAX_CONFIG_BYTES) {
                return Err(image_error(name, "config longer than its descriptor"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let layers = doc
            .layers
            .iter()
            .map(|l| parse_digest(name, &l.digest))
            .collect::<Result<Vec<BlobDigest>, _>>()?;
        let diff_ids = DiffIdMap::from_config_and_manifest(&bytes, &reply.body)
            .map_err(|e| image_error(name, format!("config and manifest do not match: {e}")))?;
        return Ok(ResolvedImage {
            name: name.clone(),
            manifest: reply.digest,
            layers,
            diff_ids,
        });
    }
    Err(image_error(name, "an index inside an index"))
}

#[cfg(test)]
mod tests {
    use shoal_policy::threat::parse_report;

    use super::*;

    fn shared_report(name: &str) -> Vec<u8> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/vuln-reports");
        std::fs::read(dir.join(name)).unwrap_or_else(|e| {
            panic!("{name}: {e} (the shared reports must sit beside the repository)")
        })
    }

    #[test]
    fn a_real_trivy_report_maps_by_its_layer_digests_without_the_image() {
        let report = parse_report(&shared_report("trivy-fluentd-gems.json")).unwrap();
        let grouped = group_findings(&report, None);
        assert_eq!(grouped.unmapped, 0);
        let base: BlobDigest =
            "sha256:000eee12ec04cc914bf96e8f5dee7767510c2aca3816af6078bd9fbe3150920c"
                .parse()
                .unwrap();
        assert!(grouped.per_layer.contains_key(&base));
        let records = records_for(&grouped, None, 5, 8);
        assert_eq!(records.len(), grouped.per_layer.len());
        let r = &records[&base];
        assert!(r.threat.score > 90.0, "{r:?}");
        assert!(r
            .threat
            .cves
            .iter()
            .any(|c| c.id == "CVE-2019-18224" && c.fixed));
    }

    #[test]
    fn a_real_grype_report_maps_through_the_image_config() {
        let report = parse_report(&shared_report("grype-busybox-1.32.1.json")).unwrap();
        // Without the image, Grype's DiffIDs map to nothing.
        assert_eq!(group_findings(&report, None).per_layer.len(), 0);
        let diff_id = shoal_policy::BlobDigest::parse(
            "sha256:67f770da229bf16d0c280f232629b0c1f1243a884df09f6b940a1c7288535a6d",
        )
        .unwrap();
        let policy = |d: &BlobDigest| shoal_policy::BlobDigest::parse(&d.to_string()).unwrap();
        let blob = BlobDigest::from_bytes([7; 32]);
        let clean = BlobDigest::from_bytes([8; 32]);
        let image = ResolvedImage {
            name: ImageRef::parse("busybox:1.32.1").unwrap(),
            manifest: BlobDigest::from_bytes([9; 32]),
            layers: vec![blob, clean],
            diff_ids: DiffIdMap::from_lists(
                &[diff_id, policy(&BlobDigest::from_bytes([1; 32]))],
                &[policy(&blob), policy(&clean)],
            )
            .unwrap(),
        };
        let grouped = group_findings(&report, Some(&image));
        assert_eq!(grouped.unmapped, 0);
        let records = records_for(&grouped, Some(&image), 5, 8);
        assert!(records[&blob].threat.score > 0.0);
        assert_eq!(
            records[&clean].threat.score, 0.0,
            "a clean layer is recorded clean"
        );
        assert!(records[&clean].threat.cves.is_empty());
    }

    #[test]
    fn a_digest_not_in_the_resolved_image_is_not_believed() {
        let report = parse_report(&shared_report("trivy-alpine-39.json")).unwrap();
        let image = ResolvedImage {
            name: ImageRef::parse("alpine:3.9").unwrap(),
            manifest: BlobDigest::from_bytes([9; 32]),
            layers: vec![BlobDigest::from_bytes([7; 32])],
            diff_ids: DiffIdMap::default(),
        };
        let grouped = group_findings(&report, Some(&image));
        assert!(grouped.per_layer.is_empty());
        assert_eq!(grouped.unmapped, report.findings.len());
    }
}
