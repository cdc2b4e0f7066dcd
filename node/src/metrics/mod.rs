//! Counters, gauges and latency histograms, exposed in the OpenMetrics text format by the
//! `prometheus-client` library.
//!
//! Owns only numbers: every subsystem records into one shared [`Metrics`]; the admin endpoint
//! renders it. Each metric is a public field (or a `record_*` method for labelled families) and
//! one registration line in [`Metrics::default`], which gives its exported name and help text.
//!
//! Naming follows Prometheus conventions: base units (`_bytes`, `_seconds`), counters exported
//! with `_total` (the library appends it to the registered name), no ratios or rates that a query
//! can derive from counters (`rate(shoal_cache_hits_total[5m])` etc.). Latencies are histograms
//! with fixed buckets, so percentiles can be aggregated across nodes with
//! `histogram_quantile(0.99, sum by (le) (rate(shoal_http_request_duration_seconds_bucket[5m])))`.
//!
//! **Invariant:** label values that come from outside (peer ids) are bounded: at most
//! [`MAX_PEERS_TRACKED`] peers get their own series, the rest are summed under `peer="other"`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::store::StoreStats;

/// The HTTP content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Peers tracked one by one in the per-peer byte counters; the rest are summed under "other".
pub const MAX_PEERS_TRACKED: usize = 1024;

/// Where the bytes of a blob response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ByteSource {
    /// The local shard store.
    Cache,
    /// An upstream registry (streamed while ingesting).
    Upstream,
}

/// A monotonically increasing counter. Clones share the value.
#[derive(Debug, Default, Clone)]
pub struct Counter(prometheus_client::metrics::counter::Counter<u64, AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A value that goes up and down. Derefs to its [`AtomicU64`], so it is set with
/// `gauge.store(n, Relaxed)` and can be counted up and down in place. Clones share the value.
#[derive(Debug, Default, Clone)]
pub struct Gauge(prometheus_client::metrics::gauge::Gauge<u64, AtomicU64>);

impl Deref for Gauge {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

impl EncodeMetric for Gauge {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A counter kept in microseconds and exported in seconds.
#[derive(Debug)]
struct MicrosAsSeconds(Counter);

impl EncodeMetric for MicrosAsSeconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&(self.0.get() as f64 / 1e6), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Several fields exported as one metric with one label telling them apart, e.g.
/// `shoal_bytes_served_total{source="cache"}`.
#[derive(Debug)]
struct Labelled<M> {
    label: &'static str,
    series: Vec<(&'static str, M)>,
    metric_type: MetricType,
}

impl<M: EncodeMetric> EncodeMetric for Labelled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, metric) in &self.series {
            let labels = [(self.label, *value)];
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.metric_type
    }
}

fn labelled_counters(
    label: &'static str,
    series: Vec<(&'static str, Counter)>,
) -> Labelled<Counter> {
    Labelled {
        label,
        series,
        metric_type: MetricType::Counter,
    }
}

fn labelled_gauges(label: &'static str, series: Vec<(&'static str, Gauge)>) -> Labelled<Gauge> {
    Labelled {
        label,
        series,
        metric_type: MetricType::Gauge,
    }
}

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Buckets for registry requests: 0.5 ms to about 66 s, doubling.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Buckets for shard fetches from peers: 0.5 ms to about 16 s, doubling.
fn shard_fetch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// All of the node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_duration: HistogramFamily,
    upstream_requests: Family<Labels, Counter>,
    /// Upstream requests by kind over all upstreams, for [`Metrics::upstream_requests`].
    upstream_requests_by_kind: Mutex<BTreeMap<&'static str, u64>>,
    upstream_failures: Family<Labels, Counter>,
    /// Failed upstream requests by upstream, for [`Metrics::upstream_failures`].
    upstream_failures_by_name: Mutex<BTreeMap<String, u64>>,
    peer_bytes_received: Family<Labels, Counter>,
    peer_bytes_sent: Family<Labels, Counter>,
    /// Peers that have their own series in the per-peer families.
    peers_tracked: Mutex<BTreeSet<String>>,
    shard_fetch_duration: Histogram,
    /// Blobs in the store (set from the store at each render).
    store_blobs: Gauge,
    /// Bytes of distinct shards in the store (set from the store at each render).
    store_bytes: Gauge,
    /// Blob bytes sent to clients from the store.
    pub bytes_served_cache: Counter,
    /// Blob bytes sent to clients while they were being fetched from an upstream.
    pub bytes_served_upstream: Counter,
    /// Blob and manifest requests answered from the store.
    pub cache_hits: Counter,
    /// Blob and manifest requests that needed an upstream.
    pub cache_misses: Counter,
    /// Bytes fed to the chunker.
    pub ingested_bytes: Counter,
    /// Time spent chunking, hashing and writing, in microseconds.
    pub ingest_busy_us: Counter,
    /// Fetches made ahead of demand that a client joined, whose durability then waited for the
    /// client's last byte.
    pub ingests_deferred_for_client: Counter,
    /// Time spent reading and verifying shards for responses, in microseconds.
    pub serve_busy_us: Counter,
    /// Blobs committed.
    pub blobs_committed: Counter,
    /// Blobs whose bytes did not match their digest.
    pub digest_mismatches: Counter,
    /// Blobs fetched again because a peer's bytes did not match their digest.
    pub refetches_after_bad_peer: Counter,
    /// Fetches whose parent went away mid-blob and that the blob's home placed under another member.
    pub rehomes: Counter,
    /// Shards that failed BLAKE3 verification (or were missing) when served.
    pub shard_verify_failures: Counter,
    /// Shards fetched again from an upstream and put back.
    pub shards_healed: Counter,
    /// Shards that could not be healed (the response was aborted).
    pub heal_failures: Counter,
    /// Tags answered from a stale cache entry because the upstream was unreachable.
    pub stale_tags_served: Counter,
    /// Tag requests answered with the digest a rebuild holds the tag at.
    pub rebuild_held_tags_served: Counter,
    /// Blobs evicted for the disk budget.
    pub evictions: Counter,
    /// Requests that joined a fetch already in flight.
    pub single_flight_joins: Counter,
    /// Blob bytes received from peers (BLAKE3-checked per shard).
    pub bytes_received_peer: Counter,
    /// Blob bytes received from an upstream registry (the origin).
    pub bytes_received_origin: Counter,
    /// Blob bytes sent to peers.
    pub bytes_sent_peer: Counter,
    /// Blob fetches from a peer that failed (the blob then came from another source).
    pub peer_fetch_failures: Counter,
    /// Batches of shards asked of a second peer because the first was late.
    pub hedged_requests: Counter,
    /// Manifests sent to members from this node's cache.
    pub manifests_sent_peer: Counter,
    /// Manifests received from members (verified) while the upstream was unavailable.
    pub manifests_received_peer: Counter,
    /// Peers that failed the membership proof or did not give it in time.
    pub p2p_failed_proofs: Counter,
    /// Requests (DHT, shard, manifest streams) refused because the peer had not proved membership.
    pub p2p_refused_non_member_requests: Counter,
    /// Inbound peer connections refused by a connection limit.
    pub p2p_refused_connections: Counter,
    /// Connected peers that have proved membership.
    pub p2p_members: Gauge,
    /// Open peer connections (members or not).
    pub p2p_connections: Gauge,
    /// Open peer connections over QUIC.
    pub p2p_connections_quic: Gauge,
    /// Open peer connections over TCP + noise + yamux.
    pub p2p_connections_tcp: Gauge,
    /// Entries in Kademlia's routing table (members only).
    pub p2p_routing_table_peers: Gauge,
    /// Provider records in the local DHT store naming this node.
    pub p2p_provider_records_local: Gauge,
    /// Provider records in the local DHT store that other members asked this node to keep.
    pub p2p_provider_records_remote: Gauge,
    /// (member, blob) holdings learned from gossip announcements.
    pub p2p_announced_holdings: Gauge,
    /// Peers following one of this node's fetches shard by shard now.
    pub p2p_followers: Gauge,
    /// Peers sent on to one of this node's followers because the fetch they asked for was full.
    pub p2p_followers_sent_on: Counter,
    /// Gossip messages this node published.
    pub p2p_gossip_published: Counter,
    /// Gossip messages this node meant to publish but could not (no member connected, or the
    /// swarm was busy).
    pub p2p_gossip_unpublished: Counter,
    /// Gossip messages received (before validation).
    pub p2p_gossip_received: Counter,
    /// Received gossip messages rejected by validation (not from a member, or malformed).
    pub p2p_gossip_rejected: Counter,
    /// Blobs sent to their clients verified but not stored, because the store could not take them.
    pub blobs_passed_through: Counter,
    /// Blob bytes received while the store could not take them (sent on to clients from memory).
    pub bytes_passed_through: Counter,
    /// Store writes that failed because the disk was full.
    pub store_write_failures_disk_full: Counter,
    /// Store writes that failed because the file system was read-only.
    pub store_write_failures_read_only: Counter,
    /// Store writes that failed with another I/O error.
    pub store_write_failures_io: Counter,
    /// Store writes refused because the store was closed.
    pub store_write_failures_closed: Counter,
    /// Pre-fetched blob bytes whose source was a peer (a provider was found).
    pub placement_prefetched_bytes_peer: Counter,
    /// Pre-fetched blob bytes whose source was the origin (within the hourly budget).
    pub placement_prefetched_bytes_origin: Counter,
    /// Bytes of pre-fetched blobs that a client then asked for (pre-fetch hits).
    pub placement_prefetch_hit_bytes: Counter,
    /// Bytes of pre-fetched blobs that left the store before any client read them.
    pub placement_prefetch_wasted_bytes: Counter,
    /// Pre-fetches left for later because the origin budget was spent.
    pub placement_prefetch_over_budget: Counter,
    /// Plans computed.
    pub placement_plan_runs: Counter,
    /// Time spent computing plans, in microseconds.
    pub placement_plan_busy_us: Counter,
    /// Watched-tag checks.
    pub placement_tag_checks: Counter,
    /// Tags being watched for new versions.
    pub placement_tags_watched: Gauge,
    /// New versions of watched tags whose blobs were all pre-fetched.
    pub placement_versions_prepositioned: Counter,
    /// Provider records withdrawn because their blob was evicted.
    pub provider_records_withdrawn: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            upstream_requests: Family::default(),
            upstream_requests_by_kind: Mutex::default(),
            upstream_failures: Family::default(),
            upstream_failures_by_name: Mutex::default(),
            peer_bytes_received: Family::default(),
            peer_bytes_sent: Family::default(),
            peers_tracked: Mutex::default(),
            shard_fetch_duration: shard_fetch_buckets(),
            store_blobs: Gauge::default(),
            store_bytes: Gauge::default(),
            bytes_served_cache: Counter::default(),
            bytes_served_upstream: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            ingested_bytes: Counter::default(),
            ingest_busy_us: Counter::default(),
            ingests_deferred_for_client: Counter::default(),
            serve_busy_us: Counter::default(),
            blobs_committed: Counter::default(),
            digest_mismatches: Counter::default(),
            refetches_after_bad_peer: Counter::default(),
            rehomes: Counter::default(),
            shard_verify_failures: Counter::default(),
            shards_healed: Counter::default(),
            heal_failures: Counter::default(),
            stale_tags_served: Counter::default(),
            rebuild_held_tags_served: Counter::default(),
            evictions: Counter::default(),
            single_flight_joins: Counter::default(),
            bytes_received_peer: Counter::default(),
            bytes_received_origin: Counter::default(),
            bytes_sent_peer: Counter::default(),
            peer_fetch_failures: Counter::default(),
            hedged_requests: Counter::default(),
            manifests_sent_peer: Counter::default(),
            manifests_received_peer: Counter::default(),
            p2p_failed_proofs: Counter::default(),
            p2p_refused_non_member_requests: Counter::default(),
            p2p_refused_connections: Counter::default(),
            blobs_passed_through: Counter::default(),
            bytes_passed_through: Counter::default(),
            store_write_failures_disk_full: Counter::default(),
            store_write_failures_read_only: Counter::default(),
            store_write_failures_io: Counter::default(),
            store_write_failures_closed: Counter::default(),
            placement_prefetched_bytes_peer: Counter::default(),
            placement_prefetched_bytes_origin: Counter::default(),
            placement_prefetch_hit_bytes: Counter::default(),
            placement_prefetch_wasted_bytes: Counter::default(),
            placement_prefetch_over_budget: Counter::default(),
            placement_plan_runs: Counter::default(),
            placement_plan_busy_us: Counter::default(),
            placement_tag_checks: Counter::default(),
            placement_versions_prepositioned: Counter::default(),
            provider_records_withdrawn: Counter::default(),
            placement_tags_watched: Gauge::default(),
            p2p_members: Gauge::default(),
            p2p_connections: Gauge::default(),
            p2p_connections_quic: Gauge::default(),
            p2p_connections_tcp: Gauge::default(),
            p2p_routing_table_peers: Gauge::default(),
            p2p_provider_records_local: Gauge::default(),
            p2p_provider_records_remote: Gauge::default(),
            p2p_announced_holdings: Gauge::default(),
            p2p_followers: Gauge::default(),
            p2p_followers_sent_on: Counter::default(),
            p2p_gossip_published: Counter::default(),
            p2p_gossip_unpublished: Counter::default(),
            p2p_gossip_received: Counter::default(),
            p2p_gossip_rejected: Counter::default(),
        };
        metrics.register_all();
        metrics
    }
}

impl Metrics {
    /// Gives every metric its exported name and help. Counters are registered without `_total`:
    /// the encoder appends it.
    fn register_all(&mut self) {
        let m = &*self;
        let mut r = Registry::default();
        let up = Gauge::default();
        up.store(1, Ordering::Relaxed);
        r.register("shoal_up", "Always 1 while the node runs.", up);
        r.register(
            "shoal_http_requests",
            "Registry requests by route, method and status.",
            m.requests.clone(),
        );
        r.register(
            "shoal_http_request_duration_seconds",
            "Registry request latency by route.",
            m.request_duration.clone(),
        );
        r.register(
            "shoal_upstream_requests",
            "HTTP requests sent to upstreams, by upstream and kind.",
            m.upstream_requests.clone(),
        );
        r.register("shoal_upstream_failures", "Upstream requests that failed for good (5xx, 429 or transport errors after retries), by upstream.", m.upstream_failures.clone());
        r.register(
            "shoal_bytes_served",
            "Blob bytes sent to clients, by source.",
            labelled_counters(
                "source",
                vec![
                    ("cache", m.bytes_served_cache.clone()),
                    ("upstream", m.bytes_served_upstream.clone()),
                ],
            ),
        );
        r.register(
            "shoal_bytes_received",
            "Blob bytes received for ingest, by source.",
            labelled_counters(
                "source",
                vec![
                    ("peer", m.bytes_received_peer.clone()),
                    ("origin", m.bytes_received_origin.clone()),
                ],
            ),
        );
        r.register(
            "shoal_peer_bytes_received",
            "Blob bytes received from each peer.",
            m.peer_bytes_received.clone(),
        );
        r.register(
            "shoal_peer_bytes_sent",
            "Blob bytes sent to each peer.",
            m.peer_bytes_sent.clone(),
        );
        r.register(
            "shoal_shard_fetch_duration_seconds",
            "Time from asking a peer for a shard to holding its verified bytes.",
            m.shard_fetch_duration.clone(),
        );
        r.register(
            "shoal_bytes_sent_to_peers",
            "Blob bytes sent to peers.",
            m.bytes_sent_peer.clone(),
        );
        r.register(
            "shoal_peer_fetch_failures",
            "Blob fetches from a peer that failed.",
            m.peer_fetch_failures.clone(),
        );
        r.register(
            "shoal_hedged_requests",
            "Batches of shards asked of a second peer because the first was late.",
            m.hedged_requests.clone(),
        );
        r.register(
            "shoal_manifests_sent_to_peers",
            "Manifests sent to members from this node's cache.",
            m.manifests_sent_peer.clone(),
        );
        r.register(
            "shoal_manifests_received_from_peers",
            "Manifests received from members while the upstream was unavailable.",
            m.manifests_received_peer.clone(),
        );
        r.register(
            "shoal_p2p_failed_proofs",
            "Peers that failed the membership proof or did not give it in time.",
            m.p2p_failed_proofs.clone(),
        );
        r.register("shoal_p2p_refused_non_member_requests", "Requests (DHT, shard, manifest streams) refused because the peer had not proved membership.", m.p2p_refused_non_member_requests.clone());
        r.register(
            "shoal_p2p_refused_connections",
            "Inbound peer connections refused by a connection limit.",
            m.p2p_refused_connections.clone(),
        );
        r.register(
            "shoal_blobs_passed_through",
            "Blobs sent to their clients verified but not stored: the store could not take them.",
            m.blobs_passed_through.clone(),
        );
        r.register(
            "shoal_bytes_passed_through",
            "Blob bytes received while the store could not take them.",
            m.bytes_passed_through.clone(),
        );
        r.register(
            "shoal_placement_prefetched_bytes",
            "Pre-fetched blob bytes by source (peer, origin).",
            labelled_counters(
                "source",
                vec![
                    ("peer", m.placement_prefetched_bytes_peer.clone()),
                    ("origin", m.placement_prefetched_bytes_origin.clone()),
                ],
            ),
        );
        r.register(
            "shoal_placement_prefetch_hit_bytes",
            "Bytes of pre-fetched blobs later asked for by a client.",
            m.placement_prefetch_hit_bytes.clone(),
        );
        r.register(
            "shoal_placement_prefetch_wasted_bytes",
            "Bytes of pre-fetched blobs evicted before any client read them.",
            m.placement_prefetch_wasted_bytes.clone(),
        );
        r.register(
            "shoal_placement_prefetch_over_budget",
            "Pre-fetches postponed because the hourly origin budget was spent.",
            m.placement_prefetch_over_budget.clone(),
        );
        r.register(
            "shoal_placement_plan_runs",
            "Replication plans computed.",
            m.placement_plan_runs.clone(),
        );
        r.register(
            "shoal_placement_plan_seconds",
            "Time spent computing replication plans.",
            MicrosAsSeconds(m.placement_plan_busy_us.clone()),
        );
        r.register(
            "shoal_placement_tag_checks",
            "Checks of watched tags.",
            m.placement_tag_checks.clone(),
        );
        r.register(
            "shoal_placement_tags_watched",
            "Tags watched for new versions.",
            m.placement_tags_watched.clone(),
        );
        r.register(
            "shoal_placement_versions_prepositioned",
            "New versions of watched tags whose blobs were all pre-fetched.",
            m.placement_versions_prepositioned.clone(),
        );
        r.register(
            "shoal_provider_records_withdrawn",
            "Provider records withdrawn because their blob was evicted.",
            m.provider_records_withdrawn.clone(),
        );
        r.register(
            "shoal_store_write_failures",
            "Store writes that failed, by cause.",
            labelled_counters(
                "cause",
                vec![
                    ("disk_full", m.store_write_failures_disk_full.clone()),
                    ("read_only", m.store_write_failures_read_only.clone()),
                    ("io", m.store_write_failures_io.clone()),
                    ("closed", m.store_write_failures_closed.clone()),
                ],
            ),
        );
        r.register(
            "shoal_p2p_members",
            "Connected peers that have proved membership.",
            m.p2p_members.clone(),
        );
        r.register(
            "shoal_p2p_connections",
            "Open peer connections, members or not.",
            m.p2p_connections.clone(),
        );
        r.register(
            "shoal_p2p_transport_connections",
            "Open peer connections by transport (the one each member is reached over: see p2p::transport).",
            labelled_gauges(
                "transport",
                vec![
                    ("quic", m.p2p_connections_quic.clone()),
                    ("tcp", m.p2p_connections_tcp.clone()),
                ],
            ),
        );
        r.register(
            "shoal_p2p_routing_table_peers",
            "Entries in the Kademlia routing table.",
            m.p2p_routing_table_peers.clone(),
        );
        r.register(
            "shoal_p2p_announced_holdings",
            "Member and blob pairs learned from gossip announcements.",
            m.p2p_announced_holdings.clone(),
        );
        r.register(
            "shoal_p2p_followers",
            "Peers following one of this node's fetches shard by shard.",
            m.p2p_followers.clone(),
        );
        r.register("shoal_p2p_followers_sent_on", "Peers sent on to one of this node's followers because the fetch they asked for had as many followers as it serves.", m.p2p_followers_sent_on.clone());
        r.register(
            "shoal_p2p_gossip_published",
            "Gossip messages published.",
            m.p2p_gossip_published.clone(),
        );
        r.register(
            "shoal_p2p_gossip_unpublished",
            "Gossip messages not published (no member connected, or the swarm was busy).",
            m.p2p_gossip_unpublished.clone(),
        );
        r.register(
            "shoal_p2p_gossip_received",
            "Gossip messages received, before validation.",
            m.p2p_gossip_received.clone(),
        );
        r.register(
            "shoal_p2p_gossip_rejected",
            "Received gossip messages rejected by validation.",
            m.p2p_gossip_rejected.clone(),
        );
        r.register(
            "shoal_p2p_provider_records",
            "Provider records in the local DHT store, by provider (this node, or other members).",
            labelled_gauges(
                "provider",
                vec![
                    ("local", m.p2p_provider_records_local.clone()),
                    ("remote", m.p2p_provider_records_remote.clone()),
                ],
            ),
        );
        r.register(
            "shoal_cache_hits",
            "Requests answered from the store.",
            m.cache_hits.clone(),
        );
        r.register(
            "shoal_cache_misses",
            "Requests that needed an upstream.",
            m.cache_misses.clone(),
        );
        r.register(
            "shoal_ingested_bytes",
            "Bytes chunked, hashed and written.",
            m.ingested_bytes.clone(),
        );
        r.register(
            "shoal_ingest_busy_seconds",
            "Time spent ingesting (chunking, hashing, writing).",
            MicrosAsSeconds(m.ingest_busy_us.clone()),
        );
        r.register(
            "shoal_ingests_deferred_for_client",
            "Fetches made ahead of demand that a client joined; their shards then became durable after the client's last byte.",
            m.ingests_deferred_for_client.clone(),
        );
        r.register(
            "shoal_serve_busy_seconds",
            "Time spent reading and verifying shards for responses.",
            MicrosAsSeconds(m.serve_busy_us.clone()),
        );
        r.register(
            "shoal_blobs_committed",
            "Blobs verified and committed.",
            m.blobs_committed.clone(),
        );
        r.register(
            "shoal_digest_mismatches",
            "Blobs whose bytes did not match their digest.",
            m.digest_mismatches.clone(),
        );
        r.register("shoal_refetches_after_bad_peer", "Blobs fetched again, without the peer, because a peer's bytes did not match their digest.", m.refetches_after_bad_peer.clone());
        r.register("shoal_rehomes", "Fetches whose parent went away mid-blob and went on from another member of the blob's tree instead of the origin.", m.rehomes.clone());
        r.register(
            "shoal_shard_verify_failures",
            "Shards that failed verification when served.",
            m.shard_verify_failures.clone(),
        );
        r.register(
            "shoal_shards_healed",
            "Shards fetched again and put back.",
            m.shards_healed.clone(),
        );
        r.register(
            "shoal_heal_failures",
            "Shards that could not be healed.",
            m.heal_failures.clone(),
        );
        r.register(
            "shoal_stale_tags_served",
            "Tags served stale while the upstream was down.",
            m.stale_tags_served.clone(),
        );
        r.register(
            "shoal_rebuild_held_tags_served",
            "Tag requests answered with the digest a rebuild holds the tag at.",
            m.rebuild_held_tags_served.clone(),
        );
        r.register(
            "shoal_evictions",
            "Blobs evicted for the disk budget.",
            m.evictions.clone(),
        );
        r.register(
            "shoal_single_flight_joins",
            "Requests that joined a fetch in flight.",
            m.single_flight_joins.clone(),
        );
        r.register(
            "shoal_store_blobs",
            "Blobs in the store.",
            m.store_blobs.clone(),
        );
        r.register(
            "shoal_store_bytes",
            "Bytes of distinct shards in the store.",
            m.store_bytes.clone(),
        );
        self.registry = r;
    }

    /// Records one finished request.
    pub fn record_request(
        &self,
        route: &'static str,
        method: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = vec![
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&vec![("route", route.to_owned())])
            .observe(elapsed.as_secs_f64());
    }

    /// Records one HTTP request sent to an upstream.
    pub fn record_upstream_request(&self, upstream: &str, kind: &'static str) {
        let labels = vec![("upstream", upstream.to_owned()), ("kind", kind.to_owned())];
        self.upstream_requests.get_or_create(&labels).inc();
        *lock(&self.upstream_requests_by_kind)
            .entry(kind)
            .or_insert(0) += 1;
    }

    /// Upstream requests of one kind, over all upstreams (for tests and logs).
    pub fn upstream_requests(&self, kind: &str) -> u64 {
        lock(&self.upstream_requests_by_kind)
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Records an upstream request that failed for good: a server error, 429 or transport error
    /// after the last retry. Upstream names come from the config, so the series are bounded.
    pub fn record_upstream_failure(&self, upstream: &str) {
        let labels = vec![("upstream", upstream.to_owned())];
        self.upstream_failures.get_or_create(&labels).inc();
        *lock(&self.upstream_failures_by_name)
            .entry(upstream.to_owned())
            .or_insert(0) += 1;
    }

    /// Failed upstream requests so far, by upstream.
    pub fn upstream_failures(&self) -> BTreeMap<String, u64> {
        lock(&self.upstream_failures_by_name).clone()
    }

    /// Records blob bytes sent to `peer`.
    pub fn record_bytes_sent_to_peer(&self, peer: &libp2p::PeerId, n: u64) {
        self.bytes_sent_peer.add(n);
        let labels = self.peer_labels(peer);
        self.peer_bytes_sent.get_or_create(&labels).add(n);
    }

    /// Records blob bytes received from `peer` (each shard BLAKE3-checked), and how long the
    /// shard took from request to verified bytes.
    /// The latency is left out for shards of a blob the peer was still fetching (they wait on
    /// the peer's own source).
    pub fn record_shard_from_peer(&self, peer: &libp2p::PeerId, n: u64, latency: Option<Duration>) {
        self.bytes_received_peer.add(n);
        let labels = self.peer_labels(peer);
        self.peer_bytes_received.get_or_create(&labels).add(n);
        if let Some(latency) = latency {
            self.shard_fetch_duration.observe(latency.as_secs_f64());
        }
    }

    /// The `peer` label for a peer: its id while fewer than [`MAX_PEERS_TRACKED`] peers have
    /// their own series, else "other".
    fn peer_labels(&self, peer: &libp2p::PeerId) -> Labels {
        let key = peer.to_string();
        let mut tracked = lock(&self.peers_tracked);
        let key = if tracked.contains(&key) {
            key
        } else if tracked.len() < MAX_PEERS_TRACKED {
            tracked.insert(key.clone());
            key
        } else {
            "other".to_owned()
        };
        vec![("peer", key)]
    }

    /// Records blob bytes sent to a client.
    pub fn record_bytes_served(&self, source: ByteSource, n: u64) {
        match source {
            ByteSource::Cache => self.bytes_served_cache.add(n),
            ByteSource::Upstream => self.bytes_served_upstream.add(n),
        }
    }

    /// Records a failed store write by its cause.
    pub fn record_store_write_failure(&self, cause: crate::store::WriteFailure) {
        use crate::store::WriteFailure;
        match cause {
            WriteFailure::DiskFull => self.store_write_failures_disk_full.inc(),
            WriteFailure::ReadOnly => self.store_write_failures_read_only.inc(),
            WriteFailure::Io => self.store_write_failures_io.inc(),
            WriteFailure::Closed => self.store_write_failures_closed.inc(),
        }
    }

    /// The OpenMetrics text exposition of every metric (serve it as [`CONTENT_TYPE`]).
    pub fn render(&self, store: StoreStats) -> String {
        self.store_blobs.store(store.blobs, Ordering::Relaxed);
        self.store_bytes.store(store.bytes, Ordering::Relaxed);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text_with_histograms() {
        let metrics = Metrics::default();
        metrics.record_request("blob", "GET", 200, Duration::from_millis(3));
        metrics.record_upstream_request("docker.io", "blob");
        metrics.cache_hits.inc();
        metrics.record_bytes_served(ByteSource::Cache, 10);
        let peer = libp2p::PeerId::random();
        metrics.record_shard_from_peer(&peer, 7, Some(Duration::from_millis(2)));
        metrics.record_bytes_sent_to_peer(&peer, 5);
        metrics.ingest_busy_us.add(1_500_000);
        let text = metrics.render(StoreStats {
            blobs: 2,
            bytes: 30,
        });
        assert!(
            text.contains(
                "shoal_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("shoal_upstream_requests_total{upstream=\"docker.io\",kind=\"blob\"} 1")
        );
        assert_eq!(metrics.upstream_requests("blob"), 1);
        assert!(text.contains("shoal_bytes_served_total{source=\"cache\"} 10"));
        assert!(text.contains("shoal_bytes_served_total{source=\"upstream\"} 0"));
        assert!(text.contains("shoal_cache_hits_total 1"));
        assert!(text.contains(&format!(
            "shoal_peer_bytes_received_total{{peer=\"{peer}\"}} 7"
        )));
        assert!(text.contains(&format!("shoal_peer_bytes_sent_total{{peer=\"{peer}\"}} 5")));
        assert!(text.contains("shoal_bytes_received_total{source=\"peer\"} 7"));
        assert!(text.contains("shoal_ingest_busy_seconds_total 1.5"));
        assert!(text.contains("shoal_store_bytes 30"));
        assert!(text.contains("shoal_up 1"));
        // 3 ms falls in the 4 ms bucket and every larger one, not in the 2 ms one.
        assert!(
            text.contains(
                "shoal_http_request_duration_seconds_bucket{le=\"0.002\",route=\"blob\"} 0"
            ) || text.contains(
                "shoal_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.002\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("shoal_http_request_duration_seconds_count{route=\"blob\"} 1"));
        assert!(text.contains("shoal_shard_fetch_duration_seconds_count 1"));
        assert!(text.trim_end().ends_with("# EOF"));

        metrics
            .p2p_provider_records_remote
            .store(4, Ordering::Relaxed);
        metrics.p2p_gossip_rejected.inc();
        metrics.p2p_followers.fetch_add(2, Ordering::Relaxed);
        metrics.p2p_followers_sent_on.inc();
        let text = metrics.render(StoreStats::default());
        assert!(text.contains("shoal_p2p_followers 2"));
        assert!(text.contains("shoal_p2p_followers_sent_on_total 1"));
        assert!(text.contains("shoal_p2p_provider_records{provider=\"remote\"} 4"));
        assert!(text.contains("shoal_p2p_provider_records{provider=\"local\"} 0"));
        assert!(text.contains("shoal_p2p_gossip_rejected_total 1"));
        assert!(text.contains("shoal_p2p_connections 0"));
        assert!(text.contains("shoal_store_bytes 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn peer_series_are_bounded() {
        let metrics = Metrics::default();
        for _ in 0..MAX_PEERS_TRACKED + 5 {
            metrics.record_bytes_sent_to_peer(&libp2p::PeerId::random(), 1);
        }
        let text = metrics.render(StoreStats::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("shoal_peer_bytes_sent_total{"))
            .count();
        assert_eq!(series, MAX_PEERS_TRACKED + 1);
        assert!(text.contains("shoal_peer_bytes_sent_total{peer=\"other\"} 5"));
        assert!(text.contains(&format!(
            "shoal_bytes_sent_to_peers_total {}",
            MAX_PEERS_TRACKED + 5
        )));
    }
}
