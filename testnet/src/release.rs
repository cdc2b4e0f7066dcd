//! The first pull of a new release (`shoal-testnet release-bench`): how long containerd takes to
//! pull a new version of a tag its region already pulls, with the origin far away.
//!
//! The origin sits behind a [`FarLink`] (an added round trip and one capped rate), since `shoald`'s
//! own shaping options shape only transfers between peers. Each run starts everything afresh
//! (origin, link, nodes, containerd) and times one `ctr image pull` of `v2` in one of three ways:
//!
//! - [`Mode::Prepositioned`]: two regions (`a`, `b`), one node each, placement on. A client of
//!   region B pulls `v1` of `app:latest` through B's node a few times; `v2` is pushed under the
//!   same tag; once B's node holds every blob of `v2` (its tag watcher saw the tag move and
//!   pre-fetched the new version; `/placement/explain` says so) a fresh containerd pulls `v2`
//!   through B's node.
//! - [`Mode::Cold`]: the same with `placement.enabled = false`: the pull of `v2` goes through the
//!   node to the far origin for every new blob.
//! - [`Mode::Direct`]: no node; a fresh containerd pulls `v2` from the far origin itself.
//!
//! Every pull is checked (containerd's content store holds every blob of `v2`), and the blob
//! bytes the origin served during the timed pull are taken from its access log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::containerd::Containerd;
use crate::far_link::{FarLink, LinkShape};
use crate::hosts::HostsDir;
use crate::image::{push_image, ImageInfo, ImageSpec};
use crate::network::{Network, NetworkSpec};
use crate::node::{Node, NodeConfig};
use crate::origin::Origin;

/// The tag TTL and plan interval the nodes run with, in seconds (short, so a run takes seconds).
const SHORT_INTERVAL_SECS: u64 = 2;
/// How long B's node may take to pre-position `v2`.
const PREPOSITION_TIMEOUT: Duration = Duration::from_secs(120);
/// Pulls of `v1` through B's node before `v2` is pushed.
const V1_PULLS: usize = 3;
/// The repository and tag of the release.
const REPO: &str = "bench/release";
const TAG: &str = "latest";

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseOptions {
    /// Runs of each mode.
    pub runs: usize,
    /// The far origin's link.
    #[serde(skip)]
    pub origin: LinkShape,
    /// Added round trip between the two regions' nodes, milliseconds.
    pub peer_rtt_ms: u64,
    /// Seed of the images (each run adds its index).
    pub seed: u64,
}

/// How `v2` reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through B's node, after placement pre-positioned it.
    Prepositioned,
    /// Through B's node with placement off.
    Cold,
    /// From the far origin, no node.
    Direct,
}

impl Mode {
    /// Every mode, in the order each run measures them.
    pub const ALL: [Mode; 3] = [Mode::Prepositioned, Mode::Cold, Mode::Direct];

    fn label(self) -> &'static str {
        match self {
            Mode::Prepositioned => "through the node, pre-positioned",
            Mode::Cold => "through the node, placement off",
            Mode::Direct => "direct from the origin",
        }
    }
}

/// One timed pull.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRun {
    /// How `v2` was pulled.
    pub mode: Mode,
    /// Run index.
    pub run: usize,
    /// Seconds `ctr image pull` of `v2` took.
    pub pull_secs: f64,
    /// Blob bytes the origin served during the timed pull.
    pub origin_blob_bytes_during_pull: u64,
    /// Bytes of `v2`'s blobs (index and manifest excluded).
    pub v2_blob_bytes: u64,
}

/// Medians over the runs of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    /// The mode.
    pub mode: Mode,
    /// Median seconds of the pull.
    pub median_pull_secs: f64,
    /// Median origin blob bytes during the pull.
    pub median_origin_blob_bytes: u64,
    /// The median against the direct pull's median (below 1: faster than direct).
    pub vs_direct: f64,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    /// Round trip of the far origin, milliseconds.
    pub origin_rtt_ms: u64,
    /// The far origin's rate, bytes per second.
    pub origin_bytes_per_sec: u64,
    /// Options.
    pub options: ReleaseOptions,
    /// Every pull.
    pub runs: Vec<ReleaseRun>,
    /// Medians per mode.
    pub summary: Vec<ModeSummary>,
}

/// A version of the release: the same shape each time (a few KiB to 12 MiB of layers); contents
/// from `seed`, so two versions share no blob.
fn release(seed: u64) -> ImageSpec {
    ImageSpec::new(REPO, TAG, seed)
        .layer(6 << 10, 0)
        .layer(700 << 10, 50)
        .layer(4 << 20, 30)
        .layer(12 << 20, 80)
}

/// Runs every mode `options.runs` times.
pub async fn run(options: &ReleaseOptions) -> Result<ReleaseReport> {
    ensure!((1..=20).contains(&options.runs), "runs must be 1 to 20");
    options.origin.validate()?;
    let mut runs = Vec::new();
    for run in 0..options.runs {
        for mode in Mode::ALL {
            let seed = options
                .seed
                .wrapping_mul(1000)
                .wrapping_add(run as u64 * 10);
            let measured = match mode {
                Mode::Direct => direct(options, seed).await,
                Mode::Prepositioned | Mode::Cold => through_node(options, mode, seed).await,
            }
            .with_context(|| format!("run {run}, {}", mode.label()))?;
            eprintln!(
                "run {run}: {}: {:.2} s, {} origin blob bytes during the pull",
                mode.label(),
                measured.0,
                measured.1
            );
            runs.push(ReleaseRun {
                mode,
                run,
                pull_secs: measured.0,
                origin_blob_bytes_during_pull: measured.1,
                v2_blob_bytes: measured.2,
            });
        }
    }
    let median_of = |mode: Mode| -> (f64, u64) {
        let mut secs: Vec<f64> = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.pull_secs)
            .collect();
        let mut bytes: Vec<f64> = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.origin_blob_bytes_during_pull as f64)
            .collect();
        (
            crate::bench::median(&mut secs),
            crate::bench::median(&mut bytes) as u64,
        )
    };
    let (direct_secs, _) = median_of(Mode::Direct);
    let summary = Mode::ALL
        .iter()
        .map(|&mode| {
            let (secs, bytes) = median_of(mode);
            ModeSummary {
                mode,
                median_pull_secs: secs,
                median_origin_blob_bytes: bytes,
                vs_direct: secs / direct_secs,
            }
        })
        .collect();
    Ok(ReleaseReport {
        origin_rtt_ms: options.origin.rtt.as_millis() as u64,
        origin_bytes_per_sec: options.origin.bytes_per_sec,
        options: options.clone(),
        runs,
        summary,
    })
}

/// The report as text.
pub fn render(report: &ReleaseReport) -> String {
    let mut out = format!(
        "first pull of a new release: origin {} ms away at {:.1} MiB/s, {} runs per mode\n",
        report.origin_rtt_ms,
        report.origin_bytes_per_sec as f64 / f64::from(1u32 << 20),
        report.options.runs
    );
    for s in &report.summary {
        out.push_str(&format!(
            "  {:<34} median {:>6.2} s  ({:.2}x direct)  origin blob bytes during the pull: {}\n",
            s.mode.label(),
            s.median_pull_secs,
            s.vs_direct,
            s.median_origin_blob_bytes
        ));
    }
    out
}

/// Blob bytes the origin has served so far, once its log is quiet.
async fn origin_blob_bytes(origin: &Origin) -> u64 {
    origin.settle().await;
    origin.blob_bytes_served()
}

/// Times a fresh containerd's pull of `image` through `hosts`; checks it holds every blob after.
async fn timed_pull(image: &ImageInfo, hosts: &Path) -> Result<f64> {
    let client = Containerd::start().await?;
    let started = Instant::now();
    client.pull_ok(&image.reference, hosts).await?;
    let secs = started.elapsed().as_secs_f64();
    client.ensure_holds(image).await?;
    Ok(secs)
}

fn blob_bytes(image: &ImageInfo) -> u64 {
    image.blobs().map(|b| b.size).sum()
}

/// A fresh containerd pulls `v2` from the far origin itself.
async fn direct(options: &ReleaseOptions, seed: u64) -> Result<(f64, u64, u64)> {
    let origin = Origin::start().await?;
    let link = FarLink::start(origin.addr(), options.origin).await?;
    push_image(&origin, release(seed)).await?;
    let v2 = push_image(&origin, release(seed + 1)).await?;
    let hosts = HostsDir::for_test_registry(link.addr())?;
    let before = origin_blob_bytes(&origin).await;
    let secs = timed_pull(&v2, hosts.path()).await?;
    let during = origin_blob_bytes(&origin).await - before;
    drop(link);
    let mut origin = origin;
    origin.stop().await?;
    Ok((secs, during, blob_bytes(&v2)))
}

/// A config file with short tag TTLs and plan intervals, placement on or off.
fn node_config(dir: &Path, placement: bool) -> Result<PathBuf> {
    let path = dir.join("shoald.toml");
    std::fs::write(
        &path,
        format!(
            "tag_ttl_secs = {SHORT_INTERVAL_SECS}\n\n[placement]\nenabled = {placement}\n\
             plan_interval_secs = {SHORT_INTERVAL_SECS}\npersist_interval_secs = 1\n"
        ),
    )?;
    Ok(path)
}

/// Polls B's node until it holds every blob of `image` (its explanations say `held_here`).
async fn wait_until_held(node: &Node, image: &ImageInfo) -> Result<()> {
    let deadline = Instant::now() + PREPOSITION_TIMEOUT;
    let http = reqwest::Client::new();
    loop {
        let mut missing = 0;
        for blob in image.blobs() {
            let url = format!("{}/placement/explain/{}", node.admin_url(), blob.digest);
            let response = http.get(&url).send().await?;
            ensure!(
                response.status().is_success(),
                "GET {url}: {}",
                response.status()
            );
            let explained: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
            if explained["held_here"] != true {
                missing += 1;
            }
        }
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {PREPOSITION_TIMEOUT:?} the node still lacks {missing} blobs of the new version:\n{}",
                node.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two regions, one node each; region B pulls `v1`, `v2` is pushed; with placement on, waits
/// until B's node holds `v2`; then a fresh containerd pulls `v2` through B's node.
async fn through_node(options: &ReleaseOptions, mode: Mode, seed: u64) -> Result<(f64, u64, u64)> {
    let dir = tempfile::tempdir()?;
    let config = node_config(dir.path(), mode == Mode::Prepositioned)?;
    let node = || {
        NodeConfig::default()
            .arg("--config")
            .arg(config.to_str().expect("temp paths are UTF-8"))
    };
    let network = Network::start(
        NetworkSpec::new(seed)
            .node_with("a", node())
            .node_with("b", node())
            .latency("a", "b", options.peer_rtt_ms)
            .far_origin(options.origin),
    )
    .await?;
    let v1 = push_image(network.origin(), release(seed)).await?;
    let client = Containerd::start().await?;
    for _ in 0..V1_PULLS {
        client.pull_ok(&v1.reference, network.hosts_dir(1)).await?;
    }
    drop(client);
    let v2 = push_image(network.origin(), release(seed + 1)).await?;
    ensure!(
        v2.manifest.digest != v1.manifest.digest,
        "the tag did not move"
    );
    if mode == Mode::Prepositioned {
        wait_until_held(network.node(1), &v2).await?;
    } else {
        // The node's resolution of the tag expires, as it would have by the next pull.
        tokio::time::sleep(Duration::from_secs(SHORT_INTERVAL_SECS + 1)).await;
    }
    let before = origin_blob_bytes(network.origin()).await;
    let secs = timed_pull(&v2, network.hosts_dir(1)).await?;
    let during = origin_blob_bytes(network.origin()).await - before;
    network.shutdown().await?;
    Ok((secs, during, blob_bytes(&v2)))
}
