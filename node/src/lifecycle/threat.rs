//! Where the lifecycle reads a layer's threat: the [`ThreatSource`] trait.
//!
//! The lifecycle only reads threat; it does not parse scanner reports or gossip scores. Until a
//! threat intake is wired in (`run` passes one to [`super::start`]), the node uses
//! [`NoThreatReports`], which knows no threat for any layer, so threat plays no part in states.

use serde::Serialize;
use shoal_proto::BlobDigest;

/// One vulnerability found in a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CveSummary {
    /// Its identifier, such as `CVE-2024-1234`.
    pub id: String,
    /// The scanner's severity label.
    pub severity: String,
    /// Whether a fixed version exists.
    pub fixed: bool,
}

/// What is known about a layer's vulnerabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerThreat {
    /// Threat score 0-100 (`shoal-policy::threat`).
    pub score: f64,
    /// The findings behind it.
    pub cves: Vec<CveSummary>,
}

/// A source of threat scores per layer.
pub trait ThreatSource: Send + Sync {
    /// The layer's threat, if any report named it.
    fn threat_of(&self, layer: &BlobDigest) -> Option<LayerThreat>;
}

/// The source used while no threat intake is configured: no layer has a threat.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoThreatReports;

impl ThreatSource for NoThreatReports {
    fn threat_of(&self, _layer: &BlobDigest) -> Option<LayerThreat> {
        None
    }
}
