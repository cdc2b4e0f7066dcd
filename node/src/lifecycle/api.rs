//! The lifecycle's admin API (JSON): `GET /layers/{digest}/lifecycle`,
//! `POST /layers/{digest}/lifecycle/override`, `GET /layers`, `GET /graph`,
//! `GET|POST /retention/run`.
//!
//! Every input is checked before anything is looked up or changed: the digest against the digest
//! grammar, the query string's length, keys and values, the override body's size (at most
//! [`MAX_BODY_BYTES`]) and shape (unknown fields refused). A refusal is a 4xx with
//! `{"error": "…"}` naming the problem, and changes nothing. Listings are bounded by
//! [`MAX_LIMIT`]. Mutating routes sit behind the admin listener's token check
//! (`crate::admin::auth`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use shoal_policy::lifecycle::lifecycle_score;
use shoal_proto::BlobDigest;

use super::book::{state_name, LayerRecord, OverrideAction, PinKind, Pins};
use super::{LayerThreat, Lifecycle};
use crate::catalog::graph::{graph, BlobAnnotation, ImageQuery};
use crate::catalog::{read_catalog, Catalog};
use crate::store::ShardStore;

/// Largest override body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Most layers one listing page holds.
pub const MAX_LIMIT: usize = 1000;
/// Layers per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Longest query string accepted.
pub const MAX_QUERY_BYTES: usize = 2048;
/// Images listed per layer at most.
pub const MAX_IMAGES_PER_LAYER: usize = 100;

/// What the routes read.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The store (the graph works without the lifecycle).
    pub store: ShardStore,
    /// The lifecycle, when on.
    pub lifecycle: Option<Lifecycle>,
}

/// The lifecycle's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/layers", get(list_layers))
        .route("/layers/{digest}/lifecycle", get(get_lifecycle))
        .route(
            "/layers/{digest}/lifecycle/override",
            post(post_override).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/graph", get(get_graph))
        .route("/retention/run", get(retention_dry_run).post(retention_run))
        .with_state(state)
}

/// A refusal: status and message, answered as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

/// A JSON error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}")),
    }
}

fn parse_digest(text: &str) -> Result<BlobDigest, ApiError> {
    if text.len() > 100 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not a digest: too long",
        ));
    }
    text.parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad digest {text:?}: {e}")))
}

fn lifecycle_on(state: &ApiState) -> Result<Lifecycle, ApiError> {
    state.lifecycle.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the lifecycle is off on this node (set [lifecycle] enabled = true)",
        )
    })
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .ok_or_else(|| "bad percent escape".to_owned())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent escape")?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "query is not UTF-8".to_owned())
}

/// Reads a query string into keys and values, accepting only `allowed` keys, each once.
fn parse_query(raw: Option<&str>, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    if raw.len() > MAX_QUERY_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    for pair in raw.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        let value = percent_decode(value).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown query parameter {key:?} (known: {})",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(key.clone(), value).is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter {key:?} given twice"),
            ));
        }
    }
    Ok(out)
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{key} must be true or false, not {value:?}"),
        )),
    }
}

async fn read_catalog_async(store: ShardStore) -> Result<Catalog, ApiError> {
    match tokio::task::spawn_blocking(move || read_catalog(&store)).await {
        Ok(Ok(catalog)) => Ok(catalog),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the store: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

/// An image that references a layer.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRef {
    /// Manifest digest.
    pub digest: String,
    /// `upstream/repository`, when known.
    pub name: Option<String>,
    /// Its tags (an index child: its index's).
    pub tags: Vec<String>,
    /// The index it belongs to.
    pub index: Option<String>,
}

/// The scores behind a layer's state.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// Forecast pulls over placement's horizon, all known regions (0 without placement).
    pub forecast_pulls: f64,
    /// Usage score 0-100 from the forecast.
    pub usage: f64,
    /// Threat score 0-100.
    pub threat: f64,
    /// The vulnerabilities behind the threat score.
    pub cves: Vec<super::CveSummary>,
    /// Whether a fixed version exists for any of them.
    pub fixes_available: bool,
    /// Proximity 0-100 from the last plan, when the plan scored the layer.
    pub proximity: Option<f64>,
    /// The lifecycle score (usage discounted by threat) the thresholds apply to.
    pub lifecycle_score: f64,
}

/// `GET /layers/{digest}/lifecycle`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerLifecycle {
    /// The layer.
    pub digest: String,
    /// This node holds it.
    pub held: bool,
    /// Its size, when known.
    pub size: Option<u64>,
    /// Its state, or `null` before its first review.
    pub state: Option<&'static str>,
    /// When it entered that state (seconds since the epoch).
    pub since: Option<u64>,
    /// When the last review ran.
    pub reviewed_at: u64,
    /// When the next review runs at the latest.
    pub next_review: u64,
    /// Pending Deletion: when the grace period ends.
    pub grace_ends: Option<u64>,
    /// The scores behind the state.
    pub scores: Scores,
    /// Priority from the last plan (usage, threat, proximity weighted), when planned.
    pub priority: Option<f64>,
    /// Known whole copies per region: this node and members that announced it.
    pub copies_per_region: BTreeMap<String, usize>,
    /// Copies per region the last plan wants.
    pub planned_copies_per_region: BTreeMap<String, usize>,
    /// A retained image references it.
    pub referenced_by_retained_image: bool,
    /// The pins.
    pub pins: Pins,
    /// Images that reference it (at most [`MAX_IMAGES_PER_LAYER`]).
    pub images: Vec<ImageRef>,
    /// One line: why it is in this state.
    pub reason: String,
}

fn image_refs(catalog: &Catalog, digest: &BlobDigest) -> Vec<ImageRef> {
    catalog
        .images_of(digest)
        .into_iter()
        .take(MAX_IMAGES_PER_LAYER)
        .map(|image| {
            let parent = image.parent.and_then(|p| catalog.images.get(&p));
            let tags = if image.tags.is_empty() {
                parent.map(|p| p.tags.clone()).unwrap_or_default()
            } else {
                image.tags.clone()
            };
            ImageRef {
                digest: image.digest.to_string(),
                name: image.name(),
                tags,
                index: image.parent.map(|p| p.to_string()),
            }
        })
        .collect()
}

fn describe(
    lifecycle: &Lifecycle,
    digest: BlobDigest,
    catalog: &Catalog,
    held_size: Option<u64>,
) -> LayerLifecycle {
    let (record, pins, reviewed_at) = lifecycle.layer(&digest);
    let settings = lifecycle.settings();
    let threat: Option<LayerThreat> = lifecycle.threat_of(&digest);
    let explanation = lifecycle.placement().map(|p| p.explain(digest));
    let forecast_pulls = lifecycle
        .placement()
        .map_or(0.0, |p| p.forecast_pulls(&[digest])[0]);
    let half = shoal_policy::plan::PlanConfig::default().usage_half_saturation;
    let usage = shoal_policy::priority::usage_score(forecast_pulls, half);
    let threat_score = threat.as_ref().map_or(0.0, |t| t.score);
    let mut copies_per_region = BTreeMap::new();
    let own_region = lifecycle
        .network()
        .map_or_else(|| "default".to_owned(), |n| n.region().to_owned());
    if held_size.is_some() {
        *copies_per_region.entry(own_region).or_default() += 1;
    }
    if let Some(network) = lifecycle.network() {
        for holder in network.announced_holders(&digest) {
            if !holder.complete {
                continue;
            }
            let region = network
                .peer_info(&holder.peer)
                .and_then(|i| i.region)
                .unwrap_or_else(|| "unknown".to_owned());
            *copies_per_region.entry(region).or_default() += 1;
        }
    }
    let plan = explanation.as_ref().and_then(|e| e.plan.clone());
    let state = record.as_ref().map(|r| r.state);
    let grace_ends = match state {
        Some(shoal_policy::lifecycle::LifecycleState::PendingDeletion { since }) => {
            Some(since.0.saturating_add(settings.policy.grace_period_secs))
        }
        _ => None,
    };
    let size = held_size
        .or(record.as_ref().map(|r| r.size))
        .or(catalog.blobs.get(&digest).map(|u| u.size));
    let reason = match &record {
        Some(LayerRecord { reason, .. }) => reason.clone(),
        None if held_size.is_some() => "not reviewed yet".to_owned(),
        None => "not held on this node".to_owned(),
    };
    LayerLifecycle {
        digest: digest.to_string(),
        held: held_size.is_some(),
        size,
        state: state.as_ref().map(state_name),
        since: record.as_ref().map(|r| r.since),
        reviewed_at,
        next_review: reviewed_at.saturating_add(settings.review_interval.as_secs()),
        grace_ends,
        scores: Scores {
            forecast_pulls,
            usage,
            threat: threat_score,
            fixes_available: threat
                .as_ref()
                .is_some_and(|t| t.cves.iter().any(|c| c.fixed)),
            cves: threat.map(|t| t.cves).unwrap_or_default(),
            proximity: plan.as_ref().map(|p| p.proximity),
            lifecycle_score: lifecycle_score(usage, threat_score, &settings.policy),
        },
        priority: plan.as_ref().map(|p| p.priority),
        copies_per_region,
        planned_copies_per_region: plan.map(|p| p.copies_per_region).unwrap_or_default(),
        referenced_by_retained_image: record.as_ref().is_some_and(|r| r.referenced),
        pins,
        images: image_refs(catalog, &digest),
        reason,
    }
}

async fn get_lifecycle(State(state): State<ApiState>, Path(digest): Path<String>) -> Response {
    let digest = match parse_digest(&digest) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let lifecycle = match lifecycle_on(&state) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let catalog = match read_catalog_async(state.store.clone()).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let store = state.store.clone();
    let this = lifecycle.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let held = store.shard_map(&digest).ok().flatten().map(|m| m.blob_len);
        if held.is_none() && !this.knows(&digest) && !catalog.blobs.contains_key(&digest) {
            return None;
        }
        Some(describe(&this, digest, &catalog, held))
    })
    .await;
    match answer {
        Ok(Some(view)) => json(&view),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("unknown layer {digest}: not held here and no cached image names it"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The body of `POST /layers/{digest}/lifecycle/override`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// `keep`, `delete` or `clear`.
    pub action: OverrideAction,
    /// For `clear`: which pin (both when absent).
    #[serde(default)]
    pub pin: Option<PinKind>,
    /// Why (shown and logged).
    #[serde(default)]
    pub reason: String,
    /// When the pin lapses (seconds since the epoch).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Or: how long it lasts from now.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// The answer of an override.
#[derive(Debug, Clone, Serialize)]
pub struct OverrideAnswer {
    /// The layer.
    pub digest: String,
    /// Its pins now.
    pub pins: Pins,
    /// Its state until the review that follows (it runs right away).
    pub state: Option<&'static str>,
}

async fn post_override(
    State(state): State<ApiState>,
    Path(digest): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let digest = match parse_digest(&digest) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let lifecycle = match lifecycle_on(&state) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                rejection.status(),
                format!("override body refused (at most {MAX_BODY_BYTES} bytes): {rejection}"),
            )
        }
    };
    let request: OverrideRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad override body: {e}")),
    };
    if request.pin.is_some() && request.action != OverrideAction::Clear {
        return error(
            StatusCode::BAD_REQUEST,
            "\"pin\" names the pin to clear; it goes with \"action\": \"clear\" only",
        );
    }
    let expires_at = match (request.expires_at, request.expires_in_secs) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give expires_at or expires_in_secs, not both",
            )
        }
        (Some(at), None) => Some(at),
        (None, Some(secs)) => Some(crate::placement::now_secs().saturating_add(secs)),
        (None, None) => None,
    };
    let catalog = match read_catalog_async(state.store.clone()).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let held = matches!(state.store.shard_map(&digest), Ok(Some(_)));
    if !held && !lifecycle.knows(&digest) && !catalog.blobs.contains_key(&digest) {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown layer {digest}: not held here and no cached image names it"),
        );
    }
    match lifecycle.set_override(
        digest,
        request.action,
        request.pin,
        &request.reason,
        expires_at,
    ) {
        Ok(pins) => {
            let (record, _, _) = lifecycle.layer(&digest);
            json(&OverrideAnswer {
                digest: digest.to_string(),
                pins,
                state: record.map(|r| state_name(&r.state)),
            })
        }
        Err(e @ super::book::OverrideError::TooMany) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// One row of `GET /layers`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    /// The layer.
    pub digest: String,
    /// Its state.
    pub state: &'static str,
    /// Since when.
    pub since: u64,
    /// Bytes.
    pub size: u64,
    /// Usage score 0-100.
    pub usage: f64,
    /// Threat score 0-100.
    pub threat: f64,
    /// A retained image references it.
    pub referenced: bool,
    /// Pinned keep.
    pub pinned_keep: bool,
    /// Pinned delete.
    pub pinned_delete: bool,
}

/// `GET /layers`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerPage {
    /// Layers matching the filter.
    pub total: usize,
    /// Where this page starts.
    pub offset: usize,
    /// The next page's offset, when there is one.
    pub next_offset: Option<usize>,
    /// Counts per state over all layers (not only the filtered ones).
    pub counts: BTreeMap<&'static str, usize>,
    /// The page.
    pub layers: Vec<LayerRow>,
}

const STATES: [&str; 5] = ["active", "warm", "cold", "pending_deletion", "deleted"];
const SORTS: [&str; 6] = ["digest", "size", "since", "usage", "threat", "state"];

async fn list_layers(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let query = match parse_query(raw.as_deref(), &["state", "sort", "limit", "offset"]) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let lifecycle = match lifecycle_on(&state) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let filter = match query.get("state").map(String::as_str) {
        None => None,
        Some(s) if STATES.contains(&s) => Some(s.to_owned()),
        Some(s) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown state {s:?} (known: {})", STATES.join(", ")),
            )
        }
    };
    let sort = query.get("sort").map_or("digest", String::as_str);
    if !SORTS.contains(&sort) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown sort {sort:?} (known: {})", SORTS.join(", ")),
        );
    }
    let number = |key: &str, default: usize| -> Result<usize, ApiError> {
        match query.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{key} must be a whole number, not {v:?}"),
                )
            }),
        }
    };
    let limit = match number("limit", DEFAULT_LIMIT) {
        Ok(l) if (1..=MAX_LIMIT).contains(&l) => l,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit must be 1 to {MAX_LIMIT}"),
            )
        }
        Err(r) => return r.into_response(),
    };
    let offset = match number("offset", 0) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let records = lifecycle.records();
    let mut counts: BTreeMap<&'static str, usize> = STATES.iter().map(|s| (*s, 0)).collect();
    for (_, record, _) in &records {
        *counts.entry(state_name(&record.state)).or_default() += 1;
    }
    let mut rows: Vec<LayerRow> = records
        .into_iter()
        .filter(|(_, r, _)| filter.as_deref().is_none_or(|f| state_name(&r.state) == f))
        .map(|(digest, record, pins)| LayerRow {
            digest: digest.to_string(),
            state: state_name(&record.state),
            since: record.since,
            size: record.size,
            usage: record.usage,
            threat: record.threat,
            referenced: record.referenced,
            pinned_keep: pins.keep.is_some(),
            pinned_delete: pins.delete.is_some(),
        })
        .collect();
    // Every order ends with the digest, so pages are stable between requests.
    match sort {
        "size" => rows.sort_by(|a, b| b.size.cmp(&a.size).then(a.digest.cmp(&b.digest))),
        "since" => rows.sort_by(|a, b| a.since.cmp(&b.since).then(a.digest.cmp(&b.digest))),
        "usage" => rows.sort_by(|a, b| a.usage.total_cmp(&b.usage).then(a.digest.cmp(&b.digest))),
        "threat" => {
            rows.sort_by(|a, b| b.threat.total_cmp(&a.threat).then(a.digest.cmp(&b.digest)))
        }
        "state" => rows.sort_by(|a, b| {
            let rank = |s: &str| STATES.iter().position(|x| *x == s);
            rank(a.state)
                .cmp(&rank(b.state))
                .then(a.digest.cmp(&b.digest))
        }),
        _ => rows.sort_by(|a, b| a.digest.cmp(&b.digest)),
    }
    let total = rows.len();
    let layers: Vec<LayerRow> = rows.into_iter().skip(offset).take(limit).collect();
    let next_offset = (offset.saturating_add(layers.len()) < total).then(|| offset + layers.len());
    json(&LayerPage {
        total,
        offset,
        next_offset,
        counts,
        layers,
    })
}

async fn get_graph(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let query = match parse_query(raw.as_deref(), &["image"]) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let image = match query.get("image").map(|r| ImageQuery::parse(r)) {
        None => None,
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let catalog = match read_catalog_async(state.store.clone()).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    if let Some(q) = &image {
        if !catalog.images.values().any(|i| q.matches(i)) {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no cached image matches {:?}",
                    query.get("image").map_or("", String::as_str)
                ),
            );
        }
    }
    let store = state.store.clone();
    let lifecycle = state.lifecycle.clone();
    let answer = tokio::task::spawn_blocking(move || {
        graph(&catalog, image.as_ref(), |digest| {
            let held = matches!(store.shard_map(digest), Ok(Some(_)));
            let (record, threat) = match &lifecycle {
                Some(l) => (
                    l.layer(digest).0,
                    l.threat_of(digest).map_or(0.0, |t| t.score),
                ),
                None => (None, 0.0),
            };
            BlobAnnotation {
                held,
                state: record.map(|r| state_name(&r.state).to_owned()),
                threat,
            }
        })
    })
    .await;
    match answer {
        Ok(graph) => json(&graph),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn retention_dry_run(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    if let Err(r) = parse_query(raw.as_deref(), &["dry_run"]) {
        return r.into_response();
    }
    run_retention(state, true).await
}

async fn retention_run(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let query = match parse_query(raw.as_deref(), &["dry_run"]) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let dry_run = match query.get("dry_run") {
        None => false,
        Some(v) => match parse_bool("dry_run", v) {
            Ok(b) => b,
            Err(r) => return r.into_response(),
        },
    };
    run_retention(state, dry_run).await
}

async fn run_retention(state: ApiState, dry_run: bool) -> Response {
    let lifecycle = match lifecycle_on(&state) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    if !dry_run && !lifecycle.retention_settings().enabled {
        return error(
            StatusCode::CONFLICT,
            "retention is off on this node (set [retention] enabled = true); a dry run still shows what the rules would delete",
        );
    }
    match lifecycle.run_retention(dry_run).await {
        Ok(plan) => json(&plan),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_accept_known_keys_once_and_decode_escapes() {
        let q = parse_query(Some("image=a%2Fb%3Av1&x="), &["image", "x"]).unwrap();
        assert_eq!(q["image"], "a/b:v1");
        assert!(parse_query(Some("nope=1"), &["image"]).is_err());
        assert!(parse_query(Some("image=1&image=2"), &["image"]).is_err());
        assert!(parse_query(Some("image=%zz"), &["image"]).is_err());
        assert!(parse_query(Some(&"a".repeat(MAX_QUERY_BYTES + 1)), &["a"]).is_err());
        assert!(parse_query(None, &[]).unwrap().is_empty());
    }

    #[test]
    fn override_bodies_refuse_unknown_fields_and_actions() {
        let ok: OverrideRequest =
            serde_json::from_str(r#"{"action":"delete","reason":"old","expires_in_secs":60}"#)
                .unwrap();
        assert_eq!(ok.action, OverrideAction::Delete);
        assert!(serde_json::from_str::<OverrideRequest>(r#"{"action":"nuke"}"#).is_err());
        assert!(serde_json::from_str::<OverrideRequest>(r#"{"action":"keep","x":1}"#).is_err());
        assert!(serde_json::from_str::<OverrideRequest>(r#"{"reason":"r"}"#).is_err());
    }
}
