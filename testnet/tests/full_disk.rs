//! End to end, as root: a node whose data directory is a small tmpfs (a disk that is full for
//! practical purposes, with `max_disk_bytes` left at its default). A cold layer larger than the
//! free space still reaches containerd intact, passed through from the origin; cached blobs are
//! served with the origin down; `/healthz` says `degraded` with `disk_full` (status 200); and once
//! the file system grows, the next pull of that layer is cached and the node is healthy again.

use anyhow::{ensure, Context, Result};
use shoal_testnet::containerd::Containerd;
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::tmpfs::Tmpfs;

const MIB: u64 = 1 << 20;

async fn pull_fresh(image: &ImageInfo, hosts: &HostsDir) -> Result<()> {
    let containerd = Containerd::start().await?;
    containerd.pull_ok(&image.reference, hosts.path()).await?;
    containerd.ensure_holds(image).await
}

async fn health(node: &Node) -> Result<serde_json::Value> {
    let response = reqwest::get(format!("{}/healthz", node.admin_url()))
        .await
        .context("GET /healthz")?;
    ensure!(
        response.status() == 200,
        "/healthz answered {}",
        response.status()
    );
    let body = response.bytes().await.context("/healthz body")?;
    serde_json::from_slice(&body).context("/healthz body is not JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_passes_cold_layers_through_and_caches_them_once_space_returns() -> Result<()> {
    let mut origin = Origin::start().await?;
    let small = push_image(
        &origin,
        ImageSpec::new("test/small", "v1", 31)
            .layer(64 << 10, 20)
            .layer(2 << 20, 60),
    )
    .await?;
    let large = push_image(
        &origin,
        ImageSpec::new("test/large", "v1", 32).layer(96 << 20, 100),
    )
    .await?;
    let largest_layer = large
        .blobs()
        .map(|b| b.size)
        .max()
        .context("the large image has blobs")?;
    let mut node = Node::start(NodeConfig::for_origin(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    // The data directory becomes a 40 MiB tmpfs: stop, mount over it, start on the same ports.
    node.stop().await?;
    let disk = Tmpfs::mount(&node.data_dir(), 40 * MIB)?;
    node.restart().await?;
    let hosts = HostsDir::for_test_registry(node.registry_addr())?;

    pull_fresh(&small, &hosts)
        .await
        .context("pulling the small image")?;
    node.wait_for_stored_blobs(small.blobs().count()).await?;

    pull_fresh(&large, &hosts)
        .await
        .context("pulling a layer larger than the free space")?;
    ensure!(
        node.metric("shoal_blobs_passed_through_total").await? >= 1.0,
        "the large layer was not passed through"
    );
    let passed = node.metric("shoal_bytes_passed_through_total").await?;
    ensure!(
        passed >= largest_layer as f64,
        "{passed} bytes passed through, the layer has {largest_layer}"
    );
    let status = health(&node).await?;
    ensure!(status["status"] == "degraded", "{status}");
    ensure!(
        status["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "disk_full")),
        "{status}"
    );

    // Cached blobs are still served with the origin down.
    origin.stop().await?;
    pull_fresh(&small, &hosts)
        .await
        .context("pulling the cached image with the origin down")?;
    origin.start_again().await?;

    // Space returns: the next pull of the large layer is cached, and the node recovers by itself.
    disk.resize(512 * MIB)?;
    pull_fresh(&large, &hosts)
        .await
        .context("pulling the large image again")?;
    node.wait_for_stored_blobs(small.blobs().count() + large.blobs().count())
        .await
        .context("the large layer was not cached once space returned")?;
    let stored = node.metric("shoal_store_bytes").await?;
    ensure!(
        stored >= largest_layer as f64,
        "the store holds {stored} bytes"
    );
    let status = health(&node).await?;
    ensure!(status["status"] == "ok", "{status}");

    node.stop().await?;
    let report = shoal_testnet::cli::fsck(&node.data_dir()).await;
    drop(disk);
    let report = report?;
    ensure!(report.status.success(), "fsck: {report:?}");
    logs.passed();
    Ok(())
}
