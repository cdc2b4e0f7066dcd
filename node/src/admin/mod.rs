//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz` and `GET /status`
//! ([`status`]: the node at a glance, as JSON). Binds to loopback unless configured otherwise;
//! it exposes operational data, never blob content.

pub mod status;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
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

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}
