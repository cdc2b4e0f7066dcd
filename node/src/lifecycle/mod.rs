//! The layer lifecycle in the daemon: every cached layer's state (Active, Warm, Cold, Pending
//! Deletion, Deleted) computed by `shoal-policy::lifecycle` — the code the simulator runs — from
//! its forecast, threat and references, the operator's pins, and retention.
//!
//! An I/O shell over pure decisions: [`book`] is the state machine (events and an explicit
//! `now`), [`retention`] joins the catalog to `shoal-policy::retention`, [`eviction`] turns states
//! into the store's eviction order, [`config`] reads `[lifecycle]` and `[retention]`. This module
//! owns the clock, the review task, the retention timer and the state file
//! (`lifecycle/state.json` in the data directory: the book, when each image was first seen, and
//! retention's ledger). [`api`] serves it on the admin listener.
//!
//! Inputs at each review (every `review_interval`, and right after an override): the store's
//! blobs, the catalog (`crate::catalog`) for references, placement's forecast pulls (usage is
//! `shoal-policy`'s `usage_score` of the forecast, as in the simulator; without placement there
//! is no forecast and usage is 0), and threat from a [`ThreatSource`] (the node's threat intake,
//! `crate::threat`). A retained image is one the retention rules keep when retention
//! is enabled; with retention off every cached image counts as retained.
//!
//! What it may touch: it reads the store and removes whole blobs through `ShardStore::remove_blob`
//! (the store's own safe removal: map first, then index, then unused shards; never a blob being
//! read); after a removal it withdraws the node's provider record and announces `Dropped`, the
//! way eviction does. It never fetches anything.
//!
//! **Invariant:** a layer referenced by a retained image, or pinned keep, is never deleted.
//! **Invariant:** a dry run of retention changes nothing; a real run right after it removes
//! exactly the blobs the dry run listed.
//! **Invariant:** the state file is replaced atomically (temporary file, fsync, rename).

pub mod api;
pub mod book;
pub mod config;
pub mod eviction;
pub mod retention;
pub mod threat;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shoal_policy::lifecycle::LifecycleState;
use shoal_policy::priority::usage_score;
use shoal_policy::retention::RetentionLedger;
use shoal_proto::gossip::Announcement;
use shoal_proto::BlobDigest;
use tokio::sync::{watch, Notify};

pub use book::{LifecycleBook, OverrideAction, PinKind, Pins, StateCounts};
pub use config::{
    FileLifecycle, FileRetention, LifecycleConfigError, LifecycleSettings, RetentionSettings,
};
pub use eviction::{EvictionMarks, LifecycleEviction, SharedMarks};
pub use threat::{CveSummary, LayerThreat, ThreatSource};

use crate::catalog::{read_catalog, Catalog};
use crate::metrics::Metrics;
use crate::p2p::PeerNetwork;
use crate::placement::{now_secs, Placement};
use crate::store::{ShardStore, StoreError};

/// Largest state file read at start.
pub const MAX_STATE_FILE_BYTES: u64 = 64 << 20;
/// Images whose first sighting is remembered at most.
pub const MAX_IMAGES_REMEMBERED: usize = 100_000;

/// Why the lifecycle could not do something.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The state directory could not be created.
    #[error("lifecycle state {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
    /// A blocking task failed.
    #[error("lifecycle task failed: {0}")]
    Task(String),
}

/// The state file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    book: book::BookFile,
    first_seen: Vec<(String, u64)>,
    ledger: RetentionLedger,
    last_review: u64,
}

struct State {
    book: LifecycleBook,
    first_seen: BTreeMap<BlobDigest, u64>,
    ledger: RetentionLedger,
    last_review: u64,
}

/// What the lifecycle runs over.
pub struct Parts {
    /// The store.
    pub store: ShardStore,
    /// Placement, for forecasts and plans (`None`: placement is off).
    pub placement: Option<Placement>,
    /// The peer network, for withdrawals and copies per region.
    pub network: Option<PeerNetwork>,
    /// Where threat comes from.
    pub threat: Arc<dyn ThreatSource>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The marks the store's eviction reads.
    pub marks: SharedMarks,
}

struct Inner {
    settings: LifecycleSettings,
    retention: RetentionSettings,
    parts: Parts,
    state: Mutex<State>,
    dir: PathBuf,
    /// One review or retention run at a time.
    running: tokio::sync::Mutex<()>,
    wake: Notify,
}

/// The running lifecycle: a cheap handle for the admin API.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn read_state_file(path: &Path) -> Result<Option<StateFile>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > MAX_STATE_FILE_BYTES {
        return Err(format!("larger than {MAX_STATE_FILE_BYTES} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A retention run's outcome as the API shows it.
pub type RetentionPlan = retention::RetentionPlan;

impl Lifecycle {
    /// Loads the state file (an unreadable one is logged and an empty book started: states are
    /// recomputed at the first review, pins are lost) and starts the review task, which stops
    /// when `stop` turns true (the state is written once more on the way out).
    pub fn start(
        settings: LifecycleSettings,
        retention: RetentionSettings,
        data_dir: &Path,
        parts: Parts,
        stop: watch::Receiver<bool>,
    ) -> Result<(Lifecycle, tokio::task::JoinHandle<()>), LifecycleError> {
        let dir = data_dir.join("lifecycle");
        std::fs::create_dir_all(&dir).map_err(|source| LifecycleError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut state = State {
            book: LifecycleBook::new(),
            first_seen: BTreeMap::new(),
            ledger: RetentionLedger::new(),
            last_review: 0,
        };
        match read_state_file(&dir.join("state.json")) {
            Ok(None) => {}
            Ok(Some(file)) => {
                state.book = LifecycleBook::from_file(file.book);
                state.first_seen = file
                    .first_seen
                    .into_iter()
                    .take(MAX_IMAGES_REMEMBERED)
                    .filter_map(|(d, t)| Some((d.parse().ok()?, t)))
                    .collect();
                state.ledger = file.ledger;
                state.last_review = file.last_review;
                tracing::info!(
                    layers = state.book.records().count(),
                    "lifecycle state restored"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "lifecycle state unreadable; starting empty")
            }
        }
        let lifecycle = Lifecycle {
            inner: Arc::new(Inner {
                settings,
                retention,
                parts,
                state: Mutex::new(state),
                dir,
                running: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        };
        let task = tokio::spawn(run_tasks(lifecycle.clone(), stop));
        Ok((lifecycle, task))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings in force.
    pub fn settings(&self) -> &LifecycleSettings {
        &self.inner.settings
    }

    /// The retention settings in force.
    pub fn retention_settings(&self) -> &RetentionSettings {
        &self.inner.retention
    }

    /// The store.
    pub fn store(&self) -> &ShardStore {
        &self.inner.parts.store
    }

    /// Asks for a review as soon as possible (after an override).
    pub fn review_soon(&self) {
        self.inner.wake.notify_one();
    }

    /// Reviews every held layer now.
    pub async fn review(&self) -> Result<(), LifecycleError> {
        let _running = self.inner.running.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.review_blocking())
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?
    }

    /// Held blobs with their sizes.
    fn held(&self) -> Result<BTreeMap<BlobDigest, u64>, StoreError> {
        let store = &self.inner.parts.store;
        let mut held = BTreeMap::new();
        for digest in store.blob_digests()? {
            if let Some(map) = store.shard_map(&digest)? {
                held.insert(digest, map.blob_len);
            }
        }
        Ok(held)
    }

    /// Blobs that retained images reference, and records first sightings in `first_seen`.
    fn retained(
        &self,
        catalog: &Catalog,
        first_seen: &mut BTreeMap<BlobDigest, u64>,
        ledger: &RetentionLedger,
        kept: &BTreeSet<BlobDigest>,
        now: u64,
    ) -> BTreeSet<BlobDigest> {
        note_first_seen(catalog, first_seen, now);
        if !self.inner.retention.enabled {
            return catalog.blobs.keys().copied().collect();
        }
        let images = retention::image_records(catalog, first_seen);
        let (report, _) = retention::plan(
            &self.inner.retention.rules,
            &images,
            kept,
            ledger,
            now,
            |_| true,
        );
        retention::retained_blobs(catalog, &report)
    }

    fn review_blocking(&self) -> Result<(), LifecycleError> {
        let now = now_secs();
        let catalog = read_catalog(&self.inner.parts.store)?;
        let held = self.held()?;
        let digests: Vec<BlobDigest> = held.keys().copied().collect();
        let forecasts = match &self.inner.parts.placement {
            Some(placement) => placement.forecast_pulls(&digests),
            None => vec![0.0; digests.len()],
        };
        let half = shoal_policy::plan::PlanConfig::default().usage_half_saturation;
        let threats: Vec<f64> = digests
            .iter()
            .map(|d| {
                self.inner
                    .parts
                    .threat
                    .threat_of(d)
                    .map_or(0.0, |t| t.score)
            })
            .collect();
        let outcome = {
            let mut guard = self.state();
            let state = &mut *guard;
            let kept: BTreeSet<BlobDigest> = state.book.kept().copied().collect();
            let retained =
                self.retained(&catalog, &mut state.first_seen, &state.ledger, &kept, now);
            let inputs: Vec<book::LayerInput> = digests
                .iter()
                .zip(forecasts.iter().zip(&threats))
                .map(|(digest, (forecast, threat))| book::LayerInput {
                    digest: *digest,
                    size: held[digest],
                    usage: usage_score(*forecast, half),
                    threat: *threat,
                    referenced: retained.contains(digest),
                })
                .collect();
            let outcome = state.book.review(now, &inputs, &self.inner.settings.policy);
            state.last_review = now;
            let first: HashSet<BlobDigest> = state
                .book
                .records()
                .filter(|(_, r)| {
                    matches!(
                        r.state,
                        LifecycleState::Cold | LifecycleState::PendingDeletion { .. }
                    )
                })
                .map(|(d, _)| *d)
                .collect();
            let last: HashSet<BlobDigest> = state.book.kept().copied().collect();
            self.inner
                .parts
                .marks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .set(first, last);
            outcome
        };
        for (digest, pin) in &outcome.expired_pins {
            tracing::info!(%digest, ?pin, "lifecycle pin expired");
        }
        for (digest, from, to) in &outcome.changes {
            tracing::info!(%digest, from, to, "lifecycle state changed");
        }
        for digest in &outcome.remove {
            if self.remove_layer(digest) {
                self.state().book.removed(digest);
                tracing::info!(%digest, "lifecycle deleted the layer: removed from the store, provider record withdrawn");
            } else {
                tracing::info!(%digest, "lifecycle deletion waits: the layer is being read");
            }
        }
        self.persist();
        Ok(())
    }

    /// Removes a blob from the store and withdraws this node's provider record. False when the
    /// store keeps it for now (it is being read).
    fn remove_layer(&self, digest: &BlobDigest) -> bool {
        let store = &self.inner.parts.store;
        let removed = match store.remove_blob(digest) {
            Ok(true) => true,
            Ok(false) => !matches!(store.shard_map(digest), Ok(Some(_))),
            Err(error) => {
                tracing::warn!(%digest, %error, "removing a layer failed");
                false
            }
        };
        if removed {
            if let Some(network) = &self.inner.parts.network {
                network.stop_providing(*digest);
                self.inner.parts.metrics.provider_records_withdrawn.inc();
                network.announce(Announcement::dropped(*digest));
            }
        }
        removed
    }

    /// Runs the retention rules now. A dry run changes nothing; a real one removes the listed
    /// blobs held here and records the run in the ledger.
    pub async fn run_retention(&self, dry_run: bool) -> Result<RetentionPlan, LifecycleError> {
        let _running = self.inner.running.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.retention_blocking(dry_run))
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?
    }

    fn retention_blocking(&self, dry_run: bool) -> Result<RetentionPlan, LifecycleError> {
        let now = now_secs();
        let catalog = read_catalog(&self.inner.parts.store)?;
        let held = self.held()?;
        let rules = &self.inner.retention.rules;
        let (mut plan, kept, images) = {
            let mut guard = self.state();
            let state = &mut *guard;
            // A dry run sees new images as first seen now, as a real run would, but keeps nothing.
            let mut first_seen = state.first_seen.clone();
            note_first_seen(&catalog, &mut first_seen, now);
            let kept: BTreeSet<BlobDigest> = state.book.kept().copied().collect();
            let images = retention::image_records(&catalog, &first_seen);
            let (_, plan) = retention::plan(rules, &images, &kept, &state.ledger, now, |d| {
                held.contains_key(d)
            });
            if !dry_run {
                state.first_seen = first_seen;
            }
            (plan, kept, images)
        };
        plan.dry_run = dry_run;
        if dry_run {
            return Ok(plan);
        }
        {
            let pins = shoal_policy::retention::RetentionPins {
                images: BTreeSet::new(),
                layers: kept.iter().map(retention::policy_digest).collect(),
            };
            let mut state = self.state();
            state
                .ledger
                .run(rules, &images, &pins, shoal_policy::Timestamp(now), false);
        }
        for (digest, size) in &plan.deleted_layers {
            let Ok(digest) = digest.parse::<BlobDigest>() else {
                continue;
            };
            if self.remove_layer(&digest) {
                self.state().book.mark_deleted(
                    digest,
                    *size,
                    now,
                    "retention: no retained image references it".to_owned(),
                );
                tracing::info!(%digest, size, "retention deleted the layer");
            } else {
                plan.left_busy.push(digest.to_string());
                tracing::info!(%digest, "retention deletion waits: the layer is being read");
            }
        }
        self.persist();
        Ok(plan)
    }

    /// Writes the state file atomically; a failure is logged (the state stays in memory).
    fn persist(&self) {
        let file = {
            let state = self.state();
            StateFile {
                book: state.book.to_file(),
                first_seen: state
                    .first_seen
                    .iter()
                    .map(|(d, t)| (d.to_string(), *t))
                    .collect(),
                ledger: state.ledger.clone(),
                last_review: state.last_review,
            }
        };
        let bytes = match serde_json::to_vec(&file) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "lifecycle state not serialised");
                return;
            }
        };
        let path = self.inner.dir.join("state.json");
        let tmp = self.inner.dir.join("state.json.tmp");
        if let Err(error) = crate::placement::write_durably(&tmp, &path, &bytes) {
            tracing::warn!(%error, path = %path.display(), "lifecycle state not written");
        }
    }

    /// Sets or clears a pin, logs it, writes the state and asks for a review.
    pub fn set_override(
        &self,
        digest: BlobDigest,
        action: OverrideAction,
        clear: Option<PinKind>,
        reason: &str,
        expires_at: Option<u64>,
    ) -> Result<Pins, book::OverrideError> {
        let now = now_secs();
        let pins = self
            .state()
            .book
            .set_override(digest, action, clear, reason, expires_at, now)?;
        tracing::info!(%digest, ?action, ?clear, reason, ?expires_at, "lifecycle override set");
        self.persist();
        self.review_soon();
        Ok(pins)
    }

    /// A layer's record and pins, and when the last review ran.
    pub fn layer(&self, digest: &BlobDigest) -> (Option<book::LayerRecord>, Pins, u64) {
        let state = self.state();
        (
            state.book.record(digest).cloned(),
            state.book.pins(digest),
            state.last_review,
        )
    }

    /// Layers per state and pins, as of the last review.
    pub fn state_counts(&self) -> StateCounts {
        self.state().book.counts()
    }

    /// Whether the book knows the layer.
    pub fn knows(&self, digest: &BlobDigest) -> bool {
        self.state().book.knows(digest)
    }

    /// Every record, with its pins.
    pub fn records(&self) -> Vec<(BlobDigest, book::LayerRecord, Pins)> {
        let state = self.state();
        state
            .book
            .records()
            .map(|(d, r)| (*d, r.clone(), state.book.pins(d)))
            .collect()
    }

    /// The layer's threat.
    pub fn threat_of(&self, digest: &BlobDigest) -> Option<LayerThreat> {
        self.inner.parts.threat.threat_of(digest)
    }

    /// Placement, when on.
    pub fn placement(&self) -> Option<&Placement> {
        self.inner.parts.placement.as_ref()
    }

    /// The peer network, when on.
    pub fn network(&self) -> Option<&PeerNetwork> {
        self.inner.parts.network.as_ref()
    }
}

/// Records `now` as the first sighting of catalog images not seen before, and forgets images the
/// catalog no longer holds (bounded by [`MAX_IMAGES_REMEMBERED`]).
fn note_first_seen(catalog: &Catalog, first_seen: &mut BTreeMap<BlobDigest, u64>, now: u64) {
    first_seen.retain(|d, _| catalog.images.contains_key(d));
    for digest in catalog.images.keys() {
        if first_seen.len() >= MAX_IMAGES_REMEMBERED {
            break;
        }
        first_seen.entry(*digest).or_insert(now);
    }
}

async fn run_tasks(lifecycle: Lifecycle, mut stop: watch::Receiver<bool>) {
    let mut review_tick = tokio::time::interval(lifecycle.inner.settings.review_interval);
    let mut retention_tick = tokio::time::interval(lifecycle.inner.retention.interval);
    for tick in [&mut review_tick, &mut retention_tick] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // Retention's first run waits one interval: a node that just started has not seen its
    // images' ages yet.
    retention_tick.reset();
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = review_tick.tick() => {
                if let Err(error) = lifecycle.review().await {
                    tracing::warn!(%error, "lifecycle review failed");
                }
            }
            _ = lifecycle.inner.wake.notified() => {
                if let Err(error) = lifecycle.review().await {
                    tracing::warn!(%error, "lifecycle review failed");
                }
            }
            _ = retention_tick.tick(), if lifecycle.inner.retention.enabled => {
                match lifecycle.run_retention(false).await {
                    Ok(plan) => tracing::info!(
                        layers = plan.deleted_layers.len(),
                        bytes = plan.bytes_freed,
                        "retention run"
                    ),
                    Err(error) => tracing::warn!(%error, "retention run failed"),
                }
            }
        }
    }
    let this = lifecycle.clone();
    let _ = tokio::task::spawn_blocking(move || this.persist()).await;
}
