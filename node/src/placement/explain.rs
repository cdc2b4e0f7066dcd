//! Why a layer is or is not on this node: `GET /placement/explain/{digest}` on the admin
//! listener, answered in JSON (the `shoal placement explain` command prints it).
//!
//! The digest is checked against the digest grammar before anything is looked up; a bad one is
//! `400`, a node without placement answers `404`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use shoal_policy::usage::{Forecast, ForecastMethod};
use shoal_proto::BlobDigest;

use super::eviction::Protection;
use super::{Placement, PlannedLayer};

/// The forecast of a layer's pulls over the plan's horizon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastView {
    /// The method chosen for the series (`Zero`, `Ses`, `Holt`, `CrostonSba`).
    pub method: String,
    /// The statistical part.
    pub statistical: f64,
    /// Pulls announced by manifest requests, decaying.
    pub announced: f64,
    /// Pulls in the open bucket.
    pub current: f64,
    /// All together.
    pub total: f64,
}

impl From<Forecast> for ForecastView {
    fn from(f: Forecast) -> Self {
        let method = match f.method {
            ForecastMethod::Zero => "Zero",
            ForecastMethod::Ses => "Ses",
            ForecastMethod::Holt => "Holt",
            ForecastMethod::CrostonSba => "CrostonSba",
        };
        Self {
            method: method.into(),
            statistical: f.statistical,
            announced: f.announced,
            current: f.current,
            total: f.total(),
        }
    }
}

/// What placement knows about one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The blob.
    pub digest: String,
    /// This node holds it now.
    pub held_here: bool,
    /// Its id in the demand table, if it has demand history.
    pub layer_id: Option<u32>,
    /// Its size, if known.
    pub size: Option<u64>,
    /// Client requests recorded while its history was kept.
    pub total_pulls: u64,
    /// This node's forecast.
    pub forecast: Option<ForecastView>,
    /// Forecast pulls per region, as far as this node knows them.
    pub regional_forecast: BTreeMap<String, f64>,
    /// Threat score 0-100 (0 when no report or peer scored the layer).
    pub threat: f64,
    /// The layer's worst CVEs, with severity and whether a fix exists (empty when unscored).
    pub threat_cves: Vec<crate::threat::CveSummary>,
    /// When the last plan ran (seconds since the epoch; 0: never).
    pub planned_at: u64,
    /// The layer's part of the last plan: scores, copies and holders per region.
    pub plan: Option<PlannedLayer>,
    /// The regions the plan knew.
    pub regions: Vec<String>,
    /// The plan wants a copy on this node.
    pub required_here: bool,
    /// Members known to hold the whole blob (their announcements).
    pub known_holders: Vec<String>,
    /// It arrived by pre-fetch and no client has read it yet.
    pub prefetched_unread: bool,
    /// What protects it from eviction.
    pub eviction_protection: Protection,
}

/// The explain route over `placement` (`None`: placement is off).
pub fn router(placement: Option<Placement>) -> Router {
    Router::new()
        .route("/placement/explain/{digest}", get(explain))
        .with_state(placement)
}

async fn explain(
    State(placement): State<Option<Placement>>,
    Path(digest): Path<String>,
) -> Response {
    if digest.len() > 100 {
        return (StatusCode::BAD_REQUEST, "not a digest\n").into_response();
    }
    let Ok(digest) = digest.parse::<BlobDigest>() else {
        return (StatusCode::BAD_REQUEST, "not a sha256 digest\n").into_response();
    };
    let Some(placement) = placement else {
        return (StatusCode::NOT_FOUND, "placement is off on this node\n").into_response();
    };
    let explanation = tokio::task::spawn_blocking(move || placement.explain(digest)).await;
    match explanation {
        Ok(explanation) => match serde_json::to_vec_pretty(&explanation) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "explain failed\n").into_response(),
        },
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "explain failed\n").into_response(),
    }
}
