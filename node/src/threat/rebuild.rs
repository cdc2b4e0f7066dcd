//! The hook from threat intake to the rebuild flow (`threat.auto_rebuild`).
//!
//! Shoal builds no images: for a cache, a rebuild is re-resolving the image's tag upstream and
//! pre-positioning the new version (the shadow) before switching to it. That flow is owned by
//! `crate::rebuild`; intake only asks for it through [`RebuildRequests`], which the node's
//! rebuild service implements (`rebuild::RebuildHook` binds it once the service exists), and
//! which tests implement to see the calls.

use super::report::ImageRef;

/// Why intake asks for a rebuild.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildRequest {
    /// The image the report scanned, as named on a configured upstream.
    pub image: ImageRef,
    /// Distinct findings that have a fixed version.
    pub fixable: usize,
    /// The highest layer score of the report.
    pub worst_score: f64,
}

/// Where rebuild requests go.
pub trait RebuildRequests: Send + Sync + std::fmt::Debug {
    /// Asks for `request.image` to be refreshed. Must not block: the flow queues it.
    fn request(&self, request: RebuildRequest);
}
