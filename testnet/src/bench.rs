//! Peer network benchmarks on real parts: the origin registry, `shoald` processes on loopback, and
//! plain HTTP clients that drain blob bodies (containerd's unpacking would only add noise).
//!
//! - [`one_peer`]: one blob fetched cold through a node whose only source is one peer that holds
//!   it (origin stopped), beside the same blob from the origin registry directly, through a cold
//!   node with no peers, and from the holder's warm cache.
//! - [`crowd`]: N fresh nodes asked for the same cold blob at the same moment; the time until the
//!   last client has every byte, and the blob bytes the origin served (from its access log).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt as _;

use crate::image::{push_blob, Blob, SplitMix64};
use crate::node::{NetworkKeyFile, Node, NodeConfig};
use crate::origin::Origin;

const REPO: &str = "bench/blob";
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A random (incompressible) blob of `size` bytes, pushed to `origin`.
pub async fn push_random_blob(origin: &Origin, size: usize, seed: u64) -> Result<Blob> {
    let blob = tokio::task::spawn_blocking(move || {
        let mut bytes = vec![0u8; size];
        SplitMix64(seed).fill(&mut bytes);
        Blob::new("application/octet-stream", bytes)
    })
    .await?;
    push_blob(&reqwest::Client::new(), &origin.url(), REPO, &blob).await?;
    Ok(blob)
}

/// GETs `base/v2/REPO/blobs/digest`, drains the body and returns the time it took.
pub async fn fetch(base: &str, blob: &Blob) -> Result<Duration> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client
        .get(format!("{base}/v2/{REPO}/blobs/{}", blob.digest))
        .send()
        .await
        .with_context(|| format!("GET from {base}"))?;
    ensure!(
        response.status().is_success(),
        "GET from {base}: {}",
        response.status()
    );
    let mut body = response.bytes_stream();
    let mut received = 0u64;
    while let Some(piece) = body.next().await {
        received += piece.context("reading the body")?.len() as u64;
    }
    ensure!(
        received == blob.size(),
        "{base} sent {received} of {} bytes",
        blob.size()
    );
    Ok(started.elapsed())
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The peer transport a holder listens on (the fetching node dials what the holder announces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC (`/udp/../quic-v1`), the node's default.
    Quic,
    /// TCP + TLS (noise with an older node) + yamux (`/tcp/..`).
    Tcp,
    /// Both, as a node listens by default; the node picks one by its rule (TCP inside a region,
    /// and the two nodes of the benchmark share one).
    Both,
}

impl Transport {
    /// The loopback listen address of a node with only this transport, on a port chosen by the
    /// kernel; `None` for both (the harness's default).
    pub fn listen(self) -> Option<&'static str> {
        match self {
            Transport::Quic => Some("/ip4/127.0.0.1/udp/0/quic-v1"),
            Transport::Tcp => Some("/ip4/127.0.0.1/tcp/0"),
            Transport::Both => None,
        }
    }

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP",
            Transport::Both => "both, by the rule",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quic" => Ok(Transport::Quic),
            "tcp" => Ok(Transport::Tcp),
            "both" => Ok(Transport::Both),
            other => anyhow::bail!("unknown transport {other:?} (quic, tcp or both)"),
        }
    }
}

/// One cold fill from one peer over one transport, in a run of [`one_peer`].
#[derive(Debug, Clone, Copy)]
pub struct PeerFill {
    /// The transport.
    pub transport: Transport,
    /// Seconds of the GET through the cold node whose only source is the peer (origin stopped).
    pub seconds: f64,
    /// Seconds of a GET from the holder's warm cache.
    pub warm_holder: f64,
    /// CPU seconds (user + system) of the holder while it served the peer, during the GET.
    pub cpu_holder: f64,
    /// CPU seconds of the node filling from the peer, during the GET.
    pub cpu_fetcher: f64,
}

/// Times of one run of [`one_peer`], in seconds, and the CPU time the nodes spent.
#[derive(Debug, Clone)]
pub struct OnePeerRun {
    /// GET from the origin registry directly.
    pub origin_direct: f64,
    /// GET through a cold node with no peer network (origin only).
    pub node_from_origin: f64,
    /// CPU seconds (user + system) of the cold node filling from the origin, during its GET.
    pub cpu_node_from_origin: f64,
    /// The fills from one peer, one per transport asked for, in the order they ran.
    pub peers: Vec<PeerFill>,
}

/// Where to pin the nodes of [`one_peer`]: the holder on one core, the fetcher (and the node
/// filling from the origin) on another, so that each end has a core to itself as on two hosts.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// The holder's core.
    pub holder: usize,
    /// The fetching node's core.
    pub fetcher: usize,
}

/// User + system CPU seconds a process has used so far (`/proc/PID/stat`, in clock ticks of
/// 1/100 s, the kernel's `USER_HZ` on Linux).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are counted from its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |index: usize| -> Result<f64> {
        Ok(fields
            .get(index)
            .context("short /proc/PID/stat")?
            .parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Pins every thread of a process (and so the threads it starts later) to one core.
fn pin(node: &Node, core: usize) -> Result<()> {
    let pid = node.pid().context("the node is not running")?;
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    ensure!(status.success(), "taskset failed for pid {pid}");
    Ok(())
}

/// Times `fetch` and the CPU seconds each of `nodes` spent meanwhile.
async fn fetch_measuring_cpu(base: &str, blob: &Blob, nodes: &[&Node]) -> Result<(f64, Vec<f64>)> {
    let pids: Vec<u32> = nodes
        .iter()
        .map(|node| node.pid().context("the node is not running"))
        .collect::<Result<_>>()?;
    let before: Vec<f64> = pids
        .iter()
        .map(|&pid| cpu_seconds(pid))
        .collect::<Result<_>>()?;
    let elapsed = fetch(base, blob).await?.as_secs_f64();
    let after: Vec<f64> = pids
        .iter()
        .map(|&pid| cpu_seconds(pid))
        .collect::<Result<_>>()?;
    Ok((
        elapsed,
        after.iter().zip(&before).map(|(a, b)| a - b).collect(),
    ))
}

/// One run of the one-peer benchmark with a fresh origin and fresh nodes: the origin directly,
/// a cold node from the origin, then for each of `transports` a holder and a cold node in a
/// network of their own, each fetching node filling from its holder with the origin stopped (one
/// pair after the other, so they never share the cores). With `pinning`, the nodes are pinned to
/// separate cores.
pub async fn one_peer(
    size: usize,
    seed: u64,
    pinning: Option<Pinning>,
    transports: &[Transport],
) -> Result<OnePeerRun> {
    let mut origin = Origin::start().await?;
    let blob = push_random_blob(&origin, size, seed).await?;
    let origin_direct = fetch(&origin.url(), &blob).await?.as_secs_f64();
    let alone = Node::start(NodeConfig::for_origin(&origin)).await?;
    if let Some(pinning) = pinning {
        pin(&alone, pinning.fetcher)?;
    }
    let (node_from_origin, cpu) =
        fetch_measuring_cpu(&alone.registry_url(), &blob, &[&alone]).await?;
    let cpu_node_from_origin = cpu[0];
    drop(alone);

    // Every holder fills from the origin while it is up; then it stops, and each pair is timed.
    let mut pairs = Vec::new();
    for (index, &transport) in transports.iter().enumerate() {
        let key = NetworkKeyFile::new(seed * 16 + index as u64)?;
        let mut holder_config = NodeConfig::for_origin(&origin).network_key(&key);
        let mut fetcher_config = NodeConfig::for_origin(&origin).network_key(&key);
        if let Some(listen) = transport.listen() {
            holder_config = holder_config.p2p_listen(listen);
            fetcher_config = fetcher_config.p2p_listen(listen);
        }
        let holder = Node::start(holder_config).await?;
        fetch(&holder.registry_url(), &blob).await?;
        let warm_holder = fetch(&holder.registry_url(), &blob).await?.as_secs_f64();
        let fetcher = Node::start(fetcher_config.bootstrap(holder.p2p_addr()?)).await?;
        if let Some(pinning) = pinning {
            pin(&holder, pinning.holder)?;
            pin(&fetcher, pinning.fetcher)?;
        }
        fetcher
            .wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| n >= 1.0)
            .await?;
        // Time the transport named: with both offered, once the rule has replaced the first
        // connection (the bootstrap address is QUIC) by TCP, as the two share a region.
        let (used, unused) = match transport {
            Transport::Quic => ("quic", "tcp"),
            Transport::Tcp | Transport::Both => ("tcp", "quic"),
        };
        wait_for_only_transport(&fetcher, used, unused).await?;
        pairs.push((transport, warm_holder, holder, fetcher, key));
    }
    origin.stop().await?;
    let mut peers = Vec::new();
    for (transport, warm_holder, holder, fetcher, _key) in &pairs {
        let (seconds, cpu) =
            fetch_measuring_cpu(&fetcher.registry_url(), &blob, &[holder, fetcher]).await?;
        peers.push(PeerFill {
            transport: *transport,
            seconds,
            warm_holder: *warm_holder,
            cpu_holder: cpu[0],
            cpu_fetcher: cpu[1],
        });
    }
    Ok(OnePeerRun {
        origin_direct,
        node_from_origin,
        cpu_node_from_origin,
        peers,
    })
}

/// Waits until `node`'s connections to peers are all over `used`, none over `unused`.
async fn wait_for_only_transport(node: &Node, used: &str, unused: &str) -> Result<()> {
    let name = "shoal_p2p_transport_connections";
    node.wait_for_metric_with(name, &[("transport", used)], JOIN_TIMEOUT, |n| n >= 1.0)
        .await?;
    node.wait_for_metric_with(name, &[("transport", unused)], JOIN_TIMEOUT, |n| n == 0.0)
        .await
        .with_context(|| format!("a connection over {unused} stayed open beside {used}"))?;
    Ok(())
}

/// What one [`crowd`] run measured.
#[derive(Debug, Clone, Copy)]
pub struct CrowdRun {
    /// Nodes.
    pub nodes: usize,
    /// Seconds until the last client had every byte.
    pub seconds: f64,
    /// Blob bytes the origin served, over the blob's size.
    pub origin_copies: f64,
    /// Blob bytes the nodes received from peers, over the blob's size.
    pub peer_copies: f64,
    /// The most blob bytes one node sent to peers, over the blob's size.
    pub max_upload_copies: f64,
}

/// `nodes` fresh nodes, joined by the peer network, each asked for the same cold blob at once.
/// With `egress`, each node's uplink to peers is capped at that many bytes per second (the node's
/// TESTING ONLY option), so that upload bandwidth, not this machine's cores, is what runs out, as
/// it would across machines.
pub async fn crowd(nodes: usize, size: usize, seed: u64, egress: Option<u64>) -> Result<CrowdRun> {
    let origin = Origin::start().await?;
    let blob = push_random_blob(&origin, size, seed).await?;
    origin.settle().await;
    let before = origin.blob_bytes_served();
    let key = NetworkKeyFile::new(seed)?;
    let mut started: Vec<Node> = Vec::new();
    for index in 0..nodes {
        let mut config = NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region(if index % 2 == 0 { "east" } else { "west" });
        if let Some(rate) = egress {
            config = config.test_egress_bytes_per_sec(rate);
        }
        // Every node knows the first; the rest they find through it.
        if let Some(first) = started.first() {
            config = config.bootstrap(first.p2p_addr()?);
        }
        started.push(Node::start(config).await?);
    }
    for node in &started {
        node.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| {
            n >= (nodes - 1) as f64
        })
        .await
        .context("the nodes never all saw each other")?;
    }
    let clock = Instant::now();
    let urls: Vec<String> = started.iter().map(Node::registry_url).collect();
    let fetches = urls.iter().map(|url| fetch(url, &blob));
    for result in futures::future::join_all(fetches).await {
        result?;
    }
    let seconds = clock.elapsed().as_secs_f64();
    origin.settle().await;
    let served = origin.blob_bytes_served() - before;
    let (mut from_peers, mut max_upload) = (0.0, 0.0f64);
    for node in &started {
        from_peers += node
            .metric_with("shoal_bytes_received_total", &[("source", "peer")])
            .await?;
        max_upload = max_upload.max(node.metric("shoal_bytes_sent_to_peers_total").await?);
    }
    Ok(CrowdRun {
        nodes,
        seconds,
        origin_copies: served as f64 / blob.size() as f64,
        peer_copies: from_peers / blob.size() as f64,
        max_upload_copies: max_upload / blob.size() as f64,
    })
}
