//! The chaos soak (`shoal-testnet soak`, `tests/soak.rs`): five nodes in two regions behind one
//! origin, clients pulling a mix of images for a while, first without faults, then the same
//! workload again on a fresh network with faults injected at seeded random moments.
//!
//! Clients: [`SoakOptions::http_clients`] plain HTTP clients (manifests by tag, whole blobs and
//! byte ranges, each body's sha256 or bytes checked against what was pushed) and
//! [`SoakOptions::ctr_clients`] containerd clients (`ctr image pull` through one node, then the
//! image removed so the next pull fetches again; containerd checks every digest). Images are
//! released to the origin over the run (same times in both phases), so nodes keep missing blobs
//! and fetching them from peers and the origin while faults happen.
//!
//! Faults (faulted phase only), one at a time at seeded random intervals:
//! - a node is killed with SIGKILL and restarted on the same ports and data directory;
//! - the origin is stopped and started again;
//! - a node is restarted as a lying member (`--test-flip-served-bytes`: every shard it sends to
//!   peers has a flipped byte), and at the next such fault restarted honest again.
//!
//! Afterwards ([`SoakReport::checks`]): no response completed with wrong bytes, every node's store
//! passes `shoal fsck` after a graceful stop, the faulted phase's origin bytes are within
//! [`ORIGIN_BYTES_RATIO`] of the fault-free phase's, and each node's resident memory and open file
//! descriptors (sampled every [`SAMPLE_EVERY`]) stay under [`RSS_BOUND`] and [`FD_BOUND`].
//! Responses refused or broken off while a fault lasts are counted, not failures: clients retry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::containerd::Containerd;
use crate::image::{BuiltImage, ImageSpec, SplitMix64};
use crate::network::{Network, NetworkSpec};
use crate::node::NodeConfig;

/// Nodes of the soak network: three in `eu`, two in `us`.
pub const REGIONS: [&str; 5] = ["eu", "eu", "eu", "us", "us"];
/// Largest accepted ratio of the faulted phase's origin blob bytes to the fault-free phase's.
pub const ORIGIN_BYTES_RATIO: f64 = 1.1;
/// Largest resident memory accepted for any node at any sample. A node holds at most a few
/// shards per response in flight (see `tests/slow_clients.rs`) and bounded peer state; 20
/// clients and a handful of peer transfers stay far below this.
pub const RSS_BOUND: u64 = 1 << 30;
/// Most open file descriptors accepted for any node at any sample: far above what 20 clients,
/// four peers and the store need, far below the HTTP connection limit (4096), so a leak of one
/// descriptor per request shows.
pub const FD_BOUND: u64 = 1024;
/// How often each node's memory and descriptors are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Bound on one HTTP request of a client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one `ctr image pull` of a client.
const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Length of each phase (fault-free, then faulted).
    pub duration: Duration,
    /// Seed of every random choice (images, clients' requests, faults).
    pub seed: u64,
    /// Plain HTTP clients.
    pub http_clients: usize,
    /// containerd clients (each with its own containerd).
    pub ctr_clients: usize,
    /// Images released over a phase (two tags per layer set, so blobs are shared).
    pub images: usize,
}

impl SoakOptions {
    /// A soak of `minutes` per phase with 18 HTTP and 2 containerd clients, and more images the
    /// longer it runs.
    pub fn minutes(minutes: u64, seed: u64) -> SoakOptions {
        SoakOptions {
            duration: Duration::from_secs(minutes * 60),
            seed,
            http_clients: 18,
            ctr_clients: 2,
            images: (4 + 2 * minutes as usize).min(24),
        }
    }
}

/// Outcomes of the clients' requests of one kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Outcomes {
    /// Completed with exactly the expected bytes.
    pub ok: u64,
    /// Completed (full length) with other bytes than expected: must stay 0.
    pub wrong_bytes: u64,
    /// Started but broken off before the end (a response aborted, a node killed).
    pub broken: u64,
    /// Answered with an error status.
    pub refused: u64,
    /// No answer (connection refused or timed out).
    pub unreachable: u64,
}

impl Outcomes {
    fn add(&mut self, other: &Outcomes) {
        self.ok += other.ok;
        self.wrong_bytes += other.wrong_bytes;
        self.broken += other.broken;
        self.refused += other.refused;
        self.unreachable += other.unreachable;
    }
}

/// Memory and descriptors of one node over a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSamples {
    /// Samples taken (while the node ran).
    pub samples: u64,
    /// Highest resident memory seen, bytes.
    pub max_rss_bytes: u64,
    /// Resident memory at the last sample, bytes.
    pub last_rss_bytes: u64,
    /// Most open file descriptors seen.
    pub max_fds: u64,
    /// Open file descriptors at the last sample.
    pub last_fds: u64,
}

/// One node's `shoal fsck` after the phase.
#[derive(Debug, Clone, Serialize)]
pub struct FsckResult {
    /// Node index (start order).
    pub node: usize,
    /// Whether fsck found the store clean.
    pub clean: bool,
    /// What it printed.
    pub output: String,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Whether faults were injected.
    pub faults: bool,
    /// Wall time of the client workload, seconds.
    pub seconds: f64,
    /// Client outcomes by request kind (`manifest`, `blob`, `range`, `ctr_pull`).
    pub outcomes: BTreeMap<String, Outcomes>,
    /// Faults injected, by kind (`kill`, `origin_stop`, `liar_on`, `liar_off`).
    pub faults_injected: BTreeMap<String, u64>,
    /// The fault log: seconds into the phase and what was done.
    pub fault_log: Vec<String>,
    /// Bytes the origin served for blob GETs.
    pub origin_blob_bytes: u64,
    /// Bytes of every distinct blob released (what one copy of each would cost).
    pub released_blob_bytes: u64,
    /// Per node.
    pub nodes: Vec<NodeSamples>,
    /// Per node.
    pub fsck: Vec<FsckResult>,
    /// Nodes found not running at the end of the phase, though no fault had left them down (a
    /// node that exited on its own).
    pub nodes_down_at_end: Vec<usize>,
    /// The blobs the origin served more than one copy of, with what the origin's access log and
    /// the nodes' logs say about each: where the phase's extra origin bytes went.
    pub origin_overfetch: Vec<BlobOriginUse>,
}

/// One blob's origin traffic over a phase, when it exceeded one copy.
#[derive(Debug, Clone, Serialize)]
pub struct BlobOriginUse {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The blob's length.
    pub len: u64,
    /// Body bytes the origin served for it.
    pub origin_bytes: u64,
    /// Each origin GET: seconds into the phase, status, body bytes.
    pub gets: Vec<String>,
    /// The nodes' log lines about the blob's fetches (`node <i>: <line>`).
    pub node_log: Vec<String>,
}

impl PhaseReport {
    /// Every kind's outcomes added up.
    pub fn total(&self) -> Outcomes {
        let mut total = Outcomes::default();
        for outcomes in self.outcomes.values() {
            total.add(outcomes);
        }
        total
    }
}

/// One property checked after the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind it.
    pub detail: String,
}

/// The whole soak: both phases and the checks.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Seed of the run.
    pub seed: u64,
    /// The run without faults.
    pub fault_free: PhaseReport,
    /// The run with faults.
    pub faulted: PhaseReport,
    /// Faulted origin blob bytes over fault-free ones.
    pub origin_bytes_ratio: f64,
    /// The properties checked.
    pub checks: Vec<Check>,
}

impl SoakReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The checks that failed, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// An image as clients see it once released: what to ask for and the bytes to expect.
struct Released {
    repo: String,
    tag: String,
    /// Digest and bytes of the manifest (or index) the tag names.
    tag_target: (String, bytes::Bytes),
    /// Config and layers.
    blobs: Vec<(String, bytes::Bytes)>,
    /// `ctr` reference.
    reference: String,
}

impl Released {
    fn new(built: &BuiltImage) -> Released {
        let target = built.index.as_ref().unwrap_or(&built.manifest);
        Released {
            repo: built.spec.repo.clone(),
            tag: built.spec.tag.clone(),
            tag_target: (target.digest.clone(), target.bytes.clone()),
            blobs: std::iter::once(&built.config)
                .chain(built.layers.iter())
                .map(|b| (b.digest.clone(), b.bytes.clone()))
                .collect(),
            reference: built.info().reference,
        }
    }
}

type Shelf = Arc<RwLock<Vec<Arc<Released>>>>;

/// The images of a soak: two tags per seed, so the second tag's blobs are already known.
fn image_specs(options: &SoakOptions) -> Vec<ImageSpec> {
    (0..options.images)
        .map(|i| {
            let seed = options.seed.wrapping_mul(1000) + (i / 2) as u64;
            let mut layer_rng = SplitMix64(seed);
            ImageSpec::new(&format!("soak/app{}", i / 2), &format!("v{}", i % 2), seed)
                .layer(64 << 10, 0)
                .layer((1 << 20) + (layer_rng.next_u64() % (3 << 20)) as usize, 80)
                .layer((2 << 20) + (layer_rng.next_u64() % (6 << 20)) as usize, 90)
        })
        .collect()
}

/// One planned fault.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill { node: usize, down: Duration },
    OriginStop { down: Duration },
    Liar { node: usize },
}

/// The timeline of a phase: image releases (both phases) and faults (faulted phase only).
#[derive(Debug, Clone)]
enum Event {
    Release(usize),
    Fault(Fault),
}

fn timeline(options: &SoakOptions, faults: bool) -> Vec<(Duration, Event)> {
    let span = options.duration.as_secs_f64();
    let mut events = Vec::new();
    // A third of the images are there from the start; the rest arrive over the first 70%.
    let initial = options.images.div_ceil(3);
    for i in 0..options.images {
        let at = if i < initial {
            0.0
        } else {
            span * 0.7 * (i - initial + 1) as f64 / (options.images - initial) as f64
        };
        events.push((Duration::from_secs_f64(at), Event::Release(i)));
    }
    if faults {
        let mut rng = SplitMix64(options.seed ^ 0xfa17);
        let mut at = 5.0 + (rng.next_u64() % 5) as f64;
        let mut liar: Option<usize> = None;
        // Faults until 85% of the phase, so the end of the phase shows recovery.
        while at < span * 0.85 {
            let node = (rng.next_u64() % REGIONS.len() as u64) as usize;
            let down = Duration::from_millis(1000 + rng.next_u64() % 3000);
            let fault = match rng.next_u64() % 3 {
                0 => Fault::Kill { node, down },
                1 => Fault::OriginStop { down },
                // One liar at a time: the next liar fault makes the same node honest again.
                _ => match liar.take() {
                    Some(liar) => Fault::Liar { node: liar },
                    None => {
                        liar = Some(node);
                        Fault::Liar { node }
                    }
                },
            };
            events.push((Duration::from_secs_f64(at), Event::Fault(fault)));
            at += 4.0 + (rng.next_u64() % 12) as f64;
        }
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

/// Runs the fault-free phase, then the faulted one, and checks the properties.
pub async fn run(options: &SoakOptions) -> Result<SoakReport> {
    let specs = image_specs(options);
    let built: Vec<Arc<BuiltImage>> = tokio::task::spawn_blocking(move || {
        specs
            .iter()
            .map(|spec| spec.build().map(Arc::new))
            .collect::<Result<Vec<_>>>()
    })
    .await
    .context("image build thread panicked")??;
    eprintln!(
        "soak: {} images built; fault-free phase of {:?}",
        built.len(),
        options.duration
    );
    let fault_free = run_phase(options, &built, false).await?;
    eprintln!("soak: faulted phase of {:?}", options.duration);
    let faulted = run_phase(options, &built, true).await?;
    Ok(judge(options.seed, fault_free, faulted))
}

fn judge(seed: u64, fault_free: PhaseReport, faulted: PhaseReport) -> SoakReport {
    let ratio = faulted.origin_blob_bytes as f64 / fault_free.origin_blob_bytes.max(1) as f64;
    let mut checks = Vec::new();
    for phase in [&fault_free, &faulted] {
        let label = if phase.faults {
            "faulted"
        } else {
            "fault-free"
        };
        let total = phase.total();
        checks.push(Check {
            name: format!("{label}: no response completed with wrong bytes"),
            passed: total.wrong_bytes == 0,
            detail: format!(
                "{} wrong of {} complete",
                total.wrong_bytes,
                total.ok + total.wrong_bytes
            ),
        });
        checks.push(Check {
            name: format!("{label}: clients were served"),
            passed: total.ok > 0,
            detail: format!("{} responses and pulls complete and verified", total.ok),
        });
        let unclean: Vec<usize> = phase
            .fsck
            .iter()
            .filter(|f| !f.clean)
            .map(|f| f.node)
            .collect();
        checks.push(Check {
            name: format!("{label}: every node's store passes fsck"),
            passed: unclean.is_empty() && phase.fsck.len() == REGIONS.len(),
            detail: format!("{} stores checked, unclean: {unclean:?}", phase.fsck.len()),
        });
        let max_rss = phase
            .nodes
            .iter()
            .map(|n| n.max_rss_bytes)
            .max()
            .unwrap_or(0);
        let max_fds = phase.nodes.iter().map(|n| n.max_fds).max().unwrap_or(0);
        let sampled = phase.nodes.iter().all(|n| n.samples > 0);
        checks.push(Check {
            name: format!("{label}: node memory stays under {} MiB", RSS_BOUND >> 20),
            passed: sampled && max_rss <= RSS_BOUND,
            detail: format!(
                "highest RSS {} MiB (every node sampled: {sampled})",
                max_rss >> 20
            ),
        });
        checks.push(Check {
            name: format!("{label}: node file descriptors stay under {FD_BOUND}"),
            passed: sampled && max_fds <= FD_BOUND,
            detail: format!("most open descriptors {max_fds}"),
        });
    }
    checks.push(Check {
        name: format!("faulted origin bytes within {ORIGIN_BYTES_RATIO}x of fault-free"),
        passed: ratio <= ORIGIN_BYTES_RATIO && fault_free.origin_blob_bytes > 0,
        detail: format!(
            "{} against {} bytes: {ratio:.3}x",
            faulted.origin_blob_bytes, fault_free.origin_blob_bytes
        ),
    });
    let injected: u64 = faulted.faults_injected.values().sum();
    checks.push(Check {
        name: "faults were injected".into(),
        passed: injected > 0,
        detail: format!("{:?}", faulted.faults_injected),
    });
    SoakReport {
        seed,
        fault_free,
        faulted,
        origin_bytes_ratio: ratio,
        checks,
    }
}

/// The processes a sampler watches, updated as nodes restart.
type Pids = Arc<Mutex<Vec<Option<u32>>>>;

async fn run_phase(
    options: &SoakOptions,
    built: &[Arc<BuiltImage>],
    faults: bool,
) -> Result<PhaseReport> {
    let mut spec = NetworkSpec::new(options.seed);
    for region in REGIONS {
        spec = spec.node_with(region, NodeConfig::default());
    }
    let mut network = Network::start(spec)
        .await
        .context("starting the soak network")?;
    let addrs = network.registry_addrs();
    let hosts: Vec<PathBuf> = (0..REGIONS.len())
        .map(|i| network.hosts_dir(i).to_path_buf())
        .collect();
    let pids: Pids = Arc::new(Mutex::new(
        network.nodes().iter().map(|n| n.node().pid()).collect(),
    ));
    let shelf: Shelf = Arc::new(RwLock::new(Vec::new()));
    let events = timeline(options, faults);
    // The images released at 0 go out before any client starts.
    let mut pending = events.into_iter().peekable();
    while let Some((at, Event::Release(i))) = pending.peek().cloned() {
        if !at.is_zero() {
            break;
        }
        release(&network, &shelf, &built[i]).await?;
        pending.next();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(pids.clone(), stop.clone()));
    let started = Instant::now();
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let deadline = started + options.duration;
    let mut clients = Vec::new();
    for client in 0..options.http_clients {
        clients.push(tokio::spawn(http_client(
            options.seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9),
            addrs.clone(),
            shelf.clone(),
            deadline,
        )));
    }
    let mut containerds = Vec::new();
    for _ in 0..options.ctr_clients {
        containerds.push(Arc::new(Containerd::start().await?));
    }
    for (client, containerd) in containerds.iter().enumerate() {
        clients.push(tokio::spawn(ctr_client(
            options.seed ^ (client as u64 + 101).wrapping_mul(0x9e37_79b9),
            containerd.clone(),
            hosts.clone(),
            shelf.clone(),
            deadline,
        )));
    }

    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut fault_log = Vec::new();
    let mut liars = vec![false; REGIONS.len()];
    for (at, event) in pending {
        tokio::time::sleep_until((started + at).into()).await;
        match event {
            Event::Release(i) => release(&network, &shelf, &built[i]).await?,
            Event::Fault(fault) => {
                let line = inject(&mut network, &pids, &mut liars, fault).await?;
                let kind = match fault {
                    Fault::Kill { .. } => "kill",
                    Fault::OriginStop { .. } => "origin_stop",
                    Fault::Liar { node } if liars[node] => "liar_on",
                    Fault::Liar { .. } => "liar_off",
                };
                *injected.entry(kind.to_string()).or_default() += 1;
                fault_log.push(format!("{:>6.1}s {line}", started.elapsed().as_secs_f64()));
            }
        }
    }
    // Every node honest again before the end, so the phase closes on a healthy network.
    for node in 0..REGIONS.len() {
        if liars[node] {
            let line = inject(&mut network, &pids, &mut liars, Fault::Liar { node }).await?;
            *injected.entry("liar_off".to_string()).or_default() += 1;
            fault_log.push(format!("{:>6.1}s {line}", started.elapsed().as_secs_f64()));
        }
    }

    let mut outcomes: BTreeMap<String, Outcomes> = BTreeMap::new();
    for client in clients {
        for (kind, counted) in client.await.context("a soak client panicked")? {
            outcomes.entry(kind).or_default().add(&counted);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let nodes = sampler.await.context("the sampler panicked")?;
    drop(containerds);

    network.origin().settle().await;
    let origin_blob_bytes = network.origin().blob_bytes_served();
    let origin_overfetch = overfetched_blobs(&network, &shelf, started_unix_secs);
    let released_blob_bytes = {
        let shelf = shelf.read().expect("shelf lock");
        let mut distinct = BTreeMap::new();
        for image in shelf.iter() {
            for (digest, bytes) in &image.blobs {
                distinct.insert(digest.clone(), bytes.len() as u64);
            }
        }
        distinct.values().sum()
    };
    let mut fsck = Vec::new();
    let mut nodes_down_at_end = Vec::new();
    for index in 0..REGIONS.len() {
        let node = network.node_mut(index);
        if !node.is_running() {
            nodes_down_at_end.push(index);
            node.restart()
                .await
                .with_context(|| format!("restarting node {index}, found down, for fsck"))?;
        }
        node.stop()
            .await
            .with_context(|| format!("stopping node {index} for fsck"))?;
        let output = crate::cli::fsck(&node.data_dir()).await?;
        fsck.push(FsckResult {
            node: index,
            clean: output.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    network.origin_mut().stop().await?;
    Ok(PhaseReport {
        faults,
        seconds,
        outcomes,
        faults_injected: injected,
        fault_log,
        origin_blob_bytes,
        released_blob_bytes,
        nodes,
        fsck,
        nodes_down_at_end,
        origin_overfetch,
    })
}

/// What the nodes log about a blob's fetch, kept for the attribution of extra origin bytes.
const FETCH_LOG_MARKERS: [&str; 12] = [
    "claim",
    "re-home",
    "home looked up",
    "blob fetched",
    "blob fetch failed",
    "blob passed through",
    "following a peer",
    "fetching blob from peers",
    "continuing from the origin",
    "resuming",
    "fetching them from the origin",
    "fetching the blob again",
];

/// The released blobs whose origin bytes exceeded one copy, with each origin GET (seconds after
/// `started_unix_secs`) and what the nodes logged about the blob.
fn overfetched_blobs(
    network: &Network,
    shelf: &Shelf,
    started_unix_secs: u64,
) -> Vec<BlobOriginUse> {
    let lengths: BTreeMap<String, u64> = shelf
        .read()
        .expect("shelf lock")
        .iter()
        .flat_map(|image| image.blobs.iter())
        .map(|(digest, bytes)| (digest.clone(), bytes.len() as u64))
        .collect();
    let mut gets: BTreeMap<String, Vec<crate::origin::AccessLogEntry>> = BTreeMap::new();
    for entry in network.origin().access_log().unwrap_or_default() {
        if entry.method != "GET" {
            continue;
        }
        if let Some((_, digest)) = entry.path.rsplit_once("/blobs/") {
            gets.entry(digest.to_string()).or_default().push(entry);
        }
    }
    let logs: Vec<String> = network
        .nodes()
        .iter()
        .map(|n| std::fs::read_to_string(n.node().log_path()).unwrap_or_default())
        .collect();
    let mut overfetched = Vec::new();
    for (digest, entries) in gets {
        let origin_bytes: u64 = entries.iter().map(|e| e.bytes).sum();
        let len = lengths.get(&digest).copied().unwrap_or(0);
        if origin_bytes <= len {
            continue;
        }
        let gets = entries
            .iter()
            .map(|e| {
                let at = e.at_unix_secs.map_or("?".to_string(), |t| {
                    format!("{}", t as i64 - started_unix_secs as i64)
                });
                format!("{at}s {} {}", e.status, e.bytes)
            })
            .collect();
        let mut node_log = Vec::new();
        for (node, log) in logs.iter().enumerate() {
            for line in log.lines() {
                if line.contains(&digest) && FETCH_LOG_MARKERS.iter().any(|m| line.contains(m)) {
                    let line = strip_ansi(line);
                    let line: String = line.chars().take(400).collect();
                    node_log.push(format!("node {node}: {line}"));
                }
            }
        }
        overfetched.push(BlobOriginUse {
            digest,
            len,
            origin_bytes,
            gets,
            node_log,
        });
    }
    overfetched
}

/// `line` without terminal colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Pushes an image to the origin and puts it on the clients' shelf.
async fn release(network: &Network, shelf: &Shelf, built: &BuiltImage) -> Result<()> {
    built
        .push(&network.origin().url())
        .await
        .with_context(|| format!("pushing {}:{}", built.spec.repo, built.spec.tag))?;
    shelf
        .write()
        .expect("shelf lock")
        .push(Arc::new(Released::new(built)));
    Ok(())
}

/// Carries out one fault and returns what was done.
async fn inject(
    network: &mut Network,
    pids: &Pids,
    liars: &mut [bool],
    fault: Fault,
) -> Result<String> {
    match fault {
        Fault::Kill { node, down } => {
            network.node_mut(node).kill9();
            pids.lock().expect("pids lock")[node] = None;
            tokio::time::sleep(down).await;
            restart(network, pids, node).await?;
            Ok(format!(
                "node {node} killed (SIGKILL), restarted after {down:?}"
            ))
        }
        Fault::OriginStop { down } => {
            network.origin_mut().stop().await?;
            tokio::time::sleep(down).await;
            network.origin_mut().start_again().await?;
            Ok(format!("origin stopped, started again after {down:?}"))
        }
        Fault::Liar { node } => {
            liars[node] = !liars[node];
            network.node_mut(node).config_mut().test_flip_served_bytes = liars[node];
            restart(network, pids, node).await?;
            Ok(if liars[node] {
                format!("node {node} restarted as a lying member (flips served bytes)")
            } else {
                format!("node {node} restarted honest")
            })
        }
    }
}

async fn restart(network: &mut Network, pids: &Pids, node: usize) -> Result<()> {
    let member = network.node_mut(node);
    member
        .restart()
        .await
        .with_context(|| format!("restarting node {node}"))?;
    pids.lock().expect("pids lock")[node] = member.pid();
    Ok(())
}

/// Samples every node's `VmRSS` and open descriptors until `stop`.
async fn sample(pids: Pids, stop: Arc<AtomicBool>) -> Vec<NodeSamples> {
    let count = pids.lock().expect("pids lock").len();
    let mut samples = vec![NodeSamples::default(); count];
    while !stop.load(Ordering::Relaxed) {
        let current = pids.lock().expect("pids lock").clone();
        for (node, pid) in current.into_iter().enumerate() {
            let Some(pid) = pid else { continue };
            let (Some(rss), Some(fds)) = (resident_bytes(pid), open_fds(pid)) else {
                continue;
            };
            let s = &mut samples[node];
            s.samples += 1;
            s.max_rss_bytes = s.max_rss_bytes.max(rss);
            s.last_rss_bytes = rss;
            s.max_fds = s.max_fds.max(fds);
            s.last_fds = fds;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    samples
}

/// `VmRSS` of a process, in bytes.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// What one request came to.
enum Outcome {
    Ok,
    Wrong,
    Broken,
    Refused,
    Unreachable,
}

fn count(outcomes: &mut BTreeMap<String, Outcomes>, kind: &str, outcome: Outcome) {
    let o = outcomes.entry(kind.to_string()).or_default();
    match outcome {
        Outcome::Ok => o.ok += 1,
        Outcome::Wrong => o.wrong_bytes += 1,
        Outcome::Broken => o.broken += 1,
        Outcome::Refused => o.refused += 1,
        Outcome::Unreachable => o.unreachable += 1,
    }
}

fn pick<T: Clone>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize].clone()
}

/// A plain HTTP client: until `deadline`, asks a random node for a random released image's tag
/// (manifest), a whole blob or a byte range, and checks every complete body.
async fn http_client(
    seed: u64,
    nodes: Vec<SocketAddr>,
    shelf: Shelf,
    deadline: Instant,
) -> BTreeMap<String, Outcomes> {
    let mut rng = SplitMix64(seed);
    let mut outcomes = BTreeMap::new();
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("building an HTTP client");
    while Instant::now() < deadline {
        let images = shelf.read().expect("shelf lock").clone();
        let image = pick(&mut rng, &images);
        let node = pick(&mut rng, &nodes);
        let roll = rng.next_u64() % 10;
        let (kind, outcome) = if roll < 2 {
            let url = format!(
                "http://{node}/v2/{}/manifests/{}?ns={}",
                image.repo,
                image.tag,
                crate::REGISTRY_HOST
            );
            let request = client.get(url).header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
            );
            let (digest, _) = &image.tag_target;
            (
                "manifest",
                fetch(request, |body| sha256_hex(body) == *digest, 200).await,
            )
        } else {
            let (digest, bytes) = pick(&mut rng, &image.blobs);
            let url = format!(
                "http://{node}/v2/{}/blobs/{digest}?ns={}",
                image.repo,
                crate::REGISTRY_HOST
            );
            if roll < 7 || bytes.len() < 2 {
                let check = |body: &[u8]| sha256_hex(body) == digest;
                ("blob", fetch(client.get(url), check, 200).await)
            } else {
                let len = bytes.len() as u64;
                let first = rng.next_u64() % len;
                let last = (first + rng.next_u64() % (2 << 20)).min(len - 1);
                let expected = bytes.slice(first as usize..=last as usize);
                let request = client
                    .get(url)
                    .header("range", format!("bytes={first}-{last}"));
                (
                    "range",
                    fetch(request, |body| body == &expected[..], 206).await,
                )
            }
        };
        count(&mut outcomes, kind, outcome);
        // A short pause, so twenty clients leave the two cores room for the nodes.
        tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
    }
    outcomes
}

fn sha256_hex(body: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(body))
}

/// Sends `request`; a body is complete when it has the announced length (hyper reports an early
/// end as an error), and then it must pass `check`.
async fn fetch(
    request: reqwest::RequestBuilder,
    check: impl FnOnce(&[u8]) -> bool,
    status: u16,
) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => return Outcome::Unreachable,
    };
    if response.status().as_u16() != status {
        return Outcome::Refused;
    }
    let announced = response.content_length();
    match response.bytes().await {
        Ok(body) if announced.is_some_and(|n| n != body.len() as u64) => Outcome::Broken,
        Ok(body) if check(&body) => Outcome::Ok,
        Ok(_) => Outcome::Wrong,
        Err(_) => Outcome::Broken,
    }
}

/// A containerd client: until `deadline`, pulls a random released image through a random node
/// (containerd verifies every digest), then removes it so the next pull fetches again.
async fn ctr_client(
    seed: u64,
    containerd: Arc<Containerd>,
    hosts: Vec<PathBuf>,
    shelf: Shelf,
    deadline: Instant,
) -> BTreeMap<String, Outcomes> {
    let mut rng = SplitMix64(seed);
    let mut outcomes = BTreeMap::new();
    while Instant::now() < deadline {
        let images = shelf.read().expect("shelf lock").clone();
        let image = pick(&mut rng, &images);
        let hosts_dir = pick(&mut rng, &hosts);
        let outcome = match containerd
            .pull_with_timeout(&image.reference, &hosts_dir, CTR_TIMEOUT)
            .await
        {
            Ok(output) if output.status.success() => Outcome::Ok,
            Ok(_) => Outcome::Refused,
            Err(_) => Outcome::Unreachable,
        };
        count(&mut outcomes, "ctr_pull", outcome);
        // `--sync` waits for the garbage collector, so the content is gone before the next pull.
        let _ = containerd
            .ctr(
                &["image", "rm", "--sync", &image.reference],
                Duration::from_secs(60),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200 + rng.next_u64() % 800)).await;
    }
    outcomes
}

/// The report as text: the checks, then each phase's figures.
pub fn render(report: &SoakReport) -> String {
    let mut out = String::new();
    for check in &report.checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        out.push_str(&format!("{mark} {}: {}\n", check.name, check.detail));
    }
    for phase in [&report.fault_free, &report.faulted] {
        out.push_str(&format!(
            "{} phase, {:.0} s: origin blob bytes {} (distinct released {}), faults {:?}\n",
            if phase.faults {
                "faulted"
            } else {
                "fault-free"
            },
            phase.seconds,
            phase.origin_blob_bytes,
            phase.released_blob_bytes,
            phase.faults_injected
        ));
        for (kind, o) in &phase.outcomes {
            out.push_str(&format!(
                "  {kind:<9} ok {:>6}  wrong {:>3}  broken {:>4}  refused {:>4}  unreachable {:>4}\n",
                o.ok, o.wrong_bytes, o.broken, o.refused, o.unreachable
            ));
        }
        for (i, n) in phase.nodes.iter().enumerate() {
            out.push_str(&format!(
                "  node {i} ({}): RSS max {} MiB last {} MiB, fds max {} last {}, {} samples\n",
                REGIONS[i],
                n.max_rss_bytes >> 20,
                n.last_rss_bytes >> 20,
                n.max_fds,
                n.last_fds,
                n.samples
            ));
        }
        if !phase.fault_log.is_empty() {
            out.push_str("  faults:\n");
            for line in &phase.fault_log {
                out.push_str(&format!("    {line}\n"));
            }
        }
        for blob in &phase.origin_overfetch {
            out.push_str(&format!(
                "  origin served {} bytes of {} ({} long, {} extra); GETs: {}\n",
                blob.origin_bytes,
                blob.digest,
                blob.len,
                blob.origin_bytes - blob.len,
                blob.gets.join(", ")
            ));
            for line in &blob.node_log {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_is_seeded_and_faults_stop_before_the_end() {
        let options = SoakOptions::minutes(10, 7);
        let a = timeline(&options, true);
        let b = timeline(&options, true);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let span = options.duration;
        let faults: Vec<_> = a
            .iter()
            .filter(|(_, e)| matches!(e, Event::Fault(_)))
            .collect();
        assert!(faults.len() >= 20, "{} faults in ten minutes", faults.len());
        assert!(faults.iter().all(|(at, _)| *at < span.mul_f64(0.85)));
        let releases = timeline(&options, false);
        assert_eq!(releases.len(), options.images);
        assert!(releases.iter().all(|(_, e)| matches!(e, Event::Release(_))));
    }

    #[test]
    fn at_most_one_member_lies_at_a_time() {
        for seed in 0..50 {
            let mut lying: Option<usize> = None;
            for (_, event) in timeline(&SoakOptions::minutes(10, seed), true) {
                if let Event::Fault(Fault::Liar { node }) = event {
                    match lying {
                        None => lying = Some(node),
                        Some(liar) => {
                            assert_eq!(liar, node, "seed {seed}: a second liar");
                            lying = None;
                        }
                    }
                }
            }
        }
    }
}
