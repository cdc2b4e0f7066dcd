//! Predictive placement: the daemon's side of `shoal-policy`. It records demand, watches the
//! tags clients pull and pre-positions their new versions, executes the replication plan, orders
//! eviction, and explains itself.
//!
//! An I/O shell over pure decisions. The decisions live in pure state machines driven by events
//! and an explicit `now` ([`demand`]: the demand table with stable layer ids; [`tags`]: which tags
//! to check when; [`assign`]: the plan as this node executes it, by rendezvous hashing;
//! [`budget`]: origin bytes; [`eviction`]: the eviction order with protections) and in
//! `shoal-policy` itself; this module owns the clock, the tasks and the disk file.
//!
//! What it may touch: it reads the store (which blobs are held) but writes only its own file
//! (`placement/state.json` in the data directory); it fetches only through `pullthrough` (so a
//! pre-fetch is a flight that a client's request joins, verified and committed like any other)
//! and asks `p2p` only for members, holders and providers. It never sends anything to an
//! upstream itself.
//!
//! Tasks (started by [`start`], stopped by the node's stop signal): the tag watcher (every
//! second, checks the tags that are due), the planner (every `plan_interval`), the writer (the
//! demand table every `persist_interval`, and at stop) and the pre-fetch dispatcher (a bounded
//! queue, `prefetch_concurrency` fetches at once, each waiting while clients are being served).
//!
//! **Invariant:** placement never makes a client request wait: the request hooks only update
//! in-memory state, and pre-fetches run below clients.
//! **Invariant:** the demand file is replaced atomically (temporary file, fsync, rename), so a
//! crash at any moment leaves the previous or the new table, never a torn one.

pub mod assign;
pub mod budget;
pub mod config;
pub mod demand;
pub mod eviction;
pub mod explain;
pub mod manifest;
pub mod tags;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use shoal_policy::cooperative;
use shoal_policy::eviction::{Lru, Predictive, PredictiveConfig};
use shoal_policy::plan::PlanConfig;
use shoal_policy::usage::UsageConfig;
use shoal_policy::LayerId;
use shoal_proto::gossip::DemandSummary;
use shoal_proto::{BlobDigest, Reference, RepoName};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

pub use config::{EvictionOrder, FilePlacement, PlacementConfig, PlacementConfigError};
use demand::{DemandBook, DemandSnapshot};
use eviction::{OrderPolicy, PlacementEviction, StoreEviction};
use tags::{CheckOutcome, TagRecord, TagWatch, WatchedTag};

use crate::metrics::Metrics;
use crate::p2p::PeerNetwork;
use crate::pullthrough::{ManifestReply, PullThrough};
use crate::store::EvictionCandidate;
use crate::upstream::Upstream;

/// Forecast horizon of the plan and of "in demand", in usage buckets.
pub const HORIZON_BUCKETS: u32 = 1;
/// Forecast pulls over the horizon at which a layer counts as in demand (its last copy in the
/// network is then protected from eviction).
pub const IN_DEMAND: f64 = 0.5;
/// Largest demand file read at start.
pub const MAX_STATE_FILE_BYTES: u64 = 256 << 20;
/// Pre-fetches waiting at most.
pub const PREFETCH_QUEUE: usize = 1024;
/// Unread pre-fetched blobs remembered (for the hit and waste metrics).
pub const MAX_PREFETCHED: usize = 100_000;
/// How long a pre-fetch waits for the DHT to name a provider.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(3);
/// A pre-fetch waits while a client asked for a blob this recently...
const CLIENT_QUIET: Duration = Duration::from_millis(500);
/// ...but not longer than this, so steady client traffic cannot starve pre-fetching.
const MAX_YIELD: Duration = Duration::from_secs(30);
/// The repository named in a peers-only pre-fetch (never asked of the origin).
const PEERS_ONLY_REPO: &str = "shoal/peers-only";
/// The tag watcher's tick.
const TAG_TICK: Duration = Duration::from_secs(1);

/// Why placement could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The state directory could not be created or the file written.
    #[error("placement state {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the file failed in the store's durable-write helper.
    #[error("writing placement state: {0}")]
    Write(String),
}

/// Seconds since the Unix epoch: the shell's clock (the decisions take it as an argument).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file as written to disk.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    demand: DemandSnapshot,
    tags: Vec<TagRecord>,
    /// The last plan: layers this node must hold.
    #[serde(default)]
    required_here: Vec<String>,
    /// When the last plan ran.
    #[serde(default)]
    planned_at: u64,
    /// Pre-fetched blobs not read yet: (digest, size).
    #[serde(default)]
    prefetched: Vec<(String, u64)>,
}

/// One layer's part of the last plan, for explanations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlannedLayer {
    /// Copies per region, as the policy's plan wants them.
    pub copies_per_region: BTreeMap<String, usize>,
    /// Holders chosen per region (peer ids; this node's own id included when chosen).
    pub holders: BTreeMap<String, Vec<String>>,
    /// The policy's scores: usage, threat, proximity, priority.
    pub usage: f64,
    /// Threat 0-100.
    pub threat: f64,
    /// Proximity 0-100.
    pub proximity: f64,
    /// Weighted priority (with the incumbent bonus).
    pub priority: f64,
}

/// The last plan this node computed (or restored).
#[derive(Debug, Clone, Default)]
struct LastPlan {
    at: u64,
    required_here: HashSet<BlobDigest>,
    layers: HashMap<BlobDigest, PlannedLayer>,
    regions: Vec<String>,
}

struct State {
    demand: DemandBook,
    tags: TagWatch,
    plan: LastPlan,
    prefetched: HashMap<BlobDigest, u64>,
    budget: budget::OriginBudget,
}

/// Placement's state, shared by the request hooks, the tasks and the store's eviction.
pub struct Shared {
    config: PlacementConfig,
    state: Mutex<State>,
    dir: PathBuf,
    network: OnceLock<PeerNetwork>,
    eviction: OnceLock<Arc<PlacementEviction>>,
    /// The threat scores (set once the threat book is open; until then every score is 0).
    threats: OnceLock<crate::threat::Threats>,
    last_client_blob: AtomicU64,
    started: Instant,
    metrics: Arc<Metrics>,
    /// Bumped by every change to the state; the writer skips a write when nothing changed.
    changes: AtomicU64,
    written: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Loads the state file from `data_dir` (an unreadable or invalid one is logged and an empty
    /// table started instead: demand is a hint, never a reason not to serve).
    pub fn load(
        config: PlacementConfig,
        data_dir: &std::path::Path,
        tag_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Shared>, PlacementError> {
        let dir = data_dir.join("placement");
        std::fs::create_dir_all(&dir).map_err(|source| PlacementError::Io {
            path: dir.clone(),
            source,
        })?;
        let usage = UsageConfig {
            bucket_secs: config.bucket_secs,
            history_buckets: config.history_buckets,
            ..UsageConfig::default()
        };
        let now = now_secs();
        let mut state = State {
            demand: DemandBook::new(usage.clone(), config.max_layers),
            tags: TagWatch::new(
                config.watch_tags,
                config.tag_checks_per_minute,
                tag_ttl.as_secs(),
            ),
            plan: LastPlan::default(),
            prefetched: HashMap::new(),
            budget: budget::OriginBudget::new(config.precache_origin_bytes_per_hour, now),
        };
        match read_state_file(&dir.join("state.json")) {
            Ok(None) => {}
            Ok(Some(file)) => match DemandBook::restore(usage, config.max_layers, file.demand) {
                Ok(book) => {
                    state.demand = book;
                    state.tags.restore(file.tags);
                    state.plan.at = file.planned_at;
                    state.plan.required_here = file
                        .required_here
                        .iter()
                        .filter_map(|d| d.parse().ok())
                        .collect();
                    state.prefetched = file
                        .prefetched
                        .iter()
                        .take(MAX_PREFETCHED)
                        .filter_map(|(d, s)| Some((d.parse().ok()?, *s)))
                        .collect();
                    tracing::info!(
                        layers = state.demand.len(),
                        required = state.plan.required_here.len(),
                        "placement state restored"
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "placement state not restored; starting empty")
                }
            },
            Err(error) => tracing::warn!(%error, "placement state unreadable; starting empty"),
        }
        Ok(Arc::new(Shared {
            config,
            state: Mutex::new(state),
            dir,
            network: OnceLock::new(),
            eviction: OnceLock::new(),
            threats: OnceLock::new(),
            last_client_blob: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
            changes: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the state changed, for the writer.
    fn touch(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// The store's eviction policy: the policy crate's order over this table's ids, with
    /// placement's protections, for a store of `capacity_bytes` (the predictive order's guard
    /// shadows an LRU cache of that size).
    pub fn store_eviction(self: &Arc<Self>, capacity_bytes: u64) -> StoreEviction {
        let eviction = self.eviction.get_or_init(|| {
            let policy = match self.config.eviction {
                EvictionOrder::Lru => OrderPolicy::Lru(Lru::new()),
                EvictionOrder::Predictive => {
                    OrderPolicy::Predictive(Box::new(Predictive::with_capacity(
                        PredictiveConfig {
                            usage: self.state().demand.usage_config().clone(),
                            ..PredictiveConfig::default()
                        },
                        capacity_bytes,
                    )))
                }
            };
            Arc::new(PlacementEviction::new(self.clone(), policy))
        });
        StoreEviction(eviction.clone())
    }

    /// Gives placement its threat source: the plan's priority and the eviction order read it.
    pub fn set_threats(&self, threats: crate::threat::Threats) {
        let _ = self.threats.set(threats);
    }

    /// The threat score of `digest` (0 without a source or a record).
    fn threat(&self, digest: &BlobDigest) -> f64 {
        self.threats.get().map_or(0.0, |t| t.score(digest))
    }

    /// The score from which an unused layer goes first (`None` without a threat source).
    fn evict_first_score(&self) -> Option<f64> {
        self.threats.get().map(|t| t.config().evict_first_score)
    }

    /// What placement knows of an eviction candidate: its id, protection, forecast, threat and
    /// whether a regional peer keeps it.
    fn eviction_facts(&self, now: u64, candidate: &EvictionCandidate) -> eviction::EvictionFacts {
        self.touch();
        let (layer, forecast, required) = {
            let mut state = self.state();
            let layer = state.demand.intern(now, candidate.digest);
            state.demand.set_size(layer, candidate.size);
            let forecast = state
                .demand
                .forecast(now, layer, HORIZON_BUCKETS)
                .map_or(0.0, |f| f.total());
            let required = state.plan.required_here.contains(&candidate.digest);
            (layer, forecast, required)
        };
        let threat = self.threat(&candidate.digest);
        let holders = self.other_holders(&candidate.digest);
        let protection = eviction::protection(
            forecast,
            !holders.is_empty(),
            required,
            threat,
            self.evict_first_score(),
        );
        eviction::EvictionFacts {
            layer,
            protection,
            forecast,
            threat,
            spare_copy: self.is_spare_copy(&candidate.digest, &holders),
        }
    }

    /// True when a member of this node's region is known to hold the whole blob and, among the
    /// region's holders and this node, this node is not the blob's keeper
    /// (`shoal_policy::cooperative`): a miss after evicting this copy comes from that peer. Every
    /// node of the region names the same keeper from the same announcements, so the region never
    /// drops its last copy on this ground.
    fn is_spare_copy(&self, digest: &BlobDigest, holders: &[libp2p::PeerId]) -> bool {
        let Some(network) = self.network.get() else {
            return false;
        };
        let region = network.region();
        let regional: Vec<u64> = holders
            .iter()
            .filter(|peer| {
                network
                    .peer_info(peer)
                    .and_then(|info| info.region)
                    .is_some_and(|r| r == region)
            })
            .map(|peer| cooperative::stable_key(&peer.to_bytes()))
            .collect();
        cooperative::is_spare_key(
            cooperative::stable_key(digest.to_string().as_bytes()),
            cooperative::stable_key(&network.local_peer_id().to_bytes()),
            &regional,
        )
    }

    /// Members known (by their announcements) to hold the whole blob.
    fn other_holders(&self, digest: &BlobDigest) -> Vec<libp2p::PeerId> {
        match self.network.get() {
            Some(network) => network
                .announced_holders(digest)
                .into_iter()
                .filter(|h| h.complete)
                .map(|h| h.peer)
                .collect(),
            None => Vec::new(),
        }
    }

    /// A client asked for a blob.
    pub fn blob_requested(&self, upstream: &str, repo: &RepoName, digest: BlobDigest) {
        let now = now_secs();
        self.touch();
        self.last_client_blob.store(
            self.started.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        let hit = {
            let mut state = self.state();
            let layer = state.demand.record_pull(now, digest);
            state.demand.set_source(layer, upstream, repo.as_str());
            state.prefetched.remove(&digest)
        };
        if let Some(bytes) = hit {
            self.metrics.placement_prefetch_hit_bytes.add(bytes);
        }
    }

    /// A client's blob request was answered, from the store (`from_store`) or not; `len` is the
    /// blob's length when known. Feeds the eviction order, whose guard compares the byte hits
    /// the node gets with those an LRU cache of its size would get. Call after
    /// [`blob_requested`](Self::blob_requested).
    pub fn blob_answered(&self, digest: &BlobDigest, len: Option<u64>, from_store: bool) {
        let Some(eviction) = self.eviction.get() else {
            return;
        };
        let now = now_secs();
        let known = {
            let state = self.state();
            state
                .demand
                .id(digest)
                .map(|layer| (layer, len.unwrap_or_else(|| state.demand.size(layer))))
        };
        if let Some((layer, size)) = known {
            eviction.record_request(now, layer, size, from_store);
        }
    }

    /// A client was served a manifest: its layers are announced, its tag scored.
    pub fn manifest_served(
        &self,
        upstream: &str,
        repo: &RepoName,
        reference: &Reference,
        reply: &ManifestReply,
    ) {
        let now = now_secs();
        let content = manifest::parse_manifest(&reply.body);
        self.touch();
        let mut state = self.state();
        if let Reference::Tag(tag) = reference {
            state.tags.record_pull(
                now,
                WatchedTag {
                    upstream: upstream.to_owned(),
                    repo: repo.as_str().to_owned(),
                    tag: tag.to_string(),
                },
                reply.digest,
            );
        }
        if let Some(content) = content {
            let ids = state.demand.record_manifest(now, &content.blobs);
            for id in ids {
                state.demand.set_source(id, upstream, repo.as_str());
            }
        }
    }

    /// Writes the state file (blocking: call from a blocking task).
    pub fn persist(&self) -> Result<(), PlacementError> {
        let changes = self.changes.load(Ordering::Relaxed);
        if changes == self.written.load(Ordering::Relaxed) {
            return Ok(());
        }
        let file = {
            let state = self.state();
            StateFile {
                demand: state.demand.snapshot(),
                tags: state.tags.snapshot(),
                required_here: state
                    .plan
                    .required_here
                    .iter()
                    .map(|d| d.to_string())
                    .collect(),
                planned_at: state.plan.at,
                prefetched: state
                    .prefetched
                    .iter()
                    .map(|(d, s)| (d.to_string(), *s))
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| PlacementError::Write(e.to_string()))?;
        write_durably(
            &self.dir.join("state.json.tmp"),
            &self.dir.join("state.json"),
            &bytes,
        )
        .map_err(|e| PlacementError::Write(e.to_string()))?;
        self.written.store(changes, Ordering::Relaxed);
        Ok(())
    }
}

fn read_state_file(path: &std::path::Path) -> Result<Option<StateFile>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_STATE_FILE_BYTES {
        return Err(format!("{len} bytes, at most {MAX_STATE_FILE_BYTES} read"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A layer the plan considers: id, digest, size, this node's forecast, and the (upstream,
/// repository) clients asked for it in, if this node saw them.
type PlanCandidate = (LayerId, BlobDigest, u64, f64, Option<(String, String)>);

/// One blob to pre-fetch.
struct PrefetchJob {
    upstream: String,
    repo: RepoName,
    digest: BlobDigest,
    size: u64,
    reason: &'static str,
    /// The origin must not be asked (the repository is not known).
    peers_only: bool,
    done: Option<oneshot::Sender<bool>>,
}

/// The running placement: a cheap handle for the request hooks and the admin endpoint.
#[derive(Clone)]
pub struct Placement {
    shared: Arc<Shared>,
    inner: Arc<Runtime>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement").finish_non_exhaustive()
    }
}

struct Runtime {
    pull: PullThrough,
    network: Option<PeerNetwork>,
    upstreams: BTreeMap<String, Upstream>,
    metrics: Arc<Metrics>,
    queue: mpsc::Sender<PrefetchJob>,
    queued: Mutex<HashSet<BlobDigest>>,
    budget_bytes: u64,
}

impl Placement {
    /// A client asked for a blob (see [`Shared::blob_requested`]).
    pub fn blob_requested(&self, upstream: &str, repo: &RepoName, digest: BlobDigest) {
        self.shared.blob_requested(upstream, repo, digest);
    }

    /// A client's blob request was answered (see [`Shared::blob_answered`]).
    pub fn blob_answered(&self, digest: &BlobDigest, len: Option<u64>, from_store: bool) {
        self.shared.blob_answered(digest, len, from_store);
    }

    /// A client was served a manifest (see [`Shared::manifest_served`]).
    pub fn manifest_served(
        &self,
        upstream: &str,
        repo: &RepoName,
        reference: &Reference,
        reply: &ManifestReply,
    ) {
        self.shared
            .manifest_served(upstream, repo, reference, reply);
    }

    fn enqueue(&self, job: PrefetchJob) -> bool {
        let fresh = self
            .inner
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.digest);
        if !fresh {
            return false;
        }
        let digest = job.digest;
        match self.inner.queue.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.inner
                    .queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&digest);
                tracing::debug!(%digest, "pre-fetch queue full; left for the next plan");
                false
            }
        }
    }

    /// Waits while clients are being served (at most [`MAX_YIELD`]).
    async fn yield_to_clients(&self) {
        let started = Instant::now();
        loop {
            let last = self.shared.last_client_blob.load(Ordering::Relaxed);
            let now = self.shared.started.elapsed().as_millis() as u64 + 1;
            if last == 0
                || now.saturating_sub(last) >= CLIENT_QUIET.as_millis() as u64
                || started.elapsed() >= MAX_YIELD
            {
                return;
            }
            tokio::time::sleep(CLIENT_QUIET).await;
        }
    }

    /// Runs one pre-fetch: peers first (through the pull-through cache, which asks the DHT
    /// before the origin), the origin only within the budget. True when the blob is held after.
    async fn prefetch(&self, job: &PrefetchJob) -> bool {
        let store = self.inner.pull.store();
        if matches!(store.shard_map(&job.digest), Ok(Some(_))) {
            return true;
        }
        // A pre-fetch never makes the store evict: it runs only into free space.
        if store.stats().bytes.saturating_add(job.size) > self.inner.budget_bytes {
            tracing::debug!(digest = %job.digest, size = job.size, "no free space under the disk budget; not pre-fetched");
            return false;
        }
        self.yield_to_clients().await;
        let Some(upstream) = self.inner.upstreams.get(&job.upstream) else {
            return false;
        };
        let from_peers = match &self.inner.network {
            Some(network) => !network
                .find_providers(job.digest, PROVIDER_LOOKUP)
                .await
                .is_empty(),
            None => false,
        };
        if !from_peers && job.peers_only {
            tracing::debug!(digest = %job.digest, "no peer holds it and its repository is unknown here; not fetched");
            return false;
        }
        if !from_peers {
            let spent = self.shared.state().budget.try_spend(now_secs(), job.size);
            if !spent {
                self.inner.metrics.placement_prefetch_over_budget.inc();
                tracing::info!(digest = %job.digest, size = job.size, reason = job.reason, "pre-fetch from the origin left for later: over the hourly origin budget");
                return false;
            }
        }
        let source = if from_peers { "peer" } else { "origin" };
        tracing::info!(digest = %job.digest, size = job.size, reason = job.reason, source, "pre-fetching");
        let reply = match self
            .inner
            .pull
            // A copy ahead of demand: no client waits, so its shards are made durable as written.
            .open_blob_with(
                upstream,
                &job.repo,
                job.digest,
                None,
                crate::store::Durability::AsWritten,
            )
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(digest = %job.digest, %error, "pre-fetch failed");
                return false;
            }
        };
        if reply.from_cache {
            return true;
        }
        let mut body = reply.body;
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => bytes += chunk.len() as u64,
                Err(error) => {
                    tracing::warn!(digest = %job.digest, %error, "pre-fetch broke off");
                    return false;
                }
            }
        }
        let counter = if from_peers {
            &self.inner.metrics.placement_prefetched_bytes_peer
        } else {
            &self.inner.metrics.placement_prefetched_bytes_origin
        };
        counter.add(bytes);
        self.shared.touch();
        let mut state = self.shared.state();
        if state.prefetched.len() < MAX_PREFETCHED {
            state.prefetched.insert(job.digest, bytes);
        }
        tracing::info!(digest = %job.digest, bytes, source, "pre-fetched");
        true
    }

    /// The blobs of manifest `digest` (for an index: of its children for this platform), read
    /// through the pull-through cache.
    async fn manifest_blobs(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: BlobDigest,
    ) -> Vec<(BlobDigest, u64)> {
        let mut pending = vec![(digest, 0u8)];
        let mut blobs = Vec::new();
        while let Some((digest, depth)) = pending.pop() {
            let reply = match self
                .inner
                .pull
                .manifest(upstream, repo, &Reference::Digest(digest), None)
                .await
            {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::warn!(%digest, %error, "manifest of a new version unavailable");
                    continue;
                }
            };
            let Some(content) = manifest::parse_manifest(&reply.body) else {
                continue;
            };
            blobs.extend(content.blobs);
            if depth == 0 {
                pending.extend(content.children.into_iter().map(|c| (c, 1)));
            }
        }
        blobs
    }

    /// Checks one watched tag; on a move, pre-fetches the new version's missing blobs.
    async fn check_tag(&self, tag: WatchedTag, tag_ttl: Duration) {
        let outcome = self.resolve_tag(&tag, tag_ttl).await;
        self.shared.touch();
        let moved_from = self
            .shared
            .state()
            .tags
            .checked(now_secs(), &tag, outcome.clone());
        let (Some(old), CheckOutcome::Resolved(new)) = (moved_from, outcome) else {
            return;
        };
        tracing::info!(upstream = %tag.upstream, repo = %tag.repo, tag = %tag.tag, %old, %new, "watched tag moved: pre-positioning the new version");
        let (Some(upstream), Ok(repo)) = (
            self.inner.upstreams.get(&tag.upstream),
            tag.repo.parse::<RepoName>(),
        ) else {
            return;
        };
        let blobs = self.manifest_blobs(upstream, &repo, new).await;
        let mut waits = Vec::new();
        for (digest, size) in blobs {
            if matches!(self.inner.pull.store().shard_map(&digest), Ok(Some(_))) {
                continue;
            }
            let (done, wait) = oneshot::channel();
            let job = PrefetchJob {
                upstream: tag.upstream.clone(),
                repo: repo.clone(),
                digest,
                size,
                reason: "new version of a watched tag",
                peers_only: false,
                done: Some(done),
            };
            if self.enqueue(job) {
                waits.push(wait);
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut all = true;
            for wait in waits {
                all &= wait.await.unwrap_or(false);
            }
            if all {
                this.inner.metrics.placement_versions_prepositioned.inc();
                tracing::info!(%new, "new version pre-positioned");
            }
        });
    }

    /// Resolves a tag through the pull-through cache: the upstream is asked only when the cached
    /// resolution is older than the tag TTL. A check that leaves the tag record stale (the
    /// upstream failed or refused, e.g. 429) is a failure.
    async fn resolve_tag(&self, tag: &WatchedTag, tag_ttl: Duration) -> CheckOutcome {
        let (Some(upstream), Ok(repo), Ok(reference)) = (
            self.inner.upstreams.get(&tag.upstream),
            tag.repo.parse::<RepoName>(),
            tag.tag.parse::<Reference>(),
        ) else {
            return CheckOutcome::Failed;
        };
        self.inner.metrics.placement_tag_checks.inc();
        if let Err(error) = self
            .inner
            .pull
            .manifest(upstream, &repo, &reference, None)
            .await
        {
            tracing::debug!(tag = %tag.tag, %error, "watched tag check failed");
            return CheckOutcome::Failed;
        }
        let key = crate::pullthrough::tag_key(&tag.upstream, &repo, &tag.tag);
        match self.inner.pull.store().tag(&key) {
            Ok(Some(record))
                if crate::store::now_ms().saturating_sub(record.fetched_at_ms)
                    < tag_ttl.as_millis() as u64 =>
            {
                CheckOutcome::Resolved(BlobDigest::from_bytes(record.digest))
            }
            _ => CheckOutcome::Failed,
        }
    }

    /// Computes the plan and pre-fetches the layers it assigns to this node.
    async fn run_plan(&self) {
        let started = Instant::now();
        let now = now_secs();
        let (me, members) = self.members();
        let own_region = members[0].region.clone();
        let remote = self.remote_demand();
        // Layers in demand in this node's region by other nodes get ids here too (bounded by
        // the table), so the plan can place them on this node.
        {
            let mut state = self.shared.state();
            if let Some(blobs) = remote.get(&own_region) {
                for digest in blobs.keys() {
                    state.demand.intern(now, *digest);
                }
            }
        }
        let candidates: Vec<PlanCandidate> = {
            let state = self.shared.state();
            state
                .demand
                .ids()
                .filter_map(|id| {
                    let forecast = state.demand.forecast(now, id, HORIZON_BUCKETS)?.total();
                    let digest = state.demand.digest(id)?;
                    let elsewhere = remote.values().any(|r| r.contains_key(&digest));
                    if forecast <= 0.0 && !elsewhere {
                        return None;
                    }
                    let source = state
                        .demand
                        .source(id)
                        .map(|(u, r)| (u.to_owned(), r.to_owned()));
                    Some((id, digest, state.demand.size(id), forecast, source))
                })
                .collect()
        };
        let store = self.inner.pull.store().clone();
        let digests: Vec<BlobDigest> = candidates.iter().map(|c| c.1).collect();
        let held: HashSet<BlobDigest> = tokio::task::spawn_blocking(move || {
            digests
                .into_iter()
                .filter(|d| matches!(store.shard_map(d), Ok(Some(_))))
                .collect()
        })
        .await
        .unwrap_or_default();
        let index_of: HashMap<Vec<u8>, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.key.clone(), i))
            .collect();
        let layers: Vec<assign::DemandedLayer> = candidates
            .iter()
            .map(|(id, digest, size, forecast, _)| {
                let mut holders: Vec<usize> = self
                    .shared
                    .other_holders(digest)
                    .into_iter()
                    .filter_map(|p| index_of.get(&p.to_bytes()).copied())
                    .collect();
                if held.contains(digest) {
                    holders.push(0);
                }
                assign::DemandedLayer {
                    layer: *id,
                    key: *digest.as_bytes(),
                    size: *size,
                    demand: regional(&own_region, *forecast, &remote, digest),
                    threat: self.shared.threat(digest),
                    holders,
                }
            })
            .collect();
        let config = PlanConfig {
            min_regional_demand: IN_DEMAND,
            ..PlanConfig::default()
        };
        let node_plan = assign::plan_for_node(&members, &layers, self.inner.budget_bytes, &config);
        if let Some(network) = &self.inner.network {
            let own = candidates.iter().filter(|c| c.3 > 0.0).map(|c| (c.1, c.3));
            network.publish_demand(&DemandSummary::top(&own_region, own));
        }
        let name = |i: usize| -> String {
            if i == 0 {
                return me.clone();
            }
            libp2p::PeerId::from_bytes(&members[i].key)
                .map_or_else(|_| "?".into(), |p| p.to_string())
        };
        let by_id: HashMap<LayerId, usize> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.0, i))
            .collect();
        let mut planned = HashMap::new();
        for score in &node_plan.plan.priorities {
            let Some(&i) = by_id.get(&score.layer) else {
                continue;
            };
            let chosen = node_plan
                .holders
                .get(&score.layer)
                .cloned()
                .unwrap_or_default();
            planned.insert(
                candidates[i].1,
                PlannedLayer {
                    copies_per_region: chosen.iter().map(|(r, h)| (r.clone(), h.len())).collect(),
                    holders: chosen
                        .iter()
                        .map(|(r, h)| (r.clone(), h.iter().map(|&i| name(i)).collect()))
                        .collect(),
                    usage: score.usage,
                    threat: score.threat,
                    proximity: score.proximity,
                    priority: score.priority,
                },
            );
        }
        let required: Vec<usize> = node_plan
            .required_here
            .iter()
            .filter_map(|l| by_id.get(l).copied())
            .collect();
        self.shared.touch();
        let wasted = {
            let mut state = self.shared.state();
            state.plan = LastPlan {
                at: now,
                required_here: required.iter().map(|&i| candidates[i].1).collect(),
                layers: planned,
                regions: node_plan.regions.clone(),
            };
            // Pre-fetched blobs that left the store unread were wasted.
            let store = self.inner.pull.store();
            let gone: Vec<BlobDigest> = state
                .prefetched
                .keys()
                .filter(|d| matches!(store.shard_map(d), Ok(None)))
                .copied()
                .collect();
            gone.iter()
                .filter_map(|d| state.prefetched.remove(d))
                .sum::<u64>()
        };
        self.inner
            .metrics
            .placement_prefetch_wasted_bytes
            .add(wasted);
        let mut queued = 0;
        for i in required {
            let (_, digest, size, _, source) = &candidates[i];
            if held.contains(digest) {
                continue;
            }
            // Demand another node of the region saw comes without its repository: such a layer
            // is fetched from peers only.
            let (upstream, repo, peers_only) = match source {
                Some((upstream, repo)) => (upstream.clone(), repo.clone(), false),
                None => match self.inner.upstreams.keys().next() {
                    Some(upstream) => (upstream.clone(), PEERS_ONLY_REPO.to_owned(), true),
                    None => continue,
                },
            };
            let Ok(repo) = repo.parse::<RepoName>() else {
                continue;
            };
            queued += usize::from(self.enqueue(PrefetchJob {
                upstream,
                repo,
                digest: *digest,
                size: *size,
                reason: "the plan assigns it to this node",
                peers_only,
                done: None,
            }));
        }
        let metrics = &self.inner.metrics;
        metrics.placement_plan_runs.inc();
        metrics
            .placement_plan_busy_us
            .add(started.elapsed().as_micros() as u64);
        tracing::debug!(
            layers = candidates.len(),
            required = node_plan.required_here.len(),
            queued,
            "plan run"
        );
    }

    /// Forecast pulls per region and blob that other nodes published recently.
    fn remote_demand(&self) -> BTreeMap<String, BTreeMap<BlobDigest, f64>> {
        match &self.inner.network {
            Some(network) => network.regional_demand(self.shared.config.plan_interval * 3),
            None => BTreeMap::new(),
        }
    }

    /// This node first, then the members it sees: name, region, RTT.
    fn members(&self) -> (String, Vec<assign::Member>) {
        let Some(network) = &self.inner.network else {
            return (
                "local".into(),
                vec![assign::Member {
                    key: b"local".to_vec(),
                    region: String::new(),
                    rtt_ms: Some(0.0),
                }],
            );
        };
        let me = network.local_peer_id();
        let mut members = vec![assign::Member {
            key: me.to_bytes(),
            region: network.region().to_owned(),
            rtt_ms: Some(0.0),
        }];
        for peer in network.members() {
            let Some(info) = network.peer_info(&peer) else {
                continue;
            };
            members.push(assign::Member {
                key: peer.to_bytes(),
                region: info.region.unwrap_or_default(),
                rtt_ms: info.rtt.map(|d| d.as_secs_f64() * 1000.0),
            });
        }
        (me.to_string(), members)
    }

    /// Forecast pulls over the plan's horizon of each of `digests`, summed over the regions this
    /// node knows (its own forecast and what members published); 0 for a layer without history.
    pub fn forecast_pulls(&self, digests: &[BlobDigest]) -> Vec<f64> {
        let now = now_secs();
        let remote = self.remote_demand();
        let state = self.shared.state();
        digests
            .iter()
            .map(|digest| {
                let own = state
                    .demand
                    .id(digest)
                    .and_then(|id| state.demand.forecast(now, id, HORIZON_BUCKETS))
                    .map_or(0.0, |f| f.total());
                own + remote
                    .values()
                    .filter_map(|blobs| blobs.get(digest))
                    .sum::<f64>()
            })
            .collect()
    }

    /// What placement knows about `digest` (the admin endpoint's answer).
    pub fn explain(&self, digest: BlobDigest) -> explain::Explanation {
        let now = now_secs();
        let remote = self.remote_demand();
        let held = matches!(self.inner.pull.store().shard_map(&digest), Ok(Some(_)));
        let holders = self.shared.other_holders(&digest);
        let threat = self.shared.threats.get().and_then(|t| t.threat_of(&digest));
        let threat_score = threat.as_ref().map_or(0.0, |t| t.score);
        let state = self.shared.state();
        let layer = state.demand.id(&digest);
        let forecast = layer.and_then(|id| state.demand.forecast(now, id, HORIZON_BUCKETS));
        let in_demand = forecast.is_some_and(|f| f.total() >= IN_DEMAND);
        let required = state.plan.required_here.contains(&digest);
        let region = self
            .inner
            .network
            .as_ref()
            .map(|n| n.region().to_owned())
            .unwrap_or_default();
        explain::Explanation {
            digest: digest.to_string(),
            held_here: held,
            layer_id: layer.map(|l| l.0),
            size: layer.map(|l| state.demand.size(l)),
            total_pulls: layer
                .and_then(|l| state.demand.series(l))
                .map_or(0, |s| s.total_pulls()),
            forecast: forecast.map(explain::ForecastView::from),
            regional_forecast: regional(
                &region,
                forecast.map_or(0.0, |f| f.total()),
                &remote,
                &digest,
            ),
            threat: threat_score,
            threat_cves: threat.map(|t| t.cves).unwrap_or_default(),
            planned_at: state.plan.at,
            plan: state.plan.layers.get(&digest).cloned(),
            regions: state.plan.regions.clone(),
            required_here: required,
            known_holders: holders.iter().map(|p| p.to_string()).collect(),
            prefetched_unread: state.prefetched.contains_key(&digest),
            eviction_protection: eviction::protection(
                if in_demand { IN_DEMAND } else { 0.0 },
                !holders.is_empty(),
                required,
                threat_score,
                self.shared.evict_first_score(),
            ),
        }
    }
}

/// A layer's demand per region: this node's forecast in its own region plus what other nodes
/// published.
fn regional(
    own_region: &str,
    own: f64,
    remote: &BTreeMap<String, BTreeMap<BlobDigest, f64>>,
    digest: &BlobDigest,
) -> BTreeMap<String, f64> {
    let mut demand = BTreeMap::from([(own_region.to_owned(), own)]);
    for (region, blobs) in remote {
        if let Some(pulls) = blobs.get(digest) {
            *demand.entry(region.clone()).or_default() += pulls;
        }
    }
    demand
}

/// What placement runs over.
#[derive(Debug)]
pub struct Parts {
    /// The pull-through cache every pre-fetch goes through.
    pub pull: PullThrough,
    /// The peer network, if any.
    pub network: Option<PeerNetwork>,
    /// The configured upstreams by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The store's disk budget (`max_disk_bytes`).
    pub budget_bytes: u64,
    /// The tag TTL (`tag_ttl_secs`).
    pub tag_ttl: Duration,
}

/// Starts placement's tasks; they stop when `stop` turns true (the demand file is written once
/// more on the way out).
pub fn start(
    shared: Arc<Shared>,
    parts: Parts,
    stop: watch::Receiver<bool>,
) -> (Placement, tokio::task::JoinHandle<()>) {
    let Parts {
        pull,
        network,
        upstreams,
        metrics,
        budget_bytes,
        tag_ttl,
    } = parts;
    if let Some(network) = &network {
        let _ = shared.network.set(network.clone());
    }
    let (queue, jobs) = mpsc::channel(PREFETCH_QUEUE);
    let placement = Placement {
        shared: shared.clone(),
        inner: Arc::new(Runtime {
            pull,
            network,
            upstreams,
            metrics,
            queue,
            queued: Mutex::default(),
            budget_bytes,
        }),
    };
    let task = tokio::spawn(run_tasks(placement.clone(), jobs, tag_ttl, stop));
    (placement, task)
}

async fn run_tasks(
    placement: Placement,
    mut jobs: mpsc::Receiver<PrefetchJob>,
    tag_ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let config = placement.shared.config.clone();
    let permits = Arc::new(Semaphore::new(config.prefetch_concurrency));
    let mut tag_tick = tokio::time::interval(TAG_TICK);
    let mut plan_tick = tokio::time::interval(config.plan_interval);
    let mut persist_tick = tokio::time::interval(config.persist_interval);
    for tick in [&mut tag_tick, &mut plan_tick, &mut persist_tick] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    plan_tick.reset();
    let checking = Arc::new(tokio::sync::Mutex::new(()));
    // Pre-fetches are dispatched apart from the timers, so a full set of running pre-fetches
    // never delays a plan, a tag check or the stop.
    let dispatcher = {
        let placement = placement.clone();
        tokio::spawn(async move {
            while let Some(mut job) = jobs.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = placement.clone();
                tokio::spawn(async move {
                    let ok = this.prefetch(&job).await;
                    this.inner
                        .queued
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&job.digest);
                    if let Some(done) = job.done.take() {
                        let _ = done.send(ok);
                    }
                    drop(permit);
                });
            }
        })
    };
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = tag_tick.tick() => {
                // One round of checks at a time; a slow upstream delays the next round.
                let Ok(guard) = checking.clone().try_lock_owned() else { continue };
                let due = placement.shared.state().tags.due(now_secs());
                placement
                    .inner
                    .metrics
                    .placement_tags_watched
                    .store(placement.shared.state().tags.watched(now_secs()).len() as u64, Ordering::Relaxed);
                let this = placement.clone();
                tokio::spawn(async move {
                    for tag in due {
                        this.check_tag(tag, tag_ttl).await;
                    }
                    drop(guard);
                });
            }
            _ = plan_tick.tick() => placement.run_plan().await,
            _ = persist_tick.tick() => persist(&placement.shared).await,
        }
    }
    dispatcher.abort();
    persist(&placement.shared).await;
}

async fn persist(shared: &Arc<Shared>) {
    let shared = shared.clone();
    match tokio::task::spawn_blocking(move || shared.persist()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "placement state not written"),
        Err(error) => tracing::warn!(%error, "placement state writer failed"),
    }
}

/// The admin route `GET /placement/explain/{digest}`.
pub fn admin_routes(placement: Option<Placement>) -> axum::Router {
    explain::router(placement)
}

/// Writes `bytes` to `path` through `tmp_path`: write, fsync, rename, fsync the directory, so a
/// crash leaves either the old file or the whole new one.
pub(crate) fn write_durably(
    tmp_path: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(tmp_path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp_path, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
