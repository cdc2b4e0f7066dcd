//! Counters, gauges and latency histograms, rendered in the Prometheus text format.
//!
//! Owns only numbers: every subsystem records into one shared [`Metrics`]; the admin endpoint
//! renders it. Latency percentiles come from hdrhistogram (microseconds, 3 significant figures).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::store::StoreStats;

/// Where the bytes of a blob response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ByteSource {
    /// The local shard store.
    Cache,
    /// An upstream registry (streamed while ingesting).
    Upstream,
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// All of the node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    latency_us: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    upstream_requests: Mutex<BTreeMap<(String, &'static str), u64>>,
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
    /// Time spent reading and verifying shards for responses, in microseconds.
    pub serve_busy_us: Counter,
    /// Blobs committed.
    pub blobs_committed: Counter,
    /// Blobs whose bytes did not match their digest.
    pub digest_mismatches: Counter,
    /// Blobs fetched again because a peer's bytes did not match their digest.
    pub refetches_after_bad_peer: Counter,
    /// Shards that failed BLAKE3 verification (or were missing) when served.
    pub shard_verify_failures: Counter,
    /// Shards fetched again from an upstream and put back.
    pub shards_healed: Counter,
    /// Shards that could not be healed (the response was aborted).
    pub heal_failures: Counter,
    /// Tags answered from a stale cache entry because the upstream was unreachable.
    pub stale_tags_served: Counter,
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
    /// Connected peers that have proved membership.
    pub p2p_members: AtomicU64,
    /// Blob bytes exchanged with each peer: (received from it, sent to it).
    peer_bytes: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Time from asking a peer for a shard to holding its verified bytes, in microseconds.
    shard_fetch_us: Mutex<Option<Histogram<u64>>>,
    /// Open peer connections (members or not).
    pub p2p_connections: AtomicU64,
    /// Entries in Kademlia's routing table (members only).
    pub p2p_routing_table_peers: AtomicU64,
    /// Provider records in the local DHT store naming this node.
    pub p2p_provider_records_local: AtomicU64,
    /// Provider records in the local DHT store that other members asked this node to keep.
    pub p2p_provider_records_remote: AtomicU64,
    /// (member, blob) holdings learned from gossip announcements.
    pub p2p_announced_holdings: AtomicU64,
    /// Peers following one of this node's fetches shard by shard now.
    pub p2p_followers: AtomicU64,
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
    pub placement_tags_watched: AtomicU64,
    /// New versions of watched tags whose blobs were all pre-fetched.
    pub placement_versions_prepositioned: Counter,
    /// Provider records withdrawn because their blob was evicted.
    pub provider_records_withdrawn: Counter,
}

/// Peers tracked one by one in the per-peer byte counters; the rest are summed under "other".
const MAX_PEERS_TRACKED: usize = 1024;

impl Metrics {
    /// Records one finished request.
    pub fn record_request(
        &self,
        route: &'static str,
        method: &str,
        status: u16,
        elapsed: Duration,
    ) {
        *lock(&self.requests)
            .entry((route, method.to_owned(), status))
            .or_insert(0) += 1;
        let mut latency = lock(&self.latency_us);
        let histogram = latency.entry(route).or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds are valid")
        });
        histogram.saturating_record(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Records one HTTP request sent to an upstream.
    pub fn record_upstream_request(&self, upstream: &str, kind: &'static str) {
        *lock(&self.upstream_requests)
            .entry((upstream.to_owned(), kind))
            .or_insert(0) += 1;
    }

    /// Upstream requests of one kind, over all upstreams (for tests and logs).
    pub fn upstream_requests(&self, kind: &str) -> u64 {
        lock(&self.upstream_requests)
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Records blob bytes sent to `peer`.
    pub fn record_bytes_sent_to_peer(&self, peer: &libp2p::PeerId, n: u64) {
        self.bytes_sent_peer.add(n);
        self.peer_entry(peer, |entry| entry.1 += n);
    }

    /// Records blob bytes received from `peer` (each shard BLAKE3-checked), and how long the
    /// shard took from request to verified bytes.
    /// The latency is left out for shards of a blob the peer was still fetching (they wait on
    /// the peer's own source).
    pub fn record_shard_from_peer(&self, peer: &libp2p::PeerId, n: u64, latency: Option<Duration>) {
        self.bytes_received_peer.add(n);
        self.peer_entry(peer, |entry| entry.0 += n);
        let Some(latency) = latency else { return };
        lock(&self.shard_fetch_us)
            .get_or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds are valid")
            })
            .saturating_record(latency.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    fn peer_entry(&self, peer: &libp2p::PeerId, update: impl FnOnce(&mut (u64, u64))) {
        let mut peers = lock(&self.peer_bytes);
        let key = peer.to_string();
        let key = if peers.contains_key(&key) || peers.len() < MAX_PEERS_TRACKED {
            key
        } else {
            "other".to_owned()
        };
        update(peers.entry(key).or_default());
    }

    /// Records blob bytes sent to a client.
    pub fn record_bytes_served(&self, source: ByteSource, n: u64) {
        match source {
            ByteSource::Cache => self.bytes_served_cache.add(n),
            ByteSource::Upstream => self.bytes_served_upstream.add(n),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, store: StoreStats) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "shoal_http_requests_total",
            "counter",
            "Registry requests by route, method and status.",
        );
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "shoal_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "shoal_http_request_duration_seconds",
            "summary",
            "Registry request latency by route (hdrhistogram).",
        );
        for (route, histogram) in lock(&self.latency_us).iter() {
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                let seconds = histogram.value_at_quantile(quantile) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "shoal_http_request_duration_seconds{{route=\"{route}\",quantile=\"{quantile}\"}} {seconds}"
                );
            }
            let _ = writeln!(
                out,
                "shoal_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.len()
            );
        }
        header(
            &mut out,
            "shoal_upstream_requests_total",
            "counter",
            "HTTP requests sent to upstreams, by kind.",
        );
        for ((upstream, kind), n) in lock(&self.upstream_requests).iter() {
            let _ = writeln!(
                out,
                "shoal_upstream_requests_total{{upstream=\"{upstream}\",kind=\"{kind}\"}} {n}"
            );
        }
        header(
            &mut out,
            "shoal_bytes_served_total",
            "counter",
            "Blob bytes sent to clients, by source.",
        );
        let _ = writeln!(
            out,
            "shoal_bytes_served_total{{source=\"cache\"}} {}",
            self.bytes_served_cache.get()
        );
        let _ = writeln!(
            out,
            "shoal_bytes_served_total{{source=\"upstream\"}} {}",
            self.bytes_served_upstream.get()
        );
        header(
            &mut out,
            "shoal_bytes_received_total",
            "counter",
            "Blob bytes received for ingest, by source.",
        );
        let _ = writeln!(
            out,
            "shoal_bytes_received_total{{source=\"peer\"}} {}",
            self.bytes_received_peer.get()
        );
        let _ = writeln!(
            out,
            "shoal_bytes_received_total{{source=\"origin\"}} {}",
            self.bytes_received_origin.get()
        );
        header(
            &mut out,
            "shoal_peer_bytes_received_total",
            "counter",
            "Blob bytes received from each peer.",
        );
        let peers = lock(&self.peer_bytes).clone();
        for (peer, (received, _)) in &peers {
            let _ = writeln!(
                out,
                "shoal_peer_bytes_received_total{{peer=\"{peer}\"}} {received}"
            );
        }
        header(
            &mut out,
            "shoal_peer_bytes_sent_total",
            "counter",
            "Blob bytes sent to each peer.",
        );
        for (peer, (_, sent)) in &peers {
            let _ = writeln!(out, "shoal_peer_bytes_sent_total{{peer=\"{peer}\"}} {sent}");
        }
        header(
            &mut out,
            "shoal_shard_fetch_duration_seconds",
            "summary",
            "Time from asking a peer for a shard to holding its verified bytes (hdrhistogram).",
        );
        if let Some(histogram) = lock(&self.shard_fetch_us).as_ref() {
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                let seconds = histogram.value_at_quantile(quantile) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "shoal_shard_fetch_duration_seconds{{quantile=\"{quantile}\"}} {seconds}"
                );
            }
            let _ = writeln!(
                out,
                "shoal_shard_fetch_duration_seconds_count {}",
                histogram.len()
            );
        }
        for (name, kind, help, value) in [
            (
                "shoal_bytes_sent_to_peers_total",
                "counter",
                "Blob bytes sent to peers.",
                self.bytes_sent_peer.get(),
            ),
            (
                "shoal_peer_fetch_failures_total",
                "counter",
                "Blob fetches from a peer that failed.",
                self.peer_fetch_failures.get(),
            ),
            (
                "shoal_hedged_requests_total",
                "counter",
                "Batches of shards asked of a second peer because the first was late.",
                self.hedged_requests.get(),
            ),
            (
                "shoal_manifests_sent_to_peers_total",
                "counter",
                "Manifests sent to members from this node's cache.",
                self.manifests_sent_peer.get(),
            ),
            (
                "shoal_manifests_received_from_peers_total",
                "counter",
                "Manifests received from members while the upstream was unavailable.",
                self.manifests_received_peer.get(),
            ),
            (
                "shoal_p2p_failed_proofs_total",
                "counter",
                "Peers that failed the membership proof or did not give it in time.",
                self.p2p_failed_proofs.get(),
            ),
            (
                "shoal_p2p_refused_non_member_requests_total",
                "counter",
                "Requests (DHT, shard, manifest streams) refused because the peer had not proved membership.",
                self.p2p_refused_non_member_requests.get(),
            ),
            (
                "shoal_p2p_members",
                "gauge",
                "Connected peers that have proved membership.",
                self.p2p_members.load(Ordering::Relaxed),
            ),
            (
                "shoal_p2p_connections",
                "gauge",
                "Open peer connections, members or not.",
                self.p2p_connections.load(Ordering::Relaxed),
            ),
            (
                "shoal_p2p_routing_table_peers",
                "gauge",
                "Entries in the Kademlia routing table.",
                self.p2p_routing_table_peers.load(Ordering::Relaxed),
            ),
            (
                "shoal_p2p_announced_holdings",
                "gauge",
                "Member and blob pairs learned from gossip announcements.",
                self.p2p_announced_holdings.load(Ordering::Relaxed),
            ),
            (
                "shoal_p2p_followers",
                "gauge",
                "Peers following one of this node's fetches shard by shard.",
                self.p2p_followers.load(Ordering::Relaxed),
            ),
            (
                "shoal_p2p_followers_sent_on_total",
                "counter",
                "Peers sent on to one of this node's followers because the fetch they asked for had as many followers as it serves.",
                self.p2p_followers_sent_on.get(),
            ),
            (
                "shoal_p2p_gossip_published_total",
                "counter",
                "Gossip messages published.",
                self.p2p_gossip_published.get(),
            ),
            (
                "shoal_p2p_gossip_unpublished_total",
                "counter",
                "Gossip messages not published (no member connected, or the swarm was busy).",
                self.p2p_gossip_unpublished.get(),
            ),
            (
                "shoal_p2p_gossip_received_total",
                "counter",
                "Gossip messages received, before validation.",
                self.p2p_gossip_received.get(),
            ),
            (
                "shoal_p2p_gossip_rejected_total",
                "counter",
                "Received gossip messages rejected by validation.",
                self.p2p_gossip_rejected.get(),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "shoal_p2p_provider_records",
            "gauge",
            "Provider records in the local DHT store, by provider (this node, or other members).",
        );
        let _ = writeln!(
            out,
            "shoal_p2p_provider_records{{provider=\"local\"}} {}",
            self.p2p_provider_records_local.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "shoal_p2p_provider_records{{provider=\"remote\"}} {}",
            self.p2p_provider_records_remote.load(Ordering::Relaxed)
        );
        let hits = self.cache_hits.get();
        let misses = self.cache_misses.get();
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let ingest_bps = rate(self.ingested_bytes.get(), self.ingest_busy_us.get());
        let serve_bps = rate(self.bytes_served_cache.get(), self.serve_busy_us.get());
        let simple: [(&str, &str, &str, String); 29] = [
            (
                "shoal_cache_hits_total",
                "counter",
                "Requests answered from the store.",
                hits.to_string(),
            ),
            (
                "shoal_cache_misses_total",
                "counter",
                "Requests that needed an upstream.",
                misses.to_string(),
            ),
            (
                "shoal_cache_hit_ratio",
                "gauge",
                "Hits over hits plus misses since start.",
                ratio.to_string(),
            ),
            (
                "shoal_ingested_bytes_total",
                "counter",
                "Bytes chunked, hashed and written.",
                self.ingested_bytes.get().to_string(),
            ),
            (
                "shoal_ingest_busy_seconds_total",
                "counter",
                "Time spent ingesting.",
                (self.ingest_busy_us.get() as f64 / 1e6).to_string(),
            ),
            (
                "shoal_ingest_throughput_bytes_per_second",
                "gauge",
                "Ingested bytes over ingest busy time.",
                ingest_bps.to_string(),
            ),
            (
                "shoal_serve_busy_seconds_total",
                "counter",
                "Time spent reading and verifying shards.",
                (self.serve_busy_us.get() as f64 / 1e6).to_string(),
            ),
            (
                "shoal_serve_throughput_bytes_per_second",
                "gauge",
                "Cache bytes served over serve busy time.",
                serve_bps.to_string(),
            ),
            (
                "shoal_blobs_committed_total",
                "counter",
                "Blobs verified and committed.",
                self.blobs_committed.get().to_string(),
            ),
            (
                "shoal_digest_mismatches_total",
                "counter",
                "Blobs whose bytes did not match their digest.",
                self.digest_mismatches.get().to_string(),
            ),
            (
                "shoal_refetches_after_bad_peer_total",
                "counter",
                "Blobs fetched again, without the peer, because a peer's bytes did not match their digest.",
                self.refetches_after_bad_peer.get().to_string(),
            ),
            (
                "shoal_shard_verify_failures_total",
                "counter",
                "Shards that failed verification when served.",
                self.shard_verify_failures.get().to_string(),
            ),
            (
                "shoal_shards_healed_total",
                "counter",
                "Shards fetched again and put back.",
                self.shards_healed.get().to_string(),
            ),
            (
                "shoal_heal_failures_total",
                "counter",
                "Shards that could not be healed.",
                self.heal_failures.get().to_string(),
            ),
            (
                "shoal_stale_tags_served_total",
                "counter",
                "Tags served stale while the upstream was down.",
                self.stale_tags_served.get().to_string(),
            ),
            (
                "shoal_evictions_total",
                "counter",
                "Blobs evicted for the disk budget.",
                self.evictions.get().to_string(),
            ),
            (
                "shoal_single_flight_joins_total",
                "counter",
                "Requests that joined a fetch in flight.",
                self.single_flight_joins.get().to_string(),
            ),
            (
                "shoal_placement_prefetch_hit_bytes_total",
                "counter",
                "Bytes of pre-fetched blobs later asked for by a client.",
                self.placement_prefetch_hit_bytes.get().to_string(),
            ),
            (
                "shoal_placement_prefetch_wasted_bytes_total",
                "counter",
                "Bytes of pre-fetched blobs evicted before any client read them.",
                self.placement_prefetch_wasted_bytes.get().to_string(),
            ),
            (
                "shoal_placement_prefetch_over_budget_total",
                "counter",
                "Pre-fetches postponed because the hourly origin budget was spent.",
                self.placement_prefetch_over_budget.get().to_string(),
            ),
            (
                "shoal_placement_plan_runs_total",
                "counter",
                "Replication plans computed.",
                self.placement_plan_runs.get().to_string(),
            ),
            (
                "shoal_placement_plan_seconds_total",
                "counter",
                "Time spent computing replication plans.",
                (self.placement_plan_busy_us.get() as f64 / 1e6).to_string(),
            ),
            (
                "shoal_placement_tag_checks_total",
                "counter",
                "Checks of watched tags.",
                self.placement_tag_checks.get().to_string(),
            ),
            (
                "shoal_placement_tags_watched",
                "gauge",
                "Tags watched for new versions.",
                self.placement_tags_watched.load(Ordering::Relaxed).to_string(),
            ),
            (
                "shoal_placement_versions_prepositioned_total",
                "counter",
                "New versions of watched tags whose blobs were all pre-fetched.",
                self.placement_versions_prepositioned.get().to_string(),
            ),
            (
                "shoal_provider_records_withdrawn_total",
                "counter",
                "Provider records withdrawn because their blob was evicted.",
                self.provider_records_withdrawn.get().to_string(),
            ),
            (
                "shoal_store_blobs",
                "gauge",
                "Blobs in the store.",
                store.blobs.to_string(),
            ),
            (
                "shoal_store_bytes",
                "gauge",
                "Bytes of distinct shards in the store.",
                store.bytes.to_string(),
            ),
            (
                "shoal_up",
                "gauge",
                "Always 1 while the node runs.",
                "1".to_string(),
            ),
        ];
        for (name, kind, help, value) in simple {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "shoal_placement_prefetched_bytes_total",
            "counter",
            "Pre-fetched blob bytes by source (peer, origin).",
        );
        for (source, counter) in [
            ("peer", &self.placement_prefetched_bytes_peer),
            ("origin", &self.placement_prefetched_bytes_origin),
        ] {
            let _ = writeln!(
                out,
                "shoal_placement_prefetched_bytes_total{{source=\"{source}\"}} {}",
                counter.get()
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn rate(bytes: u64, busy_us: u64) -> f64 {
    if busy_us == 0 {
        0.0
    } else {
        bytes as f64 / (busy_us as f64 / 1e6)
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
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.record_request("blob", "GET", 200, Duration::from_millis(3));
        metrics.record_upstream_request("docker.io", "blob");
        metrics.cache_hits.inc();
        metrics.record_bytes_served(ByteSource::Cache, 10);
        let peer = libp2p::PeerId::random();
        metrics.record_shard_from_peer(&peer, 7, Some(Duration::from_millis(2)));
        metrics.record_bytes_sent_to_peer(&peer, 5);
        let text = metrics.render(StoreStats {
            blobs: 2,
            bytes: 30,
        });
        assert!(text
            .contains("shoal_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1"));
        assert!(
            text.contains("shoal_upstream_requests_total{upstream=\"docker.io\",kind=\"blob\"} 1")
        );
        assert!(text.contains("shoal_bytes_served_total{source=\"cache\"} 10"));
        assert!(text.contains("shoal_cache_hit_ratio 1"));
        assert!(text.contains(&format!(
            "shoal_peer_bytes_received_total{{peer=\"{peer}\"}} 7"
        )));
        assert!(text.contains(&format!("shoal_peer_bytes_sent_total{{peer=\"{peer}\"}} 5")));
        assert!(text.contains("shoal_bytes_received_total{source=\"peer\"} 7"));
        assert!(text.contains("shoal_shard_fetch_duration_seconds{quantile=\"0.5\"} 0.002"));
        assert!(text.contains("shoal_store_bytes 30"));
        metrics
            .p2p_provider_records_remote
            .store(4, Ordering::Relaxed);
        metrics.p2p_gossip_rejected.inc();
        metrics.p2p_followers.store(2, Ordering::Relaxed);
        metrics.p2p_followers_sent_on.inc();
        let text = metrics.render(StoreStats::default());
        assert!(text.contains("shoal_p2p_followers 2"));
        assert!(text.contains("shoal_p2p_followers_sent_on_total 1"));
        assert!(text.contains("shoal_p2p_provider_records{provider=\"remote\"} 4"));
        assert!(text.contains("shoal_p2p_provider_records{provider=\"local\"} 0"));
        assert!(text.contains("shoal_p2p_gossip_rejected_total 1"));
        assert!(text.contains("shoal_p2p_connections 0"));
        assert!(
            text.contains(
                "shoal_http_request_duration_seconds{route=\"blob\",quantile=\"0.99\"} 0.003"
            ),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }
}
