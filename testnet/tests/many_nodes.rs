//! End-to-end tests of more than two `shoald` nodes joined by the peer
//! network, with real containerd instances and a real origin registry:
//!
//! - cluster-wide single flight: five nodes pull the same 200 MiB image at the
//!   same moment; the origin must serve about one copy (at most 1.2x the
//!   image's blob bytes, counted in its own access log), every containerd must
//!   hold every blob, and the other copies must have moved between peers;
//! - a holder whose shards are corrupt on disk: a third node fetches from both
//!   holders in parallel, the bad holder stops at its first bad shard, and every
//!   byte comes from the good holder instead (none from the origin);
//! - a Range request for a blob the node does not have, with the origin down,
//!   answered from the flight a peer feeds;
//! - six nodes with capped uplinks asking for one blob at once form a tree, not
//!   a star: the origin serves one copy and no node uploads much more than the
//!   two copies its followers take (a star would make one node upload five).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_testnet::containerd::Containerd;
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, ImageSpec};
use shoal_testnet::node::{corrupt_shard_file, LogsOnFailure, NetworkKeyFile, Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::raw_http;

const NODES: usize = 5;
/// How long the nodes may take to find each other.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a flight may take to finish after the response that started it.
const FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_pulling_one_image_at_once_cost_the_origin_about_one_copy() -> Result<()> {
    let mut origin = Origin::start().await?;
    // 200 MiB of incompressible layers, so the compressed blobs are about as large.
    let image = push_image(
        &origin,
        ImageSpec::new("test/crowd", "v1", 51)
            .layer(80 << 20, 100)
            .layer(60 << 20, 100)
            .layer(40 << 20, 100)
            .layer(20 << 20, 100),
    )
    .await?;
    let blob_bytes: u64 = image.blobs().map(|blob| blob.size).sum();
    let key = NetworkKeyFile::new(51)?;

    let mut nodes: Vec<Node> = Vec::new();
    let mut logs = LogsOnFailure::default();
    for index in 0..NODES {
        let mut config = NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region(if index % 2 == 0 { "east" } else { "west" });
        for earlier in &nodes {
            config = config.bootstrap(earlier.p2p_addr()?);
        }
        let node = Node::start(config).await?;
        logs.add(&node);
        nodes.push(node);
    }
    for node in &nodes {
        node.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| {
            n >= (NODES - 1) as f64
        })
        .await
        .context("the nodes never all saw each other")?;
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push((
            Containerd::start().await?,
            HostsDir::for_test_registry(node.registry_addr())?,
        ));
    }

    let pulls = clients
        .iter()
        .map(|(containerd, hosts)| containerd.pull_ok(&image.reference, hosts.path()));
    for result in futures::future::join_all(pulls).await {
        result.context("a pull failed")?;
    }
    for (containerd, _) in &clients {
        containerd.ensure_holds(&image).await?;
    }

    origin.settle().await;
    let served = origin.blob_bytes_served();
    let mut from_peers = 0.0;
    let mut from_origin = 0.0;
    for node in &nodes {
        from_peers += node
            .metric_with("shoal_bytes_received_total", &[("source", "peer")])
            .await?;
        from_origin += node
            .metric_with("shoal_bytes_received_total", &[("source", "origin")])
            .await?;
        node.healthz().await?;
    }
    eprintln!(
        "image blobs {blob_bytes} B; origin served {served} B ({:.2}x); nodes received {from_origin} B from the origin and {from_peers} B from peers",
        served as f64 / blob_bytes as f64
    );
    ensure!(
        served as f64 <= 1.2 * blob_bytes as f64,
        "the origin served {served} bytes of blobs for an image of {blob_bytes} (more than 1.2x)"
    );
    ensure!(
        from_peers >= (NODES - 2) as f64 * blob_bytes as f64,
        "only {from_peers} bytes moved between peers"
    );
    origin.stop().await?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_a_holder_cannot_send_come_from_another_holder() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::multi_layer("test/p2p-two-holders", "v1", 52),
    )
    .await?;
    let key = NetworkKeyFile::new(52)?;
    let a = Node::start(NodeConfig::for_origin(&origin).network_key(&key)).await?;
    let a_addr = a.p2p_addr()?.to_owned();
    let c = Node::start(NodeConfig::joining(&origin, &key, &a_addr)).await?;
    let mut logs = LogsOnFailure::new([&a, &c]);
    c.wait_until_joined().await?;
    for holder in [&a, &c] {
        let client = Containerd::start().await?;
        let hosts = HostsDir::for_test_registry(holder.registry_addr())?;
        client.pull_ok(&image.reference, hosts.path()).await?;
        holder.wait_for_stored_blobs(image.blobs().count()).await?;
    }

    // Every shard A holds goes bad on disk: A must refuse to send any of them.
    for (shard, _) in a.shard_files()? {
        corrupt_shard_file(&shard)?;
    }

    let b = Node::start(NodeConfig::joining(&origin, &key, &a_addr)).await?;
    logs.add(&b);
    b.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| n >= 2.0)
        .await
        .context("B never saw both holders")?;
    let client = Containerd::start().await?;
    let hosts = HostsDir::for_test_registry(b.registry_addr())?;
    client.pull_ok(&image.reference, hosts.path()).await?;
    client.ensure_holds(&image).await?;

    let blob_bytes: u64 = image.blobs().map(|blob| blob.size).sum();
    let from_origin = b
        .metric_with("shoal_bytes_received_total", &[("source", "origin")])
        .await?;
    let from_peers = b
        .metric_with("shoal_bytes_received_total", &[("source", "peer")])
        .await?;
    ensure!(
        from_origin == 0.0,
        "B took {from_origin} bytes from the origin"
    );
    ensure!(
        from_peers >= blob_bytes as f64,
        "B took {from_peers} bytes from peers, want all {blob_bytes}"
    );
    ensure!(
        a.metric("shoal_shard_verify_failures_total").await? >= 1.0,
        "A never noticed a bad shard"
    );
    ensure!(
        b.metric("shoal_peer_fetch_failures_total").await? >= 1.0,
        "B never saw a holder fail"
    );
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_range_request_is_served_from_a_peer_with_the_origin_down() -> Result<()> {
    let mut origin = Origin::start().await?;
    let image = push_image(&origin, ImageSpec::multi_layer("test/p2p-range", "v1", 53)).await?;
    let key = NetworkKeyFile::new(53)?;
    let a = Node::start(NodeConfig::for_origin(&origin).network_key(&key)).await?;
    let mut logs = LogsOnFailure::new([&a]);
    let client = Containerd::start().await?;
    let hosts = HostsDir::for_test_registry(a.registry_addr())?;
    client.pull_ok(&image.reference, hosts.path()).await?;
    let b = Node::start(NodeConfig::joining(&origin, &key, a.p2p_addr()?)).await?;
    logs.add(&b);
    b.wait_until_joined().await?;
    origin.stop().await?;

    // B has nothing: a Range on the largest layer is answered from the flight A feeds.
    let layer = image.largest_layer().clone();
    let target = format!(
        "/v2/{}/blobs/{}?ns={}",
        image.repo,
        layer.digest,
        shoal_testnet::REGISTRY_HOST
    );
    let (from, to) = (layer.size / 2, layer.size / 2 + 99_999);
    let range = format!("Range: bytes={from}-{to}");
    let part = raw_http::request(b.registry_addr(), "GET", &target, &[range.as_str()]).await?;
    ensure!(part.status == 206, "cold Range answered {}", part.status);
    let want = format!("bytes {from}-{to}/{}", layer.size);
    ensure!(
        part.header("content-range") == Some(want.as_str()),
        "Content-Range {:?}, want {want:?}",
        part.header("content-range")
    );
    let whole = raw_http::request(a.registry_addr(), "GET", &target, &[]).await?;
    ensure!(whole.status == 200, "A answered {}", whole.status);
    ensure!(
        part.body == whole.body[from as usize..=to as usize],
        "B's Range answer has the wrong bytes"
    );
    // The Range is answered as soon as its bytes arrive; the rest of the layer follows.
    b.wait_for_metric_with(
        "shoal_bytes_received_total",
        &[("source", "peer")],
        FLIGHT_TIMEOUT,
        |bytes| bytes >= layer.size as f64,
    )
    .await
    .context("B did not take the whole layer from its peer")?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_missing_one_blob_at_once_form_a_tree_not_a_star() -> Result<()> {
    const NODES: usize = 6;
    let run = shoal_testnet::bench::crowd(NODES, 24 << 20, 61, Some(12 << 20)).await?;
    ensure!(
        run.origin_copies <= 1.1,
        "the origin served {:.2} copies",
        run.origin_copies
    );
    ensure!(
        run.peer_copies >= (NODES - 1) as f64 * 0.99,
        "only {:.2} copies moved between peers",
        run.peer_copies
    );
    // Two followers per fetch; a little more allows for a late node fetching from stored holders
    // with a hedged batch. A star would be five copies from one node.
    ensure!(
        run.max_upload_copies <= 2.5,
        "one node uploaded {:.2} copies of the blob",
        run.max_upload_copies
    );
    Ok(())
}
