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
    /// Manifests sent to members from this node's cache.
    pub manifests_sent_peer: Counter,
    /// Manifests received from members (verified) while the upstream was unavailable.
    pub manifests_received_peer: Counter,
    /// Peers that failed the membership proof or did not give it in time.
    pub p2p_failed_proofs: Counter,
    /// Connected peers that have proved membership.
    pub p2p_members: AtomicU64,
}

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
                "shoal_p2p_members",
                "gauge",
                "Connected peers that have proved membership.",
                self.p2p_members.load(Ordering::Relaxed),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let hits = self.cache_hits.get();
        let misses = self.cache_misses.get();
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let ingest_bps = rate(self.ingested_bytes.get(), self.ingest_busy_us.get());
        let serve_bps = rate(self.bytes_served_cache.get(), self.serve_busy_us.get());
        let simple: [(&str, &str, &str, String); 19] = [
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
        assert!(text.contains("shoal_store_bytes 30"));
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
