//! Where the lifecycle reads a layer's threat: the [`ThreatSource`] trait.
//!
//! The lifecycle only reads threat; it does not parse scanner reports or gossip scores. The node
//! passes its threat intake (`crate::threat::Threats`: reports imported here and scores from
//! peers); a test can pass any other source.

use shoal_proto::BlobDigest;

pub use crate::threat::{CveSummary, LayerThreat};

/// A source of threat scores per layer.
pub trait ThreatSource: Send + Sync {
    /// The layer's threat, if any report named it.
    fn threat_of(&self, layer: &BlobDigest) -> Option<LayerThreat>;
}

impl ThreatSource for crate::threat::Threats {
    fn threat_of(&self, layer: &BlobDigest) -> Option<LayerThreat> {
        crate::threat::Threats::threat_of(self, layer)
    }
}
