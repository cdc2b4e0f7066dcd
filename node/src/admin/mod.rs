//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz` (below) and `GET /status`
//! ([`status`]: the node at a glance, as JSON). Binds to loopback unless configured otherwise;
//! it exposes operational data, never blob content.
//!
//! `/healthz` answers `{"status":"ok","reasons":[]}` or `{"status":"degraded","reasons":[..]}`
//! (`disk_full`, `store_read_only`, `store_io_error`, `upstream_unreachable`), always with 200: a
//! degraded node still serves pulls (cached blobs, and cold ones passed through), so an
//! orchestrator must not restart it for that.

pub mod auth;
pub mod status;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::pullthrough::PullThrough;
use crate::store::ShardStore;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// The store, for its gauges.
    pub store: ShardStore,
    /// What `/status` reads besides the metrics and the store.
    pub status: status::StatusContext,
    /// The pull-through cache, for what `/healthz` reports.
    pub pull: PullThrough,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status::status))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let text = state.metrics.render(state.store.stats());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

/// The body of `/healthz`.
#[derive(Debug, serde::Serialize)]
struct Health {
    status: &'static str,
    reasons: Vec<&'static str>,
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    let reasons = state.pull.degradations();
    let health = Health {
        status: if reasons.is_empty() { "ok" } else { "degraded" },
        reasons,
    };
    let body = serde_json::to_string(&health).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}
