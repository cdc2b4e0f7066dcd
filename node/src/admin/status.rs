//! `GET /status`: the node at a glance, as JSON, for `shoal status` and scripts. Read-only.
//!
//! Region, members per region, disk use against the budget, hit ratio, bytes by source over the
//! last hour, the largest blobs, and warnings. The last hour comes from [`CounterHistory`], a
//! pure ring of counter snapshots taken once a minute (time passed in explicitly); the rest is
//! read at request time from the metrics, the store and the peer network.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::lifecycle::{Lifecycle, StateCounts};
use crate::metrics::Metrics;
use crate::p2p::PeerNetwork;
use crate::store::ShardStore;

/// How far back "the last hour" looks.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// How often the counters are sampled for the window.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Largest blobs listed.
pub const LARGEST_BLOBS: usize = 10;
/// Most stored blobs whose sizes are read to find the largest (bounds the work of one request).
pub const MAX_BLOBS_SCANNED: usize = 100_000;
/// Disk use above this fraction of the budget is warned about.
pub const DISK_WARN_FRACTION: f64 = 0.9;

/// The JSON answer of `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// The daemon's version.
    pub version: String,
    /// This node's region.
    pub region: String,
    /// This node's peer id, when the peer network is on.
    pub peer_id: Option<String>,
    /// The registry endpoint's bound address (what containerd's hosts.toml points at).
    pub registry_listen: String,
    /// Configured upstreams.
    pub upstreams: Vec<UpstreamStatus>,
    /// Whether the peer network is on (a network key is configured).
    pub peer_network: bool,
    /// Connected, proven members by region (this node not counted).
    pub members_by_region: BTreeMap<String, u64>,
    /// The store against its budget.
    pub disk: DiskStatus,
    /// Hits and misses since start.
    pub since_start: Traffic,
    /// Hits, misses and bytes over the last hour (or since start, when shorter).
    pub last_hour: Traffic,
    /// The largest stored blobs, largest first.
    pub largest_blobs: Vec<BlobSize>,
    /// Layers per lifecycle state and pins, as of the last review (none when the lifecycle is
    /// off).
    #[serde(default)]
    pub lifecycle: Option<StateCounts>,
    /// Things an operator should look at, one sentence each.
    pub warnings: Vec<String>,
}

/// One configured upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStatus {
    /// Its name, as containerd sends it in `ns`.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Requests to it that failed for good (after retries) over the last hour.
    pub failures_last_hour: u64,
}

/// Disk use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskStatus {
    /// Bytes of distinct shards stored.
    pub used_bytes: u64,
    /// The budget (`max_disk_bytes`).
    pub budget_bytes: u64,
    /// Blobs stored.
    pub blobs: u64,
}

/// Counts over a span of time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Traffic {
    /// Seconds the counts cover.
    pub seconds: u64,
    /// Requests answered from the store.
    pub hits: u64,
    /// Requests that needed an upstream or a peer.
    pub misses: u64,
    /// Blob bytes sent to clients from the store.
    pub bytes_served_cache: u64,
    /// Blob bytes sent to clients while fetching them.
    pub bytes_served_upstream: u64,
    /// Blob bytes received from peers.
    pub bytes_received_peer: u64,
    /// Blob bytes received from the origin.
    pub bytes_received_origin: u64,
}

impl Traffic {
    /// Hits over hits plus misses; `None` before any request.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// A stored blob's size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobSize {
    /// `sha256:...`
    pub digest: String,
    /// Its length in bytes.
    pub bytes: u64,
}

/// Counter values at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The traffic counters (with `seconds` unused).
    pub traffic: Traffic,
    /// Failed upstream requests by upstream.
    pub upstream_failures: BTreeMap<String, u64>,
}

impl Snapshot {
    fn read(metrics: &Metrics) -> Snapshot {
        Snapshot {
            traffic: Traffic {
                seconds: 0,
                hits: metrics.cache_hits.get(),
                misses: metrics.cache_misses.get(),
                bytes_served_cache: metrics.bytes_served_cache.get(),
                bytes_served_upstream: metrics.bytes_served_upstream.get(),
                bytes_received_peer: metrics.bytes_received_peer.get(),
                bytes_received_origin: metrics.bytes_received_origin.get(),
            },
            upstream_failures: metrics.upstream_failures(),
        }
    }

    /// What happened from `earlier` to `self`.
    fn since(&self, earlier: &Snapshot, seconds: u64) -> Snapshot {
        let (a, b) = (&self.traffic, &earlier.traffic);
        Snapshot {
            traffic: Traffic {
                seconds,
                hits: a.hits.saturating_sub(b.hits),
                misses: a.misses.saturating_sub(b.misses),
                bytes_served_cache: a.bytes_served_cache.saturating_sub(b.bytes_served_cache),
                bytes_served_upstream: a
                    .bytes_served_upstream
                    .saturating_sub(b.bytes_served_upstream),
                bytes_received_peer: a.bytes_received_peer.saturating_sub(b.bytes_received_peer),
                bytes_received_origin: a
                    .bytes_received_origin
                    .saturating_sub(b.bytes_received_origin),
            },
            upstream_failures: self
                .upstream_failures
                .iter()
                .map(|(name, n)| {
                    let before = earlier.upstream_failures.get(name).copied().unwrap_or(0);
                    (name.clone(), n.saturating_sub(before))
                })
                .collect(),
        }
    }
}

/// Counter snapshots over the last [`WINDOW`], oldest first; time is seconds since an origin the
/// caller picks. Holds at most one snapshot per [`SAMPLE_EVERY`] plus one.
#[derive(Debug, Clone, Default)]
pub struct CounterHistory {
    samples: VecDeque<(u64, Snapshot)>,
}

impl CounterHistory {
    /// The most samples kept.
    pub const CAPACITY: usize = (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

    /// Records `snapshot` taken at `now`; drops what the window no longer needs.
    pub fn record(&mut self, now: u64, snapshot: Snapshot) {
        self.samples.push_back((now, snapshot));
        while self.samples.len() > 1 && now.saturating_sub(self.samples[0].0) > WINDOW.as_secs() {
            self.samples.pop_front();
        }
        while self.samples.len() > Self::CAPACITY {
            self.samples.pop_front();
        }
    }

    /// What happened over the last hour up to `now` (whose counters are `current`), or since
    /// the oldest sample when the history is shorter than that.
    pub fn last_hour(&self, now: u64, current: &Snapshot) -> Snapshot {
        let start = self
            .samples
            .iter()
            .find(|(at, _)| now.saturating_sub(*at) <= WINDOW.as_secs())
            .or(self.samples.front());
        match start {
            Some((at, earlier)) => current.since(earlier, now.saturating_sub(*at)),
            None => current.since(&Snapshot::default(), 0),
        }
    }
}

/// What `/status` reads besides the metrics and the store. Built once at start.
#[derive(Debug, Clone)]
pub struct StatusContext {
    /// This node's region.
    pub region: String,
    /// The registry endpoint's bound address.
    pub registry_listen: String,
    /// Upstream names and URLs.
    pub upstreams: Vec<(String, String)>,
    /// The disk budget.
    pub budget_bytes: u64,
    /// The peer network, when on.
    pub network: Option<PeerNetwork>,
    /// The lifecycle, when on (its state counts).
    pub lifecycle: Option<Lifecycle>,
    started: Instant,
    history: Arc<Mutex<CounterHistory>>,
}

impl StatusContext {
    /// Starts sampling `metrics` every [`SAMPLE_EVERY`] (the task ends when the context and its
    /// clones are gone).
    pub fn new(
        region: String,
        registry_listen: String,
        upstreams: Vec<(String, String)>,
        budget_bytes: u64,
        network: Option<PeerNetwork>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let started = Instant::now();
        let history = Arc::new(Mutex::new(CounterHistory::default()));
        let weak = Arc::downgrade(&history);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            loop {
                ticks.tick().await;
                let Some(history) = weak.upgrade() else {
                    return;
                };
                let now = started.elapsed().as_secs();
                lock(&history).record(now, Snapshot::read(&metrics));
            }
        });
        StatusContext {
            region,
            registry_listen,
            upstreams,
            budget_bytes,
            network,
            lifecycle: None,
            started,
            history,
        }
    }

    /// The same context, reporting `lifecycle`'s state counts.
    pub fn with_lifecycle(mut self, lifecycle: Option<Lifecycle>) -> Self {
        self.lifecycle = lifecycle;
        self
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /status`
pub async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    let context = &state.status;
    let now = context.started.elapsed().as_secs();
    let current = Snapshot::read(&state.metrics);
    let last_hour = lock(&context.history).last_hour(now, &current);
    let mut since_start = current.traffic.clone();
    since_start.seconds = now;
    let stats = state.store.stats();
    let store = state.store.clone();
    let largest = match tokio::task::spawn_blocking(move || largest_blobs(&store)).await {
        Ok(Ok(largest)) => largest,
        Ok(Err(error)) => {
            tracing::warn!(%error, "reading blob sizes for /status");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    let mut members_by_region = BTreeMap::new();
    if let Some(network) = &context.network {
        for peer in network.members() {
            let region = network
                .peer_info(&peer)
                .and_then(|info| info.region)
                .unwrap_or_else(|| "unknown".to_owned());
            *members_by_region.entry(region).or_insert(0) += 1;
        }
    }
    let upstreams: Vec<UpstreamStatus> = context
        .upstreams
        .iter()
        .map(|(name, url)| UpstreamStatus {
            name: name.clone(),
            url: url.clone(),
            failures_last_hour: last_hour.upstream_failures.get(name).copied().unwrap_or(0),
        })
        .collect();
    let disk = DiskStatus {
        used_bytes: stats.bytes,
        budget_bytes: context.budget_bytes,
        blobs: stats.blobs,
    };
    let warnings = warnings(
        &upstreams,
        &disk,
        context.network.is_some(),
        &members_by_region,
    );
    let answer = NodeStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        region: context.region.clone(),
        peer_id: context
            .network
            .as_ref()
            .map(|network| network.local_peer_id().to_string()),
        registry_listen: context.registry_listen.clone(),
        upstreams,
        peer_network: context.network.is_some(),
        members_by_region,
        disk,
        since_start,
        last_hour: last_hour.traffic,
        largest_blobs: largest,
        lifecycle: context.lifecycle.as_ref().map(Lifecycle::state_counts),
        warnings,
    };
    match serde_json::to_string(&answer) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding the status: {error}\n"),
        ),
    }
}

/// The largest stored blobs, largest first (reads at most [`MAX_BLOBS_SCANNED`] shard maps).
fn largest_blobs(store: &ShardStore) -> Result<Vec<BlobSize>, crate::store::StoreError> {
    let mut sizes: Vec<BlobSize> = Vec::new();
    for digest in store.blob_digests()?.into_iter().take(MAX_BLOBS_SCANNED) {
        if let Some(map) = store.shard_map(&digest)? {
            sizes.push(BlobSize {
                digest: digest.to_string(),
                bytes: map.blob_len,
            });
        }
    }
    sizes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.digest.cmp(&b.digest)));
    sizes.truncate(LARGEST_BLOBS);
    Ok(sizes)
}

/// The warnings for a status: failing upstreams, a nearly full disk, no members.
pub fn warnings(
    upstreams: &[UpstreamStatus],
    disk: &DiskStatus,
    peer_network: bool,
    members_by_region: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for upstream in upstreams.iter().filter(|u| u.failures_last_hour > 0) {
        warnings.push(format!(
            "upstream {} ({}) failed {} requests in the last hour (after retries): check that it is reachable from this node",
            upstream.name, upstream.url, upstream.failures_last_hour
        ));
    }
    if disk.budget_bytes > 0
        && disk.used_bytes as f64 >= DISK_WARN_FRACTION * disk.budget_bytes as f64
    {
        warnings.push(format!(
            "disk nearly full: {} of {} budget bytes used ({:.0}%); older blobs are being evicted: raise max_disk_bytes if the disk allows",
            disk.used_bytes,
            disk.budget_bytes,
            100.0 * disk.used_bytes as f64 / disk.budget_bytes as f64
        ));
    }
    if peer_network && members_by_region.values().sum::<u64>() == 0 {
        warnings.push(
            "no members connected: this node fetches everything from the origin; check bootstrap addresses and that peers hold the same network key".to_owned(),
        );
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(hits: u64, origin: u64) -> Snapshot {
        Snapshot {
            traffic: Traffic {
                hits,
                bytes_received_origin: origin,
                ..Traffic::default()
            },
            upstream_failures: BTreeMap::from([("docker.io".to_owned(), hits / 10)]),
        }
    }

    #[test]
    fn the_last_hour_starts_at_the_sample_an_hour_old() {
        let mut history = CounterHistory::default();
        for minute in 0..=120u64 {
            history.record(minute * 60, snapshot(minute * 10, minute * 1000));
        }
        assert!(history.samples.len() <= CounterHistory::CAPACITY);
        let now = 120 * 60 + 30;
        let window = history.last_hour(now, &snapshot(1210, 121_000));
        // The oldest sample within the hour was taken at minute 61 (3570 s before now).
        assert_eq!(window.traffic.seconds, now - 61 * 60);
        assert_eq!(window.traffic.hits, 1210 - 610);
        assert_eq!(window.traffic.bytes_received_origin, 121_000 - 61_000);
        assert_eq!(window.upstream_failures["docker.io"], 121 - 61);
    }

    #[test]
    fn a_young_node_reports_since_its_first_sample() {
        let mut history = CounterHistory::default();
        let window = history.last_hour(5, &snapshot(3, 7));
        assert_eq!(window.traffic.hits, 3);
        history.record(0, snapshot(0, 0));
        history.record(60, snapshot(5, 50));
        let window = history.last_hour(90, &snapshot(8, 80));
        assert_eq!(window.traffic.seconds, 90);
        assert_eq!(window.traffic.hits, 8);
    }

    #[test]
    fn warnings_name_the_problem_and_the_fix() {
        let upstreams = [UpstreamStatus {
            name: "docker.io".into(),
            url: "https://registry-1.docker.io".into(),
            failures_last_hour: 3,
        }];
        let full = DiskStatus {
            used_bytes: 95,
            budget_bytes: 100,
            blobs: 1,
        };
        let warnings = warnings(&upstreams, &full, true, &BTreeMap::new());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("docker.io"));
        assert!(warnings[1].contains("max_disk_bytes"));
        assert!(warnings[2].contains("bootstrap"));
        let fine = DiskStatus {
            used_bytes: 10,
            budget_bytes: 100,
            blobs: 1,
        };
        let quiet = super::warnings(&[], &fine, true, &BTreeMap::from([("eu".into(), 1)]));
        assert!(quiet.is_empty());
        assert!(super::warnings(&[], &fine, false, &BTreeMap::new()).is_empty());
    }
}
