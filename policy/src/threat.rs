//! Threat: a 0-100 score per layer from vulnerability scanner reports.
//!
//! This module owns the parsing of Trivy JSON and Grype JSON (as those tools
//! write them) into a validated [`VulnReport`], the mapping of DiffIDs to blob
//! digests ([`DiffIdMap`], from the image config's `rootfs.diff_ids` and the
//! manifest's `layers`, matched by position), and the scoring of layers
//! ([`ThreatTable`]).
//!
//! # Scoring
//!
//! * A finding's score is its highest CVSS v3 base score × 10 over all sources
//!   the report gives; failing that its highest v2 base score × 10; failing
//!   that its severity label: CRITICAL 95, HIGH 80, MEDIUM 55, LOW 25,
//!   NEGLIGIBLE 5, UNKNOWN (or missing) 30.
//! * Findings are de-duplicated per layer by vulnerability ID (several packages
//!   can carry the same CVE), keeping the highest score.
//! * A layer's score combines its findings as a damped noisy-OR: with the
//!   findings' scores `s_1 >= s_2 >= ...` on a 0-1 scale,
//!   `score = 100 * (1 - (1 - s_1) * Π_{i>1} (1 - s_i / 4))`. The worst finding
//!   sets the floor, each further finding raises the score a little, and the
//!   result never exceeds 100.
//! * A layer records how many findings have a fix available (Trivy:
//!   `FixedVersion` set or `Status` = `fixed`; Grype: `fix.state` = `fixed`).
//!
//! Reports are outside input: [`parse_report`] rejects anything over
//! [`MAX_REPORT_BYTES`] before parsing, and never panics on bad input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::BlobDigest;

/// The largest report accepted, in bytes (64 MiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024 * 1024;

/// The most findings accepted from one report.
pub const MAX_FINDINGS: usize = 1_000_000;

/// Severity as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// Unknown or missing.
    Unknown,
    /// Negligible.
    Negligible,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Parses a label in any case (`CRITICAL`, `High`, `medium`, ...).
    pub fn from_label(label: &str) -> Severity {
        match label.to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" => Severity::Low,
            "negligible" => Severity::Negligible,
            _ => Severity::Unknown,
        }
    }

    /// The 0-100 score used when no CVSS base score is given.
    pub fn label_score(self) -> f64 {
        match self {
            Severity::Critical => 95.0,
            Severity::High => 80.0,
            Severity::Medium => 55.0,
            Severity::Low => 25.0,
            Severity::Negligible => 5.0,
            Severity::Unknown => 30.0,
        }
    }

    /// The label for a CVSS base score (0-10), by the CVSS v3 bands.
    pub fn from_cvss(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Negligible,
        }
    }
}

/// Which layer a finding sits in, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRef {
    /// The compressed blob digest, when the report gives one.
    pub digest: Option<BlobDigest>,
    /// The uncompressed DiffID, when the report gives one.
    pub diff_id: Option<BlobDigest>,
}

/// One vulnerability found in one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// CVE or advisory ID.
    pub id: String,
    /// The label as the report gives it.
    pub severity: Severity,
    /// The highest CVSS base score (0-10) the report gives, v3 preferred.
    pub cvss_base: Option<f64>,
    /// Whether a fixed version exists.
    pub fix_available: bool,
    /// Where it was found.
    pub layer: LayerRef,
}

impl Finding {
    /// The finding's 0-100 score: CVSS × 10 where present, else the label's.
    pub fn score(&self) -> f64 {
        match self.cvss_base {
            Some(s) => (s * 10.0).clamp(0.0, 100.0),
            None => self.severity.label_score(),
        }
    }
}

/// Which scanner wrote a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scanner {
    /// Trivy JSON (`SchemaVersion` 2).
    Trivy,
    /// Grype JSON.
    Grype,
}

/// A parsed, validated report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VulnReport {
    /// Which scanner wrote it.
    pub scanner: Scanner,
    /// The image's layers in order, as far as the report lists them.
    pub layers: Vec<LayerRef>,
    /// Every finding that names a layer.
    pub findings: Vec<Finding>,
    /// Findings skipped because they name no layer.
    pub without_layer: usize,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Larger than [`MAX_REPORT_BYTES`].
    #[error("report is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON.
    #[error("report is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Neither Trivy's `Results` nor Grype's `matches` at the top level.
    #[error("report is neither Trivy JSON (no `Results`) nor Grype JSON (no `matches`)")]
    UnknownFormat,
    /// A field of the wrong type or value.
    #[error("{scanner:?} report: {path}: {problem}")]
    Field {
        /// Which format was being read.
        scanner: Scanner,
        /// JSON path of the field.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// More findings than [`MAX_FINDINGS`].
    #[error("report has more than {0} findings")]
    TooManyFindings(usize),
}

fn field_err(scanner: Scanner, path: impl Into<String>, problem: impl Into<String>) -> ReportError {
    ReportError::Field {
        scanner,
        path: path.into(),
        problem: problem.into(),
    }
}

fn check_size(bytes: &[u8]) -> Result<(), ReportError> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge {
            size: bytes.len(),
            limit: MAX_REPORT_BYTES,
        });
    }
    Ok(())
}

/// Reads a Trivy or Grype report, telling them apart by their top-level keys.
pub fn parse_report(bytes: &[u8]) -> Result<VulnReport, ReportError> {
    check_size(bytes)?;
    let value: Value = serde_json::from_slice(bytes)?;
    if value.get("Results").is_some() || value.get("SchemaVersion").is_some() {
        trivy_from_value(&value)
    } else if value.get("matches").is_some() {
        grype_from_value(&value)
    } else {
        Err(ReportError::UnknownFormat)
    }
}

/// Reads a Trivy JSON report.
pub fn parse_trivy(bytes: &[u8]) -> Result<VulnReport, ReportError> {
    check_size(bytes)?;
    trivy_from_value(&serde_json::from_slice(bytes)?)
}

/// Reads a Grype JSON report.
pub fn parse_grype(bytes: &[u8]) -> Result<VulnReport, ReportError> {
    check_size(bytes)?;
    grype_from_value(&serde_json::from_slice(bytes)?)
}

/// An optional digest field: absent, null or empty string is `None`.
fn opt_digest(
    v: Option<&Value>,
    scanner: Scanner,
    path: &str,
) -> Result<Option<BlobDigest>, ReportError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => BlobDigest::parse(s)
            .map(Some)
            .map_err(|e| field_err(scanner, path, e.to_string())),
        Some(_) => Err(field_err(scanner, path, "expected a string")),
    }
}

fn array<'a>(
    v: Option<&'a Value>,
    scanner: Scanner,
    path: &str,
) -> Result<&'a [Value], ReportError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(field_err(scanner, path, "expected an array")),
    }
}

fn opt_str<'a>(
    v: Option<&'a Value>,
    scanner: Scanner,
    path: &str,
) -> Result<Option<&'a str>, ReportError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field_err(scanner, path, "expected a string")),
    }
}

fn opt_score(v: Option<&Value>, scanner: Scanner, path: &str) -> Result<Option<f64>, ReportError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if (0.0..=10.0).contains(&s) => Ok(Some(s)),
            _ => Err(field_err(scanner, path, "CVSS base score outside 0-10")),
        },
        Some(_) => Err(field_err(scanner, path, "expected a number")),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn trivy_from_value(root: &Value) -> Result<VulnReport, ReportError> {
    const S: Scanner = Scanner::Trivy;
    if !root.is_object() {
        return Err(field_err(S, "$", "expected an object"));
    }
    let metadata = root.get("Metadata");
    let mut layers = Vec::new();
    let listed = array(metadata.and_then(|m| m.get("Layers")), S, "Metadata.Layers")?;
    if listed.is_empty() {
        let diff_ids = array(
            metadata.and_then(|m| m.get("DiffIDs")),
            S,
            "Metadata.DiffIDs",
        )?;
        for (i, d) in diff_ids.iter().enumerate() {
            layers.push(LayerRef {
                digest: None,
                diff_id: opt_digest(Some(d), S, &format!("Metadata.DiffIDs[{i}]"))?,
            });
        }
    }
    for (i, l) in listed.iter().enumerate() {
        layers.push(LayerRef {
            digest: opt_digest(l.get("Digest"), S, &format!("Metadata.Layers[{i}].Digest"))?,
            diff_id: opt_digest(l.get("DiffID"), S, &format!("Metadata.Layers[{i}].DiffID"))?,
        });
    }
    let mut findings = Vec::new();
    let mut without_layer = 0;
    for (ri, result) in array(root.get("Results"), S, "Results")?.iter().enumerate() {
        let vulns = array(
            result.get("Vulnerabilities"),
            S,
            &format!("Results[{ri}].Vulnerabilities"),
        )?;
        for (vi, v) in vulns.iter().enumerate() {
            let path = format!("Results[{ri}].Vulnerabilities[{vi}]");
            let id = opt_str(
                v.get("VulnerabilityID"),
                S,
                &format!("{path}.VulnerabilityID"),
            )?
            .ok_or_else(|| field_err(S, format!("{path}.VulnerabilityID"), "missing"))?;
            let severity = Severity::from_label(
                opt_str(v.get("Severity"), S, &format!("{path}.Severity"))?.unwrap_or(""),
            );
            let (mut v3, mut v2) = (None, None);
            if let Some(cvss) = v.get("CVSS") {
                let Some(sources) = cvss.as_object() else {
                    return Err(field_err(S, format!("{path}.CVSS"), "expected an object"));
                };
                for (source, scores) in sources {
                    let p = format!("{path}.CVSS.{source}");
                    v3 = max_opt(
                        v3,
                        opt_score(scores.get("V3Score"), S, &format!("{p}.V3Score"))?,
                    );
                    v2 = max_opt(
                        v2,
                        opt_score(scores.get("V2Score"), S, &format!("{p}.V2Score"))?,
                    );
                }
            }
            let fixed_version = opt_str(v.get("FixedVersion"), S, &format!("{path}.FixedVersion"))?;
            let status = opt_str(v.get("Status"), S, &format!("{path}.Status"))?;
            let fix_available =
                fixed_version.is_some_and(|f| !f.is_empty()) || status == Some("fixed");
            let layer = match v.get("Layer") {
                None | Some(Value::Null) => None,
                Some(l) => Some(LayerRef {
                    digest: opt_digest(l.get("Digest"), S, &format!("{path}.Layer.Digest"))?,
                    diff_id: opt_digest(l.get("DiffID"), S, &format!("{path}.Layer.DiffID"))?,
                }),
            };
            match layer {
                Some(layer) if layer.digest.is_some() || layer.diff_id.is_some() => {
                    if findings.len() >= MAX_FINDINGS {
                        return Err(ReportError::TooManyFindings(MAX_FINDINGS));
                    }
                    findings.push(Finding {
                        id: id.to_string(),
                        severity,
                        cvss_base: v3.or(v2),
                        fix_available,
                        layer,
                    });
                }
                _ => without_layer += 1,
            }
        }
    }
    Ok(VulnReport {
        scanner: S,
        layers,
        findings,
        without_layer,
    })
}

fn grype_from_value(root: &Value) -> Result<VulnReport, ReportError> {
    const S: Scanner = Scanner::Grype;
    if !root.is_object() {
        return Err(field_err(S, "$", "expected an object"));
    }
    let target = root.get("source").and_then(|s| s.get("target"));
    let mut layers = Vec::new();
    for (i, l) in array(
        target.and_then(|t| t.get("layers")),
        S,
        "source.target.layers",
    )?
    .iter()
    .enumerate()
    {
        // Grype lists layers by DiffID (they equal the config's rootfs.diff_ids).
        layers.push(LayerRef {
            digest: None,
            diff_id: opt_digest(
                l.get("digest"),
                S,
                &format!("source.target.layers[{i}].digest"),
            )?,
        });
    }
    let mut findings = Vec::new();
    let mut without_layer = 0;
    for (mi, m) in array(root.get("matches"), S, "matches")?.iter().enumerate() {
        let path = format!("matches[{mi}]");
        let vuln = m
            .get("vulnerability")
            .ok_or_else(|| field_err(S, format!("{path}.vulnerability"), "missing"))?;
        let id = opt_str(vuln.get("id"), S, &format!("{path}.vulnerability.id"))?
            .ok_or_else(|| field_err(S, format!("{path}.vulnerability.id"), "missing"))?;
        let severity = Severity::from_label(
            opt_str(
                vuln.get("severity"),
                S,
                &format!("{path}.vulnerability.severity"),
            )?
            .unwrap_or(""),
        );
        let (mut v3, mut v2) = (None, None);
        for (ci, c) in array(vuln.get("cvss"), S, &format!("{path}.vulnerability.cvss"))?
            .iter()
            .enumerate()
        {
            let p = format!("{path}.vulnerability.cvss[{ci}]");
            let score = opt_score(
                c.get("metrics").and_then(|m| m.get("baseScore")),
                S,
                &format!("{p}.metrics.baseScore"),
            )?;
            let version = opt_str(c.get("version"), S, &format!("{p}.version"))?.unwrap_or("");
            if version.starts_with('2') {
                v2 = max_opt(v2, score);
            } else {
                v3 = max_opt(v3, score);
            }
        }
        let fix_state = opt_str(
            vuln.get("fix").and_then(|f| f.get("state")),
            S,
            &format!("{path}.vulnerability.fix.state"),
        )?;
        let fix_available = fix_state == Some("fixed");
        let locations = array(
            m.get("artifact").and_then(|a| a.get("locations")),
            S,
            &format!("{path}.artifact.locations"),
        )?;
        let mut diff_ids = Vec::new();
        for (li, loc) in locations.iter().enumerate() {
            if let Some(d) = opt_digest(
                loc.get("layerID"),
                S,
                &format!("{path}.artifact.locations[{li}].layerID"),
            )? {
                if !diff_ids.contains(&d) {
                    diff_ids.push(d);
                }
            }
        }
        if diff_ids.is_empty() {
            without_layer += 1;
        }
        for diff_id in diff_ids {
            if findings.len() >= MAX_FINDINGS {
                return Err(ReportError::TooManyFindings(MAX_FINDINGS));
            }
            findings.push(Finding {
                id: id.to_string(),
                severity,
                cvss_base: v3.or(v2),
                fix_available,
                layer: LayerRef {
                    digest: None,
                    diff_id: Some(diff_id),
                },
            });
        }
    }
    Ok(VulnReport {
        scanner: S,
        layers,
        findings,
        without_layer,
    })
}

/// Maps DiffIDs (uncompressed) to blob digests (compressed), by position:
/// `config.rootfs.diff_ids[i]` belongs to `manifest.layers[i]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffIdMap {
    map: BTreeMap<BlobDigest, BlobDigest>,
}

/// Why an image config and manifest could not be matched up.
#[derive(Debug, thiserror::Error)]
pub enum DiffIdMapError {
    /// Over [`MAX_REPORT_BYTES`].
    #[error("document is {0} bytes, over the limit")]
    TooLarge(usize),
    /// Not JSON.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Different numbers of DiffIDs and layers.
    #[error("config lists {diff_ids} diff_ids but the manifest lists {layers} layers")]
    CountMismatch {
        /// DiffIDs in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
}

#[derive(Deserialize)]
struct ConfigDoc {
    rootfs: RootFs,
}
#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<BlobDigest>,
}
#[derive(Deserialize)]
struct ManifestDoc {
    layers: Vec<ManifestLayer>,
}
#[derive(Deserialize)]
struct ManifestLayer {
    digest: BlobDigest,
}

impl DiffIdMap {
    /// Builds the map from an image config JSON and its manifest JSON.
    pub fn from_config_and_manifest(
        config: &[u8],
        manifest: &[u8],
    ) -> Result<DiffIdMap, DiffIdMapError> {
        for doc in [config, manifest] {
            if doc.len() > MAX_REPORT_BYTES {
                return Err(DiffIdMapError::TooLarge(doc.len()));
            }
        }
        let config: ConfigDoc = serde_json::from_slice(config)?;
        let manifest: ManifestDoc = serde_json::from_slice(manifest)?;
        let blobs: Vec<BlobDigest> = manifest.layers.into_iter().map(|l| l.digest).collect();
        Self::from_lists(&config.rootfs.diff_ids, &blobs)
    }

    /// Builds the map from `(diff_id, blob digest)` pairs in layer order.
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (BlobDigest, BlobDigest)>,
    ) -> Result<DiffIdMap, DiffIdMapError> {
        Ok(DiffIdMap {
            map: pairs.into_iter().collect(),
        })
    }

    /// Builds the map from ordered DiffIDs and blob digests, which must be the
    /// same length.
    pub fn from_lists(
        diff_ids: &[BlobDigest],
        blobs: &[BlobDigest],
    ) -> Result<DiffIdMap, DiffIdMapError> {
        if diff_ids.len() != blobs.len() {
            return Err(DiffIdMapError::CountMismatch {
                diff_ids: diff_ids.len(),
                layers: blobs.len(),
            });
        }
        Self::from_pairs(diff_ids.iter().cloned().zip(blobs.iter().cloned()))
    }

    /// The blob digest for a DiffID.
    pub fn blob_for(&self, diff_id: &BlobDigest) -> Option<&BlobDigest> {
        self.map.get(diff_id)
    }
}

/// The threat assessment of one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerThreat {
    /// Combined 0-100 score (see the module docs).
    pub score: f64,
    /// Highest finding score.
    pub max_finding: f64,
    /// Distinct vulnerability IDs.
    pub findings: usize,
    /// Of those, how many have a fix available.
    pub fixable: usize,
}

impl LayerThreat {
    /// True when every finding has a fix (a patched version can exist).
    pub fn all_fixable(&self) -> bool {
        self.findings > 0 && self.fixable == self.findings
    }
}

/// Combines finding scores (0-100) into a layer score (0-100): a damped
/// noisy-OR, see the module docs.
pub fn combine_scores(scores: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = scores.iter().map(|s| (s / 100.0).clamp(0.0, 1.0)).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let Some((&worst, rest)) = sorted.split_first() else {
        return 0.0;
    };
    let survive = rest
        .iter()
        .fold(1.0 - worst, |acc, s| acc * (1.0 - s / 4.0));
    (100.0 * (1.0 - survive)).clamp(0.0, 100.0)
}

/// Threat scores per blob digest, built from any number of reports.
#[derive(Debug, Clone, Default)]
pub struct ThreatTable {
    /// Per layer: vulnerability ID → (score, fix available).
    findings: BTreeMap<BlobDigest, BTreeMap<String, (f64, bool)>>,
    /// Findings whose DiffID could not be mapped to a blob digest.
    unmapped: usize,
}

impl ThreatTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a report's findings. A finding's layer is its blob digest when
    /// given; otherwise its DiffID mapped through `diff_ids` (if given) or
    /// through the report's own layer list when that pairs DiffIDs with
    /// digests. Findings that cannot be mapped are counted in
    /// [`ThreatTable::unmapped`] and otherwise ignored.
    pub fn add_report(&mut self, report: &VulnReport, diff_ids: Option<&DiffIdMap>) {
        let own: BTreeMap<&BlobDigest, &BlobDigest> = report
            .layers
            .iter()
            .filter_map(|l| Some((l.diff_id.as_ref()?, l.digest.as_ref()?)))
            .collect();
        for f in &report.findings {
            let blob = f.layer.digest.clone().or_else(|| {
                let d = f.layer.diff_id.as_ref()?;
                diff_ids
                    .and_then(|m| m.blob_for(d))
                    .or_else(|| own.get(d).copied())
                    .cloned()
            });
            let Some(blob) = blob else {
                self.unmapped += 1;
                continue;
            };
            let entry = self
                .findings
                .entry(blob)
                .or_default()
                .entry(f.id.clone())
                .or_insert((0.0, false));
            entry.0 = entry.0.max(f.score());
            entry.1 |= f.fix_available;
        }
    }

    /// Findings that named a DiffID no map could resolve.
    pub fn unmapped(&self) -> usize {
        self.unmapped
    }

    /// The assessment of one layer, `None` when it has no findings.
    pub fn layer(&self, blob: &BlobDigest) -> Option<LayerThreat> {
        let vulns = self.findings.get(blob)?;
        let scores: Vec<f64> = vulns.values().map(|(s, _)| *s).collect();
        Some(LayerThreat {
            score: combine_scores(&scores),
            max_finding: scores.iter().copied().fold(0.0, f64::max),
            findings: vulns.len(),
            fixable: vulns.values().filter(|(_, fix)| *fix).count(),
        })
    }

    /// The 0-100 score of one layer (0 without findings).
    pub fn score(&self, blob: &BlobDigest) -> f64 {
        self.layer(blob).map_or(0.0, |t| t.score)
    }

    /// Every layer with findings, in digest order.
    pub fn layers(&self) -> impl Iterator<Item = (&BlobDigest, LayerThreat)> + '_ {
        self.findings
            .keys()
            .filter_map(move |d| Some((d, self.layer(d)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(c: char) -> BlobDigest {
        BlobDigest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn trivy_fixture() {
        let report = parse_report(include_bytes!("../testdata/trivy-small.json")).unwrap();
        assert_eq!(report.scanner, Scanner::Trivy);
        assert_eq!(report.layers.len(), 2);
        assert_eq!(report.findings.len(), 3);
        assert_eq!(report.without_layer, 1);
        let mut table = ThreatTable::new();
        table.add_report(&report, None);
        let base = table.layer(&d('a')).unwrap();
        // CVE with nvd 9.8 and redhat 8.1 → 98; second CVE: label HIGH → 80.
        assert_eq!(base.findings, 2);
        assert!((base.max_finding - 98.0).abs() < 1e-9);
        assert!((base.score - 100.0 * (1.0 - 0.02 * 0.8)).abs() < 1e-9);
        assert_eq!(base.fixable, 1);
        // The DiffID-only finding maps through the report's own layer list.
        let top = table.layer(&d('b')).unwrap();
        assert!((top.score - 53.0).abs() < 1e-9);
        assert!(top.all_fixable());
    }

    #[test]
    fn grype_fixture_maps_diff_ids() {
        let report = parse_report(include_bytes!("../testdata/grype-small.json")).unwrap();
        assert_eq!(report.scanner, Scanner::Grype);
        assert_eq!(report.findings.len(), 3);
        let mut unmapped = ThreatTable::new();
        unmapped.add_report(&report, None);
        assert_eq!(unmapped.unmapped(), 3);
        let map = DiffIdMap::from_config_and_manifest(
            include_bytes!("../testdata/grype-small-config.json"),
            include_bytes!("../testdata/grype-small-manifest.json"),
        )
        .unwrap();
        let mut table = ThreatTable::new();
        table.add_report(&report, Some(&map));
        assert_eq!(table.unmapped(), 0);
        let base = table.layer(&d('c')).unwrap();
        // v3 8.8 preferred over v2 6.8; a second finding with no CVSS: label Medium.
        assert!((base.max_finding - 88.0).abs() < 1e-9);
        assert_eq!(base.findings, 2);
        assert_eq!(base.fixable, 1);
        let app = table.layer(&d('e')).unwrap();
        assert!(
            (app.score - 30.0).abs() < 1e-9,
            "no severity → UNKNOWN label score"
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_report(b"not json"),
            Err(ReportError::Json(_))
        ));
        assert!(matches!(
            parse_report(b"{}"),
            Err(ReportError::UnknownFormat)
        ));
        assert!(matches!(
            parse_report(b"[]"),
            Err(ReportError::UnknownFormat)
        ));
        let bad_digest = br#"{"Results":[{"Vulnerabilities":[{"VulnerabilityID":"X","Layer":{"Digest":"sha256:zz"}}]}]}"#;
        let err = parse_report(bad_digest).unwrap_err().to_string();
        assert!(
            err.contains("Results[0].Vulnerabilities[0].Layer.Digest"),
            "{err}"
        );
        let bad_score = br#"{"matches":[{"vulnerability":{"id":"X","cvss":[{"version":"3.1","metrics":{"baseScore":42}}]}}]}"#;
        assert!(parse_report(bad_score).is_err());
        let huge = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            parse_report(&huge),
            Err(ReportError::TooLarge { .. })
        ));
    }

    /// Exercises the real reports in the shared data folder. The folder is
    /// part of the test's input: a missing folder fails the test rather than
    /// letting it pass without having parsed anything.
    #[test]
    fn real_reports_parse() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/vuln-reports");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "the real scanner reports are missing: cannot read {}: {e} \
                 (the shared data folder must sit beside the repository)",
                dir.display()
            )
        });
        let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        let mut parsed = 0;
        for path in names {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !(name.starts_with("trivy-") || name.starts_with("grype-")) {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let report = parse_report(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!report.findings.is_empty(), "{name}");
            let mut table = ThreatTable::new();
            // Grype lists DiffIDs only; without the config the DiffID is the key.
            let pairs: Vec<_> = report
                .layers
                .iter()
                .filter_map(|l| l.diff_id.clone())
                .map(|x| (x.clone(), x))
                .collect();
            let identity = DiffIdMap::from_pairs(pairs).unwrap();
            table.add_report(&report, Some(&identity));
            assert_eq!(table.unmapped(), 0, "{name}");
            for (_, t) in table.layers() {
                assert!((0.0..=100.0).contains(&t.score));
            }
            parsed += 1;
        }
        assert!(
            parsed >= 2,
            "only {parsed} trivy-/grype- reports parsed in {}",
            dir.display()
        );
    }

    proptest! {
        #[test]
        fn combined_score_bounds(scores in proptest::collection::vec(0.0f64..=100.0, 1..30)) {
            let c = combine_scores(&scores);
            let max = scores.iter().copied().fold(0.0, f64::max);
            prop_assert!(c >= max - 1e-9 && c <= 100.0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_report(&bytes);
        }
    }
}
