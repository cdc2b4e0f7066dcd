//! The hook from threat intake to the rebuild flow (`threat.auto_rebuild`).
//!
//! Shoal builds no images: for a cache, a rebuild is re-resolving the image's tag upstream and
//! pre-positioning the new version (the shadow) before switching to it. That flow is owned by
//! another subsystem; intake only asks for it through [`RebuildRequests`]. Until the flow is wired
//! in, the node runs [`LoggedRebuildRequests`], which logs each request and does nothing else: no
//! rebuild is pretended. Wiring the real flow means passing its handle (an implementation of this
//! trait) to `threat::start` instead.

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

/// The stand-in until the rebuild flow is wired in: logs each request.
#[derive(Debug, Default)]
pub struct LoggedRebuildRequests;

impl RebuildRequests for LoggedRebuildRequests {
    fn request(&self, request: RebuildRequest) {
        tracing::warn!(
            image = %request.image,
            fixable = request.fixable,
            worst_score = request.worst_score,
            "threat.auto_rebuild: the report has fixed versions, but this node has no rebuild flow; nothing was started"
        );
    }
}
