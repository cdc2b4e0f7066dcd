//! Vulnerability reports in the scanners' own JSON formats, written for a test image's real layer
//! digests and DiffIDs, for the tests that feed threat intake (`POST /threat/reports`).
//!
//! The shapes follow the real reports in `shared/data/vuln-reports/`: Trivy's SchemaVersion 2
//! (`trivy image --format json`), where a finding names its layer by digest and DiffID or by
//! DiffID alone, and Grype's (`grype -o json`), where a finding names its layer by DiffID in
//! `artifact.locations[].layerID`.

use serde_json::{json, Value};

use crate::image::ImageInfo;
use crate::REGISTRY_HOST;

/// How a finding names the layer it was found in.
#[derive(Debug, Clone, Copy)]
pub enum LayerLocation {
    /// By the layer's blob digest and its DiffID (what Trivy writes when it knows both).
    DigestAndDiffId(usize),
    /// By DiffID only.
    DiffIdOnly(usize),
}

/// One finding of a Trivy report.
#[derive(Debug, Clone, Copy)]
pub struct TrivyFinding<'a> {
    /// `VulnerabilityID`, e.g. `CVE-2024-0001`.
    pub id: &'a str,
    /// The package's name.
    pub package: &'a str,
    /// The installed version.
    pub installed: &'a str,
    /// The version that fixes it, if any (`Status` is `fixed` then, `affected` otherwise).
    pub fixed: Option<&'a str>,
    /// `CRITICAL`, `HIGH`, `MEDIUM`, `LOW` or `UNKNOWN`.
    pub severity: &'a str,
    /// The NVD CVSS v3 base score.
    pub score: f64,
    /// The layer it was found in (an index into the image's layers, bottom first).
    pub layer: LayerLocation,
}

/// A Trivy JSON report for `image`, created at `created_at` (RFC 3339), with `findings`.
pub fn trivy_report(image: &ImageInfo, created_at: &str, findings: &[TrivyFinding]) -> Value {
    let layers: Vec<Value> = image
        .layers
        .iter()
        .zip(&image.diff_ids)
        .map(|(l, d)| json!({"Size": l.size, "Digest": l.digest, "DiffID": d}))
        .collect();
    let vulnerabilities: Vec<Value> = findings
        .iter()
        .map(|finding| {
            let layer = match finding.layer {
                LayerLocation::DigestAndDiffId(index) => {
                    json!({"Digest": image.layers[index].digest, "DiffID": image.diff_ids[index]})
                }
                LayerLocation::DiffIdOnly(index) => json!({"DiffID": image.diff_ids[index]}),
            };
            let mut vulnerability = json!({
                "VulnerabilityID": finding.id,
                "PkgID": format!("{}@{}", finding.package, finding.installed),
                "PkgName": finding.package,
                "InstalledVersion": finding.installed,
                "Status": if finding.fixed.is_some() { "fixed" } else { "affected" },
                "Layer": layer,
                "SeveritySource": "nvd",
                "PrimaryURL": format!("https://avd.aquasec.com/nvd/{}", finding.id.to_lowercase()),
                "Title": format!("{}: a test finding", finding.package),
                "Severity": finding.severity,
                "CVSS": {"nvd": {
                    "V3Vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                    "V3Score": finding.score,
                }},
            });
            if let Some(fixed) = finding.fixed {
                vulnerability["FixedVersion"] = json!(fixed);
            }
            vulnerability
        })
        .collect();
    let index_or_manifest = image.index.as_ref().unwrap_or(&image.manifest);
    json!({
        "SchemaVersion": 2,
        "Trivy": {"Version": "0.58.1"},
        "CreatedAt": created_at,
        "ArtifactName": image.reference,
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": {"Family": "alpine", "Name": "3.19.1"},
            "ImageID": image.config.digest,
            "DiffIDs": image.diff_ids,
            "RepoTags": [image.reference],
            "RepoDigests": [format!("{REGISTRY_HOST}/{}@{}", image.repo, index_or_manifest.digest)],
            "ImageConfig": {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": image.diff_ids},
            },
            "Layers": layers,
        },
        "Results": [{
            "Target": format!("{} (alpine 3.19.1)", image.reference),
            "Class": "os-pkgs",
            "Type": "alpine",
            "Vulnerabilities": vulnerabilities,
        }],
    })
}

/// One finding of a Grype report, in the `openssl` package of the image's bottom layer.
#[derive(Debug, Clone, Copy)]
pub struct GrypeFinding<'a> {
    /// `vulnerability.id`, e.g. `CVE-2024-1001`.
    pub id: &'a str,
    /// `High`, `Low`, ... as Grype spells them.
    pub severity: &'a str,
    /// The CVSS v3.1 base score.
    pub score: f64,
    /// Whether a fixed version exists (`fix.state` `fixed` or `not-fixed`).
    pub fixed: bool,
}

/// A Grype JSON report for `image`, written at `timestamp` (RFC 3339): its layers listed by
/// DiffID in `source.target.layers`, every finding located in the bottom layer by DiffID.
pub fn grype_report(image: &ImageInfo, timestamp: &str, findings: &[GrypeFinding]) -> Value {
    let matches: Vec<Value> = findings
        .iter()
        .map(|finding| {
            let fix = if finding.fixed {
                json!({"versions": ["2.0.1-r0"], "state": "fixed"})
            } else {
                json!({"versions": [], "state": "not-fixed"})
            };
            json!({
                "vulnerability": {
                    "id": finding.id,
                    "dataSource": format!("https://nvd.nist.gov/vuln/detail/{}", finding.id),
                    "namespace": "alpine:distro:alpine:3.19",
                    "severity": finding.severity,
                    "urls": [],
                    "cvss": [{
                        "version": "3.1",
                        "vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                        "metrics": {"baseScore": finding.score, "exploitabilityScore": 3.9, "impactScore": 5.9},
                        "vendorMetadata": {},
                    }],
                    "fix": fix,
                    "advisories": [],
                },
                "relatedVulnerabilities": [],
                "matchDetails": [],
                "artifact": {
                    "id": "0d5b3ac3e2f5b4c8",
                    "name": "openssl",
                    "version": "2.0.0-r0",
                    "type": "apk",
                    "locations": [{"path": "/lib/apk/db/installed", "layerID": image.diff_ids[0]}],
                    "language": "",
                    "licenses": [],
                    "cpes": [],
                    "purl": "pkg:apk/alpine/openssl@2.0.0-r0",
                },
            })
        })
        .collect();
    let layers: Vec<Value> = image
        .layers
        .iter()
        .zip(&image.diff_ids)
        .map(|(l, d)| json!({"mediaType": l.media_type, "digest": d, "size": l.size}))
        .collect();
    json!({
        "matches": matches,
        "source": {
            "type": "image",
            "target": {
                "userInput": image.reference,
                "imageID": image.config.digest,
                "manifestDigest": image.manifest.digest,
                "mediaType": image.manifest.media_type,
                "tags": [image.reference],
                "imageSize": image.layers.iter().map(|l| l.size).sum::<u64>(),
                "layers": layers,
                "repoDigests": [],
                "architecture": "amd64",
                "os": "linux",
            },
        },
        "distro": {"name": "alpine", "version": "3.19.1", "idLike": []},
        "descriptor": {"name": "grype", "version": "0.74.0", "timestamp": timestamp},
    })
}
