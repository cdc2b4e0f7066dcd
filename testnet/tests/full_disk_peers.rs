//! End to end, as root: pass-through when the source is a peer. Node A caches an image; node B's
//! data directory becomes a small tmpfs; with the origin down, B pulls the image: its large layer
//! can only come from A and does not fit on B's disk, so B passes it through to containerd,
//! verified, and the pull succeeds. B says `degraded: disk_full`, counts the bytes it passed
//! through, caches nothing half-written (`fsck` clean), and A was the only source.

use anyhow::{ensure, Context, Result};
use shoal_testnet::containerd::Containerd;
use shoal_testnet::image::{push_image, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::LogsOnFailure;
use shoal_testnet::tmpfs::Tmpfs;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_passes_a_layer_from_a_peer_through_intact() -> Result<()> {
    let mut network = Network::start(NetworkSpec::new(91).node("eu").node("eu")).await?;
    let image = push_image(
        network.origin(),
        ImageSpec::new("test/peer-pass", "v1", 91)
            .layer(64 << 10, 20)
            .layer(40 << 20, 100),
    )
    .await?;
    let largest = image.largest_layer().clone();
    network.node(0).pull_and_store(&image).await?;

    // B's data directory becomes a 16 MiB tmpfs: stop, mount over it, start on the same ports.
    let b_dir = network.node(1).data_dir();
    network.node_mut(1).stop().await?;
    let disk = Tmpfs::mount(&b_dir, 16 * MIB)?;
    network.node_mut(1).restart().await?;
    network
        .wait_for_full_mesh(std::time::Duration::from_secs(60))
        .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    network.origin_mut().stop().await?;

    let containerd = Containerd::start().await?;
    containerd
        .pull_ok(&image.reference, network.hosts_dir(1))
        .await
        .context("B's pull with a full disk and the origin down")?;
    containerd.ensure_holds(&image).await?;
    drop(containerd);

    let b = network.node(1);
    let passed = b.metric("shoal_bytes_passed_through_total").await?;
    ensure!(
        passed >= largest.size as f64,
        "{passed} bytes passed through, the layer has {}",
        largest.size
    );
    let from_peers = b
        .metric_with("shoal_bytes_received_total", &[("source", "peer")])
        .await?;
    ensure!(
        from_peers >= largest.size as f64,
        "{from_peers} bytes came from peers"
    );
    let health = reqwest::get(format!("{}/healthz", b.admin_url()))
        .await?
        .bytes()
        .await?;
    let health: serde_json::Value = serde_json::from_slice(&health)?;
    ensure!(
        health["status"] == "degraded"
            && health["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "disk_full")),
        "{health}"
    );
    let stored = b.metric("shoal_store_bytes").await?;
    ensure!(
        stored < largest.size as f64,
        "B stored {stored} bytes: the layer cannot have been cached"
    );

    let b_dir = network.node(1).data_dir();
    network.node_mut(1).stop().await?;
    let report = shoal_testnet::cli::fsck(&b_dir).await;
    drop(disk);
    let report = report?;
    ensure!(report.status.success(), "fsck on B: {report:?}");
    network.origin_mut().start_again().await?;
    logs.passed();
    network.shutdown().await
}
