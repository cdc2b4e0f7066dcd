//! The load test (`shoal-testnet load`, `tests/load.rs`): many concurrent clients on one node
//! asking for small cached blobs and manifests, while slow clients hold connections open without
//! ever finishing their request headers (slowloris).
//!
//! The node first caches one image of small layers (its blobs and manifests fetched once). Then
//! [`LoadOptions::clients`] clients, each on its own keep-alive connection, send requests one
//! after another for [`LoadOptions::duration`]: manifests by tag and by digest, whole blobs. Every
//! body is checked against the pushed bytes' sha256; a wrong body, a broken one, an error status
//! or a failed connection is an error. Meanwhile [`LoadOptions::slow_clients`] connections send
//! the first line of a request and then one header byte every [`SLOW_BYTE_EVERY`], never the
//! blank line that ends the headers: the node must close each of them at its header deadline
//! (`http::ServeLimits::header_timeout`), whatever the trickle. The node's resident memory and
//! open descriptors are sampled throughout; latencies are reported as percentiles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::image::{push_image, ImageSpec};
use crate::node::{Node, NodeConfig};
use crate::origin::Origin;
use crate::soak::{open_fds, resident_bytes};

/// The node's header deadline (`http::ServeLimits::header_timeout`'s default).
pub const HEADER_DEADLINE: Duration = Duration::from_secs(30);
/// How long past the header deadline a slow client waits to be cut before it counts as not cut.
pub const CUT_GRACE: Duration = Duration::from_secs(60);
/// How often a slow client sends one more header byte.
pub const SLOW_BYTE_EVERY: Duration = Duration::from_secs(2);
/// Bound on one request of a fast client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent fast clients.
    pub clients: usize,
    /// Slow clients that never finish their headers.
    pub slow_clients: usize,
    /// How long the fast clients send requests.
    pub duration: Duration,
    /// Seed of the image and the clients' choices.
    pub seed: u64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// What the load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Fast clients.
    pub clients: usize,
    /// Slow clients.
    pub slow_clients: usize,
    /// Seconds the fast clients ran.
    pub seconds: f64,
    /// Requests completed with the right bytes.
    pub ok: u64,
    /// Requests that failed in any way (error status, broken or wrong body, no connection).
    pub errors: u64,
    /// The first few errors, for diagnosis.
    pub error_samples: Vec<String>,
    /// Completed requests per second.
    pub requests_per_sec: f64,
    /// Latency of completed requests.
    pub latency: Latency,
    /// Slow clients the node closed at its header deadline.
    pub slow_clients_cut: usize,
    /// Longest a slow client was kept before it was cut, seconds.
    pub slowest_cut_secs: f64,
    /// Node resident memory before the load, bytes.
    pub rss_before_bytes: u64,
    /// Highest resident memory seen during the load, bytes.
    pub rss_max_bytes: u64,
    /// Open descriptors before the load.
    pub fds_before: u64,
    /// Most open descriptors seen during the load.
    pub fds_max: u64,
}

impl LoadReport {
    /// The properties the load must keep: no errors, every slow client cut.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.errors > 0 {
            failures.push(format!(
                "{} requests failed, e.g. {:?}",
                self.errors, self.error_samples
            ));
        }
        if self.ok == 0 {
            failures.push("no request completed".to_string());
        }
        if self.slow_clients_cut != self.slow_clients {
            failures.push(format!(
                "only {} of {} slow clients were cut at the header deadline",
                self.slow_clients_cut, self.slow_clients
            ));
        }
        failures
    }
}

/// A thing to ask for and the digest its body must have.
#[derive(Clone)]
struct Target {
    path: String,
    accept: Option<&'static str>,
    digest: String,
}

/// Starts an origin and one node, caches an image of small layers, and runs the load.
pub async fn run(options: &LoadOptions) -> Result<LoadReport> {
    let origin = Origin::start().await?;
    let mut spec = ImageSpec::new("load/small", "v1", options.seed);
    for i in 0..8 {
        spec = spec.layer((4 << 10) << (i % 5), 70);
    }
    let image = push_image(&origin, spec).await?;
    let node = Node::start(NodeConfig::for_origin(&origin)).await?;
    let ns = crate::REGISTRY_HOST;
    let mut targets = Vec::new();
    for blob in image.blobs() {
        targets.push(Target {
            path: format!("/v2/{}/blobs/{}?ns={ns}", image.repo, blob.digest),
            accept: None,
            digest: blob.digest.clone(),
        });
    }
    let index = image.index.as_ref().context("the image has an index")?;
    let accept =
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
    targets.push(Target {
        path: format!("/v2/{}/manifests/{}?ns={ns}", image.repo, image.tag),
        accept: Some(accept),
        digest: index.digest.clone(),
    });
    targets.push(Target {
        path: format!(
            "/v2/{}/manifests/{}?ns={ns}",
            image.repo, image.manifest.digest
        ),
        accept: Some(accept),
        digest: image.manifest.digest.clone(),
    });
    // Warm: every target once, so the load reads only the cache.
    let warm = reqwest::Client::new();
    for target in &targets {
        let result = request(&warm, node.registry_addr(), target).await;
        ensure!(
            result.is_ok(),
            "warming {}: {:?}",
            target.path,
            result.err()
        );
    }
    let pid = node.pid().context("the node runs")?;
    let rss_before = resident_bytes(pid).unwrap_or(0);
    let fds_before = open_fds(pid).unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(pid, stop.clone()));
    let slow: Vec<_> = (0..options.slow_clients)
        .map(|_| tokio::spawn(slow_client(node.registry_addr())))
        .collect();
    let started = Instant::now();
    let deadline = started + options.duration;
    let targets = Arc::new(targets);
    let fast: Vec<_> = (0..options.clients)
        .map(|i| {
            tokio::spawn(fast_client(
                options.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9),
                node.registry_addr(),
                targets.clone(),
                deadline,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for client in fast {
        let (done, failed) = client.await.context("a load client panicked")?;
        latencies.extend(done);
        errors.extend(failed);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut cut = 0;
    let mut slowest_cut = Duration::ZERO;
    for client in slow {
        if let Some(after) = client.await.context("a slow client panicked")? {
            cut += 1;
            slowest_cut = slowest_cut.max(after);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (rss_max, fds_max) = sampler.await.context("the sampler panicked")?;
    latencies.sort();
    let ok = latencies.len() as u64;
    Ok(LoadReport {
        clients: options.clients,
        slow_clients: options.slow_clients,
        seconds,
        ok,
        errors: errors.len() as u64,
        error_samples: errors.into_iter().take(5).collect(),
        requests_per_sec: ok as f64 / options.duration.as_secs_f64().max(0.001),
        latency: Latency {
            p50_ms: percentile(&latencies, 0.50),
            p90_ms: percentile(&latencies, 0.90),
            p99_ms: percentile(&latencies, 0.99),
            max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        },
        slow_clients_cut: cut,
        slowest_cut_secs: slowest_cut.as_secs_f64(),
        rss_before_bytes: rss_before,
        rss_max_bytes: rss_max.max(rss_before),
        fds_before,
        fds_max: fds_max.max(fds_before),
    })
}

/// The `q` quantile of sorted durations, in milliseconds (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

async fn sample(pid: u32, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut rss, mut fds) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        rss = rss.max(resident_bytes(pid).unwrap_or(0));
        fds = fds.max(open_fds(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (rss, fds)
}

/// One request; `Err` says what went wrong.
async fn request(
    client: &reqwest::Client,
    node: SocketAddr,
    target: &Target,
) -> std::result::Result<(), String> {
    let mut request = client.get(format!("http://{node}{}", target.path));
    if let Some(accept) = target.accept {
        request = request.header("accept", accept);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{}: {e}", target.path))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{}: status {status}", target.path));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{}: body: {e}", target.path))?;
    let digest = format!("sha256:{:x}", Sha256::digest(&body));
    if digest != target.digest {
        return Err(format!("{}: body has digest {digest}", target.path));
    }
    Ok(())
}

/// A fast client: one keep-alive connection, requests back to back until `deadline`. Returns the
/// latencies of completed requests and the errors.
async fn fast_client(
    seed: u64,
    node: SocketAddr,
    targets: Arc<Vec<Target>>,
    deadline: Instant,
) -> (Vec<Duration>, Vec<String>) {
    let mut rng = crate::image::SplitMix64(seed);
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(1)
        .build()
        .expect("building an HTTP client");
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while Instant::now() < deadline {
        let target = &targets[(rng.next_u64() % targets.len() as u64) as usize];
        let began = Instant::now();
        match request(&client, node, target).await {
            Ok(()) => latencies.push(began.elapsed()),
            Err(error) => errors.push(error),
        }
    }
    (latencies, errors)
}

/// A slowloris client: sends a request line and then one header byte every [`SLOW_BYTE_EVERY`],
/// never ending the headers. Returns how long the node kept the connection before closing it, or
/// `None` if it was still open [`CUT_GRACE`] past the header deadline (or never opened).
async fn slow_client(node: SocketAddr) -> Option<Duration> {
    let began = Instant::now();
    let mut stream = TcpStream::connect(node).await.ok()?;
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: load\r\nX-Slow: ")
        .await
        .ok()?;
    let give_up = began + HEADER_DEADLINE + CUT_GRACE;
    let mut buf = [0u8; 1024];
    while Instant::now() < give_up {
        match tokio::time::timeout(SLOW_BYTE_EVERY, stream.read(&mut buf)).await {
            // The node closed the connection (perhaps after a 408 answer): cut.
            Ok(Ok(0)) | Ok(Err(_)) => return Some(began.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => {
                if stream.write_all(b"x").await.is_err() {
                    return Some(began.elapsed());
                }
            }
        }
    }
    None
}

/// The report as text.
pub fn render(report: &LoadReport) -> String {
    format!(
        "{} clients for {:.0} s: {} requests ok ({:.0}/s), {} errors; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms\n\
         {} slow clients: {} cut at the header deadline (longest kept {:.1} s)\n\
         node: RSS {} MiB before, {} MiB max; open descriptors {} before, {} max\n",
        report.clients,
        report.seconds,
        report.ok,
        report.requests_per_sec,
        report.errors,
        report.latency.p50_ms,
        report.latency.p90_ms,
        report.latency.p99_ms,
        report.latency.max_ms,
        report.slow_clients,
        report.slow_clients_cut,
        report.slowest_cut_secs,
        report.rss_before_bytes >> 20,
        report.rss_max_bytes >> 20,
        report.fds_before,
        report.fds_max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
