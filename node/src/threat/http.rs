//! The admin routes of threat: `POST /threat/reports` (import a Trivy or Grype JSON report) and
//! `GET /threat/layers/{digest}` (one layer's record), JSON both ways.
//!
//! Input is bounded before it is read: the `Content-Length` is checked against
//! `threat.max_report_bytes` before the body is touched, and the body is read with the same limit.
//! When an admin token is configured, the import needs it (`Authorization: Bearer <token>`).
//! Every refusal is a 4xx (or 502 when the image cannot be read through the cache) with a JSON body
//! `{"error": "<problem>", "message": "<what and why>"}`, and changes nothing.

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use shoal_proto::BlobDigest;

use super::book::RecordSource;
use super::intake::IntakeError;
use super::{CveSummary, Threats};
use crate::config::AdminToken;

#[derive(Clone)]
struct RouteState {
    threats: Threats,
    token: Option<AdminToken>,
}

/// The routes over `threats`; `token` guards the import when set.
pub fn router(threats: Threats, token: Option<AdminToken>) -> Router {
    Router::new()
        .route(
            "/threat/reports",
            // The handler enforces its own limit (`threat.max_report_bytes`).
            post(import).layer(DefaultBodyLimit::disable()),
        )
        .route("/threat/layers/{digest}", get(layer))
        .with_state(RouteState { threats, token })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

fn refuse(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        error,
        message: message.into(),
    })
    .unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// Whether the request carries the configured token (always true without one: the admin listener
/// is then on loopback, which the config enforces).
fn authorized(token: Option<&AdminToken>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| token.matches(presented.trim()))
}

async fn import(State(state): State<RouteState>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(state.token.as_ref(), &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs the admin token: Authorization: Bearer <token>",
        );
    }
    let limit = state.threats.config().max_report_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the report is larger than the limit of {limit} bytes (threat.max_report_bytes)"
            ),
        );
    }
    // One import at a time, so at most one report body is held in memory.
    let _importing = state.threats.inner.importing.lock().await;
    let bytes = match to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the report is larger than the limit of {limit} bytes (threat.max_report_bytes), or its upload broke off"),
            )
        }
    };
    match state.threats.import(&bytes).await {
        Ok(summary) => json(&summary),
        Err(error) => {
            let (status, kind) = match &error {
                IntakeError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                IntakeError::Report(shoal_policy::threat::ReportError::Json(_)) => {
                    (StatusCode::BAD_REQUEST, "malformed_json")
                }
                IntakeError::Report(shoal_policy::threat::ReportError::UnknownFormat) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unknown_format")
                }
                IntakeError::Report(shoal_policy::threat::ReportError::TooLarge { .. }) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
                }
                IntakeError::Report(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_field"),
                IntakeError::NothingMapped(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unmapped"),
                IntakeError::Image { .. } => (StatusCode::BAD_GATEWAY, "image_unavailable"),
            };
            tracing::info!(%error, "threat report refused");
            refuse(status, kind, error.to_string())
        }
    }
}

/// The answer to `GET /threat/layers/{digest}`.
#[derive(Debug, Serialize)]
pub struct LayerView {
    /// The blob digest.
    pub digest: String,
    /// Score 0-100.
    pub score: f64,
    /// The CVEs kept (the highest scoring).
    pub cves: Vec<CveSummary>,
    /// How many CVEs the report named for the layer.
    pub cves_total: u32,
    /// When the scan was made (seconds since the epoch).
    pub reported_at: u64,
    /// `local` (imported here) or `peer` (heard over gossip).
    pub source: &'static str,
    /// The peer that published it, for `peer`.
    pub peer: Option<String>,
    /// This node caches the layer now.
    pub cached: bool,
}

async fn layer(State(state): State<RouteState>, Path(digest): Path<String>) -> Response {
    if digest.len() > 100 {
        return refuse(StatusCode::BAD_REQUEST, "bad_digest", "not a digest");
    }
    let Ok(digest) = digest.parse::<BlobDigest>() else {
        return refuse(StatusCode::BAD_REQUEST, "bad_digest", "not a sha256 digest");
    };
    let Some(record) = state.threats.record(&digest) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "unscored",
            format!("no report or peer has scored {digest}"),
        );
    };
    let (source, peer) = match record.source {
        RecordSource::Local => ("local", None),
        RecordSource::Peer(peer) => ("peer", Some(peer)),
    };
    json(&LayerView {
        digest: digest.to_string(),
        score: record.threat.score,
        cves: record.threat.cves,
        cves_total: record.cves_total,
        reported_at: record.reported_at,
        source,
        peer,
        cached: state.threats.held(&digest),
    })
}
