//! End to end: a burst of slow clients cannot grow a node's memory without bound. A node caches a
//! 96 MiB blob; 50 clients open it with plain HTTP GETs, read the headers and the first MiB, then
//! stop reading while the node's resident memory is watched (`VmRSS` sampled, `VmHWM` after a
//! reset of the peak). Afterwards some clients read the rest and get the exact blob, the others
//! hang up, and the node still serves the blob intact.
//!
//! The bound comes from how a stored blob is served (`node/src/pullthrough/blobs.rs`,
//! `serve_stored`): one task per response reads one shard at a time into a channel of
//! `READ_AHEAD` (4) shards, holds at most one more shard while it waits for room, and hyper holds
//! at most the one chunk it is writing. So a stalled response pins at most `READ_AHEAD + 2` = 6
//! shards, each at most the largest shard stored (`chunking.max`, 4 MiB by default). The node may
//! hold `CLIENTS * 6 * largest_shard` more than its resident memory before the burst, plus a
//! fixed 64 MiB for connection state, task stacks and allocator slack. Reading whole blobs per
//! client (the unbounded case) would need `CLIENTS * 96 MiB`, well above it.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use shoal_testnet::image::{push_image, ImageSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::REGISTRY_HOST;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;
const CLIENTS: usize = 50;
/// Clients that read the whole body once the stall is over; the others hang up.
const FULL_READERS: usize = 10;
/// Shards a stalled response may pin: the read-ahead channel, the one waiting for room in it,
/// and the chunk hyper is writing.
const SHARDS_PER_RESPONSE: u64 = 4 + 2;
/// The default `chunking.max`.
const MAX_SHARD: u64 = 4 * MIB;
const FIXED_ALLOWANCE: u64 = 64 * MIB;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad line {line:?}"))?;
    Ok(kib * 1024)
}

/// A client that sent its GET and read the response head and `prefix` bytes of the body.
struct SlowClient {
    stream: TcpStream,
    content_length: u64,
    body: Vec<u8>,
}

impl SlowClient {
    async fn open(node: &Node, target: &str, prefix: usize) -> Result<SlowClient> {
        let addr = node.registry_addr();
        let mut stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await??;
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let head_end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            ensure!(raw.len() < 64 << 10, "response head too long");
            let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await??;
            ensure!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = std::str::from_utf8(&raw[..head_end]).context("non-UTF-8 head")?;
        let status = head.lines().next().unwrap_or("");
        ensure!(status.starts_with("HTTP/1.1 200"), "answered {status:?}");
        let content_length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .context("no Content-Length")?;
        let mut body = raw[head_end + 4..].to_vec();
        while body.len() < prefix {
            let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await??;
            ensure!(n > 0, "body ended after {} bytes", body.len());
            body.extend_from_slice(&buf[..n]);
        }
        Ok(SlowClient {
            stream,
            content_length,
            body,
        })
    }

    /// Reads the rest of the body and returns its `sha256:` digest.
    async fn finish(mut self) -> Result<String> {
        let mut buf = vec![0u8; 256 << 10];
        while (self.body.len() as u64) < self.content_length {
            let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut buf)).await??;
            if n == 0 {
                bail!(
                    "body broken after {} of {} bytes",
                    self.body.len(),
                    self.content_length
                );
            }
            self.body.extend_from_slice(&buf[..n]);
        }
        ensure!(
            self.body.len() as u64 == self.content_length,
            "{} bytes for a Content-Length of {}",
            self.body.len(),
            self.content_length
        );
        Ok(format!("sha256:{:x}", Sha256::digest(&self.body)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_slow_clients_keeps_the_node_memory_bounded() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/slow", "v1", 41).layer(96 << 20, 100),
    )
    .await?;
    let blob = image.largest_layer().clone();
    ensure!(blob.size >= 64 * MIB, "the layer is {} bytes", blob.size);
    let node = Node::start(NodeConfig::for_origin(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    let pid = node.pid().context("the node has a pid")?;

    // Cache the blob, then serve it once from the store so the base includes a warm serve path.
    node.fetch_blob(&image.repo, &blob.digest).await?;
    node.wait_for_stored_blobs(1).await?;
    let target = format!(
        "/v2/{}/blobs/{}?ns={REGISTRY_HOST}",
        image.repo, blob.digest
    );
    let warm = SlowClient::open(&node, &target, 0).await?.finish().await?;
    ensure!(warm == blob.digest, "the warm-up read got {warm}");

    let largest_shard = node
        .shard_files()?
        .first()
        .map(|(_, len)| *len)
        .context("no shard files")?
        .min(MAX_SHARD);
    let base = status_field(pid, "VmRSS")?;
    let bound = base + CLIENTS as u64 * SHARDS_PER_RESPONSE * largest_shard + FIXED_ALLOWANCE;
    // Reset the peak resident size so that `VmHWM` covers only the burst.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting VmHWM")?;

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(SlowClient::open(&node, &target, MIB as usize).await?);
    }
    // Every client is stalled with its response open: watch the node for a while.
    let mut peak_sampled = 0;
    for _ in 0..40 {
        peak_sampled = peak_sampled.max(status_field(pid, "VmRSS")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = status_field(pid, "VmHWM")?.max(peak_sampled);
    eprintln!(
        "base {} MiB, peak {} MiB (sampled {} MiB), bound {} MiB, largest shard {} bytes",
        base / MIB,
        peak / MIB,
        peak_sampled / MIB,
        bound / MIB,
        largest_shard
    );
    ensure!(
        peak <= bound,
        "{CLIENTS} stalled clients grew the node to {} MiB (base {} MiB, bound {} MiB)",
        peak / MIB,
        base / MIB,
        bound / MIB
    );

    // Some clients read to the end and get the exact blob; the rest hang up.
    let finishing: Vec<SlowClient> = clients.drain(..FULL_READERS).collect();
    drop(clients);
    let readers: Vec<_> = finishing
        .into_iter()
        .map(|client| tokio::spawn(client.finish()))
        .collect();
    for reader in readers {
        let digest = reader.await??;
        ensure!(digest == blob.digest, "a full read got {digest}");
    }

    // The node still serves the blob intact to a new client.
    let again = SlowClient::open(&node, &target, 0).await?.finish().await?;
    ensure!(
        again == blob.digest,
        "after the burst the blob read {again}"
    );
    logs.passed();
    Ok(())
}
